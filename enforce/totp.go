package enforce

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"image/png"
	"os"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
)

// TOTP parameters: RFC 6238 as authenticator apps expect them.
const (
	totpPeriod = 30
	totpDigits = otp.DigitsSix
)

var totpAlgo = otp.AlgorithmSHA1

// Sealer encrypts TOTP secrets at rest with AES-256-GCM; the account id is
// bound in as associated data, so a sealed secret moved to another account
// does not open.
type Sealer struct{ aead cipher.AEAD }

// NewSealer makes a sealer from a 32-byte key.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("TOTP key is %d bytes, want 32 (AES-256)", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// LoadKey reads the secret-sealing key from a file or an environment
// variable: 64 hex characters or base64 of 32 bytes. It returns nil (and no
// error) when neither is set.
func LoadKey(file, env string) ([]byte, error) {
	var text, from string
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("TOTP key file: %w", err)
		}
		text, from = string(b), "file "+file
	case env != "" && os.Getenv(env) != "":
		text, from = os.Getenv(env), "environment variable "+env
	default:
		return nil, nil
	}
	text = strings.TrimSpace(text)
	if b, err := hex.DecodeString(text); err == nil && len(b) == 32 {
		return b, nil
	}
	if b, err := base64.StdEncoding.DecodeString(text); err == nil && len(b) == 32 {
		return b, nil
	}
	return nil, fmt.Errorf("TOTP key from %s is not 32 bytes as 64 hex characters or base64", from)
}

// NewKey returns a fresh random key as hex (for `walletguard` to write a
// development key file).
func NewKey() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return hex.EncodeToString(b)
}

func (s *Sealer) seal(account string, secret []byte) []byte {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		panic(err)
	}
	return s.aead.Seal(nonce, nonce, secret, []byte(account))
}

func (s *Sealer) open(account string, sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("sealed TOTP secret is truncated")
	}
	return s.aead.Open(nil, sealed[:n], sealed[n:], []byte(account))
}

// Enrollment is what an account needs to set up its authenticator app.
type Enrollment struct {
	OTPAuthURL string `json:"otpauth_url"`
	QRPNG      []byte `json:"-"`
}

// Errors of 2FA actions; the API maps them to statuses.
var (
	ErrNoKey       = errors.New("two-factor enrollment is not configured: set enforce.totp.key_file or the key environment variable")
	ErrNotEnrolled = errors.New("account has no two-factor enrollment")
	ErrLocked      = errors.New("two-factor verification is locked after too many wrong codes; support must unlock it")
	ErrWrongCode   = errors.New("wrong code")
	ErrReplayed    = errors.New("code already used")
	ErrBadCode     = errors.New("a code is 6 digits")
)

// Enroll creates (or replaces) an account's TOTP secret. The secret leaves
// only inside the otpauth URL and QR code returned here.
func (p *Planner) Enroll(id, actor string, now time.Time) (Enrollment, Change, error) {
	if p.cfg.Sealer == nil {
		return Enrollment{}, Change{}, ErrNoKey
	}
	if s := p.states[id]; s != nil && s.Locked() {
		return Enrollment{}, Change{}, ErrLocked // re-enrolling must not be a way around a lockout
	}
	key, err := totp.Generate(totp.GenerateOpts{Issuer: p.cfg.Issuer, AccountName: id, Period: totpPeriod, Digits: totpDigits, Algorithm: totpAlgo})
	if err != nil {
		return Enrollment{}, Change{}, fmt.Errorf("generate TOTP secret: %w", err)
	}
	img, err := key.Image(256, 256)
	if err != nil {
		return Enrollment{}, Change{}, fmt.Errorf("QR code: %w", err)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return Enrollment{}, Change{}, fmt.Errorf("QR code: %w", err)
	}
	s := p.state(id)
	s.sealed = p.cfg.Sealer.seal(id, []byte(key.Secret()))
	s.TOTPEnrolled, s.EnrolledAt, s.WrongCodes, s.lastStep = true, now.UTC(), 0, 0
	ch := Change{AccountID: id, Audit: []AuditEntry{{At: now.UTC(), Action: "2fa_enroll", Origin: "manual", Actor: actor, AccountID: id, Outcome: "enrolled"}}}
	return Enrollment{OTPAuthURL: key.URL(), QRPNG: buf.Bytes()}, ch, nil
}

// VerifyResult is the outcome of a correct code.
type VerifyResult struct {
	StepUpCleared bool `json:"step_up_cleared"`
}

