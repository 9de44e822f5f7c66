// Package sim generates realistic wallet traffic with labelled incidents, for
// the demo, tests, benchmarks and detection-quality measurement. A population
// of accounts with habits (devices, home city and network, spending level,
// active hours, payees, favourite merchants) produces ordinary sessions with
// honest noise (password typos, network retries that then succeed, new phones
// — some after losing the old one, with a password reset — travel, a rare big
// purchase, forgotten passwords, new payees), and incidents are woven
// in: stuck payment retries, a merchant outage, a faulty app release, account takeovers, credential
// stuffing and spending far above habit. The stream is in event-time order and
// deterministic for a seed; Labels says which events belong to which incident.
package sim

import (
	"bufio"
	"container/heap"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/walletguard/walletguard/event"
)

// Config sizes the traffic.
type Config struct {
	Seed     uint64
	Accounts int
	Start    time.Time
	Duration time.Duration
	// SessionsPerAccountDay is how often an ordinary account opens the app.
	SessionsPerAccountDay float64
	// Incidents per day of each kind (0 disables it).
	StuckPerDay, OutagesPerDay, AppFaultsPerDay, TakeoversPerDay, StuffingPerDay, SpikesPerDay float64
	// InvalidRate is the share of events emitted as malformed bytes instead.
	InvalidRate float64
	// HistoryDays of ordinary use precede Start, so that habits exist when
	// the labelled period begins (as they do for a detector that has been
	// running); each account uses each of its devices, payees and favourite
	// merchants in it. 0 disables it.
	HistoryDays float64
}

// DefaultConfig is a day of traffic for n accounts with every kind of incident.
func DefaultConfig(n int) Config {
	return Config{
		Seed: 1, Accounts: n, Start: time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC), Duration: 24 * time.Hour,
		SessionsPerAccountDay: 1.5, HistoryDays: 7,
		StuckPerDay: max(3, float64(n)/2000), OutagesPerDay: 1, AppFaultsPerDay: 0.5, TakeoversPerDay: max(4, float64(n)/5000),
		StuffingPerDay: 1, SpikesPerDay: max(2, float64(n)/5000),
	}
}

// Incident kinds, as labels.
const (
	KindStuckRetry     = "stuck_retry"
	KindMerchantOutage = "merchant_outage"
	KindAppFault       = "app_fault"
	KindTakeover       = "takeover"
	KindStuffing       = "credential_stuffing"
	KindSpendingSpike  = "spending_spike"
)

// Label describes one incident: which accounts and events are part of it and
// what a good detector does about it.
type Label struct {
	IncidentID string    `json:"incident_id"`
	Kind       string    `json:"kind"`
	Variant    string    `json:"variant,omitempty"`
	Accounts   []string  `json:"accounts"`
	MerchantID string    `json:"merchant_id,omitempty"`
	AppVersion string    `json:"app_version,omitempty"`
	PaymentID  string    `json:"payment_id,omitempty"`
	IP         string    `json:"ip,omitempty"`
	Cause      string    `json:"cause,omitempty"` // stuck retries: network, balance, verification
	Start      time.Time `json:"start"`
	End        time.Time `json:"end"`
	EventIDs   []string  `json:"event_ids"`
	// LossEventIDs are the theft transfers, in order: freezing before the
	// last of them saves money.
	LossEventIDs []string `json:"loss_event_ids,omitempty"`
	// Compromised lists the accounts an attacker got into (credential
	// stuffing's successful logins).
	Compromised []string `json:"compromised,omitempty"`
	// Expect is what the detector should do: freeze, step_up, alert.
	Expect string `json:"expect"`
}

// Item is one generated message: an event, or malformed bytes (Raw) meant for
// the dead-letter topic.
type Item struct {
	Event event.Event
	Raw   []byte
}

// Value is the record as a producer sends it: Raw when the item is an
// invalid one, else the event encoded.
func (it *Item) Value() ([]byte, error) {
	if it.Raw != nil {
		return it.Raw, nil
	}
	b, err := event.Marshal(&it.Event)
	if err != nil {
		return nil, fmt.Errorf("event %s: %w", it.Event.EventID, err)
	}
	return b, nil
}

type city struct {
	name, country string
	lat, lon      float64
	ipBase        string
}

var cities = []city{
	{"Jakarta", "ID", -6.2, 106.82, "36.72"}, {"Surabaya", "ID", -7.25, 112.75, "36.80"},
	{"Bandung", "ID", -6.91, 107.61, "114.4"}, {"Medan", "ID", 3.59, 98.67, "180.24"},
	{"Denpasar", "ID", -8.65, 115.22, "103.3"}, {"Makassar", "ID", -5.15, 119.43, "125.16"},
	{"Singapore", "SG", 1.35, 103.82, "116.14"}, {"Kuala Lumpur", "MY", 3.14, 101.69, "175.136"},
}

