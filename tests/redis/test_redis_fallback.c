/*
 * test_redis_fallback.c - what an operator sees of the fallback journal
 * ("replay.fallback": "journal") of the Redis store, against the real
 * server of the `redis` stage (SPI_REDIS_PORT, and SPI_REDIS_DIR for its
 * pid): Redis is SIGSTOPped, enqueues go to the journal and
 * spi_replay_stats (SPI_EIO: the store does not answer, but this process's
 * own counts are filled) and the engine's metrics text count them as held;
 * after SIGCONT the next calls move them into Redis, and both show them
 * moved, none held. Without a server only the test that needs none runs.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "spotinfer/spotinfer.h"
#include "unit/journal_files.h"
#include "unit/replay_helpers.h"

static pid_t redis_pid;

static spi_envelope env_of(const char *key) {
  return rq_envelope(key, SPI_CLASS_SILVER, "{\"model\":\"m\",\"messages\":[]}");
}

/* The value of the unlabelled sample name in the engine's metrics text, or
 * -1 when it is not there. */
static long long metric(spi_engine *e, const char *name) {
  static char buf[1 << 16];
  size_t needed = 0;
  if (spi_engine_metrics(e, buf, sizeof buf, &needed) != SPI_OK) return -1;
  char pat[128];
  snprintf(pat, sizeof pat, "\n%s ", name);
  const char *p = strstr(buf, pat);
  return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* What was seen while Redis was stopped, checked after it runs again (an
 * assertion failing while it is stopped would leave it stopped). */
typedef struct seen {
  int enqueue_rc[3];
  int32_t dup[3];
  int stats_rc;
  spi_replay_stats stats;
  long long held, enqueued, moved;
} seen;

static void while_stopped(spi_engine *e, spi_replay_queue *q, seen *w) {
  const char *keys[] = {"fb-1", "fb-2", "fb-3"};
  for (int i = 0; i < 3; i++) {
    spi_envelope v = env_of(keys[i]);
    w->dup[i] = -1;
    w->enqueue_rc[i] = spi_replay_enqueue(q, &v, &w->dup[i]);
  }
  w->stats_rc = rq_stats_rc(q, &w->stats);
  w->held = metric(e, "spotinfer_replay_fallback_envelopes");
  w->enqueued = metric(e, "spotinfer_replay_fallback_enqueued_total");
  w->moved = metric(e, "spotinfer_replay_fallback_moved_total");
}

static void test_fallback_counts(void **st) {
  (void)st;
  char dir[256];
  rq_tmpdir(dir, sizeof dir, "fbcount");
  char json[512];
  snprintf(json, sizeof json,
           "{\"store\":\"redis\",\"fallback\":\"journal\",\"dir\":\"%s\","
           "\"store_config\":{\"address\":\"127.0.0.1:%s\",\"key_prefix\":"
           "\"fbcount:%ld:\",\"timeout_ms\":200,\"connect_timeout_ms\":200,"
           "\"reconnect_min_ms\":50,\"reconnect_max_ms\":100}}",
           dir, getenv("SPI_REDIS_PORT"), (long)getpid());
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_replay_queue *q = NULL;
  assert_int_equal(spi_replay_open(e, json, strlen(json), &q), SPI_OK);
  spi_replay_stats s;
  assert_int_equal(rq_stats_rc(q, &s), SPI_OK);
  assert_int_equal(s.fallback_held, 0);
  assert_int_equal(metric(e, "spotinfer_replay_fallback_envelopes"), 0);

  seen w;
  memset(&w, 0, sizeof w);
  assert_int_equal(kill(redis_pid, SIGSTOP), 0);
  while_stopped(e, q, &w);
  assert_int_equal(kill(redis_pid, SIGCONT), 0);

  for (int i = 0; i < 3; i++) {
    assert_int_equal(w.enqueue_rc[i], SPI_OK);
    assert_int_equal(w.dup[i], 0);
  }
  assert_int_equal(w.stats_rc, SPI_EIO);
  assert_int_equal(w.stats.enqueued, 3);
  assert_int_equal(w.stats.fallback_held, 3);
  assert_int_equal(w.stats.fallback_enqueued, 3);
  assert_int_equal(w.stats.fallback_moved, 0);
  assert_int_equal(w.held, 3);
  assert_int_equal(w.enqueued, 3);
  assert_int_equal(w.moved, 0);

  /* Redis runs again: a call moves what the journal holds (tried again at
   * most every 100 ms, the connection after its backoff). Bounded. */
  int rc = SPI_EIO;
  for (int i = 0; i < 200; i++) {
    sleep_ms(100);
    spi_replay_tick(q);
    rc = rq_stats_rc(q, &s);
    if (rc == SPI_OK && s.fallback_held == 0) break;
  }
  assert_int_equal(rc, SPI_OK);
  assert_int_equal(s.fallback_held, 0);
  assert_int_equal(s.fallback_enqueued, 3);
  assert_int_equal(s.fallback_moved, 3);
  assert_int_equal(s.ready[SPI_CLASS_SILVER], 3);
  assert_int_equal(metric(e, "spotinfer_replay_fallback_envelopes"), 0);
  assert_int_equal(metric(e, "spotinfer_replay_fallback_enqueued_total"), 3);
  assert_int_equal(metric(e, "spotinfer_replay_fallback_moved_total"), 3);

  /* Leave the shared server as it was. */
  for (int i = 0; i < 3; i++) {
    rq_claimed c;
    assert_int_equal(rq_claim(q, RQ_ALL, 0, &c), SPI_OK);
    assert_int_equal(spi_replay_ack(q, c.id), SPI_OK);
  }
  spi_replay_close(q);
  /* Closed, the queue no longer counts in the engine's gauge. */
  assert_int_equal(metric(e, "spotinfer_replay_fallback_envelopes"), 0);
  spi_engine_free(e);
  rm_rf(dir);
}

/* Envelopes left in the journal by an earlier process count as held from
 * the open on, and leave the gauge when the queue closes. */
static void test_left_by_an_earlier_process(void **st) {
  (void)st;
  char dir[256];
  rq_tmpdir(dir, sizeof dir, "fbleft");
  char json[512];
  rq_unreachable_redis(json, sizeof json, dir);
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_replay_queue *q = NULL;
  assert_int_equal(spi_replay_open(e, json, strlen(json), &q), SPI_OK);
  spi_envelope a = env_of("left-1"), b = env_of("left-2");
  assert_int_equal(spi_replay_enqueue(q, &a, NULL), SPI_OK);
  assert_int_equal(spi_replay_enqueue(q, &b, NULL), SPI_OK);
  assert_int_equal(metric(e, "spotinfer_replay_fallback_envelopes"), 2);
  spi_replay_close(q);
  assert_int_equal(metric(e, "spotinfer_replay_fallback_envelopes"), 0);
  assert_int_equal(spi_replay_open(e, json, strlen(json), &q), SPI_OK);
  spi_replay_stats s;
  assert_int_equal(rq_stats_rc(q, &s), SPI_EIO);
  assert_int_equal(s.fallback_held, 2);
  assert_int_equal(s.fallback_enqueued, 0);
  assert_int_equal(metric(e, "spotinfer_replay_fallback_envelopes"), 2);
  /* A caller built against the struct of 0.1.0 gets its fields only. */
  spi_replay_stats old;
  memset(&old, 0xab, sizeof old);
  old.struct_size = offsetof(spi_replay_stats, recovered);
  assert_int_equal(spi_replay_stats_get(q, &old), SPI_EIO);
  assert_int_equal(old.enqueued, 0);
  assert_int_equal(old.fallback_held, 0xababababababababULL);
  spi_replay_close(q);
  spi_engine_free(e);
  rm_rf(dir);
}

int main(void) {
  const struct CMUnitTest local[] = {
      cmocka_unit_test(test_left_by_an_earlier_process),
  };
  const char *port = getenv("SPI_REDIS_PORT"), *rdir = getenv("SPI_REDIS_DIR");
  if (!port || !rdir) {
    printf("test_redis_fallback: no SPI_REDIS_PORT and SPI_REDIS_DIR (the "
           "redis stage's server): its test is skipped\n");
    return cmocka_run_group_tests(local, NULL, NULL);
  }
  char path[512];
  snprintf(path, sizeof path, "%s/redis.pid", rdir);
  FILE *f = fopen(path, "r");
  long pid = 0;
  int got = f && fscanf(f, "%ld", &pid) == 1 && pid > 0;
  if (f) fclose(f);
  if (!got) {
    printf("test_redis_fallback: no pid in %s\n", path);
    return 1;
  }
  redis_pid = (pid_t)pid;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fallback_counts),
      cmocka_unit_test(test_left_by_an_earlier_process),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
