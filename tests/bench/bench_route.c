/*
 * bench_route.c - routing decision time, as JSON lines.
 *
 * For 1, 8 and 64 KiB prompts and 8, 64 and 512 replicas, with the prefix
 * index filled first: p50 and p99 of one spi_route() call, and both as a
 * ratio to the p50 of one XXH3_64bits pass over the same prompt, each pass
 * timed just before its route (xxh3_pass_ns; xxh3_best_ns is the best of
 * many back-to-back passes, for reference). Both include one clock read.
 * The plain XXH3_64bits pass is the yardstick the targets are stated in;
 * xxh3_avx2_best_ns and p50_ratio_avx2 compare against libxxhash's
 * run-time dispatched XXH3 (AVX2 / AVX-512 where the CPU has them), the
 * one the library hashes with when it is available. Then the 8 KiB case
 * again where every prompt starts with the same first block and most of
 * the fleet holds it ("shared_first":1, "holders" replicas of "replicas"
 * served it during the warm-up): the prefix match then names many
 * replicas at once. Then the 8 KiB case again where every route's prompt
 * is one no route has seen ("fresh":1: its first block differs, so the
 * prefix index holds none of it and the prefix has no rendezvous order
 * kept), as most of real traffic's prompts are. Then the 8 KiB case again
 * just after a spot interruption ("cooling": how many replicas' spot pool
 * is cooling down, router.pool_cooldown_ms): the spot replicas are in two
 * zones and a notice on one machine of the first cools its pool, a
 * quarter of the fleet, which no route may use until the cooldown ends.
 * Then the 8 KiB case again where every replica says which model it
 * serves ("models":1, the requests' own), and where the fleet serves 16
 * models, each on a sixteenth of it, the requests asking for each in turn
 * ("models":16). Then the 8 KiB case again where no replica has reported
 * a load ("loads":0: a gateway that does not scrape its servers' metrics,
 * or a metrics outage; every load reads as saturated), and where each
 * request excludes one replica ("excluded":1, a retry after that replica
 * failed it). Then the 8 KiB case again while a quarter of the fleet has
 * rebalance advice ("advised": how many replicas), for requests that say
 * nothing of their output ("long":0, which advised machines still take)
 * and for requests asking for 2,048 tokens ("long":1, which they do not).
 * Then decisions per
 * second (route + finish) on 1 and 2 threads over one engine, and on 2 threads
 * each with an engine of its own ("engines":2, what sharing one cannot
 * beat), at 64 and 512 replicas (the 8 KiB case's prompts; each thread on
 * a CPU of its own), with how often the threads on one engine waited for
 * its pool index and how often a route read every replica instead.
 * The engine runs on a fixed clock, so load signals never go stale and the
 * clock costs nothing.
 */
#define _GNU_SOURCE /* sched_getaffinity, pthread_setaffinity_np */
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <xxhash.h>

#include "spi_internal.h" /* spi__xxh3_avx2 */

static uint64_t plain_xxh3(const void *p, size_t n) { return XXH3_64bits(p, n); }

/* The XXH3 build the library hashes blocks with: AVX2 when the CPU has it. */
static uint64_t wide_xxh3(const void *p, size_t n) {
#if SPI_HAVE_XXH_AVX2
  if (__builtin_cpu_supports("avx2")) return spi__xxh3_avx2(p, n);
#endif
  return XXH3_64bits(p, n);
}

#include "spotinfer/spotinfer.h"
#include "metrics_text.h"

#define NREQ 64