var abroad = []city{
	{"Tokyo", "JP", 35.68, 139.69, "126.21"}, {"Sydney", "AU", -33.87, 151.21, "101.160"},
	{"Bangkok", "TH", 13.75, 100.5, "171.96"}, {"Jeddah", "SA", 21.49, 39.19, "37.104"},
}

var attackerPlaces = []city{
	{"Lagos", "NG", 6.52, 3.38, "102.89"}, {"Moscow", "RU", 55.75, 37.62, "95.165"},
	{"Hanoi", "VN", 21.03, 105.85, "14.160"}, {"Jakarta", "ID", -6.2, 106.82, "139.194"},
}

type acct struct {
	id         string
	home       city
	ip         string
	devices    []string
	ua         string
	appVer     string
	medianAmt  float64 // IDR minor units
	peakHour   int
	payees     []string
	merchants  []string
	balance    int64
	lastTS     time.Time
	lastPlace  city
	travelTill time.Time
	travelTo   city
	busyTill   time.Time // an incident owns the account until then
}

// Generator streams traffic. Use Next until it reports false.
type Generator struct {
	cfg       Config
	rng       *rand.Rand
	accounts  []*acct
	merchants []string
	pending   itemHeap
	seq       uint64
	evSeq     uint64
	clock     time.Time
	end       time.Time
	nextSess  time.Time
	incidents []scheduled
	history   []histSlot
	labels    []*Label
	sessRate  float64 // sessions per second
}

type scheduled struct {
	at   time.Time
	kind string
}

// New builds the population and the incident schedule.
func New(cfg Config) *Generator {
	if cfg.Accounts < 10 {
		cfg.Accounts = 10
	}
	if cfg.SessionsPerAccountDay <= 0 {
		cfg.SessionsPerAccountDay = 1.5
	}
	if cfg.Start.IsZero() {
		cfg.Start = DefaultConfig(1).Start
	}
	g := &Generator{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))}
	for i := 0; i < 400; i++ {
		g.merchants = append(g.merchants, fmt.Sprintf("m-%04d", i))
	}
	g.accounts = make([]*acct, cfg.Accounts)
	for i := range g.accounts {
		g.accounts[i] = g.newAccount(i)
	}
	g.clock, g.end = cfg.Start, cfg.Start.Add(cfg.Duration)
	if cfg.HistoryDays > 0 {
		g.planHistory()
	}
	g.sessRate = float64(cfg.Accounts) * cfg.SessionsPerAccountDay / 86400
	g.nextSess = g.clock
	days := cfg.Duration.Hours() / 24
	sched := func(perDay float64, kind string) {
		n := int(math.Round(perDay * days))
		for i := 0; i < n; i++ {
			// Leave the first hours for habits to form, and room at the end
			// for the incident to play out.
			span := cfg.Duration - 3*time.Hour
			at := cfg.Start.Add(2*time.Hour + time.Duration(g.rng.Int64N(int64(max(span, time.Minute)))))
			g.incidents = append(g.incidents, scheduled{at, kind})
		}
	}
	sched(cfg.StuckPerDay, KindStuckRetry)
	sched(cfg.OutagesPerDay, KindMerchantOutage)
	sched(cfg.AppFaultsPerDay, KindAppFault)
	sched(cfg.TakeoversPerDay, KindTakeover)
	sched(cfg.StuffingPerDay, KindStuffing)
	sched(cfg.SpikesPerDay, KindSpendingSpike)
	sortScheduled(g.incidents)
	return g
}

