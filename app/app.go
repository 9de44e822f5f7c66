// Package app is the one place that wires walletguard's packages together:
// ingest -> detector (rules) -> enforce / alerts -> Kafka, plus the HTTP API,
// the embedded broker and the state store. New builds everything, Run blocks
// until its context ends and then shuts down in order within a bounded time.
// Tests start the whole daemon in-process through it.
package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	gojson "github.com/goccy/go-json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"
	bolt "go.etcd.io/bbolt"

	"github.com/walletguard/walletguard/alerts"
	"github.com/walletguard/walletguard/api"
	"github.com/walletguard/walletguard/config"
	"github.com/walletguard/walletguard/detector"
	"github.com/walletguard/walletguard/enforce"
	"github.com/walletguard/walletguard/event"
	"github.com/walletguard/walletguard/ingest"
	"github.com/walletguard/walletguard/outbox"
	"github.com/walletguard/walletguard/rules"
	"github.com/walletguard/walletguard/store"
)

// App is a running walletguard.
type App struct {
	cfg      config.Config
	log      *slog.Logger
	reg      *prometheus.Registry
	broker   *ingest.EmbeddedBroker
	brokers  []string
	store    *detector.Store
	proc     *Processor
	procMu   sync.Mutex // the pipeline holds it per batch; the API briefly
	source   *ingest.Source
	producer *ingest.Producer
	imet     *ingest.Metrics
	dmet     *detector.Metrics
	amet     *appMetrics
	emet     *enforce.Metrics
	box      *outbox.Box
	dlv      *deliveryMetrics
	sink     *store.Writer // nil without clickhouse.addr
	logLevel *slog.LevelVar
	// writeMu orders writes to the store: a manual action waits for a
	// checkpoint being written, so its newer state lands after the older.
	writeMu sync.Mutex
	// spoolAlerted is set once the analytics spool alert went out (pipeline only).
	spoolAlerted bool
	tpl          *alerts.Templates
	alertQ       *queue[alerts.Alert]    // alert records waiting for the next checkpoint to enter the outbox
	receivers    map[string]*http.Client // by outbox destination: the webhooks' and the account service's clients
	// direct records the alerts a manual action wrote straight to the
	// outbox, so that an older version of one, still waiting for (or
	// retrying) its checkpoint, is not delivered after the newer one.
	direct directAlerts
	rates  map[string]rateWindow // per receiver; touched under procMu
	// deliveryBackoff is the first retry delay of alert delivery;
	// digestEvery how often rate-limited receivers get their digest.
	deliveryBackoff, digestEvery time.Duration
	http                         *http.Server
	httpLn                       net.Listener
	recent                       *recentDecisions
	stats                        minuteStats
	scores                       *queue[ingest.Message]
	// startAt is where the state taken at start, or restored from the
	// changelog on taking over (restores), was taken: where partitions
	// assigned start.
	startAt  atomic.Pointer[detector.Offsets]
	restores chan *clogRestore // from the source's Assigning to the pipeline
	owned    atomic.Bool       // partitions were assigned, their state settled
	// restoring: a restore on taking over is under way; the API refuses
	// changes, which would go to the state being replaced.
	restoring atomic.Bool
	ownerSeen atomic.Pointer[seenAt[string]]   // the owner's API address, as a standby last looked it up
	peersSeen atomic.Pointer[seenAt[[]string]] // the other sharing members' API addresses, as last looked up
	ckptErr   atomic.Value                     // string: why the last checkpoint failed, "" if fine
	held      atomic.Int64                     // accounts in state at the last checkpoint, for the group balancer
	followed  Outputs                          // a standby's outputs, dropped (pipeline only)
	learned   []learnedOutput                  // alerts and commands a standby learned of by following (takeover.go; pipeline only)
	owed      *owedOutbox                      // the previous owner's undelivered records, restored (takeover.go; pipeline only)

	// Manual actions (manual.go): next is the pipeline's handled position,
	// read by the API under procMu; manualIn what the actions topic's
	// reader brought, manualPending what waits for its place (pipeline only).
	next          map[string]map[int]int64
	manualMu      sync.Mutex
	manualIn      []manualAction
	actionsRead   map[int]int64            // per partition of the actions topic, the next offset to read (under manualMu)
	actionsReadAt atomic.Int64             // unix ns when the actions topic was last known read to its end
	handoverAt    map[string]map[int]int64 // where owners that handed over stopped (under manualMu; takeover.go)
	handedOverTo  map[string]map[int]int64 // handovers taken with partitions, until takeOver weighs them (under manualMu)
	// durable: the offsets of the last checkpoint written; every output of
	// the events before them is in Kafka or the outbox.
	durable atomic.Pointer[detector.Offsets]
	// stopping: Run's context ended; the API refuses changes, which could
	// no longer reach the actions topic before the handover.
	stopping      atomic.Bool
	manualWaiting atomic.Bool
	manualPending []manualAction
	observer      func(Outputs)

	clog  *changelog // nil without kafka.changelog_topic
	share *sharing   // nil unless kafka.share_partitions
	spans *spanning  // nil unless kafka.share_partitions

	reloadMu sync.Mutex
	cleanup  []func()
}

type appMetrics struct {
	checkpoints    prometheus.Counter
	checkpointErrs prometheus.Counter
	checkpointSecs prometheus.Histogram
	// captureSecs is how long the pipeline stops to copy a checkpoint.
	captureSecs prometheus.Histogram
	// checkpointsDeferred counts checkpoints put off because the previous
	// write was still running.
	checkpointsDeferred prometheus.Counter
	// pipelineBusy is the time the pipeline spends deciding, rather than
	// waiting for events or for its outputs to be written (pipelineWait).
	pipelineBusy        prometheus.Counter
	pipelineWait        prometheus.Counter
	reloadOK            prometheus.Gauge
	reloads             *prometheus.CounterVec
	commands            *prometheus.CounterVec
	alertsRaised        *prometheus.CounterVec
	alertsRedelivered   prometheus.Counter
	commandsRedelivered prometheus.Counter
	outboxRestored      *prometheus.CounterVec
	auditPruned         prometheus.Counter
	deadPruned          prometheus.Counter
	manualAdopted       prometheus.Counter
	manualRead          prometheus.Counter
	spanningLead        prometheus.Gauge
	findings            *prometheus.CounterVec
	takeovers           *prometheus.CounterVec
	watermark           prometheus.Gauge
	lastCheckpoint      prometheus.Gauge
	changelogRecords    prometheus.Counter
	changelogErrs       prometheus.Counter
	changelogRestores   *prometheus.CounterVec
}

