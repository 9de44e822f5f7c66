package ingest

import (
	"testing"

	"github.com/segmentio/kafka-go"
)

func member(t *testing.T, id string, held int64, owning bool, started int64) kafka.GroupMember {
	t.Helper()
	d, err := soleOwner{held: func() int64 { return held }, owning: func() bool { return owning }, started: started}.UserData()
	if err != nil {
		t.Fatal(err)
	}
	return kafka.GroupMember{ID: id, Topics: []string{"events"}, UserData: d}
}

// One member gets every partition of the topics it reads; the others get an
// empty assignment. Which one: see soleOwner.
func TestSoleOwnerChoosesTheMemberWithTheState(t *testing.T) {
	parts := []kafka.Partition{{Topic: "events", ID: 2}, {Topic: "events", ID: 0}, {Topic: "events", ID: 1}, {Topic: "other", ID: 0}}
	for _, c := range []struct {
		name    string
		members []kafka.GroupMember
		want    string
	}{
		{"a newer owner keeps its partitions", []kafka.GroupMember{member(t, "old", 900, false, 100), member(t, "owner", 1000, true, 200)}, "owner"},
		{"an owner with little state gives way to one with far more",
			[]kafka.GroupMember{member(t, "took-over", 40, true, 100), member(t, "back", 1_000_000, false, 300)}, "back"},
		{"the oldest takes over", []kafka.GroupMember{member(t, "b", 0, false, 300), member(t, "a", 0, false, 100), member(t, "c", 0, false, 200)}, "a"},
		{"equal start: the lowest id", []kafka.GroupMember{member(t, "y", 0, false, 100), member(t, "x", 0, false, 100)}, "x"},
		{"a client without walletguard's data ranks last", []kafka.GroupMember{{ID: "a-foreign", Topics: []string{"events"}}, member(t, "z", 0, false, 1<<62)}, "z"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := soleOwner{}.AssignGroups(c.members, parts)
			if len(got) != len(c.members) {
				t.Fatalf("assignments for %d members, want one for each of %d", len(got), len(c.members))
			}
			for id, topics := range got {
				n := len(topics["events"]) + len(topics["other"])
				switch {
				case id == c.want && (n != 3 || topics["events"][0] != 0 || topics["events"][2] != 2):
					t.Errorf("owner %s got %v, want events 0, 1, 2 (and not the topic it does not read)", id, topics)
				case id != c.want && n != 0:
					t.Errorf("%s got %v, want nothing (%s should own)", id, topics, c.want)
				}
			}
		})
	}
}
