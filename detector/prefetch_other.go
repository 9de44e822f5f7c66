//go:build !amd64 && !arm64

package detector

// prefetch is a no-op where walletguard has no prefetch instruction for
// the architecture: state is then loaded when it is used.
func prefetch(addr uintptr) {}