static int64_t fixed_clock(void *ud) {
  (void)ud;
  return 1700000000LL * 1000000000LL;
}

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* The best ns per pass of hash over p[0..n), over many back-to-back runs. */
static double best_pass(uint64_t (*hash)(const void *, size_t), const char *p,
                        size_t n) {
  volatile uint64_t sink = 0;
  double best = 1e30;
  for (int r = 0; r < 20; r++) {
    int iters = 2000;
    double t0 = now_ns();
    for (int i = 0; i < iters; i++) sink += hash(p, n);
    double dt = (now_ns() - t0) / iters;
    if (dt < best) best = dt;
  }
  (void)sink;
  return best;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* How many models the fleet serves (lat_case.models): 0, any model (no
 * models lists); 1, "llama" on every replica and in every request; n > 1,
 * "m<k>" for k = i % n on replica i and in request i. */
static int n_models;

/* Replicas in the fleet when each request excludes one (lat_case.exclude;
 * 0: none does): request i excludes replica (7 * i) % excluding. */
static int excluding;

/* The output the requests ask for when part of the fleet has rebalance
 * advice (lat_case.advised): 1, none said (a short request, which an
 * advised machine still takes); 2, max_tokens 2048 (a long one, which it
 * does not, router.advised_max_output_tokens). */
static int asking;

/* The model of replica or request i (n_models). */
static const char *model_of(int i, char *buf, size_t cap) {
  if (n_models <= 1) return "llama";
  snprintf(buf, cap, "m%d", i % n_models);
  return buf;
}

/* Replica i: odd ones on-demand, even ones spot, the spot ones in two
 * zones (z0 and z1) of one instance type, each on a machine of its own;
 * serving models as n_models says; each reporting a load when loads is
 * set. */
static spi_engine *make_engine(int replicas, uint32_t max_inflight,
                               int loads) {
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = fixed_clock;
  spi_engine *e = NULL;
  if (spi_engine_new(&e, &h) != SPI_OK) return NULL;
  const char *cfg = "{\"router\":{\"max_tickets\":65536,\"index_bytes\":67108864}}";
  if (spi_engine_configure(e, cfg, strlen(cfg)) != SPI_OK) return NULL;
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
    ri.zone = i % 4 == 0 ? "z0" : "z1";
    ri.zone_len = 2;
    ri.instance_type = "g6.xlarge";
    ri.instance_type_len = strlen(ri.instance_type);
    char model[16];
    if (n_models) {
      ri.models = model_of(i, model, sizeof model);
      ri.models_len = strlen(ri.models);
    }
    ri.max_inflight = max_inflight;
    if (spi_replica_upsert(e, &ri) != SPI_OK) return NULL;
    spi_load l;
    memset(&l, 0, sizeof l);
    l.struct_size = sizeof l;
    l.running = i % 7;
    l.waiting = i % 3;
    l.kv_usage = 0.3;
    if (loads) spi_replica_report_load(e, id, strlen(id), &l);
  }
  return e;
}

#define BLOCK_BYTES 1024 /* cache_key.block_bytes, the default */

/* A prompt of size bytes whose first half is shared by its family (16
 * families, each its own text: the step between families, 3, is prime to
 * 26, so families 0..15 start at 16 different letters of the cycle). With
 * shared_first, the first block is the same for every family. */
static void fill_prompt(char *p, size_t size, int family, int unique,
                        int shared_first) {
  for (size_t i = 0; i < size; i++) {
    int f = shared_first && i < BLOCK_BYTES ? 16 : family;
    p[i] = (char)('a' + (i * 7 + (size_t)f * 3) % 26);
  }
  if (size > 16) snprintf(p + size / 2, 16, "u%08d", unique);
}

/* Builds NREQ requests; if texts is not NULL, each request's prompt is
 * also left there (the caller frees them). */
static int prepare_texts(spi_engine *e, spi_request **reqs, size_t size,
                         int salt, int shared_first, char **texts) {
  for (int i = 0; i < NREQ; i++) {
    char *p = malloc(size);
    if (spi_request_new(e, &reqs[i]) != SPI_OK) return -1;
    fill_prompt(p, size, i % 16, salt * NREQ + i, shared_first);
    char model[16];
    const char *m = model_of(i, model, sizeof model);
    spi_request_set_str(reqs[i], SPI_REQ_MODEL, m, strlen(m));
    spi_request_set_str(reqs[i], SPI_REQ_PROMPT, p, size);
    spi_request_set_int(reqs[i], SPI_REQ_REPLAYABLE, 1);
    if (asking == 2) spi_request_set_int(reqs[i], SPI_REQ_MAX_OUTPUT_TOKENS, 2048);
    if (excluding) {
      char id[32];
      snprintf(id, sizeof id, "replica-%03d", 7 * i % excluding);
      spi_request_exclude_replica(reqs[i], id, strlen(id));
    }
    if (texts)
      texts[i] = p;
    else
      free(p);
  }
  return 0;
}

