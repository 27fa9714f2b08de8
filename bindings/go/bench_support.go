package spotinfer

/*
#include <stdint.h>
#include <string.h>
#include <spotinfer/spotinfer.h>

// The same calls as the Go benchmarks, looped in C, so a benchmark can
// report the cost of crossing cgo next to the cost of the call itself.
static int64_t spi_go_bench_fixed_clock(void *ud) {
  (void)ud;
  return 1700000000LL * 1000000000LL;
}

// An engine on a fixed C clock, as tests/bench/bench_route.c uses, so the
// route benchmarks do not pay a C-to-Go callback per clock read.
static int spi_go_bench_engine(spi_engine **out) {
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = spi_go_bench_fixed_clock;
  return spi_engine_new(out, &h);
}

static int spi_go_bench_classify(spi_request *r, int n) {
  spi_classification c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  int rc = 0;
  for (int i = 0; i < n && rc == 0; i++) rc = spi_classify(r, i & 3, &c);
  return rc;
}

static int spi_go_bench_route(spi_engine *e, spi_request **reqs, int nreq,
                              int n) {
  spi_decision d;
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.output_tokens = 10;
  for (int i = 0; i < n; i++) {
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    int rc = spi_route(reqs[i % nreq], &d);
    if (rc != 0) return rc;
    if (d.ticket) spi_ticket_finish(e, d.ticket, &res);
  }
  return 0;
}
*/
import "C"

import "runtime"

// newBenchEngine is NewEngine on a fixed C clock (benchmarks only).
func newBenchEngine(config string) (*Engine, error) {
	e := &Engine{reqs: make(map[*reqHandle]struct{}), queues: make(map[*queueHandle]struct{})}
	if rc := C.spi_go_bench_engine(&e.p); rc != 0 {
		return nil, newError(rc, "spi_engine_new", "")
	}
	runtime.SetFinalizer(e, (*Engine).Close)
	if err := e.Configure(config); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// benchClassifyC runs n classify calls on r in a C loop (pressure i&3, as
// the Go benchmark does).
func benchClassifyC(r *Request, n int) error {
	rc := C.spi_go_bench_classify(r.h.p, C.int(n))
	runtime.KeepAlive(r)
	if rc != 0 {
		return r.fail(rc, "spi_classify")
	}
	return nil
}

// benchRouteC runs n route+finish rounds over reqs (in turn) in a C loop.
// The slice passed to C holds only C pointers, as the cgo rules require.
func benchRouteC(reqs []*Request, n int) error {
	ps := make([]*C.spi_request, len(reqs))
	for i, r := range reqs {
		ps[i] = r.h.p
	}
	e := reqs[0].e
	rc := C.spi_go_bench_route(e.p, &ps[0], C.int(len(ps)), C.int(n))
	runtime.KeepAlive(reqs)
	if rc != 0 {
		return newError(rc, "spi_route", "")
	}
	return nil
}