// Verify checks a code: RFC 6238 with ±1 time step, each step usable once,
// and a lockout after MaxWrongCodes wrong codes in a row (an alert: that
// looks like an attacker). A correct code clears a step-up (clear_2fa).
func (p *Planner) Verify(id, actor, code string, now time.Time) (VerifyResult, Change, error) {
	ch := Change{AccountID: id}
	s := p.states[id]
	if s == nil || !s.TOTPEnrolled {
		p.metrics.verify("not_enrolled")
		return VerifyResult{}, ch, ErrNotEnrolled
	}
	if s.Locked() {
		p.metrics.verify("locked")
		return VerifyResult{}, ch, ErrLocked
	}
	code = strings.TrimSpace(code)
	if len(code) != 6 || strings.Trim(code, "0123456789") != "" {
		p.metrics.verify("malformed")
		return VerifyResult{}, ch, ErrBadCode
	}
	if p.cfg.Sealer == nil {
		return VerifyResult{}, ch, ErrNoKey
	}
	secret, err := p.cfg.Sealer.open(id, s.sealed)
	if err != nil {
		return VerifyResult{}, ch, fmt.Errorf("open TOTP secret of %s: %w", id, err)
	}
	step := now.Unix() / totpPeriod
	matched, replay := int64(0), false
	for _, st := range []int64{step - 1, step, step + 1} {
		want, err := totp.GenerateCodeCustom(string(secret), time.Unix(st*totpPeriod, 0),
			totp.ValidateOpts{Period: totpPeriod, Digits: totpDigits, Algorithm: totpAlgo})
		if err != nil {
			return VerifyResult{}, ch, fmt.Errorf("compute TOTP code: %w", err)
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 {
			if st <= s.lastStep {
				replay = true
				continue
			}
			matched = st
		}
	}
	p.dirty[id] = true
	if matched == 0 {
		s.WrongCodes++
		outcome, verr := "wrong", error(ErrWrongCode)
		if replay {
			outcome, verr = "replayed", ErrReplayed
		}
		p.metrics.verify(outcome)
		ch.Audit = append(ch.Audit, AuditEntry{At: now.UTC(), Action: "2fa_verify_failed", Origin: "manual", Actor: actor, AccountID: id,
			Outcome: fmt.Sprintf("%s (%d in a row)", outcome, s.WrongCodes)})
		if s.WrongCodes >= p.cfg.MaxWrongCodes {
			s.LockedAt = now.UTC()
			p.metrics.lockout()
			ch.Audit = append(ch.Audit, AuditEntry{At: now.UTC(), Action: "2fa_locked", Origin: "auto", Actor: Auto, AccountID: id,
				Reason: fmt.Sprintf("%d wrong codes in a row", s.WrongCodes)})
			ch.Alerts = append(ch.Alerts, SystemAlert{Key: "2fa_lockout|account:" + id, Category: "2fa_lockout", Severity: "high",
				AccountID: id, At: now.UTC(),
				Reason: fmt.Sprintf("%d wrong codes in a row for %s: someone without the authenticator is trying to pass the step-up", s.WrongCodes, id)})
		}
		return VerifyResult{}, ch, verr
	}
	s.lastStep, s.WrongCodes, s.LastVerified = matched, 0, now.UTC()
	p.metrics.verify("ok")
	res := VerifyResult{}
	if s.StepUp {
		s.StepUp, s.StepUpReason, s.StepUpAt = false, "", time.Time{}
		res.StepUpCleared = true
		ch = p.manual(ch, CmdClear2FA, actor, "correct two-factor code", now)
	} else {
		ch.Audit = append(ch.Audit, AuditEntry{At: now.UTC(), Action: "2fa_verify", Origin: "manual", Actor: actor, AccountID: id, Outcome: "ok"})
	}
	return res, ch, nil
}

// Unlock2FA lifts a verification lockout (support, after verifying the owner).
func (p *Planner) Unlock2FA(id, actor, reason string, now time.Time) (Change, error) {
	s := p.states[id]
	if s == nil || !s.Locked() {
		return Change{}, fmt.Errorf("two-factor verification of %s is not locked: %w", id, ErrNotFound)
	}
	p.dirty[id] = true
	s.LockedAt, s.WrongCodes = time.Time{}, 0
	return Change{AccountID: id, Audit: []AuditEntry{{At: now.UTC(), Action: "2fa_unlock", Origin: "manual", Actor: actor, AccountID: id, Reason: reason, Outcome: "done"}}}, nil
}