static int prepare(spi_engine *e, spi_request **reqs, size_t size, int salt,
                   int shared_first) {
  return prepare_texts(e, reqs, size, salt, shared_first, NULL);
}

static void finish(spi_engine *e, uint64_t t) {
  spi_ticket_result r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  r.output_tokens = 10;
  spi_ticket_finish(e, t, &r);
}

/* Spread the shared first block over the fleet: with tickets held open on
 * replicas that take few at once, a holder of the block is soon full and
 * the next request goes to another replica, which then holds it too.
 * Returns how many replicas served one of these requests. */
static int spread_first_block(spi_engine *e, size_t size, int replicas,
                              uint32_t max_inflight) {
  int n = replicas * (int)max_inflight;
  uint64_t *held = calloc((size_t)n, sizeof *held);
  char *seen = calloc((size_t)replicas, 1);
  int holders = 0;
  spi_request *reqs[NREQ];
  for (int i = 0; i < n; i += NREQ) {
    prepare(e, reqs, size, 5000 + i / NREQ, 1);
    for (int j = 0; j < NREQ; j++) {
      /* Half of them interactive gold, which goes on-demand, so that half
       * of the fleet gets the block too. */
      if (j % 2) {
        spi_request_set_int(reqs[j], SPI_REQ_STREAM, 1);
        spi_request_set_int(reqs[j], SPI_REQ_SLA_MS, 800);
      }
      spi_decision d;
      memset(&d, 0, sizeof d);
      d.struct_size = sizeof d;
      if (i + j < n && spi_route(reqs[j], &d) == SPI_OK && d.ticket) {
        held[i + j] = d.ticket;
        int at = atoi(d.replica_id + strlen("replica-"));
        if (at >= 0 && at < replicas && !seen[at]) {
          seen[at] = 1;
          holders++;
        }
      }
      spi_request_free(reqs[j]);
    }
  }
  for (int i = 0; i < n; i++)
    if (held[i]) finish(e, held[i]);
  free(held);
  free(seen);
  return holders;
}

/* The process's minor page faults so far (0 if they cannot be read). */
static long minor_faults(void) {
  struct rusage ru;
  return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_minflt : 0;
}

/* Give request r a prompt no route has seen: text with its bytes 16..24
 * (in the first block; from 0 in a prompt too short for that) made unique
 * by n. Outside the timed part. */
static void make_fresh(spi_request *r, char *text, size_t size, int n) {
  char tag[16];
  snprintf(tag, sizeof tag, "f%08d", n);
  size_t at = size >= 25 ? 16 : 0, len = size - at < 9 ? size - at : 9;
  memcpy(text + at, tag, len);
  spi_request_set_str(r, SPI_REQ_PROMPT, text, size);
}

/* An interruption notice on the machine of replica 0 (spot, zone z0): its
 * spot pool cools down, every replica of it but the noticed one still
 * ACTIVE. How many replicas are in that pool. */
static int cool_first_zone(spi_engine *e, int replicas) {
  spi_notice n;
  memset(&n, 0, sizeof n);
  n.struct_size = sizeof n;
  snprintf(n.node, sizeof n.node, "replica-000");
  n.kind = SPI_NOTICE_TERMINATE;
  n.format = SPI_NOTICE_AWS_INSTANCE_ACTION;
  n.active = 1;
  n.received_ns = fixed_clock(NULL);
  n.deadline_ns = n.received_ns + 120LL * 1000000000LL;
  snprintf(n.dedup_key, sizeof n.dedup_key, "bench-notice");
  static spi_ticket_plan plans[256]; /* the warm-up finished its tickets */
  plans[0].struct_size = sizeof plans[0];
  size_t got = 0;
  if (spi_engine_notice(e, &n, plans, 256, &got) != SPI_OK) {
    fprintf(stderr, "notice: %s\n", spi_engine_errmsg(e));
    exit(1);
  }
  return (replicas + 3) / 4;
}

/* Rebalance advice on the machine of every spot replica of zone z0 (a
 * quarter of the fleet, each on a machine of its own), as a cloud sends
 * it to many machines of one capacity pool at once: those replicas take
 * no long request and cost a short one router.advised_penalty_ms more,
 * until the advice lapses (router.advised_ttl_ms). How many replicas. */
