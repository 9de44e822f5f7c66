// Package alerts owns support alerts: it groups rule findings into one alert
// per incident (a stuck payment, a merchant outage, a takeover of one
// account), folds later evidence into the open alert instead of raising new
// ones, writes the summary and recommended actions a support agent can act on,
// and keeps the alerts durable. Delivery to webhooks is the job of its sinks.
package alerts

import (
	"cmp"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/rules"
)

// Alert is a support alert (CONTRACT §2).
type Alert struct {
	AlertID            string    `json:"alert_id"`
	DedupKey           string    `json:"dedup_key"`
	Severity           string    `json:"severity"`
	Category           string    `json:"category"`
	AccountID          string    `json:"account_id,omitempty"`
	MerchantID         string    `json:"merchant_id,omitempty"`
	AppVersion         string    `json:"app_version,omitempty"`
	IP                 string    `json:"ip,omitempty"` // credential stuffing: the source
	Title              string    `json:"title"`
	Summary            string    `json:"summary"`
	Evidence           []string  `json:"evidence"`
	RecommendedActions []string  `json:"recommended_actions"`
	CreatedAt          time.Time `json:"created_at"`
	UpdatedAt          time.Time `json:"updated_at"`
	Status             string    `json:"status"`
	Count              int       `json:"count"`
	AffectedAccounts   int       `json:"affected_accounts,omitempty"`
	Rules              []string  `json:"rules"`
	DecisionIDs        []string  `json:"decision_ids"`
	Action             string    `json:"action,omitempty"` // strongest action taken on the account
	Cause              string    `json:"cause,omitempty"`  // stuck retries: network, balance, verification, …
	// GroupedUnder is the alert this one was folded into (status
	// "grouped"): a user's stuck payment at a merchant whose outage was
	// recognised after the user's alert went out.
	GroupedUnder string `json:"grouped_under,omitempty"`
	// Reason is the latest finding's reason, with its numbers; the summary
	// leads with it.
	Reason string `json:"reason,omitempty"`
	// Lifecycle: who acknowledged and resolved it, and when.
	AcknowledgedBy string    `json:"acknowledged_by,omitempty"`
	AcknowledgedAt time.Time `json:"acknowledged_at,omitzero"`
	ResolvedBy     string    `json:"resolved_by,omitempty"`
	ResolvedAt     time.Time `json:"resolved_at,omitzero"`
	Resolution     string    `json:"resolution,omitempty"`
	// ManualAt is when support last acknowledged or resolved the alert: an
	// instance taking a lifecycle change over from another skips any not
	// newer.
	ManualAt time.Time `json:"manual_at,omitzero"`

	accounts map[string]bool
	// accountList holds the keys of accounts in the order they joined. It
	// is only ever appended to, so a checkpoint takes it without a copy.
	accountList []string
	rev         uint64 // see Revision
	filed       int64  // 1 + the hour of Manager.expiry it is filed under; 0: not filed
}

// addAccount counts account among those the alert affects.
func (a *Alert) addAccount(account string) {
	if !a.accounts[account] {
		account = strings.Clone(account)
		a.accounts[account] = true
		a.accountList = append(a.accountList, account)
	}
	a.AffectedAccounts = len(a.accounts)
}

// revisions numbers the copies of alerts handed out.
var revisions atomic.Uint64

// Revision orders the copies of an alert: one with a higher revision was
// taken later, from a state at least as new. Versions of an alert reach
// receivers by two paths (the pipeline's checkpoint, a manual action's own
// write); the revision tells which is newer.
func (a Alert) Revision() uint64 { return a.rev }

const (
	maxEvidence = 20
	// An incident with no new evidence for this long (event time) is over:
	// new findings open a new alert.
	quietAfter = 6 * time.Hour
)

// Manager groups findings into alerts. Driven by the pipeline goroutine.
type Manager struct {
	tpl  *Templates
	open map[string]*Alert // by dedup key
	// ids finds an alert held by its id (alert id -> dedup key) for the
	// API's get, acknowledge and resolve: they run under the pipeline's
	// lock, and a walk over every alert held paused it for a millisecond
	// or more once tens of thousands were held.
	ids map[string]string
	// byAccount finds an account's alerts (account id -> dedup keys) for
	// its listing, the console's account page: a walk over every alert
	// held took the pipeline's lock for over 10 ms at 100,000.
	byAccount map[string][]string
	outages   map[string]string // "merchant:<id>" or "app:<version>" -> dedup key of its open outage or app-fault alert
	dirty     map[string]bool
	seen      int // observations since the last prune
	// related indexes the alerts a new incident alert may take in, so that
	// grouping looks at a handful instead of every alert held: stuck
	// payments by "merchant:<id>" and "app:<version>", account alerts by
	// "account:<id>". Keys may be stale (grouped, pruned); users check.
	related map[string][]string
	// expiry files each alert held under the hour of its last news
	// (UpdatedAt), so that prune visits only the alerts old enough to go:
	// a pass over every alert held took the pipeline tens of milliseconds
	// once tens of thousands were held. An alert whose news moves to
	// another hour is filed again there; its older entry is stale
	// (Alert.filed says which is current) and prune drops it.
	expiry map[int64][]string
	// changelog, if set, receives every alert saved (nil: deleted), as stored.
	changelog func(key string, v []byte)
	// split: Observe leaves the findings that span accounts to
	// ObserveSpanning (see Spanning).
	split bool
}

// keepFor is how long (event time) an alert with no news stays in the
// store; ClickHouse keeps the history.
const keepFor = 7 * 24 * time.Hour

