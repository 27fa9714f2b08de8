package spotinfer

/*
#include <string.h>
#include <spotinfer/spotinfer.h>
#include <spotinfer/spotinfer_extras.h>

// spi_replica_info holds pointers, so it is built here from Go string
// views (passed as call arguments, which the cgo rules allow) instead of in
// Go memory.
static int spi_go_replica_upsert(spi_engine *e, const char *id, size_t id_len,
                                 int32_t pool, int32_t tier, const char *zone,
                                 size_t zone_len, const char *itype,
                                 size_t itype_len, const char *models,
                                 size_t models_len, double usd,
                                 uint32_t max_inflight, const char *node,
                                 size_t node_len, double decode_tps) {
  spi_replica_info ri;
  memset(&ri, 0, sizeof ri);
  ri.struct_size = sizeof ri;
  ri.id = id;
  ri.id_len = id_len;
  ri.pool = pool;
  ri.model_tier = tier;
  ri.zone = zone;
  ri.zone_len = zone_len;
  ri.instance_type = itype;
  ri.instance_type_len = itype_len;
  ri.models = models;
  ri.models_len = models_len;
  ri.usd_per_hour = usd;
  ri.max_inflight = max_inflight;
  ri.node = node;
  ri.node_len = node_len;
  ri.decode_tokens_per_s = decode_tps;
  return spi_replica_upsert(e, &ri);
}
*/
import "C"

import (
	"runtime"
	"strings"
	"unsafe"
)

// ReplicaState (enum spi_replica_state).
type ReplicaState int32

const (
	ReplicaActive   ReplicaState = C.SPI_REPLICA_ACTIVE
	ReplicaDraining ReplicaState = C.SPI_REPLICA_DRAINING
	ReplicaNoticed  ReplicaState = C.SPI_REPLICA_NOTICED
)

// BreakerState (enum spi_breaker_state).
type BreakerState int32

const (
	BreakerClosed   BreakerState = C.SPI_BREAKER_CLOSED
	BreakerOpen     BreakerState = C.SPI_BREAKER_OPEN
	BreakerHalfOpen BreakerState = C.SPI_BREAKER_HALF_OPEN
)

// Reason a replica was chosen, or none (enum spi_reason).
type Reason int32

const (
	ReasonNone          Reason = C.SPI_REASON_NONE
	ReasonAffinity      Reason = C.SPI_REASON_AFFINITY
	ReasonAffinityLeft  Reason = C.SPI_REASON_AFFINITY_LEFT
	ReasonImbalance     Reason = C.SPI_REASON_IMBALANCE
	ReasonRendezvous    Reason = C.SPI_REASON_RENDEZVOUS
	ReasonLeastLoaded   Reason = C.SPI_REASON_LEAST_LOADED
	ReasonWaitWarm      Reason = C.SPI_REASON_WAIT_WARM
	ReasonQueueNoSpot   Reason = C.SPI_REASON_QUEUE_NO_SPOT
	ReasonShed          Reason = C.SPI_REASON_SHED
	ReasonNoCapacity    Reason = C.SPI_REASON_NO_CAPACITY
	ReasonHalfOpenProbe Reason = C.SPI_REASON_HALF_OPEN_PROBE
)

// String is the library's name: "affinity", "rendezvous", ... or "invalid".
func (r Reason) String() string { return C.GoString(C.spi_reason_name(C.int32_t(r))) }

// TicketStatus is how a ticket ended (enum spi_ticket_status).
type TicketStatus int32

const (
	TicketOK            TicketStatus = C.SPI_TICKET_OK
	TicketError         TicketStatus = C.SPI_TICKET_ERROR
	TicketCancelled     TicketStatus = C.SPI_TICKET_CANCELLED
	TicketDraftRejected TicketStatus = C.SPI_TICKET_DRAFT_REJECTED
	TicketInterrupted   TicketStatus = C.SPI_TICKET_INTERRUPTED // replayed elsewhere
)

// MaxFallbacks is the most fallback replicas a decision carries.
const MaxFallbacks = C.SPI_MAX_FALLBACKS

// ReplicaInfo describes a serving replica to add or update.
type ReplicaInfo struct {
	ID           string // 1..63 bytes, unique
	Pool         Pool   // PoolSpot or PoolOnDemand
	ModelTier    ModelTier
	Zone         string
	InstanceType string
	Models       []string // served models; empty serves any
	USDPerHour   float64
	MaxInflight  uint32
	// Node is the machine (cloud instance id) the replica runs on, which
	// interruption notices name; "" means the replica id.
	Node string
	// DecodeTokensPerS is one stream's decode rate, for drain estimates;
	// 0 means router.decode_tokens_per_s.
	DecodeTokensPerS float64
}

