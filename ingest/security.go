package ingest

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// Security is how walletguard's Kafka clients connect to the brokers: over
// TLS, and logged in with a SASL mechanism. The zero value is plaintext
// without a login (the embedded broker, a local cluster).
type Security struct {
	TLS  *tls.Config
	SASL sasl.Mechanism
}

// NewSecurity is TLS with tlsCfg (nil: none) and a login with mechanism
// (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; empty: none).
func NewSecurity(tlsCfg *tls.Config, mechanism, username, password string) (Security, error) {
	s := Security{TLS: tlsCfg}
	switch mechanism {
	case "":
	case "PLAIN":
		s.SASL = plain.Mechanism{Username: username, Password: password}
	case "SCRAM-SHA-256", "SCRAM-SHA-512":
		algo := scram.SHA256
		if mechanism == "SCRAM-SHA-512" {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, username, password)
		if err != nil {
			return s, fmt.Errorf("kafka sasl %s: %w", mechanism, err)
		}
		s.SASL = m
	default:
		return s, fmt.Errorf("kafka sasl: unknown mechanism %q", mechanism)
	}
	return s, nil
}

// security is process-wide: a process talks to one cluster, and its Kafka
// clients are made in many places — the group, the fetchers, the producer,
// the changelog and tail readers, admin requests.
var (
	security  atomic.Pointer[Security]
	transport atomic.Pointer[kafka.Transport] // shared by requests, pooling their connections
)

// Secure sets how every Kafka client made after it connects. Call it
// before the first one; clients made before keep what they had.
func Secure(s Security) {
	security.Store(&s)
	if old := transport.Swap(newTransport()); old != nil {
		old.CloseIdleConnections()
	}
}

// newTransport makes a kafka-go Transport with the process's security.
func newTransport() *kafka.Transport {
	t := &kafka.Transport{Dial: (&net.Dialer{Timeout: 3 * time.Second}).DialContext, DialTimeout: 3 * time.Second}
	if s := security.Load(); s != nil {
		t.TLS, t.SASL = s.TLS, s.SASL
	}
	return t
}

// requests returns the Transport shared by admin and offset requests.
func requests() *kafka.Transport {
	if t := transport.Load(); t != nil {
		return t
	}
	transport.CompareAndSwap(nil, newTransport())
	return transport.Load()
}

// newClient makes a client for one-off requests to the brokers.
func newClient(brokers []string, timeout time.Duration) *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(brokers...), Transport: requests(), Timeout: timeout}
}

// dialer returns the Dialer for readers and the consumer group: kafka-go's
// default with the process's security.
func dialer() *kafka.Dialer {
	d := &kafka.Dialer{Timeout: 10 * time.Second, DualStack: true}
	if s := security.Load(); s != nil {
		d.TLS, d.SASLMechanism = s.TLS, s.SASL
	}
	return d
}
