package spotinfer

/*
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <spotinfer/spotinfer_module.h>

// The Go side of the callbacks (callbacks.go). Handles travel as uintptr_t
// so no Go pointer is ever stored in C memory.
extern int spiGoConfigure(uintptr_t state, char *json, size_t len,
                          uintptr_t *out_instance, char *errbuf, size_t errcap);
extern void spiGoRelease(uintptr_t state, uintptr_t instance);
extern void spiGoDestroy(uintptr_t state);
extern int spiGoClassify(uintptr_t state, uintptr_t instance,
                         spi_request_view *req, int32_t pressure,
                         spi_classification *out);
extern int spiGoClassifyLevels(uintptr_t state, uintptr_t instance,
                               spi_request_view *req, spi_classification *out,
                               spi_degrade_levels *levels);
extern int spiGoChoose(uintptr_t state, uintptr_t instance,
                       spi_route_context *ctx, spi_policy_choice *out);
extern int spiGoBuildKey(uintptr_t state, uintptr_t instance,
                         spi_request_view *req, spi_cache_key *out);
extern int spiGoBlockHashes(uintptr_t state, uintptr_t instance,
                            spi_request_view *req, spi_cache_key *key,
                            uint64_t *out, size_t cap, size_t *n_out);
extern int spiGoPrice(uintptr_t state, uintptr_t instance,
                      spi_request_view *req, int32_t pool, spi_price *out);

static int spi_go_configure(void *state, const char *json, size_t len,
                            void **out_instance, char *errbuf, size_t errcap) {
  uintptr_t inst = 0;
  int rc = spiGoConfigure((uintptr_t)state, (char *)json, len, &inst, errbuf,
                          errcap);
  *out_instance = (void *)inst;
  return rc;
}
static void spi_go_release(void *state, void *instance) {
  spiGoRelease((uintptr_t)state, (uintptr_t)instance);
}
static void spi_go_destroy(void *state) { spiGoDestroy((uintptr_t)state); }

// Zero a module struct and set the fields every kind begins with: the ABI,
// its size, on_failure, and the Go configure and release.
#define SPI_GO_MODULE_INIT(m, fail)           \
  do {                                        \
    memset(&(m), 0, sizeof(m));               \
    (m).abi_version = SPI_MODULE_ABI_VERSION; \
    (m).struct_size = sizeof(m);              \
    (m).on_failure = (fail);                  \
    (m).configure = spi_go_configure;         \
    (m).release = spi_go_release;             \
  } while (0)

static int spi_go_classify(void *state, void *instance,
                           const spi_request_view *req, int32_t pressure,
                           spi_classification *out) {
  return spiGoClassify((uintptr_t)state, (uintptr_t)instance,
                       (spi_request_view *)req, pressure, out);
}
static int spi_go_classify_levels(void *state, void *instance,
                                  const spi_request_view *req,
                                  spi_classification *out,
                                  spi_degrade_levels *levels) {
  return spiGoClassifyLevels((uintptr_t)state, (uintptr_t)instance,
                             (spi_request_view *)req, out, levels);
}
static int spi_go_choose(void *state, void *instance,
                         const spi_route_context *ctx, spi_policy_choice *out) {
  return spiGoChoose((uintptr_t)state, (uintptr_t)instance,
                     (spi_route_context *)ctx, out);
}

static int spi_go_build_key(void *state, void *instance,
                            const spi_request_view *req, spi_cache_key *out) {
  return spiGoBuildKey((uintptr_t)state, (uintptr_t)instance,
                       (spi_request_view *)req, out);
}
static int spi_go_block_hashes(void *state, void *instance,
                               const spi_request_view *req,
                               const spi_cache_key *key, uint64_t *out,
                               size_t cap, size_t *n_out) {
  return spiGoBlockHashes((uintptr_t)state, (uintptr_t)instance,
                          (spi_request_view *)req, (spi_cache_key *)key, out,
                          cap, n_out);
}
static int spi_go_price(void *state, void *instance,
                        const spi_request_view *req, int32_t pool,
                        spi_price *out) {
  return spiGoPrice((uintptr_t)state, (uintptr_t)instance,
                    (spi_request_view *)req, pool, out);
}

static int spi_go_register_key_builder(spi_engine *e, const char *name,
                                       size_t name_len, int32_t on_failure,
                                       uintptr_t state) {
  spi_key_builder_module m;
  SPI_GO_MODULE_INIT(m, on_failure);
  m.build_key = spi_go_build_key;
  m.block_hashes = spi_go_block_hashes;
  return spi_engine_register_module(e, SPI_MODULE_KEY_BUILDER, name, name_len,
                                    &m, (void *)state, spi_go_destroy);
}

static int spi_go_register_cost_model(spi_engine *e, const char *name,
                                      size_t name_len, int32_t on_failure,
                                      uintptr_t state) {
  spi_cost_model_module m;
  SPI_GO_MODULE_INIT(m, on_failure);
  m.price = spi_go_price;
  return spi_engine_register_module(e, SPI_MODULE_COST_MODEL, name, name_len,
                                    &m, (void *)state, spi_go_destroy);
}

// Any other kind, with only the common fields, so the library itself says
// whether it supports it (reserved kinds answer SPI_ENOTSUP).
static int spi_go_register_other(spi_engine *e, int32_t kind, const char *name,
                                 size_t name_len, int32_t on_failure,
                                 uintptr_t state) {
  spi_classifier_module m;
  SPI_GO_MODULE_INIT(m, on_failure);
  return spi_engine_register_module(e, kind, name, name_len, &m, (void *)state,
                                    spi_go_destroy);
}

// levels: the module answers for every pressure at once (classify_levels).
static int spi_go_register_classifier(spi_engine *e, const char *name,
                                      size_t name_len, int32_t on_failure,
                                      int levels, uintptr_t state) {
  spi_classifier_module m;
  SPI_GO_MODULE_INIT(m, on_failure);
  m.classify = spi_go_classify;
  if (levels) m.classify_levels = spi_go_classify_levels;
  return spi_engine_register_module(e, SPI_MODULE_CLASSIFIER, name, name_len,
                                    &m, (void *)state, spi_go_destroy);
}

static int spi_go_register_policy(spi_engine *e, const char *name,
                                  size_t name_len, int32_t on_failure,
                                  int32_t flags, uintptr_t state) {
  spi_policy_module m;
  SPI_GO_MODULE_INIT(m, on_failure);
  m.flags = flags;
  m.choose = spi_go_choose;
  return spi_engine_register_module(e, SPI_MODULE_POLICY, name, name_len, &m,
                                    (void *)state, spi_go_destroy);
}

// A candidate by index, with the stride the library says it uses.
static const spi_candidate *spi_go_candidate(const spi_route_context *ctx,
                                             size_t i) {
  size_t stride = ctx->candidate_size ? ctx->candidate_size
                                      : sizeof(spi_candidate);
  return (const spi_candidate *)((const char *)ctx->candidates + i * stride);
}

// Whether the candidates carry the TTFT model's parts (since 0.3.0).
static int spi_go_candidate_has_model(const spi_route_context *ctx) {
  return ctx->candidate_size >= offsetof(spi_candidate, prefill_tokens_per_s) +
                                    sizeof(double);
}

// Whether the context carries the pools' mean served tokens (since 0.3.0).
static int spi_go_ctx_has_model(const spi_route_context *ctx) {
  return ctx->struct_size >= offsetof(spi_route_context, prompt_tokens) +
                                 sizeof ctx->prompt_tokens;
}

// Whether the context carries mean_max_inflight (since 0.3.0).
static int spi_go_ctx_has_sizes(const spi_route_context *ctx) {
  return ctx->struct_size >= offsetof(spi_route_context, mean_max_inflight) +
                                 sizeof ctx->mean_max_inflight;
}

// Whether the context carries mean_prefill_wait_ms (since 0.3.0).
static int spi_go_ctx_has_backlog(const spi_route_context *ctx) {
  return ctx->struct_size >= offsetof(spi_route_context, mean_prefill_wait_ms) +
                                 sizeof ctx->mean_prefill_wait_ms;
}

// Whether the context carries spot_seen_ns (since 0.3.0).
static int spi_go_ctx_has_spot_seen(const spi_route_context *ctx) {
  return ctx->struct_size >= offsetof(spi_route_context, spot_seen_ns) +
                                 sizeof ctx->spot_seen_ns;
}

// The number of pool summaries, 0 when the library's context predates them
// (struct_size does not cover the fields).
static size_t spi_go_n_summaries(const spi_route_context *ctx) {
  size_t end = offsetof(spi_route_context, n_summaries) +
               sizeof ctx->n_summaries;
  if (ctx->struct_size < end || !ctx->summaries) return 0;
  return ctx->n_summaries;
}

// A pool summary by index, with the stride the library says it uses.
static const spi_pool_summary *spi_go_summary(const spi_route_context *ctx,
                                              size_t i) {
  size_t stride = ctx->summary_size ? ctx->summary_size
                                    : sizeof(spi_pool_summary);
  return (const spi_pool_summary *)((const char *)ctx->summaries + i * stride);
}
*/
import "C"

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"runtime/cgo"
	"strings"
	"sync"
	"unsafe"
)

