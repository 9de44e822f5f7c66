package ingest

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"
	"sync"

	"github.com/segmentio/kafka-go"
)

// sharedOwners is the group balancer of instances that share the partitions
// (SourceConfig.Share): each partition goes to one member, the members get
// as many as one another to within one, and a partition stays with the
// member that decides it now whenever the balance allows. A partition that
// moves costs its new owner a restore of its accounts' state, so a member
// joining or leaving moves only the partitions it must: a third instance
// joining two takes a third of the partitions, and leaves the rest where
// they are.
//
// Its protocol name differs from the sole owner's, and neither offers the
// other's: an instance that shares cannot join a group of instances that do
// not (the coordinator refuses the join), where it would split partitions
// that the others hold whole.
type sharedOwners struct {
	owned func() map[string][]int // the partitions this member decides now, by topic
	addr  func() string           // where the other members reach its API; nil: nowhere
}

const sharedProtocol = "walletguard-shared"

func (b sharedOwners) ProtocolName() string { return sharedProtocol }

// sharedMeta is a sharing member's metadata in the group: what it decides,
// for the leader to keep it there, and where its API answers, for the
// other members to pass on requests about the accounts it decides.
type sharedMeta struct {
	Decides map[string][]int `json:"decides"`
	API     string           `json:"api,omitempty"`
}

// parseSharedMeta reads a member's metadata; a member without any owns
// nothing. The first release wrote the partitions alone.
func parseSharedMeta(d []byte) sharedMeta {
	var m sharedMeta
	if json.Unmarshal(d, &m) == nil && m.Decides != nil {
		return m
	}
	var owned map[string][]int
	if json.Unmarshal(d, &owned) == nil {
		m.Decides = owned
	}
	return m
}

// UserData tells the group's leader which partitions this member decides,
// and the others where its API answers.
func (b sharedOwners) UserData() ([]byte, error) {
	m := sharedMeta{Decides: map[string][]int{}}
	if b.owned != nil {
		m.Decides = b.owned()
	}
	if b.addr != nil {
		m.API = b.addr()
	}
	return json.Marshal(m)
}

// AssignGroups balances each topic's partitions over the members that read
// it, keeping what each owns where it can.
func (b sharedOwners) AssignGroups(members []kafka.GroupMember, partitions []kafka.Partition) kafka.GroupMemberAssignments {
	out := kafka.GroupMemberAssignments{}
	members = slices.SortedFunc(slices.Values(members), func(x, y kafka.GroupMember) int { return cmp.Compare(x.ID, y.ID) })
	owned := map[string]map[string][]int{}
	for _, m := range members {
		out[m.ID] = map[string][]int{}
		owned[m.ID] = parseSharedMeta(m.UserData).Decides
	}
	byTopic := map[string][]int{}
	for _, p := range partitions {
		byTopic[p.Topic] = append(byTopic[p.Topic], p.ID)
	}
	for topic, ps := range byTopic {
		slices.Sort(ps)
		var readers []string
		for _, m := range members {
			if slices.Contains(m.Topics, topic) {
				readers = append(readers, m.ID)
			}
		}
		if len(readers) == 0 {
			continue
		}
		for id, got := range balance(ps, readers, func(id string) []int { return owned[id][topic] }) {
			out[id][topic] = got
		}
	}
	return out
}

// Peer is a member of a group that shares the partitions.
type Peer struct {
	Member string
	// API is where its API answers (SourceConfig.Advertise); "" if it
	// advertised nowhere.
	API string
	// Decides holds the partitions the group assigned it, by topic.
	Decides map[string][]int
}

// SharingMembers describes the members of group that decide partitions.
func SharingMembers(ctx context.Context, brokers []string, group string) ([]Peer, error) {
	members, err := describeGroup(ctx, brokers, group)
	if err != nil {
		return nil, err
	}
	var out []Peer
	for _, m := range members {
		p := Peer{Member: m.MemberID, API: parseSharedMeta(m.MemberMetadata.UserData).API, Decides: map[string][]int{}}
		for _, t := range m.MemberAssignments.Topics {
			if len(t.Partitions) > 0 {
				p.Decides[t.Topic] = slices.Sorted(slices.Values(t.Partitions))
			}
		}
		if len(p.Decides) > 0 {
			out = append(out, p)
		}
	}
	return out, nil
}

// balance gives each of parts to one of members: every member base or base+1
// of them, a member keeping those it owns up to that, the rest going to the
// members with fewest.
func balance(parts []int, members []string, owns func(string) []int) map[string][]int {
	base, extra := len(parts)/len(members), len(parts)%len(members)
	free := map[int]bool{}
	for _, p := range parts {
		free[p] = true
	}
	got := map[string][]int{}
	for _, m := range members {
		limit := base
		if extra > 0 {
			limit++
		}
		for _, p := range owns(m) {
			if len(got[m]) < limit && free[p] {
				got[m] = append(got[m], p)
				delete(free, p)
			}
		}
		if len(got[m]) > base {
			extra--
		}
	}
	for _, p := range parts {
		if !free[p] {
			continue
		}
		least := slices.MinFunc(members, func(x, y string) int { return cmp.Compare(len(got[x]), len(got[y])) })
		got[least] = append(got[least], p)
	}
	for _, m := range members {
		slices.Sort(got[m])
		if got[m] == nil {
			got[m] = []int{}
		}
	}
	return got
}

// observe reads, for a member sharing the partitions, every partition of
// the topics that another member decides: from where this process last
// handed on its records (it decided or observed it before), or else where
// ObserveFrom says, handing the records on marked Observe. It returns when
// ctx ends (the generation does).
func (s *Source) observe(ctx context.Context, gate *lane) {
	defer s.align.leave(gate)
	parts, err := s.partitions(ctx)
	if err != nil {
		return // ctx ended
	}
	var wg sync.WaitGroup
	n := 0
	for _, tp := range parts {
		s.mu.Lock()
		mine := s.assigned[tp]
		start, ok := s.fetched[tp]
		s.mu.Unlock()
		if mine {
			continue
		}
		if !ok {
			start = kafka.FirstOffset
			if s.cfg.ObserveFrom != nil {
				start = s.cfg.ObserveFrom(tp.topic, tp.partition)
			}
		}
		n++
		ln := s.align.join()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.fetchPartition(ctx, tp.topic, tp.partition, start, fetchPlan{observe: true, followBelow: -1, observeBelow: -1, seenBelow: -1}, ln)
		}()
	}
	s.align.leave(gate)
	s.log.Debug("observing the partitions other members decide", "group", s.cfg.GroupID, "partitions", n)
	wg.Wait()
}
