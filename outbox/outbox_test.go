package outbox

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openDB(t *testing.T, path string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// openBox opens an outbox in a new database at path, closed when the test ends.
func openBox(t *testing.T, path string) (*bolt.DB, *Box) {
	t.Helper()
	db := openDB(t, path)
	t.Cleanup(func() { db.Close() })
	b, err := Open(db)
	if err != nil {
		t.Fatal(err)
	}
	return db, b
}

func put(t *testing.T, db *bolt.DB, b *Box, dest string, ids ...string) {
	t.Helper()
	err := db.Update(func(tx *bolt.Tx) error {
		for _, id := range ids {
			if err := b.Put(tx, dest, id, []byte(`{"id":"`+id+`"}`), time.Now()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	b.Notify(dest)
}

// TestDeliversInOrderThroughAnOutageAndAcrossRestart: a receiver that is
// down, then rate-limits, then works gets every record once delivered, in
// order, with a valid signature; records put before a restart are delivered
// after it.
func TestDeliversInOrderThroughAnOutageAndAcrossRestart(t *testing.T) {
	var mu sync.Mutex
	var got []string
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		calls++
		switch {
		case calls <= 2:
			w.WriteHeader(http.StatusBadGateway)
			return
		case calls == 3:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		sig := r.Header.Get(SignatureHeader)
		ts, _ := strconv.ParseInt(strings.TrimPrefix(strings.Split(sig, ",")[0], "t="), 10, 64)
		if want := Sign("s3cret", time.Unix(ts, 0), body); sig != want || ts == 0 {
			t.Errorf("signature %q, want %q", sig, want)
		}
		got = append(got, r.Header.Get("Idempotency-Key"))
	}))
	defer srv.Close()

	path := filepath.Join(t.TempDir(), "o.db")
	db := openDB(t, path)
	b, err := Open(db)
	if err != nil {
		t.Fatal(err)
	}
	put(t, db, b, "hook", "a1", "a2")
	db.Close() // a restart before anything was delivered

	db = openDB(t, path)
	defer db.Close()
	b, _ = Open(db)
	put(t, db, b, "hook", "a3")
	if n, _ := b.Pending("hook"); n != 3 {
		t.Fatalf("pending %d, want 3", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := &Poster{URL: srv.URL, Secret: "s3cret"}
	go b.Deliver(ctx, "hook", p.Send, Policy{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if n, _ := b.Pending("hook"); n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("records not delivered within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(got, ",") != "a1,a2,a3" {
		t.Errorf("delivered %v, want a1,a2,a3 once each in order", got)
	}
}

func TestRefusedRecordGoesToDeadLetters(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "bad payload", http.StatusBadRequest)
	}))
	defer srv.Close()
	db := openDB(t, filepath.Join(t.TempDir(), "o.db"))
	defer db.Close()
	b, _ := Open(db)
	put(t, db, b, "hook", "x1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.Deliver(ctx, "hook", (&Poster{URL: srv.URL}).Send, Policy{MinBackoff: 10 * time.Millisecond})
	deadline := time.Now().Add(5 * time.Second)
	for len(b.Dead("hook", 10)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("refused record not moved to the dead-letter list")
		}
		time.Sleep(10 * time.Millisecond)
	}
	d := b.Dead("hook", 10)[0]
	if d.ID != "x1" || !strings.Contains(d.LastError, "400") || d.Attempts != 1 {
		t.Errorf("dead letter %+v", d)
	}
	if n, _ := b.Pending("hook"); n != 0 {
		t.Errorf("%d still pending", n)
	}
}

// TestPendingRecordsMoveToAnotherOutbox: what one outbox still owes, read
// with EachPending and put into another with PutStored, is delivered there
// in the same order, with the same ids and ages; what the first delivered
// is not among it.
func TestPendingRecordsMoveToAnotherOutbox(t *testing.T) {
	dir := t.TempDir()
	db, a := openBox(t, filepath.Join(dir, "a.db"))
	put(t, db, a, "hooks", "h1", "h2", "h3")
	put(t, db, a, "cmds", "c1")
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan string, 1)
	go a.Deliver(ctx, "hooks", func(_ context.Context, it *Item) error {
		sent <- it.ID
		cancel() // one delivered, then this outbox's instance is gone
		return nil
	}, Policy{})
	if id := <-sent; id != "h1" {
		t.Fatalf("first delivered %s, want h1", id)
	}
	for n, _ := a.Pending("hooks"); n != 2; n, _ = a.Pending("hooks") {
		time.Sleep(10 * time.Millisecond)
	}

	db2, b := openBox(t, filepath.Join(dir, "b.db"))
	put(t, db2, b, "hooks", "own") // the new owner's own record stays first
	err := a.EachPending(func(k, v []byte) error {
		dest, ok := KeyDest(k)
		if !ok {
			t.Fatalf("key %q names no destination", k)
		}
		return db2.Update(func(tx *bolt.Tx) error { return b.PutStored(tx, dest, v) })
	})
	if err != nil {
		t.Fatal(err)
	}
	old, _ := a.Waiting("hooks")
	got, _ := b.Waiting("hooks")
	var ids []string
	for _, it := range got {
		ids = append(ids, it.ID)
	}
	if strings.Join(ids, ",") != "own,h2,h3" {
		t.Fatalf("new outbox holds %v for hooks, want own,h2,h3", ids)
	}
	if !got[1].AddedAt.Equal(old[0].AddedAt) {
		t.Errorf("moved record added at %v, want its first time %v", got[1].AddedAt, old[0].AddedAt)
	}
	if c, _ := b.Waiting("cmds"); len(c) != 1 || c[0].ID != "c1" || string(c[0].Payload) != `{"id":"c1"}` {
		t.Errorf("new outbox holds %+v for cmds, want c1 with its payload", c)
	}
	if _, ok := KeyDest([]byte("short")); ok {
		t.Error("a key without a sequence number gave a destination")
	}
	if err := db2.Update(func(tx *bolt.Tx) error { return b.PutStored(tx, "hooks", []byte("{")) }); err == nil {
		t.Error("an unreadable stored record was taken")
	}
}

// A record given up on is told to OnDead once it is on the dead-letter
// list; the list moves to another outbox, beside that one's own letters,
// and moving it again adds nothing.
func TestDeadLettersMoveToAnotherOutbox(t *testing.T) {
	dir := t.TempDir()
	db, a := openBox(t, filepath.Join(dir, "a.db"))
	var mu sync.Mutex
	told := map[string]string{}
	a.OnDead(func(k, v []byte) {
		mu.Lock()
		told[string(k)] = string(v)
		mu.Unlock()
	})
	put(t, db, a, "hooks", "h1", "h2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Deliver(ctx, "hooks", func(context.Context, *Item) error {
		return &PermanentError{Err: errors.New("400 unknown tenant")}
	}, Policy{})
	// OnDead is told once the move is durable: just after Dead lists it.
	toldBoth := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(told) == 2
	}
	for len(a.Dead("hooks", 10)) < 2 || !toldBoth() {
		time.Sleep(10 * time.Millisecond)
	}
	var letters [][]byte
	err := a.EachDead(func(k, v []byte) error {
		mu.Lock()
		defer mu.Unlock()
		if told[string(k)] != string(v) {
			t.Errorf("dead letter %q was not told to OnDead as stored", k)
		}
		if err := CheckDead(v); err != nil {
			t.Errorf("dead letter %q: %v", k, err)
		}
		letters = append(letters, bytes.Clone(v))
		return nil
	})
	if err != nil || len(letters) != 2 {
		t.Fatalf("EachDead gave %d letters, %v; want 2", len(letters), err)
	}

	db2, b := openBox(t, filepath.Join(dir, "b.db"))
	put(t, db2, b, "hooks", "own")
	go b.Deliver(ctx, "hooks", func(context.Context, *Item) error { return &PermanentError{Err: errors.New("410 gone")} }, Policy{})
	for len(b.Dead("hooks", 10)) < 1 {
		time.Sleep(10 * time.Millisecond)
	}
	for round, want := range []int{2, 0} {
		var added int
		if err := db2.Update(func(tx *bolt.Tx) (err error) { added, err = b.AddDead(tx, letters); return err }); err != nil {
			t.Fatal(err)
		}
		if added != want {
			t.Errorf("move %d added %d letters, want %d", round+1, added, want)
		}
	}
	var ids []string
	for _, it := range b.Dead("hooks", 10) {
		ids = append(ids, it.ID+": "+it.LastError)
	}
	if strings.Join(ids, ", ") != "own: 410 gone, h1: 400 unknown tenant, h2: 400 unknown tenant" {
		t.Errorf("the other outbox lists %v", ids)
	}
	if CheckDead([]byte(`{"id":"x"}`)) == nil {
		t.Error("a dead letter without a destination passed the check")
	}

	// Past their retention they go, a batch at a time; letters given up
	// on after the cut stay.
	prune := func(cut time.Time, limit int) (n int, gone []string) {
		t.Helper()
		err := db2.Update(func(tx *bolt.Tx) (err error) {
			n, err = b.PruneDead(tx, cut, limit, func(v []byte) {
				it, _ := decodeStored(v)
				gone = append(gone, it.ID)
			})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n, gone
	}
	if n, gone := prune(time.Now().Add(-time.Hour), 10); n != 0 || len(gone) != 0 {
		t.Errorf("pruned %d letters (%v) given up on after the cut", n, gone)
	}
	if n, gone := prune(time.Now().Add(time.Hour), 2); n != 2 || len(gone) != 2 || len(b.Dead("hooks", 10)) != 1 {
		t.Errorf("pruned %d (%v), %d left; want a batch of 2, 1 left", n, gone, len(b.Dead("hooks", 10)))
	}
	if n, _ := prune(time.Now().Add(time.Hour), 2); n != 1 || len(b.Dead("", 10)) != 0 {
		t.Errorf("pruned %d, %d left; want the last one", n, len(b.Dead("", 10)))
	}
}

// OnChange tells of every record put and every record gone once the change
// is committed, and of nothing a rolled-back transaction did: replaying
// what it told gives the records waiting.
func TestOnChangeTellsWhatCommits(t *testing.T) {
	db, b := openBox(t, filepath.Join(t.TempDir(), "o.db"))
	var mu sync.Mutex
	mirror := map[string]string{}
	b.OnChange(func(k, v []byte) {
		mu.Lock()
		defer mu.Unlock()
		if v == nil {
			delete(mirror, string(k))
		} else {
			mirror[string(k)] = string(v)
		}
	})
	put(t, db, b, "hooks", "h1", "h2", "h3")
	put(t, db, b, "digest", "d1", "d2")
	rolledBack := errors.New("rolled back")
	if err := db.Update(func(tx *bolt.Tx) error {
		if err := b.Put(tx, "hooks", "never", []byte(`{}`), time.Now()); err != nil {
			return err
		}
		return rolledBack
	}); !errors.Is(err, rolledBack) {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { _, err := b.Drain(tx, "digest"); return err }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.Deliver(ctx, "hooks", func(_ context.Context, it *Item) error {
		if it.ID == "h2" {
			return &PermanentError{Err: errors.New("400")}
		}
		return nil
	}, Policy{})
	put(t, db, b, "cmds", "c1")
	for n, _ := b.Pending("hooks"); n > 0; n, _ = b.Pending("hooks") {
		time.Sleep(10 * time.Millisecond)
	}
	want := map[string]string{}
	if err := b.EachPending(func(k, v []byte) error { want[string(k)] = string(v); return nil }); err != nil {
		t.Fatal(err)
	}
	// OnChange is told once a change commits: a moment after readers see it.
	told := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return maps.Equal(mirror, want)
	}
	for deadline := time.Now().Add(5 * time.Second); !told() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(want) != 1 || !maps.Equal(mirror, want) {
		t.Errorf("what OnChange told leaves %d records, the outbox holds %d: %v", len(mirror), len(want), mirror)
	}
}

// scanStats reads every record of the store at db, as Stats once did.
func scanStats(t testing.TB, db *bolt.DB) map[string]DestStats {
	t.Helper()
	out := map[string]DestStats{}
	err := db.View(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketPending, bucketDead} {
			err := tx.Bucket(name).ForEach(func(k, v []byte) error {
				dest, _ := KeyDest(k)
				s := out[dest]
				if bytes.Equal(name, bucketDead) {
					s.Dead++
				} else {
					if s.Pending == 0 {
						it, err := decodeStored(v)
						if err != nil {
							return err
						}
						s.OldestAge = time.Since(it.AddedAt)
					}
					s.Pending++
				}
				out[dest] = s
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sameStats compares Stats with what the store holds, leaving out the
// destinations that hold nothing (Stats keeps reporting them, as 0).
func sameStats(t *testing.T, step string, got, want map[string]DestStats) {
	t.Helper()
	for dest, g := range got {
		w := want[dest]
		if g.Pending != w.Pending || g.Dead != w.Dead {
			t.Errorf("%s: %s has %d pending, %d dead; the store holds %d, %d", step, dest, g.Pending, g.Dead, w.Pending, w.Dead)
		}
		// The age is read a moment later than the store's.
		if d := w.OldestAge - g.OldestAge; w.Pending > 0 && (d > time.Second || d < -time.Second) {
			t.Errorf("%s: %s's oldest record is %v old; the store's %v", step, dest, g.OldestAge, w.OldestAge)
		}
	}
	for dest, w := range want {
		if _, ok := got[dest]; !ok {
			t.Errorf("%s: %s, with %d pending and %d dead, is not reported", step, dest, w.Pending, w.Dead)
		}
	}
}

// Stats counts as changes commit rather than reading every record on each
// scrape; it agrees with the store through puts, rolled-back puts, a
// digest's drain, deliveries, refusals, dead letters moved in and pruned,
// and a restart.
func TestStatsFollowEveryChange(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "o.db")
	db := openDB(t, path)
	b, err := Open(db)
	if err != nil {
		t.Fatal(err)
	}
	check := func(step string) { t.Helper(); sameStats(t, step, b.Stats(), scanStats(t, db)) }

	old := time.Now().Add(-time.Hour)
	err = db.Update(func(tx *bolt.Tx) error {
		for i := range 30 {
			dest := []string{"alerts/support", "commands/accounts", "digest/support"}[i%3]
			if err := b.Put(tx, dest, "r"+strconv.Itoa(i), []byte(`{}`), old.Add(time.Duration(i)*time.Second)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	check("30 records put")
	rolledBack := errors.New("rolled back")
	err = db.Update(func(tx *bolt.Tx) error {
		if err := b.Put(tx, "alerts/support", "never", []byte(`{}`), time.Now()); err != nil {
			return err
		}
		return rolledBack
	})
	if !errors.Is(err, rolledBack) {
		t.Fatal(err)
	}
	check("a put rolled back")
	if err := db.Update(func(tx *bolt.Tx) error { _, err := b.Drain(tx, "digest/support"); return err }); err != nil {
		t.Fatal(err)
	}
	check("a digest drained")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var n int
	go b.Deliver(ctx, "alerts/support", func(context.Context, *Item) error {
		if n++; n%3 == 0 {
			return &PermanentError{Err: errors.New("410 gone")}
		}
		return nil
	}, Policy{})
	for waiting, _ := b.Pending("alerts/support"); waiting > 0; waiting, _ = b.Pending("alerts/support") {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	check("delivered, and some refused")
	if got := b.Stats()["alerts/support"]; got.Pending != 0 || got.Dead != 3 || got.OldestAge != 0 {
		t.Errorf("alerts/support after delivery: %+v, want nothing pending and 3 dead", got)
	}

	var letters [][]byte
	if err := b.EachDead(func(_, v []byte) error { letters = append(letters, bytes.Clone(v)); return nil }); err != nil {
		t.Fatal(err)
	}
	db2, b2 := openBox(t, filepath.Join(dir, "b.db"))
	if err := db2.Update(func(tx *bolt.Tx) error { _, err := b2.AddDead(tx, letters); return err }); err != nil {
		t.Fatal(err)
	}
	sameStats(t, "dead letters moved to another outbox", b2.Stats(), scanStats(t, db2))
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := b.PruneDead(tx, time.Now().Add(time.Hour), 2, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	check("dead letters pruned")

	db.Close()
	db = openDB(t, path)
	defer db.Close()
	if b, err = Open(db); err != nil {
		t.Fatal(err)
	}
	check("reopened")
	if got := b.Stats()["commands/accounts"]; got.Pending != 10 || got.OldestAge < time.Hour-time.Minute {
		t.Errorf("commands/accounts after a restart: %+v, want 10 pending, the oldest an hour old", got)
	}
}

// statsBox is an outbox holding n records for three destinations, as after
// a receiver outage.
func statsBox(b *testing.B, n int) (*bolt.DB, *Box) {
	b.Helper()
	db, err := bolt.Open(filepath.Join(b.TempDir(), "o.db"), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	box, err := Open(db)
	if err != nil {
		b.Fatal(err)
	}
	payload := []byte(`{"command_id":"cmd-0123456789","account_id":"acc-0001234","command":"freeze"}`)
	for start := 0; start < n; start += 10_000 {
		err := db.Update(func(tx *bolt.Tx) error {
			for i := start; i < min(n, start+10_000); i++ {
				if err := box.Put(tx, []string{"commands/accounts", "alerts/support", "alerts/oncall"}[i%3], "r"+strconv.Itoa(i), payload, time.Now()); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return db, box
}

// A scrape of the outbox's metrics with 300k records waiting: Stats, and
// the read of every record it replaces.
func BenchmarkStats(b *testing.B) {
	db, box := statsBox(b, 300_000)
	b.Run("counted", func(b *testing.B) {
		for b.Loop() {
			if box.Stats()["commands/accounts"].Pending != 100_000 {
				b.Fatal("wrong count")
			}
		}
	})
	b.Run("read whole", func(b *testing.B) {
		for b.Loop() {
			if scanStats(b, db)["commands/accounts"].Pending != 100_000 {
				b.Fatal("wrong count")
			}
		}
	})
}
