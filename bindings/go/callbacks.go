package spotinfer

// The Go functions the C trampolines call. This file holds only //export
// functions: a file that exports to C may declare, but not define, C
// functions in its preamble.

/*
#include <stdint.h>
#include <spotinfer/spotinfer_module.h>
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"unsafe"
)

// recovered turns a panic into an error status for C.
func recovered(m *module, rc *C.int, errbuf *C.char, errcap C.size_t) {
	if p := recover(); p != nil {
		err := fmt.Errorf("panic: %v", p)
		m.setErr(err)
		writeErr(errbuf, errcap, err.Error())
		*rc = C.SPI_EMODULE
	}
}

func writeErr(errbuf *C.char, errcap C.size_t, msg string) {
	if errbuf == nil || errcap == 0 {
		return
	}
	dst := unsafe.Slice(errbuf, int(errcap))
	copyReason(dst, msg)
}

//export spiGoConfigure
func spiGoConfigure(state C.uintptr_t, json *C.char, n C.size_t,
	outInstance *C.uintptr_t, errbuf *C.char, errcap C.size_t) (rc C.int) {
	m := cgo.Handle(state).Value().(*module)
	defer recovered(m, &rc, errbuf, errcap)
	config := []byte("{}")
	if json != nil && n > 0 {
		config = C.GoBytes(unsafe.Pointer(json), C.int(n))
	}
	inst, err := m.configure(config)
	if err != nil {
		m.setErr(err)
		writeErr(errbuf, errcap, err.Error())
		return statusOf(err)
	}
	*outInstance = C.uintptr_t(inst)
	return 0
}

//export spiGoRelease
func spiGoRelease(state C.uintptr_t, instance C.uintptr_t) {
	m := cgo.Handle(state).Value().(*module)
	defer func() { _ = recover() }()
	m.release(uintptr(instance))
}

//export spiGoDestroy
func spiGoDestroy(state C.uintptr_t) {
	h := cgo.Handle(state)
	m := h.Value().(*module)
	defer h.Delete()
	defer func() { _ = recover() }()
	m.destroy()
}

//export spiGoClassify
func spiGoClassify(state, instance C.uintptr_t, req *C.spi_request_view,
	pressure C.int32_t, out *C.spi_classification) (rc C.int) {
	m := cgo.Handle(state).Value().(*module)
	view := &RequestView{v: req}
	defer func() { view.v = nil }()
	defer recovered(m, &rc, nil, 0)
	v, err := m.impl.(Classifier).Classify(cgo.Handle(instance).Value(), view, Pressure(pressure))
	if err != nil {
		m.setErr(err)
		return statusOf(err)
	}
	fillVerdict(out, v)
	return 0
}

//export spiGoClassifyLevels
func spiGoClassifyLevels(state, instance C.uintptr_t, req *C.spi_request_view,
	out *C.spi_classification, levels *C.spi_degrade_levels) (rc C.int) {
	m := cgo.Handle(state).Value().(*module)
	view := &RequestView{v: req}
	defer func() { view.v = nil }()
	defer recovered(m, &rc, nil, 0)
	v, lv, err := m.impl.(LevelsClassifier).ClassifyLevels(cgo.Handle(instance).Value(), view)
	if err != nil {
		m.setErr(err)
		return statusOf(err)
	}
	fillVerdict(out, v)
	fillLevels(levels, lv)
	return 0
}

//export spiGoChoose
func spiGoChoose(state, instance C.uintptr_t, ctx *C.spi_route_context,
	out *C.spi_policy_choice) (rc C.int) {
	m := cgo.Handle(state).Value().(*module)
	var view *RequestView
	if ctx.req != nil {
		view = &RequestView{v: ctx.req}
		defer func() { view.v = nil }()
	}
	defer recovered(m, &rc, nil, 0)
	ch, err := m.impl.(Policy).Choose(cgo.Handle(instance).Value(), routeContextFrom(ctx, view))
	if err != nil {
		m.setErr(err)
		return statusOf(err)
	}
	if err := fillChoice(out, ch, int(ctx.n_candidates)); err != nil {
		m.setErr(err)
		return C.SPI_EMODULE
	}
	return 0
}

//export spiGoBuildKey
func spiGoBuildKey(state, instance C.uintptr_t, req *C.spi_request_view,
	out *C.spi_cache_key) (rc C.int) {
	m := cgo.Handle(state).Value().(*module)
	view := &RequestView{v: req}
	defer func() { view.v = nil }()
	defer recovered(m, &rc, nil, 0)
	k, err := m.impl.(KeyBuilder).BuildKey(cgo.Handle(instance).Value(), view)
	if err != nil {
		m.setErr(err)
		return statusOf(err)
	}
	out.high64 = C.uint64_t(k.High)
	out.low64 = C.uint64_t(k.Low)
	return 0
}

//export spiGoBlockHashes
func spiGoBlockHashes(state, instance C.uintptr_t, req *C.spi_request_view,
	key *C.spi_cache_key, out *C.uint64_t, capacity C.size_t, nOut *C.size_t) (rc C.int) {
	m := cgo.Handle(state).Value().(*module)
	view := &RequestView{v: req}
	defer func() { view.v = nil }()
	defer recovered(m, &rc, nil, 0)
	k := CacheKey{uint64(key.high64), uint64(key.low64)}
	hashes, err := m.impl.(KeyBuilder).BlockHashes(cgo.Handle(instance).Value(), view, k, nil)
	if err != nil {
		m.setErr(err)
		return statusOf(err)
	}
	if out != nil && capacity > 0 {
		dst := unsafe.Slice((*uint64)(unsafe.Pointer(out)), int(capacity))
		copy(dst, hashes)
	}
	*nOut = C.size_t(len(hashes))
	if len(hashes) > int(capacity) {
		// The first cap are written; the library asks again with room.
		return C.SPI_EBUFSIZE
	}
	return 0
}

//export spiGoPrice
func spiGoPrice(state, instance C.uintptr_t, req *C.spi_request_view,
	pool C.int32_t, out *C.spi_price) (rc C.int) {
	m := cgo.Handle(state).Value().(*module)
	view := &RequestView{v: req}
	defer func() { view.v = nil }()
	defer recovered(m, &rc, nil, 0)
	p, err := m.impl.(CostModel).Price(cgo.Handle(instance).Value(), view, Pool(pool))
	if err != nil {
		m.setErr(err)
		return statusOf(err)
	}
	out.prompt_tokens = C.double(p.PromptTokens)
	out.output_tokens = C.double(p.OutputTokens)
	out.gpu_seconds = C.double(p.GPUSeconds)
	out.usd = C.double(p.USD)
	out.usd_per_million = C.double(p.USDPerMillion)
	return 0
}

//export spiGoNodeTransition
func spiGoNodeTransition(h C.uintptr_t, node *C.char, n C.size_t, from, to C.int32_t) {
	defer func() { _ = recover() }()
	fn := cgo.Handle(h).Value().(func(string, NodeState, NodeState))
	fn(C.GoStringN(node, C.int(n)), NodeState(from), NodeState(to))
}

//export spiGoClock
func spiGoClock(h C.uintptr_t) C.int64_t { return C.int64_t(hookClock(uintptr(h))) }

//export spiGoLog
func spiGoLog(h C.uintptr_t, level C.int32_t, msg *C.char, n C.size_t) {
	hookLog(uintptr(h), int32(level), C.GoStringN(msg, C.int(n)))
}