// Classifier is a classifier module written in Go.
//
// Configure runs on every configuration that selects the module, with the
// module's section of "module_config" as JSON ("{}" when absent), and
// returns an instance used by the calls of that configuration snapshot.
// Classify may run on many goroutines at once; req is valid only during
// the call. An error or a panic becomes an error status in C; the engine
// then falls back to the built-in classifier or fails the call with
// ErrModule, as the module's OnFailure says.
//
// A Classifier may also implement LevelsClassifier (every pressure's plan
// in one call), Releaser (an instance's snapshot retired) and Destroyer
// (the engine was freed).
type Classifier interface {
	Configure(config []byte) (instance any, err error)
	Classify(instance any, req *RequestView, pressure Pressure) (Verdict, error)
}

// LevelsClassifier is implemented by a Classifier that answers for every
// pressure in one call (the C module's classify_levels, since 0.3.0). A
// route classifies once, at the higher of the two pools' pressures, and
// needs the degrade plan at the pressure of the pool it chose: a
// LevelsClassifier is asked once per route and Classify is never called,
// where a plain Classifier is asked again when the two pressures differ.
//
// The Verdict's class, replayability, model tier, rule, complexity and
// reason must not depend on the pressure; its plan fields (MaxOutputTokens,
// NoTools, Defer) are ignored: the plan at each pressure is the
// DegradeLevels entry of that pressure. The library checks every level.
type LevelsClassifier interface {
	ClassifyLevels(instance any, req *RequestView) (Verdict, DegradeLevels, error)
}

