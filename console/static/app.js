// walletguard support console: a small page over the daemon's own API. The
// bearer token lives in session storage only; nothing else is stored.
"use strict";

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const sevRank = { critical: 4, high: 3, medium: 2, low: 1 };
const colors = { allow: "#9aa3b2", review: "#b7791f", step_up: "#d9480f", freeze: "#b42318" };
let timer = null;
let rerender = null; // the page shown, drawn again after an action

function token() { return sessionStorage.getItem("wg-token"); }

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { "Authorization": "Bearer " + token(), "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (res.status === 401) { signOut(); throw new Error("token refused"); }
  if (!res.ok) throw new Error((data && data.error) || res.status + " " + res.statusText);
  return data;
}

function toast(msg) {
  const t = $("#toast");
  t.textContent = msg;
  t.hidden = false;
  clearTimeout(toast.h);
  toast.h = setTimeout(() => { t.hidden = true; }, 5000);
}

function when(ts) {
  if (!ts || ts.startsWith("0001") || ts.startsWith("1970")) return "";
  return new Date(ts).toISOString().replace("T", " ").slice(0, 19) + "Z";
}

function signOut() {
  sessionStorage.removeItem("wg-token");
  show();
}

async function show() {
  clearInterval(timer);
  const signedIn = !!token();
  $("#signin").hidden = signedIn;
  $("#nav").hidden = !signedIn;
  $("#signout").hidden = !signedIn;
  document.querySelectorAll(".page").forEach((p) => { p.hidden = true; });
  if (!signedIn) { $("#who").textContent = ""; $("#breaker").hidden = true; return; }
  try {
    const me = await api("GET", "/v1/whoami");
    $("#who").textContent = me.name + " (" + me.role + ")";
  } catch (e) { return; }
  const [page, arg] = (location.hash.replace(/^#\//, "") || "alerts").split("/");
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === (page === "alert" ? "alerts" : page)));
  const el = $("#page-" + page) || $("#page-alerts");
  el.hidden = false;
  const render = {
    alerts: renderAlerts, alert: () => renderAlert(decodeURIComponent(arg || "")),
    account: () => renderAccount(decodeURIComponent(arg || "")), overview: renderOverview, rules: renderRules,
  }[page] || renderAlerts;
  rerender = render;
  const tick = async () => { try { await render(); await renderBreakerBadge(); } catch (e) { toast(e.message); } };
  await tick();
  // Live: outages grow, alerts arrive. The account page only refreshes on demand.
  if (page !== "account") timer = setInterval(tick, 3000);
}

async function renderBreakerBadge() {
  const b = await api("GET", "/v1/enforce/breaker");
  const badge = $("#breaker");
  badge.hidden = !b.open;
  badge.textContent = "Automatic freezing stopped (breaker open)";
}

