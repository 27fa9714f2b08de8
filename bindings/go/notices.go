package spotinfer

/*
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <spotinfer/spotinfer.h>

// Notices, nodes and the replay queue are newer than the rest of the API.
// They are weak references, so this package builds and runs against a
// library that predates them: each call checks the symbol first and
// answers SPI_ENOTSUP when it is missing. Every call of these functions is
// in this file, where the pragmas apply.
#pragma weak spi_notice_kind_name
#pragma weak spi_notice_parse
#pragma weak spi_node_state_name
#pragma weak spi_engine_notice
#pragma weak spi_node_set_state
#pragma weak spi_node_get_state
#pragma weak spi_engine_tick
#pragma weak spi_engine_on_node_transition
#pragma weak spi_replay_open
#pragma weak spi_replay_close
#pragma weak spi_replay_errmsg
#pragma weak spi_replay_enqueue
#pragma weak spi_replay_claim
#pragma weak spi_replay_ack
#pragma weak spi_replay_nack
#pragma weak spi_replay_stats_get
#pragma weak spi_replay_tick
#pragma weak spi_replay_continuation

// A private status, never returned to callers: the binding turns it into
// SPI_ENOTSUP with a message saying the function is missing.
#define SPI_GO_MISSING (-1000)
#define SPI_GO_NEED(fn) do { if (!(fn)) return SPI_GO_MISSING; } while (0)

static const char *spi_go_notice_kind_name(int32_t k) {
  return spi_notice_kind_name ? spi_notice_kind_name(k) : "invalid";
}
static const char *spi_go_node_state_name(int32_t s) {
  return spi_node_state_name ? spi_node_state_name(s) : "invalid";
}

static int spi_go_notice_parse(int32_t format, int32_t status, const char *body,
                               size_t len, const char *node, size_t node_len,
                               int64_t now, spi_notice *out, size_t cap,
                               size_t *n_out, char *err, size_t errcap) {
  SPI_GO_NEED(spi_notice_parse);
  for (size_t i = 0; i < cap; i++) {
    memset(&out[i], 0, sizeof out[i]);
    out[i].struct_size = sizeof out[i];
  }
  return spi_notice_parse(format, status, body, len, node, node_len, now, out,
                          cap, n_out, err, errcap);
}

static int spi_go_engine_notice(spi_engine *e, const spi_notice *n,
                                spi_ticket_plan *plans, size_t cap,
                                size_t *n_out) {
  SPI_GO_NEED(spi_engine_notice);
  return spi_engine_notice(e, n, plans, cap, n_out);
}
static int spi_go_node_set_state(spi_engine *e, const char *node, size_t n,
                                 int32_t state) {
  SPI_GO_NEED(spi_node_set_state);
  return spi_node_set_state(e, node, n, state);
}
static int spi_go_node_get_state(spi_engine *e, const char *node, size_t n,
                                 int32_t *state) {
  SPI_GO_NEED(spi_node_get_state);
  return spi_node_get_state(e, node, n, state);
}
static int spi_go_engine_tick(spi_engine *e) {
  SPI_GO_NEED(spi_engine_tick);
  return spi_engine_tick(e);
}

extern void spiGoNodeTransition(uintptr_t h, char *node, size_t len,
                                int32_t from, int32_t to);
static void spi_go_node_tramp(void *ud, const char *node, size_t len,
                              int32_t from, int32_t to) {
  spiGoNodeTransition((uintptr_t)ud, (char *)node, len, from, to);
}
static int spi_go_on_node_transition(spi_engine *e, uintptr_t h) {
  SPI_GO_NEED(spi_engine_on_node_transition);
  return spi_engine_on_node_transition(e, h ? spi_go_node_tramp : NULL,
                                       (void *)h);
}

static int spi_go_replay_open(spi_engine *e, const char *cfg, size_t len,
                              spi_replay_queue **out) {
  SPI_GO_NEED(spi_replay_open);
  return spi_replay_open(e, cfg, len, out);
}
static void spi_go_replay_close(spi_replay_queue *q) {
  if (spi_replay_close) spi_replay_close(q);
}
static const char *spi_go_replay_errmsg(spi_replay_queue *q) {
  return spi_replay_errmsg ? spi_replay_errmsg(q) : "";
}

// The envelope holds pointers, so it is built on the C stack from Go views
// passed as arguments, and used within the same call.
typedef struct spi_go_env_scalars {
  int32_t openai_kind, klass;
  uint64_t stream_offset;
  uint32_t attempts, flags;
  int64_t first_enqueued_ns, deadline_ns;
} spi_go_env_scalars;

static void spi_go_env(spi_envelope *e, const char *key, size_t kl,
                       const char *body, size_t bl, const char *pt, size_t pl,
                       const uint32_t *toks, size_t nt, const char *tenant,
                       size_t tl, const spi_go_env_scalars *s) {
  memset(e, 0, sizeof *e);
  e->struct_size = sizeof *e;
  e->key = key;
  e->key_len = kl;
  e->body = body;
  e->body_len = bl;
  e->openai_kind = s->openai_kind;
  e->klass = s->klass;
  e->partial_text = pt;
  e->partial_text_len = pl;
  e->partial_tokens = toks;
  e->partial_token_count = nt;
  e->stream_offset = s->stream_offset;
  e->attempts = s->attempts;
  e->flags = s->flags;
  e->first_enqueued_ns = s->first_enqueued_ns;
  e->deadline_ns = s->deadline_ns;
  // The binding refuses a longer tenant before the call; this only keeps
  // the copy inside the field.
  if (tl > sizeof e->tenant - 1) tl = sizeof e->tenant - 1;
  memcpy(e->tenant, tenant ? tenant : "", tl);
}

static int spi_go_replay_enqueue(spi_replay_queue *q, const char *key,
                                 size_t kl, const char *body, size_t bl,
                                 const char *pt, size_t pl,
                                 const uint32_t *toks, size_t nt,
                                 const char *tenant, size_t tl,
                                 const spi_go_env_scalars *s, int32_t *dup) {
  SPI_GO_NEED(spi_replay_enqueue);
  spi_envelope e;
  spi_go_env(&e, key, kl, body, bl, pt, pl, toks, nt, tenant, tl, s);
  return spi_replay_enqueue(q, &e, dup);
}

static int spi_go_replay_continuation(const char *key, size_t kl,
                                      const char *body, size_t bl,
                                      const char *pt, size_t pl,
                                      const uint32_t *toks, size_t nt,
                                      const char *tenant, size_t tl,
                                      const spi_go_env_scalars *s, char *buf,
                                      size_t cap, size_t *needed,
                                      uint32_t *flags) {
  SPI_GO_NEED(spi_replay_continuation);
  spi_envelope e;
  spi_go_env(&e, key, kl, body, bl, pt, pl, toks, nt, tenant, tl, s);
  return spi_replay_continuation(&e, buf, cap, needed, flags);
}

// Claims land in C memory (out and buf), because the library writes
// pointers into out that point into buf.
static int spi_go_replay_claim(spi_replay_queue *q, uint32_t mask,
                               int64_t lease, uint64_t *id, spi_envelope *out,
                               void *buf, size_t cap, size_t *needed) {
  SPI_GO_NEED(spi_replay_claim);
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  return spi_replay_claim(q, mask, lease, id, out, buf, cap, needed);
}
static int spi_go_replay_ack(spi_replay_queue *q, uint64_t id) {
  SPI_GO_NEED(spi_replay_ack);
  return spi_replay_ack(q, id);
}
static int spi_go_replay_nack(spi_replay_queue *q, uint64_t id) {
  SPI_GO_NEED(spi_replay_nack);
  return spi_replay_nack(q, id);
}
static int spi_go_replay_stats(spi_replay_queue *q, spi_replay_stats *out) {
  SPI_GO_NEED(spi_replay_stats_get);
  return spi_replay_stats_get(q, out);
}
static int spi_go_replay_tick(spi_replay_queue *q) {
  SPI_GO_NEED(spi_replay_tick);
  return spi_replay_tick(q);
}
*/
import "C"