// DegradeLevels is the degrade plan at every pressure, indexed by Pressure
// (PressureNormal .. PressureCritical), as a LevelsClassifier returns it
// (spi_degrade_levels). Its zero value is no cap, tools allowed, nothing
// deferred, at every pressure.
type DegradeLevels struct {
	MaxOutputTokens [4]int64 // 0 = no cap
	NoTools         [4]bool  // strip tools / multi-step modes
	Defer           [4]bool  // queue instead of serving now
}

// Policy is a routing policy module written in Go. Choose picks, from the
// context's candidates, the pool and the replica indices (best first). The
// library checks the answer (indices in range and eligible, the first one
// in the chosen pool) before using it.
type Policy interface {
	Configure(config []byte) (instance any, err error)
	Choose(instance any, ctx *RouteContext) (PolicyChoice, error)
}

// PolicyFlags say what a policy reads (enum spi_policy_flags).
type PolicyFlags int32

// PolicySummariesOnly declares that a policy reads nothing of the
// candidates but RouteContext.Summaries and the candidates they name. The
// library then passes only those candidates (in replica order), so
// RouteContext.Candidates is compact and every index, in the summaries and
// in the PolicyChoice, refers to that compact slice. Both built-in policies
// set it. A library older than 0.2.0 passes every replica and no summaries.
const PolicySummariesOnly PolicyFlags = C.SPI_POLICY_SUMMARIES_ONLY

// PolicyFlagger is implemented by a Policy that declares PolicyFlags when it
// is registered (e.g. PolicySummariesOnly). A Policy without it declares
// none and gets every replica as a candidate. Unknown bits are refused at
// registration with ErrInvalid.
type PolicyFlagger interface{ PolicyFlags() PolicyFlags }

// KeyBuilder is a key-builder module written in Go: the versioned cache
// key of a request and the chained hashes of its prompt-prefix blocks.
// Keys are a wire format; see the repository README before writing one.
type KeyBuilder interface {
	Configure(config []byte) (instance any, err error)
	BuildKey(instance any, req *RequestView) (CacheKey, error)
	// BlockHashes appends the block hashes of req, seeded by key, to dst.
	BlockHashes(instance any, req *RequestView, key CacheKey, dst []uint64) ([]uint64, error)
}

// CostModel is a cost-model module written in Go. Every float it returns
// must be finite and >= 0 (the library checks); Pool is set by the library.
type CostModel interface {
	Configure(config []byte) (instance any, err error)
	Price(instance any, req *RequestView, pool Pool) (Price, error)
}

// Module is the common part of every module: Configure. Register accepts
// any value implementing it plus the methods of the kind it registers as.
type Module interface {
	Configure(config []byte) (instance any, err error)
}

// Releaser is implemented by modules that want to know when an instance
// returned by Configure is no longer used.
type Releaser interface{ Release(instance any) }

// Destroyer is implemented by modules that want to know when the engine
// that holds them is freed.
type Destroyer interface{ Destroy() }

// Verdict is what a Go classifier returns. Its zero value beyond Class is
// a sensible default: the large model tier, tools allowed, no cap, no rule.
type Verdict struct {
	Class           Class
	Replayable      bool
	ModelTier       ModelTier // 0 means TierLarge
	Rule            int32     // index of the matched rule + 1; 0 for none
	Complexity      float64
	MaxOutputTokens int64 // 0 = no cap
	NoTools         bool  // strip tools / multi-step modes
	Defer           bool  // queue instead of serving now
	Reason          string
}

// PolicyChoice is a Go policy's answer.
type PolicyChoice struct {
	Pool       Pool  // PoolNone with ReasonNoCapacity or ReasonShed: none
	Order      []int // candidate indices, chosen replica first, then fallbacks
	ReasonCode Reason
	Reason     string
}

// module is the state behind one registered Go module.
type module struct {
	name    string
	impl    any
	mu      sync.Mutex
	handles map[cgo.Handle]struct{} // live instance handles
	lastErr error
}

