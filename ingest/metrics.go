package ingest

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	dto "github.com/prometheus/client_model/go"

	"github.com/walletguard/walletguard/event"
)

// Metrics are ingest's Prometheus series. Label values are bounded: event
// types and rejection reasons are closed sets, partitions are few.
type Metrics struct {
	Consumed     *prometheus.CounterVec
	Rejected     *prometheus.CounterVec
	DeadLettered prometheus.Counter
	Duplicates   prometheus.Counter
	Followed     prometheus.Counter
	Observed     prometheus.Counter
	Lag          *prometheus.GaugeVec
	FollowLag    *prometheus.GaugeVec
	Assigned     prometheus.Gauge
	Commits      prometheus.Counter
	CommitErrors prometheus.Counter
	ProduceErrs  *prometheus.CounterVec
	Latency      prometheus.Histogram
	AlignWaits   prometheus.Counter
	AlignOverdue prometheus.Counter

	consumed [event.NumTypes]prometheus.Counter
}

// CountConsumed counts a valid event of type t without a label lookup.
func (m *Metrics) CountConsumed(t event.Type) {
	if c := m.consumed[t]; c != nil { // valid events always have a known type
		c.Inc()
	}
}

// ConsumedTotal is how many valid events were consumed, of every type: a
// read of a few counters, where gathering the registry reads every series.
func (m *Metrics) ConsumedTotal() float64 {
	var sum float64
	var d dto.Metric
	for _, c := range m.consumed {
		if c != nil && c.Write(&d) == nil {
			sum += d.GetCounter().GetValue()
		}
	}
	return sum
}

// NewMetrics registers ingest's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		Consumed: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_events_consumed_total", Help: "Valid events consumed, by event type.",
		}, []string{"type"}),
		Rejected: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_events_rejected_total", Help: "Events rejected as invalid, by reason.",
		}, []string{"reason"}),
		DeadLettered: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_events_dead_lettered_total", Help: "Rejected events written to the dead-letter topic.",
		}),
		Duplicates: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_events_duplicate_total", Help: "Events skipped because their event_id was already handled.",
		}),
		Followed: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_events_followed_total",
			Help: "Events a standby folded into its state after the owner decided them (not counted as consumed).",
		}),
		Observed: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_events_observed_total",
			Help: "Events of partitions another instance decides, folded into the devices, IPs, payees and merchants only (kafka.share_partitions; not counted as consumed).",
		}),
		FollowLag: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "walletguard_standby_follow_lag",
			Help: "Events the owner has committed that this standby has not folded into its state yet; a takeover decides them again, or follows them after a handover.",
		}, []string{"topic", "partition"}),
		Lag: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "walletguard_consumer_lag", Help: "Messages between the last fetched offset and the partition's high watermark.",
		}, []string{"topic", "partition"}),
		Assigned: f.NewGauge(prometheus.GaugeOpts{
			Name: "walletguard_partitions_assigned",
			Help: "Event partitions this instance consumes; 0 when it stands by for another walletguard in its consumer group.",
		}),
		Commits: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_offset_commits_total", Help: "Successful consumer-group offset commits.",
		}),
		CommitErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_offset_commit_errors_total", Help: "Failed consumer-group offset commits (retried).",
		}),
		ProduceErrs: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_produce_errors_total", Help: "Failed writes of walletguard's own records to Kafka (retried), by stream.",
		}, []string{"stream"}),
		AlignWaits: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_partition_align_waits_total",
			Help: "Records held back because another partition with records still to read was older in event time by more than kafka.partition_skew (catching up on a backlog).",
		}),
		AlignOverdue: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_partition_align_overdue_total",
			Help: "Records handed on after waiting 5 s for an older partition that did not move (its fetches failing); that partition holds none back until it moves again.",
		}),
		Latency: f.NewHistogram(prometheus.HistogramOpts{
			Name: "walletguard_event_processing_seconds",
			Help: "Time from an event's arrival at walletguard to its outputs being durable.",
			// Fine up to the tens of milliseconds an event takes when the
			// daemon keeps up, coarse in the tail.
			Buckets: []float64{0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30},
		}),
	}
	for _, t := range event.Types() {
		m.consumed[t] = m.Consumed.WithLabelValues(t.String())
	}
	for _, r := range event.Reasons() {
		m.Rejected.WithLabelValues(string(r))
	}
	return m
}

// partitionLabel bounds the label to a number; partitions are few per topic.
func (m *Metrics) partitionLabel(p int) string { return strconv.Itoa(p) }