// UpsertReplica adds a replica or updates every field of an existing one.
func (e *Engine) UpsertReplica(info ReplicaInfo) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_replica_upsert")
	if err != nil {
		return err
	}
	models := strings.Join(info.Models, ",")
	id, idn := cstr(info.ID)
	zone, zn := cstr(info.Zone)
	it, itn := cstr(info.InstanceType)
	ms, mn := cstr(models)
	nd, ndn := cstr(info.Node)
	rc := C.spi_go_replica_upsert(p, id, idn, C.int32_t(info.Pool),
		C.int32_t(info.ModelTier), zone, zn, it, itn, ms, mn,
		C.double(info.USDPerHour), C.uint32_t(info.MaxInflight), nd, ndn,
		C.double(info.DecodeTokensPerS))
	runtime.KeepAlive(info)
	runtime.KeepAlive(models)
	if rc != 0 {
		return e.fail(rc, "spi_replica_upsert")
	}
	runtime.KeepAlive(e)
	return nil
}

// RemoveReplica removes a replica; its open tickets finish with ErrStale.
func (e *Engine) RemoveReplica(id string) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_replica_remove")
	if err != nil {
		return err
	}
	s, n := cstr(id)
	rc := C.spi_replica_remove(p, s, n)
	runtime.KeepAlive(id)
	if rc != 0 {
		return e.fail(rc, "spi_replica_remove")
	}
	runtime.KeepAlive(e)
	return nil
}

// SetReplicaState sets a replica ACTIVE, DRAINING or NOTICED.
func (e *Engine) SetReplicaState(id string, state ReplicaState) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_replica_set_state")
	if err != nil {
		return err
	}
	s, n := cstr(id)
	rc := C.spi_replica_set_state(p, s, n, C.int32_t(state))
	runtime.KeepAlive(id)
	if rc != 0 {
		return e.fail(rc, "spi_replica_set_state")
	}
	runtime.KeepAlive(e)
	return nil
}

// Load is a replica's load signal. AtNs 0 means now (engine clock).
type Load struct {
	Running, Waiting, KVUsage float64
	AtNs                      int64
}

func (l Load) c() C.spi_load {
	var out C.spi_load
	out.struct_size = C.size_t(unsafe.Sizeof(out))
	out.running = C.double(l.Running)
	out.waiting = C.double(l.Waiting)
	out.kv_usage = C.double(l.KVUsage)
	out.at_ns = C.int64_t(l.AtNs)
	return out
}

// ReportLoad reports a replica's load.
func (e *Engine) ReportLoad(id string, load Load) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_replica_report_load")
	if err != nil {
		return err
	}
	s, n := cstr(id)
	cl := load.c()
	rc := C.spi_replica_report_load(p, s, n, &cl)
	runtime.KeepAlive(id)
	if rc != 0 {
		return e.fail(rc, "spi_replica_report_load")
	}
	runtime.KeepAlive(e)
	return nil
}

// ReportMetrics parses a vLLM or SGLang /metrics page and reports it as the
// replica's load, stamped now.
func (e *Engine) ReportMetrics(id string, text []byte) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_replica_report_metrics")
	if err != nil {
		return err
	}
	s, n := cstr(id)
	t, tn := cbytes(text)
	rc := C.spi_replica_report_metrics(p, s, n, t, tn)
	runtime.KeepAlive(id)
	runtime.KeepAlive(text)
	if rc != 0 {
		return e.fail(rc, "spi_replica_report_metrics")
	}
	runtime.KeepAlive(e)
	return nil
}

// ParseMetrics parses a vLLM or SGLang Prometheus /metrics page into a load
// signal (AtNs 0). Pure; needs no engine.
func ParseMetrics(text []byte) (Load, error) {
	var out C.spi_load
	out.struct_size = C.size_t(unsafe.Sizeof(out))
	t, tn := cbytes(text)
	rc := C.spi_metrics_parse(t, tn, &out)
	runtime.KeepAlive(text)
	if rc != 0 {
		return Load{}, newError(rc, "spi_metrics_parse", "")
	}
	return Load{float64(out.running), float64(out.waiting), float64(out.kv_usage),
		int64(out.at_ns)}, nil
}