func (m *module) configure(config []byte) (uintptr, error) {
	inst, err := m.impl.(Module).Configure(config)
	if err != nil {
		return 0, err
	}
	h := cgo.NewHandle(inst)
	m.mu.Lock()
	m.handles[h] = struct{}{}
	m.mu.Unlock()
	return uintptr(h), nil
}

func (m *module) release(instance uintptr) {
	if instance == 0 {
		return
	}
	h := cgo.Handle(instance)
	m.mu.Lock()
	_, ok := m.handles[h]
	delete(m.handles, h)
	m.mu.Unlock()
	if !ok {
		return
	}
	defer h.Delete() // whatever Release does
	if r, ok := m.impl.(Releaser); ok {
		defer func() {
			if p := recover(); p != nil {
				m.setErr(fmt.Errorf("panic: %v", p))
			}
		}()
		r.Release(h.Value())
	}
}

func (m *module) destroy() {
	m.mu.Lock()
	hs := m.handles
	m.handles = map[cgo.Handle]struct{}{}
	m.mu.Unlock()
	for h := range hs {
		h.Delete()
	}
	if d, ok := m.impl.(Destroyer); ok {
		d.Destroy()
	}
}

func (m *module) setErr(err error) {
	m.mu.Lock()
	m.lastErr = err
	m.mu.Unlock()
}

// statusOf is the C status for a module's error: its code for an *Error,
// else SPI_EMODULE.
func statusOf(err error) C.int {
	var e *Error
	if errors.As(err, &e) && e.Code < 0 {
		return C.int(e.Code)
	}
	return C.SPI_EMODULE
}

func (e *Engine) register(kind ModuleKind, name string, impl any, onFailure OnFailure) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_engine_register_module")
	if err != nil {
		return err
	}
	m := &module{name: name, impl: impl, handles: map[cgo.Handle]struct{}{}}
	h := cgo.NewHandle(m)
	s, n := cstr(name)
	var rc C.int
	switch kind {
	case ModuleClassifier:
		var levels C.int
		if _, ok := impl.(LevelsClassifier); ok {
			levels = 1
		}
		rc = C.spi_go_register_classifier(p, s, n, C.int32_t(onFailure), levels, C.uintptr_t(h))
	case ModulePolicy:
		var flags PolicyFlags
		if f, ok := impl.(PolicyFlagger); ok {
			flags = f.PolicyFlags()
		}
		rc = C.spi_go_register_policy(p, s, n, C.int32_t(onFailure), C.int32_t(flags), C.uintptr_t(h))
	case ModuleKeyBuilder:
		rc = C.spi_go_register_key_builder(p, s, n, C.int32_t(onFailure), C.uintptr_t(h))
	case ModuleCostModel:
		rc = C.spi_go_register_cost_model(p, s, n, C.int32_t(onFailure), C.uintptr_t(h))
	default:
		rc = C.spi_go_register_other(p, C.int32_t(kind), s, n, C.int32_t(onFailure), C.uintptr_t(h))
	}
	runtime.KeepAlive(name)
	if rc != 0 {
		h.Delete() // a failed registration never calls destroy
		return e.fail(rc, "spi_engine_register_module")
	}
	runtime.KeepAlive(e)
	return nil
}

// RegisterClassifier registers a classifier written in Go under name
// (1..63 bytes of [A-Za-z0-9_.-]). Select it with
// {"modules":{"classifier":name}}. Must not run concurrently with other
// calls on the engine.
func (e *Engine) RegisterClassifier(name string, c Classifier, onFailure OnFailure) error {
	if c == nil {
		return &Error{Code: StatusInvalid, Message: "nil classifier", Op: "spi_engine_register_module"}
	}
	return e.register(ModuleClassifier, name, c, onFailure)
}

// Register registers a module written in Go as a module of kind. The
// value must implement the kind's interface (Classifier, KeyBuilder,
// CostModel or Policy); reserved kinds are passed to the library, which
// answers ErrNotSup.
func (e *Engine) Register(kind ModuleKind, name string, m Module, onFailure OnFailure) error {
	ok := m != nil
	switch kind {
	case ModuleClassifier:
		_, ok = m.(Classifier)
	case ModuleKeyBuilder:
		_, ok = m.(KeyBuilder)
	case ModuleCostModel:
		_, ok = m.(CostModel)
	case ModulePolicy:
		_, ok = m.(Policy)
	}
	if !ok {
		return &Error{Code: StatusInvalid, Op: "spi_engine_register_module",
			Message: fmt.Sprintf("%T is not a %s module", m, kind)}
	}
	if kind == ModuleReplayStore || kind == ModuleFleetBus {
		// Its struct is not the common one the library would be handed.
		return &Error{Code: StatusNotSup, Op: "spi_engine_register_module",
			Message: kind.String() + " modules written in Go are not supported by this binding"}
	}
	return e.register(kind, name, m, onFailure)
}

