/*
 * redis_worker.c - one proxy process's use of a replay queue, driven by
 * tests/redis/processes.sh and bench.sh: the public API only, linked with
 * the shared library, the store chosen by configuration alone (the engine
 * loads libspotinfer_redis by itself).
 *
 *   redis_worker CONFIG enqueue FIRST COUNT [PAUSE_MS]
 *       enqueue keys k<FIRST>..; prints "ok KEY MS" after each SPI_OK
 *       (MS: how long the call took); a failed call is printed ("err KEY
 *       MS STATUS MESSAGE") and retried, for at most 60 s in all
 *   redis_worker CONFIG hold COUNT LEASE_MS
 *       claim COUNT envelopes, print "claimed KEY ATTEMPTS", then sleep
 *       (the test kills it)
 *   redis_worker CONFIG consume LEASE_MS IDLE_MS
 *       claim and ack until nothing was ready for IDLE_MS (at most 60 s);
 *       prints "acked KEY ATTEMPTS" after each SPI_OK ack
 *   redis_worker CONFIG drain WANT
 *       tick until the queue's stats count WANT envelopes ready (at most
 *       20 s); prints "ready N"
 *   redis_worker CONFIG open
 *       open and close; prints "open STATUS MESSAGE"
 *   redis_worker CONFIG bench_enqueue COUNT
 *   redis_worker CONFIG bench_claim
 *       the benchmark's phases: enqueue COUNT, or claim + ack until
 *       nothing is ready; each prints {"done": N, "ms": elapsed}
 *
 * CONFIG is the JSON given to spi_replay_open. Exit status 0 when the mode
 * did what it says, 1 otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "spotinfer/spotinfer.h"

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static spi_envelope env_of(const char *key) {
  static const char body[] =
      "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
      "\"replay me\"}],\"max_tokens\":64}";
  spi_envelope v;
  memset(&v, 0, sizeof v);
  v.struct_size = sizeof v;
  v.key = key;
  v.key_len = strlen(key);
  v.body = body;
  v.body_len = sizeof body - 1;
  v.klass = SPI_CLASS_SILVER;
  v.partial_text = "Once";
  v.partial_text_len = 4;
  return v;
}

typedef struct claim_buf {
  uint64_t id;
  spi_envelope env;
  char buf[4096];
} claim_buf;

/* 1 claimed, 0 nothing ready, -1 error (printed). */
static int claim(spi_replay_queue *q, int64_t lease_ms, claim_buf *c) {
  memset(&c->env, 0, sizeof c->env);
  c->env.struct_size = sizeof c->env;
  int rc = spi_replay_claim(q, 0xe, lease_ms, &c->id, &c->env, c->buf,
                            sizeof c->buf, NULL);
  if (rc != SPI_OK) {
    printf("claimerr %d %s\n", rc, spi_replay_errmsg(q));
    fflush(stdout);
    return -1;
  }
  return c->id != 0;
}

static int do_enqueue(spi_replay_queue *q, int first, int count, int pause) {
  double stop = now_ms() + 60000;
  for (int i = first; i < first + count && now_ms() < stop;) {
    char key[32];
    snprintf(key, sizeof key, "k%d", i);
    spi_envelope v = env_of(key);
    double t0 = now_ms();
    int rc = spi_replay_enqueue(q, &v, NULL);
    double took = now_ms() - t0;
    if (rc == SPI_OK) {
      printf("ok %s %.1f\n", key, took);
      i++;
      if (pause) sleep_ms(pause);
    } else {
      printf("err %s %.1f %d %s\n", key, took, rc, spi_replay_errmsg(q));
      sleep_ms(20);
    }
    fflush(stdout);
  }
  return now_ms() < stop ? 0 : 1;
}

static int do_hold(spi_replay_queue *q, int count, int64_t lease) {
  double stop = now_ms() + 30000;
  int held = 0;
  while (held < count && now_ms() < stop) {
    claim_buf c;
    int r = claim(q, lease, &c);
    if (r < 0) return 1;
    if (r == 0) {
      sleep_ms(5);
      continue;
    }
    printf("claimed %.*s %u\n", (int)c.env.key_len, c.env.key,
           c.env.attempts);
    fflush(stdout);
    held++;
  }
  printf("holding %d\n", held);
  fflush(stdout);
  for (int i = 0; i < 600; i++) sleep_ms(100); /* killed long before */
  return 1;
}

