/*
 * peer_spi.c - spi_route() on the shared peer workload (README.md).
 *
 *   peer_spi <prompt bytes> <replicas> <decisions> <samples file> [in flight]
 *
 * Builds the fleet, routes the eight warm-up batches, then times
 * <decisions> calls of spi_route() over the measured batch. Each ticket is
 * finished outside the timed span: at once, or with [in flight] > 0 when
 * that many later decisions have been made (the oldest open one first). Writes
 * one time in ns per line to <samples file> and prints one JSON line.
 * The engine runs on a fixed clock, as in bench_route, so load reports
 * never go stale.
 *
 *   peer_spi --host-speed
 *
 * Prints the median time of one XXH3_64bits pass over an 8 KiB prompt
 * (1,001 passes): how fast the machine runs in these minutes, for reading
 * a case's figures beside another's on a host whose speed moves.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <xxhash.h>

#include "spotinfer/spotinfer.h"
#include "prompts.h"

static int64_t fixed_clock(void *ud) {
  (void)ud;
  return 1700000000LL * 1000000000LL;
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static void die(const char *what) {
  fprintf(stderr, "peer_spi: %s\n", what);
  exit(1);
}

static spi_engine *make_fleet(int replicas) {
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = fixed_clock;
  spi_engine *e = NULL;
  if (spi_engine_new(&e, &h) != SPI_OK) die("spi_engine_new failed");
  const char *cfg = "{\"router\":{\"max_tickets\":65536,\"index_bytes\":67108864}}";
  if (spi_engine_configure(e, cfg, strlen(cfg)) != SPI_OK) die("configure failed");
  for (int i = 0; i < replicas; i++) {
    char id[32];
    snprintf(id, sizeof id, "replica-%03d", i);
    spi_replica_info ri;
    memset(&ri, 0, sizeof ri);
    ri.struct_size = sizeof ri;
    ri.id = id;
    ri.id_len = strlen(id);
    ri.pool = i % 2 ? SPI_POOL_ON_DEMAND : SPI_POOL_SPOT;
    ri.usd_per_hour = i % 2 ? 4.5 : 1.8;
    ri.max_inflight = 256;
    if (spi_replica_upsert(e, &ri) != SPI_OK) die("upsert failed");
    spi_load l;
    memset(&l, 0, sizeof l);
    l.struct_size = sizeof l;
    l.running = (uint32_t)peers_running(i);
    l.waiting = (uint32_t)peers_waiting(i);
    l.kv_usage = 0.3;
    if (spi_replica_report_load(e, id, strlen(id), &l) != SPI_OK) die("load failed");
  }
  return e;
}

/* The batch of round (-1: the measured one) as requests. */
static void make_batch(spi_engine *e, spi_request **reqs, size_t size, int round,
                       char *scratch) {
  for (int j = 0; j < PEERS_BATCH; j++) {
    peers_prompt(scratch, size, j % PEERS_FAMILIES, peers_unique(round, j));
    if (spi_request_new(e, &reqs[j]) != SPI_OK) die("spi_request_new failed");
    spi_request_set_str(reqs[j], SPI_REQ_MODEL, "llama", 5);
    spi_request_set_str(reqs[j], SPI_REQ_PROMPT, scratch, size);
    spi_request_set_int(reqs[j], SPI_REQ_REPLAYABLE, 1);
  }
}

static void finish(spi_engine *e, uint64_t t) {
  spi_ticket_result r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  r.output_tokens = 10;
  spi_ticket_finish(e, t, &r);
}

/* Tickets held open: ring[0..n), the oldest finished when a new one needs
 * its slot. */
typedef struct window {
  uint64_t *ring;
  int n, next;
} window;

static void hold(spi_engine *e, window *w, uint64_t t) {
  if (w->n == 0) {
    finish(e, t);
    return;
  }
  if (w->ring[w->next]) finish(e, w->ring[w->next]);
  w->ring[w->next] = t;
  w->next = (w->next + 1) % w->n;
}