// RegisterKeyBuilder registers a key builder written in Go under name.
// Select it with {"modules":{"key_builder":name}}.
func (e *Engine) RegisterKeyBuilder(name string, k KeyBuilder, onFailure OnFailure) error {
	return e.Register(ModuleKeyBuilder, name, k, onFailure)
}

// RegisterCostModel registers a cost model written in Go under name.
// Select it with {"modules":{"cost_model":name}}.
func (e *Engine) RegisterCostModel(name string, c CostModel, onFailure OnFailure) error {
	return e.Register(ModuleCostModel, name, c, onFailure)
}

// RegisterPolicy registers a routing policy written in Go under name.
// Select it with {"modules":{"policy":name}}.
func (e *Engine) RegisterPolicy(name string, p Policy, onFailure OnFailure) error {
	if p == nil {
		return &Error{Code: StatusInvalid, Message: "nil policy", Op: "spi_engine_register_module"}
	}
	return e.register(ModulePolicy, name, p, onFailure)
}

// ------------------------------------------------------------- the view

// RequestView is a module's read-only view of a request. It is valid only
// during the callback it was passed to; using it afterwards panics.
type RequestView struct {
	v *C.spi_request_view
}

func (r *RequestView) view() *C.spi_request_view {
	if r.v == nil {
		panic("spotinfer: RequestView used after its callback returned")
	}
	return r.v
}

func viewText(p *C.char, n C.size_t) string {
	if p == nil || n == 0 {
		return ""
	}
	return C.GoStringN(p, C.int(n))
}

// has reports whether the library's view struct is large enough to hold a
// field that ends at end (views only grow at the end).
func (r *RequestView) has(end uintptr) bool {
	return uintptr(r.view().struct_size) >= end
}

func (r *RequestView) Model() string {
	v := r.view()
	return viewText(v.model, v.model_len)
}
func (r *RequestView) TokenizerVersion() string {
	v := r.view()
	return viewText(v.tokenizer_version, v.tokenizer_version_len)
}
func (r *RequestView) SystemPrompt() string {
	v := r.view()
	return viewText(v.system_prompt, v.system_prompt_len)
}
func (r *RequestView) ToolsCanonical() string {
	v := r.view()
	return viewText(v.tools_canonical, v.tools_canonical_len)
}
func (r *RequestView) RetrievalTemplate() string {
	v := r.view()
	return viewText(v.retrieval_template, v.retrieval_template_len)
}
func (r *RequestView) Tenant() string {
	v := r.view()
	return viewText(v.tenant, v.tenant_len)
}
func (r *RequestView) TenantTier() string {
	v := r.view()
	return viewText(v.tenant_tier, v.tenant_tier_len)
}
func (r *RequestView) TenantSalt() string {
	v := r.view()
	return viewText(v.tenant_salt, v.tenant_salt_len)
}
func (r *RequestView) DecodeProfile() string {
	v := r.view()
	return viewText(v.decode_profile, v.decode_profile_len)
}

// LastUserText is the last user message (the cascade scorer's query).
func (r *RequestView) LastUserText() string {
	v := r.view()
	return viewText(v.last_user_text, v.last_user_text_len)
}

// Prompt is a copy of the canonical prompt text.
func (r *RequestView) Prompt() []byte {
	v := r.view()
	if v.prompt == nil || v.prompt_len == 0 {
		return nil
	}
	return C.GoBytes(unsafe.Pointer(v.prompt), C.int(v.prompt_len))
}

// TokenIDs is a copy of the token ids, if any were given.
func (r *RequestView) TokenIDs() []uint32 {
	v := r.view()
	if v.token_ids == nil || v.token_count == 0 {
		return nil
	}
	return append([]uint32(nil), unsafe.Slice((*uint32)(unsafe.Pointer(v.token_ids)), int(v.token_count))...)
}

func (r *RequestView) ExplicitClass() Class     { return Class(r.view().explicit_class) }
func (r *RequestView) ServiceTier() ServiceTier { return ServiceTier(r.view().service_tier) }
func (r *RequestView) Stream() bool             { return r.view().stream != 0 }
func (r *RequestView) HasTools() bool           { return r.view().has_tools != 0 }
func (r *RequestView) MessageCount() int        { return int(r.view().message_count) }

func opt(v C.int64_t, set C.int32_t) (int64, bool) { return int64(v), set != 0 }

// Priority is the vLLM-style priority; ok is false when unset.
func (r *RequestView) Priority() (int64, bool) {
	v := r.view()
	return opt(v.priority, v.priority_set)
}

// SLAMs is the latency budget; ok is false when unset.
func (r *RequestView) SLAMs() (int64, bool) {
	v := r.view()
	return opt(v.sla_ms, v.sla_ms_set)
}

// Replayable says whether the request may be replayed; ok false when unset.
func (r *RequestView) Replayable() (replayable bool, ok bool) {
	v := r.view()
	return v.replayable != 0, v.replayable_set != 0
}