// SetChangelog makes every save hand each alert it writes to fn, keyed as
// stored, with a nil value for one deleted; PutRecord writes them back. It
// runs inside the saving transaction.
func (m *Manager) SetChangelog(fn func(key string, v []byte)) { m.changelog = fn }

// MarkAllChanged makes every alert held part of the next save: for a
// changelog that must be written afresh.
func (m *Manager) MarkAllChanged() {
	for key := range m.open {
		m.dirty[key] = true
	}
}

// PutRecord writes into tx an alert as a changelog got it (SetChangelog);
// nil deletes it. Load then reads it.
func PutRecord(tx *bolt.Tx, key string, v []byte) error {
	b, err := tx.CreateBucketIfNotExists(bucket)
	if err != nil {
		return err
	}
	if v == nil {
		return b.Delete([]byte(key))
	}
	return b.Put([]byte(key), v)
}

// CheckRecord reports whether v is a stored alert that Load can read: a
// restore checks every record before it replaces anything.
func CheckRecord(key string, v []byte) error {
	var s stored
	if err := json.Unmarshal(v, &s); err != nil {
		return fmt.Errorf("alert %s: %w", key, err)
	}
	return nil
}

// DropRecords deletes every alert from tx: for a store whose state a
// newer changelog's replaces (PutRecord).
func DropRecords(tx *bolt.Tx) error {
	if tx.Bucket(bucket) == nil {
		return nil
	}
	return tx.DeleteBucket(bucket)
}

// Reset drops every alert held from memory, for Load to fill again from a
// store whose records a changelog's replaced (DropRecords, PutRecord).
func (m *Manager) Reset() {
	m.open, m.outages, m.dirty, m.related = map[string]*Alert{}, map[string]string{}, map[string]bool{}, map[string][]string{}
	m.ids, m.byAccount = map[string]string{}, map[string][]string{}
	m.expiry = map[int64][]string{}
	m.seen = 0
}

// SetTemplates replaces the wording (alerts.templates_dir).
func (m *Manager) SetTemplates(t *Templates) { m.tpl = t }

// NewManager makes an empty manager.
func NewManager() *Manager {
	m := &Manager{tpl: DefaultTemplates()}
	m.Reset()
	return m
}

// Observe folds a decision into the alerts. It appends to out a copy of every
// alert it created or that changed in a way a person should see (a new
// alert, a higher severity, a stronger action, more affected users), and
// returns out.
func (m *Manager) Observe(d *detector.Decision, out []Alert) []Alert {
	return m.observe(d, out, false)
}

// ObserveSpanning is Observe for the findings Observe leaves out once
// SetSplit is on: those Spanning says span accounts.
func (m *Manager) ObserveSpanning(d *detector.Decision, out []Alert) []Alert {
	return m.observe(d, out, true)
}

// SetSplit makes Observe leave out the findings that span accounts, for
// ObserveSpanning. Instances that share the partitions each decide some of
// the accounts: a merchant outage, a faulty app version, an address
// stuffing credentials or a mule payee touches the accounts of several,
// and its alert is raised by one of them from the findings of all
// (docs/scaling.md).
func (m *Manager) SetSplit(on bool) { m.split = on }

// Spanning reports whether finding h of decision d is about something
// that spans accounts — a merchant, an app version, an address, a device,
// a payee — or is a stuck payment that such an incident may take in (at a
// merchant, or in an app version).
func Spanning(d *detector.Decision, h *detector.Hit) bool {
	if h.Category == "stuck_retry" {
		return d.MerchantID != "" || d.AppVersion != ""
	}
	return spanningGroup(h.Group)
}

func spanningGroup(group string) bool {
	for _, p := range [...]string{"merchant:", "app:", "ip:", "device:", "payee:"} {
		if strings.HasPrefix(group, p) {
			return true
		}
	}
	return false
}

// IsSpanning reports whether the alert is one that Spanning findings
// raise: what ObserveSpanning holds when the manager is split.
func (a *Alert) IsSpanning() bool {
	if a.Category == "stuck_retry" {
		return a.MerchantID != "" || a.AppVersion != ""
	}
	_, group, ok := strings.Cut(a.DedupKey, "|")
	return ok && spanningGroup(group)
}

// Wanted reports whether d has a finding an alert may come of.
func Wanted(d *detector.Decision, h *detector.Hit) bool {
	// Low-severity findings stay in the decision record (a review
	// decision is the risk team's queue) unless the account was acted
	// on; a support queue full of them gets ignored.
	return h.Category != "" && (rules.SeverityRank(h.Severity) >= 2 || rules.ActionRank(d.Action) >= rules.ActionRank(rules.ActionStepUp))
}

func (m *Manager) observe(d *detector.Decision, out []Alert, spanning bool) []Alert {
	if m.seen++; m.seen >= 10000 {
		m.prune(d.TS.Add(-keepFor))
	}
	// The most serious findings first: the alert an account's incident
	// needs is opened before the lesser findings of the same event, which
	// then fold into it, rather than each opening an alert to be grouped
	// a moment later.
	var byRank [8]int
	order := byRank[:0]
	for i := range d.Rules {
		order = append(order, i)
	}
	if len(order) > 1 {
		slices.SortStableFunc(order, func(i, j int) int {
			return incidentRank(d.Rules[j].Category) - incidentRank(d.Rules[i].Category)
		})
	}
	for _, i := range order {
		h := &d.Rules[i]
		if m.split && Spanning(d, h) != spanning {
			continue
		}
		if !Wanted(d, h) {
			continue
		}
		out = m.observeHit(d, h, out)
	}
	return out
}

