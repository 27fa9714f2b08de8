package spotinfer

/*
#include <spotinfer/spotinfer.h>

// Newer than the rest of the API: weak, as in notices.go, so the package
// still runs against a library that predates it.
#pragma weak spi_request_exclude_replica

#define SPI_GO_REQUEST_MISSING (-1000)

static int spi_go_exclude_replica(spi_request *r, const char *id, size_t len) {
  if (!spi_request_exclude_replica) return SPI_GO_REQUEST_MISSING;
  return spi_request_exclude_replica(r, id, len);
}
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"runtime"
	"unsafe"
)

// Request is one LLM request, built field by field or read from an OpenAI
// body. It belongs to its engine and is used by one goroutine at a time.
type Request struct {
	e *Engine
	h *reqHandle
	// Scratch structs reused by every call, so the hot path does not
	// allocate. They hold no Go pointers, so &r.cls may be passed to C.
	cls C.spi_classification
	dec C.spi_decision
	key C.spi_cache_key
	n   C.size_t
}

// NewRequest creates an empty request on the engine.
func (e *Engine) NewRequest() (*Request, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.p == nil {
		return nil, closedError("spi_request_new", "engine")
	}
	h := &reqHandle{}
	rc := C.spi_request_new(e.p, &h.p)
	if rc != 0 {
		return nil, e.fail(rc, "spi_request_new")
	}
	e.reqs[h] = struct{}{}
	r := &Request{e: e, h: h}
	r.cls.struct_size = C.size_t(unsafe.Sizeof(r.cls))
	r.dec.struct_size = C.size_t(unsafe.Sizeof(r.dec))
	runtime.SetFinalizer(r, (*Request).Close)
	return r, nil
}

// ParseOpenAI creates a request from an OpenAI chat or completions body.
func (e *Engine) ParseOpenAI(body []byte, kind OpenAIKind) (*Request, error) {
	r, err := e.NewRequest()
	if err != nil {
		return nil, err
	}
	if err := r.ParseOpenAI(body, kind); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// Close frees the request. Idempotent.
func (r *Request) Close() error {
	e := r.e
	e.mu.Lock()
	defer e.mu.Unlock()
	runtime.SetFinalizer(r, nil)
	if r.h.p != nil {
		C.spi_request_free(r.h.p)
		r.h.p = nil
		delete(e.reqs, r.h)
	}
	return nil
}

// Engine is the engine the request belongs to.
func (r *Request) Engine() *Engine { return r.e }

func (r *Request) ptr(op string) (*C.spi_request, error) {
	if r.h.p == nil {
		return nil, closedError(op, "request")
	}
	return r.h.p, nil
}

func (r *Request) fail(rc C.int, op string) error {
	msg := C.GoString(C.spi_request_errmsg(r.h.p))
	runtime.KeepAlive(r)
	return newError(rc, op, msg)
}

// ErrMsg is the message of the last failed call on the request.
func (r *Request) ErrMsg() string {
	p, err := r.ptr("spi_request_errmsg")
	if err != nil {
		return err.Error()
	}
	s := C.GoString(C.spi_request_errmsg(p))
	runtime.KeepAlive(r)
	return s
}

// do makes the call op on the request and turns its status into the error.
func (r *Request) do(op string, call func(p *C.spi_request) C.int) error {
	p, err := r.ptr(op)
	if err != nil {
		return err
	}
	if rc := call(p); rc != 0 {
		return r.fail(rc, op)
	}
	runtime.KeepAlive(r)
	return nil
}

// Reset clears every attribute and keeps the memory for reuse.
func (r *Request) Reset() error {
	return r.do("spi_request_reset", func(p *C.spi_request) C.int {
		return C.spi_request_reset(p)
	})
}

// ParseOpenAI resets the request and fills it from an OpenAI body.
// All-or-nothing: on error the request is left empty.
func (r *Request) ParseOpenAI(body []byte, kind OpenAIKind) error {
	return r.do("spi_request_parse_openai", func(p *C.spi_request) C.int {
		s, n := cbytes(body)
		rc := C.spi_request_parse_openai(p, s, n, C.int32_t(kind))
		runtime.KeepAlive(body)
		return rc
	})
}

// SetStr sets a string attribute (copied).
func (r *Request) SetStr(f StrField, value string) error {
	return r.do("spi_request_set_str", func(p *C.spi_request) C.int {
		s, n := cstr(value)
		rc := C.spi_request_set_str(p, C.int32_t(f), s, n)
		runtime.KeepAlive(value)
		return rc
	})
}

// Str reads a string attribute ("" when unset).
func (r *Request) Str(f StrField) (string, error) {
	p, err := r.ptr("spi_request_get_str")
	if err != nil {
		return "", err
	}
	var s *C.char
	var n C.size_t
	if rc := C.spi_request_get_str(p, C.int32_t(f), &s, &n); rc != 0 {
		return "", r.fail(rc, "spi_request_get_str")
	}
	out := C.GoStringN(s, C.int(n))
	runtime.KeepAlive(r)
	return out, nil
}

// SetInt sets an integer attribute.
func (r *Request) SetInt(f IntField, value int64) error {
	return r.do("spi_request_set_int", func(p *C.spi_request) C.int {
		return C.spi_request_set_int(p, C.int32_t(f), C.int64_t(value))
	})
}

// UnsetInt clears an integer attribute back to unset.
func (r *Request) UnsetInt(f IntField) error {
	return r.do("spi_request_unset_int", func(p *C.spi_request) C.int {
		return C.spi_request_unset_int(p, C.int32_t(f))
	})
}

// Int reads an integer attribute; ok is false when it is unset.
func (r *Request) Int(f IntField) (value int64, ok bool, err error) {
	p, err := r.ptr("spi_request_get_int")
	if err != nil {
		return 0, false, err
	}
	var v C.int64_t
	var set C.int32_t
	if rc := C.spi_request_get_int(p, C.int32_t(f), &v, &set); rc != 0 {
		return 0, false, r.fail(rc, "spi_request_get_int")
	}
	runtime.KeepAlive(r)
	return int64(v), set != 0, nil
}

// SetBool sets a 0/1 attribute (FieldStream, FieldReplayable).
func (r *Request) SetBool(f IntField, v bool) error {
	return r.SetInt(f, int64(b2i(v)))
}

// SetClass sets the explicit class; ClassUnset clears it.
func (r *Request) SetClass(c Class) error {
	if c == ClassUnset {
		return r.SetStr(FieldClass, "")
	}
	return r.SetStr(FieldClass, c.String())
}

// SetTools sets the tool definitions, marshalled to a JSON array.
func (r *Request) SetTools(tools any) error {
	b, err := json.Marshal(tools)
	if err != nil {
		return err
	}
	return r.SetStr(FieldToolsJSON, string(b))
}

// AddMessage appends a chat message (system, developer, user, assistant, tool).
func (r *Request) AddMessage(role, content string) error {
	return r.do("spi_request_add_message", func(p *C.spi_request) C.int {
		rs, rn := cstr(role)
		cs, cn := cstr(content)
		rc := C.spi_request_add_message(p, rs, rn, cs, cn)
		runtime.KeepAlive(role)
		runtime.KeepAlive(content)
		return rc
	})
}

// MessageCount is the number of chat messages.
func (r *Request) MessageCount() int {
	p, err := r.ptr("spi_request_message_count")
	if err != nil {
		return 0
	}
	n := int(C.spi_request_message_count(p))
	runtime.KeepAlive(r)
	return n
}

// SetMetadata adds a metadata pair; a known key (class, priority, sla_ms,
// replayable, tenant, ...) also sets its attribute.
func (r *Request) SetMetadata(key, value string) error {
	return r.do("spi_request_set_metadata", func(p *C.spi_request) C.int {
		ks, kn := cstr(key)
		vs, vn := cstr(value)
		rc := C.spi_request_set_metadata(p, ks, kn, vs, vn)
		runtime.KeepAlive(key)
		runtime.KeepAlive(value)
		return rc
	})
}

// MaxExcluded is how many distinct replicas one request may exclude
// (SPI_MAX_EXCLUDED).
const MaxExcluded = C.SPI_MAX_EXCLUDED

// ExcludeReplica keeps this request off a replica: Route treats it as not
// usable (never chosen, never a fallback, never an eligible candidate), all
// else as usual; with nothing left, the usual no-capacity (ErrNoCapacity) or
// queue outcome. For a retry after a replica failed, or a proxy that offers
// only some replicas. Ids are 1..63 bytes (ErrInvalid), up to MaxExcluded
// distinct ones (ErrFull); an id no replica has excludes nothing. They stay
// with the request until Reset or ParseOpenAI. A library older than 0.3.0
// answers ErrNotSup.
func (r *Request) ExcludeReplica(id string) error {
	const op = "spi_request_exclude_replica"
	p, err := r.ptr(op)
	if err != nil {
		return err
	}
	s, n := cstr(id)
	rc := C.spi_go_exclude_replica(p, s, n)
	runtime.KeepAlive(id)
	if rc == C.SPI_GO_REQUEST_MISSING {
		return missing(op)
	}
	if rc != 0 {
		return r.fail(rc, op)
	}
	runtime.KeepAlive(r)
	return nil
}

// SetTokenIDs gives the prompt as token ids (copied); nil clears them.
func (r *Request) SetTokenIDs(ids []uint32) error {
	return r.do("spi_request_set_token_ids", func(p *C.spi_request) C.int {
		var ptr *C.uint32_t
		if len(ids) > 0 {
			ptr = (*C.uint32_t)(unsafe.Pointer(&ids[0]))
		}
		rc := C.spi_request_set_token_ids(p, ptr, C.size_t(len(ids)))
		runtime.KeepAlive(ids)
		return rc
	})
}

// CanonicalPrompt is a copy of the canonical prompt text the prefix blocks
// are cut from.
func (r *Request) CanonicalPrompt() ([]byte, error) {
	p, err := r.ptr("spi_request_canonical_prompt")
	if err != nil {
		return nil, err
	}
	var s *C.uint8_t
	var n C.size_t
	if rc := C.spi_request_canonical_prompt(p, &s, &n); rc != 0 {
		return nil, r.fail(rc, "spi_request_canonical_prompt")
	}
	out := C.GoBytes(unsafe.Pointer(s), C.int(n))
	runtime.KeepAlive(r)
	return out, nil
}

// Classification is the classifier's verdict on a request.
type Classification struct {
	Class           Class
	Replayable      bool
	ModelTier       ModelTier
	RuleIndex       int32 // -1 for explicit class, priority or default
	Complexity      float64
	MaxOutputTokens int64 // degrade plan: cap to apply, 0 = none
	ToolsAllowed    bool
	Defer           bool // queue instead of serving now
	VLLMPriority    int32
	LLMDPriority    int32
	ServiceTier     ServiceTier
	Pressure        Pressure
	Reason          string
}

func classificationFrom(c *C.spi_classification) Classification {
	return Classification{
		Class: Class(c.klass), Replayable: c.replayable != 0,
		ModelTier: ModelTier(c.model_tier), RuleIndex: int32(c.rule_index),
		Complexity: float64(c.complexity), MaxOutputTokens: int64(c.max_output_tokens),
		ToolsAllowed: c.tools_allowed != 0, Defer: c._defer != 0,
		VLLMPriority: int32(c.vllm_priority), LLMDPriority: int32(c.llmd_priority),
		ServiceTier: ServiceTier(c.service_tier), Pressure: Pressure(c.pressure),
		Reason: goText(&c.reason[0]),
	}
}

// Classify classifies the request with the engine's classifier at a
// pressure level.
func (r *Request) Classify(pressure Pressure) (Classification, error) {
	p, err := r.ptr("spi_classify")
	if err != nil {
		return Classification{}, err
	}
	rc := C.spi_classify(p, C.int32_t(pressure), &r.cls)
	if rc != 0 {
		return Classification{}, r.fail(rc, "spi_classify")
	}
	c := classificationFrom(&r.cls)
	runtime.KeepAlive(r)
	return c, nil
}

// CacheKey is a 128-bit versioned KV-cache key.
type CacheKey struct {
	High, Low uint64
}

// String is the key as 32 lowercase hex digits (canonical big-endian).
func (k CacheKey) String() string { return fmt.Sprintf("%016x%016x", k.High, k.Low) }

// Hex formats the key with the library's spi_cache_key_hex.
func (k CacheKey) Hex() string {
	ck := C.spi_cache_key{high64: C.uint64_t(k.High), low64: C.uint64_t(k.Low)}
	var buf [33]C.char
	C.spi_cache_key_hex(&ck, &buf[0], 33)
	return C.GoString(&buf[0])
}

// CacheKey is the request's versioned cache key from the engine's key builder.
func (r *Request) CacheKey() (CacheKey, error) {
	p, err := r.ptr("spi_request_cache_key")
	if err != nil {
		return CacheKey{}, err
	}
	if rc := C.spi_request_cache_key(p, &r.key); rc != 0 {
		return CacheKey{}, r.fail(rc, "spi_request_cache_key")
	}
	k := CacheKey{uint64(r.key.high64), uint64(r.key.low64)}
	runtime.KeepAlive(r)
	return k, nil
}

// BlockHashes returns the chained hashes of the prompt's full prefix blocks.
func (r *Request) BlockHashes() ([]uint64, error) { return r.AppendBlockHashes(nil) }

// AppendBlockHashes appends the block hashes to dst; with enough capacity
// in dst it does not allocate.
func (r *Request) AppendBlockHashes(dst []uint64) ([]uint64, error) {
	p, err := r.ptr("spi_request_block_hashes")
	if err != nil {
		return dst, err
	}
	start := len(dst)
	for try := 0; ; try++ {
		free := dst[start:cap(dst)]
		var ptr *C.uint64_t
		if len(free) > 0 {
			ptr = (*C.uint64_t)(unsafe.Pointer(&free[0]))
		}
		rc := C.spi_request_block_hashes(p, ptr, C.size_t(len(free)), &r.n)
		n := int(r.n)
		runtime.KeepAlive(dst)
		if rc == 0 {
			runtime.KeepAlive(r)
			return dst[:start+n], nil
		}
		// Retry only when the library needs more room than it was given:
		// SPI_EBUFSIZE with no more needed (a key builder module's own
		// failure, passed through) is the call's error.
		if rc != C.SPI_EBUFSIZE || n <= len(free) || try >= maxRetries {
			return dst, r.fail(rc, "spi_request_block_hashes")
		}
		grown := make([]uint64, start, start+n)
		copy(grown, dst[:start])
		dst = grown
	}
}

// Price is what serving one request costs on a pool.
type Price struct {
	Pool          Pool
	PromptTokens  float64
	OutputTokens  float64
	GPUSeconds    float64
	USD           float64
	USDPerMillion float64
}

// Price prices the request on a pool with the engine's cost model.
func (r *Request) Price(pool Pool) (Price, error) {
	p, err := r.ptr("spi_request_price")
	if err != nil {
		return Price{}, err
	}
	var out C.spi_price
	out.struct_size = C.size_t(unsafe.Sizeof(out))
	if rc := C.spi_request_price(p, C.int32_t(pool), &out); rc != 0 {
		return Price{}, r.fail(rc, "spi_request_price")
	}
	runtime.KeepAlive(r)
	return Price{Pool(out.pool), float64(out.prompt_tokens), float64(out.output_tokens),
		float64(out.gpu_seconds), float64(out.usd), float64(out.usd_per_million)}, nil
}
