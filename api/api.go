// Package api owns walletguard's HTTP surface (CONTRACT §3): health and
// readiness probes, Prometheus metrics, and the bearer-token /v1 API with its
// roles. It translates HTTP to calls on a Backend and back; it holds no
// state of its own and makes no decisions.
package api

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/http/pprof"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/console"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/outbox"
	"github.com/walletguard/walletguard/rules"
)

// Account is the answer of GET /v1/accounts/{id}.
type Account struct {
	AccountID       string               `json:"account_id"`
	Frozen          bool                 `json:"frozen"`
	FrozenReason    string               `json:"frozen_reason"`
	StepUpRequired  bool                 `json:"step_up_required"`
	RiskScore       int                  `json:"risk_score"`
	RecentDecisions []TimelineEntry      `json:"recent_decisions"`
	RecentActions   []enforce.AuditEntry `json:"recent_actions"`
	State           *enforce.State       `json:"state,omitempty"`
	// Profile is the account's learned habit (absent if the detector does not know it).
	Profile *detector.Profile `json:"profile,omitempty"`
}

// TimelineEntry is a decision with the event behind it, briefly.
type TimelineEntry struct {
	detector.Decision
	Event *EventBrief `json:"event,omitempty"`
}

// EventBrief is what a support agent needs of an event on a timeline.
type EventBrief struct {
	Type           string `json:"type"`
	Kind           string `json:"kind,omitempty"`
	Result         string `json:"result,omitempty"`
	Status         string `json:"status,omitempty"`
	Change         string `json:"change,omitempty"`
	Amount         int64  `json:"amount,omitempty"`
	Currency       string `json:"currency,omitempty"`
	MerchantID     string `json:"merchant_id,omitempty"`
	CounterpartyID string `json:"counterparty_id,omitempty"`
	PaymentID      string `json:"payment_id,omitempty"`
	ErrorCode      string `json:"error_code,omitempty"`
	DeviceID       string `json:"device_id,omitempty"`
	IP             string `json:"ip,omitempty"`
	Country        string `json:"country,omitempty"`
}

// Brief makes the timeline view of an event.
func Brief(ev *event.Event) *EventBrief {
	return &EventBrief{Type: ev.Type.String(), Kind: ev.Kind, Result: ev.Result, Status: ev.Status, Change: ev.Change,
		Amount: ev.Amount, Currency: ev.Currency, MerchantID: ev.MerchantID, CounterpartyID: ev.CounterpartyID,
		PaymentID: ev.PaymentID, ErrorCode: ev.ErrorCode, DeviceID: ev.DeviceID, IP: ev.IP, Country: ev.Country()}
}

// Stats is the last hour, per minute, for the console's overview.
type Stats struct {
	Minutes []MinuteStats `json:"minutes"`
	// TopRules are the rules that fired in the last hour, most first.
	TopRules      []RuleHits            `json:"top_rules"`
	RuleHitsTotal map[string]int        `json:"rule_hits_total"`
	Breaker       enforce.BreakerStatus `json:"breaker"`
}

// MinuteStats counts one wall-clock minute.
type MinuteStats struct {
	T         time.Time      `json:"t"`
	Events    int            `json:"events"`
	Decisions map[string]int `json:"decisions"`
}

// RuleHits is a rule and how often it fired.
type RuleHits struct {
	ID   string `json:"id"`
	Hits int    `json:"hits"`
}