func (m *Manager) observeHit(d *detector.Decision, h *detector.Hit, out []Alert) []Alert {
	// A stuck payment at a merchant that is having an outage belongs to the
	// outage, and one failing with app errors in a faulty app version to the
	// app fault: support handles the merchant or release once, not each user.
	if h.Category == "stuck_retry" {
		var parents []string
		if d.MerchantID != "" {
			parents = append(parents, "merchant:"+d.MerchantID)
		}
		if d.AppVersion != "" && causeFromReason(h.Reason) == "app" {
			parents = append(parents, "app:"+d.AppVersion)
		}
		for _, k := range parents {
			if key, ok := m.outages[k]; ok {
				if a := m.open[key]; a != nil && d.TS.Sub(a.UpdatedAt) < quietAfter {
					return m.update(a, d, h, out)
				}
			}
		}
	}
	// Findings about one account are one incident for support: the most
	// serious alert open on the account leads it (incidentRank), and a
	// later finding no more serious folds into it. A stolen password shows
	// as credential stuffing, a new country and impossible travel at once:
	// one alert to act on, not three. A more serious finding opens its own
	// alert, which takes the earlier ones in (groupUnder).
	if h.Category != "stuck_retry" && strings.HasPrefix(h.Group, "account:") {
		if lead := m.accountIncident(h.Group, d.TS); lead != nil && folds(h.Category, lead.Category) {
			return m.update(lead, d, h, out)
		}
	}
	key := h.Category + "|" + h.Group
	a := m.open[key]
	if a != nil && d.TS.Sub(a.UpdatedAt) >= quietAfter {
		m.forget(key)
		a = nil
	}
	if a == nil {
		a = m.create(key, d, h)
		// Sent once, first, with the users of the alerts it takes in
		// (which follow it): a version before grouping and another after
		// would be two deliveries, identical when it takes in only alerts
		// of its own account.
		at := len(out)
		out = append(out, Alert{})
		if a.MerchantID != "" && a.AccountID == "" || a.AppVersion != "" && a.AccountID == "" || leadsIncident(a) {
			out = m.groupUnder(a, out)
		}
		out[at] = a.copy()
		return out
	}
	return m.update(a, d, h, out)
}

// incidentRank orders the categories of findings about one account by how
// much they say the account is in someone else's hands. Categories it does
// not know (a team's own rules) rank 0: they fold only into a takeover.
func incidentRank(category string) int {
	switch category {
	case "theft":
		return 4
	case "credential_stuffing":
		return 3
	case "impossible_travel", "brute_force":
		return 2
	case "abnormal", "velocity":
		return 1
	}
	return 0
}

// folds reports whether a finding of category belongs to the account's
// open incident alert of category lead.
func folds(category, lead string) bool {
	return lead == category || lead == "theft" ||
		incidentRank(category) > 0 && incidentRank(category) <= incidentRank(lead)
}

// leadsIncident reports whether a, just opened, takes in the account's
// earlier alerts it outranks.
func leadsIncident(a *Alert) bool {
	return incidentRank(a.Category) > 1 && strings.HasPrefix(a.DedupKey, a.Category+"|account:")
}

// accountIncident returns the alert leading the incident of the account
// group names ("account:<id>"): of those open or acknowledged with news
// within quietAfter of at, the highest ranked, then the first opened.
// nil if there is none.
func (m *Manager) accountIncident(group string, at time.Time) *Alert {
	var lead *Alert
	suffix := "|" + group // alerts grouped by the account, not by its devices or payees
	consider := func(a *Alert) {
		if a == nil || a.Status != "open" && a.Status != "acknowledged" || at.Sub(a.UpdatedAt) >= quietAfter ||
			!strings.HasSuffix(a.DedupKey, suffix) {
			return
		}
		if lead == nil {
			lead = a
			return
		}
		ra, rl := incidentRank(a.Category), incidentRank(lead.Category)
		if ra > rl || ra == rl && (a.CreatedAt.Before(lead.CreatedAt) || a.CreatedAt.Equal(lead.CreatedAt) && a.DedupKey < lead.DedupKey) {
			lead = a
		}
	}
	consider(m.open["theft|"+group])
	for _, key := range m.related[group] {
		consider(m.open[key])
	}
	return lead
}

