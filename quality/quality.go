// Package quality measures detection quality: it runs generated wallet
// traffic, whose incidents are labelled, through the same processing path as
// the daemon and replay, and compares what walletguard did with what it
// should have done — per incident kind (found, how early, how much money was
// kept from thieves) and for honest accounts (how many were frozen, stepped
// up or alerted on). It is what `walletguard eval` prints and what the tests
// hold the built-in rules to.
package quality

import (
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/app"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/rules"
	"github.com/walletguard/walletguard/sim"
)

// Kind is the result for one incident kind.
type Kind struct {
	Kind  string
	Total int
	// Found counts incidents handled as expected: a theft frozen, a stuck
	// payment alerted with its cause named, an outage as one merchant alert,
	// stuffing alerted with its IP, a spending spike stepped up.
	Found int
	// Delays from the incident's first event to the first response (event time).
	Delays []time.Duration
	// Misses names the incidents not found, with what went wrong.
	Misses []string

	// Theft: money the thieves tried to move and what got through.
	Attempted, Stolen int64
	// Stuck retries: alerted but with a wrong or no cause.
	WrongCause int
	// Outages: alerts for the merchant and separate stuck-retry alerts for
	// its affected users (should be 1 and 0).
	OutageAlerts, UserAlerts int
	// Stuffing: compromised accounts and how many of them were stepped up.
	Compromised, CompromisedStepped int
	// Takeovers and stuffing: the alerts about the accounts in the
	// incident (its victims) that support has to handle — not grouped
	// under another — and how many accounts those are. One an account is
	// the aim: one case to work, not one per rule category.
	VictimAlerts, Victims int
}

// Honest is what happened to accounts that no incident touched.
type Honest struct {
	Accounts, Frozen, SteppedUp, Alerted int
	// Examples of each, for a person to look at.
	FrozenIDs, SteppedIDs, AlertedIDs []string
	// Rules counts the rules behind what honest accounts went through:
	// where a risk team looks first.
	Rules map[string]int
}

// Report is one evaluation run.
type Report struct {
	Seed           uint64
	Accounts       int
	Days           float64
	Events         int
	RulesetVersion string
	Kinds          map[string]*Kind
	Honest         Honest
	Elapsed        time.Duration
}

// KindOrder is the order reports list incident kinds in.
var KindOrder = []string{sim.KindTakeover, sim.KindStuckRetry, sim.KindMerchantOutage, sim.KindAppFault, sim.KindStuffing, sim.KindSpendingSpike}

type acctOutcome struct {
	frozenAt, steppedAt, alertedAt time.Time
	frozen, stepped, alerted       bool
	why                            []string // rules behind the first freeze, step-up and alert
}

