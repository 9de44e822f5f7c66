package app

import (
	"fmt"
	"log/slog"

	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/ingest"
)

// SecureKafka makes every Kafka client of this process connect to
// kafka.brokers as kafka.tls and kafka.sasl say. The embedded broker,
// used when there are no brokers, speaks plaintext.
func SecureKafka(cfg config.Config, log *slog.Logger) error {
	k := cfg.Kafka
	if len(k.Brokers) == 0 {
		ingest.Secure(ingest.Security{})
		return nil
	}
	tlsCfg, err := k.TLS.Client()
	if err != nil {
		return fmt.Errorf("kafka.%w", err)
	}
	sec, err := ingest.NewSecurity(tlsCfg, k.SASL.Mechanism, k.SASL.Username, k.SASL.Password)
	if err != nil {
		return err
	}
	if k.SASL.Mechanism == "PLAIN" && !k.TLS.Enabled {
		log.Warn("kafka.sasl PLAIN without kafka.tls: the password crosses the network in clear text")
	}
	if k.TLS.InsecureSkipVerify {
		log.Warn("kafka.tls.insecure_skip_verify: the brokers' certificates are not checked")
	}
	ingest.Secure(sec)
	return nil
}
