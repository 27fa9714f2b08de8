/*
 * test_lock_order.c - calls that take the engine's locks and RCU pins, run
 * against each other: notices against replica upserts and removals (which
 * once waited for pins while holding the lock a pinned notice needed, and
 * hung both threads), notices against configuration reloads, and notice plans
 * scanning the ticket table while routes take and finish tickets (a data race
 * ThreadSanitizer reports), and thousands of node transitions reported from
 * several threads at once. A watchdog turns a hang into a failure.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "spotinfer/spotinfer.h"
#include "fake_fleet.h"
#include "watchdog.h"

#define ROUNDS 2000

typedef struct shared {
  spi_engine *e;
  atomic_int stop;
  atomic_long bad, notices, routed;
} shared;

static int upsert(spi_engine *e, const char *id, const char *node,
                  int32_t pool) {
  spi_replica_info ri = ff_replica(id, pool, 2, 64);
  ff_place(&ri, node, "g5", "z1");
  return spi_replica_upsert(e, &ri);
}

static void load(spi_engine *e, const char *id) {
  ff_report(e, id, 1, 0, 0.1);
}

/* A terminate notice for machine m1, then its withdrawal, then advice. */
static void *noticer(void *arg) {
  shared *s = arg;
  spi_ticket_plan plans[64];
  plans[0].struct_size = sizeof plans[0];
  for (int i = 0; i < ROUNDS && !atomic_load(&s->stop); i++) {
    spi_notice n;
    memset(&n, 0, sizeof n);
    n.struct_size = sizeof n;
    n.kind = i % 3 == 2 ? SPI_NOTICE_REBALANCE : SPI_NOTICE_TERMINATE;
    n.active = i % 3 != 1;
    snprintf(n.node, sizeof n.node, "m1");
    snprintf(n.event_id, sizeof n.event_id, "ev-%d", i / 3);
    size_t found = 0;
    int rc = spi_engine_notice(s->e, &n, plans, 64, &found);
    if (rc != SPI_OK && rc != SPI_EBUFSIZE) atomic_fetch_add(&s->bad, 1);
    atomic_fetch_add(&s->notices, 1);
  }
  return NULL;
}

/* Replicas on the noticed machine come and go. */
static void *upserter(void *arg) {
  shared *s = arg;
  for (int i = 0; i < ROUNDS && !atomic_load(&s->stop); i++) {
    char id[16];
    snprintf(id, sizeof id, "x%d", i % 8);
    if (upsert(s->e, id, "m1", SPI_POOL_SPOT) != SPI_OK)
      atomic_fetch_add(&s->bad, 1);
    if (i % 2 && spi_replica_remove(s->e, id, strlen(id)) != SPI_OK)
      atomic_fetch_add(&s->bad, 1);
  }
  return NULL;
}

static void *configurer(void *arg) {
  shared *s = arg;
  for (int i = 0; i < ROUNDS / 4 && !atomic_load(&s->stop); i++) {
    const char *cfg = i % 2 ? "{\"router\":{\"drain_margin_ms\":1000}}"
                            : "{\"router\":{\"drain_margin_ms\":2000}}";
    if (spi_engine_configure(s->e, cfg, strlen(cfg)) != SPI_OK)
      atomic_fetch_add(&s->bad, 1);
  }
  return NULL;
}

static void test_notice_vs_upsert(void **st) {
  (void)st;
  spi_test_watchdog("notice vs replica upsert/remove", 30);
  shared s;
  memset(&s, 0, sizeof s);
  assert_int_equal(spi_engine_new(&s.e, NULL), SPI_OK);
  assert_int_equal(upsert(s.e, "a1", "m1", SPI_POOL_SPOT), SPI_OK);
  pthread_t n, u;
  assert_int_equal(pthread_create(&n, NULL, noticer, &s), 0);
  assert_int_equal(pthread_create(&u, NULL, upserter, &s), 0);
  pthread_join(n, NULL);
  pthread_join(u, NULL);
  assert_int_equal(atomic_load(&s.bad), 0);
  assert_int_equal(atomic_load(&s.notices), ROUNDS);
  spi_engine_free(s.e);
  alarm(0);
}

static void test_notice_vs_configure(void **st) {
  (void)st;
  spi_test_watchdog("notice vs configure", 30);
  shared s;
  memset(&s, 0, sizeof s);
  assert_int_equal(spi_engine_new(&s.e, NULL), SPI_OK);
  assert_int_equal(upsert(s.e, "a1", "m1", SPI_POOL_SPOT), SPI_OK);
  pthread_t n, u, c;
  assert_int_equal(pthread_create(&n, NULL, noticer, &s), 0);
  assert_int_equal(pthread_create(&u, NULL, upserter, &s), 0);
  assert_int_equal(pthread_create(&c, NULL, configurer, &s), 0);
  pthread_join(n, NULL);
  pthread_join(u, NULL);
  pthread_join(c, NULL);
  assert_int_equal(atomic_load(&s.bad), 0);
  spi_engine_free(s.e);
  alarm(0);
}

