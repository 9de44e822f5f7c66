package app

import (
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
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