import (
	"runtime"
	"runtime/cgo"
	"unsafe"
)

// NoticeKind is what a cloud says is about to happen to a machine.
type NoticeKind int32

const (
	NoticeNone        NoticeKind = C.SPI_NOTICE_NONE
	NoticeTerminate   NoticeKind = C.SPI_NOTICE_TERMINATE
	NoticeStop        NoticeKind = C.SPI_NOTICE_STOP
	NoticeHibernate   NoticeKind = C.SPI_NOTICE_HIBERNATE
	NoticeRebalance   NoticeKind = C.SPI_NOTICE_REBALANCE // advice, no deadline
	NoticeMaintenance NoticeKind = C.SPI_NOTICE_MAINTENANCE
	NoticePreempt     NoticeKind = C.SPI_NOTICE_PREEMPT
)

// String is "terminate", "rebalance", ... or "invalid".
func (k NoticeKind) String() string { return C.GoString(C.spi_go_notice_kind_name(C.int32_t(k))) }

// NoticeFormat is a notice body format ParseNotice reads.
type NoticeFormat int32

const (
	NoticeAWSInstanceAction NoticeFormat = C.SPI_NOTICE_AWS_INSTANCE_ACTION
	NoticeAWSRebalance      NoticeFormat = C.SPI_NOTICE_AWS_REBALANCE
	NoticeAWSScheduled      NoticeFormat = C.SPI_NOTICE_AWS_SCHEDULED
	NoticeAWSEventBridge    NoticeFormat = C.SPI_NOTICE_AWS_EVENTBRIDGE
	NoticeGCPPreempted      NoticeFormat = C.SPI_NOTICE_GCP_PREEMPTED
	NoticeGCPMaintenance    NoticeFormat = C.SPI_NOTICE_GCP_MAINTENANCE
	NoticeAzureScheduled    NoticeFormat = C.SPI_NOTICE_AZURE_SCHEDULED
)

