// Package ingest owns the way events enter walletguard: the Kafka consumer
// group (kafka-go, one fetcher per assigned partition), offset tracking that
// commits only what downstream has made durable, the dead-letter topic for
// rejected input, the producer for walletguard's own records, and the embedded
// Kafka-protocol broker used when no cluster is configured. It decodes bytes
// through package event and hands records on; it knows nothing of rules,
// state or actions.
package ingest
