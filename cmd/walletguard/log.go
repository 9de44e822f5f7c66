package main

import (
	"log/slog"
	"os"
	"strings"
)

// newLogger builds the process logger: JSON for the daemon, text for people.
func newLogger(format, level string) *slog.Logger {
	l, _ := newLoggerVar(format, level)
	return l
}

// newLoggerVar is newLogger with the level kept switchable at runtime
// (PUT /v1/log/level).
func newLoggerVar(format, level string) (*slog.Logger, *slog.LevelVar) {
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
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), lv
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts)), lv
}