// Backend is what the API needs from the daemon.
type Backend interface {
	Ready() (bool, string)
	// Standby reports whether this instance stands by for another that
	// owns the event partitions, or is stopping and handing them over, and
	// says so in words: it answers reads from the state it has, and
	// refuses changes (see owner).
	Standby() (bool, string)
	// Owner is the API address (host:port) of the instance that owns the
	// partitions, for a standby to pass changes on to; "" if unknown.
	Owner() string
	// Decides reports whether this instance decides the account: always,
	// unless instances share the partitions (kafka.share_partitions); then
	// when the account is one of its partitions'.
	Decides(accountID string) bool
	// Peers lists where the API of each other member that shares the
	// partitions answers; nil when instances do not share them.
	Peers() []string
	// HoldsAlert reports whether this instance holds the alert: always,
	// unless instances share the partitions.
	HoldsAlert(id string) bool
	Account(id string) Account
	Decisions(accountID string, limit int) []detector.Decision
	// Alerts lists the alerts q picks, newest first.
	Alerts(q alerts.Query) []alerts.Alert
	// Alert returns the alert with id, as held now.
	Alert(id string) (alerts.Alert, bool)
	Rules() *rules.Set
	ReloadRules() (*rules.Set, error)
	Score(ev *event.Event) (detector.Decision, error)

	Freeze(id, actor, reason string) (enforce.State, error)
	Unfreeze(id, actor, reason string) (enforce.State, error)
	Enroll(id, actor string) (enforce.Enrollment, error)
	Verify(id, actor, code string) (enforce.VerifyResult, error)
	Unlock2FA(id, actor, reason string) (enforce.State, error)
	Breaker() enforce.BreakerStatus
	ResetBreaker(actor, reason string) (enforce.BreakerStatus, error)
	// Audit lists the trail newest first, from before on (0: the newest),
	// and returns where the next page begins (0: the trail ends).
	Audit(account string, limit int, before uint64) ([]enforce.AuditEntry, uint64, error)
	// AlertLifecycle acknowledges (verb "ack") or resolves an alert.
	AlertLifecycle(id, actor, verb, note string) (alerts.Alert, error)
	DeadAlerts(limit int) []outbox.Item
	// LogLevel is the process's switchable level, nil if fixed.
	LogLevel() *slog.LevelVar
	Stats() Stats
}

// maxBody bounds request bodies: the largest legitimate one is an event.
const maxBody = event.MaxSize + 1024

