package enforce

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/rules"
)

func testSealer(t *testing.T) *Sealer {
	t.Helper()
	key, err := LoadKey("", "")
	if err != nil || key != nil {
		t.Fatalf("no key configured must give nil, nil: %v %v", key, err)
	}
	t.Setenv("WG_TEST_TOTP_KEY", NewKey())
	key, err = LoadKey("", "WG_TEST_TOTP_KEY")
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// oathtool computes the current TOTP code with an independent implementation.
func oathtool(t *testing.T, secret string, at time.Time) string {
	t.Helper()
	bin, err := exec.LookPath("oathtool")
	if err != nil {
		t.Fatal("oathtool is required (Debian package oathtool; the test script installs it)")
	}
	out, err := exec.Command(bin, "--totp", "-b", "--now", at.UTC().Format("2006-01-02 15:04:05 UTC"), secret).CombinedOutput()
	if err != nil {
		t.Fatalf("oathtool: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

func secretOf(t *testing.T, otpauth string) string {
	t.Helper()
	u, err := url.Parse(otpauth)
	if err != nil || u.Scheme != "otpauth" || u.Host != "totp" {
		t.Fatalf("not an otpauth TOTP URL: %q", otpauth)
	}
	q := u.Query()
	if q.Get("digits") != "6" || q.Get("period") != "30" || q.Get("algorithm") != "SHA1" {
		t.Errorf("parameters authenticator apps expect: %v", q)
	}
	return q.Get("secret")
}

func TestTOTPAgainstOathtool(t *testing.T) {
	p := NewPlanner(Config{Sealer: testSealer(t), MaxWrongCodes: 5}, nil)
	now := time.Now()
	en, ch, err := p.Enroll("acc-1", "gateway", now)
	if err != nil {
		t.Fatal(err)
	}
	if len(en.QRPNG) < 100 || string(en.QRPNG[1:4]) != "PNG" {
		t.Errorf("QR code is not a PNG (%d bytes)", len(en.QRPNG))
	}
	secret := secretOf(t, en.OTPAuthURL)
	if len(ch.Audit) != 1 || strings.Contains(fmt.Sprint(ch.Audit), secret) {
		t.Errorf("enrollment audit %+v", ch.Audit)
	}

	// A step-up is pending: the right code clears it and sends clear_2fa.
	d := detector.Decision{DecisionID: "d1", AccountID: "acc-1", TS: now, Action: rules.ActionStepUp, Score: 70,
		Rules: []detector.Hit{{ID: "new_device_login", Score: 70, Reason: "new phone"}}}
	if cmds := p.Plan(&d, nil); len(cmds) != 1 || cmds[0].Command != CmdRequire2FA {
		t.Fatalf("step-up decision gave %+v", cmds)
	}
	code := oathtool(t, secret, now)
	res, ch, err := p.Verify("acc-1", "gateway", code, now)
	if err != nil || !res.StepUpCleared {
		t.Fatalf("oathtool's code %s refused: %v %+v", code, err, res)
	}
	if len(ch.Commands) != 1 || ch.Commands[0].Command != CmdClear2FA {
		t.Errorf("a verified code must send clear_2fa, got %+v", ch.Commands)
	}
	if st, _ := p.Get("acc-1"); st.StepUp {
		t.Error("step-up still required after a correct code")
	}
	// The same code again is a replay.
	if _, _, err := p.Verify("acc-1", "gateway", code, now.Add(5*time.Second)); !errors.Is(err, ErrReplayed) {
		t.Errorf("the same code twice: %v, want ErrReplayed", err)
	}
	// The previous step's code is accepted (clock drift), the one before not.
	if _, _, err := p.Verify("acc-1", "gateway", oathtool(t, secret, now.Add(60*time.Second)), now.Add(90*time.Second)); err != nil {
		t.Errorf("code of the previous time step refused: %v", err)
	}
	if _, _, err := p.Verify("acc-1", "gateway", oathtool(t, secret, now.Add(60*time.Second)), now.Add(150*time.Second)); err == nil {
		t.Error("a code two steps old was accepted")
	}
	// Five wrong codes in a row lock verification and raise an alert; then
	// even the right code is refused.
	at := now.Add(200 * time.Second)
	if _, _, err := p.Verify("acc-1", "gateway", oathtool(t, secret, at), at); err != nil {
		t.Fatalf("a correct code ends the run of wrong ones: %v", err)
	}
	var alerts []SystemAlert
	for i := 0; i < 5; i++ {
		_, ch, err := p.Verify("acc-1", "attacker", "000000", now.Add(200*time.Second))
		if !errors.Is(err, ErrWrongCode) && !errors.Is(err, ErrReplayed) {
			t.Fatalf("wrong code %d: %v", i, err)
		}
		alerts = append(alerts, ch.Alerts...)
	}
	if len(alerts) != 1 || alerts[0].Category != "2fa_lockout" {
		t.Errorf("lockout alerts %+v", alerts)
	}
	late := now.Add(300 * time.Second)
	if _, _, err := p.Verify("acc-1", "gateway", oathtool(t, secret, late), late); !errors.Is(err, ErrLocked) {
		t.Errorf("right code while locked: %v, want ErrLocked", err)
	}
	if _, _, err := p.Enroll("acc-1", "gateway", late); !errors.Is(err, ErrLocked) {
		t.Errorf("re-enrolling while locked: %v, want ErrLocked", err)
	}
	if _, err := p.Unlock2FA("acc-1", "support", "owner verified", late); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Verify("acc-1", "gateway", oathtool(t, secret, late), late); err != nil {
		t.Errorf("right code after unlock: %v", err)
	}
}

func TestSecretsAreSealedAtRestAndSurviveRestart(t *testing.T) {
	sealer := testSealer(t)
	db, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	p := NewPlanner(Config{Sealer: sealer}, nil)
	now := time.Now()
	en, _, err := p.Enroll("acc-2", "gateway", now)
	if err != nil {
		t.Fatal(err)
	}
	secret := secretOf(t, en.OTPAuthURL)
	if err := db.Update(p.Save); err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx *bolt.Tx) error {
		raw := string(tx.Bucket(bucketStates).Get([]byte("acc-2")))
		if strings.Contains(raw, secret) || !strings.Contains(raw, "totp_sealed") {
			t.Errorf("stored state shows the secret or lacks the sealed one: %s", raw)
		}
		return nil
	})
	st, _ := p.Get("acc-2")
	if b, _ := json.Marshal(st); strings.Contains(string(b), secret) || strings.Contains(string(b), "sealed") {
		t.Errorf("state as the API shows it leaks the secret: %s", b)
	}

	q := NewPlanner(Config{Sealer: sealer}, nil)
	n, err := q.Load(db)
	if err != nil || n != 1 {
		t.Fatalf("load: %d enrolled, %v", n, err)
	}
	if _, _, err := q.Verify("acc-2", "gateway", oathtool(t, secret, now), now); err != nil {
		t.Errorf("code after restart: %v", err)
	}
	other, _ := NewSealer(make([]byte, 32))
	r := NewPlanner(Config{Sealer: other}, nil)
	r.Load(db)
	if _, _, err := r.Verify("acc-2", "gateway", oathtool(t, secret, now), now); err == nil || errors.Is(err, ErrWrongCode) {
		t.Errorf("a different key must fail to open the secret, got %v", err)
	}
}

func freezeDecision(acc string, at time.Time) detector.Decision {
	return detector.Decision{DecisionID: "d-" + acc, AccountID: acc, TS: at, Action: rules.ActionFreeze, Score: 95,
		Rules: []detector.Hit{{ID: "broken_rule", Score: 95, Action: "freeze", Reason: "field missing"}}}
}

func TestBreakerTurnsAFreezeFloodIntoStepUps(t *testing.T) {
	p := NewPlanner(Config{MaxFreezes: 10, Window: time.Minute}, nil)
	t0 := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	// Freezes spread out under the limit are fine.
	for i := 0; i < 30; i++ {
		d := freezeDecision(fmt.Sprintf("slow-%d", i), t0.Add(time.Duration(i)*10*time.Second))
		if cmds := p.Plan(&d, nil); len(cmds) != 1 || cmds[0].Command != CmdFreeze {
			t.Fatalf("freeze %d at a normal rate: %+v", i, cmds)
		}
	}
	if p.Breaker().Open {
		t.Fatal("breaker opened at 6 freezes a minute with a limit of 10")
	}
	// A flood: 200 accounts in 20 seconds.
	t1 := t0.Add(time.Hour)
	freezes, stepUps := 0, 0
	for i := 0; i < 200; i++ {
		d := freezeDecision(fmt.Sprintf("flood-%d", i), t1.Add(time.Duration(i)*100*time.Millisecond))
		for _, c := range p.Plan(&d, nil) {
			switch c.Command {
			case CmdFreeze:
				freezes++
			case CmdRequire2FA:
				stepUps++
				if d.Action != rules.ActionStepUp || !strings.HasPrefix(d.DowngradedFrom, "freeze") {
					t.Fatalf("held freeze decision reads %s (downgraded from %q)", d.Action, d.DowngradedFrom)
				}
			}
		}
	}
	if freezes != 10 || stepUps != 190 {
		t.Errorf("flood of 200: %d freezes, %d step-ups; want 10 and 190", freezes, stepUps)
	}
	b := p.Breaker()
	if !b.Open || b.Held != 190 {
		t.Errorf("breaker %+v", b)
	}
	if a := p.TakeAlerts(); len(a) != 1 || a[0].Severity != "critical" || !strings.Contains(a[0].Reason, "broken_rule") {
		t.Errorf("breaker alert %+v", a)
	}
	if _, ok := p.ResetBreaker("admin", "rule fixed", time.Now()); !ok {
		t.Fatal("reset did nothing")
	}
	d := freezeDecision("after-reset", t1.Add(time.Hour))
	if cmds := p.Plan(&d, nil); len(cmds) != 1 || cmds[0].Command != CmdFreeze {
		t.Errorf("after reset: %+v", cmds)
	}
}

// TestUnfreezeGraceStepsUpInsteadOfFreezingAgain: support unfreezes a
// traveller; the next takeover-looking events of that trip ask for the
// second factor instead of freezing again, and once the grace is over an
// automatic freeze works as before. Other accounts are not affected.
func TestUnfreezeGraceStepsUpInsteadOfFreezingAgain(t *testing.T) {
	p := NewPlanner(Config{MaxFreezes: 100, Window: time.Minute, UnfreezeGrace: 24 * time.Hour}, nil)
	t0 := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	d := freezeDecision("traveller", t0)
	if cmds := p.Plan(&d, nil); len(cmds) != 1 || cmds[0].Command != CmdFreeze {
		t.Fatalf("first freeze: %+v", cmds)
	}
	if _, err := p.Unfreeze("traveller", "support desk (rina)", "called the customer: on holiday in Singapore", t0.Add(10*time.Minute)); err != nil {
		t.Fatal(err)
	}
	again := freezeDecision("traveller", t0.Add(2*time.Hour))
	cmds := p.Plan(&again, nil)
	if len(cmds) != 1 || cmds[0].Command != CmdRequire2FA || again.Action != rules.ActionStepUp ||
		!strings.Contains(again.DowngradedFrom, "unfrozen by support desk (rina)") {
		t.Fatalf("freeze within the grace: commands %+v, decision %s downgraded from %q", cmds, again.Action, again.DowngradedFrom)
	}
	if st, _ := p.Get("traveller"); st.Frozen || !st.StepUp {
		t.Errorf("within the grace the account must stay unfrozen and need a second factor: %+v", st)
	}
	other := freezeDecision("someone-else", t0.Add(2*time.Hour))
	if cmds := p.Plan(&other, nil); len(cmds) != 1 || cmds[0].Command != CmdFreeze {
		t.Errorf("another account's freeze: %+v", cmds)
	}
	late := freezeDecision("traveller", t0.Add(25*time.Hour))
	if cmds := p.Plan(&late, nil); len(cmds) != 1 || cmds[0].Command != CmdFreeze {
		t.Errorf("after the grace an automatic freeze applies again: %+v", cmds)
	}
}

// BenchmarkPrepareSave is the pause a checkpoint costs the pipeline for
// account states: 5,000 of 20,000 changed since the last one (a busy
// interval under load). Encoding runs in the write, off the pipeline.
func BenchmarkPrepareSave(b *testing.B) {
	p := NewPlanner(Config{}, nil)
	const states, changed = 20000, 5000
	at := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	decide := func(i int, action string, score int) {
		d := detector.Decision{DecisionID: fmt.Sprintf("dec-%d-%d", i, score), AccountID: fmt.Sprintf("acc-%06d", i), TS: at,
			Action: action, Score: score,
			Rules: []detector.Hit{{ID: "new_device_large_transfer", Score: score, Reason: "transfer 4,800,000 IDR from a new device"}}}
		p.Plan(&d, nil)
	}
	for i := range states {
		decide(i, rules.ActionStepUp, 60)
	}
	if _, _, err := p.PrepareSave(); err != nil {
		b.Fatal(err)
	}
	score := 0
	for b.Loop() {
		b.StopTimer()
		score = 1 + score%50
		for i := range changed {
			decide(i*states/changed, rules.ActionAllow, score)
		}
		b.StartTimer()
		if _, _, err := p.PrepareSave(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(changed, "changed-states")
}

// PruneAudit deletes the entries older than the cut, oldest first, at most
// a batch at a time, hands each to its caller, and keeps the rest.
func TestPruneAuditKeepsTheRecentTrail(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "audit.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	day := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var entries []AuditEntry
	for i := range 5 {
		entries = append(entries, AuditEntry{At: day.AddDate(0, 0, i), Action: CmdFreeze, Origin: "auto", Actor: Auto, AccountID: fmt.Sprintf("acc-%d", i)})
	}
	// A manual action saved before an automatic one stamped earlier.
	entries[1], entries[2] = entries[2], entries[1]
	entries[1].At, entries[1].Origin = day.AddDate(0, 0, 9), "manual"
	if err := db.Update(func(tx *bolt.Tx) error { return AppendAudit(tx, nil, entries...) }); err != nil {
		t.Fatal(err)
	}
	var gone []string
	prune := func(limit int) int {
		var n int
		err := db.Update(func(tx *bolt.Tx) error {
			var err error
			n, err = PruneAudit(tx, day.AddDate(0, 0, 3), limit, func(v []byte) {
				var e AuditEntry
				json.Unmarshal(v, &e)
				gone = append(gone, e.AccountID)
			})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// The manual action on acc-2 (day 9) was saved before acc-1's (day 1):
	// the prune looks past it.
	if n := prune(1); n != 1 {
		t.Errorf("first batch of 1 pruned %d", n)
	}
	if n := prune(5); n != 1 {
		t.Errorf("second batch pruned %d, want the one left before the cut", n)
	}
	if n := prune(5); n != 0 {
		t.Errorf("third batch pruned %d, want none", n)
	}
	if strings.Join(gone, ",") != "acc-0,acc-1" {
		t.Errorf("pruned %v, want acc-0 and acc-1, in order", gone)
	}
	kept, _, err := ListAudit(db, "", 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range kept {
		ids = append(ids, e.AccountID)
	}
	if strings.Join(ids, ",") != "acc-4,acc-3,acc-2" {
		t.Errorf("kept %v, want acc-4, acc-3 and the manual action on acc-2", ids)
	}
}

// An account handed over with its partition leaves memory and, at the next
// save, the store — but the changelog is told nothing of it: there its
// state is the new owner's. Accounts kept stay as they were.
func TestHandedOverAccountsLeaveTheStoreNotTheChangelog(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var told []string
	p := NewPlanner(Config{Changelog: func(id string, _ []byte) { told = append(told, id) }}, nil)
	now := time.Now()
	for _, id := range []string{"acc-moved", "acc-kept"} {
		p.Freeze(id, "support", "reported stolen", now)
	}
	if err := db.Update(p.Save); err != nil {
		t.Fatal(err)
	}
	told = nil
	if n := p.HandOver(func(id string) bool { return id == "acc-moved" }); n != 1 {
		t.Fatalf("handed over %d accounts, want 1", n)
	}
	if _, ok := p.Get("acc-moved"); ok {
		t.Error("the account handed over is still held")
	}
	if err := db.Update(p.Save); err != nil {
		t.Fatal(err)
	}
	if len(told) != 0 {
		t.Errorf("the changelog was told of %v", told)
	}
	q := NewPlanner(Config{}, nil)
	if _, err := q.Load(db); err != nil {
		t.Fatal(err)
	}
	if _, ok := q.Get("acc-moved"); ok {
		t.Error("the account handed over is still in the store")
	}
	if s, ok := q.Get("acc-kept"); !ok || !s.Frozen {
		t.Errorf("the account kept: %+v (held %v), want frozen", s, ok)
	}
}

// Members that share the partitions each count their own freezes: a flood
// over every account opens each member's breaker at its part of the limit,
// so that together they hold about as many freezes as one instance would.
func TestSharingMembersSplitTheBreakersLimit(t *testing.T) {
	members := []*Planner{NewPlanner(Config{MaxFreezes: 30, Window: time.Minute}, nil), NewPlanner(Config{MaxFreezes: 30, Window: time.Minute}, nil), NewPlanner(Config{MaxFreezes: 30, Window: time.Minute}, nil)}
	parts := []int{2, 1, 1} // of 4
	for i, p := range members {
		p.SetShare(parts[i], 4)
	}
	t0 := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	freezes := 0
	for i := 0; i < 400; i++ {
		d := freezeDecision(fmt.Sprintf("flood-%d", i), t0.Add(time.Duration(i)*50*time.Millisecond))
		// Accounts spread over the partitions; member 0 decides two.
		m := []int{0, 0, 1, 2}[i%4]
		for _, c := range members[m].Plan(&d, nil) {
			if c.Command == CmdFreeze {
				freezes++
			}
		}
	}
	for i, p := range members {
		b := p.Breaker()
		if !b.Open {
			t.Errorf("member %d (%d of 4 partitions): breaker closed in a flood", i, parts[i])
		}
		if want := []int{15, 8, 8}[i]; b.MaxFreezes != want || !strings.Contains(b.Why, "partitions") {
			t.Errorf("member %d: limit %d, want %d; why %q", i, b.MaxFreezes, want, b.Why)
		}
	}
	// One instance alone freezes 30 and holds the rest; the three, 31.
	if freezes < 30 || freezes > 33 {
		t.Errorf("the members froze %d accounts in the flood; one instance with the same limit freezes 30", freezes)
	}
}

// TestAuditPagesWalkTheWholeTrail: page after page, each begun where the
// one before ended, lists every entry once, newest first — the whole trail
// or one account's — also when the entry a page ended on was pruned before
// the next was asked for.
func TestAuditPagesWalkTheWholeTrail(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "audit.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var entries []AuditEntry
	for i := range 25 {
		entries = append(entries, AuditEntry{At: start.Add(time.Duration(i) * time.Minute), Action: CmdFreeze, Origin: "auto", Actor: Auto,
			AccountID: []string{"acc-a", "acc-b"}[i%2], Reason: fmt.Sprint(i)})
	}
	if err := db.Update(func(tx *bolt.Tx) error { return AppendAudit(tx, nil, entries...) }); err != nil {
		t.Fatal(err)
	}
	walk := func(account string, limit int, between func()) []string {
		var got []string
		var before uint64
		for pages := 0; pages < 100; pages++ {
			page, next, err := ListAudit(db, account, limit, before)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range page {
				got = append(got, e.Reason)
			}
			if next == 0 {
				return got
			}
			if between != nil {
				between()
			}
			before = next
		}
		t.Fatalf("%q: no end after 100 pages", account)
		return nil
	}
	want := func(account string) []string {
		var w []string
		for i := len(entries) - 1; i >= 0; i-- {
			if account == "" || entries[i].AccountID == account {
				w = append(w, entries[i].Reason)
			}
		}
		return w
	}
	for _, c := range []struct {
		account string
		limit   int
	}{{"", 4}, {"", 25}, {"", 100}, {"acc-a", 3}, {"acc-b", 1}} {
		if got := walk(c.account, c.limit, nil); !slices.Equal(got, want(c.account)) {
			t.Errorf("%q in pages of %d: %v, want %v", c.account, c.limit, got, want(c.account))
		}
	}
	// A page begun after a place past every entry (what the API hands on
	// when unsaved actions filled the first page) starts at the newest.
	if page, _, err := ListAudit(db, "", 3, math.MaxUint64); err != nil || len(page) != 3 || page[0].Reason != "24" || page[2].Reason != "22" {
		t.Errorf("a page after the end of the trail: %+v, %v; want the 3 newest", page, err)
	}
	// The newest two pruned away while a reader pages from the newest:
	// the pages go on below them, nothing listed twice or missed.
	pruned := false
	got := walk("", 5, func() {
		if !pruned {
			pruned = true
			if err := db.Update(func(tx *bolt.Tx) error {
				c := tx.Bucket(bucketAudit).Cursor()
				k, _ := c.Last()
				k, _ = c.Prev()
				k, _ = c.Prev()
				k, _ = c.Prev()
				k, _ = c.Prev() // the fifth newest: where the first page ended
				return tx.Bucket(bucketAudit).Delete(slices.Clone(k))
			}); err != nil {
				t.Fatal(err)
			}
		}
	})
	if w := want(""); !slices.Equal(got, w) {
		t.Errorf("paged across a prune of the page's last entry: %v, want %v", got, w)
	}
}
