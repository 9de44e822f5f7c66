package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walletguard/walletguard/app"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/sim"
)

// TestLostDataDirRestoresFromChangelog: walletguard publishes every
// checkpoint to kafka.changelog_topic. It is killed with SIGKILL and
// restarted on its data directory several times while it decides a stream
// (each crash may fall between a checkpoint and its publish); then it is
// killed again, and its data directory is lost with it. Started again
// on an empty one, it restores the state from the changelog and goes on:
// every decision and command equals an undisturbed run's, and the gateway
// finds frozen the accounts frozen before the loss, which it knows of only
// from the changelog.
func TestLostDataDirRestoresFromChangelog(t *testing.T) {
	bin := buildBinary(t)
	brokerAddr := startBroker(t, bin)
	scfg := sim.DefaultConfig(4000)
	scfg.Seed, scfg.HistoryDays, scfg.Duration = 23, 2, 30*time.Hour

	dataDir := filepath.Join(t.TempDir(), "data")
	c := memberConfig{path: filepath.Join(t.TempDir(), "walletguard.yaml"), http: freePort(t)}
	writeFile(t, c.path, fmt.Sprintf("data_dir: %s\nkafka: {brokers: [%s], session_timeout: 2s, commit_interval: 200ms, changelog_topic: walletguard.changelog}\n"+
		"http: {listen: %s}\ndetector: {checkpoint_interval: 300ms}\n", dataDir, brokerAddr, c.http))
	group := config.Default().Kafka.GroupID

	var a *member
	var killedAt float64
	var committed int64
	kill := func() {
		time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
		killedAt = consumed(a.http)
		if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		a.cmd.Wait()
	}
	restarts := 0
	var status, statusJSON []byte
	ref := newReference(t, brokerAddr, scfg, 10, func(part, produced int) {
		switch part {
		case 0:
			a = startMember(t, bin, c)
		case 2, 4, 6:
			waitUntil(t, "the daemon to consume", time.Minute, func() bool { return consumed(a.http) > 0 })
			kill()
			a = startMember(t, bin, c)
			restarts++
		case 8:
			waitUntil(t, "the daemon to commit most of what was produced", 2*time.Minute, func() bool {
				return committedOffsets(t, brokerAddr, group, "wallet.events", 1) >= int64(produced)*9/10
			})
			if n := metricSum(a.http, "walletguard_changelog_records_total"); n == 0 {
				t.Fatal("offsets committed, but no record published to the changelog")
			}
		case 9:
			// Killed as it decides the last tenth, and the volume is gone.
			kill()
			committed = committedOffsets(t, brokerAddr, group, "wallet.events", 1)
			if err := os.RemoveAll(dataDir); err != nil {
				t.Fatal(err)
			}
			// The operator checks what a restore would bring back.
			var err error
			if status, err = exec.Command(bin, "changelog", "status", "--config", c.path, "--records").CombinedOutput(); err != nil {
				t.Fatalf("walletguard changelog status: %v\n%s", err, status)
			}
			if statusJSON, err = exec.Command(bin, "changelog", "status", "--config", c.path, "--records", "--json").Output(); err != nil {
				t.Fatalf("walletguard changelog status --json: %v", err)
			}
		}
	})

	b := startMember(t, bin, c)
	got := ref.waitDecided(t, brokerAddr, 3*time.Minute, "the daemon restarted on an empty data directory to decide every event")
	pending, commands := ref.check(t, brokerAddr, got, "after the data directory was lost")
	m := regexp.MustCompile(`"restored state from changelog".*"accounts":(\d+)`).FindStringSubmatch(b.logs.String())
	if m == nil {
		t.Fatal("the restarted daemon does not log a restore from the changelog")
	}
	restored, _ := strconv.Atoi(m[1])
	if restored < 1000 {
		t.Errorf("restored %d accounts from the changelog, want the stream's thousands", restored)
	}
	if !strings.Contains(string(status), fmt.Sprintf("a restore brings back: %d accounts", restored)) ||
		!strings.Contains(string(status), fmt.Sprintf("group %s committed 0:%d;", group, committed)) {
		t.Errorf("walletguard changelog status, before the restore of %d accounts (%d committed), said:\n%s", restored, committed, status)
	} else {
		t.Logf("walletguard changelog status --records, before the restore:\n%s", status)
	}
	var st app.ChangelogStatus
	if err := json.Unmarshal(statusJSON, &st); err != nil || st.Restore == nil || st.Restore.Rows["accounts"] != restored || st.Committed["wallet.events"][0] != committed {
		t.Errorf("walletguard changelog status --json (%v): %s", err, statusJSON)
	}

	// The gateway asks the restarted daemon: every account the undisturbed
	// run froze is frozen, for the same reason. Those frozen before the
	// committed offset it knows of only from the changelog: it resumes at
	// or after the changelog's last marker, which no commit passes.
	before := ref.checkFrozen(t, b.http, int(committed), "the restarted daemon")
	if before == 0 {
		t.Fatalf("no account was frozen before the committed offset %d: the test did not see enforcement state restored", committed)
	}
	t.Logf("%d events; %d restarts after kill -9 on the data directory, then killed having read %v, %d committed, and the directory deleted; restored %d accounts from the changelog; %d decisions and %d commands equal the undisturbed run's (%d timers pending at the end); %d freezes known only from the changelog",
		len(ref.msgs), restarts, killedAt, committed, restored, len(got), commands, pending, before)
}