// NodeState is a machine's state (enum spi_node_state).
type NodeState int32

const (
	NodeActive     NodeState = C.SPI_NODE_ACTIVE
	NodeAdvised    NodeState = C.SPI_NODE_ADVISED
	NodeNoticed    NodeState = C.SPI_NODE_NOTICED
	NodeDraining   NodeState = C.SPI_NODE_DRAINING
	NodeTerminated NodeState = C.SPI_NODE_TERMINATED
	NodeRemoved    NodeState = C.SPI_NODE_REMOVED
)

// String is "active", "advised", ... or "invalid".
func (s NodeState) String() string { return C.GoString(C.spi_go_node_state_name(C.int32_t(s))) }

// TicketAction is what to do with an in-flight request on a noticed machine.
type TicketAction int32

const (
	ActionDrain  TicketAction = C.SPI_ACTION_DRAIN  // let it finish where it is
	ActionReplay TicketAction = C.SPI_ACTION_REPLAY // checkpoint and replay on on-demand
)

// Notice is one interruption notice, whatever cloud it came from. Node and
// EventID hold at most 63 bytes, DedupKey 159, none a NUL: Engine.Notice
// refuses others with ErrInvalid rather than cut them.
type Notice struct {
	Kind       NoticeKind
	Format     NoticeFormat
	Node       string
	DeadlineNs int64 // 0 for advice without a deadline
	ReceivedNs int64
	Active     bool   // false: a scheduled event completed or withdrawn
	EventID    string // a withdrawal takes back the notice with this id
	DedupKey   string
}

func noticeFrom(n *C.spi_notice) Notice {
	return Notice{Kind: NoticeKind(n.kind), Format: NoticeFormat(n.format),
		Node: goText(&n.node[0]), DeadlineNs: int64(n.deadline_ns),
		ReceivedNs: int64(n.received_ns), Active: n.active != 0,
		EventID: goText(&n.event_id[0]), DedupKey: goText(&n.dedup_key[0])}
}

// c is the notice as C has it. Its node, event id and dedup key are
// identifiers: one that does not fit its field or holds a NUL is refused
// with ErrInvalid naming the field, never cut into another value.
func (n Notice) c(op string) (C.spi_notice, error) {
	var out C.spi_notice
	out.struct_size = C.size_t(unsafe.Sizeof(out))
	out.kind = C.int32_t(n.Kind)
	out.format = C.int32_t(n.Format)
	if err := copyID(out.node[:], n.Node, "node", op); err != nil {
		return out, err
	}
	out.deadline_ns = C.int64_t(n.DeadlineNs)
	out.received_ns = C.int64_t(n.ReceivedNs)
	out.active = b2i(n.Active)
	if err := copyID(out.event_id[:], n.EventID, "event_id", op); err != nil {
		return out, err
	}
	if err := copyID(out.dedup_key[:], n.DedupKey, "dedup_key", op); err != nil {
		return out, err
	}
	return out, nil
}

