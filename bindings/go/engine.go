package spotinfer

/*
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <spotinfer/spotinfer_module.h>
#include <spotinfer/spotinfer_extras.h>

extern int64_t spiGoClock(uintptr_t h);
extern void spiGoLog(uintptr_t h, int32_t level, char *msg, size_t len);

static int64_t spi_go_clock_tramp(void *ud) { return spiGoClock((uintptr_t)ud); }
static void spi_go_log_tramp(void *ud, int32_t level, const char *msg, size_t len) {
  spiGoLog((uintptr_t)ud, level, (char *)msg, len);
}

// Hooks are built here so that the function pointers and the handle (as
// user_data) never pass through Go memory.
static int spi_go_engine_new(spi_engine **out, int clock, int log,
                             int32_t level, uintptr_t h) {
  if (!clock && !log) return spi_engine_new(out, NULL);
  spi_hooks hk;
  memset(&hk, 0, sizeof hk);
  hk.struct_size = sizeof hk;
  if (clock) {
    hk.clock = spi_go_clock_tramp;
    hk.clock_user_data = (void *)h;
  }
  if (log) {
    hk.log = spi_go_log_tramp;
    hk.log_user_data = (void *)h;
    hk.log_level = level;
  }
  return spi_engine_new(out, &hk);
}
*/
import "C"

import (
	"encoding/json"
	"runtime"
	"runtime/cgo"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// Hooks are optional per-engine callbacks. Clock returns wall-clock
// nanoseconds since the Unix epoch (a fake clock makes time-dependent
// decisions deterministic); Log receives lines up to LogLevel (the zero
// value is LogError). Hooks run on the goroutine making the library call and must not
// call back into the same engine. A panic in a hook is recovered (the clock
// then reads the real time).
type Hooks struct {
	Clock    func() int64
	Log      func(level LogLevel, msg string)
	LogLevel LogLevel
}

// Engine is a libspotinfer engine: configuration, modules, replicas and
// routing state. See the package documentation for thread safety.
type Engine struct {
	p *C.spi_engine

	mu      sync.Mutex
	reqs    map[*reqHandle]struct{}   // requests still open on the engine
	queues  map[*queueHandle]struct{} // replay queues still open on it
	handles []cgo.Handle              // hooks; deleted after spi_engine_free
	nodeFn  cgo.Handle                // the node transition callback
}

// reqHandle is the C side of a Request. The engine tracks these (not the
// Requests) so a forgotten Request can still be collected and finalized.
type reqHandle struct {
	p *C.spi_request
}

// NewEngine creates an engine with the built-in modules and applies config
// (JSON text; "" keeps the defaults).
func NewEngine(config string) (*Engine, error) {
	return NewEngineWithHooks(config, Hooks{})
}

// NewEngineWithHooks is NewEngine with a clock and/or log hook.
func NewEngineWithHooks(config string, hooks Hooks) (*Engine, error) {
	e := &Engine{reqs: make(map[*reqHandle]struct{}), queues: make(map[*queueHandle]struct{})}
	var h cgo.Handle
	if hooks.Clock != nil || hooks.Log != nil {
		h = cgo.NewHandle(&hooks)
		e.handles = append(e.handles, h)
	}
	rc := C.spi_go_engine_new(&e.p, cbool(hooks.Clock != nil), cbool(hooks.Log != nil),
		C.int32_t(hooks.LogLevel), C.uintptr_t(h))
	if rc != 0 {
		for _, h := range e.handles {
			h.Delete()
		}
		return nil, newError(rc, "spi_engine_new", "")
	}
	runtime.SetFinalizer(e, (*Engine).Close)
	if config != "" {
		if err := e.Configure(config); err != nil {
			e.Close()
			return nil, err
		}
	}
	return e, nil
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// Close frees the engine and every request still open on it. It is
// idempotent and must not run concurrently with other calls on the engine.
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.p == nil {
		return nil
	}
	runtime.SetFinalizer(e, nil)
	for rh := range e.reqs {
		C.spi_request_free(rh.p)
		rh.p = nil
	}
	e.reqs = nil
	for h := range e.queues {
		e.closeQueueLocked(h)
	}
	C.spi_engine_free(e.p) // calls the Go modules' destroy callbacks
	e.p = nil
	for _, h := range e.handles {
		h.Delete()
	}
	e.handles = nil
	if e.nodeFn != 0 {
		e.nodeFn.Delete()
		e.nodeFn = 0
	}
	return nil
}

func (e *Engine) ptr(op string) (*C.spi_engine, error) {
	if e == nil || e.p == nil {
		return nil, closedError(op, "engine")
	}
	return e.p, nil
}

// fail reads the engine's message right after a failed call. The library
// keeps one message per OS thread, so every method that may call fail locks
// its goroutine to the OS thread from the C call through this read.
func (e *Engine) fail(rc C.int, op string) error {
	msg := C.GoString(C.spi_engine_errmsg(e.p))
	runtime.KeepAlive(e)
	return newError(rc, op, msg)
}

// ErrMsg is the message of the last failed call made on the engine from the
// current OS thread. A goroutine may change threads between calls: the
// message of a method's own failure is in the error it returns.
func (e *Engine) ErrMsg() string {
	p, err := e.ptr("spi_engine_errmsg")
	if err != nil {
		return err.Error()
	}
	s := C.GoString(C.spi_engine_errmsg(p))
	runtime.KeepAlive(e)
	return s
}

// Configure replaces the configuration with a JSON object. The whole object
// is validated first; on error nothing changes and the message names the
// key's path.
func (e *Engine) Configure(config string) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_engine_configure")
	if err != nil {
		return err
	}
	s, n := cstr(config)
	rc := C.spi_engine_configure(p, s, n)
	runtime.KeepAlive(config)
	if rc != 0 {
		return e.fail(rc, "spi_engine_configure")
	}
	runtime.KeepAlive(e)
	return nil
}