func newAppMetrics(reg prometheus.Registerer) *appMetrics {
	f := promauto.With(reg)
	m := &appMetrics{
		checkpoints: f.NewCounter(prometheus.CounterOpts{Name: "walletguard_checkpoints_total", Help: "State checkpoints written."}),
		checkpointErrs: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_checkpoint_errors_total", Help: "State checkpoints that failed (offsets are not committed until one succeeds).",
		}),
		checkpointsDeferred: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_checkpoints_deferred_total", Help: "Checkpoints put off to a later batch because the previous one was still being written.",
		}),
		pipelineBusy: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_pipeline_busy_seconds_total",
			Help: "Time the pipeline, which decides every event on one goroutine, spent working rather than waiting for events or outputs; a rate near 1 means it is saturated.",
		}),
		pipelineWait: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_pipeline_output_wait_seconds_total",
			Help: "Time the pipeline waited for earlier outputs to be written to Kafka before deciding more: the writes, not the deciding, held it back.",
		}),
		checkpointSecs: f.NewHistogram(prometheus.HistogramOpts{
			Name: "walletguard_checkpoint_seconds", Help: "Time to write a state checkpoint.", Buckets: prometheus.ExponentialBuckets(0.001, 3, 10),
		}),
		captureSecs: f.NewHistogram(prometheus.HistogramOpts{
			Name: "walletguard_checkpoint_capture_seconds", Help: "Time the pipeline stops deciding to copy what a checkpoint writes.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 3, 10),
		}),
		reloadOK: f.NewGauge(prometheus.GaugeOpts{
			Name: "walletguard_rules_last_reload_successful", Help: "1 if the last rule reload succeeded, 0 if it was refused.",
		}),
		reloads: f.NewCounterVec(prometheus.CounterOpts{Name: "walletguard_rules_reloads_total", Help: "Rule reloads by result."}, []string{"result"}),
		commands: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_account_commands_total", Help: "Account commands issued, by command.",
		}, []string{"command"}),
		alertsRaised: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_alerts_total", Help: "Alert records emitted (new or changed), by category and severity.",
		}, []string{"category", "severity"}),
		alertsRedelivered: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_alerts_redelivered_total",
			Help: "Alerts a standby learned of by following and delivered again when it took the partitions over (alerts.takeover_redeliver).",
		}),
		commandsRedelivered: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_commands_redelivered_total",
			Help: "Commands a standby learned of by following (for the account service, and those of manual actions also for the commands topic) and delivered again when it took the partitions over (alerts.takeover_redeliver).",
		}),
		auditPruned: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_audit_entries_pruned_total",
			Help: "Audit entries deleted from the local trail (and the changelog) once older than enforce.audit_retention; ClickHouse keeps them.",
		}),
		deadPruned: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_dead_letters_pruned_total",
			Help: "Records given up on deleted from the dead-letter list (and the changelog) once older than alerts.dead_letter_retention.",
		}),
		outboxRestored: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_outbox_restored_total",
			Help: "Records the previous owner's outbox still held (alerts, commands, manual actions), restored from kafka.changelog_topic and delivered again on taking its partitions over, by destination.",
		}, []string{"destination"}),
		manualAdopted: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_manual_actions_adopted_total",
			Help: "Manual actions made on another instance (freezes, unfreezes, 2FA, alert and breaker changes) adopted from kafka.actions_topic.",
		}),
		spanningLead: f.NewGauge(prometheus.GaugeOpts{
			Name: "walletguard_spanning_alerts_lead",
			Help: "1 while this member raises the alerts that span accounts (it decides partition 0 of instances sharing the partitions).",
		}),
		findings: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_findings_read_total",
			Help: "Findings that span accounts read from kafka.findings_topic by the lead: folded into alerts, or a repeat of a decision made again after a takeover.",
		}, []string{"result"}),
		manualRead: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_manual_actions_read_total",
			Help: "Records read from kafka.actions_topic, this instance's own included; each is adopted once its place is reached, or skipped if not newer.",
		}),
		takeovers: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_takeovers_total",
			Help: "Partitions this instance took over after following them as a standby, by whether the previous owner handed them over (a planned stop) or not (a crash, or a stop with deliveries pending).",
		}, []string{"handover"}),
		watermark: f.NewGauge(prometheus.GaugeOpts{
			Name: "walletguard_watermark_seconds", Help: "Event-time watermark as Unix seconds.",
		}),
		lastCheckpoint: f.NewGauge(prometheus.GaugeOpts{
			Name: "walletguard_last_checkpoint_timestamp_seconds", Help: "Wall-clock time of the last checkpoint written, as Unix seconds.",
		}),
		changelogRecords: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_changelog_records_total", Help: "State records published to kafka.changelog_topic with checkpoints, markers not counted.",
		}),
		changelogErrs: f.NewCounter(prometheus.CounterOpts{
			Name: "walletguard_changelog_errors_total",
			Help: "Checkpoints the changelog could not take; offsets wait for the next that it takes, which carries the whole state.",
		}),
		changelogRestores: f.NewCounterVec(prometheus.CounterOpts{
			Name: "walletguard_changelog_restores_total",
			Help: "States restored from kafka.changelog_topic, by why: empty (no local checkpoint), newer (the changelog was ahead of it at start), takeover (a standby that does not follow, taking partitions over).",
		}, []string{"why"}),
	}
	for _, why := range []string{"empty", "newer", "takeover"} {
		m.changelogRestores.WithLabelValues(why)
	}
	m.reloadOK.Set(1)
	for _, c := range []string{enforce.CmdFreeze, enforce.CmdRequire2FA, enforce.CmdUnfreeze, enforce.CmdClear2FA} {
		m.commands.WithLabelValues(c)
	}
	m.takeovers.WithLabelValues("yes")
	m.takeovers.WithLabelValues("no")
	return m
}

// Options are what tests and the demo can change beyond the config file.
type Options struct {
	// Observer, if set, sees every batch of outputs after it is durable (the demo prints from it).
	Observer func(Outputs)
	// DeliveryBackoff and DigestEvery shorten alert delivery's timings (tests).
	DeliveryBackoff, DigestEvery time.Duration
	// LogLevel, if set, is switchable at runtime through PUT /v1/log/level.
	LogLevel *slog.LevelVar
	// Version is the build's version for walletguard_build_info.
	Version string
}

