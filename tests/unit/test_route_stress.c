/*
 * test_route_stress.c - many threads route, report tickets, update replicas
 * and reload the configuration at once. Run under ThreadSanitizer in CI: it
 * must finish with no race report, no lost ticket and no count gone wrong.
 */
#include <pthread.h>
#include <stdatomic.h>
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

#define ROUTERS 3
#define ROUTES_PER_THREAD 3000

typedef struct shared {
  spi_engine *e;
  atomic_int stop;
  atomic_long routed, queued, refused, bad;
} shared;

static void add(spi_engine *e, const char *id, int32_t pool) {
  spi_replica_info ri =
      ff_replica(id, pool, pool == SPI_POOL_SPOT ? 1.5 : 4, 64);
  spi_replica_upsert(e, &ri);
}

static void load(spi_engine *e, const char *id, double run, double kv) {
  ff_report(e, id, run, 0, kv);
}

static void *router(void *arg) {
  shared *s = arg;
  spi_request *r = NULL;
  if (spi_request_new(s->e, &r) != SPI_OK) {
    atomic_fetch_add(&s->bad, 1);
    return NULL;
  }
  char sys[2048];
  memset(sys, 'x', sizeof sys);
  for (int i = 0; i < ROUTES_PER_THREAD; i++) {
    spi_request_reset(r);
    spi_request_set_str(r, SPI_REQ_MODEL, "m", 1);
    sys[0] = (char)('a' + i % 7); /* seven prefix families */
    spi_request_add_message(r, "system", 6, sys, sizeof sys);
    spi_request_add_message(r, "user", 4, "hello", 5);
    spi_request_set_int(r, SPI_REQ_STREAM, i % 3 == 0);
    if (i % 5 == 0) spi_request_set_str(r, SPI_REQ_SERVICE_TIER, "flex", 4);
    spi_request_set_int(r, SPI_REQ_REPLAYABLE, 1);
    spi_decision d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    int rc = spi_route(r, &d);
    if (rc == SPI_OK && d.ticket) {
      atomic_fetch_add(&s->routed, 1);
      spi_ticket_first_token(s->e, d.ticket);
      spi_ticket_progress(s->e, d.ticket, 5);
      spi_ticket_result res;
      memset(&res, 0, sizeof res);
      res.struct_size = sizeof res;
      res.status = i % 17 == 0 ? SPI_TICKET_ERROR : SPI_TICKET_OK;
      res.prompt_tokens = 600;
      res.output_tokens = 20;
      int frc = spi_ticket_finish(s->e, d.ticket, &res);
      if (frc != SPI_OK && frc != SPI_ESTALE) atomic_fetch_add(&s->bad, 1);
      /* A second finish must always be refused. */
      if (spi_ticket_finish(s->e, d.ticket, &res) != SPI_ESTALE)
        atomic_fetch_add(&s->bad, 1);
    } else if (rc == SPI_OK) {
      atomic_fetch_add(&s->queued, 1);
    } else if (rc == SPI_ESHED || rc == SPI_ENOCAPACITY || rc == SPI_EFULL) {
      atomic_fetch_add(&s->refused, 1);
    } else {
      atomic_fetch_add(&s->bad, 1);
    }
  }
  spi_request_free(r);
  return NULL;
}

static void *operator_thread(void *arg) {
  shared *s = arg;
  int i = 0;
  while (!atomic_load(&s->stop)) {
    load(s->e, "spot-1", i % 10, (i % 10) / 10.0);
    load(s->e, "spot-2", 2, 0.3);
    load(s->e, "od-1", 1, 0.2);
    load(s->e, "od-2", 3, 0.4);
    if (i % 50 == 10) spi_replica_remove(s->e, "spot-3", 6);
    if (i % 50 == 30) {
      add(s->e, "spot-3", SPI_POOL_SPOT);
      load(s->e, "spot-3", 0, 0.1);
    }
    if (i % 40 == 20)
      spi_replica_set_state(s->e, "od-2", 4, SPI_REPLICA_DRAINING);
    if (i % 40 == 35) spi_replica_set_state(s->e, "od-2", 4, SPI_REPLICA_ACTIVE);
    if (i % 25 == 0) {
      const char *cfg = (i / 25) % 2 ? "{\"router\":{\"index_bytes\":65536}}"
                                     : "{\"router\":{\"index_bytes\":131072}}";
      spi_engine_configure(s->e, cfg, strlen(cfg));
    }
    if (i % 30 == 0) {
      char buf[1 << 16];
      size_t need;
      spi_engine_metrics(s->e, buf, sizeof buf, &need);
      spi_signals sg;
      memset(&sg, 0, sizeof sg);
      sg.struct_size = sizeof sg;
      spi_engine_signals(s->e, &sg);
    }
    i++;
  }
  return NULL;
}

static void test_stress(void **st) {
  (void)st;
  shared s;
  memset(&s, 0, sizeof s);
  assert_int_equal(spi_engine_new(&s.e, NULL), SPI_OK);
  const char *cfg = "{\"router\":{\"index_bytes\":131072,\"max_tickets\":256}}";
  assert_int_equal(spi_engine_configure(s.e, cfg, strlen(cfg)), SPI_OK);
  add(s.e, "spot-1", SPI_POOL_SPOT);
  add(s.e, "spot-2", SPI_POOL_SPOT);
  add(s.e, "spot-3", SPI_POOL_SPOT);
  add(s.e, "od-1", SPI_POOL_ON_DEMAND);
  add(s.e, "od-2", SPI_POOL_ON_DEMAND);
  load(s.e, "spot-3", 0, 0.1);
  pthread_t t[ROUTERS], op;
  assert_int_equal(pthread_create(&op, NULL, operator_thread, &s), 0);
  for (int i = 0; i < ROUTERS; i++)
    assert_int_equal(pthread_create(&t[i], NULL, router, &s), 0);
  for (int i = 0; i < ROUTERS; i++) pthread_join(t[i], NULL);
  atomic_store(&s.stop, 1);
  pthread_join(op, NULL);
  assert_int_equal(atomic_load(&s.bad), 0);
  assert_true(atomic_load(&s.routed) > ROUTERS * ROUTES_PER_THREAD / 2);
  /* Every ticket was finished: nothing is left in flight anywhere. */
  for (size_t i = 0; i < spi_replica_count(s.e); i++) {
    spi_replica_status rs;
    memset(&rs, 0, sizeof rs);
    rs.struct_size = sizeof rs;
    assert_int_equal(spi_replica_status_at(s.e, i, &rs), SPI_OK);
    assert_int_equal(rs.inflight, 0);
  }
  spi_signals sg;
  memset(&sg, 0, sizeof sg);
  sg.struct_size = sizeof sg;
  assert_int_equal(spi_engine_signals(s.e, &sg), SPI_OK);
  for (int c = 1; c <= 3; c++) assert_true(sg.queue_depth[c] == 0);
  spi_engine_free(s.e);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_stress)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