// ParseNotice parses a notice body as the cloud serves it. httpStatus is
// the status of the metadata request (404: no notice); node names the
// polled machine; nowNs is the poll time. No notice gives an empty slice.
func ParseNotice(format NoticeFormat, httpStatus int, body []byte, node string, nowNs int64) ([]Notice, error) {
	b, bn := cbytes(body)
	nd, ndn := cstr(node)
	var errbuf [256]C.char
	return parseNotices("spi_notice_parse", C.SPI_GO_MISSING, errbuf[:],
		func(out *C.spi_notice, capacity C.size_t) (C.int, int) {
			var n C.size_t
			rc := C.spi_go_notice_parse(C.int32_t(format), C.int32_t(httpStatus), b, bn, nd, ndn,
				C.int64_t(nowNs), out, capacity, &n, &errbuf[0], C.size_t(len(errbuf)))
			runtime.KeepAlive(body)
			runtime.KeepAlive(node)
			return rc, int(n)
		})
}

// parseNotices makes a notice-parsing call (parse: into capacity entries
// at out, answering its status and the notices found) with room for 8,
// then twice as many (or as many as it found) while it finds more than
// fit, up to maxRetries times. missingRC is the status of a library
// without the call; errbuf the call's message buffer.
func parseNotices(op string, missingRC C.int, errbuf []C.char,
	parse func(out *C.spi_notice, capacity C.size_t) (C.int, int)) ([]Notice, error) {
	capacity := 8
	for try := 0; ; try++ {
		out := make([]C.spi_notice, capacity)
		rc, found := parse(&out[0], C.size_t(capacity))
		if rc == C.SPI_EBUFSIZE && found > capacity && try < maxRetries {
			capacity = max(2*capacity, found)
			continue
		}
		if rc == missingRC {
			return nil, missing(op)
		}
		if rc != 0 {
			return nil, newError(rc, op, C.GoString(&errbuf[0]))
		}
		notices := make([]Notice, found)
		for i := range notices {
			notices[i] = noticeFrom(&out[i])
		}
		return notices, nil
	}
}

// TicketPlan is the plan for one open ticket on a noticed machine.
type TicketPlan struct {
	Ticket     uint64
	Action     TicketAction
	Class      Class
	RemainingS float64 // expected time to finish where it is
	DeadlineS  float64 // seconds left before the machine goes
	Progress   float64 // tokens streamed / expected, 0..1
	ReplicaID  string
}

// Notice hands in an interruption notice and returns the plan for every
// ticket open on the machine. The library plans once per notice (a repeat
// is a no-op), so the plan buffer is sized from the tickets open on the
// whole engine; should more open meanwhile than it holds, the plans that
// fitted are returned with ErrBufSize.
func (e *Engine) Notice(n Notice) ([]TicketPlan, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_engine_notice")
	if err != nil {
		return nil, err
	}
	open := 0
	if all, err := e.Replicas(); err == nil {
		for _, s := range all {
			open += int(s.Inflight)
		}
	}
	cn, err := n.c("spi_engine_notice")
	if err != nil {
		return nil, err
	}
	capacity := 2*open + 64
	plans := make([]C.spi_ticket_plan, capacity)
	plans[0].struct_size = C.sizeof_spi_ticket_plan // the element size
	var count C.size_t
	rc := C.spi_go_engine_notice(p, &cn, &plans[0], C.size_t(capacity), &count)
	k := int(count)
	if k > capacity {
		k = capacity
	}
	out := plansFrom(plans[:k])
	if rc != 0 {
		return out, e.failOrNotSup(rc, "spi_engine_notice")
	}
	runtime.KeepAlive(e)
	return out, nil
}

// plansFrom copies the plans the library filled in.
func plansFrom(plans []C.spi_ticket_plan) []TicketPlan {
	out := make([]TicketPlan, len(plans))
	for i := range out {
		pl := &plans[i]
		out[i] = TicketPlan{Ticket: uint64(pl.ticket), Action: TicketAction(pl.action),
			Class: Class(pl.klass), RemainingS: float64(pl.remaining_s),
			DeadlineS: float64(pl.deadline_s), Progress: float64(pl.progress),
			ReplicaID: goText(&pl.replica_id[0])}
	}
	return out
}

// failOrNotSup is fail, except for a function the library does not export,
// where the engine holds no message.
func (e *Engine) failOrNotSup(rc C.int, op string) error {
	if rc == C.SPI_GO_MISSING {
		return missing(op)
	}
	return e.fail(rc, op)
}

func missing(op string) error {
	return &Error{Code: StatusNotSup, Op: op, Message: "not exported by the loaded libspotinfer"}
}