// New returns the HTTP handler.
func New(b Backend, tokens []config.Token, reg *prometheus.Registry, log *slog.Logger) http.Handler {
	s := &server{b: b, tokens: tokens, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		// The freeze-storm breaker is reported, not made a reason to stop
		// traffic: with it open walletguard still scores and steps up.
		br := b.Breaker()
		if ok, why := b.Ready(); !ok {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "reason": why, "freeze_breaker": br})
			return
		}
		status := "ready"
		if br.Open {
			status = "ready, degraded: automatic freezing stopped by the freeze-storm breaker"
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": status, "freeze_breaker": br})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	// The console is static; what it shows needs a token like any client.
	mux.Handle("GET /console/", console.Handler("/console/"))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/console/", http.StatusFound)
	})
	mux.HandleFunc("GET /v1/whoami", s.auth(s.whoami, "viewer", "support", "gateway"))
	mux.HandleFunc("GET /v1/stats", s.auth(s.stats, "viewer", "support"))
	mux.HandleFunc("GET /v1/accounts/{id}", s.auth(s.byAccount(pathID, s.account), "viewer", "gateway", "support"))
	mux.HandleFunc("GET /v1/decisions", s.auth(s.byAccount(queryAccount, s.decisions), "viewer", "support"))
	mux.HandleFunc("GET /v1/alerts", s.auth(s.byAccount(queryAccount, s.alerts), "viewer", "support"))
	mux.HandleFunc("GET /v1/rules", s.auth(s.rules, "viewer"))
	mux.HandleFunc("POST /v1/rules/reload", s.auth(s.reload))
	mux.HandleFunc("POST /v1/score", s.auth(s.owner(s.byAccount(bodyAccount, s.score)), "gateway"))
	mux.HandleFunc("POST /v1/accounts/{id}/freeze", s.auth(s.owner(s.byAccount(pathID, s.freeze)), "support"))
	mux.HandleFunc("POST /v1/accounts/{id}/unfreeze", s.auth(s.owner(s.byAccount(pathID, s.unfreeze)), "support"))
	mux.HandleFunc("POST /v1/accounts/{id}/2fa/enroll", s.auth(s.owner(s.byAccount(pathID, s.enroll)), "gateway"))
	mux.HandleFunc("POST /v1/accounts/{id}/2fa/verify", s.auth(s.owner(s.byAccount(pathID, s.verify)), "gateway"))
	mux.HandleFunc("POST /v1/accounts/{id}/2fa/unlock", s.auth(s.owner(s.byAccount(pathID, s.unlock)), "support"))
	mux.HandleFunc("POST /v1/alerts/{id}/ack", s.auth(s.owner(s.byAlert(s.alertLifecycle("ack"))), "support"))
	mux.HandleFunc("POST /v1/alerts/{id}/resolve", s.auth(s.owner(s.byAlert(s.alertLifecycle("resolve"))), "support"))
	mux.HandleFunc("GET /v1/alerts/dead-letters", s.auth(s.deadAlerts, "viewer", "support"))
	mux.HandleFunc("GET /v1/alerts/{id}", s.auth(s.byAlert(s.alert), "viewer", "support"))
	mux.HandleFunc("GET /v1/log/level", s.auth(s.getLogLevel))
	mux.HandleFunc("PUT /v1/log/level", s.auth(s.setLogLevel))
	mux.HandleFunc("GET /v1/audit", s.auth(s.byAccount(queryAccount, s.audit), "viewer", "support"))
	mux.HandleFunc("GET /v1/enforce/breaker", s.auth(s.breaker, "viewer", "support"))
	mux.HandleFunc("POST /v1/enforce/breaker/reset", s.auth(s.owner(s.resetBreaker)))
	// Go's profiler, for the admin role only: heap and CPU profiles of a
	// daemon that misbehaves in production, without restarting it.
	mux.HandleFunc("GET /debug/pprof/", s.auth(pprof.Index))
	mux.HandleFunc("GET /debug/pprof/profile", s.auth(pprof.Profile))
	mux.HandleFunc("/v1/", s.auth(func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	}, "viewer", "support", "gateway"))
	return mux
}

type server struct {
	b      Backend
	tokens []config.Token
	log    *slog.Logger
	routes routes
}

type (
	ctxActor struct{}
	ctxRole  struct{}
)

