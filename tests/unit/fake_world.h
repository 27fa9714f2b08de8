/*
 * fake_world.h - the world the route, replica and ticket tests run in: an
 * engine on a fake clock, with allocation hooks that count what they hand
 * out and can refuse one allocation, and a request to route with.
 *
 *   world *w = mk(config_json_or_NULL);
 *   w->now += 5 * SEC;          the engine's clock (ns since the epoch)
 *   w->fail_at = next_alloc(w); refuse the next allocation
 *   done(w);                    frees everything; nothing may leak
 *
 * and a few calls most of those tests make: add_replica, report_load,
 * finish_rc.
 *
 * The hooks run on whichever thread makes the call, so everything they
 * touch is atomic: replica writers free retired sets concurrently, and a
 * route's allocation may race a report's.
 *
 * A test may set on_clock: it runs inside the engine's clock hook (on the
 * calling thread, with whatever the engine holds at that moment), so a
 * test can force an interleaving at a known point of a call.
 */
#ifndef SPI_TEST_FAKE_WORLD_H
#define SPI_TEST_FAKE_WORLD_H

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "spotinfer/spotinfer.h"

#include "fake_fleet.h"

#define MS 1000000LL
#define SEC 1000000000LL

typedef struct world {
  spi_engine *e;
  spi_request *r;
  atomic_llong now;
  atomic_long allocs, frees;
  atomic_long failed;    /* allocations refused */
  atomic_long attempts;  /* allocations asked for, refused or not */
  atomic_long fail_at;   /* refuse the attempt with this number; 0 = never */
  atomic_size_t biggest; /* the largest allocation since last cleared */
  void (*on_clock)(struct world *w);
  void *user; /* for on_clock */
} world;

static inline int64_t fw_clock(void *ud) {
  world *w = ud;
  if (w->on_clock) w->on_clock(w);
  return atomic_load(&w->now);
}

static inline void *fw_alloc(void *ud, size_t n) {
  world *w = ud;
  long attempt = atomic_fetch_add(&w->attempts, 1) + 1;
  if (attempt == atomic_load(&w->fail_at)) {
    atomic_fetch_add(&w->failed, 1);
    return NULL;
  }
  atomic_fetch_add(&w->allocs, 1);
  size_t big = atomic_load(&w->biggest);
  while (n > big && !atomic_compare_exchange_weak(&w->biggest, &big, n)) {
  }
  return malloc(n);
}

static inline void fw_free(void *ud, void *p) {
  if (p) atomic_fetch_add(&((world *)ud)->frees, 1);
  free(p);
}

/* The number of the next allocation attempt, for fail_at. */
static inline long next_alloc(world *w) {
  return atomic_load(&w->attempts) + 1;
}

/* A world with an engine configured with config (NULL: the defaults). */
static inline world *mk(const char *config) {
  world *w = calloc(1, sizeof *w);
  assert_non_null(w);
  atomic_init(&w->now, 1700000000 * SEC);
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = fw_clock;
  h.clock_user_data = w;
  h.alloc = fw_alloc;
  h.free = fw_free;
  h.alloc_user_data = w;
  assert_int_equal(spi_engine_new(&w->e, &h), SPI_OK);
  if (config) {
    int rc = spi_engine_configure(w->e, config, strlen(config));
    if (rc) print_error("%s\n", spi_engine_errmsg(w->e));
    assert_int_equal(rc, SPI_OK);
  }
  assert_int_equal(spi_request_new(w->e, &w->r), SPI_OK);
  return w;
}

/* Free the world: every allocation the engine made was given back. */
static inline void done(world *w) {
  spi_request_free(w->r);
  spi_engine_free(w->e);
  assert_int_equal(atomic_load(&w->allocs), atomic_load(&w->frees));
  free(w);
}

/* cmocka fixtures: each test gets *state, a world on the defaults. */
static inline int world_setup(void **state) {
  *state = mk(NULL);
  return 0;
}

static inline int world_teardown(void **state) {
  done(*state);
  return 0;
}

/* A replica of pool taking max_inflight requests at once (spot at 1.8
 * $/h, on-demand at 4.5). */
static inline void add_replica(world *w, const char *id, int32_t pool,
                               uint32_t max_inflight) {
  spi_replica_info ri = ff_replica(
      id, pool, pool == SPI_POOL_SPOT ? 1.8 : 4.5, max_inflight);
  int rc = spi_replica_upsert(w->e, &ri);
  if (rc) print_error("%s\n", spi_engine_errmsg(w->e));
  assert_int_equal(rc, SPI_OK);
}

/* A load report measured now. */
static inline void report_load(world *w, const char *id, double running,
                               double waiting, double kv_usage) {
  assert_int_equal(ff_report(w->e, id, running, waiting, kv_usage), SPI_OK);
}

/* Finish ticket t with status (100 prompt and 10 output tokens). */
static inline int finish_rc(world *w, uint64_t t, int32_t status) {
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = status;
  res.prompt_tokens = 100;
  res.output_tokens = 10;
  return spi_ticket_finish(w->e, t, &res);
}

#endif /* SPI_TEST_FAKE_WORLD_H */