static int advise_first_zone(spi_engine *e, int replicas) {
  int n = 0;
  for (int i = 0; i < replicas; i += 4, n++) {
    spi_notice no;
    memset(&no, 0, sizeof no);
    no.struct_size = sizeof no;
    snprintf(no.node, sizeof no.node, "replica-%03d", i);
    no.kind = SPI_NOTICE_REBALANCE;
    no.format = SPI_NOTICE_AWS_REBALANCE;
    no.active = 1;
    no.received_ns = fixed_clock(NULL);
    snprintf(no.dedup_key, sizeof no.dedup_key, "bench-advice-%d", i);
    size_t got = 0;
    if (spi_engine_notice(e, &no, NULL, 0, &got) != SPI_OK) {
      fprintf(stderr, "notice: %s\n", spi_engine_errmsg(e));
      exit(1);
    }
  }
  return n;
}

/* What a latency case adds to the plain one (the file's head says). */
typedef struct lat_case {
  int shared_first, fresh, cool, models, no_loads, exclude, advised;
} lat_case;

static void bench_latency(size_t size, int replicas, lat_case c) {
  int shared_first = c.shared_first, fresh = c.fresh;
  n_models = c.models;
  excluding = c.exclude ? replicas : 0;
  asking = c.advised;
  /* Replicas that take few requests at once let the warm-up spread the
   * shared first block; the others take many, as a large server does. */
  uint32_t max_inflight = shared_first ? 4 : 256;
  spi_engine *e =
      make_engine(replicas, max_inflight, !c.no_loads);
  if (!e) {
    fprintf(stderr, "engine setup failed\n");
    exit(1);
  }
  int holders = shared_first ? spread_first_block(e, size, replicas, max_inflight)
                             : 0;
  int cooling = c.cool ? cool_first_zone(e, replicas) : 0;
  int advised = c.advised ? advise_first_zone(e, replicas) : 0;
  spi_request *warm[NREQ], *reqs[NREQ];
  /* Fill the index with many prefixes first. */
  for (int round = 0; round < 8; round++) {
    prepare(e, warm, size, 1000 + round, shared_first);
    for (int i = 0; i < NREQ; i++) {
      spi_decision d;
      memset(&d, 0, sizeof d);
      d.struct_size = sizeof d;
      if (spi_route(warm[i], &d) == SPI_OK && d.ticket) finish(e, d.ticket);
      spi_request_free(warm[i]);
    }
  }
  char *texts[NREQ];
  prepare_texts(e, reqs, size, 1, shared_first, texts);
  /* Each route is timed right after one XXH3 pass over a copy of the same
   * prompt, so both are measured in the same moments and their ratio holds
   * even when the machine's speed drifts during the run. */
  enum { N = 4000, BATCHES = 20 };
  static double t[N], x[N];
  volatile uint64_t sink = 0;
  /* Page faults while the routes are timed (minor_faults): the arrays above
   * are written first, so what is counted is the library's (and glibc's). */
  memset(t, 0, sizeof t);
  memset(x, 0, sizeof x);
  long faults = minor_faults();
  for (int i = 0; i < N; i++) {
    spi_decision d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    if (fresh) make_fresh(reqs[i % NREQ], texts[i % NREQ], size, i);
    double t0 = now_ns();
    sink += XXH3_64bits(texts[i % NREQ], size);
    double t1 = now_ns();
    int rc = spi_route(reqs[i % NREQ], &d);
    double t2 = now_ns();
    x[i] = t1 - t0;
    t[i] = t2 - t1;
    if (rc == SPI_OK && d.ticket) finish(e, d.ticket);
  }
  faults = minor_faults() - faults;
  /* Each batch's p50 over its pass's p50: the ratio of times taken in the
   * same second or so; the median of the batches' ratios. */
  double bratio[BATCHES], bt[N / BATCHES], bx[N / BATCHES];
  for (int b = 0; b < BATCHES; b++) {
    memcpy(bt, t + b * (N / BATCHES), sizeof bt);
    memcpy(bx, x + b * (N / BATCHES), sizeof bx);
    qsort(bt, N / BATCHES, sizeof bt[0], cmp_double);
    qsort(bx, N / BATCHES, sizeof bx[0], cmp_double);
    bratio[b] = bt[N / BATCHES / 2] / bx[N / BATCHES / 2];
  }
  qsort(bratio, BATCHES, sizeof bratio[0], cmp_double);
  qsort(t, N, sizeof t[0], cmp_double);
  qsort(x, N, sizeof x[0], cmp_double);
  /* Also the best of many back-to-back passes, for reference, and the same
   * for the AVX2 build of XXH3 the library hashes blocks with (when the
   * CPU has AVX2): a stricter yardstick than the plain libxxhash pass. */
  double best = best_pass(plain_xxh3, texts[0], size);
  double wide = best_pass(wide_xxh3, texts[0], size);
  (void)sink;
  double p50 = t[N / 2], p99 = t[N * 99 / 100], pass = x[N / 2];
  printf("{\"bench\":\"route\",\"prompt_bytes\":%zu,\"replicas\":%d,"
         "\"shared_first\":%d,\"fresh\":%d,\"cooling\":%d,\"models\":%d,"
         "\"loads\":%d,\"excluded\":%d,\"advised\":%d,\"long\":%d,\"holders\":%d,\"p50_ns\":%.0f,"
         "\"p99_ns\":%.0f,"
         "\"xxh3_pass_ns\":%.1f,"
         "\"xxh3_best_ns\":%.1f,\"p50_ratio\":%.2f,\"p99_ratio\":%.2f,"
         "\"xxh3_avx2_best_ns\":%.1f,\"p50_ratio_avx2\":%.2f,"
         "\"batch_ratio_p50\":%.2f,\"batch_ratio_lo\":%.2f,\"batch_ratio_hi\":%.2f,"
         "\"minor_faults\":%ld}\n",
         size, replicas, shared_first, fresh, cooling, c.models, !c.no_loads,
         c.exclude != 0, advised, c.advised == 2, holders, p50, p99, pass, best, p50 / pass, p99 / pass, wide,
         p50 / wide, bratio[BATCHES / 2], bratio[BATCHES / 10],
         bratio[BATCHES - 1 - BATCHES / 10], faults);
  for (int i = 0; i < NREQ; i++) free(texts[i]);
  for (int i = 0; i < NREQ; i++) spi_request_free(reqs[i]);
  spi_engine_free(e);
}

