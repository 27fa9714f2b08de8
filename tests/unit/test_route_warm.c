/*
 * test_route_warm.c - a warm route allocates nothing.
 *
 * An engine with a counting allocator hook and 512 replicas (so the pool
 * index ranks them by blocks, lib/pool_index.c): once a request has been
 * routed (its scratch space grown), routing it again makes no allocation,
 * while load reports, ticket finishes, state changes, stale loads and a
 * new replica set land between the routes; some requests exclude
 * replicas.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "spotinfer/spotinfer.h"
#include "fake_fleet.h"

#define NREP 512
#define NREQ 16
#define MS 1000000LL

typedef struct counting {
  long allocs;
  int64_t now;
} counting;

static void *c_alloc(void *ud, size_t n) {
  ((counting *)ud)->allocs++;
  return malloc(n);
}
static void c_free(void *ud, void *p) {
  (void)ud;
  free(p);
}
static int64_t c_clock(void *ud) { return ((counting *)ud)->now; }

static void report(spi_engine *e, int i, double running) {
  char id[32];
  snprintf(id, sizeof id, "w%03d", i);
  assert_int_equal(ff_report(e, id, running, i % 3, 0.25), SPI_OK);
}

static void upsert(spi_engine *e, int i) {
  char id[32];
  snprintf(id, sizeof id, "w%03d", i);
  spi_replica_info ri =
      ff_replica(id, i % 2 ? SPI_POOL_ON_DEMAND : SPI_POOL_SPOT,
                 i % 2 ? 4.5 : 1.8, 1 + (uint32_t)(i % 8));
  ri.model_tier = i % 5 ? SPI_TIER_LARGE : SPI_TIER_SMALL;
  assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
}

static void finish(spi_engine *e, uint64_t t) {
  spi_ticket_result r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  r.output_tokens = 10;
  assert_int_equal(spi_ticket_finish(e, t, &r), SPI_OK);
}

/* Route request i; returns the allocations the route made. */
static long route_counting(spi_engine *e, counting *c, spi_request *r) {
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  long before = c->allocs;
  int rc = spi_route(r, &d);
  long made = c->allocs - before;
  assert_true(rc == SPI_OK || rc == SPI_ENOCAPACITY || rc == SPI_ESHED);
  if (rc == SPI_OK && d.ticket) finish(e, d.ticket);
  return made;
}

static void test_warm_route_allocates_nothing(void **st) {
  (void)st;
  counting c = {0, 1700000000LL * 1000 * MS};
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.alloc = c_alloc;
  h.free = c_free;
  h.alloc_user_data = &c;
  h.clock = c_clock;
  h.clock_user_data = &c;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &h), SPI_OK);
  const char *cfg = "{\"router\":{\"max_tickets\":4096}}";
  assert_int_equal(spi_engine_configure(e, cfg, strlen(cfg)), SPI_OK);
  for (int i = 0; i < NREP; i++) {
    upsert(e, i);
    report(e, i, i % 7);
  }
  spi_request *reqs[NREQ];
  char prompt[8192];
  for (int q = 0; q < NREQ; q++) {
    for (size_t k = 0; k < sizeof prompt; k++)
      prompt[k] = (char)('a' + (k * 7 + (size_t)q * 3) % 26);
    assert_int_equal(spi_request_new(e, &reqs[q]), SPI_OK);
    spi_request_set_str(reqs[q], SPI_REQ_MODEL, "m", 1);
    spi_request_set_str(reqs[q], SPI_REQ_PROMPT, prompt, sizeof prompt);
    spi_request_set_int(reqs[q], SPI_REQ_REPLAYABLE, q % 2);
    if (q % 4 == 3) { /* routed past some replicas: every slot is read */
      assert_int_equal(spi_request_exclude_replica(reqs[q], "w001", 4), SPI_OK);
      assert_int_equal(spi_request_exclude_replica(reqs[q], "w007", 4), SPI_OK);
      assert_int_equal(spi_request_exclude_replica(reqs[q], "gone", 4), SPI_OK);
    }
  }
  /* Warm: every request routed twice (scratch grown, metric families
   * made). */
  for (int round = 0; round < 2; round++)
    for (int q = 0; q < NREQ; q++) route_counting(e, &c, reqs[q]);
  long total = 0;
  for (int i = 0; i < 400; i++) {
    total += route_counting(e, &c, reqs[i % NREQ]);
    report(e, (i * 37) % NREP, (double)(i % 11));
    if (i % 50 == 10) { /* a state change, then back */
      assert_int_equal(spi_replica_set_state(e, "w007", 4, SPI_REPLICA_DRAINING),
                       SPI_OK);
      total += route_counting(e, &c, reqs[i % NREQ]);
      assert_int_equal(spi_replica_set_state(e, "w007", 4, SPI_REPLICA_ACTIVE),
                       SPI_OK);
    }
    if (i == 200) c.now += 5000 * MS; /* every load but the new goes stale */
    if (i == 300) upsert(e, 3); /* unchanged: the same set */
    if (i == 310) { /* a new set: the index is built again */
      long at = c.allocs;
      upsert(e, NREP);
      report(e, NREP, 1);
      c.allocs = at; /* the upsert's own allocation is not a route's */
    }
  }
  assert_int_equal(total, 0);
  for (int q = 0; q < NREQ; q++) spi_request_free(reqs[q]);
  spi_engine_free(e);
}

/* A fresh request's first route on a warm engine: a prompt of up to 16
 * blocks keeps its block hashes in the request, so the route allocates
 * nothing; a longer one allocates its hashes once (and hashes them once). */
static void test_first_route_of_a_new_request(void **st) {
  (void)st;
  counting c = {0, 1700000000LL * 1000 * MS};
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.alloc = c_alloc;
  h.free = c_free;
  h.alloc_user_data = &c;
  h.clock = c_clock;
  h.clock_user_data = &c;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &h), SPI_OK);
  for (int i = 0; i < 8; i++) {
    upsert(e, i);
    report(e, i, i % 3);
  }
  static char prompt[64 * 1024];
  for (size_t k = 0; k < sizeof prompt; k++)
    prompt[k] = (char)('a' + (k * 7) % 26);
  const size_t sizes[] = {1024, 1024, 16 * 1024, 16 * 1024 + 1023, 17 * 1024,
                          64 * 1024};
  const long want[] = {-1, 0, 0, 0, 1, 1}; /* -1: warming the engine */
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    spi_request *r = NULL;
    assert_int_equal(spi_request_new(e, &r), SPI_OK);
    spi_request_set_str(r, SPI_REQ_MODEL, "m", 1);
    spi_request_set_str(r, SPI_REQ_PROMPT, prompt, sizes[i]);
    spi_request_set_int(r, SPI_REQ_REPLAYABLE, 1);
    long made = route_counting(e, &c, r);
    if (want[i] >= 0) assert_int_equal(made, want[i]);
    spi_request_free(r);
  }
  spi_engine_free(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_warm_route_allocates_nothing),
      cmocka_unit_test(test_first_route_of_a_new_request),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