func (r *RequestView) MaxOutputTokens() (int64, bool) {
	v := r.view()
	return opt(v.max_output_tokens, v.max_output_tokens_set)
}
func (r *RequestView) ExpectedOutputTokens() (int64, bool) {
	v := r.view()
	return opt(v.expected_output_tokens, v.expected_output_tokens_set)
}
func (r *RequestView) PromptTokens() (int64, bool) {
	v := r.view()
	return opt(v.prompt_tokens, v.prompt_tokens_set)
}

// PriorityClass is the class the priority maps to (classifier only).
func (r *RequestView) PriorityClass() Class {
	var v C.spi_request_view
	if !r.has(unsafe.Offsetof(v.priority_class) + unsafe.Sizeof(v.priority_class)) {
		return ClassUnset
	}
	return Class(r.view().priority_class)
}

// ForcedModelTier is the tier the caller forced with FieldModelTier, or 0.
func (r *RequestView) ForcedModelTier() ModelTier {
	var v C.spi_request_view
	if !r.has(unsafe.Offsetof(v.forced_model_tier) + unsafe.Sizeof(v.forced_model_tier)) {
		return TierUnset
	}
	return ModelTier(r.view().forced_model_tier)
}

// Metadata is a copy of the request's metadata pairs; a key given twice
// keeps its later value, as the library does. Empty from a library before
// 0.3.0.
func (r *RequestView) Metadata() map[string]string {
	var v C.spi_request_view
	if !r.has(unsafe.Offsetof(v.metadata_count) + unsafe.Sizeof(v.metadata_count)) {
		return map[string]string{}
	}
	vv := r.view()
	out := make(map[string]string, int(vv.metadata_count))
	if vv.metadata == nil || vv.metadata_len == 0 {
		return out
	}
	raw := C.GoBytes(unsafe.Pointer(vv.metadata), C.int(vv.metadata_len))
	for i := 0; i < int(vv.metadata_count); i++ {
		k, rest, ok := bytes.Cut(raw, []byte{0})
		if !ok {
			break
		}
		val, rest, ok := bytes.Cut(rest, []byte{0})
		if !ok {
			break
		}
		out[string(k)] = string(val)
		raw = rest
	}
	return out
}

// ------------------------------------------------------- route context

// Candidate is one replica a policy may choose.
type Candidate struct {
	Index                     int
	ID                        string
	Pool                      Pool
	ModelTier                 ModelTier
	Eligible, Probe, Fresh    bool
	Running, Waiting, KVUsage float64
	Inflight, MaxInflight     uint32
	MatchedBlocks             uint32
	Rendezvous                uint64
	EstTTFTMs                 float64
	USDPerHour                float64
	// Advised: its machine has rebalance advice; EstTTFTMs carries the
	// penalty. Since 0.2.0.
	Advised bool
	// The TTFT model's parts (since 0.3.0; 0 from an older library):
	// EstTTFTMs = router.ttft_base_ms + EstWaitMs + its own prefill.
	EstWaitMs         float64 // behind queued prefill, or for a slot in a full batch
	ServedTokens      float64 // prompt + output tokens sent since it joined
	PrefillTokensPerS float64 // learnt (or configured) prefill rate
	// MatchContinued (SPI_MATCH_CONTINUED, since 0.3.0): a request routed
	// here earlier matched as deep as MatchedBlocks and went on with
	// blocks of its own, so this one branches off a prefix requests share
	// here rather than continuing one conversation.
	MatchContinued bool
}

// SummaryTop is the room PoolSummary.Top has (SPI_SUMMARY_TOP); the
// library names every usable replica when they fit, else 1 + MaxFallbacks
// (a primary and its fallbacks). SummaryCells is the number of summaries,
// one per pool and model tier (SPI_SUMMARY_CELLS).
const (
	SummaryTop   = C.SPI_SUMMARY_TOP
	SummaryCells = C.SPI_SUMMARY_CELLS
)

// SummaryIndex is where the summary of pool and tier is in
// RouteContext.Summaries (SPI_SUMMARY_INDEX): spot small, spot large,
// on-demand small, on-demand large. -1 when out of range.
func SummaryIndex(pool Pool, tier ModelTier) int {
	if (pool != PoolSpot && pool != PoolOnDemand) || (tier != TierSmall && tier != TierLarge) {
		return -1
	}
	return int(pool-PoolSpot)*2 + int(tier-TierSmall)
}

// PoolSummary is the library's summary of the usable candidates (eligible,
// or a half-open probe) of one pool and model tier, from its one pass over
// the replicas. Every index is into RouteContext.Candidates; -1 means none.
// A pool that sheds the request's class has no usable candidate. "Busy"
// means Inflight >= MaxInflight or Running + Waiting >= MaxInflight.
type PoolSummary struct {
	Pool      Pool
	ModelTier ModelTier
	Usable    int   // how many usable candidates there are
	Top       []int // up to SummaryTop, lowest EstTTFTMs first; ties to the lower index
	// Warm has the most MatchedBlocks (> 0), then the lowest EstTTFTMs.
	Warm int
	// Least has the lowest (Running + Waiting + Inflight) / MaxInflight;
	// ties go to the fewer ServedTokens / MaxInflight (since 0.3.0), then
	// to the lower index.
	Least int
	// Rendezvous has the highest Rendezvous weight among the not busy; ties
	// go to the lower index.
	Rendezvous int
}

