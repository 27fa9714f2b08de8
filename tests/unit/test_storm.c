/*
 * test_storm.c - everything at once on 11 threads for a bounded time:
 * routing with ticket reports (some routes excluding a replica), load
 * reports, replica upserts and removals, configuration reloads, notices
 * and node ticks, replay queue operations, and read-outs. Run under
 * ThreadSanitizer in CI (the tsan stage runs every ctest): it must end with
 * no race report, no hang (a watchdog fails it), no unexpected status, no
 * route naming a replica it excludes, and no ticket left in flight.
 *
 * SPI_STORM_SECONDS sets how long the storm blows (default 2).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "spotinfer/spotinfer.h"
#include "fake_fleet.h"
#include "watchdog.h"

#define ROUTERS 4
#define KINDS 8 /* counters, one per kind of worker */

typedef struct storm {
  spi_engine *e;
  spi_replay_queue *q;
  atomic_int stop;
  atomic_long bad;
  atomic_long done[KINDS];
  char last_bad[256];
  pthread_mutex_t bad_lock;
} storm;

static void bad(storm *s, const char *what, int rc) {
  atomic_fetch_add(&s->bad, 1);
  pthread_mutex_lock(&s->bad_lock);
  snprintf(s->last_bad, sizeof s->last_bad, "%s: %s", what, spi_strerror(rc));
  pthread_mutex_unlock(&s->bad_lock);
}

static int upsert(spi_engine *e, const char *id, const char *node,
                  int32_t pool) {
  spi_replica_info ri =
      ff_replica(id, pool, pool == SPI_POOL_SPOT ? 1.5 : 4, 32);
  ff_place(&ri, node, "g5", "z1");
  return spi_replica_upsert(e, &ri);
}

/* Report progress on and finish every open ticket; some end in error. */
static void finish_all(storm *s, const uint64_t *open, size_t n, int i) {
  for (size_t j = 0; j < n; j++) {
    int prc = spi_ticket_progress(s->e, open[j], 4);
    if (prc != SPI_OK && prc != SPI_ESTALE) bad(s, "progress", prc);
    spi_ticket_result res;
    memset(&res, 0, sizeof res);
    res.struct_size = sizeof res;
    res.status = (i + (int)j) % 13 == 0 ? SPI_TICKET_ERROR : SPI_TICKET_OK;
    res.prompt_tokens = 100;
    res.output_tokens = 4;
    int frc = spi_ticket_finish(s->e, open[j], &res);
    if (frc != SPI_OK && frc != SPI_ESTALE) bad(s, "finish", frc);
  }
}

/* Whether decision d names id, as the replica or a fallback. */
static int names(const spi_decision *d, const char *id) {
  if (strcmp(d->replica_id, id) == 0) return 1;
  for (uint32_t k = 0; k < d->n_fallbacks; k++)
    if (strcmp(d->fallback_ids[k], id) == 0) return 1;
  return 0;
}

/* Every fourth route excludes a replica: one the load reports reach, or
 * one of the two the replicas thread adds and removes meanwhile. */
static const char *excluded_at(int i) {
  static const char *const ids[] = {"a1", "x0", "x1"};
  return i % 4 == 0 ? ids[(i / 4) % 3] : NULL;
}