func sortScheduled(s []scheduled) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j].at.Before(s[j-1].at); j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func (g *Generator) newAccount(i int) *acct {
	r := g.rng
	home := cities[r.IntN(len(cities))]
	if r.Float64() < 0.7 {
		home = cities[r.IntN(3)] // most users live in the big three
	}
	a := &acct{
		id:        fmt.Sprintf("acc-%07d", i),
		home:      home,
		ip:        fmt.Sprintf("%s.%d.%d", home.ipBase, r.IntN(256), 2+r.IntN(250)),
		devices:   []string{fmt.Sprintf("dev-%07d-a", i)},
		ua:        []string{"WalletApp/5.2 (Android 14)", "WalletApp/5.2 (iOS 18.1)", "WalletApp/5.1 (Android 13)"}[r.IntN(3)],
		appVer:    []string{"5.2.0", "5.2.1", "5.1.4"}[r.IntN(3)],
		medianAmt: math.Exp(math.Log(5_000_000) + r.NormFloat64()*0.8), // ~50,000 IDR
		peakHour:  8 + r.IntN(14),
		balance:   int64(math.Exp(math.Log(150_000_000) + r.NormFloat64()*0.9)),
	}
	if r.Float64() < 0.3 {
		a.devices = append(a.devices, fmt.Sprintf("dev-%07d-b", i))
	}
	for j := 0; j < 2+r.IntN(4); j++ {
		a.payees = append(a.payees, fmt.Sprintf("acc-%07d", r.IntN(max(g.cfg.Accounts, 1))))
	}
	for j := 0; j < 3+r.IntN(4); j++ {
		a.merchants = append(a.merchants, g.merchants[r.IntN(len(g.merchants))])
	}
	a.lastPlace = home
	return a
}

// Labels returns the incidents generated so far.
func (g *Generator) Labels() []*Label { return g.labels }

type histSlot struct {
	at   time.Time
	acct int32
	k    int32
}

// planHistory spreads each account's history sessions over the days before Start.
func (g *Generator) planHistory() {
	span := time.Duration(g.cfg.HistoryDays * 24 * float64(time.Hour))
	from := g.cfg.Start.Add(-span)
	for i, a := range g.accounts {
		n := max(len(a.devices), len(a.payees), len(a.merchants)) + 1
		for k := 0; k < n; k++ {
			g.history = append(g.history, histSlot{at: from.Add(time.Duration(g.rng.Int64N(int64(span - time.Hour)))), acct: int32(i), k: int32(k)})
		}
		// Slot 0 comes first for the account: it is the set-up session.
		first := len(g.history) - n
		for j := first + 1; j < len(g.history); j++ {
			if g.history[j].at.Before(g.history[first].at) {
				g.history[j].at, g.history[first].at = g.history[first].at, g.history[j].at
			}
		}
	}
	slices.SortFunc(g.history, func(x, y histSlot) int { return x.at.Compare(y.at) })
}

// historySession is a short ordinary session that uses the account's k-th
// device, payee and merchant, so all of them are known by Start.
func (g *Generator) historySession(s histSlot) {
	a := g.accounts[s.acct]
	t := s.at
	k := int(s.k)
	dev := a.devices[k%len(a.devices)]
	if k == 0 {
		// The account's first session signs in on each of its devices, as
		// when a user sets up the app: every device is known from the start.
		for _, d := range a.devices[1:] {
			login := g.base(a, event.TypeLogin, t, a.home, d, a.ip)
			login.Result, login.Method = "success", "password"
			g.emit(login)
			t = t.Add(20*time.Second + g.jitter(time.Minute))
		}
	}
	login := g.base(a, event.TypeLogin, t, a.home, dev, a.ip)
	login.Result, login.Method = "success", "password"
	g.emit(login)
	t = t.Add(30*time.Second + g.jitter(2*time.Minute))
	t = g.pay(a, t, a.home, dev, a.ip, a.merchants[k%len(a.merchants)], g.amount(a, 1))
	if k < len(a.payees) {
		t = t.Add(30*time.Second + g.jitter(2*time.Minute))
		amt := g.amount(a, 1.5)
		if amt > a.balance {
			t = g.topup(a, t, a.home, dev, a.ip, amt*2)
		}
		a.balance -= amt
		tx := g.base(a, event.TypeTransaction, t, a.home, dev, a.ip)
		tx.TxID, tx.Kind, tx.Amount, tx.Currency, tx.Status = g.txID(), "transfer", amt, "IDR", "success"
		tx.CounterpartyID, tx.CounterpartyCountry, tx.BalanceAfter = a.payees[k], "ID", a.balance
		g.emit(tx)
	}
	a.lastTS, a.lastPlace = t, a.home
}

// WriteNDJSON writes the rest of the traffic to w, one record a line as a
// producer sends it (an invalid one, where the config asks for some, as its
// raw bytes), and returns how many it wrote.
func (g *Generator) WriteNDJSON(w io.Writer) (int, error) {
	bw := bufio.NewWriterSize(w, 1<<20)
	n := 0
	for {
		it, ok := g.Next()
		if !ok {
			break
		}
		b, err := it.Value()
		if err != nil {
			return n, err
		}
		bw.Write(b)
		if err := bw.WriteByte('\n'); err != nil {
			return n, fmt.Errorf("write traffic: %w", err)
		}
		n++
	}
	if err := bw.Flush(); err != nil {
		return n, fmt.Errorf("write traffic: %w", err)
	}
	return n, nil
}

