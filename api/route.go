package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
)

// Instances that share the partitions (kafka.share_partitions) each decide
// the accounts of their own partitions, and only that instance knows an
// account's automatic freezes, step-ups and 2FA attempts. Any of them
// answers the gateway: one asked about an account it does not decide
// passes the request on to the member that does, found by asking the
// others in turn (a member not deciding it answers 421), and remembered.
// When none does — an account no member has seen, or one idle past the
// detector's expiry — the instance asked answers from its own state.
// Alerts are held where they were raised — an account's where the account
// is decided, those that span accounts by the member deciding partition 0
// — and a call about one alert is passed on the same way. Support's list
// of alerts is gathered from every member.

// routedHeaderValue marks a request passed on by account (or alert): the
// member asked answers it only if it decides the account (holds the
// alert); localHeaderValue one asking for the member's own part of a list.
const (
	routedHeaderValue = "account"
	localHeaderValue  = "local"
)

// routes remembers which member answered for an account, so that the next
// request goes there first; a member that no longer decides it answers 421
// and the account is looked for again.
type routes struct {
	mu sync.Mutex
	m  map[string]string
}

// maxRoutes bounds the memory routes take; past it they are forgotten
// all at once and learnt again.
const maxRoutes = 1 << 16

func (rt *routes) get(account string) string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.m[account]
}

func (rt *routes) set(account, addr string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if addr == "" {
		delete(rt.m, account)
		return
	}
	if rt.m == nil || len(rt.m) >= maxRoutes {
		rt.m = map[string]string{}
	}
	rt.m[account] = addr
}

// Where a request names its account (pathID: or the alert in its path).
func pathID(r *http.Request, _ []byte) string       { return r.PathValue("id") }
func queryAccount(r *http.Request, _ []byte) string { return r.URL.Query().Get("account_id") }
func bodyAccount(_ *http.Request, body []byte) string {
	var e struct {
		AccountID string `json:"account_id"`
	}
	if json.Unmarshal(body, &e) != nil {
		return "" // the handler says what is wrong with it
	}
	return e.AccountID
}

// byAccount sends a request about an account to the member that decides
// it, when members share the partitions.
func (s *server) byAccount(account func(*http.Request, []byte) string, h http.HandlerFunc) http.HandlerFunc {
	return s.routed("account", account, s.b.Decides, h)
}

// byAlert sends a request about the alert in its path to the member that
// holds it, when members share the partitions.
func (s *server) byAlert(h http.HandlerFunc) http.HandlerFunc {
	return s.routed("alert", pathID, s.b.HoldsAlert, h)
}

// routed answers a request here if this member has the thing it names
// (what: "account" or "alert"), or passes it on to the member that has.
func (s *server) routed(what string, named func(*http.Request, []byte) string, has func(string) bool, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var body []byte
		if r.Body != nil && r.Body != http.NoBody {
			var err error
			if body, err = io.ReadAll(r.Body); err != nil {
				writeErr(w, http.StatusRequestEntityTooLarge, "read body: "+err.Error())
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		id := named(r, body)
		if id == "" || has(id) {
			h(w, r)
			return
		}
		switch r.Header.Get(forwardedHeader) {
		case routedHeaderValue:
			writeErr(w, http.StatusMisdirectedRequest, "this instance does not hold "+what+" "+id)
			return
		case "":
		default: // passed on by a standby, which knows no better
			h(w, r)
			return
		}
		peers := s.b.Peers()
		if len(peers) == 0 {
			h(w, r)
			return
		}
		if addr := s.routes.get(id); addr != "" {
			if s.passOn(w, r, body, addr) {
				return
			}
			s.routes.set(id, "")
		}
		for _, addr := range peers {
			if s.passOn(w, r, body, addr) {
				s.routes.set(id, addr)
				return
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		h(w, r)
	}
}

// fromPeers asks every other member sharing the partitions for its own part
// of the list r asks for, and hands each answer's body to add. It asks no
// one when r was itself passed on by a member, or when this member shares
// with none. Members that do not answer are left out (logged).
func (s *server) fromPeers(r *http.Request, add func(body []byte) error) {
	if r.Header.Get(forwardedHeader) != "" {
		return
	}
	for _, addr := range s.b.Peers() {
		resp, err := askMember(r, nil, addr, localHeaderValue)
		if err != nil {
			s.log.Warn("member sharing the partitions did not answer; its part of the list is left out", "addr", addr, "err", err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode == http.StatusOK {
			err = add(body)
		} else if err == nil {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if err != nil {
			s.log.Warn("member sharing the partitions answered no list; its part is left out", "addr", addr, "err", err)
		}
	}
}

// passOn asks the member at addr to answer r, and copies its answer back;
// false, with nothing written, if it does not decide the account or
// cannot be reached. The caller's credentials go with it: the member
// checks them again.
func (s *server) passOn(w http.ResponseWriter, r *http.Request, body []byte, addr string) bool {
	resp, err := askMember(r, body, addr, routedHeaderValue)
	if err != nil {
		s.log.Warn("member sharing the partitions did not answer", "addr", addr, "err", err)
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusMisdirectedRequest {
		_, _ = io.Copy(io.Discard, resp.Body)
		return false
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.Header().Del("Walletguard-Standby")
	w.Header().Set(ForwardedToHeader, addr)
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
	return true
}

// askMember sends r, with body, to the member at addr, with the caller's
// credentials and the forwarded header set to how.
func askMember(r *http.Request, body []byte, addr, how string) (*http.Response, error) {
	out, err := http.NewRequestWithContext(r.Context(), r.Method, "http://"+addr+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	out.Header = r.Header.Clone()
	out.Header.Set(forwardedHeader, how)
	return forwarding.RoundTrip(out)
}