static int do_consume(spi_replay_queue *q, int64_t lease, int idle_ms) {
  double stop = now_ms() + 60000, last = now_ms();
  while (now_ms() < stop && now_ms() - last < idle_ms) {
    claim_buf c;
    int r = claim(q, lease, &c);
    if (r < 0) {
      sleep_ms(20);
      continue;
    }
    if (r == 0) {
      spi_replay_tick(q);
      sleep_ms(10);
      continue;
    }
    last = now_ms();
    int rc = spi_replay_ack(q, c.id);
    if (rc == SPI_OK)
      printf("acked %.*s %u\n", (int)c.env.key_len, c.env.key,
             c.env.attempts);
    else
      printf("ackerr %.*s %d %s\n", (int)c.env.key_len, c.env.key, rc,
             spi_replay_errmsg(q));
    fflush(stdout);
  }
  return now_ms() < stop ? 0 : 1;
}

static uint64_t ready(spi_replay_queue *q) {
  spi_replay_stats s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  if (spi_replay_stats_get(q, &s) != SPI_OK) return 0;
  return s.ready[1] + s.ready[2] + s.ready[3];
}

static int do_drain(spi_replay_queue *q, uint64_t want) {
  double stop = now_ms() + 20000;
  uint64_t n = 0;
  while ((n = ready(q)) < want && now_ms() < stop) {
    spi_replay_tick(q);
    sleep_ms(50);
  }
  printf("ready %llu\n", (unsigned long long)n);
  return n == want ? 0 : 1;
}

/* The benchmark's two phases, each timed on its own: enqueue COUNT, or
 * claim + ack until nothing is ready (every process enqueued first). */
static int do_bench_enqueue(spi_replay_queue *q, int count) {
  char key[48];
  double t0 = now_ms();
  for (int i = 0; i < count; i++) {
    snprintf(key, sizeof key, "b%ld-%d", (long)getpid(), i);
    spi_envelope v = env_of(key);
    if (spi_replay_enqueue(q, &v, NULL) != SPI_OK) {
      fprintf(stderr, "enqueue: %s\n", spi_replay_errmsg(q));
      return 1;
    }
  }
  printf("{\"done\":%d,\"ms\":%.3f}\n", count, now_ms() - t0);
  return 0;
}

static int do_bench_claim(spi_replay_queue *q) {
  double t0 = now_ms(), stop = t0 + 120000;
  int done = 0;
  while (now_ms() < stop) {
    claim_buf c;
    int r = claim(q, 60000, &c);
    if (r < 0) return 1;
    if (r == 0) break;
    if (spi_replay_ack(q, c.id) != SPI_OK) return 1;
    done++;
  }
  printf("{\"done\":%d,\"ms\":%.3f}\n", done, now_ms() - t0);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: redis_worker CONFIG MODE ARGS...\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  spi_engine *e = NULL;
  if (spi_engine_new(&e, NULL) != SPI_OK) return 1;
  spi_replay_queue *q = NULL;
  int rc = spi_replay_open(e, argv[1], strlen(argv[1]), &q);
  const char *mode = argv[2];
  if (strcmp(mode, "open") == 0) {
    printf("open %d %s\n", rc, rc == SPI_OK ? "" : spi_engine_errmsg(e));
    spi_replay_close(q);
    spi_engine_free(e);
    return 0;
  }
  if (rc != SPI_OK) {
    fprintf(stderr, "open: %s\n", spi_engine_errmsg(e));
    spi_engine_free(e);
    return 1;
  }
  int out = 2;
  if (strcmp(mode, "enqueue") == 0 && argc >= 5)
    out = do_enqueue(q, atoi(argv[3]), atoi(argv[4]),
                     argc >= 6 ? atoi(argv[5]) : 0);
  else if (strcmp(mode, "hold") == 0 && argc >= 5)
    out = do_hold(q, atoi(argv[3]), atoll(argv[4]));
  else if (strcmp(mode, "consume") == 0 && argc >= 5)
    out = do_consume(q, atoll(argv[3]), atoi(argv[4]));
  else if (strcmp(mode, "drain") == 0 && argc >= 4)
    out = do_drain(q, strtoull(argv[3], NULL, 10));
  else if (strcmp(mode, "bench_enqueue") == 0 && argc >= 4)
    out = do_bench_enqueue(q, atoi(argv[3]));
  else if (strcmp(mode, "bench_claim") == 0)
    out = do_bench_claim(q);
  else
    fprintf(stderr, "redis_worker: unknown mode or missing arguments\n");
  spi_replay_close(q);
  spi_engine_free(e);
  return out;
}
