package spotinfer

import (
	"fmt"
	"strings"
	"testing"
)

// Benchmarks of the hot calls through cgo, each next to the same call
// looped in C inside the same process (the "c" sub-benchmarks), so the
// difference is the price of crossing cgo plus the binding's own work
// (converting the result struct, copying its strings). The route engines
// run on a fixed C clock, as tests/bench/bench_route.c does.
//
// Measured on a 2-vCPU build machine (AMD EPYC; compare the go/c pairs of
// one run, absolute numbers move with the machine's load):
//
//	BenchmarkClassify/go           169 ns/op  16 B/op  1 allocs/op
//	BenchmarkClassify/c             67 ns/op   (tests/bench/bench_classify,
//	                                            stream-chat-64B: 65 ns)
//	BenchmarkRoute/go             4325 ns/op 240 B/op  7 allocs/op
//	BenchmarkRoute/c              3365 ns/op   (tests/bench/bench_route,
//	                                            route_throughput, 1 thread:
//	                                            293,184/s = 3.4 us)
//	BenchmarkRoute/go-clock-hook  5086 ns/op   (the clock as a Go hook)
//
// So a classify through cgo costs about 0.1 us more than in C (the cgo
// transition and copying the reason string), and a route + finish about
// 1 us more (two transitions, the decision's strings, the per-request
// scratch decision); a clock written in Go adds about 0.75 us per route.

func classifyRequest(b *testing.B) (*Engine, *Request) {
	e := newEngine(b, "")
	r := newRequest(b, e)
	must(b, r.SetStr(FieldModel, "llama-3.1-70b"))
	must(b, r.AddMessage("system", "You are helpful."))
	must(b, r.AddMessage("user", strings.Repeat("lorem ipsum dolor ", 4)[:64]))
	must(b, r.SetBool(FieldStream, true))
	return e, r
}

func BenchmarkClassify(b *testing.B) {
	b.Run("go", func(b *testing.B) {
		_, r := classifyRequest(b)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := r.Classify(Pressure(i & 3)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("c", func(b *testing.B) {
		_, r := classifyRequest(b)
		b.ResetTimer()
		if err := benchClassifyC(r, b.N); err != nil {
			b.Fatal(err)
		}
	})
}

// routeWorld mirrors bench_route's route_throughput setup: a fixed clock,
// 64 replicas alternating spot / on-demand, 8 KiB prompts in 16 families.
func routeWorld(b *testing.B, goClock bool) (*Engine, []*Request) {
	const cfg = `{"router":{"max_tickets":65536,"index_bytes":67108864}}`
	var e *Engine
	var err error
	if goClock {
		e, err = NewEngineWithHooks(cfg, Hooks{Clock: func() int64 { return 1_700_000_000 * sec }})
	} else {
		e, err = newBenchEngine(cfg)
	}
	must(b, err)
	b.Cleanup(func() { e.Close() })
	for i := 0; i < 64; i++ {
		id := fmt.Sprintf("replica-%03d", i)
		pool, usd := PoolSpot, 1.8
		if i%2 == 1 {
			pool, usd = PoolOnDemand, 4.5
		}
		must(b, e.UpsertReplica(ReplicaInfo{ID: id, Pool: pool, USDPerHour: usd, MaxInflight: 256}))
		must(b, e.ReportLoad(id, Load{Running: float64(i % 7), Waiting: float64(i % 3), KVUsage: 0.3}))
	}
	reqs := make([]*Request, 64)
	p := make([]byte, 8192)
	for i := range reqs {
		for j := range p {
			p[j] = byte('a' + (j*7+(i%16)*13)%26)
		}
		copy(p[4096:], fmt.Sprintf("u%08d", 100+i))
		r := newRequest(b, e)
		must(b, r.SetStr(FieldModel, "llama"))
		must(b, r.SetStr(FieldPrompt, string(p)))
		must(b, r.SetInt(FieldReplayable, 1))
		reqs[i] = r
	}
	return e, reqs
}

func BenchmarkRoute(b *testing.B) {
	goRoute := func(goClock bool) func(b *testing.B) {
		return func(b *testing.B) {
			_, reqs := routeWorld(b, goClock)
			res := TicketResult{OutputTokens: 10}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d, err := reqs[i%len(reqs)].Route()
				if err != nil {
					b.Fatal(err)
				}
				if d.Serving() {
					if err := d.Ticket.Finish(res); err != nil {
						b.Fatal(err)
					}
				}
			}
		}
	}
	b.Run("go", goRoute(false))
	b.Run("c", func(b *testing.B) {
		_, reqs := routeWorld(b, false)
		b.ResetTimer()
		if err := benchRouteC(reqs, b.N); err != nil {
			b.Fatal(err)
		}
	})
	// The same with the clock as a Go hook: every clock read is a C-to-Go
	// callback, which is what a Go clock costs.
	b.Run("go-clock-hook", goRoute(true))
}

func BenchmarkCacheKeyAndBlocks(b *testing.B) {
	_, reqs := routeWorld(b, false)
	dst := make([]uint64, 0, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := reqs[i%len(reqs)]
		if _, err := r.CacheKey(); err != nil {
			b.Fatal(err)
		}
		var err error
		if dst, err = r.AppendBlockHashes(dst[:0]); err != nil {
			b.Fatal(err)
		}
	}
}
