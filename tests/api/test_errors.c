/*
 * test_errors.c - error detail belongs to its call: threads that fail calls
 * on one shared engine (or one replay queue) at once each read their own
 * message, never another thread's. Before the rule, two threads failing
 * spi_replica_report_metrics 20,000 times each read the other's message
 * dozens of times.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <spotinfer/spotinfer.h>

#define CALLS 20000

typedef struct worker {
  spi_engine *e;
  spi_replay_queue *q;
  const char *id; /* appears in every message this worker causes */
  long crossed, failed, empty;
} worker;

/* Bad metrics text for replica id: the message names the replica. */
static void *metrics_worker(void *arg) {
  worker *w = arg;
  for (int i = 0; i < CALLS; i++) {
    int rc = spi_replica_report_metrics(w->e, w->id, strlen(w->id), "x{", 2);
    if (rc == SPI_OK) continue;
    w->failed++;
    const char *m = spi_engine_errmsg(w->e);
    if (!m[0]) w->empty++;
    else if (!strstr(m, w->id)) w->crossed++;
  }
  return NULL;
}

static void test_engine_messages_do_not_cross(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_replica_info ri;
  memset(&ri, 0, sizeof ri);
  ri.struct_size = sizeof ri;
  ri.pool = SPI_POOL_ON_DEMAND;
  ri.usd_per_hour = 1;
  ri.max_inflight = 4;
  ri.id = "alpha-replica";
  ri.id_len = strlen(ri.id);
  assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
  ri.id = "beta-replica";
  ri.id_len = strlen(ri.id);
  assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
  worker w[2] = {{e, NULL, "alpha-replica", 0, 0, 0},
                 {e, NULL, "beta-replica", 0, 0, 0}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&t[i], NULL, metrics_worker, &w[i]), 0);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(w[i].failed, CALLS);
    assert_int_equal(w[i].empty, 0);
    assert_int_equal(w[i].crossed, 0);
  }
  /* A thread that never failed here has no message, whatever others did. */
  assert_string_equal(spi_engine_errmsg(e), "");
  spi_engine_free(e);
}

/* Bad envelopes on one queue: each thread's key length is its own. */
static void *replay_worker(void *arg) {
  worker *w = arg;
  spi_envelope v;
  memset(&v, 0, sizeof v);
  v.struct_size = sizeof v;
  v.key = "k";
  v.key_len = 1;
  v.body = "{}";
  v.body_len = 2;
  /* alpha: a bad class; beta: bad flags. */
  int alpha = w->id[0] == 'a';
  v.klass = alpha ? 9 : SPI_CLASS_SILVER;
  v.flags = alpha ? 0 : 0x40u;
  for (int i = 0; i < CALLS / 4; i++) {
    int32_t dup = 0;
    if (spi_replay_enqueue(w->q, &v, &dup) == SPI_OK) continue;
    w->failed++;
    const char *m = spi_replay_errmsg(w->q);
    if (!strstr(m, alpha ? "klass" : "flags")) w->crossed++;
  }
  return NULL;
}

static void test_queue_messages_do_not_cross(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_replay_queue *q = NULL;
  assert_int_equal(spi_replay_open(e, "{\"store\":\"memory\"}", 18, &q), SPI_OK);
  worker w[2] = {{e, q, "alpha", 0, 0, 0}, {e, q, "beta", 0, 0, 0}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&t[i], NULL, replay_worker, &w[i]), 0);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(w[i].failed, CALLS / 4);
    assert_int_equal(w[i].crossed, 0);
  }
  spi_replay_close(q);
  spi_engine_free(e);
}

/* Many failing threads on one engine: each reads its own message, however
 * many others failed since (the thread keeps it). A table of 32 slots on the
 * engine gave 16 of 48 the "replaced" note, and a thread whose slot was
 * given away while it read the message could read half of another's. */
#define MANY 48

typedef struct many {
  spi_engine *e;
  pthread_barrier_t *failed, *read;
  int idx;
  int own, lost, crossed;
} many;

static void *many_worker(void *arg) {
  many *m = arg;
  char id[32];
  snprintf(id, sizeof id, "ghost-%02d", m->idx);
  spi_replica_remove(m->e, id, strlen(id)); /* not found: names id */
  pthread_barrier_wait(m->failed);
  const char *msg = spi_engine_errmsg(m->e);
  if (strstr(msg, id)) m->own = 1;
  else if (strstr(msg, "replaced")) m->lost = 1;
  else m->crossed = 1;
  pthread_barrier_wait(m->read);
  return NULL;
}

