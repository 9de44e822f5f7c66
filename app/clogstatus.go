package app

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/ingest"
)

// ChangelogStatus is what kafka.changelog_topic holds, for an operator
// deciding whether an instance can be replaced from it: the last state
// published, where it was taken against the consumer group's commits, and
// (when read whole) what a restore from it would bring back.
type ChangelogStatus struct {
	Topic      string `json:"topic"`
	Partitions int    `json:"partitions"`
	Records    int64  `json:"records"` // held now, superseded versions compaction has not yet removed included
	// Marker is the last state published; nil if there is none yet.
	Marker *MarkerStatus `json:"last_state"`
	// Committed and Ends are, per event topic and partition, the group's
	// committed offsets and the next offsets to be written.
	Committed map[string]map[int]int64 `json:"committed"`
	Ends      map[string]map[int]int64 `json:"ends"`
	// PartitionStates are, for instances that share the partitions
	// (kafka.share_partitions), the last state of each partition of the
	// first event topic published by the member deciding it; absent for a
	// sole owner.
	PartitionStates map[int]*MarkerStatus `json:"partition_states,omitempty"`
	// Restore counts what a restore would bring back; nil unless asked.
	Restore *RestoreCounts `json:"restore,omitempty"`
}

// MarkerStatus is a changelog marker: the state of one checkpoint.
type MarkerStatus struct {
	Epoch        uint64           `json:"epoch"`
	Seq          uint64           `json:"checkpoint"`
	EpochStarted time.Time        `json:"epoch_started"` // when the epoch began with the whole state
	Written      time.Time        `json:"published"`
	Offsets      detector.Offsets `json:"taken_at"` // where the state was taken
}

// RestoreCounts are the records a restore would apply: detection rows by
// kind, account security states, alerts, outbox records by destination,
// audit entries and dead letters.
type RestoreCounts struct {
	Rows           map[string]int `json:"rows"`
	AccountStates  int            `json:"account_states"`
	Alerts         int            `json:"alerts"`
	Outbox         map[string]int `json:"undelivered"`
	Audit          int            `json:"audit_entries"`
	DeadLetters    int            `json:"dead_letters"` // records a receiver was given up on
	UnknownRecords int            `json:"unknown_records"`
}

// rowKindNames names the detection row kinds of a changelog (detector.EachRow).
var rowKindNames = map[byte]string{1: "accounts", 2: "devices", 3: "payees", 4: "ips", 5: "payments", 6: "timers", detector.RowMerchant: "merchants"}

// ReadChangelogStatus reads the changelog of cfg and the consumer group's
// position; with whole, it also reads every record up to the last marker,
// as a restore would, and counts what it would bring back.
func ReadChangelogStatus(ctx context.Context, cfg config.Config, whole bool, log *slog.Logger) (*ChangelogStatus, error) {
	topic := cfg.Kafka.ChangelogTopic
	if topic == "" {
		return nil, errors.New("kafka.changelog_topic is not set: there is no changelog")
	}
	if len(cfg.Kafka.Brokers) == 0 {
		return nil, errors.New("kafka.brokers is empty: the changelog lives on the brokers of a running cluster, not the embedded one")
	}
	brokers := cfg.Kafka.Brokers
	st := &ChangelogStatus{Topic: topic, Committed: map[string]map[int]int64{}, Ends: map[string]map[int]int64{}}
	marker, ends, err := findMarker(ctx, brokers, topic, log)
	if err != nil {
		return nil, fmt.Errorf("changelog %s: %w", topic, err)
	}
	st.Partitions = len(ends)
	if len(ends) > 0 {
		firsts, err := ingest.FirstOffsets(ctx, brokers, topic)
		if err != nil {
			return nil, err
		}
		for p, end := range ends {
			st.Records += end - firsts[p]
		}
	}
	asked := map[string][]int{}
	for _, t := range cfg.Kafka.Topics {
		e, err := ingest.EndOffsets(ctx, brokers, t)
		if err != nil {
			return nil, err
		}
		st.Ends[t] = e
		asked[t] = slices.Sorted(maps.Keys(e))
	}
	if st.Committed, err = ingest.CommittedOffsets(ctx, brokers, cfg.Kafka.GroupID, asked); err != nil {
		return nil, err
	}
	for p := range st.Ends[cfg.Kafka.Topics[0]] {
		m, err := findPartMarker(ctx, brokers, topic, ends, clogPartMarker+strconv.Itoa(p), log)
		if err != nil {
			return nil, err
		}
		if m != nil {
			if st.PartitionStates == nil {
				st.PartitionStates = map[int]*MarkerStatus{}
			}
			st.PartitionStates[p] = &MarkerStatus{Epoch: m.epoch, Seq: m.seq, EpochStarted: time.Unix(0, int64(m.epoch)).UTC(), Written: m.msg.Time.UTC(), Offsets: m.offsets}
		}
	}
	if marker == nil {
		return st, nil
	}
	epoch, seq, ok := clogPlace(marker)
	offsets, err := detector.MetaOffsets(marker.Value)
	if !ok || err != nil {
		return nil, fmt.Errorf("changelog %s: marker at %d/%d unreadable: %v", topic, marker.Partition, marker.Offset, err)
	}
	st.Marker = &MarkerStatus{Epoch: epoch, Seq: seq, EpochStarted: time.Unix(0, int64(epoch)).UTC(), Written: marker.Time.UTC(), Offsets: offsets}
	if !whole {
		return st, nil
	}
	r := newClogRestore(topic, epoch, seq)
	rows := map[[9]byte]bool{}
	err = ingest.ReadPartitions(ctx, brokers, topic, ends, log, func(_ int, batch []kafka.Message) error {
		for i := range batch {
			err := r.take(&batch[i], func(kind byte, key uint64, v []byte) error {
				var k [9]byte
				k[0] = kind
				binary.BigEndian.PutUint64(k[1:], key)
				if v == nil {
					delete(rows, k)
				} else {
					rows[k] = true
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	c := &RestoreCounts{Rows: map[string]int{}, AccountStates: len(r.states), Alerts: len(r.alerts), Outbox: map[string]int{},
		Audit: len(r.audit), DeadLetters: len(r.dead), UnknownRecords: r.unknown}
	for k := range rows {
		c.Rows[rowKindNames[k[0]]]++
	}
	for _, o := range r.owed().records {
		c.Outbox[o.dest]++
	}
	st.Restore = c
	return st, nil
}

// findMarker finds a changelog's last marker, nil if it has none, and the
// end of each of its partitions.
func findMarker(ctx context.Context, brokers []string, topic string, log *slog.Logger) (*kafka.Message, map[int]int64, error) {
	ends, err := ingest.EndOffsets(ctx, brokers, topic)
	if errors.Is(err, kafka.UnknownTopicOrPartition) || len(ends) == 0 {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	mp := ingest.KeyPartition([]byte(clogMarker), len(ends))
	marker, err := ingest.LastMatching(ctx, brokers, topic, mp, ends[mp], log, func(m *kafka.Message) bool { return string(m.Key) == clogMarker })
	return marker, ends, err
}
