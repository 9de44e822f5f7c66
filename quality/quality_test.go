package quality

import (
	"strings"
	"testing"
	"time"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/rules"
	"github.com/walletguard/walletguard/sim"
)

// TestBuiltInRulesMeetTheTargets holds the built-in rule packs to the
// detection targets on traffic they were not written against: seeds and
// population sizes other than the README's default table.
func TestBuiltInRulesMeetTheTargets(t *testing.T) {
	set, err := rules.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	runs := []struct {
		seed     uint64
		accounts int
		days     float64
	}{{101, 5000, 3}, {202, 2500, 2}}
	if testing.Short() {
		runs = runs[1:]
	}
	var total Report
	for _, r := range runs {
		sc := sim.DefaultConfig(r.accounts)
		sc.Seed, sc.Duration = r.seed, time.Duration(r.days*24*float64(time.Hour))
		rep, err := Run(sc, config.Default(), set, nil)
		if err != nil {
			t.Fatal(err)
		}
		total.Merge(rep)
	}
	var b strings.Builder
	total.Print(&b)
	t.Log("\n" + b.String())

	for _, name := range KindOrder {
		k := total.Kinds[name]
		if k == nil || k.Total == 0 {
			t.Errorf("%s: no incidents generated", name)
			continue
		}
		if k.Found != k.Total {
			t.Errorf("%s: found %d of %d: %v", name, k.Found, k.Total, k.Misses)
		}
	}
	if kept := total.Kinds[sim.KindTakeover].KeptShare(); kept < 0.8 {
		t.Errorf("thieves moved %.0f%% of the money; at least 80%% must be kept", 100*(1-kept))
	}
	if k := total.Kinds[sim.KindStuckRetry]; k.WrongCause > 0 {
		t.Errorf("%d stuck payments alerted with the wrong cause", k.WrongCause)
	}
	if k := total.Kinds[sim.KindStuffing]; k.CompromisedStepped != k.Compromised {
		t.Errorf("%d of %d accounts the stuffing IP got into were stepped up", k.CompromisedStepped, k.Compromised)
	}
	// One case for support per account an attacker got into, not one per
	// rule category its events set off.
	for _, name := range []string{sim.KindTakeover, sim.KindStuffing} {
		if k := total.Kinds[name]; k.AlertsPerVictim() < 1 || k.AlertsPerVictim() > 1.05 {
			t.Errorf("%s: %.2f alerts to handle per account it got into (%d for %d); want one each", name, k.AlertsPerVictim(), k.VictimAlerts, k.Victims)
		}
	}
	h := total.Honest
	if h.Accounts < 5000 {
		t.Fatalf("only %d honest accounts: the traffic is too small to judge", h.Accounts)
	}
	if h.Frozen > 0 {
		t.Errorf("%d honest accounts frozen: %v", h.Frozen, h.FrozenIDs)
	}
	if share := h.AlertedShare(); share >= 0.01 {
		t.Errorf("%.2f%% of honest accounts alerted on; the target is under 1%%", 100*share)
	}
}