// New builds the daemon from a validated config. Nothing runs until Run.
func New(cfg config.Config, log *slog.Logger, opts Options) (_ *App, err error) {
	a := &App{cfg: cfg, log: log, reg: prometheus.NewRegistry(), recent: newRecent(10000), observer: opts.Observer,
		scores: newQueue[ingest.Message](), alertQ: newQueue[alerts.Alert](), rates: map[string]rateWindow{},
		deliveryBackoff: cmp.Or(opts.DeliveryBackoff, time.Second), digestEvery: cmp.Or(opts.DigestEvery, time.Minute)}
	defer func() {
		if err != nil {
			a.runCleanup() // close what was opened before the error
		}
	}()
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerBuildInfo(a.reg, cmp.Or(opts.Version, "dev"))
	a.logLevel = opts.LogLevel
	a.imet = ingest.NewMetrics(a.reg)
	a.dmet = detector.NewMetrics(a.reg)
	a.amet = newAppMetrics(a.reg)
	a.emet = enforce.NewMetrics(a.reg)
	a.ckptErr.Store("")

	if err := SecureKafka(cfg, log); err != nil {
		return nil, err
	}
	if a.receivers, err = receiverClients(cfg); err != nil {
		return nil, err
	}
	set, err := rules.Load(cfg.Rules.Paths)
	if err != nil {
		return nil, fmt.Errorf("load rules: %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	registerDiskMetrics(a.reg, cfg.DataDir)
	a.store, err = detector.OpenStore(filepath.Join(cfg.DataDir, "state"))
	if err != nil {
		return nil, err
	}
	a.store.SetLogger(log)
	registerStateFileMetrics(a.reg, a.store)
	a.cleanup = append(a.cleanup, func() { a.store.Close() })

	a.box, err = outbox.Open(a.store.DB())
	if err != nil {
		return nil, err
	}
	a.dlv = newDeliveryMetrics(a.reg, a.box)
	a.box.OnDead(a.deadLettered)
	if a.tpl, err = alerts.LoadTemplates(cfg.Alerts.TemplatesDir); err != nil {
		return nil, err
	}
	for i, w := range cfg.Alerts.Webhooks {
		if !a.tpl.Has(w.Language) {
			return nil, fmt.Errorf("alerts.webhooks[%d].language: no templates for %q (have %v)", i, w.Language, a.tpl.Languages())
		}
	}
	a.proc = NewProcessor(cfg, set, a.dmet, log)
	a.proc.Alerts.SetTemplates(a.tpl)
	registerHeldAlerts(a)
	if err := a.openSink(); err != nil {
		return nil, err
	}
	pc := PlannerConfig(cfg)
	key, err := enforce.LoadKey(cfg.Enforce.TOTP.KeyFile, cfg.Enforce.TOTP.KeyEnv)
	if err != nil {
		return nil, err
	}
	if key != nil {
		if pc.Sealer, err = enforce.NewSealer(key); err != nil {
			return nil, err
		}
	}
	if cfg.Enforce.AccountService.URL != "" {
		pc.Forward = func(tx *bolt.Tx, c enforce.Command) error {
			b, err := gojson.Marshal(&c)
			if err != nil {
				return err
			}
			return a.box.Put(tx, destAccountService, c.CommandID, b, time.Now())
		}
	}
	a.brokers = cfg.Kafka.Brokers
	if len(a.brokers) == 0 {
		topics := append([]string{cfg.Kafka.DLQTopic, cfg.Kafka.DecisionsTopic, cfg.Kafka.CommandsTopic}, cfg.Kafka.Topics...)
		if cfg.Kafka.ActionsTopic != "" {
			topics = append(topics, cfg.Kafka.ActionsTopic)
		}
		if cfg.Kafka.SharePartitions {
			topics = append(topics, cfg.Kafka.FindingsTopic)
		}
		a.broker, err = ingest.StartEmbedded(ingest.EmbeddedConfig{Listen: cfg.Kafka.EmbeddedListen, Dir: filepath.Join(cfg.DataDir, "broker"),
			Partitions: cfg.Kafka.EmbeddedPartitions, Topics: topics}, log)
		if err != nil {
			return nil, err
		}
		a.cleanup = append(a.cleanup, a.broker.Close)
		a.brokers = []string{a.broker.Addr()}
	}
	a.producer = ingest.NewProducer(a.brokers, a.imet, log)
	if err := a.producer.Compress(cfg.Kafka.Compression); err != nil {
		return nil, fmt.Errorf("kafka.compression: %w", err)
	}
	a.cleanup = append(a.cleanup, func() { a.producer.Close() })
	if cfg.Kafka.ChangelogTopic != "" {
		a.clog = &changelog{topic: cfg.Kafka.ChangelogTopic}
		pc.Changelog = a.clog.noteState
		pc.Audited = a.clog.noteAudit
		a.proc.Alerts.SetChangelog(a.clog.noteAlert)
		a.box.OnChange(a.clog.noteOutbox)
	}
	a.proc.Planner = enforce.NewPlanner(pc, a.emet)
	offsets, err := a.proc.Engine.Restore(a.store)
	if err != nil {
		return nil, fmt.Errorf("%w (move %s aside to start from the consumer group's offsets with empty state)", err, a.store.DB().Path())
	}
	if cfg.Kafka.SharePartitions {
		if a.clog == nil {
			return nil, errors.New("kafka.share_partitions: needs kafka.changelog_topic, through which a partition's state moves to its next owner")
		}
		if a.share, err = openSharing(a.store.DB()); err != nil {
			return nil, err
		}
		a.clog.salt = a.share.salt
		a.spans = &spanning{wake: make(chan struct{}, 1), seen: map[string]struct{}{}}
		if err := a.store.DB().View(func(tx *bolt.Tx) (err error) {
			a.spans.stored, err = loadFindings(tx)
			return err
		}); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		a.proc.Alerts.SetSplit(true)
		// With nothing of its own, the first partitions this member gains
		// bring the entity state too (restoreShared).
		a.share.cold.Store(len(offsets) == 0 && len(a.share.local) == 0)
		// A partition's state comes from the changelog when this member
		// gains it (ownsShared), and a new epoch begins: the changelog's
		// earlier epochs of this member say nothing of which partitions
		// they hold whole from where.
		if err := a.openChangelog(true); err != nil {
			return nil, err
		}
	} else if a.clog != nil {
		if err := a.openChangelog(offsets == nil); err != nil {
			return nil, err
		}
		restored, err := a.restoreChangelog(context.Background(), offsets)
		if err != nil {
			return nil, fmt.Errorf("restore from %s: %w (to start with the local state, or empty, instead, point kafka.changelog_topic at a new topic)", cfg.Kafka.ChangelogTopic, err)
		}
		if restored != nil {
			offsets = restored
		}
	}
	if !cfg.Kafka.StandbyFollow && a.clog == nil {
		log.Warn("kafka.standby_follow is off and there is no changelog: if this instance stands by and takes over, it decides with the state it started with (docs/scaling.md)")
	}
	a.startAt.Store(&offsets)
	a.restores = make(chan *clogRestore)
	enrolled, err := a.proc.Planner.Load(a.store.DB())
	if err != nil {
		return nil, fmt.Errorf("restore account states: %w", err)
	}
	if enrolled > 0 && pc.Sealer == nil {
		return nil, fmt.Errorf("%d accounts have sealed TOTP secrets but no key is configured: set enforce.totp.key_file or $%s", enrolled, cfg.Enforce.TOTP.KeyEnv)
	}
	if err := a.proc.Alerts.Load(a.store.DB()); err != nil {
		return nil, fmt.Errorf("restore alerts: %w", err)
	}
	if offsets != nil {
		st := a.proc.Engine.Stats()
		a.held.Store(int64(st.Accounts))
		log.Info("restored checkpoint", "accounts", st.Accounts, "timers", st.Timers, "watermark", a.proc.Engine.Watermark())
	}

	scfg := ingest.SourceConfig{
		Brokers: a.brokers, Topics: cfg.Kafka.Topics, GroupID: cfg.Kafka.GroupID,
		SessionTimeout: cfg.Kafka.SessionTimeout.D(), CommitInterval: cfg.Kafka.CommitInterval.D(),
		StartOffset: func(topic string, partition int, committed int64) int64 {
			// Resume from the checkpoint: the state on disk includes exactly
			// the events before it. Commits never pass the checkpoint, so it
			// is at or ahead of the committed offset unless another instance
			// owned the partition meanwhile.
			if ck, ok := (*a.startAt.Load())[topic][partition]; ok && (committed < 0 || ck >= committed) {
				return ck
			}
			return committed
		},
		Held:       a.held.Load,
		Follow:     cfg.Kafka.StandbyFollow,
		HandedOver: a.handedOver,
		Assigning:  a.restoreOnTakeover,
		Advertise:  a.advertise,
		Skew:       cfg.Kafka.PartitionSkew.D(),
	}
	if scfg.Skew == 0 {
		scfg.Skew = -1 // configured off
	}
	if a.share != nil {
		scfg.Share, scfg.Follow, scfg.Assigning = true, false, nil
		scfg.Owns, scfg.StartOffset, scfg.ObserveFrom, scfg.Revoked = a.ownsShared, a.startOffset, a.observeFrom, a.revoked
	}
	a.source = ingest.NewSource(scfg, a.imet, log)

	a.httpLn, err = net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		return nil, fmt.Errorf("http listen %s: %w", cfg.HTTP.Listen, err)
	}
	a.cleanup = append(a.cleanup, func() { a.httpLn.Close() })
	a.http = &http.Server{Handler: api.New(a.apiBackend(), cfg.HTTP.Tokens, a.reg, log), ReadHeaderTimeout: 10 * time.Second}
	return a, nil
}

// BrokerAddr is the Kafka bootstrap address in use (the embedded broker's if any).
func (a *App) BrokerAddr() string { return a.brokers[0] }

// HTTPAddr is the address the API listens on.
func (a *App) HTTPAddr() string { return a.httpLn.Addr().String() }

// advertise is where the other instances of the group reach this one's API
// (http.advertise): by default the address it listens on, when that names
// a host; "" when it listens on every interface and was not told which.
func (a *App) advertise() string {
	if a.cfg.HTTP.Advertise != "" {
		return a.cfg.HTTP.Advertise
	}
	if a.httpLn == nil {
		return ""
	}
	addr := a.httpLn.Addr().String()
	if host, _, err := net.SplitHostPort(addr); err != nil || host == "" || net.ParseIP(host).IsUnspecified() {
		return ""
	}
	return addr
}

// Registry is the daemon's Prometheus registry.
func (a *App) Registry() *prometheus.Registry { return a.reg }

func (a *App) runCleanup() {
	for i := len(a.cleanup) - 1; i >= 0; i-- {
		a.cleanup[i]()
	}
	a.cleanup = nil
}

// Run serves until ctx is cancelled, then stops fetching, finishes the events
// in flight, checkpoints, commits and returns within the shutdown timeout.
func (a *App) Run(ctx context.Context) error {
	defer a.runCleanup()
	go func() {
		if err := a.http.Serve(a.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("http server stopped", "err", err)
		}
	}()
	if a.cfg.Rules.Watch && len(a.cfg.Rules.Paths) > 0 {
		go a.watchRules(ctx)
	}
	// Deliveries outlive ctx: on a graceful stop they go on until the
	// handover below, so that what the last events raised goes out now.
	deliverCtx, stopDeliveries := context.WithCancel(context.Background())
	defer stopDeliveries()
	go a.deliverCommands(deliverCtx)
	a.deliverManual(deliverCtx)
	go a.deliverAlerts(deliverCtx)
	go func() {
		a.pruneAudit(time.Now())
		a.pruneDead(time.Now())
		every(ctx, time.Hour, func() {
			a.pruneAudit(time.Now())
			a.pruneDead(time.Now())
		})
	}()
	srcDone := make(chan error, 1)
	go func() { srcDone <- a.source.Run(ctx) }()
	a.log.Info("walletguard running", "kafka", a.brokers, "topics", a.cfg.Kafka.Topics, "http", a.HTTPAddr(),
		"rules", a.proc.Engine.Rules().Version)

	// The pipeline drains Records until the source closes it, which it does
	// only after its fetchers stopped; events in flight are finished. Its
	// writes retry for as long as it takes while running, and until the
	// shutdown timeout once stopping: what is not written by then is not
	// checkpointed, so it is redelivered on the next start.
	writeCtx, stopWrites := context.WithCancel(context.Background())
	defer stopWrites()
	stopAfter := context.AfterFunc(ctx, func() {
		a.stopping.Store(true)
		time.AfterFunc(a.cfg.Kafka.ShutdownTimeout.D(), stopWrites)
	})
	defer stopAfter()
	scoresDone := make(chan struct{})
	go func() { a.publishScores(ctx, writeCtx); close(scoresDone) }()
	pipeErr := a.pipeline(writeCtx, a.source.Records())
	if a.spans != nil {
		a.procMu.Lock()
		if a.spans.stop != nil {
			a.spans.stop() // the findings tail: nothing folds them any more
		}
		a.procMu.Unlock()
	}
	<-scoresDone
	srcErr := <-srcDone

	if pipeErr == nil && srcErr == nil {
		// A third of the shutdown timeout, from its own clock: leaving the
		// group below must keep its whole timeout to commit.
		hoCtx, hoCancel := context.WithTimeout(context.Background(), a.cfg.Kafka.ShutdownTimeout.D()/3)
		a.handOver(hoCtx)
		hoCancel()
	}
	stopDeliveries()
	stopCtx, cancel := context.WithTimeout(context.Background(), a.cfg.Kafka.ShutdownTimeout.D())
	defer cancel()
	if err := a.source.Close(stopCtx); err != nil {
		a.log.Warn("leaving consumer group", "err", err)
	}
	if err := a.http.Shutdown(stopCtx); err != nil {
		a.log.Warn("http shutdown", "err", err)
	}
	if a.sink != nil {
		if err := a.sink.Close(stopCtx); err != nil {
			a.log.Warn("analytics rows not all written at shutdown; the events behind them are read again at the next start", "err", err)
		}
	}
	a.log.Info("walletguard stopped")
	return errors.Join(pipeErr, srcErr)
}

// prepareCheckpoint captures everything a checkpoint writes: the account
// security states, alerts and their deliveries, and the detection state
// with the offsets, in the order they are written. Called with procMu held.
// The detection state is only begun: its rows are copied by the pipeline
// between events (copyCheckpoint) before the write starts.
// A retry passes the failed checkpoint's work: its detection state and
// offsets are written as captured (only the pipeline changes them), the
// rest is captured afresh, since a manual action may have changed it since.
func (a *App) prepareCheckpoint(offsets detector.Offsets, retry *ckptWork) (*ckptWork, error) {
	w := &ckptWork{offsets: offsets, watermark: a.proc.Engine.Watermark()}
	if a.clog != nil && retry == nil {
		// First: a new epoch marks the whole state changed, for the
		// captures below.
		w.epoch, w.seq = a.clog.next(a.proc)
		if a.share != nil {
			w.parts = a.share.capture(w.seq)
		}
	}
	a.held.Store(int64(a.proc.Engine.Stats().Accounts))
	undo := func() {
		for _, u := range w.undo {
			u()
		}
	}
	for _, prep := range []func() (func(*bolt.Tx) error, func(), error){
		a.proc.Planner.PrepareSave, a.proc.Alerts.PrepareSave, a.prepareAlerts,
	} {
		write, u, err := prep()
		if err != nil {
			undo()
			return nil, err
		}
		w.writers, w.undo = append(w.writers, write), append(w.undo, u)
	}
	if retry != nil {
		w.engine, w.offsets, w.watermark = retry.engine, retry.offsets, retry.watermark
		w.captured, w.epoch, w.seq, w.parts = retry.captured, retry.epoch, retry.seq, retry.parts
	}
	if a.share != nil {
		w.writers = append(w.writers, func(tx *bolt.Tx) error { return putDecided(tx, w.parts) })
		if write := a.prepareFindings(); write != nil {
			w.writers = append(w.writers, write)
		}
	}
	if retry != nil {
		return w, nil
	}
	var err error
	if w.capture, err = a.proc.Engine.BeginCheckpoint(offsets); err != nil {
		undo()
		return nil, err
	}
	return w, nil
}

func (a *App) checkpointFailed(err error) {
	a.amet.checkpointErrs.Inc()
	if a.ckptErr.Load().(string) != err.Error() {
		a.log.Error("checkpoint failed: offsets will not be committed until one succeeds", "err", err)
	}
	a.ckptErr.Store(err.Error())
}

// ckptWork is one captured checkpoint: its writes and what it makes durable.
type ckptWork struct {
	writers   []func(*bolt.Tx) error // account states, alerts, deliveries
	undo      []func()               // mark those changed again (write failed)
	capture   *detector.Capture      // detection state being copied; nil once engine is set
	engine    func(*bolt.Tx) error   // detection state and offsets
	offsets   detector.Offsets
	watermark time.Time
	// For the changelog: the detection state captured, and the
	// checkpoint's place in it.
	captured   *detector.Capture
	epoch, seq uint64
	// parts are the partitions a member that shares them decides, each
	// with the sequence its state is whole from in the epoch.
	parts map[int]uint64
}

// While a checkpoint is being copied, the pipeline copies copyRows rows
// after every copyEvery events: pauses of a few hundred microseconds (a row
// scattered over a large state costs one to two microseconds to copy; 1,024
// at a time held events for 2–8 ms), and the copy done long before the next
// checkpoint is due (an event changes at most a handful of rows; 16 are
// copied per event).
const (
	copyEvery = 16
	copyRows  = 256
)

// pipeline is the single goroutine that owns detection state.
func (a *App) pipeline(ctx context.Context, records <-chan ingest.Record) error {
	const maxBatch = 4096
	var (
		// Next offset per partition, handled. A checkpoint records the
		// offsets of every partition the state has seen, including those
		// this run has not consumed yet: the state still includes their
		// events up to the restored offsets.
		next     = cloneOffsets(*a.startAt.Load())
		lastCkpt = time.Now()
		interval = a.cfg.Detector.CheckpointInterval.D()
	)
	// A writer goroutine encodes each batch's outputs and writes them to
	// Kafka while the pipeline decides the next batch, on the other core.
	// There are two batches: one being written, one being filled. A batch
	// is handed over as soon as the writer is free, so its size follows
	// the write's round trip — small when the broker answers fast, larger
	// when it is slow — instead of a queue of small writes building up
	// behind a slow one.
	type outBatch struct {
		out     Outputs
		msgs    []ingest.Message
		buf     []byte // the records' bytes, reused once they are written
		arrived []time.Time
	}
	busy := busyClock{busy: a.amet.pipelineBusy, outputWait: a.amet.pipelineWait, from: time.Now()}
	defer busy.pause()
	free := make(chan *outBatch, 2) // batches the writer is done with
	free <- &outBatch{}
	jobs := make(chan *outBatch, 1)
	var inflight sync.WaitGroup
	var writeFailed atomic.Bool // outputs that could not be written: nothing after them may be checkpointed
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for b := range jobs {
			b.msgs, b.buf = a.encodeOutputs(b.msgs, b.buf, &b.out)
			if err := a.producer.Write(ctx, "outputs", b.msgs); err != nil {
				a.log.Error("outputs not written; their events will be redelivered after restart", "records", len(b.msgs), "err", err)
				writeFailed.Store(true)
			}
			now := time.Now()
			for _, t := range b.arrived {
				a.imet.Latency.Observe(now.Sub(t).Seconds())
			}
			if a.observer != nil {
				a.observer(b.out)
			}
			b.msgs, b.arrived = b.msgs[:0], b.arrived[:0]
			b.out.Reset()
			inflight.Done()
			free <- b
		}
	}()
	cur := &outBatch{}
	// Every record handled, dead letters included, adds an arrival.
	pending := func() bool { return len(cur.arrived) > 0 }
	// handOver gives the batch being filled to the writer, which is done
	// with next.
	handOver := func(next *outBatch) {
		a.queueAlerts(cur.out.Alerts)
		inflight.Add(1)
		jobs <- cur
		cur = next
	}
	// flush hands the batch over if the writer is free; wait: waits for it.
	flush := func(wait bool) {
		if !pending() {
			return
		}
		if wait {
			handOver(<-free)
			return
		}
		select {
		case next := <-free:
			handOver(next)
		default: // the batch goes on filling while the writer works
		}
	}
	// freeIfPending is the writer's "done" to wait for while a batch waits.
	freeIfPending := func() <-chan *outBatch {
		if pending() {
			return free
		}
		return nil
	}
	failed := false // set from writeFailed once the writes before a checkpoint are done
	// settle flushes and waits until every output so far is written: what
	// a checkpoint's offsets cover must be in Kafka before it is saved.
	settle := func() {
		busy.waitOutputs(func() {
			flush(true)
			inflight.Wait()
		})
		failed = failed || writeFailed.Load()
	}
	// Runs last, after the final checkpoint has settled every write.
	defer func() {
		close(jobs)
		<-writerDone
	}()
	ckptSlot := make(chan struct{}, 1)
	var failedCkpt *ckptWork // guarded by ckptSlot
	deferred := false        // the due checkpoint was put off (counted once)
	var copying *ckptWork    // being copied between events; holds ckptSlot
	var copyCheckpoint func(n int)
	var startWrite func(work *ckptWork, final bool)
	checkpoint := func(final bool) {
		settle()
		if final && copying != nil {
			a.procMu.Lock()
			copyCheckpoint(math.MaxInt) // its write then runs before the final one
			a.procMu.Unlock()
		}
		if failed {
			return
		}
		// One write at a time. While the previous one is still being
		// written the pipeline does not wait for it — every decision would
		// stall behind a write of seconds — but tries again after its next
		// batch. Only the final checkpoint waits.
		if final {
			ckptSlot <- struct{}{}
		} else {
			select {
			case ckptSlot <- struct{}{}:
				deferred = false
			default:
				if !deferred { // once per checkpoint put off, not per batch
					a.amet.checkpointsDeferred.Inc()
					deferred = true
				}
				return
			}
		}
		if err := a.syncSink(ctx); err != nil {
			<-ckptSlot
			a.amet.checkpointErrs.Inc()
			if a.ckptErr.Load().(string) != err.Error() {
				a.log.Error("checkpoint postponed: analytics rows not durable; offsets will not be committed until they are", "err", err)
			}
			a.ckptErr.Store(err.Error())
			lastCkpt = time.Now()
			return
		}
		lastCkpt = time.Now()
		// A checkpoint whose write failed (a full disk, say) is written
		// again before newer detection state is captured: capturing takes
		// the changed rows out of the dirty lists, so dropping the failed
		// copy would leave them out of every later checkpoint.
		retry := failedCkpt
		failedCkpt = nil
		var offsets detector.Offsets
		if retry == nil {
			offsets = cloneOffsets(next)
		}
		// Capture under the lock (a copy of what changed), write without
		// it: the pipeline goes on deciding while bbolt writes. The
		// detection state's copy is begun here and made between events.
		captureStart := time.Now()
		a.procMu.Lock()
		work, err := a.prepareCheckpoint(offsets, retry)
		a.procMu.Unlock()
		a.amet.captureSecs.Observe(time.Since(captureStart).Seconds())
		if err != nil {
			failedCkpt = retry
			<-ckptSlot
			a.checkpointFailed(err)
			return
		}
		if work.capture != nil {
			copying = work
			if final {
				a.procMu.Lock()
				copyCheckpoint(math.MaxInt)
				a.procMu.Unlock()
			}
			return
		}
		startWrite(work, final)
	}
	// copyCheckpoint copies up to n more rows of the checkpoint being
	// captured, with procMu held, and starts its write once all are copied.
	copyCheckpoint = func(n int) {
		if copying == nil {
			return
		}
		start := time.Now()
		done := copying.capture.CopySome(n)
		a.amet.captureSecs.Observe(time.Since(start).Seconds())
		if !done {
			return
		}
		work := copying
		copying = nil
		work.engine, work.captured, work.capture = work.capture.Write(a.store), work.capture, nil
		startWrite(work, false)
	}
	startWrite = func(work *ckptWork, final bool) {
		write := func() {
			defer func() { <-ckptSlot }()
			start := time.Now()
			a.writeMu.Lock()
			err := a.store.DB().Update(func(tx *bolt.Tx) error {
				for _, w := range append(work.writers, work.engine) {
					if err := w(tx); err != nil {
						return err
					}
				}
				if a.clog != nil {
					return putPosition(tx, keyWritten, work.epoch, work.seq)
				}
				return nil
			})
			var saved []ingest.Message // account states and alerts saved since the last publish
			if a.clog != nil && err == nil {
				saved, a.clog.saved = a.clog.saved, nil
			}
			a.writeMu.Unlock()
			if err != nil {
				a.procMu.Lock()
				for _, u := range work.undo {
					u()
				}
				a.procMu.Unlock()
				failedCkpt = work // read by the next checkpoint, once it holds the slot
				a.checkpointFailed(fmt.Errorf("checkpoint: %w", err))
				return
			}
			offsets, wm := work.offsets, work.watermark
			a.durable.Store(&offsets)
			a.amet.lastCheckpoint.SetToCurrentTime()
			if a.ckptErr.Load().(string) != "" {
				a.log.Info("checkpoints succeed again")
			}
			a.ckptErr.Store("")
			a.amet.checkpoints.Inc()
			a.amet.checkpointSecs.Observe(time.Since(start).Seconds())
			a.box.Notify(destAccountService)
			a.notifyReceivers()
			a.amet.watermark.Set(float64(wm.Unix()))
			if a.clog != nil {
				// Offsets are committed only once the changelog has the
				// state they go with: a restore from it resumes there.
				if !a.source.Ready() {
					// A standby's, or one taken before joining or during a
					// rebalance: the changelog is the owner's. The next
					// published is whole, and marks the offsets.
					a.clog.fresh.Store(true)
					return
				}
				if err := a.publishChangelog(ctx, work, saved); err != nil {
					a.clog.fresh.Store(true)
					a.amet.changelogErrs.Inc()
					a.log.Error("changelog not written: offsets wait for the next checkpoint, which writes the whole state", "err", err)
					return
				}
			}
			caps := a.commitCaps()
			for t, ps := range offsets {
				for p, o := range ps {
					if _, decided := work.parts[p]; a.share != nil && !decided {
						continue // observed: its owner commits it
					}
					if c, ok := caps[t][p]; ok && c < o {
						o = c
					}
					a.source.MarkHandled(t, p, o-1)
				}
			}
		}
		if final {
			write()
		} else {
			go write()
		}
	}
	// Runs after the final checkpoint: no write may be left in flight when
	// the store closes.
	defer func() { ckptSlot <- struct{}{} }()
	defer checkpoint(true)

	// quiesce writes every output so far and the checkpoint being copied,
	// and holds the checkpoint slot once that write is done: nothing is
	// being captured or written while the state is replaced.
	quiesce := func() {
		settle()
		if copying != nil {
			a.procMu.Lock()
			copyCheckpoint(math.MaxInt)
			a.procMu.Unlock()
		}
		ckptSlot <- struct{}{}
	}

	batch := 0
	a.procMu.Lock()
	locked := true
	a.next = next
	unlock := func() {
		if locked {
			a.procMu.Unlock()
			locked = false
		}
	}
	defer unlock()
	ahead := recordsAhead{in: records, engine: a.proc.Engine}
	for {
		busy.resume()
		rec, ok, got := ahead.take()
		if !got {
			select {
			case rec, ok = <-records:
			default:
				// Nothing waiting: make what we have durable now (low latency
				// when idle, big batches under load), and finish copying a
				// checkpoint while no event waits for it.
				for copying != nil && len(records) == 0 {
					if !locked {
						a.procMu.Lock()
						locked = true
					}
					copyCheckpoint(copyRows) // a slice at a time: an event may come
				}
				unlock()
				if a.takeoverDue() {
					a.takeOver() // taken over, with no event yet
				}
				if a.manualWaiting.Load() || len(a.manualPending) > 0 {
					a.procMu.Lock()
					a.adoptManual(next)
					a.procMu.Unlock()
				}
				if a.spans != nil && a.spans.waiting.Load() {
					a.procMu.Lock()
					a.foldFindings()
					a.procMu.Unlock()
				}
				flush(false)
				if time.Since(lastCkpt) >= interval {
					checkpoint(false)
				}
				batch = 0
				busy.pause()
				select {
				case rec, ok = <-records:
				case next := <-freeIfPending():
					handOver(next)
					continue
				case <-a.findingsWake():
					continue
				case <-time.After(interval):
					busy.resume()
					if time.Since(lastCkpt) >= interval {
						checkpoint(false)
					}
					continue
				case done := <-a.flushes():
					busy.resume()
					checkpoint(true)
					ckptSlot <- struct{}{} // its write, and publish, done
					<-ckptSlot
					close(done)
					continue
				case ch := <-a.shareChanges():
					busy.resume()
					quiesce()
					a.procMu.Lock()
					err := a.applyShareChange(ch, next)
					a.procMu.Unlock()
					<-ckptSlot
					ch.done <- err
					continue
				case r := <-a.restores:
					busy.resume()
					// Taking over without the state (restoreOnTakeover):
					// no checkpoint of the state held is written after
					// the restored one replaces it in the store.
					quiesce()
					failedCkpt = nil
					a.procMu.Lock()
					err := a.installRestored(r, next)
					a.procMu.Unlock()
					<-ckptSlot
					r.done <- err
					continue
				}
				busy.resume()
			}
		}
		if !ok {
			return nil
		}
		if !locked {
			a.procMu.Lock()
			locked = true
		}
		ahead.fill()
		if rec.Follow {
			a.follow(&rec)
		} else if a.share != nil && (rec.Observe || !a.share.decides(rec.Partition)) {
			// Another member's, or a partition lost whose records were
			// fetched before the assignment changed: that member decides
			// them.
			a.observe(&rec)
		} else {
			if a.takeoverDue() {
				a.takeOver()
			}
			a.handle(&rec, &cur.out, &cur.msgs)
			cur.arrived = append(cur.arrived, rec.Arrived)
		}
		ps := next[rec.Topic]
		if ps == nil {
			ps = map[int]int64{}
			next[rec.Topic] = ps
		}
		ps[rec.Partition] = rec.Offset + 1
		if a.manualWaiting.Load() || len(a.manualPending) > 0 {
			a.adoptManual(next)
		}
		if a.spans != nil && a.spans.waiting.Load() {
			a.foldFindings()
		}
		batch++
		if copying != nil && batch%copyEvery == 0 {
			copyCheckpoint(copyRows)
		}
		if batch%64 == 0 {
			// A saturated pipeline never waits for events: its time is
			// counted as it goes.
			busy.lap()
			flush(false) // under steady load too, a batch goes as soon as the writer is free
		}
		if batch >= maxBatch {
			unlock()
			busy.waitOutputs(func() { flush(true) })
			batch = 0
			if time.Since(lastCkpt) >= interval {
				checkpoint(false)
			}
		}
	}
}