// ConfigureValue marshals v (e.g. a map) to JSON and applies it.
func (e *Engine) ConfigureValue(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return e.Configure(string(b))
}

// ConfigureFile applies the JSON configuration in a file. A path holding a
// NUL is refused with ErrInvalid.
func (e *Engine) ConfigureFile(path string) error {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_engine_configure_file")
	if err != nil {
		return err
	}
	if strings.IndexByte(path, 0) >= 0 {
		// C would read the path up to the NUL: another file.
		return &Error{Code: StatusInvalid, Op: "spi_engine_configure_file",
			Message: "path: contains a NUL byte"}
	}
	cs := C.CString(path)
	defer C.free(unsafe.Pointer(cs))
	rc := C.spi_engine_configure_file(p, cs)
	if rc != 0 {
		return e.fail(rc, "spi_engine_configure_file")
	}
	runtime.KeepAlive(e)
	return nil
}

// maxRetries bounds every retry of a call that answered SPI_EBUFSIZE with
// a larger size: the size may keep growing meanwhile, but not forever.
const maxRetries = 8

// sizedText calls a (buf, cap, needed) function that may answer EBUFSIZE.
// It retries only when the text needs more room than it was given; an
// EBUFSIZE that asks for no more is the call's error.
func sizedText(call func(buf *C.char, cap C.size_t, needed *C.size_t) C.int) (string, C.int) {
	buf := make([]byte, 4096)
	for try := 0; ; try++ {
		var needed C.size_t
		rc := call((*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &needed)
		if rc == 0 {
			return string(buf[:needed]), 0
		}
		if rc != C.SPI_EBUFSIZE || int(needed) < len(buf) || try >= maxRetries {
			return "", rc
		}
		buf = make([]byte, int(needed)+1) // the text and its NUL
	}
}

// ConfigJSON is the effective configuration as canonical JSON, with every
// default filled in.
func (e *Engine) ConfigJSON() (string, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_engine_config_json")
	if err != nil {
		return "", err
	}
	s, rc := sizedText(func(b *C.char, c C.size_t, n *C.size_t) C.int {
		return C.spi_engine_config_json(p, b, c, n)
	})
	if rc != 0 {
		return "", e.fail(rc, "spi_engine_config_json")
	}
	runtime.KeepAlive(e)
	return s, nil
}

// mapOne makes one of the class, priority and service-tier mapping calls,
// which all answer one int32 through their last argument.
func (e *Engine) mapOne(op string, call func(p *C.spi_engine, out *C.int32_t) C.int) (int32, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr(op)
	if err != nil {
		return 0, err
	}
	var out C.int32_t
	if rc := call(p, &out); rc != 0 {
		return 0, e.fail(rc, op)
	}
	runtime.KeepAlive(e)
	return int32(out), nil
}

// ClassToPriority maps a class to a priority value of a scheme.
func (e *Engine) ClassToPriority(scheme PriorityScheme, c Class) (int32, error) {
	return e.mapOne("spi_engine_class_to_priority", func(p *C.spi_engine, out *C.int32_t) C.int {
		return C.spi_engine_class_to_priority(p, C.int32_t(scheme), C.int32_t(c), out)
	})
}

// ClassFromPriority maps a priority value of a scheme back to a class.
func (e *Engine) ClassFromPriority(scheme PriorityScheme, priority int32) (Class, error) {
	v, err := e.mapOne("spi_engine_class_from_priority", func(p *C.spi_engine, out *C.int32_t) C.int {
		return C.spi_engine_class_from_priority(p, C.int32_t(scheme), C.int32_t(priority), out)
	})
	return Class(v), err
}

// ClassToServiceTier maps a class to an OpenAI service tier.
func (e *Engine) ClassToServiceTier(c Class) (ServiceTier, error) {
	v, err := e.mapOne("spi_engine_class_to_service_tier", func(p *C.spi_engine, out *C.int32_t) C.int {
		return C.spi_engine_class_to_service_tier(p, C.int32_t(c), out)
	})
	return ServiceTier(v), err
}

// ClassFromServiceTier maps an OpenAI service tier to a class.
func (e *Engine) ClassFromServiceTier(t ServiceTier) (Class, error) {
	v, err := e.mapOne("spi_engine_class_from_service_tier", func(p *C.spi_engine, out *C.int32_t) C.int {
		return C.spi_engine_class_from_service_tier(p, C.int32_t(t), out)
	})
	return Class(v), err
}

// ModuleNames lists the registered modules of a kind in registration order.
func (e *Engine) ModuleNames(kind ModuleKind) ([]string, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_engine_module_name")
	if err != nil {
		return nil, err
	}
	var names []string
	for i := 0; ; i++ {
		var s *C.char
		rc := C.spi_engine_module_name(p, C.int32_t(kind), C.size_t(i), &s)
		if rc == C.SPI_ENOTFOUND {
			break
		}
		if rc != 0 {
			return names, e.fail(rc, "spi_engine_module_name")
		}
		names = append(names, C.GoString(s))
	}
	runtime.KeepAlive(e)
	return names, nil
}

// clock and log callbacks (exported in callbacks.go) land here.

func hookClock(h uintptr) (ns int64) {
	defer func() {
		if recover() != nil {
			ns = time.Now().UnixNano()
		}
	}()
	return cgo.Handle(h).Value().(*Hooks).Clock()
}

func hookLog(h uintptr, level int32, msg string) {
	defer func() { _ = recover() }()
	cgo.Handle(h).Value().(*Hooks).Log(LogLevel(level), msg)
}
