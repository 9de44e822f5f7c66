package ingest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/event"
)

const kafkaMinSession = time.Second

// FetchMaxWait is the MaxWait for kafka-go readers. kafka-go uses it as the
// read deadline of a whole fetch, and asks the broker to hold an empty fetch
// for MaxWait less one second (less a quarter under a second). At 200 ms a
// busy broker building a large response missed the deadline every time: the
// reader reconnected and asked again, for seconds on end. At 1.5 s the broker
// holds an empty fetch 0.5 s and has a second to answer; a fetch that finds
// records still returns at once, so latency does not depend on it.
const FetchMaxWait = 1500 * time.Millisecond

// fetchMaxBytes bounds one partition's fetch response, as Kafka's own
// consumers do by default (max.partition.fetch.bytes); a larger record still
// comes whole, alone. The embedded broker builds each response by copying
// it, on the one goroutine that serves every client: at 16 MB a response
// held decisions' writes and producers' acknowledgements for tens of
// milliseconds, which was most of the p99 at a tenth of the maximum rate.
const fetchMaxBytes = 1 << 20

// Record is one consumed message, decoded. Exactly one of Event and Err is
// meaningful: Err is the rejection (an *event.RejectError) for bad input.
type Record struct {
	Topic     string
	Partition int
	Offset    int64
	Key       []byte
	Value     []byte
	Arrived   time.Time
	Event     event.Event
	Err       error
	// Follow marks a record read as a standby (SourceConfig.Follow): the
	// owner of its partition decides it; the standby only learns from it.
	Follow bool
	// Observe marks a record of a partition another member of the group
	// decides (SourceConfig.Share): only what spans partitions — devices,
	// IPs, payees, merchants — learns from it. It is not marked handled.
	Observe bool
	// Seen marks a record of a partition this member decides now and
	// observed before it did: its previous owner decided it after the state
	// this member restored. It is decided again, and counted for its
	// account but not again for what spans partitions.
	Seen bool
}

// SourceConfig configures a Source.
type SourceConfig struct {
	Brokers        []string
	Topics         []string
	GroupID        string
	SessionTimeout time.Duration
	CommitInterval time.Duration
	// StartOffset, when set, chooses where a newly assigned partition starts:
	// it gets the group's committed offset (negative if none) and returns the
	// next offset to read. The detector resumes from its own checkpoint,
	// which may be ahead of the last commit.
	StartOffset func(topic string, partition int, committed int64) int64
	// Held reports how many accounts the consumer holds in state; the group
	// gives its partitions to the member with the most (see soleOwner).
	Held func() int64
	// Follow makes a standby read every partition of the topics, up to the
	// offsets the group has committed, and hand those records on marked
	// Follow: its state keeps up with the owner's, so that it decides as the
	// owner would have when it takes over. StartOffset, asked with the
	// committed offset kafka.FirstOffset, says where following starts.
	Follow bool
	// HandedOver, asked with the group's committed offset when a followed
	// partition is assigned (a standby taking over), returns the offset
	// below which the previous owner handed the partition over with every
	// output delivered, or -1. The records from where following stopped up
	// to that offset are then handed on marked Follow: learnt from, not
	// decided again. Without a handover they are decided again, under the
	// same ids, since the owner may have died with some of their outputs
	// undelivered. Ready reports true only once it has been asked for
	// every partition of the generation.
	HandedOver func(topic string, partition int, committed int64) int64
	// Assigning, when set, runs when a generation gives this member
	// partitions, before their start offsets are chosen (StartOffset) and
	// fetching begins: a consumer taking partitions over may restore their
	// state first. ctx ends with the generation.
	Assigning func(ctx context.Context)
	// Share makes the members of the group share the partitions (see
	// sharedOwners) rather than leave them all to one: each decides those
	// the group assigns it, and reads every other partition of the topics
	// too, at its head, handing its records on marked Observe. Owns then
	// runs for every generation, with the partitions it assigns this member
	// (none, if the group has more members than partitions), before their
	// start offsets are chosen: the consumer drops the state of partitions
	// it lost and restores that of those it gained. ObserveFrom says where
	// observing a partition this process has not read yet starts.
	Share       bool
	Owns        func(ctx context.Context, owned map[string][]int)
	ObserveFrom func(topic string, partition int) int64
	// Revoked runs, for a member that shares, when a generation ends and
	// every record fetched in it has been handed on, before its offsets
	// are committed and it joins the next: the consumer makes durable the
	// state of the partitions it decided, which their next owner restores.
	// The group assigns the next generation only once every member has
	// joined it, so the next owner finds that state.
	Revoked func(ctx context.Context)
	// Advertise returns where the other members reach this one's API
	// ("" if nowhere); members tell it to the group (see GroupOwner and
	// SharingMembers), so that a standby passes on the changes it is asked
	// for, and a sharing member the requests about accounts another
	// decides.
	Advertise func() string
	Now       func() time.Time
	// Skew bounds how far apart in event time the partitions' records are
	// handed on (see DefaultSkew, used when zero); negative hands each on
	// as soon as it is fetched.
	Skew time.Duration
}