// Run generates the traffic of simCfg, scores it with cfg and set, and
// compares the outcome with the labels.
func Run(simCfg sim.Config, cfg config.Config, set *rules.Set, log *slog.Logger) (Report, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	start := time.Now()
	rep := Report{Seed: simCfg.Seed, Accounts: simCfg.Accounts, Days: simCfg.Duration.Hours() / 24,
		RulesetVersion: set.Version, Kinds: map[string]*Kind{}}
	g := sim.New(simCfg)
	p := app.NewProcessor(cfg, set, nil, log)

	outcome := map[string]*acctOutcome{}
	get := func(id string) *acctOutcome {
		o := outcome[id]
		if o == nil {
			o = &acctOutcome{}
			outcome[id] = o
		}
		return o
	}
	var allAlerts []alerts.Alert
	// Loss transfers: amount, and whether the account was frozen when the
	// transfer was decided. A transfer whose own decision is a freeze counts
	// as stopped: the payment gateway asks POST /v1/score before it moves
	// money, and a freeze answer refuses it.
	lossAmount := map[string]int64{}
	lossStopped := map[string]bool{}
	lossIDs := map[string]bool{}
	labelsSeen := 0
	seenAcct := map[string]bool{}
	var out app.Outputs
	record := func() {
		for i := range out.Commands {
			c := &out.Commands[i]
			o := get(c.AccountID)
			switch c.Command {
			case enforce.CmdFreeze:
				if !o.frozen {
					o.frozen, o.frozenAt = true, c.IssuedAt
					o.why = append(o.why, "freeze: "+ruleOf(c.Reason))
				}
			case enforce.CmdRequire2FA:
				if !o.stepped {
					o.stepped, o.steppedAt = true, c.IssuedAt
					o.why = append(o.why, "step-up: "+ruleOf(c.Reason))
				}
			}
		}
		for i := range out.Alerts {
			a := &out.Alerts[i]
			allAlerts = append(allAlerts, *a)
			if a.AccountID != "" {
				o := get(a.AccountID)
				if !o.alerted {
					o.alerted, o.alertedAt = true, a.CreatedAt
					o.why = append(o.why, "alert: "+strings.Join(a.Rules, "+"))
				}
			}
		}
		out.Reset()
	}
	for {
		it, ok := g.Next()
		if !ok {
			break
		}
		if it.Raw != nil {
			continue
		}
		ev := it.Event
		// Labels are written when an incident starts, before its events
		// come out of the generator.
		for ; labelsSeen < len(g.Labels()); labelsSeen++ {
			for _, id := range g.Labels()[labelsSeen].LossEventIDs {
				lossIDs[id] = true
			}
		}
		rep.Events++
		seenAcct[ev.AccountID] = true
		p.Handle(&ev, &out)
		if lossIDs[ev.EventID] {
			lossAmount[ev.EventID] = ev.Amount
			if s, ok := p.Planner.Get(ev.AccountID); ok && s.Frozen {
				lossStopped[ev.EventID] = true
			}
		}
		record()
	}
	p.Flush(&out)
	record()

	labelled := map[string]bool{}
	for _, l := range g.Labels() {
		for _, a := range l.Accounts {
			labelled[a] = true
		}
	}
	for _, l := range g.Labels() {
		k := rep.Kinds[l.Kind]
		if k == nil {
			k = &Kind{Kind: l.Kind}
			rep.Kinds[l.Kind] = k
		}
		k.Total++
		judge(k, l, outcome, allAlerts, lossAmount, lossStopped)
	}
	for id := range seenAcct {
		if labelled[id] || strings.HasPrefix(id, "mule-") {
			continue
		}
		rep.Honest.Accounts++
		o := outcome[id]
		if o == nil {
			continue
		}
		for _, w := range o.why {
			if rep.Honest.Rules == nil {
				rep.Honest.Rules = map[string]int{}
			}
			rep.Honest.Rules[w]++
		}
		if o.frozen {
			rep.Honest.Frozen++
			rep.Honest.FrozenIDs = append(rep.Honest.FrozenIDs, id)
		}
		if o.stepped {
			rep.Honest.SteppedUp++
			rep.Honest.SteppedIDs = append(rep.Honest.SteppedIDs, id)
		}
		if o.alerted {
			rep.Honest.Alerted++
			rep.Honest.AlertedIDs = append(rep.Honest.AlertedIDs, id)
		}
	}
	for _, l := range []*[]string{&rep.Honest.FrozenIDs, &rep.Honest.SteppedIDs, &rep.Honest.AlertedIDs} {
		slices.Sort(*l)
	}
	rep.Elapsed = time.Since(start)
	return rep, nil
}

func judge(k *Kind, l *sim.Label, outcome map[string]*acctOutcome, all []alerts.Alert, lossAmount map[string]int64, lossStopped map[string]bool) {
	miss := func(format string, args ...any) {
		k.Misses = append(k.Misses, l.IncidentID+": "+fmt.Sprintf(format, args...))
	}
	switch l.Kind {
	case sim.KindTakeover:
		acc := l.Accounts[0]
		k.Victims++
		k.VictimAlerts += toHandle(all, l.Accounts, l.Start, l.End.Add(time.Hour))
		for _, id := range l.LossEventIDs {
			k.Attempted += lossAmount[id]
			if !lossStopped[id] {
				k.Stolen += lossAmount[id]
			}
		}
		o := outcome[acc]
		if o == nil || !o.frozen {
			miss("%s (%s) not frozen", acc, l.Variant)
			return
		}
		k.Found++
		k.Delays = append(k.Delays, o.frozenAt.Sub(l.Start))
	case sim.KindStuckRetry:
		var a *alerts.Alert
		for i := range all {
			if all[i].Category == "stuck_retry" && strings.HasSuffix(all[i].DedupKey, "/"+l.PaymentID) {
				a = &all[i] // the latest copy carries the final cause
			}
		}
		if a == nil {
			miss("payment %s of %s not alerted", l.PaymentID, l.Accounts[0])
			return
		}
		if a.Cause != l.Cause {
			k.WrongCause++
			miss("payment %s alerted with cause %q, want %q", l.PaymentID, a.Cause, l.Cause)
			return
		}
		k.Found++
		k.Delays = append(k.Delays, firstCreated(all, a.AlertID).Sub(l.Start))
	case sim.KindMerchantOutage, sim.KindAppFault:
		ids := map[string]time.Time{}
		affected := map[string]bool{}
		for _, a := range l.Accounts {
			affected[a] = true
		}
		users := map[string]bool{}
		for i := range all {
			a := &all[i]
			if a.CreatedAt.Before(l.Start) || a.CreatedAt.After(l.End.Add(time.Hour)) {
				continue
			}
			mine := l.Kind == sim.KindMerchantOutage && a.MerchantID == l.MerchantID ||
				l.Kind == sim.KindAppFault && a.AppVersion == l.AppVersion
			switch {
			case a.Category == l.Kind && a.AccountID == "" && mine:
				if _, ok := ids[a.AlertID]; !ok {
					ids[a.AlertID] = a.CreatedAt
				}
			case a.Category == "stuck_retry" && a.AccountID != "" && affected[a.AccountID] && mine:
				// The latest copy counts: an alert later grouped under the
				// outage is not a separate case for support.
				users[a.AlertID] = a.Status != "grouped"
			}
		}
		separate := 0
		for _, v := range users {
			if v {
				separate++
			}
		}
		k.OutageAlerts += len(ids)
		k.UserAlerts += separate
		if len(ids) != 1 || separate > 0 {
			miss("%s%s: %d alerts for it, %d separate user alerts", l.MerchantID, l.AppVersion, len(ids), separate)
			return
		}
		k.Found++
		for _, t := range ids {
			k.Delays = append(k.Delays, t.Sub(l.Start))
		}
	case sim.KindStuffing:
		k.Compromised += len(l.Compromised)
		k.Victims += len(l.Compromised)
		k.VictimAlerts += toHandle(all, l.Compromised, l.Start, l.End.Add(time.Hour))
		for _, acc := range l.Compromised {
			if o := outcome[acc]; o != nil && (o.stepped || o.frozen) {
				k.CompromisedStepped++
			}
		}
		var first time.Time
		for i := range all {
			if all[i].Category == "credential_stuffing" && strings.Contains(all[i].DedupKey, l.IP) {
				first = all[i].CreatedAt
				break
			}
		}
		if first.IsZero() {
			miss("IP %s not alerted", l.IP)
			return
		}
		for _, acc := range l.Compromised {
			if o := outcome[acc]; o == nil || !(o.stepped || o.frozen) {
				miss("IP %s alerted, but compromised account %s not stepped up", l.IP, acc)
				return
			}
		}
		k.Found++
		k.Delays = append(k.Delays, first.Sub(l.Start))
	case sim.KindSpendingSpike:
		o := outcome[l.Accounts[0]]
		if o == nil || !(o.stepped || o.frozen) {
			miss("%s not stepped up", l.Accounts[0])
			return
		}
		k.Found++
		k.Delays = append(k.Delays, o.steppedAt.Sub(l.Start))
	}
}

