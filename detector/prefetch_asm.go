//go:build amd64 || arm64

package detector

// prefetch asks the CPU to start loading the cache line holding addr and
// returns at once; it never faults, whatever addr is. Go has no prefetch of
// its own, and an ordinary load as a stand-in would stall the core until
// the line arrived, which is the wait this is meant to hide.
func prefetch(addr uintptr)
