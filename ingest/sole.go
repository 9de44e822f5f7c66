package ingest

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"
)

// soleOwner is the group balancer that gives every partition to one member
// and none to the others, which wait as standbys.
//
// walletguard's state for an account is built from every event of the
// account, and that of a device, IP or merchant from every account's: an
// instance handed half the partitions would decide the other half's
// accounts as strangers, and count half of a credential-stuffing wave. So a
// second instance in the group — a scaled-up replica, a rollout's overlap, a
// copy started by mistake — waits with nothing assigned until the owner
// leaves the group or dies, then takes every partition over.
//
// Who owns: among the members holding at least half as much state as the
// one that holds most, the one that owns now, then the one started first,
// then the lowest member id. So a newcomer never pulls the partitions away
// from the instance that has their state, and an owner that restarts on its
// volume takes them back from a standby that took over with an empty state
// while it was gone.
type soleOwner struct {
	held    func() int64  // accounts this member holds in state
	owning  func() bool   // whether this member holds partitions now
	started int64         // when this process's source was made, unix ns
	addr    func() string // where other instances reach this one's API, "" if nowhere
}

// soleOwnerProtocol names the balancer to the group coordinator. Members
// also offer kafka-go's range balancer, so that a group that still has a
// walletguard without this balancer (during an upgrade) can be joined; the
// coordinator picks this one once every member offers it.
const soleOwnerProtocol = "walletguard-sole-owner"

func (b soleOwner) ProtocolName() string { return soleOwnerProtocol }

// UserData tells the group's leader what soleOwnerRank reads.
func (b soleOwner) UserData() ([]byte, error) {
	d := make([]byte, 17)
	binary.BigEndian.PutUint64(d, uint64(max(0, b.held())))
	if b.owning() {
		d[8] = 1
	}
	binary.BigEndian.PutUint64(d[9:], uint64(b.started))
	if b.addr != nil {
		d = append(d, b.addr()...) // after what rankOf reads: older members ignore it
	}
	return d, nil
}

type soleOwnerRank struct {
	held    int64
	owning  bool
	started int64
}

// rankOf reads a member's user data; a member without it (another client)
// holds nothing and started last.
func rankOf(d []byte) soleOwnerRank {
	if len(d) < 17 {
		return soleOwnerRank{started: 1<<63 - 1}
	}
	return soleOwnerRank{int64(binary.BigEndian.Uint64(d)), d[8] == 1, int64(binary.BigEndian.Uint64(d[9:]))}
}

// AssignGroups gives every partition of the topics the owner reads to the
// owner, and an empty assignment to each of the others.
func (b soleOwner) AssignGroups(members []kafka.GroupMember, partitions []kafka.Partition) kafka.GroupMemberAssignments {
	out := kafka.GroupMemberAssignments{}
	if len(members) == 0 {
		return out
	}
	most := int64(0)
	for _, m := range members {
		out[m.ID] = map[string][]int{}
		most = max(most, rankOf(m.UserData).held)
	}
	eligible := slices.DeleteFunc(slices.Clone(members), func(m kafka.GroupMember) bool { return 2*rankOf(m.UserData).held < most })
	owner := slices.MinFunc(eligible, func(x, y kafka.GroupMember) int {
		rx, ry := rankOf(x.UserData), rankOf(y.UserData)
		switch {
		case rx.owning != ry.owning:
			if rx.owning {
				return -1
			}
			return 1
		case rx.started != ry.started:
			if rx.started < ry.started {
				return -1
			}
			return 1
		case x.ID < y.ID:
			return -1
		default:
			return 1
		}
	})
	wants := map[string]bool{}
	for _, t := range owner.Topics {
		wants[t] = true
	}
	for _, p := range partitions {
		if wants[p.Topic] {
			out[owner.ID][p.Topic] = append(out[owner.ID][p.Topic], p.ID)
		}
	}
	for _, ps := range out[owner.ID] {
		slices.Sort(ps)
	}
	return out
}

// GroupOwner returns the API address the member of group that holds its
// partitions advertised (SourceConfig.Advertise), and its member id; addr
// is "" when no member holds any, or the one that does advertised none.
func GroupOwner(ctx context.Context, brokers []string, group string) (addr, member string, err error) {
	members, err := describeGroup(ctx, brokers, group)
	if err != nil {
		return "", "", err
	}
	for _, m := range members {
		n := 0
		for _, t := range m.MemberAssignments.Topics {
			n += len(t.Partitions)
		}
		if n == 0 {
			continue
		}
		if d := m.MemberMetadata.UserData; len(d) > 17 {
			return string(d[17:]), m.MemberID, nil
		}
		return "", m.MemberID, nil
	}
	return "", "", nil
}

// describeGroup lists the members of a consumer group, with their
// metadata and assignments.
func describeGroup(ctx context.Context, brokers []string, group string) ([]kafka.DescribeGroupsResponseMember, error) {
	client := newClient(brokers, 5*time.Second)
	resp, err := client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return nil, fmt.Errorf("describe consumer group %s: %w", group, err)
	}
	var out []kafka.DescribeGroupsResponseMember
	for _, g := range resp.Groups {
		if g.Error != nil {
			return nil, fmt.Errorf("describe consumer group %s: %w", group, g.Error)
		}
		out = append(out, g.Members...)
	}
	return out, nil
}