// SetNodeState moves a machine to a state by hand (DRAINING when work
// starts moving, TERMINATED when it is gone, REMOVED to forget it).
func (e *Engine) SetNodeState(node string, state NodeState) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_node_set_state")
	if err != nil {
		return err
	}
	s, n := cstr(node)
	rc := C.spi_go_node_set_state(p, s, n, C.int32_t(state))
	runtime.KeepAlive(node)
	if rc != 0 {
		return e.failOrNotSup(rc, "spi_node_set_state")
	}
	runtime.KeepAlive(e)
	return nil
}

// NodeState is a machine's state (NodeActive for one never heard of).
func (e *Engine) NodeState(node string) (NodeState, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_node_get_state")
	if err != nil {
		return 0, err
	}
	s, n := cstr(node)
	var st C.int32_t
	rc := C.spi_go_node_get_state(p, s, n, &st)
	runtime.KeepAlive(node)
	if rc != 0 {
		return 0, e.failOrNotSup(rc, "spi_node_get_state")
	}
	runtime.KeepAlive(e)
	return NodeState(st), nil
}

// Tick does the periodic node work: expired rebalance advice, passed
// deadlines.
func (e *Engine) Tick() error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_engine_tick")
	if err != nil {
		return err
	}
	if rc := C.spi_go_engine_tick(p); rc != 0 {
		return e.failOrNotSup(rc, "spi_engine_tick")
	}
	runtime.KeepAlive(e)
	return nil
}

// OnNodeTransition calls fn(node, from, to) on every node transition, on
// the goroutine whose call caused it (or another's call that reported the
// waiting transitions first), with no engine lock held: fn may call back
// into the engine (add or remove replicas, NodePlans, hand in a notice),
// but not OnNodeTransition or Close. from == to (NodeNoticed or NodeDraining) says the machine's
// deadline moved: ask NodePlans again. nil clears it. Not concurrent with
// other calls on the engine.
func (e *Engine) OnNodeTransition(fn func(node string, from, to NodeState)) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_engine_on_node_transition")
	if err != nil {
		return err
	}
	var h cgo.Handle
	if fn != nil {
		h = cgo.NewHandle(fn)
	}
	rc := C.spi_go_on_node_transition(p, C.uintptr_t(h))
	if rc != 0 {
		if h != 0 {
			h.Delete()
		}
		return e.failOrNotSup(rc, "spi_engine_on_node_transition")
	}
	e.mu.Lock()
	old := e.nodeFn
	e.nodeFn = h
	e.mu.Unlock()
	if old != 0 {
		old.Delete() // the library no longer calls it
	}
	runtime.KeepAlive(e)
	return nil
}

// ------------------------------------------------------------ replay queue

// EnvelopeFromScratch flags an envelope whose partial output cannot be
// continued (guided or JSON-schema decoding).
const EnvelopeFromScratch = C.SPI_ENVELOPE_FROM_SCRATCH

// Envelope is a request to replay elsewhere, with what was streamed.
type Envelope struct {
	Key             string // idempotency key, 1..128 bytes
	Body            []byte // the original OpenAI body
	OpenAIKind      OpenAIKind
	Class           Class // the lane it waits in
	PartialText     string
	PartialTokens   []uint32
	StreamOffset    uint64 // tokens the client already has
	Attempts        uint32
	Flags           uint32
	FirstEnqueuedNs int64  // 0 = now at enqueue
	DeadlineNs      int64  // 0 = none
	Tenant          string // at most 63 bytes, no NUL (ErrInvalid otherwise)
}

type envArgs struct {
	key, body, pt, tenant *C.char
	kl, bl, pl, tl        C.size_t
	toks                  *C.uint32_t
	nt                    C.size_t
	s                     C.spi_go_env_scalars
}

// args views the envelope for C. Its tenant goes to a fixed char array: one
// that does not fit or holds a NUL is refused with ErrInvalid, never cut.
func (env *Envelope) args(op string) (envArgs, error) {
	var a envArgs
	var ce C.spi_envelope
	if err := checkID(env.Tenant, len(ce.tenant), "tenant", op); err != nil {
		return a, err
	}
	a.key, a.kl = cstr(env.Key)
	a.body, a.bl = cbytes(env.Body)
	a.pt, a.pl = cstr(env.PartialText)
	a.tenant, a.tl = cstr(env.Tenant)
	if len(env.PartialTokens) > 0 {
		a.toks = (*C.uint32_t)(unsafe.Pointer(&env.PartialTokens[0]))
		a.nt = C.size_t(len(env.PartialTokens))
	}
	a.s = C.spi_go_env_scalars{openai_kind: C.int32_t(env.OpenAIKind), klass: C.int32_t(env.Class),
		stream_offset: C.uint64_t(env.StreamOffset), attempts: C.uint32_t(env.Attempts),
		flags: C.uint32_t(env.Flags), first_enqueued_ns: C.int64_t(env.FirstEnqueuedNs),
		deadline_ns: C.int64_t(env.DeadlineNs)}
	return a, nil
}