// Source consumes the event topics as a member of a consumer group, one
// fetcher per assigned partition. It is at-least-once: offsets are committed
// only up to what the consumer has reported handled with MarkHandled, and a
// partition's records reach the Records channel in offset order.
type Source struct {
	cfg     SourceConfig
	log     *slog.Logger
	metrics *Metrics
	out     chan Record
	align   *aligner // nil when unaligned

	mu       sync.Mutex
	cg       *kafka.ConsumerGroup
	gen      *kafka.Generation
	release  chan struct{}
	handled  map[topicPartition]int64 // next offset to commit
	commited map[topicPartition]int64
	fetched  map[topicPartition]int64 // next offset after the last record handed on
	ready    bool
	joinErr  error // the last failed attempt to join the group, nil once joined
	assigned map[topicPartition]bool
	// followed holds the partitions whose records were last handed on as a
	// standby's: fetched is then exactly where the state is.
	followed map[topicPartition]bool
	// observed holds the partitions whose records were last handed on
	// marked Observe: fetched is where the state spanning partitions is.
	observed map[topicPartition]bool
	started  int64 // unix ns, for the group balancer: the older standby takes over first
}

type topicPartition struct {
	topic     string
	partition int
}

// NewSource makes a Source; Run starts it.
func NewSource(cfg SourceConfig, m *Metrics, log *slog.Logger) *Source {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Held == nil {
		cfg.Held = func() int64 { return 0 }
	}
	s := &Source{
		cfg: cfg, log: log, metrics: m, started: time.Now().UnixNano(),
		out:      make(chan Record, 8192),
		handled:  map[topicPartition]int64{},
		commited: map[topicPartition]int64{},
		fetched:  map[topicPartition]int64{},
		assigned: map[topicPartition]bool{},
		followed: map[topicPartition]bool{},
		observed: map[topicPartition]bool{},
	}
	if skew := cmp.Or(cfg.Skew, DefaultSkew); skew > 0 {
		s.align = newAligner(skew, m.AlignWaits, m.AlignOverdue)
	}
	return s
}

// Records is the stream of consumed records. It is closed when Run returns.
func (s *Source) Records() <-chan Record { return s.out }

// Ready reports whether the source has joined its group and is fetching.
func (s *Source) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready && len(s.assigned) > 0
}

// JoinError is why the last attempt to join the consumer group failed
// (the brokers unreachable, a TLS or SASL login refused); nil once joined.
func (s *Source) JoinError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.joinErr
}

// Standby reports whether the source is in its group with no partition:
// another walletguard owns them all (see soleOwner).
func (s *Source) Standby() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready && len(s.assigned) == 0
}

// owning reports whether the source holds partitions, as the group
// balancer tells the group when it joins.
func (s *Source) owning() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.assigned) > 0
}

func (s *Source) balancers() []kafka.GroupBalancer {
	if s.cfg.Share {
		return []kafka.GroupBalancer{sharedOwners{owned: s.ownedNow, addr: s.cfg.Advertise}}
	}
	return []kafka.GroupBalancer{soleOwner{held: s.cfg.Held, owning: s.owning, started: s.started, addr: s.cfg.Advertise}, kafka.RangeGroupBalancer{}}
}

