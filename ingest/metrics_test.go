package ingest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/walletguard/walletguard/event"
)

// TestConsumedTotalIsTheSeriesSum: the quick count a poller reads is what
// the scraped series add up to, over every event type.
func TestConsumedTotalIsTheSeriesSum(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	for i, typ := range event.Types() {
		for range (i + 1) * 3 {
			m.CountConsumed(typ)
		}
	}
	var scraped float64
	for _, typ := range event.Types() {
		scraped += testutil.ToFloat64(m.Consumed.WithLabelValues(typ.String()))
	}
	if got := m.ConsumedTotal(); got != scraped || got != 30 {
		t.Errorf("ConsumedTotal %v, the series add up to %v; 30 were counted", got, scraped)
	}
}
