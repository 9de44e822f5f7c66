package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

func sharer(t *testing.T, id string, owned ...int) kafka.GroupMember {
	t.Helper()
	d, err := sharedOwners{owned: func() map[string][]int { return map[string][]int{"events": owned} }}.UserData()
	if err != nil {
		t.Fatal(err)
	}
	return kafka.GroupMember{ID: id, Topics: []string{"events"}, UserData: d}
}

func eventPartitions(n int) []kafka.Partition {
	var ps []kafka.Partition
	for i := range n {
		ps = append(ps, kafka.Partition{Topic: "events", ID: i})
	}
	return ps
}

// checkShared fails unless every partition went to exactly one member and
// the members' counts differ by at most one.
func checkShared(t *testing.T, got kafka.GroupMemberAssignments, parts int) {
	t.Helper()
	seen := map[int]string{}
	least, most := parts, 0
	for id, topics := range got {
		for _, p := range topics["events"] {
			if o, ok := seen[p]; ok {
				t.Fatalf("partition %d given to %s and %s", p, o, id)
			}
			seen[p] = id
		}
		least, most = min(least, len(topics["events"])), max(most, len(topics["events"]))
	}
	if len(seen) != parts {
		t.Fatalf("%d of %d partitions assigned: %v", len(seen), parts, got)
	}
	if most-least > 1 {
		t.Fatalf("unbalanced: %d to %d partitions a member: %v", least, most, got)
	}
}

// A member joining takes its share from the others and nothing else moves;
// a member leaving leaves its partitions to the others and nothing else
// moves; every partition has one owner and the counts stay within one.
func TestSharedOwnersMoveOnlyWhatTheyMust(t *testing.T) {
	parts := eventPartitions(12)
	b := sharedOwners{}

	two := b.AssignGroups([]kafka.GroupMember{sharer(t, "a"), sharer(t, "b")}, parts)
	checkShared(t, two, 12)

	three := b.AssignGroups([]kafka.GroupMember{
		sharer(t, "a", two["a"]["events"]...), sharer(t, "b", two["b"]["events"]...), sharer(t, "c"),
	}, parts)
	checkShared(t, three, 12)
	for _, id := range []string{"a", "b"} {
		for _, p := range three[id]["events"] {
			if !slices.Contains(two[id]["events"], p) {
				t.Errorf("partition %d moved to %s, which did not own it, when c joined", p, id)
			}
		}
	}
	if n := len(three["c"]["events"]); n != 4 {
		t.Errorf("the newcomer got %d partitions, want 4", n)
	}

	left := b.AssignGroups([]kafka.GroupMember{sharer(t, "a", three["a"]["events"]...), sharer(t, "c", three["c"]["events"]...)}, parts)
	checkShared(t, left, 12)
	for _, id := range []string{"a", "c"} {
		for _, p := range three[id]["events"] {
			if !slices.Contains(left[id]["events"], p) {
				t.Errorf("partition %d taken from %s when b left", p, id)
			}
		}
	}
}

// Whatever the members claim — stale, overlapping, unknown partitions, or
// no user data at all — the assignment is complete and balanced.
func TestSharedOwnersBalanceAnyClaims(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 500 {
		nparts, nmembers := 1+rng.IntN(24), 1+rng.IntN(6)
		var members []kafka.GroupMember
		for i := range nmembers {
			id := fmt.Sprintf("m%d", i)
			if rng.IntN(8) == 0 {
				members = append(members, kafka.GroupMember{ID: id, Topics: []string{"events"}})
				continue
			}
			var owned []int
			for range rng.IntN(nparts + 3) {
				owned = append(owned, rng.IntN(nparts+2)) // some past the last partition
			}
			members = append(members, sharer(t, id, owned...))
		}
		got := sharedOwners{}.AssignGroups(members, eventPartitions(nparts))
		if len(got) != nmembers {
			t.Fatalf("round %d: %d assignments for %d members", round, len(got), nmembers)
		}
		checkShared(t, got, nparts)
	}
}

// eventsBroker starts an embedded broker with a topic "events" of four
// partitions; ctx ends after timeout.
func eventsBroker(t *testing.T, timeout time.Duration) (context.Context, []string) {
	t.Helper()
	b, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:0", Partitions: 4, Topics: []string{"events"}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx, []string{b.Addr()}
}

// delivery is a record as a sharing member received it.
type delivery struct {
	member                string
	observe, seen, follow bool
	partition             int
	offset                int64
}

// sharingMember runs a Source sharing the group's partitions, collecting
// what it hands on; owns receives each generation's assignment. Records it
// decides are marked handled only while handle says so.
type sharingMember struct {
	src    *Source
	cancel context.CancelFunc
	done   chan struct{}
	owns   chan []int
	handle atomic.Bool
}