// ownedNow lists the partitions the source decides, by topic.
func (s *Source) ownedNow() map[string][]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]int{}
	for tp := range s.assigned {
		out[tp.topic] = append(out[tp.topic], tp.partition)
	}
	return out
}

// Run joins the group and fetches until ctx is cancelled, across rebalances.
// When it returns, no fetcher is running and Records is closed; committing
// what was handled after that is Close's job.
func (s *Source) Run(ctx context.Context) error {
	defer close(s.out)
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                     s.cfg.GroupID,
		Brokers:                s.cfg.Brokers,
		Dialer:                 dialer(),
		Topics:                 s.cfg.Topics,
		SessionTimeout:         s.cfg.SessionTimeout,
		HeartbeatInterval:      s.cfg.SessionTimeout / 5,
		RebalanceTimeout:       s.cfg.SessionTimeout,
		JoinGroupBackoff:       time.Second,
		WatchPartitionChanges:  true,
		PartitionWatchInterval: 10 * time.Second,
		StartOffset:            kafka.FirstOffset,
		GroupBalancers:         s.balancers(),
		Logger:                 nil,
		ErrorLogger:            kafka.LoggerFunc(func(msg string, args ...any) { s.log.Debug("kafka group", "msg", fmt.Sprintf(msg, args...)) }),
	})
	if err != nil {
		return fmt.Errorf("consumer group %s: %w", s.cfg.GroupID, err)
	}
	s.mu.Lock()
	s.cg = cg
	s.mu.Unlock()

	commitTick := time.NewTicker(s.cfg.CommitInterval)
	defer commitTick.Stop()
	for {
		gen, err := cg.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("consumer group join failed; retrying", "group", s.cfg.GroupID, "err", err)
			s.mu.Lock()
			s.joinErr = err
			s.mu.Unlock()
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		s.mu.Lock()
		s.joinErr = nil
		s.mu.Unlock()
		s.runGeneration(ctx, gen, commitTick.C)
		if ctx.Err() != nil {
			return nil
		}
	}
}

