package app

import (
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/walletguard/walletguard/detector"
)

// registerDiskMetrics exports the free and total space of the filesystem
// holding data_dir: when it fills, checkpoints fail and offsets stop being
// committed, so SREs want to see it coming.
func registerDiskMetrics(reg prometheus.Registerer, dir string) {
	stat := func(free bool) float64 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			return 0
		}
		if free {
			return float64(st.Bavail) * float64(st.Bsize)
		}
		return float64(st.Blocks) * float64(st.Bsize)
	}
	f := promauto.With(reg)
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "walletguard_data_dir_free_bytes", Help: "Space left for walletguard on the filesystem of data_dir.",
	}, func() float64 { return stat(true) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "walletguard_data_dir_size_bytes", Help: "Size of the filesystem of data_dir.",
	}, func() float64 { return stat(false) })
}

// registerStateFileMetrics exports the size of the detection state's row
// files and what checkpoints write to them: disk to provision, and the
// write load checkpoints put on it.
func registerStateFileMetrics(reg prometheus.Registerer, store *detector.Store) {
	f := promauto.With(reg)
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "walletguard_state_files",
		Help: "Row files of the detection state the last checkpoint lists (data_dir/state/rows): what a restart reads back.",
	}, func() float64 { return float64(store.FileStats().Files) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "walletguard_state_file_bytes",
		Help: "Bytes of the row files the last checkpoint lists; merges in the background keep them to about twice the state at most.",
	}, func() float64 { return float64(store.FileStats().Bytes) })
	written := func(by string, bytes func(detector.FileStats) int64) {
		f.NewCounterFunc(prometheus.CounterOpts{
			Name:        "walletguard_state_written_bytes_total",
			Help:        "Bytes written to the detection state's row files since start, by checkpoints and by the merges of their files.",
			ConstLabels: prometheus.Labels{"by": by},
		}, func() float64 { return float64(bytes(store.FileStats())) })
	}
	written("checkpoint", func(st detector.FileStats) int64 { return st.Written })
	written("merge", func(st detector.FileStats) int64 { return st.Merged })
}