// Continuation is the continuation of an envelope as an OpenAI body, so a
// client's stream resumes where it stopped, with its flags
// (EnvelopeFromScratch when the partial output cannot be continued).
func Continuation(env Envelope) (string, uint32, error) {
	a, err := env.args("spi_replay_continuation")
	if err != nil {
		return "", 0, err
	}
	buf := make([]byte, 4096)
	for try := 0; ; try++ {
		var needed C.size_t
		var flags C.uint32_t
		rc := C.spi_go_replay_continuation(a.key, a.kl, a.body, a.bl, a.pt, a.pl, a.toks, a.nt,
			a.tenant, a.tl, &a.s, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)),
			&needed, &flags)
		runtime.KeepAlive(&env)
		if rc == C.SPI_EBUFSIZE && int(needed) >= len(buf) && try < maxRetries {
			buf = make([]byte, int(needed)+1)
			continue
		}
		if rc == C.SPI_GO_MISSING {
			return "", 0, missing("spi_replay_continuation")
		}
		if rc != 0 {
			return "", 0, newError(rc, "spi_replay_continuation", "")
		}
		return string(buf[:needed]), uint32(flags), nil
	}
}

// ReplayQueue is a replay queue with its store, opened on an engine, which
// must outlive it (closing the engine closes its queues). Enqueue, Claim,
// Ack and Nack are safe from many goroutines.
type ReplayQueue struct {
	e *Engine
	h *queueHandle
}

// queueHandle is the C side of a ReplayQueue; the engine tracks these (not
// the queues) so a forgotten queue can still be collected and finalized.
type queueHandle struct {
	q *C.spi_replay_queue
}

// OpenReplayQueue opens a replay queue: {"store":"memory"} or
// {"store":"journal","dir":...,"fsync":"always"|"batch"|"none",...}.
func (e *Engine) OpenReplayQueue(config string) (*ReplayQueue, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.p == nil {
		return nil, closedError("spi_replay_open", "engine")
	}
	h := &queueHandle{}
	s, n := cstr(config)
	rc := C.spi_go_replay_open(e.p, s, n, &h.q)
	runtime.KeepAlive(config)
	if rc != 0 {
		return nil, e.failOrNotSup(rc, "spi_replay_open")
	}
	e.queues[h] = struct{}{}
	q := &ReplayQueue{e: e, h: h}
	runtime.SetFinalizer(q, (*ReplayQueue).Close)
	return q, nil
}

// Close flushes and closes the queue. Idempotent.
func (q *ReplayQueue) Close() error {
	q.e.mu.Lock()
	defer q.e.mu.Unlock()
	runtime.SetFinalizer(q, nil)
	q.e.closeQueueLocked(q.h)
	return nil
}

func (e *Engine) closeQueueLocked(h *queueHandle) {
	if h.q != nil {
		C.spi_go_replay_close(h.q)
		h.q = nil
		delete(e.queues, h)
	}
}

func (q *ReplayQueue) ptr(op string) (*C.spi_replay_queue, error) {
	if q.h.q == nil {
		return nil, closedError(op, "replay queue")
	}
	return q.h.q, nil
}

// fail reads the queue's message (kept per OS thread, like the engine's)
// right after a failed call; callers lock the OS thread across both.
func (q *ReplayQueue) fail(rc C.int, op string) error {
	if rc == C.SPI_GO_MISSING {
		return missing(op)
	}
	msg := C.GoString(C.spi_go_replay_errmsg(q.h.q))
	runtime.KeepAlive(q)
	return newError(rc, op, msg)
}

// ErrMsg is the message of the last failed call made on the queue from the
// current OS thread; a method's own failure is in the error it returns.
func (q *ReplayQueue) ErrMsg() string {
	p, err := q.ptr("spi_replay_errmsg")
	if err != nil {
		return err.Error()
	}
	s := C.GoString(C.spi_go_replay_errmsg(p))
	runtime.KeepAlive(q)
	return s
}