// runGeneration fetches the generation's partitions until it ends or ctx is
// cancelled, committing handled offsets on every tick. On cancel it keeps the
// generation alive (kafka-go ends a generation as soon as one of its Start
// functions returns) so that Close can still commit what is drained after
// fetching stopped.
func (s *Source) runGeneration(ctx context.Context, gen *kafka.Generation, tick <-chan time.Time) {
	s.mu.Lock()
	s.gen = gen
	s.assigned = map[topicPartition]bool{}
	var parts int
	for topic, as := range gen.Assignments {
		for _, a := range as {
			s.assigned[topicPartition{topic, a.ID}] = true
			parts++
		}
	}
	s.mu.Unlock()
	s.metrics.Assigned.Set(float64(parts))
	switch {
	case s.cfg.Share && parts == 0:
		s.log.Warn("observing only: the consumer group has more walletguards than partitions", "group", s.cfg.GroupID, "generation", gen.ID)
	case s.cfg.Share:
		s.log.Info("joined consumer group, sharing its partitions", "group", s.cfg.GroupID, "generation", gen.ID, "partitions", parts)
	case parts == 0:
		s.log.Warn("standing by with no partition: another walletguard in the consumer group owns them all (or the topics have none); this one takes over when that one leaves",
			"group", s.cfg.GroupID, "generation", gen.ID)
	default:
		s.log.Info("joined consumer group", "group", s.cfg.GroupID, "generation", gen.ID, "partitions", parts)
	}

	genEnded := make(chan struct{})
	release := make(chan struct{})
	s.mu.Lock()
	s.release = release
	s.mu.Unlock()
	// settled is closed once this generation's end is dealt with: the
	// group client joins the next one only after this function returns,
	// so a member that shares publishes the state of its partitions
	// (Revoked) before anyone can be given them.
	settled := make(chan struct{})
	defer close(settled)
	gen.Start(func(genCtx context.Context) {
		select {
		case <-genCtx.Done():
			close(genEnded)
			<-settled
		case <-release:
		}
	})

	fetchCtx, stopFetch := context.WithCancel(ctx)
	go func() {
		select {
		case <-genEnded:
			stopFetch()
		case <-fetchCtx.Done():
		}
	}()
	switch {
	case s.cfg.Share && s.cfg.Owns != nil:
		s.cfg.Owns(fetchCtx, s.ownedNow())
	case parts > 0 && s.cfg.Assigning != nil:
		s.cfg.Assigning(fetchCtx)
	}
	// The gate holds every partition back until all the generation reads
	// have joined the alignment (observing, too, looks its partitions up).
	gate := s.align.join()
	var wg sync.WaitGroup
	for topic, as := range gen.Assignments {
		for _, a := range as {
			start := a.Offset
			if s.cfg.StartOffset != nil {
				start = s.cfg.StartOffset(topic, a.ID, a.Offset)
			}
			// A partition that comes back after a rebalance continues after
			// the last record this process already handed on: those records
			// are in its state (or on their way), and must not be read twice.
			// A standby that followed the partition continues where it
			// stopped, even behind the committed offset: its state holds
			// exactly the records before that, and deciding the rest again
			// gives the decisions (and ids) the owner gave them — or, up to
			// where an owner that handed over stopped, following them does.
			tp := topicPartition{topic, a.ID}
			plan := fetchPlan{followBelow: -1, observeBelow: -1, seenBelow: -1}
			s.mu.Lock()
			followed, observed := s.followed[tp], s.observed[tp]
			f, ok := s.fetched[tp]
			switch {
			case observed && f > start:
				// Taken over from another member: the state restored for
				// it is at start, and the records up to where this
				// process observed count for what spans partitions
				// already.
				plan.seenBelow = f
			case observed && f < start:
				// Restored past where observing had reached: the records
				// between are observed first.
				plan.observeBelow, start = start, f
			case ok && (f > start || followed):
				start = f
			}
			delete(s.followed, tp)
			delete(s.observed, tp)
			s.mu.Unlock()
			if followed && s.cfg.HandedOver != nil {
				plan.followBelow = s.cfg.HandedOver(topic, a.ID, a.Offset)
			}
			s.mu.Lock()
			// What the group has committed, not what this process last
			// did: commits never go behind it (a standby's marks start
			// below it).
			s.commited[tp] = a.Offset
			s.mu.Unlock()
			s.log.Info("partition assigned", "topic", topic, "partition", a.ID, "committed", a.Offset, "start", start, "generation", gen.ID)
			if plan.followBelow > max(start, 0) {
				s.log.Info("the previous owner handed the partition over: following, not deciding again, up to where it stopped",
					"topic", topic, "partition", a.ID, "from", start, "to", plan.followBelow)
			}
			if plan.seenBelow > max(start, 0) {
				s.log.Info("partition taken over from another member: deciding again what it decided after the state restored",
					"topic", topic, "partition", a.ID, "from", start, "observed_to", plan.seenBelow)
			}
			ln := s.align.join()
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.fetchPartition(fetchCtx, topic, a.ID, start, plan, ln)
			}()
		}
	}
	if s.cfg.Share {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.observe(fetchCtx, gate)
		}()
	} else {
		s.align.leave(gate)
	}
	if parts == 0 && s.cfg.Follow && !s.cfg.Share {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.follow(fetchCtx)
		}()
	}
	// Ready once every partition's start is chosen: what a takeover
	// learned of a handover (HandedOver) is settled by then.
	s.mu.Lock()
	s.ready = true
	s.mu.Unlock()
	for {
		select {
		case <-tick:
			s.commit()
		case <-genEnded:
			stopFetch()
			wg.Wait()
			if s.cfg.Share && s.cfg.Revoked != nil {
				s.cfg.Revoked(ctx)
			}
			s.commit() // best effort: the group may already refuse this generation
			s.mu.Lock()
			s.ready = false
			s.mu.Unlock()
			return
		case <-ctx.Done():
			stopFetch()
			wg.Wait()
			return
		}
	}
}