// Repeats lists the dedup keys of list (alerts as delivered, the last
// version of each id) that were raised more than once for one incident:
// two alerts with one key, the later created before the earlier had been
// quiet for quietAfter. One manager never does that; instances raising
// the same incident each for their own accounts would.
func Repeats(list []Alert) []string {
	byKey := map[string][]Alert{}
	for _, a := range list {
		byKey[a.DedupKey] = append(byKey[a.DedupKey], a)
	}
	var out []string
	for key, as := range byKey {
		sort.Slice(as, func(i, j int) bool { return as[i].CreatedAt.Before(as[j].CreatedAt) })
		for i := 1; i < len(as); i++ {
			if as[i].CreatedAt.Sub(as[i-1].UpdatedAt) < quietAfter {
				out = append(out, key)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// Raise opens (or refreshes) an alert walletguard raises about itself or an
// action, not from a rule: the freeze-storm breaker, a 2FA lockout. key is
// its dedup key; a repeat while it is open updates it. reason says what
// happened, with the numbers; the templates add title and actions.
func (m *Manager) Raise(key, category, severity, accountID, reason string, at time.Time, out []Alert) []Alert {
	a := m.open[key]
	if a != nil && a.Status != "resolved" {
		a.Count++
		a.UpdatedAt = at
		m.file(key, a)
		if len(a.Evidence) < maxEvidence {
			a.Evidence = append(a.Evidence, at.UTC().Format("2006-01-02 15:04:05Z")+": "+reason)
		}
	} else {
		a = &Alert{
			AlertID: alertID(key, at.UTC().Format(time.RFC3339Nano)), DedupKey: key, Severity: severity, Category: category,
			AccountID: accountID, Evidence: []string{at.UTC().Format("2006-01-02 15:04:05Z") + ": " + reason},
			CreatedAt: at, UpdatedAt: at, Status: "open", Count: 1, Rules: []string{}, DecisionIDs: []string{},
			accounts: map[string]bool{},
		}
		if accountID != "" {
			a.addAccount(accountID)
		}
		m.hold(key, a)
	}
	a.Reason = reason
	a.Title, a.Summary, a.RecommendedActions = m.tpl.Render("en", a)
	m.dirty[key] = true
	return append(out, a.copy())
}

// groupUnder folds open alerts into a new incident alert: stuck payments
// into a merchant outage or app fault (the first users' payments got stuck
// before the outage was recognised, and support should handle the merchant
// or release once), an account's other findings into its takeover.
func (m *Manager) groupUnder(outage *Alert, out []Alert) []Alert {
	var idx string
	switch {
	case outage.AccountID != "":
		idx = "account:" + outage.AccountID
	case outage.AppVersion != "":
		idx = "app:" + outage.AppVersion
	default:
		idx = "merchant:" + outage.MerchantID
	}
	keys := make([]string, 0, 4)
	for _, key := range m.related[idx] {
		a := m.open[key]
		if a == nil || a == outage || a.Status != "open" || slices.Contains(keys, key) {
			continue
		}
		switch {
		case outage.AccountID != "":
			// An account's incident recognised after earlier findings on
			// it (a new device, an odd amount) takes in those it outranks.
			if a.Category != "stuck_retry" && outage.CreatedAt.Sub(a.UpdatedAt) < quietAfter &&
				a.Category != outage.Category && folds(a.Category, outage.Category) {
				keys = append(keys, key)
			}
		case a.Category != "stuck_retry" || outage.CreatedAt.Sub(a.UpdatedAt) >= time.Hour:
		case outage.AppVersion != "" && a.Cause == "app", outage.AppVersion == "":
			keys = append(keys, key)
		}
	}
	// What was not taken in stays listed, as a restart's reindex lists it:
	// a later incident may take it in — an account's more serious finding,
	// an app fault raised again once a payment's failures became the app's
	// — and a restarted instance must decide that as the running one does.
	m.related[idx] = slices.DeleteFunc(m.related[idx], func(k string) bool { return slices.Contains(keys, k) })
	sort.Strings(keys) // map order must not leak into the output
	for _, key := range keys {
		a := m.open[key]
		a.Status, a.GroupedUnder = "grouped", outage.AlertID
		m.dirty[key] = true
		outage.addAccount(a.AccountID)
		if outage.AccountID != "" {
			takeIn(outage, a)
		}
		out = append(out, a.copy())
	}
	if len(keys) > 0 && outage.AccountID != "" {
		outage.Title, outage.Summary, outage.RecommendedActions = m.tpl.Render("en", outage)
	}
	return out
}

// takeIn folds an account's earlier alert a into the alert now leading its
// incident: its findings, rules and evidence, so that the one alert support
// works from tells the whole story (the new country and the impossible
// travel before the takeover).
func takeIn(lead, a *Alert) {
	lead.Count += a.Count
	for _, r := range a.Rules {
		if !contains(lead.Rules, r) {
			lead.Rules = append(lead.Rules, r)
		}
	}
	for _, id := range a.DecisionIDs {
		if len(lead.DecisionIDs) < maxEvidence && !contains(lead.DecisionIDs, id) {
			lead.DecisionIDs = append(lead.DecisionIDs, id)
		}
	}
	// Each line starts with its finding's time (evidence): sorted, they
	// read in the order things happened; the first ones are kept.
	ev := append(slices.Clone(a.Evidence), lead.Evidence...)
	slices.Sort(ev)
	ev = slices.Compact(ev)
	lead.Evidence = ev[:min(len(ev), maxEvidence)]
	lead.Severity = maxSeverity(lead.Severity, a.Severity)
	if rules.ActionRank(a.Action) > rules.ActionRank(lead.Action) {
		lead.Action = a.Action
	}
}

func alertID(key, decisionID string) string { return detector.StableID("alt_", key, decisionID) }

func (m *Manager) create(key string, d *detector.Decision, h *detector.Hit) *Alert {
	// Clones: a decision's ids share one copy of the event record they came in.
	acct := strings.Clone(d.AccountID)
	a := &Alert{
		AlertID: alertID(key, d.DecisionID), DedupKey: key, Severity: h.Severity, Category: h.Category,
		CreatedAt: d.TS, UpdatedAt: d.TS, Status: "open", Count: 1,
		Rules: []string{h.ID}, DecisionIDs: []string{d.DecisionID},
		accounts: map[string]bool{},
	}
	a.addAccount(acct)
	switch {
	case strings.HasPrefix(h.Group, "merchant:"):
		a.MerchantID = strings.TrimPrefix(h.Group, "merchant:")
		m.outages[h.Group] = key
	case strings.HasPrefix(h.Group, "app:"):
		a.AppVersion = strings.TrimPrefix(h.Group, "app:")
		m.outages[h.Group] = key
	case strings.HasPrefix(h.Group, "ip:"):
		a.IP = strings.TrimPrefix(h.Group, "ip:")
	default:
		a.AccountID = acct
		a.MerchantID = strings.Clone(d.MerchantID)
		a.AppVersion = strings.Clone(d.AppVersion)
	}
	a.Severity = maxSeverity(a.Severity, actionSeverity(d.Action))
	if rules.ActionRank(d.Action) > 0 {
		a.Action = d.Action
	}
	a.Evidence = []string{evidence(d, h)}
	if h.Category == "stuck_retry" {
		a.Cause = causeFromReason(h.Reason)
	}
	a.Reason = h.Reason
	a.Title, a.Summary, a.RecommendedActions = m.tpl.Render("en", a)
	m.dirty[key] = true
	m.hold(key, a)
	m.index(key, a)
	return a
}

// hold keeps a as the alert under key, in place of any held there before,
// and files it (m.ids, m.expiry).
func (m *Manager) hold(key string, a *Alert) {
	old := m.open[key]
	if old != nil && old != a {
		delete(m.ids, old.AlertID)
	}
	if old == nil || old.AccountID != a.AccountID {
		if old != nil {
			m.unlist(key, old)
		}
		if a.AccountID != "" {
			m.byAccount[a.AccountID] = append(m.byAccount[a.AccountID], key)
		}
	}
	m.open[key] = a
	m.ids[a.AlertID] = key
	m.file(key, a)
}

// unlist takes key out of its account's alerts.
func (m *Manager) unlist(key string, a *Alert) {
	if a.AccountID == "" {
		return
	}
	keys := slices.DeleteFunc(m.byAccount[a.AccountID], func(k string) bool { return k == key })
	if len(keys) == 0 {
		delete(m.byAccount, a.AccountID)
	} else {
		m.byAccount[a.AccountID] = keys
	}
}

// forget drops the alert under key from memory; the caller marks it
// dirty if the store should lose it too.
func (m *Manager) forget(key string) {
	if a := m.open[key]; a != nil {
		delete(m.ids, a.AlertID)
		m.unlist(key, a)
		delete(m.open, key)
	}
}

// index files an alert under what a later incident alert would look for.
func (m *Manager) index(key string, a *Alert) {
	for _, idx := range relatedOf(a) {
		m.related[idx] = append(m.related[idx], key)
	}
}

// relatedOf names the entries of Manager.related an alert is filed under.
func relatedOf(a *Alert) []string {
	if a.Category == "stuck_retry" {
		var idx []string
		if a.MerchantID != "" {
			idx = append(idx, "merchant:"+a.MerchantID)
		}
		if a.AppVersion != "" {
			idx = append(idx, "app:"+a.AppVersion)
		}
		return idx
	}
	if a.AccountID != "" && a.Category != "theft" {
		return []string{"account:" + a.AccountID}
	}
	return nil
}

// file files the alert under the hour of its last news in m.expiry, unless
// it is filed there already.
func (m *Manager) file(key string, a *Alert) {
	h := hourOf(a.UpdatedAt)
	if a.filed == h+1 {
		return
	}
	a.filed = h + 1
	m.expiry[h] = append(m.expiry[h], key)
}

// hourOf numbers the hour t falls in (hours since 1970, rounded down).
func hourOf(t time.Time) int64 {
	s := t.Unix()
	h := s / 3600
	if s < 0 && s%3600 != 0 {
		h--
	}
	return h
}

func (m *Manager) update(a *Alert, d *detector.Decision, h *detector.Hit, out []Alert) []Alert {
	before := *a
	a.Count++
	if d.TS.After(a.UpdatedAt) {
		a.UpdatedAt = d.TS
		m.file(a.DedupKey, a)
	}
	if !contains(a.Rules, h.ID) {
		a.Rules = append(a.Rules, h.ID)
	}
	if len(a.DecisionIDs) < maxEvidence && !contains(a.DecisionIDs, d.DecisionID) {
		a.DecisionIDs = append(a.DecisionIDs, d.DecisionID)
	}
	a.addAccount(d.AccountID)
	a.Severity = maxSeverity(maxSeverity(a.Severity, h.Severity), actionSeverity(d.Action))
	if rules.ActionRank(d.Action) > rules.ActionRank(a.Action) {
		a.Action = d.Action
	}
	if len(a.Evidence) < maxEvidence {
		a.Evidence = append(a.Evidence, evidence(d, h))
	}
	if a.Category == "stuck_retry" && h.Category == "stuck_retry" {
		a.Cause = causeFromReason(h.Reason)
	}
	if a.Status == "resolved" {
		a.Status = "open" // the incident continues
		a.ResolvedBy, a.ResolvedAt, a.Resolution = "", time.Time{}, ""
	}
	a.Reason = h.Reason
	a.Title, a.Summary, a.RecommendedActions = m.tpl.Render("en", a)
	m.dirty[a.DedupKey] = true
	// Tell people when it matters, not on every event.
	grew := a.AffectedAccounts != before.AffectedAccounts && isMilestone(a.AffectedAccounts)
	if a.Severity != before.Severity || a.Action != before.Action || grew || a.Status != before.Status ||
		a.Count == 2 && h.Category == "stuck_retry" {
		out = append(out, a.copy())
	}
	return out
}

// isMilestone is true at 5, 10, 20, 50, 100, 200, 500…: a growing outage
// updates its alert as it grows without one message per user.
func isMilestone(n int) bool {
	for b := 1; b <= n; b *= 10 {
		if n == 5*b || n == 10*b || n == 20*b || n == 50*b {
			return true
		}
	}
	return false
}

func (a *Alert) copy() Alert {
	c := *a
	c.rev = revisions.Add(1)
	// The lists are shared, clipped to their length: the manager only
	// appends to them or replaces them whole, never writes an element a
	// copy can see, and an append to a clipped copy moves it away. A copy
	// of each list for each alert listed or sent was four allocations an
	// alert: 400,000 for a listing of 100,000, with the pipeline waiting.
	c.Evidence = slices.Clip(a.Evidence)
	c.Rules = slices.Clip(a.Rules)
	c.DecisionIDs = slices.Clip(a.DecisionIDs)
	c.RecommendedActions = slices.Clip(a.RecommendedActions)
	c.accounts, c.accountList = nil, nil
	return c
}

func evidence(d *detector.Decision, h *detector.Hit) string {
	return fmt.Sprintf("%s %s [%s, score %d, %s]: %s", d.TS.UTC().Format("2006-01-02 15:04:05Z"), d.AccountID, h.ID, d.Score, d.Action, h.Reason)
}

func causeFromReason(r string) string {
	const p = "likely cause: "
	i := strings.Index(r, p)
	if i < 0 {
		return ""
	}
	rest := r[i+len(p):]
	if j := strings.IndexAny(rest, " (;"); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

func actionSeverity(a string) string {
	switch a {
	case rules.ActionFreeze:
		return "critical"
	case rules.ActionStepUp:
		return "high"
	}
	return ""
}

func maxSeverity(a, b string) string {
	if rules.SeverityRank(b) > rules.SeverityRank(a) {
		return b
	}
	return a
}

func contains(l []string, v string) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}
	return false
}

// prune forgets alerts not updated since cut. It visits only the hours of
// m.expiry up to cut's, and takes the alerts it forgets out of the related
// entries they were filed under.
func (m *Manager) prune(cut time.Time) {
	m.seen = 0
	last := hourOf(cut)
	var lost map[string]bool // related entries that lost an alert
	for h, keys := range m.expiry {
		if h > last {
			continue
		}
		kept := keys[:0]
		for _, key := range keys {
			a := m.open[key]
			if a == nil || a.filed != h+1 {
				continue // gone, or filed under another hour since
			}
			if !a.UpdatedAt.Before(cut) {
				kept = append(kept, key) // cut's own hour, news after cut
				continue
			}
			m.forget(key)
			m.dirty[key] = true // Save deletes it
			for _, k := range [...]string{"merchant:" + a.MerchantID, "app:" + a.AppVersion} {
				if m.outages[k] == key {
					delete(m.outages, k)
				}
			}
			for _, idx := range relatedOf(a) {
				if lost == nil {
					lost = map[string]bool{}
				}
				lost[idx] = true
			}
		}
		if len(kept) == 0 {
			delete(m.expiry, h)
		} else {
			m.expiry[h] = kept
		}
	}
	for idx := range lost {
		keys := slices.DeleteFunc(m.related[idx], func(k string) bool { return m.open[k] == nil })
		if len(keys) == 0 {
			delete(m.related, idx)
		} else {
			m.related[idx] = keys
		}
	}
}

// reindex rebuilds the related index from the alerts held.
func (m *Manager) reindex() {
	// Map order is fine here: groupUnder filters an index entry's alerts
	// and sorts what it takes, so the order within an entry never shows.
	m.related = make(map[string][]string, len(m.related))
	for k, a := range m.open {
		// Acknowledged ones too: one may lead its account's incident
		// (accountIncident), as it did before the restart.
		if a.Status == "open" || a.Status == "acknowledged" {
			m.index(k, a)
		}
	}
}

// ErrNoAlert is returned for an alert id walletguard does not hold.
var ErrNoAlert = errors.New("no such alert")

// Ack marks an alert acknowledged: someone is on it.
func (m *Manager) Ack(id, actor string, at time.Time) (Alert, error) {
	a := m.byID(id)
	if a == nil {
		return Alert{}, fmt.Errorf("alert %s: %w", id, ErrNoAlert)
	}
	if a.Status == "open" || a.Status == "grouped" {
		a.Status, a.AcknowledgedBy, a.AcknowledgedAt = "acknowledged", actor, at.UTC()
	}
	a.ManualAt = at.UTC()
	m.dirty[a.DedupKey] = true
	return a.copy(), nil
}

// Resolve closes an alert; it re-opens if the incident continues.
func (m *Manager) Resolve(id, actor, note string, at time.Time) (Alert, error) {
	a := m.byID(id)
	if a == nil {
		return Alert{}, fmt.Errorf("alert %s: %w", id, ErrNoAlert)
	}
	if a.Status != "resolved" {
		if a.AcknowledgedBy == "" {
			a.AcknowledgedBy, a.AcknowledgedAt = actor, at.UTC()
		}
		a.Status, a.ResolvedBy, a.ResolvedAt, a.Resolution = "resolved", actor, at.UTC(), note
	}
	a.ManualAt = at.UTC()
	m.dirty[a.DedupKey] = true
	return a.copy(), nil
}

// Get returns a copy of the alert with id.
func (m *Manager) Get(id string) (Alert, bool) {
	if a := m.byID(id); a != nil {
		return a.copy(), true
	}
	return Alert{}, false
}

func (m *Manager) byID(id string) *Alert {
	if a := m.open[m.ids[id]]; a != nil && a.AlertID == id {
		return a
	}
	return nil
}

// Query picks alerts for a listing. Empty fields match any alert.
type Query struct {
	// Status "" is support's queue (open and acknowledged), "all" every
	// alert held; anything else, that status.
	Status     string
	Category   string
	AccountID  string
	MerchantID string
	// MinSeverity, if set, picks alerts at least this severe (low,
	// medium, high, critical): in a large incident support looks at the
	// critical ones first, however old.
	MinSeverity string
	// Limit, if above 0, lists only that many, the newest.
	Limit int
	// After, if set, lists only the alerts after it in the listing's
	// order: the page after the one that ended there.
	After Cursor
}

// Cursor is a place in a listing of alerts (Newer's order): where a page
// ended, so that the next one begins after it. An alert updated between
// two pages moves to the top of the listing, and a later page leaves it
// out rather than showing it twice.
type Cursor struct {
	UpdatedAt int64 // unix nanoseconds
	AlertID   string
}

// CursorOf is the place of a in a listing.
func CursorOf(a *Alert) Cursor { return Cursor{a.UpdatedAt.UnixNano(), a.AlertID} }

// IsZero reports whether c is no place: a listing from its start.
func (c Cursor) IsZero() bool { return c.UpdatedAt == 0 && c.AlertID == "" }

// passed reports whether a comes after c in a listing.
func (c Cursor) passed(a *Alert) bool {
	at := a.UpdatedAt.UnixNano()
	return at < c.UpdatedAt || at == c.UpdatedAt && a.AlertID > c.AlertID
}

// String writes c as an opaque token for a URL.
func (c Cursor) String() string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%d.%s", c.UpdatedAt, c.AlertID))
}

// ParseCursor reads a token written by Cursor.String.
func ParseCursor(s string) (Cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Cursor{}, fmt.Errorf("cursor %q: not a listing's token", s)
	}
	at, id, ok := strings.Cut(string(b), ".")
	n, err := strconv.ParseInt(at, 10, 64)
	if !ok || err != nil || id == "" {
		return Cursor{}, fmt.Errorf("cursor %q: not a listing's token", s)
	}
	return Cursor{n, id}, nil
}

// Match reports whether q picks a (after its cursor, if it has one).
func (q Query) Match(a *Alert) bool {
	switch {
	case q.Status == "" && a.Status != "open" && a.Status != "acknowledged",
		q.Status != "" && q.Status != "all" && a.Status != q.Status,
		q.Category != "" && a.Category != q.Category,
		q.AccountID != "" && a.AccountID != q.AccountID,
		q.MerchantID != "" && a.MerchantID != q.MerchantID,
		q.MinSeverity != "" && rules.SeverityRank(a.Severity) < rules.SeverityRank(q.MinSeverity),
		!q.After.IsZero() && !q.After.passed(a):
		return false
	}
	return true
}

// List copies the alerts q picks, newest first (Newer). The API calls it
// under the pipeline's lock, so it orders pointers and copies only what
// it returns: a copy of every alert held, sorted, paused the pipeline for
// a quarter of a second with 100,000 held.
func (m *Manager) List(q Query) []Alert {
	// Sorted by a copy of the time beside each pointer: comparisons that
	// follow pointers into alerts spread over the heap are cache misses.
	type entry struct {
		at int64
		a  *Alert
	}
	var picked []entry
	if q.Limit > 0 && q.AccountID == "" && q.MerchantID == "" {
		// A page of the queue, newest first: walk the hours of m.expiry
		// from the latest, and stop after the hour in which the page
		// filled — every alert filed in an earlier hour is older than all
		// picked. A page of 1,000 of 100,000 alerts took the pipeline's
		// lock for 30 ms when every alert was sorted. (An account's
		// alerts are found by m.byAccount, a merchant's by the walk below.)
		hours := slices.Sorted(maps.Keys(m.expiry))
		seen := map[*Alert]bool{}    // a key may be filed twice in one hour
		last := int64(math.MaxInt64) // the latest hour a page may hold
		if !q.After.IsZero() {
			last = hourOf(time.Unix(0, q.After.UpdatedAt)) // the ones after are before the cursor
		}
		for i := len(hours) - 1; i >= 0 && len(picked) < q.Limit; i-- {
			h := hours[i]
			if h > last {
				continue
			}
			for _, key := range m.expiry[h] {
				a := m.open[key]
				if a == nil || a.filed != h+1 || seen[a] || !q.Match(a) {
					continue
				}
				seen[a] = true
				picked = append(picked, entry{a.UpdatedAt.UnixNano(), a})
			}
		}
	} else if q.AccountID != "" {
		for _, key := range m.byAccount[q.AccountID] {
			if a := m.open[key]; a != nil && q.Match(a) {
				picked = append(picked, entry{a.UpdatedAt.UnixNano(), a})
			}
		}
	} else {
		if q.Category == "" && q.MerchantID == "" && q.MinSeverity == "" {
			picked = make([]entry, 0, len(m.open)) // most are picked
		}
		for _, a := range m.open {
			if q.Match(a) {
				picked = append(picked, entry{a.UpdatedAt.UnixNano(), a})
			}
		}
	}
	slices.SortFunc(picked, func(x, y entry) int {
		if x.at != y.at {
			return cmp.Compare(y.at, x.at)
		}
		return strings.Compare(x.a.AlertID, y.a.AlertID)
	})
	if q.Limit > 0 && len(picked) > q.Limit {
		picked = picked[:q.Limit]
	}
	out := make([]Alert, len(picked))
	for i, e := range picked {
		out[i] = e.a.copy()
	}
	return out
}

// Newer orders alerts newest first by UpdatedAt, and by id among equals,
// so that a listing keeps its order from one call to the next.
func Newer(a, b *Alert) bool {
	if !a.UpdatedAt.Equal(b.UpdatedAt) {
		return a.UpdatedAt.After(b.UpdatedAt)
	}
	return a.AlertID < b.AlertID
}

// Statuses are the states an alert held can be in.
var Statuses = []string{"open", "acknowledged", "grouped", "resolved"}

// Held counts the alerts held by status and then severity: the size of
// support's queue, for the metrics.
func (m *Manager) Held() map[string]map[string]int {
	out := map[string]map[string]int{}
	for _, a := range m.open {
		if out[a.Status] == nil {
			out[a.Status] = map[string]int{}
		}
		out[a.Status][a.Severity]++
	}
	return out
}

// All lists every alert held (any status), newest first.
func (m *Manager) All() []Alert { return m.List(Query{Status: "all"}) }

// Open lists the alerts support still has to handle (open and
// acknowledged: not resolved, not grouped under another), newest first.
func (m *Manager) Open() []Alert { return m.List(Query{}) }

var bucket = []byte("alerts")

type stored struct {
	Alert
	Accounts []string `json:"accounts"`
}

// Save writes changed alerts inside the caller's transaction: a manual
// action's own write. They stay marked changed, for the next checkpoint to
// write again: one captured before this may still be writing an older copy
// of an alert, which would otherwise stay in the store (and the changelog)
// as the last word.
func (m *Manager) Save(tx *bolt.Tx) error {
	changed := slices.Collect(maps.Keys(m.dirty))
	write, _, err := m.PrepareSave()
	if err != nil {
		return err
	}
	err = write(tx)
	for _, key := range changed {
		m.dirty[key] = true
	}
	return err
}

// PrepareSave captures the changed alerts, encoded, and returns the
// function that writes them (for a checkpoint written outside the lock) and
// the one that marks them changed again if that write fails.
func (m *Manager) PrepareSave() (write func(*bolt.Tx) error, undo func(), err error) {
	// Under the caller's lock only copies are taken, into one allocation
	// (a checkpoint under load copies thousands of alerts while the
	// pipeline waits); encoding runs in the write, off the pipeline. An
	// alert's slices, its accounts' list too, only ever grow or are
	// replaced, so a copy of the struct keeps what it held.
	type row struct {
		key string
		s   *stored // nil: delete
	}
	rows := make([]row, 0, len(m.dirty))
	copies := make([]stored, 0, len(m.dirty))
	for key := range m.dirty {
		a := m.open[key]
		if a == nil {
			rows = append(rows, row{key, nil})
			continue
		}
		copies = append(copies, stored{Alert: *a, Accounts: slices.Clip(a.accountList)})
		rows = append(rows, row{key, &copies[len(copies)-1]})
	}
	clear(m.dirty)
	undo = func() {
		for _, r := range rows {
			m.dirty[r.key] = true
		}
	}
	clog := m.changelog
	write = func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		for _, r := range rows {
			if r.s == nil {
				err = b.Delete([]byte(r.key))
				if clog != nil {
					clog(r.key, nil)
				}
			} else {
				r.s.Accounts = slices.Sorted(slices.Values(r.s.Accounts)) // a copy: the list is the alert's
				var v []byte
				if v, err = json.Marshal(r.s); err != nil {
					return fmt.Errorf("alert %s: %w", r.key, err)
				}
				err = b.Put([]byte(r.key), v)
				if clog != nil {
					clog(r.key, v)
				}
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	return write, undo, nil
}

// Load reads the alerts saved by Save.
func (m *Manager) Load(db *bolt.DB) error {
	defer m.reindex()
	return db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			a, err := decodeStored(string(k), v)
			if err != nil {
				return err
			}
			m.put(string(k), a)
			return nil
		})
	})
}

