// Command walletguard is the wallet account-protection daemon and its tools:
// run (the daemon), demo, replay, rules check|test, config check, changelog
// status, sim, version.
package main

import (
	"fmt"
	"os"
)

const usage = `walletguard protects wallet accounts in real time.

Usage:
  walletguard run [--config FILE]          the daemon
  walletguard demo [--accounts N]          the daemon plus generated traffic with incidents
  walletguard replay FILE --out DIR        score NDJSON events without Kafka (backtest);
                                           --from-clickhouse 168h: the live traffic ClickHouse stored
  walletguard eval [--seeds 1,2,3]         detection quality on labelled generated traffic
  walletguard bench [--accounts N]         throughput and latency through Kafka, state per account
  walletguard rules check FILE...          validate rule files
  walletguard rules test DIR               run rule test cases
  walletguard config check FILE            validate a config file
  walletguard changelog status             what kafka.changelog_topic holds for a restore
  walletguard dlq [--since 2h --export F]  what the dead-letter topic holds, by fault; export to fix and resend
  walletguard sim [--accounts N --days D]  generate wallet traffic as NDJSON
  walletguard broker [--listen ADDR]       only the embedded Kafka-protocol broker (development; --tls-cert, --sasl-user)
  walletguard version                      build information
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	os.Exit(dispatch(os.Args[1], os.Args[2:]))
}

func dispatch(cmd string, args []string) int {
	switch cmd {
	case "run":
		return cmdRun(args)
	case "demo":
		return cmdDemo(args)
	case "replay":
		return cmdReplay(args)
	case "eval":
		return cmdEval(args)
	case "bench":
		return cmdBench(args)
	case "rules":
		return cmdRules(args)
	case "config":
		return cmdConfig(args)
	case "dlq":
		return cmdDLQ(args)
	case "changelog":
		return cmdChangelog(args)
	case "sim":
		return cmdSim(args)
	case "broker":
		return cmdBroker(args)
	case "version", "--version":
		return cmdVersion()
	case "help", "-h", "--help":
		fmt.Print(usage)
		return 0
	}
	fmt.Fprintf(os.Stderr, "walletguard: unknown command %q\n\n%s", cmd, usage)
	return 2
}