static void test_many_threads_read_their_own(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  pthread_barrier_t failed, read;
  pthread_barrier_init(&failed, NULL, MANY);
  pthread_barrier_init(&read, NULL, MANY);
  many m[MANY];
  pthread_t t[MANY];
  for (int i = 0; i < MANY; i++) {
    memset(&m[i], 0, sizeof m[i]);
    m[i].e = e;
    m[i].failed = &failed;
    m[i].read = &read;
    m[i].idx = i;
    assert_int_equal(pthread_create(&t[i], NULL, many_worker, &m[i]), 0);
  }
  int own = 0, lost = 0;
  for (int i = 0; i < MANY; i++) {
    pthread_join(t[i], NULL);
    assert_int_equal(m[i].crossed, 0);
    own += m[i].own;
    lost += m[i].lost;
  }
  assert_int_equal(own, MANY);
  assert_int_equal(lost, 0);
  pthread_barrier_destroy(&failed);
  pthread_barrier_destroy(&read);
  spi_engine_free(e);
}

/* One thread failing on more handles than it keeps messages for: the one
 * failed on longest ago reads the "replaced" note, never another handle's
 * message, and its own again once it fails there again. */
#define HANDLES 9

static void test_more_handles_than_kept(void **st) {
  (void)st;
  spi_engine *e[HANDLES];
  char id[HANDLES][16];
  for (int i = 0; i < HANDLES; i++) {
    assert_int_equal(spi_engine_new(&e[i], NULL), SPI_OK);
    snprintf(id[i], sizeof id[i], "ghost-%d", i);
    assert_int_equal(spi_replica_remove(e[i], id[i], strlen(id[i])),
                     SPI_ENOTFOUND);
  }
  assert_non_null(strstr(spi_engine_errmsg(e[0]), "replaced"));
  for (int i = 1; i < HANDLES; i++)
    assert_non_null(strstr(spi_engine_errmsg(e[i]), id[i]));
  assert_int_equal(spi_replica_remove(e[0], id[0], strlen(id[0])),
                   SPI_ENOTFOUND);
  assert_non_null(strstr(spi_engine_errmsg(e[0]), id[0]));
  /* A call that succeeds clears the thread's message on its handle. */
  assert_int_equal(spi_engine_configure(e[0], "{}", 2), SPI_OK);
  assert_string_equal(spi_engine_errmsg(e[0]), "");
  /* A handle made where a freed one was has no message of the old one. */
  spi_engine_free(e[1]);
  assert_int_equal(spi_engine_new(&e[1], NULL), SPI_OK);
  assert_string_equal(spi_engine_errmsg(e[1]), "");
  for (int i = 0; i < HANDLES; i++) spi_engine_free(e[i]);
}

/* A thread that makes an engine, fails a call on it and frees it, again and
 * again (a configuration checker), keeps the message of a handle it holds:
 * a freed handle gives its entry back at once. */
static void test_freed_handles_keep_nothing(void **st) {
  (void)st;
  spi_engine *a = NULL;
  assert_int_equal(spi_engine_new(&a, NULL), SPI_OK);
  assert_int_not_equal(spi_engine_configure(a, "{\"bogus_a\":1}", 13), SPI_OK);
  const char *kept = spi_engine_errmsg(a);
  assert_non_null(strstr(kept, "bogus_a"));
  for (int i = 0; i < 40; i++) {
    spi_engine *t = NULL;
    assert_int_equal(spi_engine_new(&t, NULL), SPI_OK);
    assert_int_not_equal(spi_engine_configure(t, "{\"bogus_t\":1}", 13), SPI_OK);
    spi_engine_free(t);
  }
  assert_ptr_equal(spi_engine_errmsg(a), kept);
  assert_non_null(strstr(kept, "bogus_a"));
  spi_engine_free(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_engine_messages_do_not_cross),
      cmocka_unit_test(test_queue_messages_do_not_cross),
      cmocka_unit_test(test_many_threads_read_their_own),
      cmocka_unit_test(test_more_handles_than_kept),
      cmocka_unit_test(test_freed_handles_keep_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