func startSharing(t *testing.T, ctx context.Context, brokers []string, name string, mu *sync.Mutex, got *[]delivery) *sharingMember {
	t.Helper()
	m := &sharingMember{done: make(chan struct{}), owns: make(chan []int, 16)}
	m.handle.Store(true)
	m.src = NewSource(SourceConfig{
		Brokers: brokers, Topics: []string{"events"}, GroupID: "sharing", SessionTimeout: 6 * time.Second, CommitInterval: 50 * time.Millisecond,
		Share: true, Advertise: func() string { return name + ".api:8080" },
		Owns: func(_ context.Context, owned map[string][]int) {
			m.owns <- slices.Clone(owned["events"])
		},
	}, NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	rctx, cancel := context.WithCancel(ctx)
	m.cancel = cancel
	go func() { _ = m.src.Run(rctx) }()
	go func() {
		defer close(m.done)
		for r := range m.src.Records() {
			mu.Lock()
			*got = append(*got, delivery{member: name, observe: r.Observe, seen: r.Seen, follow: r.Follow, partition: r.Partition, offset: r.Offset})
			mu.Unlock()
			if !r.Observe && m.handle.Load() {
				m.src.MarkHandled(r.Topic, r.Partition, r.Offset)
			}
		}
	}()
	return m
}

// owned waits for the member's assignment to have n partitions.
func (m *sharingMember) owned(t *testing.T, n int) []int {
	t.Helper()
	timeout := time.After(40 * time.Second)
	for {
		select {
		case ps := <-m.owns:
			if len(ps) == n {
				return ps
			}
		case <-timeout:
			t.Fatalf("no assignment of %d partitions", n)
		}
	}
}

func (m *sharingMember) stop(t *testing.T) {
	t.Helper()
	m.cancel()
	<-m.done
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.src.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestMembersShareThePartitions: two members of a group each decide half
// the partitions and observe the other half, so every record is decided
// once and observed once. When one leaves after having marked only part of
// what it decided handled, the other decides its partitions from the
// committed offsets: the records it had observed since are handed on
// marked Seen, and everything after decided as usual.
// A member of the first release wrote the partitions it decides alone.
func TestSharedMetadataOfTheFirstReleaseIsRead(t *testing.T) {
	m := parseSharedMeta([]byte(`{"events":[1,3]}`))
	if !reflect.DeepEqual(m.Decides, map[string][]int{"events": {1, 3}}) || m.API != "" {
		t.Errorf("first release's metadata read as %+v", m)
	}
	d, err := sharedOwners{owned: func() map[string][]int { return map[string][]int{"events": {2}} }, addr: func() string { return "10.0.0.7:8080" }}.UserData()
	if err != nil {
		t.Fatal(err)
	}
	if m := parseSharedMeta(d); !reflect.DeepEqual(m.Decides, map[string][]int{"events": {2}}) || m.API != "10.0.0.7:8080" {
		t.Errorf("metadata read back as %+v", m)
	}
}

func TestMembersShareThePartitions(t *testing.T) {
	ctx, brokers := eventsBroker(t, 90*time.Second)
	p := NewProducer(brokers, NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	defer p.Close()
	produce := func(from, n int) map[int]int64 {
		var msgs []Message
		for i := from; i < from+n; i++ {
			msgs = append(msgs, Message{Topic: "events", Key: fmt.Appendf(nil, "acct-%d", i), Value: fmt.Appendf(nil, "%d", i)})
		}
		if err := p.Write(ctx, "test", msgs); err != nil {
			t.Fatal(err)
		}
		ends, err := EndOffsets(ctx, brokers, "events")
		if err != nil {
			t.Fatal(err)
		}
		return ends
	}
	var mu sync.Mutex
	var got []delivery
	wait := func(what string, ok func([]delivery) bool) {
		t.Helper()
		for deadline := time.Now().Add(40 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			mu.Lock()
			done := ok(got)
			mu.Unlock()
			if done {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}

	a := startSharing(t, ctx, brokers, "a", &mu, &got)
	a.owned(t, 4)
	bm := startSharing(t, ctx, brokers, "b", &mu, &got)
	ownedA, ownedB := a.owned(t, 2), bm.owned(t, 2)
	if slices.ContainsFunc(ownedA, func(p int) bool { return slices.Contains(ownedB, p) }) {
		t.Fatalf("both members own a partition: a %v, b %v", ownedA, ownedB)
	}
	// Each member is found with what it decides and where its API answers:
	// the others pass requests about its accounts on to it.
	peers, err := SharingMembers(ctx, brokers, "sharing")
	if err != nil {
		t.Fatal(err)
	}
	apis := map[string][]int{}
	for _, p := range peers {
		apis[p.API] = p.Decides["events"]
	}
	if want := map[string][]int{"a.api:8080": slices.Sorted(slices.Values(ownedA)), "b.api:8080": slices.Sorted(slices.Values(ownedB))}; !reflect.DeepEqual(apis, want) {
		t.Errorf("sharing members: %v, want %v", apis, want)
	}

	ends := produce(0, 400)
	total := int64(0)
	for _, e := range ends {
		total += e
	}
	wait("every record decided once and observed once", func(ds []delivery) bool { return int64(len(ds)) >= 2*total })
	mu.Lock()
	decided, observed := map[[2]int64]string{}, map[[2]int64]string{}
	for _, d := range got {
		k := [2]int64{int64(d.partition), d.offset}
		owner := "a"
		if slices.Contains(ownedB, d.partition) {
			owner = "b"
		}
		switch {
		case d.seen || d.follow:
			t.Errorf("record %v handed on to %s marked seen or follow before anyone left", k, d.member)
		case d.observe:
			if d.member == owner {
				t.Errorf("%s observed record %v of its own partition", d.member, k)
			}
			if prev, dup := observed[k]; dup {
				t.Errorf("record %v observed by %s and %s", k, prev, d.member)
			}
			observed[k] = d.member
		default:
			if d.member != owner {
				t.Errorf("%s decided record %v of %s's partition", d.member, k, owner)
			}
			if prev, dup := decided[k]; dup {
				t.Errorf("record %v decided by %s and %s", k, prev, d.member)
			}
			decided[k] = d.member
		}
	}
	got = nil
	mu.Unlock()
	if int64(len(decided)) != total || int64(len(observed)) != total {
		t.Fatalf("%d records decided and %d observed, want each of %d", len(decided), len(observed), total)
	}

	// b has committed all it decided: what it decides from here on it
	// leaves uncommitted.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := CommittedOffsets(ctx, brokers, "sharing", map[string][]int{"events": ownedB})
		if err != nil {
			t.Fatal(err)
		}
		all := true
		for _, p := range ownedB {
			all = all && c["events"][p] == ends[p]
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b committed %v of its partitions %v, want %v", c["events"], ownedB, ends)
		}
	}
	// b marks only part of what it decides next handled, then leaves.
	bm.handle.Store(false)
	ends2 := produce(400, 400)
	wait("the second batch handed on to both", func(ds []delivery) bool { return int64(len(ds)) >= 2*(sum(ends2)-total) })
	committed, err := CommittedOffsets(ctx, brokers, "sharing", map[string][]int{"events": ownedB})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got = nil
	mu.Unlock()
	bm.stop(t)
	a.owned(t, 4)
	ends3 := produce(800, 200)
	wantSeen := int64(0)
	for _, p := range ownedB {
		wantSeen += ends2[p] - committed["events"][p]
	}
	if wantSeen == 0 {
		t.Fatal("b left with everything committed: the test does not cover records decided again")
	}
	wait("a's takeover", func(ds []delivery) bool { return int64(len(ds)) >= wantSeen+sum(ends3)-sum(ends2) })
	mu.Lock()
	defer mu.Unlock()
	seen := int64(0)
	for _, d := range got {
		k := [2]int64{int64(d.partition), d.offset}
		switch {
		case d.member != "a" || d.observe:
			t.Errorf("record %v handed on to %s (observe %v) after b left", k, d.member, d.observe)
		case d.seen:
			if !slices.Contains(ownedB, d.partition) || d.offset < committed["events"][d.partition] || d.offset >= ends2[d.partition] {
				t.Errorf("record %v marked seen: a observed only b's records after its commit, up to %d", k, ends2[d.partition])
			}
			seen++
		case d.offset < ends2[d.partition]:
			t.Errorf("record %v of the second batch decided again without being marked seen", k)
		}
	}
	if seen != wantSeen {
		t.Errorf("%d records marked seen, want the %d b decided past its commit", seen, wantSeen)
	}
	t.Logf("%d records decided and observed; after b left, %d decided again as seen", total, seen)
}

func sum(ends map[int]int64) int64 {
	n := int64(0)
	for _, e := range ends {
		n += e
	}
	return n
}

// A member that shares cannot join a group whose members keep the
// partitions whole: the coordinator finds no protocol both offer and
// refuses it, and the owner keeps every partition.
func TestSharingMemberCannotSplitASoleOwnersGroup(t *testing.T) {
	ctx, brokers := eventsBroker(t, 60*time.Second)
	assigned := make(chan struct{}, 16)
	sole := NewSource(SourceConfig{
		Brokers: brokers, Topics: []string{"events"}, GroupID: "sharing", SessionTimeout: 6 * time.Second, CommitInterval: 50 * time.Millisecond,
		Assigning: func(context.Context) { assigned <- struct{}{} },
	}, NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = sole.Run(sctx) }()
	select {
	case <-assigned:
	case <-ctx.Done():
		t.Fatal("the sole owner got no partitions")
	}
	var mu sync.Mutex
	var got []delivery
	sharing := startSharing(t, ctx, brokers, "sharing", &mu, &got)
	defer sharing.cancel()
	select {
	case ps := <-sharing.owns:
		t.Fatalf("the sharing member joined the sole owner's group and got %v", ps)
	case <-assigned:
		t.Fatal("the sole owner's generation ended: the sharing member was let in")
	case <-time.After(8 * time.Second):
	}
	if n := len(sole.ownedNow()["events"]); n != 4 {
		t.Fatalf("the sole owner holds %d partitions, want 4", n)
	}
}
