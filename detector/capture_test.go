package detector

import (
	"testing"
	"time"

	"github.com/walletguard/walletguard/sim"
)

// BenchmarkCheckpointCapture is the pause a checkpoint costs the pipeline:
// copying what 50,000 events over 20,000 accounts changed (the write itself
// runs beside the pipeline).
func BenchmarkCheckpointCapture(b *testing.B) {
	cfg := sim.DefaultConfig(20000)
	cfg.Seed, cfg.HistoryDays, cfg.Duration = 7, 2, 24*time.Hour
	g := sim.New(cfg)
	e := newEngine(b, 5*time.Minute)
	var evs []sim.Item
	for {
		it, ok := g.Next()
		if !ok {
			break
		}
		evs = append(evs, it)
	}
	i := 0
	for b.Loop() {
		b.StopTimer()
		for n := 0; n < 50000; n++ {
			ev := evs[i%len(evs)].Event
			i++
			e.Process(&ev, nil)
		}
		b.StartTimer()
		if _, err := e.PrepareCheckpoint(nil, Offsets{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(50000, "events/checkpoint")
}