// toHandle counts the alerts about accounts, created from from to to, that
// support has to handle: by the last version delivered, not grouped under
// another.
func toHandle(all []alerts.Alert, accounts []string, from, to time.Time) int {
	from = from.Add(-time.Second) // events carry their times to the millisecond; labels, to the nanosecond
	last := map[string]string{}   // alert id -> status
	for i := range all {
		a := &all[i]
		if slices.Contains(accounts, a.AccountID) && !a.CreatedAt.Before(from) && !a.CreatedAt.After(to) {
			last[a.AlertID] = a.Status
		}
	}
	n := 0
	for _, st := range last {
		if st != "grouped" {
			n++
		}
	}
	return n
}

// AlertsPerVictim is how many alerts support has to handle for each
// account a takeover or stuffing got into.
func (k *Kind) AlertsPerVictim() float64 {
	if k == nil || k.Victims == 0 {
		return 0
	}
	return float64(k.VictimAlerts) / float64(k.Victims)
}

// ruleOf is the rule id a command's reason starts with ("rule: why").
func ruleOf(reason string) string {
	if i := strings.Index(reason, ":"); i > 0 {
		return reason[:i]
	}
	return reason
}

func firstCreated(all []alerts.Alert, id string) time.Time {
	for i := range all {
		if all[i].AlertID == id {
			return all[i].CreatedAt
		}
	}
	return time.Time{}
}

// Merge adds other's counts to r (several seeds in one table).
func (r *Report) Merge(other Report) {
	if r.Kinds == nil {
		r.Kinds = map[string]*Kind{}
	}
	r.Events += other.Events
	r.Accounts += other.Accounts
	r.Days = max(r.Days, other.Days)
	r.RulesetVersion = other.RulesetVersion
	r.Elapsed += other.Elapsed
	for name, k := range other.Kinds {
		m := r.Kinds[name]
		if m == nil {
			m = &Kind{Kind: name}
			r.Kinds[name] = m
		}
		m.Total += k.Total
		m.Found += k.Found
		m.Delays = append(m.Delays, k.Delays...)
		m.Misses = append(m.Misses, k.Misses...)
		m.Attempted += k.Attempted
		m.Stolen += k.Stolen
		m.WrongCause += k.WrongCause
		m.OutageAlerts += k.OutageAlerts
		m.UserAlerts += k.UserAlerts
		m.Compromised += k.Compromised
		m.CompromisedStepped += k.CompromisedStepped
		m.VictimAlerts += k.VictimAlerts
		m.Victims += k.Victims
	}
	h := &r.Honest
	h.Accounts += other.Honest.Accounts
	h.Frozen += other.Honest.Frozen
	h.SteppedUp += other.Honest.SteppedUp
	h.Alerted += other.Honest.Alerted
	h.FrozenIDs = append(h.FrozenIDs, other.Honest.FrozenIDs...)
	h.SteppedIDs = append(h.SteppedIDs, other.Honest.SteppedIDs...)
	h.AlertedIDs = append(h.AlertedIDs, other.Honest.AlertedIDs...)
	for k, v := range other.Honest.Rules {
		if h.Rules == nil {
			h.Rules = map[string]int{}
		}
		h.Rules[k] += v
	}
}