// busyClock counts the pipeline's time: deciding (busy), waiting for its
// outputs to be written (outputWait), or waiting for events (neither). It
// reads the clock as the pipeline starts and stops waiting, around a wait
// for outputs, and every 64 events, so that the counters are at most that
// far behind: never per event.
type busyClock struct {
	busy, outputWait prometheus.Counter
	from             time.Time // when the pipeline last resumed deciding
	waiting          bool      // for events
}

func (b *busyClock) pause() {
	if !b.waiting {
		b.busy.Add(time.Since(b.from).Seconds())
		b.waiting = true
	}
}

func (b *busyClock) resume() {
	if b.waiting {
		b.from = time.Now()
		b.waiting = false
	}
}

// lap counts the time decided since the last reading.
func (b *busyClock) lap() {
	now := time.Now()
	b.busy.Add(now.Sub(b.from).Seconds())
	b.from = now
}

// waitOutputs runs wait, which waits for outputs to be written, and counts
// its time apart from deciding.
func (b *busyClock) waitOutputs(wait func()) {
	start := time.Now()
	if !b.waiting {
		b.busy.Add(start.Sub(b.from).Seconds())
	}
	wait()
	now := time.Now()
	b.outputWait.Add(now.Sub(start).Seconds())
	if !b.waiting {
		b.from = now
	}
}