// auth checks the bearer token; admin may do everything, other roles only
// what the route lists. The handler finds who called in the context.
func (s *server) auth(h http.HandlerFunc, roles ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || tok == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="walletguard"`)
			writeErr(w, http.StatusUnauthorized, "missing bearer token")
			return
		}
		role, name := "", ""
		for _, t := range s.tokens {
			// Every token is compared, in constant time: the answer's timing
			// tells nothing about which token came close.
			if subtle.ConstantTimeCompare([]byte(t.Token), []byte(tok)) == 1 {
				role, name = t.Role, t.Name
			}
		}
		if role == "" {
			writeErr(w, http.StatusUnauthorized, "unknown token")
			return
		}
		if role != "admin" && !contains(roles, role) {
			writeErr(w, http.StatusForbidden, "role "+role+" may not "+r.Method+" "+r.URL.Path)
			return
		}
		if name == "" {
			name = role + " token"
		}
		if standby, _ := s.b.Standby(); standby {
			// Reads still answer, from the state followed: say whose it is.
			w.Header().Set("Walletguard-Standby", "following the owner of the partitions; state may be seconds behind")
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		ctx := context.WithValue(r.Context(), ctxActor{}, name)
		h(w, r.WithContext(context.WithValue(ctx, ctxRole{}, role)))
	}
}

// owner guards a request that changes state: a standby passes it on to the
// instance that owns the partitions, or refuses it when it cannot. Its
// state follows the owner's, seconds behind; a freeze, a verified code or
// an acknowledged alert applied here would be unknown to the owner (which
// answers the gateway) and lost or contradicted when the standby takes
// over. A request passed on once is not passed on again: two instances
// that each take the other for the owner (in a rebalance) refuse it.
func (s *server) owner(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		standby, why := s.b.Standby()
		if !standby {
			h(w, r)
			return
		}
		if r.Header.Get(forwardedHeader) == "" {
			if addr := s.b.Owner(); addr != "" {
				forward(w, r, addr, why)
				return
			}
		}
		writeErr(w, http.StatusServiceUnavailable, why+"; changes go to the instance that owns the partitions (its /readyz answers 200)")
	}
}

// forwardedHeader marks a request a standby passed on; ForwardedToHeader
// names, on the answer, the instance that made the change.
const (
	forwardedHeader   = "Walletguard-Forwarded"
	ForwardedToHeader = "Walletguard-Forwarded-To"
)

// forwarding is how a standby reaches the owner: an owner that does not
// answer fails the request in seconds, not when the caller gives up.
var forwarding = &http.Transport{
	DialContext:           (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
	ResponseHeaderTimeout: 15 * time.Second,
	MaxIdleConnsPerHost:   16,
	IdleConnTimeout:       time.Minute,
}

// forward passes a change on to the owner at addr and its answer back. The
// caller's credentials go with it: the owner checks them again.
func forward(w http.ResponseWriter, r *http.Request, addr, why string) {
	w.Header().Del("Walletguard-Standby") // the answer is the owner's
	p := &httputil.ReverseProxy{
		Transport: forwarding,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "http", Host: addr})
			pr.Out.Header.Set(forwardedHeader, "1")
		},
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Set(ForwardedToHeader, addr)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			writeErr(w, http.StatusServiceUnavailable, why+"; the instance that owns the partitions, at "+addr+", did not answer: "+err.Error())
		},
	}
	p.ServeHTTP(w, r)
}

func contains(l []string, v string) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}
	return false
}

func (s *server) account(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.b.Account(r.PathValue("id")))
}

// limitParam reads ?limit=: def when absent, at most most (0: no bound).
// Anything but a positive whole number is answered with a 400, and ok is
// false.
func limitParam(w http.ResponseWriter, r *http.Request, def, most int) (n int, ok bool) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		writeErr(w, http.StatusBadRequest, "limit "+strconv.Quote(v)+": want a positive whole number")
		return 0, false
	}
	if most > 0 {
		n = min(n, most)
	}
	return n, true
}

func (s *server) decisions(w http.ResponseWriter, r *http.Request) {
	limit, ok := limitParam(w, r, 100, 1000)
	if !ok {
		return
	}
	ds := s.b.Decisions(r.URL.Query().Get("account_id"), limit)
	if ds == nil {
		ds = []detector.Decision{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"decisions": ds})
}

func (s *server) alerts(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	aq := alerts.Query{Status: q.Get("status"), Category: q.Get("category"), AccountID: q.Get("account_id"),
		MerchantID: q.Get("merchant_id"), MinSeverity: q.Get("min_severity")}
	if aq.Status != "" && aq.Status != "all" && !slices.Contains(alerts.Statuses, aq.Status) {
		writeErr(w, http.StatusBadRequest, "status must be one of "+strings.Join(alerts.Statuses, ", ")+" or all")
		return
	}
	if aq.MinSeverity != "" && rules.SeverityRank(aq.MinSeverity) == 0 {
		writeErr(w, http.StatusBadRequest, "min_severity must be one of "+strings.Join(rules.Severities(), ", "))
		return
	}
	// limit: the newest that many. Without it, every alert picked; a
	// console polling during a large incident asks for a page, and the
	// next with after, the token the page ended with.
	var ok bool
	if aq.Limit, ok = limitParam(w, r, 0, 0); !ok {
		return
	}
	if v := q.Get("after"); v != "" {
		var err error
		if aq.After, err = alerts.ParseCursor(v); err != nil {
			writeErr(w, http.StatusBadRequest, "after: "+err.Error())
			return
		}
	}
	out := s.b.Alerts(aq)
	mine := len(out)
	if aq.AccountID == "" {
		// Members that share the partitions each hold their own alerts:
		// support's list is all of theirs (each its newest, if limited).
		s.fromPeers(r, func(body []byte) error {
			var theirs struct {
				Alerts []alerts.Alert `json:"alerts"`
			}
			if err := json.Unmarshal(body, &theirs); err != nil {
				return err
			}
			out = append(out, theirs.Alerts...)
			return nil
		})
	}
	if len(out) > mine { // the backend's own list comes sorted and once each
		sort.SliceStable(out, func(i, j int) bool { return alerts.Newer(&out[i], &out[j]) })
		// One alert held by two (a partition's previous owner still
		// holding what it raised before a takeover): the newest copy.
		seen := map[string]bool{}
		out = slices.DeleteFunc(out, func(a alerts.Alert) bool {
			dup := seen[a.AlertID]
			seen[a.AlertID] = true
			return dup
		})
		if aq.Limit > 0 && len(out) > aq.Limit {
			out = out[:aq.Limit]
		}
	}
	if out == nil {
		out = []alerts.Alert{}
	}
	resp := map[string]any{"alerts": out}
	if aq.Limit > 0 && len(out) == aq.Limit {
		// A full page: there may be more after it.
		resp["next"] = alerts.CursorOf(&out[len(out)-1]).String()
	}
	writeJSON(w, http.StatusOK, resp)
}

type ruleInfo struct {
	ID          string   `json:"id"`
	Description string   `json:"description"`
	On          []string `json:"on"`
	Score       int      `json:"score"`
	Category    string   `json:"category"`
	Severity    string   `json:"severity"`
	Action      string   `json:"action,omitempty"`
	Mode        string   `json:"mode"`
	Tags        []string `json:"tags,omitempty"`
	File        string   `json:"file"`
}

func (s *server) rules(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, describeSet(s.b.Rules()))
}

func describeSet(set *rules.Set) map[string]any {
	var out []ruleInfo
	for _, r := range set.Rules {
		mode := "enforce"
		if r.Shadow {
			mode = "shadow"
		}
		out = append(out, ruleInfo{ID: r.ID, Description: r.Description, On: r.On, Score: r.Score, Category: r.Category,
			Severity: r.Severity, Action: r.Action, Mode: mode, Tags: r.Tags, File: r.File})
	}
	return map[string]any{"version": set.Version, "rules": out}
}

func (s *server) reload(w http.ResponseWriter, _ *http.Request) {
	set, err := s.b.ReloadRules()
	if err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{
			"error": "rule set refused; the previous one stays live: " + err.Error(), "version": s.b.Rules().Version})
		return
	}
	writeJSON(w, http.StatusOK, describeSet(set))
}

func (s *server) score(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeErr(w, http.StatusRequestEntityTooLarge, "read body: "+err.Error())
		return
	}
	ev, err := event.DecodeOwned(body, time.Now())
	if err != nil {
		resp := map[string]string{"error": err.Error(), "reason": string(event.ReasonOf(err))}
		if re := (*event.RejectError)(nil); errors.As(err, &re) && re.Field != "" {
			resp["field"] = re.Field
		}
		writeJSON(w, http.StatusBadRequest, resp)
		return
	}
	d, err := s.b.Score(&ev)
	if err != nil {
		var dup *DuplicateError
		if errors.As(err, &dup) {
			writeErr(w, http.StatusConflict, err.Error())
			return
		}
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// actionBody is the body of state-changing calls.
type actionBody struct {
	Reason string `json:"reason"`
	// Operator names the person acting through a shared support tool; it is
	// recorded beside the token's name in the audit trail.
	Operator string `json:"operator"`
	Code     string `json:"code"`
}

// readAction decodes an optional JSON body; the actor is the token's name
// plus the operator it names.
func readAction(w http.ResponseWriter, r *http.Request) (actionBody, string, bool) {
	var b actionBody
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil && !errors.Is(err, io.EOF) {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeErr(w, http.StatusRequestEntityTooLarge, "body too large")
		} else {
			writeErr(w, http.StatusBadRequest, "body: "+err.Error())
		}
		return b, "", false
	}
	b.Reason, b.Operator = strings.TrimSpace(b.Reason), strings.TrimSpace(b.Operator)
	actor, _ := r.Context().Value(ctxActor{}).(string)
	if b.Operator != "" {
		actor += " (" + b.Operator + ")"
	}
	return b, actor, true
}

func (s *server) freeze(w http.ResponseWriter, r *http.Request) {
	s.stateAction(w, r, "", s.b.Freeze)
}

func (s *server) unfreeze(w http.ResponseWriter, r *http.Request) {
	s.stateAction(w, r, "a reason is required to unfreeze (it goes into the audit trail)", s.b.Unfreeze)
}

func (s *server) unlock(w http.ResponseWriter, r *http.Request) {
	s.stateAction(w, r, "a reason is required to unlock two-factor verification", s.b.Unlock2FA)
}

// stateAction runs a state-changing call on the path's account; a non-empty
// needReason is the 400 answer when the body has no reason.
func (s *server) stateAction(w http.ResponseWriter, r *http.Request, needReason string, do func(id, actor, reason string) (enforce.State, error)) {
	b, actor, ok := readAction(w, r)
	if !ok {
		return
	}
	if b.Reason == "" {
		if needReason != "" {
			writeErr(w, http.StatusBadRequest, needReason)
			return
		}
		b.Reason = "frozen by support"
	}
	st, err := do(r.PathValue("id"), actor, b.Reason)
	s.answerState(w, r, st, err)
}

func (s *server) answerState(w http.ResponseWriter, r *http.Request, st enforce.State, err error) {
	if err != nil {
		s.actionErr(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"account_id": r.PathValue("id"), "state": st})
}

// actionErr maps enforcement errors to statuses; the message never carries
// a secret (enforce's errors do not).
func (s *server) actionErr(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, enforce.ErrNotFound):
		writeErr(w, http.StatusConflict, err.Error())
	case errors.Is(err, enforce.ErrNotEnrolled):
		writeErr(w, http.StatusConflict, err.Error())
	case errors.Is(err, enforce.ErrLocked):
		writeErr(w, http.StatusLocked, err.Error())
	case errors.Is(err, enforce.ErrBadCode):
		writeErr(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, enforce.ErrWrongCode), errors.Is(err, enforce.ErrReplayed):
		writeErr(w, http.StatusUnprocessableEntity, err.Error())
	case errors.Is(err, enforce.ErrNoKey):
		writeErr(w, http.StatusServiceUnavailable, err.Error())
	default:
		s.log.Error("account action failed", "path", r.URL.Path, "err", err)
		writeErr(w, http.StatusInternalServerError, err.Error())
	}
}

func (s *server) enroll(w http.ResponseWriter, r *http.Request) {
	_, actor, ok := readAction(w, r)
	if !ok {
		return
	}
	en, err := s.b.Enroll(r.PathValue("id"), actor)
	if err != nil {
		s.actionErr(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"otpauth_url": en.OTPAuthURL, "qr_png_base64": base64.StdEncoding.EncodeToString(en.QRPNG)})
}

func (s *server) verify(w http.ResponseWriter, r *http.Request) {
	b, actor, ok := readAction(w, r)
	if !ok {
		return
	}
	res, err := s.b.Verify(r.PathValue("id"), actor, b.Code)
	if err != nil {
		s.actionErr(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"verified": true, "step_up_cleared": res.StepUpCleared})
}

func (s *server) alertLifecycle(verb string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, actor, ok := readAction(w, r)
		if !ok {
			return
		}
		al, err := s.b.AlertLifecycle(r.PathValue("id"), actor, verb, b.Reason)
		switch {
		case errors.Is(err, alerts.ErrNoAlert):
			writeErr(w, http.StatusNotFound, err.Error())
		case err != nil:
			s.actionErr(w, r, err)
		default:
			writeJSON(w, http.StatusOK, al)
		}
	}
}

// alert answers one alert as held now: a support agent holding an alert
// id from a webhook sees who acknowledged it and what it has grown to.
func (s *server) alert(w http.ResponseWriter, r *http.Request) {
	al, ok := s.b.Alert(r.PathValue("id"))
	if !ok {
		writeErr(w, http.StatusNotFound, fmt.Errorf("alert %s: %w", r.PathValue("id"), alerts.ErrNoAlert).Error())
		return
	}
	writeJSON(w, http.StatusOK, al)
}

func (s *server) deadAlerts(w http.ResponseWriter, r *http.Request) {
	limit, ok := limitParam(w, r, 100, 1000)
	if !ok {
		return
	}
	items := s.b.DeadAlerts(limit)
	if items == nil {
		items = []outbox.Item{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"dead_letters": items})
}

func (s *server) whoami(w http.ResponseWriter, r *http.Request) {
	name, _ := r.Context().Value(ctxActor{}).(string)
	role, _ := r.Context().Value(ctxRole{}).(string)
	writeJSON(w, http.StatusOK, map[string]string{"name": name, "role": role})
}

func (s *server) stats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.b.Stats())
}

func (s *server) getLogLevel(w http.ResponseWriter, _ *http.Request) {
	lv := s.b.LogLevel()
	if lv == nil {
		writeErr(w, http.StatusNotImplemented, "the log level of this process is fixed")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"level": strings.ToLower(lv.Level().String())})
}

// setLogLevel switches the level at runtime (admin): {"level": "debug"}.
func (s *server) setLogLevel(w http.ResponseWriter, r *http.Request) {
	lv := s.b.LogLevel()
	if lv == nil {
		writeErr(w, http.StatusNotImplemented, "the log level of this process is fixed")
		return
	}
	var body struct {
		Level string `json:"level"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		writeErr(w, http.StatusBadRequest, "body: "+err.Error())
		return
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(body.Level)); err != nil {
		writeErr(w, http.StatusBadRequest, "level: want debug, info, warn or error")
		return
	}
	old := lv.Level()
	lv.Set(l)
	actor, _ := r.Context().Value(ctxActor{}).(string)
	s.log.Warn("log level changed", "from", old.String(), "to", l.String(), "by", actor)
	writeJSON(w, http.StatusOK, map[string]string{"level": strings.ToLower(l.String())})
}