// KeptShare is the share of the money thieves tried to move that was kept
// from them (1 when there was no theft).
func (k *Kind) KeptShare() float64 {
	if k == nil || k.Attempted == 0 {
		return 1
	}
	return 1 - float64(k.Stolen)/float64(k.Attempted)
}

// MedianDelay is the median time to the first response.
func (k *Kind) MedianDelay() time.Duration {
	if k == nil || len(k.Delays) == 0 {
		return 0
	}
	d := slices.Clone(k.Delays)
	slices.Sort(d)
	return d[len(d)/2]
}

// AlertedShare is the share of honest accounts alerted on.
func (h Honest) AlertedShare() float64 {
	if h.Accounts == 0 {
		return 0
	}
	return float64(h.Alerted) / float64(h.Accounts)
}

// Print writes the report as a table for a person.
func (r Report) Print(w io.Writer) {
	fmt.Fprintf(w, "detection quality: %d accounts, %.0f day(s), %d events, rule set %s\n\n", r.Accounts, r.Days, r.Events, r.RulesetVersion)
	fmt.Fprintf(w, "%-20s %7s %9s  %s\n", "incident", "found", "median", "detail")
	for _, name := range KindOrder {
		k := r.Kinds[name]
		if k == nil {
			continue
		}
		detail := ""
		switch name {
		case sim.KindTakeover:
			detail = fmt.Sprintf("frozen; %.1f%% of the money kept from thieves (%s of %s IDR moved); %.2f alerts to handle a victim",
				100*k.KeptShare(), idr(k.Stolen), idr(k.Attempted), k.AlertsPerVictim())
		case sim.KindStuckRetry:
			detail = fmt.Sprintf("alerted with the right cause; %d with a wrong cause", k.WrongCause)
		case sim.KindMerchantOutage:
			detail = fmt.Sprintf("one merchant alert each: %d merchant alerts, %d separate user alerts", k.OutageAlerts, k.UserAlerts)
		case sim.KindAppFault:
			detail = fmt.Sprintf("one app-version alert each: %d app alerts, %d separate user alerts", k.OutageAlerts, k.UserAlerts)
		case sim.KindStuffing:
			detail = fmt.Sprintf("IP alerted; %d/%d compromised accounts stepped up; %.2f alerts to handle each", k.CompromisedStepped, k.Compromised, k.AlertsPerVictim())
		case sim.KindSpendingSpike:
			detail = "stepped up"
		}
		fmt.Fprintf(w, "%-20s %3d/%-3d %9s  %s\n", name, k.Found, k.Total, k.MedianDelay().Round(time.Second), detail)
	}
	h := r.Honest
	fmt.Fprintf(w, "\nhonest accounts: %d; frozen %d, stepped up %d (%.2f%%), alerted %d (%.2f%%)\n",
		h.Accounts, h.Frozen, h.SteppedUp, pct(h.SteppedUp, h.Accounts), h.Alerted, pct(h.Alerted, h.Accounts))
	if len(h.Rules) > 0 {
		keys := make([]string, 0, len(h.Rules))
		for k := range h.Rules {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b string) int {
			if h.Rules[a] != h.Rules[b] {
				return h.Rules[b] - h.Rules[a]
			}
			return strings.Compare(a, b)
		})
		fmt.Fprintln(w, "what honest accounts went through, by rule:")
		for _, k := range keys {
			fmt.Fprintf(w, "  %6d  %s\n", h.Rules[k], k)
		}
	}
	var misses []string
	for _, name := range KindOrder {
		if k := r.Kinds[name]; k != nil {
			misses = append(misses, k.Misses...)
		}
	}
	if len(misses) > 0 {
		fmt.Fprintln(w, "\nmissed:")
		for _, m := range misses {
			fmt.Fprintln(w, "  "+m)
		}
	}
	if len(h.FrozenIDs) > 0 {
		fmt.Fprintf(w, "\nhonest accounts frozen: %s\n", strings.Join(first(h.FrozenIDs, 20), ", "))
	}
}

func first(l []string, n int) []string { return l[:min(n, len(l))] }

func pct(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

func idr(minor int64) string {
	s := fmt.Sprintf("%d", minor/100)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