// ReplicaStatus is what the engine knows of one replica.
type ReplicaStatus struct {
	ID                        string
	Pool                      Pool
	ModelTier                 ModelTier
	State                     ReplicaState
	Breaker                   BreakerState
	Running, Waiting, KVUsage float64
	LoadAtNs                  int64 // 0 = never reported
	LoadFresh                 bool
	Inflight                  uint32
	USDPerHour                float64
	MaxInflight               uint32
	ConsecutiveErrors         uint32
}

func replicaStatusFrom(s *C.spi_replica_status) ReplicaStatus {
	return ReplicaStatus{
		ID: goText(&s.id[0]), Pool: Pool(s.pool), ModelTier: ModelTier(s.model_tier),
		State: ReplicaState(s.state), Breaker: BreakerState(s.breaker),
		Running: float64(s.running), Waiting: float64(s.waiting),
		KVUsage: float64(s.kv_usage), LoadAtNs: int64(s.load_at_ns),
		LoadFresh: s.load_fresh != 0, Inflight: uint32(s.inflight),
		USDPerHour: float64(s.usd_per_hour), MaxInflight: uint32(s.max_inflight),
		ConsecutiveErrors: uint32(s.consecutive_errors),
	}
}

// ReplicaCount is the number of replicas.
func (e *Engine) ReplicaCount() int {
	p, err := e.ptr("spi_replica_count")
	if err != nil {
		return 0
	}
	n := int(C.spi_replica_count(p))
	runtime.KeepAlive(e)
	return n
}

// ReplicaStatusAt is the status of the replica at index (order of addition).
func (e *Engine) ReplicaStatusAt(index int) (ReplicaStatus, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_replica_status_at")
	if err != nil {
		return ReplicaStatus{}, err
	}
	var out C.spi_replica_status
	out.struct_size = C.size_t(unsafe.Sizeof(out))
	if rc := C.spi_replica_status_at(p, C.size_t(index), &out); rc != 0 {
		return ReplicaStatus{}, e.fail(rc, "spi_replica_status_at")
	}
	runtime.KeepAlive(e)
	return replicaStatusFrom(&out), nil
}

// ReplicaStatusOf is the status of the replica with an id.
func (e *Engine) ReplicaStatusOf(id string) (ReplicaStatus, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_replica_status_of")
	if err != nil {
		return ReplicaStatus{}, err
	}
	var out C.spi_replica_status
	out.struct_size = C.size_t(unsafe.Sizeof(out))
	s, n := cstr(id)
	rc := C.spi_replica_status_of(p, s, n, &out)
	runtime.KeepAlive(id)
	if rc != 0 {
		return ReplicaStatus{}, e.fail(rc, "spi_replica_status_of")
	}
	runtime.KeepAlive(e)
	return replicaStatusFrom(&out), nil
}

// Replicas is the status of every replica in order of addition.
func (e *Engine) Replicas() ([]ReplicaStatus, error) {
	n := e.ReplicaCount()
	out := make([]ReplicaStatus, 0, n)
	for i := 0; i < n; i++ {
		s, err := e.ReplicaStatusAt(i)
		if err != nil {
			if errorsIsCode(err, StatusNotFound) { // removed meanwhile
				break
			}
			return out, err
		}
		out = append(out, s)
	}
	return out, nil
}

func errorsIsCode(err error, code int) bool {
	e, ok := err.(*Error)
	return ok && e.Code == code
}

// Decision is what Route decided.
type Decision struct {
	Pool            Pool // PoolQueue: hold the request and route it later
	Class           Class
	Replayable      bool
	ModelTier       ModelTier
	Pressure        Pressure
	ToolsAllowed    bool
	MaxOutputTokens int64 // 0 = no cap
	ReplicaID       string
	FallbackIDs     []string
	MatchedBlocks   uint32
	TotalBlocks     uint32
	ReasonCode      Reason
	Reason          string
	Ticket          Ticket // Ticket.ID 0 unless serving
	Key             CacheKey
	EstTTFTMs       float64
	EstUSD          float64
	// Shadow mode (router.shadow_policy): what the other policy chose.
	ShadowPool          Pool
	ShadowMatchedBlocks uint32
	ShadowReplicaID     string
}

// Serving reports whether the decision opened a ticket on a replica.
func (d *Decision) Serving() bool { return d.Ticket.ID != 0 }