// ---- alerts
let ruleCategories = null;
// Pages of the queue: the tokens older pages begin after (the API's
// next), the newest page first. In a large incident the queue holds tens
// of thousands, more than a table can show every few seconds; the page
// shown stays where it is while the queue refreshes.
let alertPages = [""];
async function renderAlerts() {
  const cat = $("#alert-category").value, status = $("#alert-status").value, sev = $("#alert-severity").value;
  const alertPage = Number($("#alert-page-size").value);
  const q = new URLSearchParams();
  if (status) q.set("status", status);
  if (cat) q.set("category", cat);
  if (sev) q.set("min_severity", sev);
  q.set("limit", alertPage);
  const at = alertPages.length - 1;
  if (alertPages[at]) q.set("after", alertPages[at]);
  const data = await api("GET", "/v1/alerts?" + q);
  // Categories to filter by: those the rules raise, and any listed.
  if (!ruleCategories) ruleCategories = ((await api("GET", "/v1/rules")).rules || []).map((r) => r.category);
  const cats = [...new Set([...ruleCategories, ...data.alerts.map((a) => a.category)])].sort();
  const sel = $("#alert-category");
  for (const c of cats) {
    if (![...sel.options].some((o) => o.value === c)) sel.add(new Option(c, c));
  }
  const next = data.next || "";
  $("#alerts-more").hidden = !next || at > 0;
  $("#alerts-more").textContent = `Showing the ${alertPage.toLocaleString("en")} most recently updated; pick a category, severity or status to narrow the list, or page back.`;
  $("#alerts-pager").hidden = !next && at === 0;
  $("#alerts-older").disabled = !next;
  $("#alerts-older").dataset.next = next;
  $("#alerts-newer").disabled = $("#alerts-newest").disabled = at === 0;
  const from = at * alertPage + 1;
  $("#alerts-page").textContent = data.alerts.length ? `alerts ${from.toLocaleString("en")}–${(from + data.alerts.length - 1).toLocaleString("en")}, newest first` : "";
  const list = data.alerts.slice().sort((a, b) => (sevRank[b.severity] - sevRank[a.severity]) || (b.updated_at > a.updated_at ? 1 : -1));
  const tb = $("#alerts-table tbody");
  tb.innerHTML = list.map((a) => {
    return `<tr data-alert="${esc(a.alert_id)}" data-category="${esc(a.category)}">
      <td><span class="sev ${esc(a.severity)}">${esc(a.severity)}</span></td>
      <td><a class="title" href="#/alert/${encodeURIComponent(a.alert_id)}"><strong>${esc(a.title)}</strong></a><div class="summary">${esc(a.summary)}</div></td>
      <td>${subjectOf(a)}</td><td class="affected">${a.affected_accounts || ""}</td><td>${a.count}</td>
      <td>${when(a.updated_at)}</td><td class="status">${esc(a.status)}${a.acknowledged_by ? "<div class=muted>by " + esc(a.acknowledged_by) + "</div>" : ""}</td>
      <td>${lifecycleButtons(a)}</td></tr>`;
  }).join("");
  $("#alerts-empty").hidden = list.length > 0;
  $("#alerts-updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function lifecycleButtons(a) {
  return a.status === "resolved" ? "" :
    (a.status !== "acknowledged" ? `<button data-ack="${esc(a.alert_id)}">Acknowledge</button> ` : "") +
    `<button data-resolve="${esc(a.alert_id)}">Resolve</button>`;
}

function subjectOf(a) {
  return a.account_id ? `<a href="#/account/${encodeURIComponent(a.account_id)}">${esc(a.account_id)}</a>`
    : a.app_version ? "app " + esc(a.app_version) : a.ip ? "IP " + esc(a.ip) : "merchant " + esc(a.merchant_id);
}

// ---- one alert: what a link in a delivered alert opens
async function renderAlert(id) {
  let a;
  try {
    a = await api("GET", "/v1/alerts/" + encodeURIComponent(id));
  } catch (e) {
    $("#alert-view").hidden = true;
    $("#alert-title").textContent = "Alert " + id;
    $("#alert-sev").innerHTML = "";
    const m = $("#alert-missing");
    m.hidden = false;
    m.textContent = "Not held here: " + e.message + ". Alerts are forgotten seven days after their last news; ClickHouse keeps every one.";
    return;
  }
  $("#alert-missing").hidden = true;
  $("#alert-view").hidden = false;
  $("#alert-title").textContent = a.title;
  $("#alert-sev").innerHTML = `<span class="sev ${esc(a.severity)}">${esc(a.severity)}</span>`;
  $("#alert-summary").textContent = a.summary;
  $("#alert-todo").innerHTML = (a.recommended_actions || []).map((x) => `<li>${esc(x)}</li>`).join("") || "<li class=muted>nothing suggested</li>";
  $("#alert-buttons").innerHTML = lifecycleButtons(a);
  const row = (k, v) => (v === "" || v === undefined || v === null ? "" : `<tr><th>${k}</th><td>${v}</td></tr>`);
  $("#alert-facts").innerHTML = [
    row("Subject", subjectOf(a)),
    row("Status", esc(a.status) + (a.grouped_under ? ` under <a href="#/alert/${encodeURIComponent(a.grouped_under)}">${esc(a.grouped_under)}</a>` : "")),
    row("Category", esc(a.category)),
    row("Likely cause", esc(a.cause)),
    row("Action taken", esc(a.action)),
    row("Findings", a.count),
    row("Users affected", a.affected_accounts || ""),
    row("Opened", when(a.created_at)),
    row("Last news", when(a.updated_at)),
    row("Acknowledged", a.acknowledged_by ? esc(a.acknowledged_by) + " at " + when(a.acknowledged_at) : ""),
    row("Resolved", a.resolved_by ? esc(a.resolved_by) + " at " + when(a.resolved_at) + (a.resolution ? ": " + esc(a.resolution) : "") : ""),
    row("Rules", (a.rules || []).map((r) => `<code>${esc(r)}</code>`).join(" ")),
    row("Alert id", `<code>${esc(a.alert_id)}</code>`),
  ].join("");
  $("#alert-evidence").innerHTML = (a.evidence || []).map((x) => `<li>${esc(x)}</li>`).join("");
}

document.addEventListener("click", async (ev) => {
  const t = ev.target;
  if (t.dataset.ack || t.dataset.resolve) {
    try {
      if (t.dataset.ack) await api("POST", `/v1/alerts/${t.dataset.ack}/ack`, {});
      else {
        const note = prompt("Resolution (what was done):", "");
        if (note === null) return;
        await api("POST", `/v1/alerts/${t.dataset.resolve}/resolve`, { reason: note });
      }
      await (rerender || renderAlerts)();
    } catch (e) { toast(e.message); }
  }
});

// ---- account
async function renderAccount(id) {
  $("#account-id").value = id;
  $("#account-view").hidden = !id;
  if (!id) return;
  const acc = await api("GET", "/v1/accounts/" + encodeURIComponent(id));
  const st = acc.state || {};
  $("#account-state").innerHTML = `<h2>${esc(acc.account_id)}</h2>
    <p>${acc.frozen ? `<span class="state-frozen" id="frozen-flag">FROZEN</span> — ${esc(acc.frozen_reason)}<br><span class="muted">by ${esc(st.frozen_by)} at ${when(st.frozen_at)}</span>`
      : `<span class="state-ok" id="frozen-flag">not frozen</span>`}</p>
    <p>Second factor: ${acc.step_up_required ? "<strong>required</strong> — " + esc(st.step_up_reason) : "not required"}
      · TOTP ${st.totp_enrolled ? "enrolled" : "not enrolled"}${st.totp_locked_at ? " · <strong>locked</strong>" : ""}</p>
    ${st.trusted_until && new Date(st.trusted_until) > new Date() ? `<p id="trusted">Unfrozen by ${esc(st.unfrozen_by)}: automatic freezes become step-ups until ${when(st.trusted_until)}</p>` : ""}
    <p>Risk score: <strong>${acc.risk_score}</strong></p>${profileHTML(acc.profile)}`;
  $("#btn-freeze").hidden = acc.frozen;
  $("#btn-unfreeze").hidden = !acc.frozen;
  const chainCount = acc.recent_decisions.filter(isChain).length;
  $("#timeline").innerHTML = acc.recent_decisions.map((d) => {
    const chain = isChain(d);
    const ev = d.event || {};
    const what = [ev.type || d.event_type, ev.kind, ev.change, ev.result, ev.status].filter(Boolean).join(" · ");
    const money = ev.amount ? ` ${(ev.amount / 100).toLocaleString()} ${esc(ev.currency)}` : "";
    const to = ev.counterparty_id ? " → " + esc(ev.counterparty_id) : ev.merchant_id ? " @ " + esc(ev.merchant_id) : "";
    const where = [ev.device_id && "device " + ev.device_id, ev.ip && "IP " + ev.ip, ev.country].filter(Boolean).map(esc).join(", ");
    return `<li class="${chain ? "chain" : ""}">
      <strong>${when(d.ts)}</strong> ${esc(what)}${money}${to} <span class="muted">${where}</span>
      — <span class="sev ${d.action === "freeze" ? "critical" : d.action === "step_up" ? "high" : d.action === "review" ? "medium" : "low"}">${esc(d.action)} ${d.score}</span>
      ${chain ? '<span class="tag">takeover chain</span>' : ""}${d.trigger === "timer" ? '<span class="muted"> (timer)</span>' : ""}
      <ul class="rules">${d.rules.map((r) => `<li><code>${esc(r.id)}</code> +${r.score}: ${esc(r.reason)}</li>`).join("")}</ul></li>`;
  }).join("") || "<li class=muted>No recent events that fired rules.</li>";
  if (chainCount > 1) $("#timeline").insertAdjacentHTML("afterbegin", `<li class="chain"><strong>${chainCount} steps of a takeover chain</strong> are highlighted below.</li>`);
  $("#audit-table tbody").innerHTML = acc.recent_actions.map((e) => `<tr><td>${when(e.at)}</td><td>${esc(e.action)}</td><td>${esc(e.origin)}</td>
    <td>${esc(e.actor)}</td><td>${esc(e.reason)}</td><td>${esc(e.outcome)}</td></tr>`).join("");
  // The account's alerts: the incident support is working, and the ones
  // it took in (grouped), each opening its own page.
  const al = await api("GET", "/v1/alerts?status=all&limit=20&account_id=" + encodeURIComponent(id));
  $("#account-alerts tbody").innerHTML = al.alerts.map((a) => `<tr data-alert="${esc(a.alert_id)}">
    <td><span class="sev ${esc(a.severity)}">${esc(a.severity)}</span></td>
    <td><a class="title" href="#/alert/${encodeURIComponent(a.alert_id)}"><strong>${esc(a.title)}</strong></a></td>
    <td>${a.count}</td><td>${when(a.updated_at)}</td>
    <td class="status">${esc(a.status)}${a.grouped_under ? ` under <a href="#/alert/${encodeURIComponent(a.grouped_under)}">its incident</a>` : ""}</td></tr>`).join("")
    || "<tr><td colspan=5 class=muted>No alert about this account is held.</td></tr>";
}

// profileHTML is the account's habit as the detector learned it: what a
// support agent weighs before calling a new phone abroad theft or travel.
function profileHTML(p) {
  if (!p) return `<p class="muted" id="profile">No learned habit yet (account not seen, or idle past expiry).</p>`;
  const money = (v) => (v / 100).toLocaleString() + " " + esc(p.currency || "");
  const items = [
    p.typical_amount ? `usually pays <strong>${money(p.typical_amount)}</strong>` : "no payments yet",
    p.home_country ? `home <strong>${esc(p.home_country)}</strong>` + (p.countries.length > 1 ? ` (also ${p.countries.slice(1).map(esc).join(", ")})` : "") : "",
    `${p.known_devices} known device${p.known_devices === 1 ? "" : "s"}, ${p.known_networks} network${p.known_networks === 1 ? "" : "s"}`,
    `${p.regular_payees} regular payee${p.regular_payees === 1 ? "" : "s"}`,
    p.balance !== undefined ? `balance ${money(p.balance)}` : "",
    p.last_login ? `last login ${when(p.last_login)}${p.last_login_country ? " from " + esc(p.last_login_country) : ""}` : "",
    p.last_security_change ? `last security change ${when(p.last_security_change)}` : "",
    `seen since ${when(p.first_seen)} (${p.events} events)`,
  ].filter(Boolean);
  return `<p id="profile" class="profile">Habit: ${items.join(" · ")}</p>`;
}

function isChain(d) { return (d.rules || []).some((r) => r.category === "theft"); }

$("#account-search").addEventListener("submit", (ev) => {
  ev.preventDefault();
  location.hash = "#/account/" + encodeURIComponent($("#account-id").value.trim());
});

async function act(kind) {
  const id = $("#account-id").value.trim(), reason = $("#act-reason").value.trim();
  if (!reason) { $("#act-result").textContent = "A reason is required."; return; }
  try {
    await api("POST", `/v1/accounts/${encodeURIComponent(id)}/${kind}`, { reason });
    $("#act-result").textContent = kind === "unfreeze" ? "Unfrozen; the audit trail records it." : "Frozen.";
    $("#act-reason").value = "";
    await renderAccount(id);
  } catch (e) { $("#act-result").textContent = e.message; }
}
$("#btn-freeze").addEventListener("click", () => act("freeze"));
$("#btn-unfreeze").addEventListener("click", () => act("unfreeze"));

// ---- overview
function lineChart(el, series) {
  const w = 600, h = 120, pad = 4;
  const n = Math.max(...series.map((s) => s.values.length), 2);
  const maxV = Math.max(1, ...series.flatMap((s) => s.values));
  const path = (vals) => vals.map((v, i) => `${i ? "L" : "M"}${(pad + (i * (w - 2 * pad)) / (n - 1)).toFixed(1)},${(h - pad - (v / maxV) * (h - 2 * pad)).toFixed(1)}`).join("");
  el.innerHTML = `<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none" role="img">${series.map((s) =>
    `<path d="${path(s.values)}" fill="none" stroke="${s.color}" stroke-width="2"/>`).join("")}</svg>`;
}

async function renderOverview() {
  const s = await api("GET", "/v1/stats");
  const m = s.minutes;
  lineChart($("#chart-events"), [{ color: "#5b7db1", values: m.map((x) => x.events / 60) }]);
  $("#events-now").textContent = (m.length ? (m[m.length - 1].events / 60).toFixed(1) : "0") + " events/s";
  const actions = ["review", "step_up", "freeze"];
  lineChart($("#chart-decisions"), actions.map((a) => ({ color: colors[a], values: m.map((x) => (x.decisions || {})[a] || 0) })));
  $("#decisions-legend").innerHTML = actions.map((a) => `<li><i style="background:${colors[a]}"></i>${a}: ${m.reduce((t, x) => t + ((x.decisions || {})[a] || 0), 0)}</li>`).join("");
  const top = s.top_rules.slice(0, 10), max = Math.max(1, ...top.map((r) => r.hits));
  $("#top-rules").innerHTML = top.map((r) => `<li><code>${esc(r.id)}</code><span class="b" style="width:${(100 * r.hits) / max}%"></span><span>${r.hits}</span></li>`).join("") || "<li class=muted>no rule fired</li>";
  $("#breaker-state").textContent = s.breaker.open ? "OPEN — automatic freezing stopped" : "closed";
  $("#breaker-state").className = "big " + (s.breaker.open ? "state-frozen" : "state-ok");
  $("#breaker-why").textContent = s.breaker.open ? s.breaker.why : `limit ${s.breaker.max_freezes} automatic freezes per ${s.breaker.window}`;
}

// ---- rules
async function renderRules() {
  const [set, s] = await Promise.all([api("GET", "/v1/rules"), api("GET", "/v1/stats")]);
  $("#rules-version").textContent = "version " + set.version;
  const hour = Object.fromEntries(s.top_rules.map((r) => [r.id, r.hits]));
  $("#rules-table tbody").innerHTML = set.rules.map((r) => `<tr><td><code>${esc(r.id)}</code><div class="summary">${esc(r.description)}</div></td>
    <td>${esc(r.mode)}</td><td>${esc(r.category)}</td><td>${esc(r.severity)}</td><td>${r.score}</td><td>${esc(r.action || "")}</td>
    <td>${hour[r.id] || 0}</td><td>${(s.rule_hits_total || {})[r.id] || 0}</td></tr>`).join("");
}

// ---- sign-in
$("#signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("wg-token", $("#token").value.trim());
  $("#token").value = "";
  try {
    await api("GET", "/v1/whoami");
    $("#signin-error").textContent = "";
    if (!location.hash) location.hash = "#/alerts";
    show();
  } catch (e) {
    sessionStorage.removeItem("wg-token");
    $("#signin-error").textContent = "That token was refused.";
  }
});
$("#signout").addEventListener("click", signOut);
// A new filter or page size lists from the newest again.
const relist = () => { alertPages = [""]; return renderAlerts(); };
for (const f of ["#alert-category", "#alert-severity", "#alert-status", "#alert-page-size"]) $(f).addEventListener("change", relist);
$("#alerts-older").addEventListener("click", (e) => {
  if (!e.target.dataset.next) return;
  alertPages.push(e.target.dataset.next);
  renderAlerts().catch((err) => toast(err.message));
});
$("#alerts-newer").addEventListener("click", () => {
  if (alertPages.length > 1) alertPages.pop();
  renderAlerts().catch((err) => toast(err.message));
});
$("#alerts-newest").addEventListener("click", () => relist().catch((err) => toast(err.message)));
window.addEventListener("hashchange", show);
show();