func decodeStored(key string, v []byte) (*Alert, error) {
	var s stored
	if err := json.Unmarshal(v, &s); err != nil {
		return nil, fmt.Errorf("alert %s: %w", key, err)
	}
	a := s.Alert
	a.accounts = map[string]bool{}
	for _, acc := range s.Accounts {
		a.addAccount(acc)
	}
	return &a, nil
}

// put holds a as the alert under key, as stored; the caller reindexes.
func (m *Manager) put(key string, a *Alert) {
	m.hold(key, a)
	switch {
	case a.AccountID == "" && a.AppVersion != "":
		m.outages["app:"+a.AppVersion] = key
	case a.AccountID == "" && a.MerchantID != "":
		m.outages["merchant:"+a.MerchantID] = key
	}
}

// DropSpanning forgets the alerts that span accounts (IsSpanning):
// another instance raises them now. It returns their keys. The next save
// does not delete them — in a changelog the records of those keys are the
// new lead's — so the caller deletes them from its store (DeleteRecords).
func (m *Manager) DropSpanning() []string {
	var keys []string
	for key, a := range m.open {
		if a.IsSpanning() {
			m.forget(key)
			delete(m.dirty, key)
			keys = append(keys, key)
		}
	}
	for k, key := range m.outages {
		if m.open[key] == nil {
			delete(m.outages, k)
		}
	}
	m.reindex()
	slices.Sort(keys)
	return keys
}

// DeleteRecords deletes the alerts under keys from the store.
func DeleteRecords(tx *bolt.Tx, keys []string) error {
	b := tx.Bucket(bucket)
	if b == nil {
		return nil
	}
	for _, k := range keys {
		if err := b.Delete([]byte(k)); err != nil {
			return err
		}
	}
	return nil
}

// AdoptSpanning replaces the alerts that span accounts with those of recs
// (alerts as stored, by key; others are skipped): the instance that raised
// them hands them on. It returns how many it took.
func (m *Manager) AdoptSpanning(recs map[string][]byte) (int, error) {
	taken := make(map[string]*Alert, len(recs))
	for key, v := range recs {
		a, err := decodeStored(key, v)
		if err != nil {
			return 0, err
		}
		if a.IsSpanning() {
			taken[key] = a
		}
	}
	for _, key := range m.DropSpanning() {
		m.dirty[key] = true // deleted where it is not taken again: the lead's own records
	}
	for key, a := range taken {
		m.put(key, a)
		m.dirty[key] = true
	}
	m.reindex()
	return len(taken), nil
}