// fetchPlan says how a fetcher marks the records it hands on; an offset of
// -1 marks none.
type fetchPlan struct {
	// limits (a standby following) holds back records the group has not
	// committed, and marks every record Follow.
	limits *committedOffsets
	// followBelow marks Follow the records the previous owner handed over
	// decided (see SourceConfig.HandedOver).
	followBelow int64
	// observe marks every record Observe: another member decides the
	// partition. observeBelow marks those below it.
	observe      bool
	observeBelow int64
	// seenBelow marks Seen the records this member observed before it
	// decided the partition.
	seenBelow int64
}

// fetchPartition hands on the partition's records from start, marked as
// plan says.
// ln is its lane among the partitions aligned in event time (nil: not
// aligned), which it leaves when it returns.
func (s *Source) fetchPartition(ctx context.Context, topic string, partition int, start int64, plan fetchPlan, ln *lane) {
	r := PartitionReader(s.cfg.Brokers, topic, partition, s.log)
	defer r.Close()
	if err := r.SetOffset(start); err != nil {
		s.log.Error("set start offset", "topic", topic, "partition", partition, "offset", start, "err", err)
		return
	}
	s.log.Debug("fetching partition", "topic", topic, "partition", partition, "from", start)
	pl := s.metrics.partitionLabel(partition)
	// Looked up once, when first set: hashing the labels for every record
	// was 1% of the daemon's CPU.
	var lagGauge prometheus.Gauge
	defer s.align.leave(ln)
	if ln != nil {
		// Whether the partition has records to hand on from start.
		s.align.handed(ln, s.behind(ctx, r))
	}
	next := start
	for {
		m, ok := nextMessage(ctx, r, s.log)
		if !ok {
			return
		}
		if m.Offset < next {
			// Kafka may return the rest of a batch that starts before the
			// requested offset; those records were handled already.
			s.log.Warn("skipping record before the start offset", "offset", m.Offset, "next", next)
			continue
		}
		if next >= 0 && m.Offset > next {
			s.log.Warn("offset gap in partition", "topic", topic, "partition", partition, "expected", next, "got", m.Offset)
		}
		next = m.Offset + 1
		tp := topicPartition{topic, partition}
		if plan.limits != nil && !plan.limits.wait(ctx, tp, m.Offset, s.metrics.FollowLag.WithLabelValues(topic, pl)) {
			return
		}
		now := s.cfg.Now()
		follow := plan.limits != nil || m.Offset < plan.followBelow
		observe := plan.observe || m.Offset < plan.observeBelow
		rec := Record{Topic: topic, Partition: partition, Offset: m.Offset, Key: m.Key, Value: m.Value, Arrived: now,
			Follow: follow, Observe: observe, Seen: !observe && m.Offset < plan.seenBelow}
		rec.Event, rec.Err = event.DecodeOwned(m.Value, now) // kafka-go gives each record its own buffer
		lag := m.HighWaterMark - m.Offset - 1
		if lag >= 0 && plan.limits == nil && !observe {
			if lagGauge == nil {
				lagGauge = s.metrics.Lag.WithLabelValues(topic, pl)
			}
			lagGauge.Set(float64(lag))
		}
		if rec.Err == nil && !s.align.hold(ctx, ln, alignTime(rec.Event.TS, m.Time, now)) {
			return
		}
		select {
		case s.out <- rec:
			s.align.handed(ln, lag > 0)
			s.mu.Lock()
			s.fetched[tp] = m.Offset + 1
			if follow {
				s.followed[tp] = true
			} else if plan.followBelow >= 0 {
				delete(s.followed, tp) // past the handover: decided from here
				plan.followBelow = -1
			}
			if observe {
				s.observed[tp] = true
			} else if plan.observeBelow >= 0 {
				delete(s.observed, tp) // decided from here
				plan.observeBelow = -1
			}
			s.mu.Unlock()
		case <-ctx.Done():
			return
		}
	}
}

// alignTime is where a record stands among the partitions in event time:
// its event's time, but no later than when it was produced or read. An
// event dated ahead of its clock (accepted up to event.MaxFutureSkew) would
// otherwise hold its partition back until every other caught up.
func alignTime(ts, produced, arrived time.Time) time.Time {
	if produced.After(event.MinTS) && produced.Before(ts) {
		ts = produced
	}
	if arrived.Before(ts) {
		ts = arrived
	}
	return ts
}