static void *router(void *arg) {
  storm *s = arg;
  spi_request *r = NULL;
  if (spi_request_new(s->e, &r) != SPI_OK) {
    bad(s, "request_new", SPI_ENOMEM);
    return NULL;
  }
  uint64_t open[6];
  size_t nopen = 0;
  for (int i = 0; !atomic_load(&s->stop); i++) {
    spi_request_reset(r);
    spi_request_set_str(r, SPI_REQ_MODEL, "m", 1);
    char sys[64];
    snprintf(sys, sizeof sys, "system prompt family %d", i % 5);
    spi_request_add_message(r, "system", 6, sys, strlen(sys));
    spi_request_add_message(r, "user", 4, "hello", 5);
    spi_request_set_int(r, SPI_REQ_REPLAYABLE, 1);
    const char *ex = excluded_at(i);
    if (ex) {
      int erc = spi_request_exclude_replica(r, ex, strlen(ex));
      if (erc != SPI_OK) bad(s, "exclude_replica", erc);
    }
    spi_decision d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    int rc = spi_route(r, &d);
    if (rc == SPI_OK && ex && names(&d, ex))
      bad(s, "route named the replica it excludes", SPI_EINVAL);
    if (rc == SPI_OK && d.ticket) {
      open[nopen++] = d.ticket;
      int frc = spi_ticket_first_token(s->e, d.ticket);
      if (frc != SPI_OK && frc != SPI_ESTALE) bad(s, "first_token", frc);
    } else if (rc != SPI_OK && rc != SPI_ESHED && rc != SPI_ENOCAPACITY &&
               rc != SPI_EFULL) {
      bad(s, "route", rc);
    }
    if (nopen == 6 || (rc != SPI_OK && nopen)) {
      finish_all(s, open, nopen, i);
      nopen = 0;
    }
    atomic_fetch_add(&s->done[0], 1);
  }
  finish_all(s, open, nopen, 0);
  spi_request_free(r);
  return NULL;
}

static void *reporter(void *arg) {
  storm *s = arg;
  static const char *const ids[] = {"a1", "a2", "b1", "x0", "x1"};
  const char *metrics = "vllm:num_requests_running 3\n"
                        "vllm:num_requests_waiting 1\n"
                        "vllm:gpu_cache_usage_perc 0.25\n";
  for (int i = 0; !atomic_load(&s->stop); i++) {
    const char *id = ids[i % 5];
    int rc = ff_report(s->e, id, i % 7, 0, (i % 10) / 20.0);
    if (rc != SPI_OK && rc != SPI_ENOTFOUND) bad(s, "report_load", rc);
    rc = spi_replica_report_metrics(s->e, id, strlen(id), metrics,
                                    strlen(metrics));
    if (rc != SPI_OK && rc != SPI_ENOTFOUND) bad(s, "report_metrics", rc);
    atomic_fetch_add(&s->done[1], 1);
  }
  return NULL;
}

static void *replicas(void *arg) {
  storm *s = arg;
  for (int i = 0; !atomic_load(&s->stop); i++) {
    char id[8];
    snprintf(id, sizeof id, "x%d", i % 2);
    int rc = upsert(s->e, id, i % 3 ? "m1" : "m3", SPI_POOL_SPOT);
    if (rc != SPI_OK) bad(s, "upsert", rc);
    if (i % 3 == 1) {
      rc = spi_replica_remove(s->e, id, strlen(id));
      if (rc != SPI_OK) bad(s, "remove", rc);
    }
    if (i % 5 == 0) {
      rc = spi_replica_set_state(s->e, "a2", 2,
                                 i % 10 ? SPI_REPLICA_ACTIVE
                                        : SPI_REPLICA_DRAINING);
      if (rc != SPI_OK) bad(s, "set_state", rc);
    }
    atomic_fetch_add(&s->done[2], 1);
  }
  return NULL;
}