func decisionFrom(d *C.spi_decision, e *Engine) Decision {
	n := int(d.n_fallbacks)
	if n > MaxFallbacks {
		n = MaxFallbacks
	}
	var fb []string
	if n > 0 {
		fb = make([]string, n)
		for i := 0; i < n; i++ {
			fb[i] = goText(&d.fallback_ids[i][0])
		}
	}
	out := Decision{
		Pool: Pool(d.pool), Class: Class(d.klass), Replayable: d.replayable != 0,
		ModelTier: ModelTier(d.model_tier), Pressure: Pressure(d.pressure),
		ToolsAllowed: d.tools_allowed != 0, MaxOutputTokens: int64(d.max_output_tokens),
		ReplicaID: goText(&d.replica_id[0]), FallbackIDs: fb,
		MatchedBlocks: uint32(d.matched_blocks), TotalBlocks: uint32(d.total_blocks),
		ReasonCode: Reason(d.reason_code), Reason: goText(&d.reason[0]),
		Key:       CacheKey{uint64(d.key.high64), uint64(d.key.low64)},
		EstTTFTMs: float64(d.est_ttft_ms), EstUSD: float64(d.est_usd),
		ShadowPool: Pool(d.shadow_pool), ShadowMatchedBlocks: uint32(d.shadow_matched_blocks),
		ShadowReplicaID: goText(&d.shadow_replica_id[0]),
	}
	if d.ticket != 0 {
		out.Ticket = Ticket{e: e, ID: uint64(d.ticket)}
	}
	return out
}

// Route classifies, keys, looks up the prefix index and chooses the pool
// and replica with the engine's policy, opening a ticket. On ErrShed and
// ErrNoCapacity the returned Decision still carries class, reason and key.
func (r *Request) Route() (Decision, error) {
	p, err := r.ptr("spi_route")
	if err != nil {
		return Decision{}, err
	}
	rc := C.spi_route(p, &r.dec)
	d := decisionFrom(&r.dec, r.e)
	runtime.KeepAlive(r)
	if rc != 0 {
		return d, r.fail(rc, "spi_route")
	}
	return d, nil
}

// Ticket is an open ticket of a routed request.
type Ticket struct {
	e  *Engine
	ID uint64
}

// engine is the ticket's engine handle; the zero Ticket (a decision that
// opened none) answers ErrStale.
func (t Ticket) engine(op string) (*C.spi_engine, error) {
	if t.e == nil {
		return nil, &Error{Code: StatusStale, Op: op, Message: "no ticket (the decision opened none)"}
	}
	return t.e.ptr(op)
}

// Ticket wraps a ticket id (e.g. one stored elsewhere) for reporting.
func (e *Engine) Ticket(id uint64) Ticket { return Ticket{e: e, ID: id} }

// FirstToken records that the first token was streamed (TTFT by class).
func (t Ticket) FirstToken() error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := t.engine("spi_ticket_first_token")
	if err != nil {
		return err
	}
	if rc := C.spi_ticket_first_token(p, C.uint64_t(t.ID)); rc != 0 {
		return t.e.fail(rc, "spi_ticket_first_token")
	}
	runtime.KeepAlive(t.e)
	return nil
}

// Progress records the tokens streamed so far (monotonic).
func (t Ticket) Progress(tokensStreamed uint64) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := t.engine("spi_ticket_progress")
	if err != nil {
		return err
	}
	if rc := C.spi_ticket_progress(p, C.uint64_t(t.ID), C.uint64_t(tokensStreamed)); rc != 0 {
		return t.e.fail(rc, "spi_ticket_progress")
	}
	runtime.KeepAlive(t.e)
	return nil
}

// TicketResult is how a ticket ended; zero counts and times mean unknown.
type TicketResult struct {
	Status       TicketStatus
	PromptTokens uint64
	OutputTokens uint64
	CachedTokens uint64
	TTFTMs       float64
	DurationMs   float64
}

// Finish ends the ticket and feeds the prefix index, load, error breaker,
// ledger and metrics. Finishing twice returns ErrStale.
func (t Ticket) Finish(res TicketResult) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := t.engine("spi_ticket_finish")
	if err != nil {
		return err
	}
	var c C.spi_ticket_result
	c.struct_size = C.size_t(unsafe.Sizeof(c))
	c.status = C.int32_t(res.Status)
	c.prompt_tokens = C.uint64_t(res.PromptTokens)
	c.output_tokens = C.uint64_t(res.OutputTokens)
	c.cached_tokens = C.uint64_t(res.CachedTokens)
	c.ttft_ms = C.double(res.TTFTMs)
	c.duration_ms = C.double(res.DurationMs)
	if rc := C.spi_ticket_finish(p, C.uint64_t(t.ID), &c); rc != 0 {
		return t.e.fail(rc, "spi_ticket_finish")
	}
	runtime.KeepAlive(t.e)
	return nil
}

