/*
 * bench_replay.c - replay queue throughput, one JSON line per case:
 *
 *   journal_append  enqueues per second into a journal with 1 KiB bodies,
 *                   under each fsync policy (batch with 1, 2 and 8 threads,
 *                   and 8 with a 2 ms group-commit window: concurrent
 *                   callers share fsyncs), with the fsyncs done;
 *   recovery        records per second (and MiB/s) reading a journal back
 *                   on open;
 *   claim_ack       claim + ack pairs per second on a filled queue, on the
 *                   memory store and on the journal (batch and none).
 *
 * Timed cases run for about the given seconds each (default 1) on
 * CLOCK_MONOTONIC. The journal lives in a fresh directory under the given
 * path (default $TMPDIR or /tmp), removed at the end; its numbers are the
 * disk's as much as the library's.
 *
 *   bench_replay [seconds] [dir]
 */
#include <dirent.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "replay.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char base[256];
static char body[1100];

static void rm_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  char path[600];
  while ((de = readdir(d)) != NULL) {
    if (de->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    unlink(path);
  }
  closedir(d);
  rmdir(dir);
}

static void die(const char *what, const char *msg) {
  fprintf(stderr, "bench_replay: %s: %s\n", what, msg);
  exit(1);
}

static spi_replay_queue *open_queue(spi_engine *e, const char *store,
                                    const char *dir, const char *fsync,
                                    int group_ms) {
  char cfg[1024];
  if (strcmp(store, "memory") == 0)
    snprintf(cfg, sizeof cfg,
             "{\"store\":\"memory\",\"max_bytes\":8589934592}");
  else
    snprintf(cfg, sizeof cfg,
             "{\"store\":\"journal\",\"dir\":\"%s\",\"fsync\":\"%s\","
             "\"group_commit_ms\":%d,\"max_bytes\":8589934592,"
             "\"compact_min_bytes\":1099511627776}",
             dir, fsync, group_ms);
  spi_replay_queue *q = NULL;
  if (spi_replay_open(e, cfg, strlen(cfg), &q) != SPI_OK)
    die("open", spi_engine_errmsg(e));
  return q;
}

static spi_envelope envelope(const char *key, int klass) {
  spi_envelope v;
  memset(&v, 0, sizeof v);
  v.struct_size = sizeof v;
  v.key = key;
  v.key_len = strlen(key);
  v.body = body;
  v.body_len = strlen(body);
  v.openai_kind = SPI_OPENAI_CHAT;
  v.klass = klass;
  v.partial_text = "Once upon a time, in a data center far away,";
  v.partial_text_len = strlen(v.partial_text);
  v.stream_offset = 12;
  return v;
}

typedef struct appender {
  spi_replay_queue *q;
  int id;
  double until;
  uint64_t done;
} appender;

static void *append_loop(void *arg) {
  appender *a = arg;
  char key[64];
  while (now_s() < a->until) {
    for (int i = 0; i < 16; i++) {
      snprintf(key, sizeof key, "t%d-%llu", a->id, (unsigned long long)a->done);
      spi_envelope v = envelope(key, 1 + (int)(a->done % 3));
      if (spi_replay_enqueue(a->q, &v, NULL) != SPI_OK)
        die("enqueue", spi_replay_errmsg(a->q));
      a->done++;
    }
  }
  return NULL;
}

static void bench_append(spi_engine *e, const char *fsync, int threads,
                         int group_ms, double secs) {
  char dir[400];
  snprintf(dir, sizeof dir, "%s/append-%s-%d-%d", base, fsync, threads,
           group_ms);
  spi_replay_queue *q = open_queue(e, "journal", dir, fsync, group_ms);
  appender a[8];
  pthread_t t[8];
  double t0 = now_s();
  for (int i = 0; i < threads; i++) {
    a[i] = (appender){q, i, t0 + secs, 0};
    pthread_create(&t[i], NULL, append_loop, &a[i]);
  }
  uint64_t n = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(t[i], NULL);
    n += a[i].done;
  }
  double dt = now_s() - t0;
  spi_replay_store_stats ss;
  memset(&ss, 0, sizeof ss);
  ss.struct_size = sizeof ss;
  spi__replay_store_stats(q, &ss);
  printf("{\"bench\":\"journal_append\",\"fsync\":\"%s\",\"threads\":%d,"
         "\"group_commit_ms\":%d,\"records\":%llu,\"seconds\":%.3f,\"records_"
         "per_s\":%.0f,"
         "\"fsyncs\":%llu,\"records_per_fsync\":%.2f,\"mib_per_s\":%.2f}\n",
         fsync, threads, group_ms, (unsigned long long)n, dt, (double)n / dt,
         (unsigned long long)ss.syncs,
         ss.syncs ? (double)n / (double)ss.syncs : 0.0,
         (double)ss.bytes / dt / 1048576.0);
  fflush(stdout);
  spi_replay_close(q);
  rm_dir(dir);
}