// Next returns the next item in event-time order.
func (g *Generator) Next() (Item, bool) {
	for len(g.history) > 0 {
		next := g.history[0]
		if len(g.pending) > 0 && !g.pending[0].Event.TS.After(next.at) {
			it := heap.Pop(&g.pending).(pending)
			return it.Item, true
		}
		g.history = g.history[1:]
		g.historySession(next)
	}
	for {
		// Emit what is due before the next session or incident starts.
		nextStart := g.nextSess
		if len(g.incidents) > 0 && g.incidents[0].at.Before(nextStart) {
			nextStart = g.incidents[0].at
		}
		if len(g.pending) > 0 && (!g.pending[0].Event.TS.After(nextStart) || !nextStart.Before(g.end)) {
			it := heap.Pop(&g.pending).(pending)
			return it.Item, true
		}
		if !nextStart.Before(g.end) {
			return Item{}, false
		}
		g.clock = nextStart
		if len(g.incidents) > 0 && !g.incidents[0].at.After(g.nextSess) {
			inc := g.incidents[0]
			g.incidents = g.incidents[1:]
			g.incident(inc)
			continue
		}
		g.session(g.accounts[g.rng.IntN(len(g.accounts))], g.clock)
		g.nextSess = g.nextSess.Add(time.Duration(g.rng.ExpFloat64() / g.sessRate * float64(time.Second)))
	}
}

type pending struct {
	Item
	seq uint64
}

type itemHeap []pending

func (h itemHeap) Len() int { return len(h) }
func (h itemHeap) Less(i, j int) bool {
	if !h[i].Event.TS.Equal(h[j].Event.TS) {
		return h[i].Event.TS.Before(h[j].Event.TS)
	}
	return h[i].seq < h[j].seq
}
func (h itemHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)   { *h = append(*h, x.(pending)) }
func (h *itemHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// emit schedules an event; it returns the event id.
func (g *Generator) emit(ev event.Event) string {
	g.evSeq++
	ev.EventID = fmt.Sprintf("ev-%d-%09d", g.cfg.Seed, g.evSeq)
	ev.TypeName = ev.Type.String()
	if ev.Type != event.TypeTransaction {
		ev.BalanceAfter = -1
	}
	g.seq++
	it := pending{Item: Item{Event: ev}, seq: g.seq}
	if g.cfg.InvalidRate > 0 && g.rng.Float64() < g.cfg.InvalidRate {
		it.Raw = g.corrupt(&ev)
	}
	heap.Push(&g.pending, it)
	return ev.EventID
}

// corrupt renders ev as one of the malformed messages producers really send.
func (g *Generator) corrupt(ev *event.Event) []byte {
	b, _ := event.Marshal(ev)
	switch g.rng.IntN(4) {
	case 0:
		return b[:len(b)/2] // truncated
	case 1:
		return []byte(fmt.Sprintf(`{"event_id":%q,"type":"transaction","ts":%q,"account_id":%q,"tx_id":"t","kind":"payment","amount":-100,"currency":"IDR","status":"success"}`,
			ev.EventID, ev.TS.Format(time.RFC3339), ev.AccountID))
	case 2:
		return []byte(fmt.Sprintf(`{"event_id":%q,"type":"loginn","ts":%q,"account_id":%q}`, ev.EventID, ev.TS.Format(time.RFC3339), ev.AccountID))
	default:
		return []byte(fmt.Sprintf(`{"event_id":%q,"type":"login","account_id":%q,"result":"success"}`, ev.EventID, ev.AccountID))
	}
}

func (g *Generator) base(a *acct, typ event.Type, ts time.Time, place city, dev, ip string) event.Event {
	return event.Event{
		Type: typ, TS: ts.Truncate(time.Millisecond), AccountID: a.id, DeviceID: dev, IP: ip,
		UserAgent: a.ua, AppVersion: a.appVer, Channel: "app",
		Geo: event.Geo{Country: place.country, Lat: round2(place.lat + g.rng.NormFloat64()*0.02), Lon: round2(place.lon + g.rng.NormFloat64()*0.02)},
	}
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }

func (g *Generator) amount(a *acct, scale float64) int64 {
	v := math.Exp(math.Log(a.medianAmt*scale) + g.rng.NormFloat64()*0.5)
	return int64(math.Round(v/100) * 100)
}

func (g *Generator) jitter(d time.Duration) time.Duration {
	return time.Duration(g.rng.Float64() * float64(d))
}