/* Routes take tickets on both machines in batches and finish them while
 * notices for m1 scan the ticket table for plans, so records are finished
 * and taken again during a scan. */
#define BATCH 8

static void finish(shared *s, uint64_t ticket) {
  spi_ticket_progress(s->e, ticket, 3);
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = SPI_TICKET_OK;
  res.output_tokens = 3;
  int rc = spi_ticket_finish(s->e, ticket, &res);
  if (rc != SPI_OK && rc != SPI_ESTALE) atomic_fetch_add(&s->bad, 1);
}

static void *router(void *arg) {
  shared *s = arg;
  spi_request *r = NULL;
  if (spi_request_new(s->e, &r) != SPI_OK) {
    atomic_fetch_add(&s->bad, 1);
    return NULL;
  }
  uint64_t open[BATCH];
  size_t nopen = 0;
  for (int i = 0; !atomic_load(&s->stop); i++) {
    spi_request_reset(r);
    spi_request_set_str(r, SPI_REQ_MODEL, "m", 1);
    spi_request_add_message(r, "user", 4, i % 2 ? "hello" : "world", 5);
    spi_decision d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    int rc = spi_route(r, &d);
    if (rc == SPI_OK && d.ticket) {
      atomic_fetch_add(&s->routed, 1);
      open[nopen++] = d.ticket;
    } else if (rc != SPI_OK && rc != SPI_ESHED && rc != SPI_ENOCAPACITY &&
               rc != SPI_EFULL) {
      atomic_fetch_add(&s->bad, 1);
    }
    /* Finish the oldest first: records go back and are retaken mid-scan. */
    if (nopen == BATCH || (rc != SPI_OK && nopen)) {
      for (size_t j = 0; j < nopen; j++) finish(s, open[j]);
      nopen = 0;
    }
  }
  for (size_t j = 0; j < nopen; j++) finish(s, open[j]);
  spi_request_free(r);
  return NULL;
}

static void test_tickets_vs_plan(void **st) {
  (void)st;
  spi_test_watchdog("tickets vs notice plans", 30);
  shared s;
  memset(&s, 0, sizeof s);
  assert_int_equal(spi_engine_new(&s.e, NULL), SPI_OK);
  /* Loads are reported once; a long age keeps them fresh however slowly
   * a loaded machine runs the notices. */
  const char *cfg =
      "{\"router\":{\"max_tickets\":64,\"load_max_age_ms\":3600000}}";
  assert_int_equal(spi_engine_configure(s.e, cfg, strlen(cfg)), SPI_OK);
  assert_int_equal(upsert(s.e, "a1", "m1", SPI_POOL_ON_DEMAND), SPI_OK);
  assert_int_equal(upsert(s.e, "b1", "m2", SPI_POOL_ON_DEMAND), SPI_OK);
  load(s.e, "a1");
  load(s.e, "b1");
  pthread_t n, r[2];
  assert_int_equal(pthread_create(&n, NULL, noticer, &s), 0);
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&r[i], NULL, router, &s), 0);
  pthread_join(n, NULL);
  /* On a loaded machine the notices may all be done before a route ran. */
  for (int i = 0; i < 2000 && atomic_load(&s.routed) < 100; i++) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  atomic_store(&s.stop, 1);
  for (int i = 0; i < 2; i++) pthread_join(r[i], NULL);
  assert_int_equal(atomic_load(&s.bad), 0);
  assert_true(atomic_load(&s.routed) > 0);
  spi_engine_free(s.e);
  alarm(0);
}

/* A node transition callback that removes the machine's replica and adds a
 * replacement: the notice must hold no pin and no lock when it calls back. */
static void on_transition(void *ud, const char *node, size_t len, int32_t from,
                          int32_t to) {
  (void)node;
  (void)len;
  (void)from;
  shared *s = ud;
  if (to != SPI_NODE_NOTICED) return;
  if (spi_replica_remove(s->e, "a1", 2) != SPI_OK) atomic_fetch_add(&s->bad, 1);
  if (upsert(s->e, "c1", "m3", SPI_POOL_ON_DEMAND) != SPI_OK)
    atomic_fetch_add(&s->bad, 1);
  atomic_fetch_add(&s->notices, 1);
}