static void bench_recovery(spi_engine *e, uint64_t records) {
  char dir[400];
  snprintf(dir, sizeof dir, "%s/recovery", base);
  spi_replay_queue *q = open_queue(e, "journal", dir, "none", 0);
  char key[64];
  for (uint64_t i = 0; i < records; i++) {
    snprintf(key, sizeof key, "r%llu", (unsigned long long)i);
    spi_envelope v = envelope(key, 1 + (int)(i % 3));
    if (spi_replay_enqueue(q, &v, NULL) != SPI_OK)
      die("enqueue", spi_replay_errmsg(q));
  }
  spi_replay_close(q);
  double t0 = now_s();
  q = open_queue(e, "journal", dir, "none", 0);
  double dt = now_s() - t0;
  spi_replay_store_stats ss;
  memset(&ss, 0, sizeof ss);
  ss.struct_size = sizeof ss;
  spi__replay_store_stats(q, &ss);
  printf("{\"bench\":\"recovery\",\"records\":%llu,\"bytes\":%llu,"
         "\"seconds\":%.3f,\"records_per_s\":%.0f,\"mib_per_s\":%.1f}\n",
         (unsigned long long)ss.recovered, (unsigned long long)ss.bytes, dt,
         (double)ss.recovered / dt, (double)ss.bytes / dt / 1048576.0);
  fflush(stdout);
  spi_replay_close(q);
  rm_dir(dir);
}

static void bench_claim_ack(spi_engine *e, const char *store, const char *fsync,
                            double secs) {
  char dir[400];
  snprintf(dir, sizeof dir, "%s/claim-%s-%s", base, store, fsync);
  spi_replay_queue *q = open_queue(e, store, dir, fsync, 0);
  /* Fill without timing, then claim + ack, re-enqueueing so the queue
   * stays the same size. */
  enum { FILL = 20000 };
  char key[64];
  uint64_t next = 0;
  for (; next < FILL; next++) {
    snprintf(key, sizeof key, "c%llu", (unsigned long long)next);
    spi_envelope v = envelope(key, 1 + (int)(next % 3));
    if (spi_replay_enqueue(q, &v, NULL) != SPI_OK)
      die("enqueue", spi_replay_errmsg(q));
  }
  static uint8_t buf[8192];
  uint64_t pairs = 0;
  double claim_ack_s = 0;
  double t0 = now_s(), until = t0 + secs;
  while (now_s() < until) {
    for (int i = 0; i < 64; i++) {
      double a = now_s();
      spi_envelope out;
      memset(&out, 0, sizeof out);
      out.struct_size = sizeof out;
      uint64_t id = 0;
      if (spi_replay_claim(q, 0xe, 0, &id, &out, buf, sizeof buf, NULL) !=
              SPI_OK ||
          id == 0)
        die("claim", spi_replay_errmsg(q));
      if (spi_replay_ack(q, id) != SPI_OK) die("ack", spi_replay_errmsg(q));
      claim_ack_s += now_s() - a;
      pairs++;
      snprintf(key, sizeof key, "c%llu", (unsigned long long)next++);
      spi_envelope v = envelope(key, 1 + (int)(next % 3));
      if (spi_replay_enqueue(q, &v, NULL) != SPI_OK)
        die("enqueue", spi_replay_errmsg(q));
    }
  }
  spi_replay_store_stats ss;
  memset(&ss, 0, sizeof ss);
  ss.struct_size = sizeof ss;
  spi__replay_store_stats(q, &ss);
  printf("{\"bench\":\"claim_ack\",\"store\":\"%s\",\"fsync\":\"%s\","
         "\"queued\":%d,\"pairs\":%llu,\"seconds\":%.3f,\"pairs_per_s\":%.0f,"
         "\"fsyncs\":%llu}\n",
         store, strcmp(store, "memory") == 0 ? "" : fsync, FILL,
         (unsigned long long)pairs, claim_ack_s, (double)pairs / claim_ack_s,
         (unsigned long long)ss.syncs);
  fflush(stdout);
  spi_replay_close(q);
  rm_dir(dir);
}

int main(int argc, char **argv) {
  double secs = argc > 1 ? atof(argv[1]) : 1.0;
  if (!(secs > 0)) secs = 1.0;
  const char *tmp = argc > 2 ? argv[2] : getenv("TMPDIR");
  snprintf(base, sizeof base, "%s/spi-bench-replay-XXXXXX",
           tmp && tmp[0] ? tmp : "/tmp");
  if (!mkdtemp(base)) die("mkdtemp", base);
  /* A chat body of about 1 KiB. */
  snprintf(body, sizeof body,
           "{\"model\":\"llama-3-70b\",\"stream\":true,\"max_tokens\":512,"
           "\"messages\":[{\"role\":\"system\",\"content\":\"You are a "
           "helpful assistant.\"},{\"role\":\"user\",\"content\":\"");
  size_t n = strlen(body);
  for (; n < 1000; n++) body[n] = (char)('a' + n % 26);
  snprintf(body + n, sizeof body - n, "\"}]}");
  spi_engine *e = NULL;
  if (spi_engine_new(&e, NULL) != SPI_OK) die("engine", "cannot create");
  bench_append(e, "always", 1, 0, secs);
  bench_append(e, "batch", 1, 0, secs);
  bench_append(e, "batch", 2, 0, secs);
  bench_append(e, "batch", 8, 0, secs);
  bench_append(e, "batch", 8, 2, secs);
  bench_append(e, "none", 1, 0, secs);
  bench_recovery(e, 100000);
  bench_claim_ack(e, "memory", "", secs);
  bench_claim_ack(e, "journal", "batch", secs);
  bench_claim_ack(e, "journal", "none", secs);
  spi_engine_free(e);
  rm_dir(base);
  return 0;
}