// LedgerRow is completed work by tenant, model, pool and class.
type LedgerRow struct {
	Tenant, Model                            string
	Pool                                     Pool
	Class                                    Class
	Completed, Failed                        uint64
	PromptTokens, OutputTokens, CachedTokens uint64
	GPUSeconds, USD                          float64
	USDPerCompleted, TokensPerGPUSecond      float64
	// Interruptions: spot work lost, and the replays that recovered it.
	Interrupted             uint64
	WastedOutputTokens      uint64
	ReprefilledTokens       uint64
	WastedUSD               float64
	Replays                 uint64
	ReplayLatencyMs         float64 // sum over replays
	FallbackOnDemandSeconds float64
}

// LedgerCount is the number of ledger rows.
func (e *Engine) LedgerCount() int {
	p, err := e.ptr("spi_ledger_count")
	if err != nil {
		return 0
	}
	n := int(C.spi_ledger_count(p))
	runtime.KeepAlive(e)
	return n
}

// LedgerRowAt reads one ledger row.
func (e *Engine) LedgerRowAt(index int) (LedgerRow, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_ledger_row_at")
	if err != nil {
		return LedgerRow{}, err
	}
	var r C.spi_ledger_row
	r.struct_size = C.size_t(unsafe.Sizeof(r))
	if rc := C.spi_ledger_row_at(p, C.size_t(index), &r); rc != 0 {
		return LedgerRow{}, e.fail(rc, "spi_ledger_row_at")
	}
	runtime.KeepAlive(e)
	return LedgerRow{
		Tenant: goText(&r.tenant[0]), Model: goText(&r.model[0]),
		Pool: Pool(r.pool), Class: Class(r.klass),
		Completed: uint64(r.completed), Failed: uint64(r.failed),
		PromptTokens: uint64(r.prompt_tokens), OutputTokens: uint64(r.output_tokens),
		CachedTokens: uint64(r.cached_tokens), GPUSeconds: float64(r.gpu_seconds),
		USD: float64(r.usd), USDPerCompleted: float64(r.usd_per_completed),
		TokensPerGPUSecond: float64(r.tokens_per_gpu_second),
		Interrupted:        uint64(r.interrupted), WastedOutputTokens: uint64(r.wasted_output_tokens),
		ReprefilledTokens: uint64(r.reprefilled_tokens), WastedUSD: float64(r.wasted_usd),
		Replays: uint64(r.replays), ReplayLatencyMs: float64(r.replay_latency_ms),
		FallbackOnDemandSeconds: float64(r.fallback_on_demand_seconds),
	}, nil
}

// Ledger reads every ledger row.
func (e *Engine) Ledger() ([]LedgerRow, error) {
	n := e.LedgerCount()
	rows := make([]LedgerRow, 0, n)
	for i := 0; i < n; i++ {
		row, err := e.LedgerRowAt(i)
		if err != nil {
			return rows, err
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// Signals are the autoscaling signals; arrays are indexed by Class.
type Signals struct {
	QueueDepth      [4]float64
	P95TTFTMs       [4]float64
	CacheMissRate   float64
	WarmOnDemand    uint32
	DraftAcceptance float64
}

// Signals reads the engine's autoscaling signals.
func (e *Engine) Signals() (Signals, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_engine_signals")
	if err != nil {
		return Signals{}, err
	}
	var s C.spi_signals
	s.struct_size = C.size_t(unsafe.Sizeof(s))
	if rc := C.spi_engine_signals(p, &s); rc != 0 {
		return Signals{}, e.fail(rc, "spi_engine_signals")
	}
	runtime.KeepAlive(e)
	out := Signals{CacheMissRate: float64(s.cache_miss_rate),
		WarmOnDemand: uint32(s.warm_on_demand), DraftAcceptance: float64(s.draft_acceptance)}
	for i := 0; i < 4; i++ {
		out.QueueDepth[i] = float64(s.queue_depth[i])
		out.P95TTFTMs[i] = float64(s.p95_ttft_ms[i])
	}
	return out, nil
}

// Metrics is the engine's metrics in Prometheus text exposition format.
func (e *Engine) Metrics() (string, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_engine_metrics")
	if err != nil {
		return "", err
	}
	s, rc := sizedText(func(b *C.char, c C.size_t, n *C.size_t) C.int {
		return C.spi_engine_metrics(p, b, c, n)
	})
	if rc != 0 {
		return "", e.fail(rc, "spi_engine_metrics")
	}
	runtime.KeepAlive(e)
	return s, nil
}