static void test_callback_changes_replicas(void **st) {
  (void)st;
  spi_test_watchdog("replica change from a node transition callback", 30);
  shared s;
  memset(&s, 0, sizeof s);
  assert_int_equal(spi_engine_new(&s.e, NULL), SPI_OK);
  assert_int_equal(upsert(s.e, "a1", "m1", SPI_POOL_SPOT), SPI_OK);
  assert_int_equal(spi_engine_on_node_transition(s.e, on_transition, &s),
                   SPI_OK);
  spi_notice n;
  memset(&n, 0, sizeof n);
  n.struct_size = sizeof n;
  n.kind = SPI_NOTICE_TERMINATE;
  n.active = 1;
  snprintf(n.node, sizeof n.node, "m1");
  size_t found = 0;
  assert_int_equal(spi_engine_notice(s.e, &n, NULL, 0, &found), SPI_OK);
  assert_int_equal(atomic_load(&s.notices), 1);
  assert_int_equal(atomic_load(&s.bad), 0);
  assert_int_equal(spi_replica_count(s.e), 1);
  spi_engine_free(s.e);
  alarm(0);
}

/* Machines noticed on two threads while a third ticks: their deadlines
 * pass by the thousand inside one call, which reports them a chunk at a
 * time while the others record more, and the callback calls back into the
 * engine. Every machine is reported NOTICED, TERMINATED and REMOVED once. */
#define FLOOD 2000 /* a machine each: 4,000, which the table holds */
typedef struct flood {
  spi_engine *e;
  int64_t deadline;
  int which;
  atomic_int *stop;
  atomic_long noticed, terminated, removed, bad;
} flood;

static void on_flood(void *ud, const char *node, size_t len, int32_t from,
                     int32_t to) {
  (void)from;
  flood *f = ud;
  int32_t state = 0;
  if (spi_node_get_state(f->e, node, len, &state) != SPI_OK)
    atomic_fetch_add(&f->bad, 1);
  atomic_fetch_add(to == SPI_NODE_NOTICED      ? &f->noticed
                   : to == SPI_NODE_TERMINATED ? &f->terminated
                   : to == SPI_NODE_REMOVED    ? &f->removed
                                               : &f->bad,
                   1);
}

typedef struct flood_arg {
  flood *f;
  int which;
} flood_arg;

static void *flood_noticer(void *arg) {
  flood_arg *a = arg;
  for (int i = 0; i < FLOOD; i++) {
    spi_notice n;
    memset(&n, 0, sizeof n);
    n.struct_size = sizeof n;
    n.kind = SPI_NOTICE_TERMINATE;
    n.active = 1;
    n.deadline_ns = a->f->deadline;
    snprintf(n.node, sizeof n.node, "f%d-%05d", a->which, i);
    size_t found = 0;
    if (spi_engine_notice(a->f->e, &n, NULL, 0, &found) != SPI_OK)
      atomic_fetch_add(&a->f->bad, 1);
  }
  return NULL;
}

static void *flood_ticker(void *arg) {
  flood *f = arg;
  while (!atomic_load(f->stop))
    if (spi_engine_tick(f->e) != SPI_OK) atomic_fetch_add(&f->bad, 1);
  return NULL;
}

static void test_transition_flood_on_threads(void **st) {
  (void)st;
  spi_test_watchdog("node transitions reported from several threads", 120);
  atomic_int stop = 0;
  flood f;
  memset(&f, 0, sizeof f);
  f.stop = &stop;
  assert_int_equal(spi_engine_new(&f.e, NULL), SPI_OK);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  f.deadline = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + 50000000;
  assert_int_equal(spi_engine_on_node_transition(f.e, on_flood, &f), SPI_OK);
  pthread_t t[3];
  flood_arg a[2] = {{&f, 0}, {&f, 1}};
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&t[i], NULL, flood_noticer, &a[i]), 0);
  assert_int_equal(pthread_create(&t[2], NULL, flood_ticker, &f), 0);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  atomic_store(&stop, 1);
  pthread_join(t[2], NULL);
  for (;;) { /* past the deadline, then the tick that takes it */
    clock_gettime(CLOCK_REALTIME, &ts);
    if ((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec > f.deadline) break;
    struct timespec nap = {0, 1000000};
    nanosleep(&nap, NULL);
  }
  assert_int_equal(spi_engine_tick(f.e), SPI_OK);
  assert_int_equal(atomic_load(&f.bad), 0);
  assert_int_equal(atomic_load(&f.noticed), 2 * FLOOD);
  assert_int_equal(atomic_load(&f.terminated), 2 * FLOOD);
  assert_int_equal(atomic_load(&f.removed), 2 * FLOOD);
  spi_engine_free(f.e);
  alarm(0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_notice_vs_upsert),
      cmocka_unit_test(test_notice_vs_configure),
      cmocka_unit_test(test_tickets_vs_plan),
      cmocka_unit_test(test_callback_changes_replicas),
      cmocka_unit_test(test_transition_flood_on_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
