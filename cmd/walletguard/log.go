package main

import (
	"log/slog"
	"os"
	"strings"
)

// newLogger builds the process logger: JSON for the daemon, text for people.
func newLogger(format, level string) *slog.Logger {
	lv := new(slog.LevelVar)
	switch strings.ToLower(level) {
	case "debug":
		lv.Set(slog.LevelDebug)
	case "warn":
		lv.Set(slog.LevelWarn)
	case "error":
		lv.Set(slog.LevelError)
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