// TestColdStandbyTakesOverFromChangelog: an owner and a standby that does
// not follow it (standby_follow: false), both with the changelog, run as
// separate processes. The standby starts early, restoring the changelog as
// it then was, and holds only that while the owner decides most of the
// stream. The owner is killed with SIGKILL as it decides the last tenth.
// Taking the partition over, the standby restores the owner's last
// published state before it fetches an event, and decides the rest: every
// decision and command equals an undisturbed run's, and the gateway finds
// frozen the accounts the owner froze while the standby stood by.
// Support's webhook and the account service are down until the end, so
// the owner dies holding its alerts and commands undelivered: brought up,
// support receives every alert the new owner holds, and the account
// service every command issued, those the owner owed included, restored
// with its outbox.
func TestColdStandbyTakesOverFromChangelog(t *testing.T) {
	bin := buildBinary(t)
	brokerAddr := startBroker(t, bin)
	scfg := sim.DefaultConfig(4000)
	scfg.Seed, scfg.HistoryDays, scfg.Duration = 29, 2, 30*time.Hour
	group := config.Default().Kafka.GroupID
	hookAddr, svcAddr := freePort(t), freePort(t)
	configOf := func(name, kafka string) memberConfig {
		c := memberConfig{path: filepath.Join(t.TempDir(), name+".yaml"), http: freePort(t)}
		writeFile(t, c.path, fmt.Sprintf("data_dir: %s\nkafka: {brokers: [%s], session_timeout: 2s, commit_interval: 200ms, changelog_topic: walletguard.changelog%s}\n"+
			"http: {listen: %s}\ndetector: {checkpoint_interval: 300ms}\n"+
			"alerts: {webhooks: [{url: \"http://%s/hook\", secret: s3cret, name: support}]}\n"+
			"enforce: {account_service: {url: \"http://%s/commands\", secret: svc-s3cret}}\n",
			filepath.Join(t.TempDir(), name), brokerAddr, kafka, c.http, hookAddr, svcAddr))
		return c
	}
	var a, b *member
	var standbyFrom, killedAt float64
	var committed int64
	ref := newReference(t, brokerAddr, scfg, 10, func(part, produced int) {
		switch part {
		case 0:
			a = startMember(t, bin, configOf("a", ""))
			waitUntil(t, "the owner to own the partition", time.Minute, a.owns)
		case 1:
			waitUntil(t, "the owner to commit what was produced", 2*time.Minute, func() bool {
				return committedOffsets(t, brokerAddr, group, "wallet.events", 1) >= int64(produced)*9/10
			})
			standbyFrom = consumed(a.http)
			b = startMember(t, bin, configOf("b", ", standby_follow: false"))
			waitUntil(t, "the standby to stand by", time.Minute, b.standsBy)
		case 8:
			waitUntil(t, "the owner to commit most of what was produced", 2*time.Minute, func() bool {
				return committedOffsets(t, brokerAddr, group, "wallet.events", 1) >= int64(produced)*9/10
			})
		case 9:
			time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
			killedAt = consumed(a.http)
			if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			a.cmd.Wait()
			committed = committedOffsets(t, brokerAddr, group, "wallet.events", 1)
		}
	})

	waitUntil(t, "the standby to take the partition over", time.Minute, b.owns)
	got := ref.waitDecided(t, brokerAddr, 3*time.Minute, "the standby, now the owner, to decide every event")
	pending, commands := ref.check(t, brokerAddr, got, "after the owner was killed and a standby that did not follow took over")
	restores := regexp.MustCompile(`"restored state from changelog".*"accounts":(\d+)`).FindAllStringSubmatch(b.logs.String(), -1)
	if len(restores) != 2 || !regexp.MustCompile(`newer state than this instance's`).MatchString(b.logs.String()) {
		t.Fatalf("the standby logs %d restores from the changelog, want two: at its start and, replacing that state, on taking over", len(restores))
	}

	// Those frozen between the standby's start and the committed offset
	// it knows of only from the restore on taking over.
	before := ref.checkFrozen(t, b.http, int(committed), "the new owner") - ref.checkFrozen(t, b.http, int(standbyFrom), "the new owner")
	if before == 0 {
		t.Fatalf("no account was frozen between the standby's start (%v) and the committed offset %d: the test did not see enforcement state restored on taking over", standbyFrom, committed)
	}
	checkAlertsDelivered(t, b.http, hookAddr, filepath.Join(ref.dir, "alerts.ndjson"))
	checkCommandsDelivered(t, svcAddr, brokerAddr)
	redelivered := metricSum(b.http, "walletguard_outbox_restored_total")
	if redelivered == 0 {
		t.Error("the new owner delivered none of the records the owner's outbox held")
	}
	t.Logf("%d events; the standby started with the state after about %v, restoring %s accounts, and took over with %s; the owner was killed having read %v, %d committed; %d decisions and %d commands equal the undisturbed run's (%d timers pending at the end); %d freezes known only from the restore on taking over; %v records of the owner's outbox restored and delivered",
		len(ref.msgs), standbyFrom, restores[0][1], restores[1][1], killedAt, committed, len(got), commands, pending, before, redelivered)
}