typedef struct tput {
  spi_engine *e;
  int seconds_ms;
  long done;
  int id;
} tput;

static void *throughput_thread(void *arg) {
  tput *t = arg;
#ifdef __linux__
  /* Thread i on CPU i (of those the process may use): left to the
   * scheduler, two threads on a 2-CPU machine shared one CPU in some runs
   * and not in others, and the figure moved by half. */
  cpu_set_t mine, one;
  if (sched_getaffinity(0, sizeof mine, &mine) == 0) {
    for (int c = 0, seen = 0; c < CPU_SETSIZE; c++)
      if (CPU_ISSET(c, &mine) && seen++ == t->id % CPU_COUNT(&mine)) {
        CPU_ZERO(&one);
        CPU_SET(c, &one);
        pthread_setaffinity_np(pthread_self(), sizeof one, &one);
        break;
      }
  }
#endif
  spi_request *reqs[NREQ];
  prepare(t->e, reqs, 8192, 100 + t->id, 0);
  double end = now_ns() + t->seconds_ms * 1e6;
  long n = 0;
  while (now_ns() < end) {
    for (int i = 0; i < 64; i++, n++) {
      spi_decision d;
      memset(&d, 0, sizeof d);
      d.struct_size = sizeof d;
      if (spi_route(reqs[n % NREQ], &d) == SPI_OK && d.ticket)
        finish(t->e, d.ticket);
    }
  }
  t->done = n;
  for (int i = 0; i < NREQ; i++) spi_request_free(reqs[i]);
  return NULL;
}

/* threads routing on one engine, or (separate) each on an engine of its
 * own: the figure sharing an engine cannot beat, taken in the same
 * minute (on a shared host, how dear a cache line moved between CPUs is
 * changes from one minute to the next). */
