package outbox

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// SignatureHeader carries the HMAC signature of a webhook body (CONTRACT §2).
const SignatureHeader = "Walletguard-Signature"

// Sign returns the signature header value for body at time t:
// "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">".
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte("."))
	m.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

// Poster sends signed JSON to one URL and classifies the answer for Deliver:
// 2xx is delivered; 408, 429, 5xx and network errors are retried (honouring
// Retry-After); any other status is a permanent refusal.
type Poster struct {
	URL, Secret string
	Client      *http.Client
	// Header adds headers to each request (e.g. the record's id).
	Header func(it *Item, h http.Header)
}

// Send posts the item's payload.
func (p *Poster) Send(ctx context.Context, it *Item) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL, bytes.NewReader(it.Payload))
	if err != nil {
		return &PermanentError{Err: fmt.Errorf("request for %s: %w", p.URL, err)}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", it.ID)
	if p.Secret != "" {
		req.Header.Set(SignatureHeader, Sign(p.Secret, time.Now(), it.Payload))
	}
	if p.Header != nil {
		p.Header(it, req.Header)
	}
	c := p.Client
	if c == nil {
		c = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("post %s: %w", p.URL, err)
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		return nil
	case code == http.StatusTooManyRequests || code == http.StatusRequestTimeout || code >= 500:
		err := fmt.Errorf("post %s: %s: %s", p.URL, resp.Status, bytes.TrimSpace(snippet))
		if d, ok := retryAfter(resp.Header.Get("Retry-After")); ok {
			return &RetryAfterError{After: d, Err: err}
		}
		return err
	default:
		return &PermanentError{Err: fmt.Errorf("post %s: refused: %s: %s", p.URL, resp.Status, bytes.TrimSpace(snippet))}
	}
}

// retryAfter parses Retry-After as seconds or an HTTP date.
func retryAfter(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0), true
	}
	return 0, false
}