// RouteContext is everything a policy decides from.
type RouteContext struct {
	Req            *RequestView
	Classification *Classification // at the higher of the two pools' KV pressures
	// Candidates are every replica, or, for a PolicySummariesOnly policy,
	// only those the summaries name (in replica order).
	Candidates   []Candidate
	TotalBlocks  uint32
	MaxFallbacks uint32
	Pressure     [4]Pressure // by Pool
	Shed         [4]bool     // by Pool: the pool sheds this class now
	NowNs        int64
	// Summaries are SummaryCells summaries in SummaryIndex order (see
	// Summary); nil from a library older than 0.2.0.
	Summaries []PoolSummary
	// MeanServedTokens is, by Pool, the mean ServedTokens of its usable
	// replicas; PromptTokens is this request's prompt (ServedTokens counts
	// it and the expected output). Since 0.3.0 (zeros from an older library).
	MeanServedTokens [4]float64
	PromptTokens     float64
	// MeanMaxInflight is, by Pool, the mean MaxInflight of the same
	// replicas, so a share can be in proportion to a replica's size:
	// MeanServedTokens * MaxInflight / MeanMaxInflight. Since 0.3.0 (zeros
	// from an older library).
	MeanMaxInflight [4]float64
	// MeanPrefillWaitMs is, in Summaries' order (SummaryIndex), the mean
	// EstWaitMs of the summary's usable replicas, one whose batch is full
	// (Running >= MaxInflight) counted at 0: the pool and tier's prefill
	// backlog. Since 0.3.0 (zeros from an older library).
	MeanPrefillWaitMs [SummaryCells]float64
	// SpotSeenNs is when the engine last registered a spot replica (its
	// clock, ns; 0 if it never has): while the spot pool is empty,
	// non-zero tells a fleet whose spot is gone for now from one that runs
	// none. Since 0.3.0 (0 from an older library).
	SpotSeenNs int64
}

// Summary is the summary of pool and tier, or nil if there is none (pool
// or tier out of range, or a library without summaries).
func (c *RouteContext) Summary(pool Pool, tier ModelTier) *PoolSummary {
	i := SummaryIndex(pool, tier)
	if i < 0 || i >= len(c.Summaries) {
		return nil
	}
	return &c.Summaries[i]
}

func routeContextFrom(c *C.spi_route_context, view *RequestView) *RouteContext {
	ctx := &RouteContext{Req: view, TotalBlocks: uint32(c.total_blocks),
		MaxFallbacks: uint32(c.max_fallbacks), NowNs: int64(c.now_ns)}
	if c.cls != nil {
		cls := classificationFrom(c.cls)
		ctx.Classification = &cls
	}
	for i := 0; i < 4; i++ {
		ctx.Pressure[i] = Pressure(c.pressure[i])
		ctx.Shed[i] = c.shed[i] != 0
	}
	if C.spi_go_ctx_has_model(c) != 0 {
		for i := 0; i < 4; i++ {
			ctx.MeanServedTokens[i] = float64(c.mean_served_tokens[i])
		}
		ctx.PromptTokens = float64(c.prompt_tokens)
	}
	if C.spi_go_ctx_has_sizes(c) != 0 {
		for i := 0; i < 4; i++ {
			ctx.MeanMaxInflight[i] = float64(c.mean_max_inflight[i])
		}
	}
	if C.spi_go_ctx_has_backlog(c) != 0 {
		for i := 0; i < SummaryCells; i++ {
			ctx.MeanPrefillWaitMs[i] = float64(c.mean_prefill_wait_ms[i])
		}
	}
	if C.spi_go_ctx_has_spot_seen(c) != 0 {
		ctx.SpotSeenNs = int64(c.spot_seen_ns)
	}
	model := C.spi_go_candidate_has_model(c) != 0
	n := int(c.n_candidates)
	ctx.Candidates = make([]Candidate, n)
	for i := 0; i < n; i++ {
		k := C.spi_go_candidate(c, C.size_t(i))
		ctx.Candidates[i] = Candidate{
			Index: i, ID: viewText(k.id, k.id_len), Pool: Pool(k.pool),
			ModelTier: ModelTier(k.model_tier), Eligible: k.eligible != 0,
			Probe: k.probe != 0, Fresh: k.fresh != 0, Running: float64(k.running),
			Waiting: float64(k.waiting), KVUsage: float64(k.kv_usage),
			Inflight: uint32(k.inflight), MaxInflight: uint32(k.max_inflight),
			MatchedBlocks: uint32(k.matched_blocks), Rendezvous: uint64(k.rendezvous),
			EstTTFTMs: float64(k.est_ttft_ms), USDPerHour: float64(k.usd_per_hour),
			Advised:        k.advised != 0,
			MatchContinued: k.match_flags&C.SPI_MATCH_CONTINUED != 0,
		}
		if model {
			ctx.Candidates[i].EstWaitMs = float64(k.est_wait_ms)
			ctx.Candidates[i].ServedTokens = float64(k.served_tokens)
			ctx.Candidates[i].PrefillTokensPerS = float64(k.prefill_tokens_per_s)
		}
	}
	if ns := int(C.spi_go_n_summaries(c)); ns > 0 {
		ctx.Summaries = make([]PoolSummary, ns)
		tops := make([]int, 0, ns*SummaryTop)
		for i := 0; i < ns; i++ {
			s := C.spi_go_summary(c, C.size_t(i))
			nt := int(s.n_top)
			if nt > SummaryTop {
				nt = SummaryTop
			}
			at := len(tops)
			for j := 0; j < nt; j++ {
				tops = append(tops, int(s.top[j]))
			}
			ctx.Summaries[i] = PoolSummary{
				Pool: Pool(s.pool), ModelTier: ModelTier(s.model_tier),
				Usable: int(s.usable), Top: tops[at:len(tops):len(tops)],
				Warm: int(s.warm), Least: int(s.least), Rendezvous: int(s.rendezvous),
			}
		}
	}
	return ctx
}