static void bench_throughput(int threads, int replicas, int separate) {
  int apart = separate && threads > 1;
  n_models = 0;
  excluding = 0;
  asking = 0;
  spi_engine *e = make_engine(replicas, 256, 1);
  spi_engine *own = apart ? make_engine(replicas, 256, 1) : NULL;
  if (!e || (apart && !own)) {
    fprintf(stderr, "engine setup failed\n");
    exit(1);
  }
  tput t[2];
  pthread_t th[2];
  for (int i = 0; i < threads; i++) {
    t[i].e = i && own ? own : e;
    t[i].seconds_ms = 1000;
    t[i].done = 0;
    t[i].id = i;
    pthread_create(&th[i], NULL, throughput_thread, &t[i]);
  }
  long total = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(th[i], NULL);
    total += t[i].done;
  }
  /* How the threads shared the pool index: routes that waited for it
   * (and took it, or gave up), and routes that read every replica. */
  printf("{\"bench\":\"route_throughput\",\"threads\":%d,\"engines\":%d,"
         "\"prompt_bytes\":8192,\"replicas\":%d,\"decisions_per_s\":%ld,"
         "\"index_waits_took\":%lld,\"index_waits_gave_up\":%lld,"
         "\"slot_passes\":%lld}\n",
         threads, own ? threads : 1, replicas, total,
         spi_test_metric(e, "spotinfer_route_index_waits_total{outcome=\"took\"}"),
         spi_test_metric(e, "spotinfer_route_index_waits_total{outcome=\"gave_up\"}"),
         spi_test_metric(e, "spotinfer_route_slot_passes_total"));
  spi_engine_free(own);
  spi_engine_free(e);
}

/* With arguments "<prompt bytes> <replicas> [shared_first [fresh [cooling
 * [models [no_loads [exclude [advised]]]]]]]", run that one latency case
 * (advised: 1 short requests, 2 long ones); with "throughput", the
 * decisions a second alone. */
int main(int argc, char **argv) {
  int tput_only = argc == 2 && strcmp(argv[1], "throughput") == 0;
  if (argc >= 3 && argc <= 10) {
    lat_case c = {argc >= 4 ? atoi(argv[3]) : 0, argc >= 5 ? atoi(argv[4]) : 0,
                  argc >= 6 ? atoi(argv[5]) : 0, argc >= 7 ? atoi(argv[6]) : 0,
                  argc >= 8 ? atoi(argv[7]) : 0, argc >= 9 ? atoi(argv[8]) : 0,
                  argc == 10 ? atoi(argv[9]) : 0};
    bench_latency((size_t)atol(argv[1]), atoi(argv[2]), c);
    return 0;
  }
  size_t sizes[] = {1024, 8192, 65536};
  int reps[] = {8, 64, 512};
  if (!tput_only) {
    for (int s = 0; s < 3; s++)
      for (int r = 0; r < 3; r++)
        bench_latency(sizes[s], reps[r], (lat_case){0, 0, 0, 0, 0, 0, 0});
    for (int r = 0; r < 3; r++) bench_latency(8192, reps[r], (lat_case){1, 0, 0, 0, 0, 0, 0});
    for (int r = 0; r < 3; r++) bench_latency(8192, reps[r], (lat_case){0, 1, 0, 0, 0, 0, 0});
    for (int r = 1; r < 3; r++) bench_latency(8192, reps[r], (lat_case){0, 0, 1, 0, 0, 0, 0});
    for (int r = 1; r < 3; r++) bench_latency(8192, reps[r], (lat_case){0, 0, 0, 1, 0, 0, 0});
    for (int r = 1; r < 3; r++) bench_latency(8192, reps[r], (lat_case){0, 0, 0, 16, 0, 0, 0});
    for (int r = 1; r < 3; r++) bench_latency(8192, reps[r], (lat_case){0, 0, 0, 0, 1, 0, 0});
    for (int r = 1; r < 3; r++) bench_latency(8192, reps[r], (lat_case){0, 0, 0, 0, 0, 1, 0});
    for (int a = 1; a <= 2; a++)
      for (int r = 1; r < 3; r++)
        bench_latency(8192, reps[r], (lat_case){0, 0, 0, 0, 0, 0, a});
  }
  for (int r = 1; r < 3; r++) {
    bench_throughput(1, reps[r], 0);
    bench_throughput(2, reps[r], 0);
    bench_throughput(2, reps[r], 1);
  }
  return 0;
}