/* One route; returns the replica number it chose, or -1. */
static int route_once(spi_engine *e, window *w, spi_request *req, int64_t *ns) {
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  int64_t t0 = now_ns();
  int rc = spi_route(req, &d);
  int64_t t1 = now_ns();
  if (ns) *ns = t1 - t0;
  if (rc != SPI_OK || !d.ticket) return -1;
  int at = atoi(d.replica_id + strlen("replica-"));
  hold(e, w, d.ticket);
  return at;
}

static void host_speed(void) {
  enum { PASSES = 1001, SIZE = 8192 };
  static char prompt[SIZE];
  static int64_t t[PASSES];
  peers_prompt(prompt, SIZE, 0, 0);
  volatile uint64_t sink = 0;
  for (int i = 0; i < PASSES; i++) {
    int64_t t0 = now_ns();
    sink += XXH3_64bits(prompt, SIZE);
    t[i] = now_ns() - t0;
  }
  (void)sink;
  qsort(t, PASSES, sizeof t[0], cmp_i64);
  printf("{\"bench\":\"peers_host_speed\",\"xxh3_8k_ns\":%lld}\n",
         (long long)t[PASSES / 2]);
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--host-speed") == 0) {
    host_speed();
    return 0;
  }
  if (argc != 5 && argc != 6)
    die("usage: peer_spi <prompt bytes> <replicas> <decisions> <samples file> [in flight]");
  size_t size = (size_t)atol(argv[1]);
  int replicas = atoi(argv[2]), n = atoi(argv[3]);
  window w = {NULL, argc == 6 ? atoi(argv[5]) : 0, 0};
  if (replicas < 1 || replicas > 999 || n < 1 || w.n < 0 || w.n > 4096 || !peers_golden(size))
    die("bad arguments");
  w.ring = calloc((size_t)w.n + 1, sizeof *w.ring);
  char *scratch = malloc(size);
  int64_t *t = malloc(sizeof *t * (size_t)n);
  char *seen = calloc((size_t)replicas, 1);
  if (!scratch || !t || !seen || !w.ring) die("out of memory");
  uint64_t sum = peers_checksum(size, scratch);
  if (sum != peers_golden(size)) die("prompt checksum differs from the golden one");
  spi_engine *e = make_fleet(replicas);
  spi_request *reqs[PEERS_BATCH];
  for (int round = 0; round < PEERS_WARM_ROUNDS; round++) {
    make_batch(e, reqs, size, round, scratch);
    for (int j = 0; j < PEERS_BATCH; j++) {
      route_once(e, &w, reqs[j], NULL);
      spi_request_free(reqs[j]);
    }
  }
  make_batch(e, reqs, size, -1, scratch);
  int distinct = 0, failed = 0;
  for (int i = 0; i < n; i++) {
    int at = route_once(e, &w, reqs[i % PEERS_BATCH], &t[i]);
    if (at < 0 || at >= replicas) {
      failed++;
    } else if (!seen[at]) {
      seen[at] = 1;
      distinct++;
    }
  }
  FILE *f = fopen(argv[4], "w");
  if (!f) die("cannot write the samples file");
  for (int i = 0; i < n; i++) fprintf(f, "%lld\n", (long long)t[i]);
  fclose(f);
  qsort(t, (size_t)n, sizeof t[0], cmp_i64);
  printf("{\"peer\":\"spi_route\",\"prompt_bytes\":%zu,\"replicas\":%d,\"in_flight\":%d,"
         "\"decisions\":%d,"
         "\"prompts_fnv\":\"%016llx\",\"replicas_chosen\":%d,\"failed\":%d,"
         "\"p50_ns\":%lld,\"p99_ns\":%lld}\n",
         size, replicas, w.n, n, (unsigned long long)sum, distinct, failed,
         (long long)t[n / 2], (long long)t[(size_t)n * 99 / 100]);
  for (int i = 0; i < w.n; i++)
    if (w.ring[i]) finish(e, w.ring[i]);
  for (int j = 0; j < PEERS_BATCH; j++) spi_request_free(reqs[j]);
  spi_engine_free(e);
  free(w.ring);
  free(scratch);
  free(t);
  free(seen);
  return failed ? 1 : 0;
}