static void *configurer(void *arg) {
  storm *s = arg;
  for (int i = 0; !atomic_load(&s->stop); i++) {
    char cfg[160];
    snprintf(cfg, sizeof cfg,
             "{\"router\":{\"max_tickets\":256,\"index_bytes\":%d,"
             "\"drain_margin_ms\":%d}}",
             i % 2 ? 65536 : 131072, 1000 + i % 3 * 500);
    int rc = spi_engine_configure(s->e, cfg, strlen(cfg));
    if (rc != SPI_OK) bad(s, "configure", rc);
    atomic_fetch_add(&s->done[3], 1);
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

static void *noticer(void *arg) {
  storm *s = arg;
  spi_ticket_plan plans[32];
  plans[0].struct_size = sizeof plans[0];
  for (int i = 0; !atomic_load(&s->stop); i++) {
    spi_notice n;
    memset(&n, 0, sizeof n);
    n.struct_size = sizeof n;
    n.kind = i % 4 == 3 ? SPI_NOTICE_REBALANCE : SPI_NOTICE_TERMINATE;
    n.active = i % 4 != 1;
    snprintf(n.node, sizeof n.node, "m%d", 1 + i % 3);
    size_t found = 0;
    int rc = spi_engine_notice(s->e, &n, plans, i % 2 ? 32 : 0, &found);
    if (rc != SPI_OK && rc != SPI_EBUFSIZE) bad(s, "notice", rc);
    rc = spi_engine_tick(s->e);
    if (rc != SPI_OK) bad(s, "tick", rc);
    int32_t st = 0;
    rc = spi_node_get_state(s->e, "m2", 2, &st);
    if (rc != SPI_OK) bad(s, "node_get_state", rc);
    atomic_fetch_add(&s->done[4], 1);
  }
  return NULL;
}

/* Claim one envelope, if any is ready, and ack it (nack one in four). */
static void claim_one(storm *s, uint8_t *buf, size_t cap, int i) {
  uint64_t claim = 0;
  spi_envelope out;
  memset(&out, 0, sizeof out);
  out.struct_size = sizeof out;
  size_t need = 0;
  int rc = spi_replay_claim(s->q, 0xeu, 1000, &claim, &out, buf, cap, &need);
  /* An empty queue: SPI_ENOTFOUND, or SPI_OK with no claim. */
  if (rc == SPI_OK && claim) {
    rc = i % 4 ? spi_replay_ack(s->q, claim) : spi_replay_nack(s->q, claim);
    if (rc != SPI_OK && rc != SPI_ESTALE) bad(s, "ack", rc);
  } else if (rc != SPI_OK && rc != SPI_ENOTFOUND) {
    bad(s, "claim", rc);
  }
}

static void *replayer(void *arg) {
  storm *s = arg;
  uint8_t buf[4096];
  for (int i = 0; !atomic_load(&s->stop); i++) {
    char key[32];
    snprintf(key, sizeof key, "k%d-%lu", i, (unsigned long)pthread_self() % 97);
    spi_envelope v;
    memset(&v, 0, sizeof v);
    v.struct_size = sizeof v;
    v.key = key;
    v.key_len = strlen(key);
    v.body = "{\"model\":\"m\",\"messages\":[]}";
    v.body_len = strlen(v.body);
    v.klass = SPI_CLASS_SILVER;
    int32_t dup = 0;
    int rc = spi_replay_enqueue(s->q, &v, &dup);
    if (rc != SPI_OK) bad(s, "enqueue", rc);
    /* Two claims an enqueue: a nacked envelope comes back, so one claim
     * each would leave the queue a quarter of an envelope longer every
     * turn, until a long run (valgrind's one thread at a time) filled
     * replay.max_bytes and every enqueue said SPI_EFULL. */
    claim_one(s, buf, sizeof buf, i);
    claim_one(s, buf, sizeof buf, i);
    spi_replay_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    if ((rc = spi_replay_stats_get(s->q, &st)) != SPI_OK) bad(s, "stats", rc);
    if ((rc = spi_replay_tick(s->q)) != SPI_OK) bad(s, "replay_tick", rc);
    atomic_fetch_add(&s->done[5], 1);
  }
  return NULL;
}

/* A second queue opened and closed on the engine while everything runs. */
static void *queue_cycler(void *arg) {
  storm *s = arg;
  while (!atomic_load(&s->stop)) {
    spi_replay_queue *q = NULL;
    int rc = spi_replay_open(s->e, "{\"store\":\"memory\"}", 18, &q);
    if (rc != SPI_OK) bad(s, "replay_open", rc);
    spi_replay_close(q);
    atomic_fetch_add(&s->done[6], 1);
  }
  return NULL;
}

static void *reader(void *arg) {
  storm *s = arg;
  static char buf[1 << 16];
  while (!atomic_load(&s->stop)) {
    size_t need = 0;
    int rc = spi_engine_metrics(s->e, buf, sizeof buf, &need);
    if (rc != SPI_OK && rc != SPI_EBUFSIZE) bad(s, "metrics", rc);
    spi_signals sg;
    memset(&sg, 0, sizeof sg);
    sg.struct_size = sizeof sg;
    if ((rc = spi_engine_signals(s->e, &sg)) != SPI_OK) bad(s, "signals", rc);
    rc = spi_engine_config_json(s->e, buf, sizeof buf, &need);
    if (rc != SPI_OK) bad(s, "config_json", rc);
    for (size_t i = 0; i < spi_replica_count(s->e); i++) {
      spi_replica_status rs;
      memset(&rs, 0, sizeof rs);
      rs.struct_size = sizeof rs;
      rc = spi_replica_status_at(s->e, i, &rs);
      if (rc != SPI_OK && rc != SPI_ENOTFOUND) bad(s, "status_at", rc);
    }
    atomic_fetch_add(&s->done[7], 1);
  }
  return NULL;
}

static void test_storm(void **st) {
  (void)st;
  const char *env = getenv("SPI_STORM_SECONDS");
  int seconds = env && atoi(env) > 0 ? atoi(env) : 2;
  spi_test_watchdog("the storm", (unsigned)seconds + 60);
  storm s;
  memset(&s, 0, sizeof s);
  pthread_mutex_init(&s.bad_lock, NULL);
  assert_int_equal(spi_engine_new(&s.e, NULL), SPI_OK);
  const char *cfg = "{\"router\":{\"max_tickets\":256}}";
  assert_int_equal(spi_engine_configure(s.e, cfg, strlen(cfg)), SPI_OK);
  assert_int_equal(upsert(s.e, "a1", "m1", SPI_POOL_SPOT), SPI_OK);
  assert_int_equal(upsert(s.e, "a2", "m2", SPI_POOL_ON_DEMAND), SPI_OK);
  assert_int_equal(upsert(s.e, "b1", "m3", SPI_POOL_ON_DEMAND), SPI_OK);
  assert_int_equal(spi_replay_open(s.e, "{\"store\":\"memory\"}", 18, &s.q),
                   SPI_OK);
  void *(*const fn[])(void *) = {router,     router,  router,   router,
                                  reporter,   replicas, configurer, noticer,
                                  replayer,   queue_cycler, reader};
  enum { N = sizeof fn / sizeof fn[0] };
  _Static_assert(N == 11, "eleven threads");
  pthread_t t[N];
  for (int i = 0; i < N; i++)
    assert_int_equal(pthread_create(&t[i], NULL, fn[i], &s), 0);
  struct timespec ts = {seconds, 0};
  nanosleep(&ts, NULL);
  /* A slow runner (valgrind runs one thread at a time) may not have given
   * every kind of call a turn yet: blow on until it has (the watchdog
   * bounds this). */
  for (int k = 0; k < KINDS - 1; k++) {
    struct timespec tick = {0, 10000000};
    while (atomic_load(&s.done[k]) == 0) nanosleep(&tick, NULL);
  }
  atomic_store(&s.stop, 1);
  for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
  if (atomic_load(&s.bad)) print_error("last unexpected: %s\n", s.last_bad);
  assert_int_equal(atomic_load(&s.bad), 0);
  for (int k = 0; k < KINDS - 1; k++) assert_true(atomic_load(&s.done[k]) > 0);
  /* Every ticket was finished: nothing is left in flight anywhere. */
  for (size_t i = 0; i < spi_replica_count(s.e); i++) {
    spi_replica_status rs;
    memset(&rs, 0, sizeof rs);
    rs.struct_size = sizeof rs;
    assert_int_equal(spi_replica_status_at(s.e, i, &rs), SPI_OK);
    if (rs.inflight) print_error("%s: %u in flight\n", rs.id, (unsigned)rs.inflight);
    assert_int_equal(rs.inflight, 0);
  }
  { spi_replay_stats q; memset(&q,0,sizeof q); q.struct_size=sizeof q; spi_replay_stats_get(s.q,&q);
    fprintf(stderr,"DBG ready %llu delayed %llu dead %llu enq %llu iters %ld\n",(unsigned long long)q.ready[2],(unsigned long long)q.delayed,(unsigned long long)q.dead,(unsigned long long)q.enqueued,atomic_load(&s.done[5])); }
  spi_replay_close(s.q);
  spi_engine_free(s.e);
  pthread_mutex_destroy(&s.bad_lock);
  alarm(0);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_storm)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