// copyReason writes s NUL-terminated into a fixed C char array. Reasons are
// free text: one longer than the array is cut, before a UTF-8 character
// rather than inside one, so the field never ends in half of one.
func copyReason(dst []C.char, s string) {
	n := len(s)
	if n > len(dst)-1 {
		n = len(dst) - 1
		for n > 0 && s[n]&0xC0 == 0x80 { // s[n] continues a character
			n--
		}
	}
	for i := 0; i < n; i++ {
		dst[i] = C.char(s[i])
	}
	dst[n] = 0
}

// checkID refuses (ErrInvalid, naming the field) an identifier that does not
// fit a C char[size] with its NUL or holds a NUL, which C would read cut
// short: identifiers are never cut.
func checkID(s string, size int, field, op string) error {
	if len(s) > size-1 {
		return &Error{Code: StatusInvalid, Op: op,
			Message: fmt.Sprintf("%s: %d bytes, at most %d fit", field, len(s), size-1)}
	}
	if strings.IndexByte(s, 0) >= 0 {
		return &Error{Code: StatusInvalid, Op: op, Message: field + ": contains a NUL byte"}
	}
	return nil
}

// copyID writes the identifier s NUL-terminated into a fixed C char array,
// or refuses it as checkID does.
func copyID(dst []C.char, s, field, op string) error {
	if err := checkID(s, len(dst), field, op); err != nil {
		return err
	}
	for i := 0; i < len(s); i++ {
		dst[i] = C.char(s[i])
	}
	dst[len(s)] = 0
	return nil
}

func fillVerdict(out *C.spi_classification, v Verdict) {
	out.klass = C.int32_t(v.Class)
	out.replayable = b2i(v.Replayable)
	tier := v.ModelTier
	if tier == TierUnset {
		tier = TierLarge
	}
	out.model_tier = C.int32_t(tier)
	out.rule_index = C.int32_t(v.Rule - 1)
	out.complexity = C.double(v.Complexity)
	out.max_output_tokens = C.int64_t(v.MaxOutputTokens)
	out.tools_allowed = b2i(!v.NoTools)
	out._defer = b2i(v.Defer)
	copyReason(out.reason[:], v.Reason)
}

func fillLevels(out *C.spi_degrade_levels, lv DegradeLevels) {
	for i := range lv.MaxOutputTokens {
		out.max_output_tokens[i] = C.int64_t(lv.MaxOutputTokens[i])
		out.tools_allowed[i] = b2i(!lv.NoTools[i])
		out._defer[i] = b2i(lv.Defer[i])
	}
}

// fillChoice writes a Go policy's answer for a context of n candidates. An
// index the library could not be handed as is (outside 0..n-1) is the
// module's error, never wrapped into another candidate's index.
func fillChoice(out *C.spi_policy_choice, ch PolicyChoice, n int) error {
	order := ch.Order
	if len(order) > len(out.order) {
		order = order[:len(out.order)]
	}
	for _, idx := range order {
		if idx < 0 || idx >= n {
			return fmt.Errorf("policy order: candidate index %d out of range (%d candidates)", idx, n)
		}
	}
	out.pool = C.int32_t(ch.Pool)
	out.reason_code = C.int32_t(ch.ReasonCode)
	out.n_order = C.uint32_t(len(order))
	for i, idx := range order {
		out.order[i] = C.uint32_t(idx)
	}
	copyReason(out.reason[:], ch.Reason)
	return nil
}