// Enqueue adds an envelope (copied). duplicate is true when an envelope
// with the same key is queued already or was acked (nothing is added).
func (q *ReplayQueue) Enqueue(env Envelope) (duplicate bool, err error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := q.ptr("spi_replay_enqueue")
	if err != nil {
		return false, err
	}
	a, err := env.args("spi_replay_enqueue")
	if err != nil {
		return false, err
	}
	var dup C.int32_t
	rc := C.spi_go_replay_enqueue(p, a.key, a.kl, a.body, a.bl, a.pt, a.pl, a.toks, a.nt,
		a.tenant, a.tl, &a.s, &dup)
	runtime.KeepAlive(&env)
	if rc != 0 {
		return false, q.fail(rc, "spi_replay_enqueue")
	}
	runtime.KeepAlive(q)
	return dup != 0, nil
}

// Claim is a claimed envelope; Ack or Nack it before its lease ends.
type Claim struct {
	ID       uint64
	Envelope Envelope
}

// ClassMask is the lane mask of classes for Claim.
func ClassMask(classes ...Class) uint32 {
	var m uint32
	for _, c := range classes {
		m |= 1 << uint(c)
	}
	return m
}

// Claim claims the next ready envelope of the lanes in mask (ClassMask;
// gold first, FIFO within a lane) with a lease (0 = replay.lease_ms).
// ok is false when nothing is ready.
func (q *ReplayQueue) Claim(mask uint32, leaseMs int64) (c Claim, ok bool, err error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := q.ptr("spi_replay_claim")
	if err != nil {
		return Claim{}, false, err
	}
	out := (*C.spi_envelope)(C.calloc(1, C.size_t(unsafe.Sizeof(C.spi_envelope{}))))
	defer C.free(unsafe.Pointer(out))
	capacity := C.size_t(4096)
	for try := 0; ; try++ {
		buf := C.malloc(capacity)
		var id C.uint64_t
		var needed C.size_t
		rc := C.spi_go_replay_claim(p, C.uint32_t(mask), C.int64_t(leaseMs), &id, out, buf,
			capacity, &needed)
		// Retry only with more room than was offered: an SPI_EBUFSIZE that
		// needs no more (passed up from a store) is the call's error.
		if rc == C.SPI_EBUFSIZE && needed > capacity && try < maxRetries {
			C.free(buf)
			capacity = needed + 1
			continue
		}
		if rc != 0 && rc != C.SPI_ENOTFOUND {
			C.free(buf)
			return Claim{}, false, q.fail(rc, "spi_replay_claim")
		}
		// Nothing ready is SPI_OK with claim id 0, not an error (a library
		// before 0.3.0 said SPI_ENOTFOUND).
		if rc != 0 || id == 0 {
			C.free(buf)
			runtime.KeepAlive(q)
			return Claim{}, false, nil
		}
		c = Claim{ID: uint64(id), Envelope: envelopeFrom(out)}
		C.free(buf)
		runtime.KeepAlive(q)
		return c, true, nil
	}
}

func envelopeFrom(e *C.spi_envelope) Envelope {
	out := Envelope{
		Key: viewText(e.key, e.key_len), OpenAIKind: OpenAIKind(e.openai_kind),
		Class: Class(e.klass), PartialText: viewText(e.partial_text, e.partial_text_len),
		StreamOffset: uint64(e.stream_offset), Attempts: uint32(e.attempts),
		Flags: uint32(e.flags), FirstEnqueuedNs: int64(e.first_enqueued_ns),
		DeadlineNs: int64(e.deadline_ns), Tenant: goText(&e.tenant[0]),
	}
	if e.body != nil && e.body_len > 0 {
		out.Body = C.GoBytes(unsafe.Pointer(e.body), C.int(e.body_len))
	}
	if e.partial_tokens != nil && e.partial_token_count > 0 {
		out.PartialTokens = append([]uint32(nil),
			unsafe.Slice((*uint32)(unsafe.Pointer(e.partial_tokens)), int(e.partial_token_count))...)
	}
	return out
}

// Ack finishes a claim: the envelope leaves the queue for good.
func (q *ReplayQueue) Ack(claimID uint64) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := q.ptr("spi_replay_ack")
	if err != nil {
		return err
	}
	if rc := C.spi_go_replay_ack(p, C.uint64_t(claimID)); rc != 0 {
		return q.fail(rc, "spi_replay_ack")
	}
	runtime.KeepAlive(q)
	return nil
}

