package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkScoreAPI is the payment gateway's view of POST /v1/score: one
// event over HTTP (keep-alive) to a running daemon, decided on the shared
// state and its outputs written to Kafka before the answer. It reports the
// median and p99 latency beside the mean.
func BenchmarkScoreAPI(b *testing.B) {
	cfg := testConfig(b, b.TempDir())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := New(cfg, log, Options{})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get("http://" + a.HTTPAddr() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("daemon not ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	url := "http://" + a.HTTPAddr() + "/v1/score"
	ts := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		body := fmt.Sprintf(`{"event_id":"bench-%d","type":"transaction","ts":%q,"account_id":"acc-%d","device_id":"d-%d","ip":"36.72.1.%d",`+
			`"tx_id":"t-%d","kind":"payment","amount":%d,"currency":"IDR","status":"success","merchant_id":"m-%d"}`,
			i, ts, i%5000, i%5000, i%250, i, 500000+i%7*10000, i%300)
		req, _ := http.NewRequest("POST", url, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer gateway-token")
		t0 := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		lat = append(lat, time.Since(t0))
		if resp.StatusCode != 200 {
			b.Fatalf("score: %s", resp.Status)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "median-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
