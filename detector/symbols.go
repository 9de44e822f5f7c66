package detector

import (
	"log/slog"
	"strings"
)

// sym stands for one of the few short names state repeats millions of times
// — error codes, payment statuses, currencies, merchant ids, app versions —
// in 4 bytes instead of a 16-byte string header per use. It shrank a
// payment chain from 240 to 112 bytes.
type sym uint32

// Reserved symbols.
const (
	symNone  sym = iota // ""
	symOther            // a name past the table's capacity
)

// maxSymbols bounds the table: hostile input must not grow it forever. It
// is far above the merchants a wallet has (each merchant also has its own
// health counters, which cost more); past it, new names read as
// symOtherName and a warning is logged once.
const maxSymbols = 1 << 22

const symOtherName = "(unrecorded)"

// symbols maps names to syms and back. Only the pipeline goroutine uses it
// (checkpoints encode chains and merchants there too).
type symbols struct {
	names []string
	ids   map[string]sym
	log   *slog.Logger
	max   int // maxSymbols, but for tests
}

func newSymbols(log *slog.Logger) *symbols {
	return &symbols{names: []string{"", symOtherName}, ids: map[string]sym{"": symNone}, log: log, max: maxSymbols}
}

// id returns name's symbol, adding it if new.
func (s *symbols) id(name string) sym {
	if id, ok := s.ids[name]; ok {
		return id
	}
	if len(s.names) >= s.max {
		if len(s.names) == s.max {
			s.log.Warn("detection state: too many distinct merchant ids, error codes and app versions; new ones are recorded as "+symOtherName, "max", s.max)
			s.names = append(s.names, symOtherName) // warned once
		}
		return symOther
	}
	name = strings.Clone(name) // not the event record it came in
	id := sym(len(s.names))
	s.names = append(s.names, name)
	s.ids[name] = id
	return id
}

func (s *symbols) name(id sym) string { return s.names[id] }