// handle processes one record: a rejection becomes a dead letter, a valid
// event goes through the processor.
func (a *App) handle(rec *ingest.Record, out *Outputs, msgs *[]ingest.Message) {
	if rec.Err != nil {
		reason := event.ReasonOf(rec.Err)
		var field, detail string
		var re *event.RejectError
		if errors.As(rec.Err, &re) {
			field, detail = re.Field, re.Detail
		}
		a.imet.Rejected.WithLabelValues(string(reason)).Inc()
		a.imet.DeadLettered.Inc()
		a.log.Warn("event rejected to dead-letter topic", "reason", reason, "field", field, "detail", detail,
			"topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset)
		*msgs = append(*msgs, ingest.DeadLetter(a.cfg.Kafka.DLQTopic, rec, string(reason), field, detail))
		if a.sink != nil {
			a.sink.Add(store.Batch{Rejected: []store.RejectedRow{store.NewRejectedRow(rec, string(reason), field, detail, time.Now())}})
		}
		return
	}
	a.imet.CountConsumed(rec.Event.Type)
	nd, na := len(out.Decisions), len(out.Alerts)
	// Called directly, not through a func value, which would move every
	// record to the heap: the compiler cannot see what such a call keeps.
	var dup bool
	if src := SourceID(rec.Topic, rec.Partition); rec.Seen {
		dup = a.proc.HandleObservedFrom(src, &rec.Event, out) // its entities counted it when it was observed
	} else {
		dup = a.proc.HandleFrom(src, &rec.Event, out)
	}
	if dup {
		a.imet.Duplicates.Inc()
		return
	}
	a.toSink(&rec.Event, rec.Value, out.Decisions[nd:], out.Alerts[na:], nil)
	a.recent.add(out.Decisions[nd:], &rec.Event)
	a.stats.add(rec.Arrived, 1, out.Decisions[nd:])
}

// follow folds an event the group's owner has decided into this standby's
// state: detection state, freezes and step-ups, open alerts. Its outputs
// are the owner's; none leaves this process, and it counts only as
// followed. An event the owner dead-lettered is skipped.
func (a *App) follow(rec *ingest.Record) {
	if rec.Err != nil {
		return
	}
	a.owed = nil // the owner is alive, and delivers its own outbox
	a.proc.FollowFrom(SourceID(rec.Topic, rec.Partition), &rec.Event, &a.followed)
	a.learnOutputs(a.followed.Alerts, a.followed.Commands, eventPlace{rec.Topic, rec.Partition, rec.Offset}, rec.Arrived)
	a.followed.Reset()
	a.imet.Followed.Inc()
}

// appendOutputs renders decisions and commands as Kafka records and queues
// the alerts for the next checkpoint.
func (a *App) appendOutputs(msgs []ingest.Message, out *Outputs) []ingest.Message {
	msgs, _ = a.encodeOutputs(msgs, nil, out)
	a.queueAlerts(out.Alerts)
	return msgs
}

// queueAlerts queues alerts for the next checkpoint, which puts them in the
// outbox.
func (a *App) queueAlerts(list []alerts.Alert) {
	a.countAlerts(list)
	a.alertQ.add(list)
}

// encodeOutputs renders decisions and commands as Kafka records. The
// decisions' keys and values are cut from buf, which it returns grown: the
// pipeline's writer reuses one buffer per batch, once the batch is written,
// instead of allocating two slices per decision.
func (a *App) encodeOutputs(msgs []ingest.Message, buf []byte, out *Outputs) ([]ingest.Message, []byte) {
	buf = buf[:0]
	for i := range out.Decisions {
		d := &out.Decisions[i]
		start := len(buf)
		buf = append(buf, d.AccountID...)
		mid := len(buf)
		buf = d.AppendJSON(buf)
		// Cut after this decision's appends: a later one may move buf to
		// a new array, and these records keep the old one.
		msgs = append(msgs, ingest.Message{Topic: a.cfg.Kafka.DecisionsTopic, Key: buf[start:mid:mid], Value: buf[mid:len(buf):len(buf)]})
		if a.spans != nil && spansAccounts(d) {
			// For the lead, which raises the alerts that span accounts
			// (spanning.go); written before the checkpoint that covers it,
			// under one key: one partition, one order for every lead.
			msgs = append(msgs, ingest.Message{Topic: a.cfg.Kafka.FindingsTopic, Key: findingsKey, Value: buf[mid:len(buf):len(buf)]})
		}
	}
	for i := range out.Commands {
		c := &out.Commands[i]
		b, err := gojson.Marshal(c)
		if err != nil {
			a.log.Error("encode command", "err", err)
			continue
		}
		a.amet.commands.WithLabelValues(c.Command).Inc()
		msgs = append(msgs, ingest.Message{Topic: a.cfg.Kafka.CommandsTopic, Key: []byte(c.AccountID), Value: b})
	}
	return msgs, buf
}

func (a *App) countAlerts(list []alerts.Alert) {
	for i := range list {
		a.amet.alertsRaised.WithLabelValues(list[i].Category, list[i].Severity).Inc()
	}
}

// ReloadRules re-reads the rule files; a set that fails validation is
// refused as a whole and the old one stays live.
func (a *App) ReloadRules() (*rules.Set, error) {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	set, err := rules.Load(a.cfg.Rules.Paths)
	if err != nil {
		a.amet.reloadOK.Set(0)
		a.amet.reloads.WithLabelValues("refused").Inc()
		a.log.Error("rule reload refused; the previous rule set stays live", "version", a.proc.Engine.Rules().Version, "err", err)
		return nil, err
	}
	old := a.proc.Engine.Rules().Version
	a.proc.Engine.SetRules(set)
	a.amet.reloadOK.Set(1)
	a.amet.reloads.WithLabelValues("ok").Inc()
	a.log.Info("rules reloaded", "version", set.Version, "previous", old, "rules", len(set.Rules))
	return set, nil
}

// watchRules reloads when a rule file changes (polling: rule directories
// are small and this works on every filesystem, including ConfigMap mounts).
func (a *App) watchRules(ctx context.Context) {
	stamp := func() string {
		src, err := rules.ReadSources(a.cfg.Rules.Paths)
		if err != nil {
			return "error:" + err.Error()
		}
		h := ""
		for _, f := range src {
			h += fmt.Sprintf("%s:%x;", f.Name, xxhash.Sum64(f.Content))
		}
		return h
	}
	last := stamp()
	every(ctx, 2*time.Second, func() {
		if s := stamp(); s != last {
			last = s
			a.ReloadRules()
		}
	})
}

const stoppingReason = "stopping: handing the partitions over to a standby, if one runs"

const restoringReason = "taking the partitions over: restoring the owner's state from the changelog"

func (a *App) standbyReason() string {
	return "standing by: another walletguard in consumer group " + a.cfg.Kafka.GroupID + " consumes every partition (or the event topics have none)"
}

// ready reports whether the daemon should receive traffic, and why not.
func (a *App) ready() (bool, string) {
	if a.stopping.Load() {
		return false, stoppingReason
	}
	if a.source.Standby() {
		return false, a.standbyReason()
	}
	if a.restoring.Load() {
		return false, restoringReason
	}
	if !a.source.Ready() {
		if err := a.source.JoinError(); err != nil {
			return false, "not consuming yet: joining the consumer group fails: " + err.Error()
		}
		return false, "not consuming yet (joining the consumer group)"
	}
	if e := a.ckptErr.Load().(string); e != "" {
		return false, "checkpoints failing: " + e
	}
	return true, ""
}

// registerBuildInfo exports walletguard_build_info{version, revision, go_version}.
func registerBuildInfo(reg prometheus.Registerer, version string) {
	rev, goVersion := "unknown", runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				rev = s.Value
			}
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "walletguard_build_info", Help: "Build of the running walletguard (always 1).",
		ConstLabels: prometheus.Labels{"version": version, "revision": rev, "go_version": goVersion}})
	g.Set(1)
	reg.MustRegister(g)
}