// Nack fails a claim: ready again after a backoff, or dead-lettered.
func (q *ReplayQueue) Nack(claimID uint64) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := q.ptr("spi_replay_nack")
	if err != nil {
		return err
	}
	if rc := C.spi_go_replay_nack(p, C.uint64_t(claimID)); rc != 0 {
		return q.fail(rc, "spi_replay_nack")
	}
	runtime.KeepAlive(q)
	return nil
}

// ReplayStats are the queue's counts.
type ReplayStats struct {
	Ready                                              [4]uint64 // by class lane
	Leased, Delayed, Dead                              uint64
	Enqueued, Duplicates, Acked, Nacked, ExpiredLeases uint64
	JournalBytes                                       uint64
	// The store's own counts since the queue opened (since 0.2.0):
	// records read back when it opened, damaged ranges met then (cut off
	// or skipped) and their bytes, flushes to stable storage, compactions.
	Recovered, Torn, TruncatedBytes, Syncs, Compactions uint64
	// Since 0.3.0: damaged ranges skipped with every good record after
	// them kept, their bytes, and the files of damaged bytes kept in the
	// journal directory (*.corrupt) until an operator removes them.
	Skipped, SkippedBytes, AsideFiles uint64
	// Since 0.3.0: the fallback journal of a queue store ("fallback":
	// "journal"): envelopes it holds now, not yet in the store, enqueues
	// it took since the queue opened (the store did not answer), and
	// envelopes moved from it into the store since then.
	FallbackHeld, FallbackEnqueued, FallbackMoved uint64
	// Since 0.3.0: records read back whole when the queue opened although
	// their length field was damaged (nothing lost, so in no count above):
	// bit rot the storage let through.
	Repaired uint64
	// A queue store (Redis) that could not be reached (SPI_EIO): the
	// counts this process keeps itself (Enqueued, Duplicates, Acked,
	// Nacked and the Fallback ones) are still filled, the queue's own
	// (Ready, Leased, Delayed, Dead, ...) are 0, and StoreError says why.
	// Always false and "" for the memory and journal stores.
	StoreUnreachable bool
	StoreError       string
}

// Stats reads the queue's counts. With the queue's store unreachable they
// are partial and say so (StoreUnreachable, StoreError) with a nil error:
// the process's own counts stay readable through an outage.
func (q *ReplayQueue) Stats() (ReplayStats, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := q.ptr("spi_replay_stats_get")
	if err != nil {
		return ReplayStats{}, err
	}
	var s C.spi_replay_stats
	s.struct_size = C.size_t(unsafe.Sizeof(s))
	var storeErr string
	if rc := C.spi_go_replay_stats(p, &s); rc == C.SPI_EIO {
		storeErr = C.GoString(C.spi_go_replay_errmsg(p))
		if storeErr == "" {
			storeErr = "unreachable"
		}
	} else if rc != 0 {
		return ReplayStats{}, q.fail(rc, "spi_replay_stats_get")
	}
	runtime.KeepAlive(q)
	out := ReplayStats{Leased: uint64(s.leased), Delayed: uint64(s.delayed), Dead: uint64(s.dead),
		Enqueued: uint64(s.enqueued), Duplicates: uint64(s.duplicates), Acked: uint64(s.acked),
		Nacked: uint64(s.nacked), ExpiredLeases: uint64(s.expired_leases),
		JournalBytes: uint64(s.journal_bytes), Recovered: uint64(s.recovered),
		Torn: uint64(s.torn), TruncatedBytes: uint64(s.truncated_bytes),
		Syncs: uint64(s.syncs), Compactions: uint64(s.compactions),
		Skipped: uint64(s.skipped), SkippedBytes: uint64(s.skipped_bytes),
		AsideFiles: uint64(s.aside_files), FallbackHeld: uint64(s.fallback_held),
		FallbackEnqueued: uint64(s.fallback_enqueued), FallbackMoved: uint64(s.fallback_moved),
		Repaired: uint64(s.repaired), StoreUnreachable: storeErr != "", StoreError: storeErr}
	for i := range out.Ready {
		out.Ready[i] = uint64(s.ready[i])
	}
	return out, nil
}

// Tick runs the queue's periodic work (lease expiry, group commit,
// compaction) when it is otherwise idle.
func (q *ReplayQueue) Tick() error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := q.ptr("spi_replay_tick")
	if err != nil {
		return err
	}
	if rc := C.spi_go_replay_tick(p); rc != 0 {
		return q.fail(rc, "spi_replay_tick")
	}
	runtime.KeepAlive(q)
	return nil
}