func (s *server) audit(w http.ResponseWriter, r *http.Request) {
	limit, ok := limitParam(w, r, 100, 1000)
	if !ok {
		return
	}
	var before uint64
	if v := r.URL.Query().Get("after"); v != "" {
		// The token a page ended with: the place of its last entry in the
		// stored trail.
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			writeErr(w, http.StatusBadRequest, "after "+strconv.Quote(v)+": not a page's next token")
			return
		}
		before = n
	}
	entries, next, err := s.b.Audit(r.URL.Query().Get("account_id"), limit, before)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	if entries == nil {
		entries = []enforce.AuditEntry{}
	}
	resp := map[string]any{"entries": entries}
	if next != 0 {
		resp["next"] = strconv.FormatUint(next, 10)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *server) breaker(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.b.Breaker())
}

func (s *server) resetBreaker(w http.ResponseWriter, r *http.Request) {
	b, actor, ok := readAction(w, r)
	if !ok {
		return
	}
	if b.Reason == "" {
		writeErr(w, http.StatusBadRequest, "a reason is required to close the breaker")
		return
	}
	st, err := s.b.ResetBreaker(actor, b.Reason)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// DuplicateError is returned by Backend.Score for an event already scored.
type DuplicateError struct{ EventID string }

func (e *DuplicateError) Error() string { return "event " + e.EventID + " was already scored" }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeErr(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
