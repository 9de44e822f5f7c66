// Package api owns walletguard's HTTP surface (CONTRACT §3): health and
// readiness probes, Prometheus metrics, and the bearer-token /v1 API with its
// roles. It translates HTTP to calls on a Backend and back; it holds no
// state of its own and makes no decisions.
package api

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/rules"
)

// Account is the answer of GET /v1/accounts/{id}.
type Account struct {
	AccountID       string              `json:"account_id"`
	Frozen          bool                `json:"frozen"`
	FrozenReason    string              `json:"frozen_reason"`
	StepUpRequired  bool                `json:"step_up_required"`
	RiskScore       int                 `json:"risk_score"`
	RecentDecisions []detector.Decision `json:"recent_decisions"`
	State           *enforce.State      `json:"state,omitempty"`
}

// Backend is what the API needs from the daemon.
type Backend interface {
	Ready() (bool, string)
	Account(id string) Account
	Decisions(accountID string, limit int) []detector.Decision
	Alerts(status string) []alerts.Alert
	Rules() *rules.Set
	ReloadRules() (*rules.Set, error)
	Score(ev *event.Event) (detector.Decision, error)
}

// New returns the HTTP handler.
func New(b Backend, tokens []config.Token, reg *prometheus.Registry, log *slog.Logger) http.Handler {
	s := &server{b: b, tokens: tokens, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := b.Ready(); !ok {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": why})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /v1/accounts/{id}", s.auth(s.account, "viewer", "gateway", "support"))
	mux.HandleFunc("GET /v1/decisions", s.auth(s.decisions, "viewer", "support"))
	mux.HandleFunc("GET /v1/alerts", s.auth(s.alerts, "viewer", "support"))
	mux.HandleFunc("GET /v1/rules", s.auth(s.rules, "viewer"))
	mux.HandleFunc("POST /v1/rules/reload", s.auth(s.reload))
	mux.HandleFunc("POST /v1/score", s.auth(s.score, "gateway"))
	mux.HandleFunc("/v1/", s.auth(func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	}, "viewer", "support", "gateway"))
	return mux
}

type server struct {
	b      Backend
	tokens []config.Token
	log    *slog.Logger
}

type ctxRole struct{}

// auth checks the bearer token; admin may do everything, other roles only
// what the route lists.
func (s *server) auth(h http.HandlerFunc, roles ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || tok == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="walletguard"`)
			writeErr(w, http.StatusUnauthorized, "missing bearer token")
			return
		}
		role := ""
		for _, t := range s.tokens {
			if subtle.ConstantTimeCompare([]byte(t.Token), []byte(tok)) == 1 {
				role = t.Role
			}
		}
		if role == "" {
			writeErr(w, http.StatusUnauthorized, "unknown token")
			return
		}
		if role != "admin" && !contains(roles, role) {
			writeErr(w, http.StatusForbidden, "role "+role+" may not "+r.Method+" "+r.URL.Path)
			return
		}
		h(w, r)
	}
}

func contains(l []string, v string) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}
	return false
}

func (s *server) account(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.b.Account(r.PathValue("id")))
}

func limitParam(r *http.Request, def int) int {
	if n, err := strconv.Atoi(r.URL.Query().Get("limit")); err == nil && n > 0 && n <= 1000 {
		return n
	}
	return def
}

func (s *server) decisions(w http.ResponseWriter, r *http.Request) {
	ds := s.b.Decisions(r.URL.Query().Get("account_id"), limitParam(r, 100))
	if ds == nil {
		ds = []detector.Decision{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"decisions": ds})
}

func (s *server) alerts(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var out []alerts.Alert
	for _, a := range s.b.Alerts(q.Get("status")) {
		if c := q.Get("category"); c != "" && a.Category != c {
			continue
		}
		if c := q.Get("account_id"); c != "" && a.AccountID != c {
			continue
		}
		if c := q.Get("merchant_id"); c != "" && a.MerchantID != c {
			continue
		}
		out = append(out, a)
	}
	if out == nil {
		out = []alerts.Alert{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"alerts": out})
}

type ruleInfo struct {
	ID          string   `json:"id"`
	Description string   `json:"description"`
	On          []string `json:"on"`
	Score       int      `json:"score"`
	Category    string   `json:"category"`
	Severity    string   `json:"severity"`
	Action      string   `json:"action,omitempty"`
	Mode        string   `json:"mode"`
	Tags        []string `json:"tags,omitempty"`
	File        string   `json:"file"`
}

func (s *server) rules(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, describeSet(s.b.Rules()))
}

func describeSet(set *rules.Set) map[string]any {
	var out []ruleInfo
	for _, r := range set.Rules {
		mode := "enforce"
		if r.Shadow {
			mode = "shadow"
		}
		out = append(out, ruleInfo{ID: r.ID, Description: r.Description, On: r.On, Score: r.Score, Category: r.Category,
			Severity: r.Severity, Action: r.Action, Mode: mode, Tags: r.Tags, File: r.File})
	}
	return map[string]any{"version": set.Version, "rules": out}
}

func (s *server) reload(w http.ResponseWriter, _ *http.Request) {
	set, err := s.b.ReloadRules()
	if err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{
			"error": "rule set refused; the previous one stays live: " + err.Error(), "version": s.b.Rules().Version})
		return
	}
	writeJSON(w, http.StatusOK, describeSet(set))
}

func (s *server) score(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, event.MaxSize+1))
	if err != nil {
		writeErr(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	}
	ev, err := event.Decode(body, time.Now())
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error(), "reason": string(event.ReasonOf(err))})
		return
	}
	d, err := s.b.Score(&ev)
	if err != nil {
		var dup *DuplicateError
		if errors.As(err, &dup) {
			writeErr(w, http.StatusConflict, err.Error())
			return
		}
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// DuplicateError is returned by Backend.Score for an event already scored.
type DuplicateError struct{ EventID string }

func (e *DuplicateError) Error() string { return "event " + e.EventID + " was already scored" }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeErr(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