// behind reports whether the partition r starts reading has records to
// hand on already; false when that cannot be learnt, so that a partition
// whose leader is away holds no other back.
func (s *Source) behind(ctx context.Context, r *kafka.Reader) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	lag, err := r.ReadLag(ctx)
	return err == nil && lag > 0
}

// PartitionReader reads one partition, outside any consumer group, as
// walletguard's fetchers do.
func PartitionReader(brokers []string, topic string, partition int, log *slog.Logger) *kafka.Reader {
	return kafka.NewReader(kafka.ReaderConfig{
		Brokers:   brokers,
		Dialer:    dialer(),
		Topic:     topic,
		Partition: partition,
		MinBytes:  1,
		MaxBytes:  fetchMaxBytes,
		MaxWait:   FetchMaxWait,
		// Callers retry on their own; kafka-go's reader retries fetch errors itself.
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			log.Debug("kafka fetch", "topic", topic, "partition", partition, "msg", fmt.Sprintf(msg, args...))
		}),
	})
}

// nextMessage fetches r's next record, retrying failed fetches, until ctx
// ends (false).
func nextMessage(ctx context.Context, r *kafka.Reader, log *slog.Logger) (kafka.Message, bool) {
	for {
		m, err := r.FetchMessage(ctx)
		if err == nil {
			return m, true
		}
		if ctx.Err() != nil || errors.Is(err, context.Canceled) {
			return m, false
		}
		log.Warn("fetch failed; retrying", "topic", r.Config().Topic, "partition", r.Config().Partition, "err", err)
		select {
		case <-ctx.Done():
			return m, false
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// MarkHandled records that every record of the partition up to and including
// offset has been fully handled (its effects are durable), so the next commit
// may include it. Calls for one partition must come in offset order. A record
// marked Observe is another member's to mark.
func (s *Source) MarkHandled(topic string, partition int, offset int64) {
	s.mu.Lock()
	tp := topicPartition{topic, partition}
	if offset+1 > s.handled[tp] {
		s.handled[tp] = offset + 1
	}
	s.mu.Unlock()
}

// commit sends handled-but-uncommitted offsets of the partitions this member
// holds. A failed commit is retried on the next tick: the offsets stay marked.
func (s *Source) commit() {
	s.mu.Lock()
	gen := s.gen
	offsets := map[string]map[int]int64{}
	for tp, off := range s.handled {
		if !s.assigned[tp] || off <= s.commited[tp] {
			continue
		}
		if offsets[tp.topic] == nil {
			offsets[tp.topic] = map[int]int64{}
		}
		offsets[tp.topic][tp.partition] = off
	}
	s.mu.Unlock()
	if gen == nil || len(offsets) == 0 {
		return
	}
	if err := gen.CommitOffsets(offsets); err != nil {
		s.metrics.CommitErrors.Inc()
		s.log.Warn("offset commit failed; will retry", "err", err)
		return
	}
	s.metrics.Commits.Inc()
	s.mu.Lock()
	for topic, ps := range offsets {
		for p, off := range ps {
			s.commited[topicPartition{topic, p}] = off
		}
	}
	s.mu.Unlock()
}

// Close commits what was handled and leaves the group. Call it after Run has
// returned and the consumer of Records has marked everything it finished. It
// gives up when ctx ends: with the broker gone, a commit can block for as long
// as the connection lives, and a stopping daemon must not wait on it (the next
// start resumes from the checkpoint anyway).
func (s *Source) Close(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.close() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("leave consumer group: %w", ctx.Err())
	}
}

func (s *Source) close() error {
	s.commit()
	s.mu.Lock()
	cg, release := s.cg, s.release
	s.release = nil
	s.mu.Unlock()
	if release != nil {
		close(release)
	}
	if cg == nil {
		return nil
	}
	if err := cg.Close(); err != nil {
		return fmt.Errorf("leave consumer group: %w", err)
	}
	return nil
}
