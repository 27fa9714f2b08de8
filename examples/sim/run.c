/*
 * run.c - the discrete-event core: one run per policy over the same trace
 * and spot schedule, driving a real engine on a fake clock.
 */
#include <dirent.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sim_run.h"

/* Fake wall clock: the run starts at 2023-02-01T00:00:00Z. */
#define SIM_EPOCH_NS (1675209600ll * 1000000000ll)
#define MS(x) ((int64_t)(x) * 1000000ll)

void sim_opts_default(sim_opts *o) {
  memset(o, 0, sizeof *o);
  o->gen.requests = 100000;
  o->gen.rate_per_s = 250;
  o->gen.seed = 1;
  o->gen.mix[1] = 0.2, o->gen.mix[2] = 0.5, o->gen.mix[3] = 0.3;
  o->replicas = 64;
  o->on_demand = 16;
  o->kv_blocks = 1024;
  o->max_batch = 64;
  o->prefill_tps = 20000;
  o->decode_tps = 80;
  o->od_usd_h = 4.50;
  o->spot_usd_h = 1.80;
}

static double sim_wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* -------------------------------------------------------------- events */

enum { EV_ARRIVE, EV_FIRST, EV_FINISH, EV_ZNOTICE, EV_ZGONE, EV_ZBACK, EV_PUMP };

typedef struct event {
  int64_t t;
  uint64_t seq;
  uint32_t type, a, epoch;
} event;

typedef struct heap {
  event *e;
  size_t n, cap;
  uint64_t seq;
} heap;

static int ev_less(const event *x, const event *y) {
  return x->t < y->t || (x->t == y->t && x->seq < y->seq);
}

static void heap_push(heap *h, int64_t t, uint32_t type, uint32_t a,
                      uint32_t epoch) {
  if (h->n == h->cap) {
    h->cap = h->cap ? h->cap * 2 : 4096;
    event *p = realloc(h->e, h->cap * sizeof *p);
    if (!p) abort();
    h->e = p;
  }
  event ev = {t, h->seq++, type, a, epoch};
  size_t i = h->n++;
  while (i) {
    size_t p = (i - 1) / 2;
    if (!ev_less(&ev, &h->e[p])) break;
    h->e[i] = h->e[p];
    i = p;
  }
  h->e[i] = ev;
}

static event heap_pop(heap *h) {
  event top = h->e[0], last = h->e[--h->n];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= h->n) break;
    if (c + 1 < h->n && ev_less(&h->e[c + 1], &h->e[c])) c++;
    if (!ev_less(&h->e[c], &last)) break;
    h->e[i] = h->e[c];
    i = c;
  }
  if (h->n) h->e[i] = last;
  return top;
}

/* ----------------------------------------------------------- the model */

enum { RQ_PENDING, RQ_WAITING, RQ_RUNNING, RQ_REPLAY, RQ_DONE };

typedef struct sreq {
  int64_t first_token_at, prefill_end, replay_since;
  uint64_t ticket;
  int32_t replica, prev, next;
  uint32_t epoch, out_left, prompt_tokens, cached_tokens, streamed;
  uint32_t replays, blocks_held;
  uint8_t state, hits_counted;
  float ttft_ms, done_ms;
} sreq;

typedef struct zone {
  sim_spot_trace tr;
  int up;
} zone;

typedef struct replica {
  char id[32], node[48];
  int32_t pool, zone; /* zone -1: on-demand */
  int up;
  uint32_t incarnation;
  double usd_h;
  double prefill_tps, decode_tps; /* decode per stream */
  uint32_t kv_blocks, max_batch;
  const char *itype;
  sim_lru lru;
  uint32_t running, waiting_n, running_blocks;
  int32_t head; /* members (waiting and running), intrusive list */
  uint32_t *wq; /* FIFO of waiting request indices (lazy: checked on pop) */
  size_t wq_head, wq_tail, wq_cap;
  int64_t prefill_free_at, up_since;
  double up_seconds;
  uint64_t starts;
} replica;

typedef struct result {
  char name[32];
  double usd, usd_fleet, tokens;
  double hit_blocks, total_blocks, oracle_blocks;
  double ttft[4][3], done[4][3]; /* p50 p95 p99 by class, ms */
  uint64_t completed, lost, replays, replay_ok, requeued, notices, drains;
  uint64_t route_errors, spot_served, od_served;
  double imbalance;
  int slo[4];
} result;

typedef struct sim {
  const sim_opts *o;
  const sim_trace *tr;
  zone *zones;
  size_t nz;
  int all_on_demand;
  int64_t now;
  heap h;
  spi_engine *eng;
  spi_request *rq, *scratch;
  spi_replay_queue *q;
  replica *reps;
  uint32_t nrep;
  sreq *r;
  uint32_t *ids;
  size_t ids_cap;
  int pump_pending;
  char dir[64];
  result *res;
  uint64_t done_n;
} sim;

static int64_t clock_hook(void *ud) { return SIM_EPOCH_NS + ((sim *)ud)->now; }

static void report_load(sim *s, replica *p) {
  spi_load l = {sizeof l, (double)p->running, (double)p->waiting_n, 0, 0};
  double kv = (double)p->running_blocks / (double)p->kv_blocks;
  l.kv_usage = kv > 1 ? 1 : kv;
  spi_replica_report_load(s->eng, p->id, strlen(p->id), &l);
}

static int replica_upsert(sim *s, replica *p) {
  spi_replica_info ri;
  memset(&ri, 0, sizeof ri);
  ri.struct_size = sizeof ri;
  ri.id = p->id, ri.id_len = strlen(p->id);
  ri.pool = p->pool;
  ri.zone = p->zone < 0 ? "on-demand" : s->zones[p->zone].tr.zone;
  ri.zone_len = strlen(ri.zone);
  ri.instance_type = p->itype, ri.instance_type_len = strlen(p->itype);
  ri.usd_per_hour = p->usd_h;
  ri.max_inflight = p->max_batch;
  snprintf(p->node, sizeof p->node, "%s-i%u", p->id, p->incarnation);
  ri.node = p->node, ri.node_len = strlen(p->node);
  ri.decode_tokens_per_s = p->decode_tps;
  int rc = spi_replica_upsert(s->eng, &ri);
  if (rc == SPI_OK) report_load(s, p);
  return rc;
}

static void member_add(sim *s, replica *p, uint32_t i) {
  sreq *q = &s->r[i];
  q->prev = -1;
  q->next = p->head;
  if (p->head >= 0) s->r[p->head].prev = (int32_t)i;
  p->head = (int32_t)i;
}

static void member_del(sim *s, replica *p, uint32_t i) {
  sreq *q = &s->r[i];
  if (q->prev >= 0) s->r[q->prev].next = q->next;
  else p->head = q->next;
  if (q->next >= 0) s->r[q->next].prev = q->prev;
  q->prev = q->next = -1;
}

static void wq_push(replica *p, uint32_t i) {
  if (p->wq_tail - p->wq_head == p->wq_cap) {
    size_t c = p->wq_cap ? p->wq_cap * 2 : 64;
    uint32_t *n = malloc(c * sizeof *n);
    if (!n) abort();
    for (size_t k = 0; k < p->wq_cap; k++) n[k] = p->wq[(p->wq_head + k) % p->wq_cap];
    p->wq_tail -= p->wq_head;
    p->wq_head = 0;
    free(p->wq);
    p->wq = n;
    p->wq_cap = c;
  }
  p->wq[p->wq_tail++ % p->wq_cap] = i;
}

/* Leading prompt blocks present in an LRU, then all of them inserted. */
static uint32_t lru_prefix_fill(sim_lru *l, const uint64_t *chain, uint32_t n) {
  uint32_t hit = 0;
  while (hit < n && sim_lru_touch(l, chain[hit])) hit++;
  for (uint32_t b = hit; b < n; b++) sim_lru_insert(l, chain[b]);
  return hit;
}

static void start_one(sim *s, replica *p, uint32_t i) {
  sreq *q = &s->r[i];
  const sim_trace_req *t = &s->tr->reqs[i];
  uint32_t hit = lru_prefix_fill(&p->lru, s->tr->chain + t->block_off, t->nblocks);
  if (!q->hits_counted) {
    q->hits_counted = 1;
    s->res->hit_blocks += hit;
    s->res->total_blocks += t->nblocks;
  }
  uint64_t cached = (uint64_t)hit * SIM_BLOCK_TOKENS;
  if (cached >= q->prompt_tokens) cached = q->prompt_tokens ? q->prompt_tokens - 1 : 0;
  q->cached_tokens = (uint32_t)cached;
  double prefill_s = (double)(q->prompt_tokens - cached) / p->prefill_tps;
  int64_t start = p->prefill_free_at > s->now ? p->prefill_free_at : s->now;
  q->prefill_end = start + (int64_t)(prefill_s * 1e9);
  p->prefill_free_at = q->prefill_end;
  int64_t end = q->prefill_end + (int64_t)((double)q->out_left / p->decode_tps * 1e9);
  q->state = RQ_RUNNING;
  q->blocks_held = t->nblocks;
  p->running++;
  p->running_blocks += t->nblocks;
  p->starts++;
  heap_push(&s->h, q->prefill_end, EV_FIRST, i, q->epoch);
  heap_push(&s->h, end, EV_FINISH, i, q->epoch);
}

static void try_start(sim *s, replica *p) {
  while (p->running < p->max_batch && p->wq_head < p->wq_tail) {
    uint32_t i = p->wq[p->wq_head++ % p->wq_cap];
    sreq *q = &s->r[i];
    if (q->state != RQ_WAITING || q->replica != (int32_t)(p - s->reps)) continue;
    p->waiting_n--;
    start_one(s, p, i);
  }
}

static uint32_t replica_of(sim *s, const char *id) {
  /* ids are "r<index>-..." */
  (void)s;
  return (uint32_t)strtoul(id + 1, NULL, 10);
}

/* Build the library request for request i from its trace blocks. */
static int build_request(sim *s, uint32_t i, spi_request *rq) {
  const sim_trace_req *t = &s->tr->reqs[i];
  sreq *q = &s->r[i];
  size_t n = (size_t)t->nblocks * SIM_IDS_PER_BLOCK;
  if (n > s->ids_cap) {
    uint32_t *p = realloc(s->ids, n * sizeof *p);
    if (!p) return SPI_ENOMEM;
    s->ids = p;
    s->ids_cap = n;
  }
  for (uint32_t b = 0; b < t->nblocks; b++) {
    uint64_t h = sim_mix64(s->tr->blocks[t->block_off + b] ^ 0x424c4b31ull);
    for (uint32_t k = 0; k < SIM_IDS_PER_BLOCK; k++)
      s->ids[b * SIM_IDS_PER_BLOCK + k] = (uint32_t)(sim_mix64(h + k) % 128000u);
  }
  spi_request_reset(rq);
  const char *cls = spi_class_name((int32_t)t->klass);
  spi_request_set_str(rq, SPI_REQ_MODEL, "sim-model", 9);
  spi_request_set_str(rq, SPI_REQ_CLASS, cls, strlen(cls));
  if (t->klass != SPI_CLASS_GOLD) spi_request_set_int(rq, SPI_REQ_REPLAYABLE, 1);
  else spi_request_set_int(rq, SPI_REQ_SLA_MS, 2000);
  spi_request_set_int(rq, SPI_REQ_PROMPT_TOKENS, q->prompt_tokens);
  spi_request_set_int(rq, SPI_REQ_EXPECTED_OUTPUT_TOKENS, q->out_left);
  spi_request_set_int(rq, SPI_REQ_MAX_OUTPUT_TOKENS, q->out_left);
  if (q->replay_since)
    spi_request_set_int(rq, SPI_REQ_REPLAY_SINCE_NS, SIM_EPOCH_NS + q->replay_since);
  return spi_request_set_token_ids(rq, s->ids, n);
}

/* Route request i; 1 when it landed on a replica. */
static int route(sim *s, uint32_t i) {
  sreq *q = &s->r[i];
  if (build_request(s, i, s->rq) != SPI_OK) return s->res->route_errors++, 0;
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  int rc = spi_route(s->rq, &d);
  if (rc != SPI_OK || !d.ticket) {
    if (rc != SPI_OK && rc != SPI_ESHED && rc != SPI_ENOCAPACITY) {
      if (!s->res->route_errors++ && !s->o->quiet)
        fprintf(stderr, "route: %s: %s\n", spi_strerror(rc), spi_engine_errmsg(s->eng));
    }
    return 0;
  }
  uint32_t ri = replica_of(s, d.replica_id);
  replica *p = &s->reps[ri];
  if (d.pool == SPI_POOL_SPOT) s->res->spot_served++;
  else s->res->od_served++;
  q->ticket = d.ticket;
  q->replica = (int32_t)ri;
  q->state = RQ_WAITING;
  member_add(s, p, i);
  p->waiting_n++;
  wq_push(p, i);
  try_start(s, p);
  report_load(s, p);
  return 1;
}

static void schedule_pump(sim *s, int64_t at) {
  if (s->pump_pending) return;
  s->pump_pending = 1;
  heap_push(&s->h, at, EV_PUMP, 0, 0);
}

/* Take request i off its replica, close its ticket as interrupted and put
 * it in the replay queue with what it has streamed. */
static void cut(sim *s, uint32_t i) {
  sreq *q = &s->r[i];
  replica *p = &s->reps[q->replica];
  uint32_t streamed = 0;
  if (q->state == RQ_RUNNING) {
    if (s->now > q->prefill_end) {
      double st = (double)(s->now - q->prefill_end) / 1e9 * p->decode_tps;
      streamed = st >= (double)(q->out_left - 1) ? q->out_left - 1 : (uint32_t)st;
    }
    p->running--;
    p->running_blocks -= q->blocks_held;
  } else {
    p->waiting_n--;
  }
  spi_ticket_result tr;
  memset(&tr, 0, sizeof tr);
  tr.struct_size = sizeof tr;
  tr.status = SPI_TICKET_INTERRUPTED;
  tr.prompt_tokens = q->prompt_tokens;
  tr.output_tokens = streamed;
  tr.cached_tokens = q->state == RQ_RUNNING ? q->cached_tokens : 0;
  spi_ticket_finish(s->eng, q->ticket, &tr);
  member_del(s, p, i);
  q->epoch++;
  q->state = RQ_REPLAY;
  q->replays++;
  s->res->replays++;
  if (!q->replay_since) q->replay_since = s->now;

  char key[48], body[160];
  snprintf(key, sizeof key, "q%u-%u", i, q->replays);
  int bl = snprintf(body, sizeof body,
                    "{\"model\":\"sim-model\",\"prompt\":\"r%u\",\"max_tokens\":%u}",
                    i, q->out_left);
  q->out_left -= streamed;
  q->prompt_tokens += streamed;
  q->streamed += streamed;
  spi_envelope env;
  memset(&env, 0, sizeof env);
  env.struct_size = sizeof env;
  env.key = key, env.key_len = strlen(key);
  env.body = body, env.body_len = (size_t)bl;
  env.openai_kind = SPI_OPENAI_COMPLETIONS;
  env.klass = (int32_t)s->tr->reqs[i].klass;
  env.stream_offset = streamed;
  env.attempts = q->replays - 1;
  env.first_enqueued_ns = SIM_EPOCH_NS + q->replay_since;
  int rc = spi_replay_enqueue(s->q, &env, NULL);
  if (rc != SPI_OK) {
    if (!s->o->quiet)
      fprintf(stderr, "enqueue: %s: %s\n", spi_strerror(rc), spi_replay_errmsg(s->q));
    s->res->lost++;
    q->state = RQ_DONE;
    s->done_n++;
  }
  schedule_pump(s, s->now);
}

static void pump(sim *s) {
  static unsigned char buf[8192];
  char cont[512];
  s->pump_pending = 0;
  for (;;) {
    spi_envelope env;
    memset(&env, 0, sizeof env);
    env.struct_size = sizeof env;
    uint64_t claim = 0;
    int rc = spi_replay_claim(s->q, 0xE, 0, &claim, &env, buf, sizeof buf, NULL);
    if (rc != SPI_OK) break;
    uint32_t i = (uint32_t)strtoul(env.key + 1, NULL, 10);
    sreq *q = &s->r[i];
    size_t need = 0;
    uint32_t flags = 0;
    rc = spi_replay_continuation(&env, cont, sizeof cont, &need, &flags);
    int64_t left = -1;
    if (rc == SPI_OK &&
        spi_request_parse_openai(s->scratch, cont, need, SPI_OPENAI_COMPLETIONS) == SPI_OK)
      spi_request_get_int(s->scratch, SPI_REQ_MAX_OUTPUT_TOKENS, &left, NULL);
    if (left != (int64_t)q->out_left) s->res->route_errors++;
    if (route(s, i)) {
      spi_replay_ack(s->q, claim);
    } else {
      spi_replay_nack(s->q, claim);
      s->res->requeued++;
    }
  }
  spi_replay_stats st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  spi_replay_stats_get(s->q, &st);
  if (st.ready[1] + st.ready[2] + st.ready[3] + st.delayed + st.leased)
    schedule_pump(s, s->now + MS(250));
}

static void finish_req(sim *s, uint32_t i) {
  sreq *q = &s->r[i];
  replica *p = &s->reps[q->replica];
  const sim_trace_req *t = &s->tr->reqs[i];
  spi_ticket_result tr;
  memset(&tr, 0, sizeof tr);
  tr.struct_size = sizeof tr;
  tr.status = SPI_TICKET_OK;
  tr.prompt_tokens = q->prompt_tokens;
  tr.output_tokens = q->out_left;
  tr.cached_tokens = q->cached_tokens;
  spi_ticket_finish(s->eng, q->ticket, &tr);
  p->running--;
  p->running_blocks -= q->blocks_held;
  member_del(s, p, i);
  q->state = RQ_DONE;
  q->done_ms = (float)((double)(s->now - t->arrival_ns) / 1e6);
  s->res->completed++;
  s->res->tokens += (double)t->in_tokens + (double)t->out_tokens;
  if (q->replays) s->res->replay_ok++;
  s->done_n++;
  try_start(s, p);
  report_load(s, p);
}

/* --------------------------------------------------------------- spot */

static int zone_up_at(const zone *z, double offset_s, double t_s) {
  if (!z->tr.n) return 1;
  size_t k = (size_t)((offset_s + t_s) / z->tr.gap_s) % z->tr.n;
  return z->tr.v[k] > 0;
}

/* Zone transitions over [0, horizon): notice lead before each take-away. */
static void schedule_zones(sim *s, double horizon_s) {
  for (size_t zi = 0; zi < s->nz; zi++) {
    zone *z = &s->zones[zi];
    double gap = z->tr.gap_s, off = s->o->spot_offset_s;
    z->up = zone_up_at(z, off, 0);
    int up = z->up;
    double last_up = 0;
    double first_tick = (floor(off / gap) + 1) * gap - off;
    for (double t = first_tick; t < horizon_s; t += gap) {
      int u = zone_up_at(z, off, t + gap * 0.5);
      if (u == up) continue;
      if (!u) {
        double nt = t - z->tr.lead_s;
        if (nt < last_up) nt = last_up;
        heap_push(&s->h, (int64_t)(nt * 1e9), EV_ZNOTICE, (uint32_t)zi, 0);
        heap_push(&s->h, (int64_t)(t * 1e9), EV_ZGONE, (uint32_t)zi, 0);
      } else {
        heap_push(&s->h, (int64_t)(t * 1e9), EV_ZBACK, (uint32_t)zi, 0);
        last_up = t;
      }
      up = u;
    }
  }
}

/* Simulated time at (ns since the simulation began) as UTC wall-clock text,
 * in a cloud's notice format. */
static void format_utc(char *out, size_t cap, const char *fmt, int64_t at) {
  time_t tt = (time_t)((SIM_EPOCH_NS + at) / 1000000000ll);
  struct tm tm;
  gmtime_r(&tt, &tm);
  strftime(out, cap, fmt, &tm);
}

static void notice_replica(sim *s, replica *p, int64_t gone_at) {
  const zone *z = &s->zones[p->zone];
  char body[512];
  int32_t fmt;
  if (!strcmp(z->tr.cloud, "gcp")) {
    fmt = SPI_NOTICE_GCP_PREEMPTED;
    snprintf(body, sizeof body, "TRUE");
  } else if (!strcmp(z->tr.cloud, "azure")) {
    /* An IMDS Scheduled Events document with one Preempt event for this
     * machine; NotBefore is when it goes (now + the 30 s lead). */
    fmt = SPI_NOTICE_AZURE_SCHEDULED;
    char ts[48];
    format_utc(ts, sizeof ts, "%a, %d %b %Y %H:%M:%S GMT", gone_at);
    snprintf(body, sizeof body,
             "{\"DocumentIncarnation\": %u, \"Events\": [{\"EventId\": \"preempt-%s\", "
             "\"EventType\": \"Preempt\", \"ResourceType\": \"VirtualMachine\", "
             "\"Resources\": [\"%s\"], \"EventStatus\": \"Scheduled\", "
             "\"NotBefore\": \"%s\", \"Description\": \"\", \"EventSource\": \"Platform\", "
             "\"DurationInSeconds\": -1}]}",
             p->incarnation + 1, p->node, p->node, ts);
  } else {
    fmt = SPI_NOTICE_AWS_INSTANCE_ACTION;
    char ts[32];
    format_utc(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gone_at);
    snprintf(body, sizeof body, "{\"action\": \"terminate\", \"time\": \"%s\"}", ts);
  }
  spi_notice nt;
  size_t nn = 0;
  char err[128];
  memset(&nt, 0, sizeof nt);
  nt.struct_size = sizeof nt;
  int rc = spi_notice_parse(fmt, 200, body, strlen(body), p->node, strlen(p->node),
                            SIM_EPOCH_NS + s->now, &nt, 1, &nn, err, sizeof err);
  if (rc != SPI_OK || nn != 1) {
    if (!s->o->quiet) fprintf(stderr, "notice parse: %s: %s\n", spi_strerror(rc), err);
    s->res->route_errors++;
    return;
  }
  /* Tell the engine how far each stream got, so the plans weigh progress. */
  for (int32_t i = p->head; i >= 0; i = s->r[i].next) {
    sreq *q = &s->r[i];
    if (q->state == RQ_RUNNING && s->now > q->prefill_end) {
      double st = (double)(s->now - q->prefill_end) / 1e9 * p->decode_tps;
      spi_ticket_progress(s->eng, q->ticket, (uint64_t)st);
    }
  }
  static spi_ticket_plan plans[16384];
  size_t np = 0;
  rc = spi_engine_notice(s->eng, &nt, plans, sizeof plans / sizeof plans[0], &np);
  s->res->notices++;
  if (rc != SPI_OK) {
    if (!s->o->quiet) fprintf(stderr, "notice: %s: %s\n", spi_strerror(rc), spi_engine_errmsg(s->eng));
    return;
  }
  for (size_t k = 0; k < np; k++) {
    int32_t i = p->head;
    while (i >= 0 && s->r[i].ticket != plans[k].ticket) i = s->r[i].next;
    if (i < 0) continue;
    if (plans[k].action == SPI_ACTION_REPLAY) cut(s, (uint32_t)i);
    else s->res->drains++;
  }
  report_load(s, p);
}

static void zone_event(sim *s, uint32_t type, uint32_t zi) {
  zone *z = &s->zones[zi];
  int64_t gone_at = s->now + (int64_t)(z->tr.lead_s * 1e9);
  for (uint32_t k = 0; k < s->nrep; k++) {
    replica *p = &s->reps[k];
    if (p->zone != (int32_t)zi) continue;
    if (type == EV_ZNOTICE && p->up) {
      notice_replica(s, p, gone_at);
    } else if (type == EV_ZGONE && p->up) {
      while (p->head >= 0) cut(s, (uint32_t)p->head);
      spi_engine_tick(s->eng);
      spi_replica_remove(s->eng, p->id, strlen(p->id));
      p->up = 0;
      p->up_seconds += (double)(s->now - p->up_since) / 1e9;
      sim_lru_clear(&p->lru);
      p->wq_head = p->wq_tail = 0;
      p->prefill_free_at = 0;
    } else if (type == EV_ZBACK && !p->up) {
      p->incarnation++;
      p->up = 1;
      p->up_since = s->now;
      replica_upsert(s, p);
    }
  }
  z->up = type == EV_ZBACK;
  if (type == EV_ZGONE) schedule_pump(s, s->now);
}

/* --------------------------------------------------------------- stats */

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

static double pct(const float *v, size_t n, double p) {
  if (!n) return 0;
  size_t k = (size_t)ceil(p * (double)n) - 1;
  if (k >= n) k = n - 1;
  return v[k];
}

static void summarise(sim *s) {
  result *r = s->res;
  size_t n = s->tr->n;
  float *a = malloc((n ? n : 1) * sizeof *a), *b = malloc((n ? n : 1) * sizeof *b);
  if (!a || !b) abort();
  for (uint32_t c = 1; c <= 3; c++) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
      if (s->tr->reqs[i].klass == c && s->r[i].state == RQ_DONE && s->r[i].first_token_at >= 0) {
        a[m] = s->r[i].ttft_ms;
        b[m++] = s->r[i].done_ms;
      }
    qsort(a, m, sizeof *a, cmp_float);
    qsort(b, m, sizeof *b, cmp_float);
    const double ps[3] = {0.50, 0.95, 0.99};
    for (int k = 0; k < 3; k++) {
      r->ttft[c][k] = pct(a, m, ps[k]);
      r->done[c][k] = pct(b, m, ps[k]);
    }
  }
  free(a);
  free(b);
  double mx = 0, sum = 0;
  uint32_t cnt = 0;
  for (uint32_t k = 0; k < s->nrep; k++) {
    replica *p = &s->reps[k];
    if (p->up) p->up_seconds += (double)(s->now - p->up_since) / 1e9;
    r->usd_fleet += p->up_seconds / 3600.0 * p->usd_h;
    if (p->up_seconds > 0) {
      double v = (double)p->starts;
      if (v > mx) mx = v;
      sum += v;
      cnt++;
    }
  }
  r->imbalance = sum > 0 ? mx / (sum / cnt) : 0;
  for (size_t k = 0; k < spi_ledger_count(s->eng); k++) {
    spi_ledger_row row;
    memset(&row, 0, sizeof row);
    row.struct_size = sizeof row;
    if (spi_ledger_row_at(s->eng, k, &row) == SPI_OK) r->usd += row.usd;
  }
  spi_replay_stats st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  spi_replay_stats_get(s->q, &st);
  r->lost += st.dead;
  for (size_t i = 0; i < n; i++)
    if (s->r[i].state != RQ_DONE) r->lost++;
}

/* ------------------------------------------------------------ one run */

static void rm_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    char path[512];
    while ((e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      unlink(path);
    }
    closedir(d);
  }
  rmdir(dir);
}

static int run_policy(const sim_opts *o, const sim_trace *tr, zone *zones,
                      size_t nz, const char *policy, int all_od, result *res,
                      double horizon_s) {
  sim s;
  memset(&s, 0, sizeof s);
  s.o = o, s.tr = tr, s.zones = zones, s.nz = all_od ? 0 : nz;
  s.all_on_demand = all_od;
  s.res = res;
  spi_hooks hk;
  memset(&hk, 0, sizeof hk);
  hk.struct_size = sizeof hk;
  hk.clock = clock_hook;
  hk.clock_user_data = &s;
  int rc = spi_engine_new(&s.eng, &hk);
  if (rc == SPI_OK) rc = sim_register_policies(s.eng);
  /* The engine's fleet-wide estimates: with a cluster file, replica-weighted
   * means (prices per pool; spot replicas count as on-demand ones in the
   * all-on-demand baseline). */
  double pre = o->prefill_tps, dec = o->decode_tps, batch = o->max_batch;
  double spot_h = o->spot_usd_h, od_h = o->od_usd_h;
  if (o->cluster) {
    double n = 0, ns = 0, no = 0, ss = 0, so = 0;
    pre = dec = batch = 0;
    for (size_t g = 0; g < o->cluster->n; g++) {
      const sim_group *G = &o->cluster->g[g];
      double c = G->count;
      n += c;
      pre += c * G->prefill_tps, dec += c * G->decode_tps, batch += c * G->max_batch;
      if (G->pool == SPI_POOL_SPOT && !all_od) ns += c, ss += c * G->usd_h;
      else no += c, so += c * G->od_usd_h;
    }
    pre /= n, dec /= n, batch /= n;
    od_h = so / no;
    spot_h = ns > 0 ? ss / ns : od_h;
  }
  char cfg[1024];
  snprintf(cfg, sizeof cfg,
           "{\"modules\":{\"policy\":\"%s\"},"
           "\"policy\":{\"bronze_queue_without_spot\":%s},"
           "\"cache_key\":{\"block_tokens\":%d},"
           "\"router\":{\"load_max_age_ms\":3600000,\"max_tickets\":262144,"
           "\"prefill_tokens_per_s\":%g,\"decode_tokens_per_s\":%g,"
           "\"index_bytes\":33554432},"
           "\"cost\":{\"spot_usd_per_gpu_hour\":%g,\"on_demand_usd_per_gpu_hour\":%g,"
           "\"prefill_tokens_per_s\":%g,\"decode_tokens_per_s\":%g}}",
           policy, all_od ? "false" : "true", SIM_IDS_PER_BLOCK, pre, dec, spot_h, od_h, pre,
           dec * batch);
  if (rc == SPI_OK) rc = spi_engine_configure(s.eng, cfg, strlen(cfg));
  if (rc != SPI_OK) {
    fprintf(stderr, "engine: %s: %s\n", spi_strerror(rc),
            s.eng ? spi_engine_errmsg(s.eng) : "");
    spi_engine_free(s.eng);
    return -1;
  }
  snprintf(s.dir, sizeof s.dir, "/tmp/spotinfer-sim-XXXXXX");
  if (!mkdtemp(s.dir)) {
    perror("mkdtemp");
    spi_engine_free(s.eng);
    return -1;
  }
  char qcfg[256];
  snprintf(qcfg, sizeof qcfg,
           "{\"store\":\"journal\",\"dir\":\"%s\",\"fsync\":\"none\","
           "\"max_attempts\":1000,\"backoff_base_ms\":250,\"backoff_max_ms\":4000}",
           s.dir);
  rc = spi_replay_open(s.eng, qcfg, strlen(qcfg), &s.q);
  if (rc == SPI_OK) rc = spi_request_new(s.eng, &s.rq);
  if (rc == SPI_OK) rc = spi_request_new(s.eng, &s.scratch);
  if (rc != SPI_OK) {
    fprintf(stderr, "setup: %s: %s\n", spi_strerror(rc), spi_engine_errmsg(s.eng));
    return -1;
  }
  /* Replicas: without a cluster file, on-demand first, then spot spread
   * over the zones; with one, its groups in file order. */
  const sim_cluster *cl = o->cluster;
  s.nrep = cl ? cl->replicas : o->replicas;
  s.reps = calloc(s.nrep, sizeof *s.reps);
  s.r = calloc(tr->n ? tr->n : 1, sizeof *s.r);
  if (!s.reps || !s.r) abort();
  for (uint32_t k = 0, gi = 0, gk = 0; k < s.nrep; k++) {
    replica *p = &s.reps[k];
    int spot;
    if (cl) {
      while (gk == cl->g[gi].count) gi++, gk = 0;
      const sim_group *g = &cl->g[gi];
      gk++;
      spot = !all_od && g->pool == SPI_POOL_SPOT;
      p->zone = spot ? g->zone_index : -1;
      p->usd_h = spot ? g->usd_h : g->od_usd_h;
      p->prefill_tps = g->prefill_tps, p->decode_tps = g->decode_tps;
      p->kv_blocks = g->kv_blocks, p->max_batch = g->max_batch;
      p->itype = g->instance_type;
      snprintf(p->id, sizeof p->id, "r%u-%s", k, spot ? g->zone : "od");
    } else {
      spot = !all_od && k >= o->on_demand && s.nz > 0;
      p->zone = spot ? (int32_t)((k - o->on_demand) % s.nz) : -1;
      p->usd_h = spot ? o->spot_usd_h : o->od_usd_h;
      p->prefill_tps = o->prefill_tps, p->decode_tps = o->decode_tps;
      p->kv_blocks = o->kv_blocks, p->max_batch = o->max_batch;
      p->itype = "gpu-1x";
      snprintf(p->id, sizeof p->id, "r%u-%s", k, spot ? s.zones[p->zone].tr.zone : "od");
    }
    p->pool = spot ? SPI_POOL_SPOT : SPI_POOL_ON_DEMAND;
    p->head = -1;
    if (sim_lru_init(&p->lru, p->kv_blocks)) abort();
  }
  if (!all_od) schedule_zones(&s, horizon_s);
  for (uint32_t k = 0; k < s.nrep; k++) {
    replica *p = &s.reps[k];
    p->up = p->zone < 0 || s.zones[p->zone].up;
    if (p->up && replica_upsert(&s, p) != SPI_OK) {
      fprintf(stderr, "replica: %s\n", spi_engine_errmsg(s.eng));
      return -1;
    }
  }
  for (size_t i = 0; i < tr->n; i++) {
    sreq *q = &s.r[i];
    q->replica = q->prev = q->next = -1;
    q->first_token_at = -1;
    q->out_left = tr->reqs[i].out_tokens;
    q->prompt_tokens = tr->reqs[i].in_tokens;
  }
  /* Arrivals are pushed lazily, one ahead, to keep the heap small. */
  size_t next_arrival = 0;
  if (tr->n) heap_push(&s.h, tr->reqs[0].arrival_ns, EV_ARRIVE, 0, 1);
  next_arrival = 1;
  /* Progress on standard error at each 5% of the requests done, but at most
   * once every 2 s of wall time, so short runs print none. */
  size_t progress_step = tr->n / 20 ? tr->n / 20 : 1, next_progress = progress_step;
  double last_progress = sim_wall_s();
  int progressed = 0, tty = isatty(2);
  while (s.h.n && s.done_n < tr->n) {
    event ev = heap_pop(&s.h);
    s.now = ev.t;
    switch (ev.type) {
    case EV_ARRIVE:
      if (ev.epoch && next_arrival < tr->n) {
        heap_push(&s.h, tr->reqs[next_arrival].arrival_ns, EV_ARRIVE,
                  (uint32_t)next_arrival, 1);
        next_arrival++;
      }
      if (!route(&s, ev.a)) {
        res->requeued++;
        heap_push(&s.h, s.now + MS(500), EV_ARRIVE, ev.a, 0);
      }
      break;
    case EV_FIRST: {
      sreq *q = &s.r[ev.a];
      if (ev.epoch != q->epoch) break;
      if (q->first_token_at < 0) {
        q->first_token_at = s.now;
        q->ttft_ms = (float)((double)(s.now - tr->reqs[ev.a].arrival_ns) / 1e6);
      }
      spi_ticket_first_token(s.eng, q->ticket);
      break;
    }
    case EV_FINISH:
      if (ev.epoch != s.r[ev.a].epoch) break;
      finish_req(&s, ev.a);
      break;
    case EV_PUMP:
      pump(&s);
      break;
    default:
      zone_event(&s, ev.type, ev.a);
    }
    if (s.done_n >= next_progress) {
      while (next_progress <= s.done_n) next_progress += progress_step;
      double w = sim_wall_s();
      if (!o->quiet && w - last_progress >= 2.0) {
        fprintf(stderr, "%s  %-16s %3d%% (%zu of %zu requests done)%s", tty ? "\r" : "",
                res->name, (int)(100.0 * (double)s.done_n / (double)tr->n), (size_t)s.done_n,
                tr->n, tty ? "" : "\n");
        last_progress = w;
        progressed = 1;
      }
    }
  }
  if (progressed && tty) fprintf(stderr, "\r%70s\r", "");
  summarise(&s);
  spi_request_free(s.rq);
  spi_request_free(s.scratch);
  spi_replay_close(s.q);
  spi_engine_free(s.eng);
  rm_dir(s.dir);
  for (uint32_t k = 0; k < s.nrep; k++) {
    sim_lru_free(&s.reps[k].lru);
    free(s.reps[k].wq);
  }
  free(s.reps);
  free(s.r);
  free(s.ids);
  free(s.h.e);
  return 0;
}

/* ----------------------------------------------------------- ceilings */

typedef struct ceilings {
  double total, oracle, pooled;
} ceilings;

static void compute_ceilings(const sim_opts *o, const sim_trace *tr, ceilings *c) {
  memset(c, 0, sizeof c[0]);
  /* Oracle: a set large enough for every block of the trace. */
  size_t slots = 16;
  while (slots < tr->nb * 2) slots <<= 1;
  uint64_t *set = calloc(slots, sizeof *set);
  sim_lru pooled;
  uint64_t kv = (uint64_t)o->kv_blocks * o->replicas;
  if (o->cluster) {
    kv = 0;
    for (size_t g = 0; g < o->cluster->n; g++)
      kv += (uint64_t)o->cluster->g[g].kv_blocks * o->cluster->g[g].count;
  }
  if (kv > 0xffffffffu / 2) kv = 0xffffffffu / 2;
  if (!set || sim_lru_init(&pooled, (uint32_t)kv)) abort();
  for (size_t i = 0; i < tr->n; i++) {
    const sim_trace_req *q = &tr->reqs[i];
    const uint64_t *ch = tr->chain + q->block_off;
    c->total += q->nblocks;
    for (uint32_t b = 0; b < q->nblocks; b++) {
      uint64_t k = ch[b] | 1;
      size_t j = (size_t)sim_mix64(k) & (slots - 1);
      while (set[j] && set[j] != k) j = (j + 1) & (slots - 1);
      if (set[j]) c->oracle++;
      else set[j] = k;
    }
    c->pooled += lru_prefix_fill(&pooled, ch, q->nblocks);
  }
  free(set);
  sim_lru_free(&pooled);
}

/* ------------------------------------------------------------ reports */

static const char *CLS[4] = {"", "gold", "silver", "bronze"};
static const char *SLO_NAMES[4] = {"gold p95 TTFT < 800 ms", "silver p99 completion < 8 s",
                                   "hot-prefix hit > 70%", "replay success > 99%"};

static double hit_pct(const result *r) {
  return r->total_blocks > 0 ? 100.0 * r->hit_blocks / r->total_blocks : 0;
}
static double hot_pct(const result *r, const ceilings *c) {
  return c->oracle > 0 ? 100.0 * r->hit_blocks / c->oracle : 0;
}
static double replay_pct(const result *r) {
  return r->replays ? 100.0 * (double)(r->replays - r->lost) / (double)r->replays : 100.0;
}

static void check_slos(result *r, const ceilings *c) {
  r->slo[0] = r->ttft[1][1] < 800;
  r->slo[1] = r->done[2][2] < 8000;
  r->slo[2] = hot_pct(r, c) > 70;
  r->slo[3] = replay_pct(r) > 99;
}

static void print_tables(const sim_opts *o, const sim_trace *tr, const ceilings *c,
                         const result *rs, size_t n, const zone *zones, size_t nz) {
  const result *base = &rs[n - 1];
  printf("# spotinfer simulator\n\n");
  printf("trace: %s, %zu requests, %zu prompt blocks of %d tokens",
         tr->source, tr->n, tr->nb, SIM_BLOCK_TOKENS);
  if (tr->bad_lines) printf(", %zu bad lines skipped (first: %s)", tr->bad_lines, tr->first_bad);
  if (o->cluster) {
    printf("\ncluster: %u replicas in %zu groups\n", o->cluster->replicas, o->cluster->n);
    for (size_t g = 0; g < o->cluster->n; g++) {
      const sim_group *G = &o->cluster->g[g];
      printf("  %u x %s %s in %s at $%.2f/h", G->count,
             G->pool == SPI_POOL_SPOT ? "spot" : "on-demand", G->instance_type, G->zone,
             G->usd_h);
      if (G->pool == SPI_POOL_SPOT) printf(" ($%.2f/h on demand)", G->od_usd_h);
      printf(", %u KV blocks, batch %u, prefill %.0f tok/s, decode %.0f tok/s a stream\n",
             G->kv_blocks, G->max_batch, G->prefill_tps, G->decode_tps);
    }
  } else {
    printf("\ncluster: %u replicas (%u on-demand at $%.2f/h, %u spot at $%.2f/h), "
           "%u KV blocks each, batch %u, prefill %.0f tok/s, decode %.0f tok/s a stream\n",
           o->replicas, o->on_demand, o->od_usd_h, o->replicas - o->on_demand, o->spot_usd_h,
           o->kv_blocks, o->max_batch, o->prefill_tps, o->decode_tps);
  }
  printf("spot zones:");
  for (size_t z = 0; z < nz; z++)
    printf(" %s (%s, %.0f s notice)", zones[z].tr.zone, zones[z].tr.cloud, zones[z].tr.lead_s);
  printf("\nhit-rate ceilings: oracle (unlimited cache) %.1f%%, pooled LRU (whole cluster's KV) %.1f%%\n\n",
         c->total > 0 ? 100 * c->oracle / c->total : 0,
         c->total > 0 ? 100 * c->pooled / c->total : 0);
  printf("| policy | total $ | $/1M tok | savings | hit %% | hot hit %% | p95 TTFT gold ms | "
         "p99 done silver s | replays | replay ok %% | lost | imbalance | SLOs |\n");
  printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
  for (size_t k = 0; k < n; k++) {
    const result *r = &rs[k];
    double sav = base->usd > 0 ? 100.0 * (1 - r->usd / base->usd) : 0;
    int ok = r->slo[0] + r->slo[1] + r->slo[2] + r->slo[3];
    printf("| %s | %.2f | %.3f | %.1f%% | %.1f | %.1f | %.0f | %.2f | %" PRIu64
           " | %.2f | %" PRIu64 " | %.2f | %d/4 %s |\n",
           r->name, r->usd, r->tokens > 0 ? r->usd / r->tokens * 1e6 : 0, sav, hit_pct(r),
           hot_pct(r, c), r->ttft[1][1], r->done[2][2] / 1000, r->replays, replay_pct(r),
           r->lost, r->imbalance, ok, ok == 4 ? "pass" : "FAIL");
  }
  printf("\n| policy | class | TTFT p50 / p95 / p99 ms | completion p50 / p95 / p99 s |\n");
  printf("|---|---|---|---|\n");
  for (size_t k = 0; k < n; k++)
    for (int cl = 1; cl <= 3; cl++)
      printf("| %s | %s | %.0f / %.0f / %.0f | %.2f / %.2f / %.2f |\n", rs[k].name, CLS[cl],
             rs[k].ttft[cl][0], rs[k].ttft[cl][1], rs[k].ttft[cl][2], rs[k].done[cl][0] / 1000,
             rs[k].done[cl][1] / 1000, rs[k].done[cl][2] / 1000);
  printf("\nSLOs: %s; %s; %s; %s.\n", SLO_NAMES[0], SLO_NAMES[1], SLO_NAMES[2], SLO_NAMES[3]);
  for (size_t k = 0; k < n; k++) {
    printf("%s:", rs[k].name);
    for (int j = 0; j < 4; j++) printf(" %s", rs[k].slo[j] ? "ok" : "miss");
    printf("; conservation %s (%" PRIu64 " completed + %" PRIu64 " lost of %zu), "
           "%" PRIu64 " notices, %" PRIu64 " drains, %" PRIu64 " requeues, %" PRIu64
           " spot / %" PRIu64 " on-demand placements, fleet $%.2f\n",
           rs[k].completed + rs[k].lost == tr->n ? "ok" : "BROKEN", rs[k].completed,
           rs[k].lost, tr->n, rs[k].notices, rs[k].drains, rs[k].requeued, rs[k].spot_served,
           rs[k].od_served, rs[k].usd_fleet);
  }
}

static void write_json(const char *path, const sim_trace *tr, const ceilings *c,
                       const result *rs, size_t n) {
  FILE *f = fopen(path, "w");
  if (!f) { perror(path); return; }
  fprintf(f, "{\"trace\":{\"requests\":%zu,\"blocks\":%zu,\"bad_lines\":%zu},\n",
          tr->n, tr->nb, tr->bad_lines);
  fprintf(f, " \"ceilings\":{\"oracle_hit\":%.6f,\"pooled_lru_hit\":%.6f},\n \"policies\":[\n",
          c->total > 0 ? c->oracle / c->total : 0, c->total > 0 ? c->pooled / c->total : 0);
  for (size_t k = 0; k < n; k++) {
    const result *r = &rs[k];
    fprintf(f, "  {\"name\":\"%s\",\"usd\":%.4f,\"usd_fleet\":%.4f,\"usd_per_million\":%.6f,"
               "\"hit\":%.6f,\"completed\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"replays\":%" PRIu64
               ",\"replay_success\":%.6f,\"imbalance\":%.4f,\"notices\":%" PRIu64 ",",
            r->name, r->usd, r->usd_fleet, r->tokens > 0 ? r->usd / r->tokens * 1e6 : 0,
            r->total_blocks > 0 ? r->hit_blocks / r->total_blocks : 0, r->completed, r->lost,
            r->replays, replay_pct(r) / 100, r->imbalance, r->notices);
    fprintf(f, "\"classes\":{");
    for (int cl = 1; cl <= 3; cl++)
      fprintf(f, "%s\"%s\":{\"ttft_ms\":[%.3f,%.3f,%.3f],\"completion_ms\":[%.3f,%.3f,%.3f]}",
              cl > 1 ? "," : "", CLS[cl], r->ttft[cl][0], r->ttft[cl][1], r->ttft[cl][2],
              r->done[cl][0], r->done[cl][1], r->done[cl][2]);
    fprintf(f, "},\"slo\":{\"gold_p95_ttft\":%s,\"silver_p99_completion\":%s,"
               "\"hot_prefix_hit\":%s,\"replay_success\":%s}}%s\n",
            r->slo[0] ? "true" : "false", r->slo[1] ? "true" : "false",
            r->slo[2] ? "true" : "false", r->slo[3] ? "true" : "false", k + 1 < n ? "," : "");
  }
  fprintf(f, " ]}\n");
  fclose(f);
}

/* Three bar groups per policy: $/1M tokens, hit rate, gold p95 TTFT, each
 * scaled to its own maximum; the ceilings as dashed lines on the hit bars. */
static void write_svg(const char *path, const ceilings *c, const result *rs, size_t n) {
  FILE *f = fopen(path, "w");
  if (!f) { perror(path); return; }
  const int W = 900, H = 420, left = 60, top = 50, ph = 280;
  double mx[3] = {1e-9, 1e-9, 1e-9};
  double v[16][3];
  for (size_t k = 0; k < n && k < 16; k++) {
    v[k][0] = rs[k].tokens > 0 ? rs[k].usd / rs[k].tokens * 1e6 : 0;
    v[k][1] = hit_pct(&rs[k]);
    v[k][2] = rs[k].ttft[1][1];
    for (int j = 0; j < 3; j++) if (v[k][j] > mx[j]) mx[j] = v[k][j];
  }
  mx[1] = 100;
  const char *col[3] = {"#4e79a7", "#59a14f", "#e15759"};
  const char *lab[3] = {"$ per 1M tokens", "prefix-cache hit %", "gold p95 TTFT ms"};
  fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
             "font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
  fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H);
  fprintf(f, "<text x=\"%d\" y=\"24\" font-size=\"16\">spotinfer simulator: policies side by side "
             "(bars scaled per metric)</text>\n", left);
  double gw = (double)(W - left - 20) / (double)n, bw = gw / 4.5;
  for (size_t k = 0; k < n; k++) {
    double x0 = left + gw * (double)k + bw * 0.5;
    for (int j = 0; j < 3; j++) {
      double h = ph * v[k][j] / mx[j];
      fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\">"
                 "<title>%s %s: %.3f</title></rect>\n",
              x0 + bw * j, top + ph - h, bw * 0.9, h, col[j], rs[k].name, lab[j], v[k][j]);
      fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"9\" text-anchor=\"middle\">%.*f</text>\n",
              x0 + bw * j + bw * 0.45, top + ph - h - 3, j == 0 ? 2 : 0, v[k][j]);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
            x0 + bw * 1.5, top + ph + 18, rs[k].name);
  }
  double ys[2] = {c->total > 0 ? 100 * c->oracle / c->total : 0,
                  c->total > 0 ? 100 * c->pooled / c->total : 0};
  const char *yl[2] = {"oracle hit ceiling", "pooled LRU hit ceiling"};
  for (int j = 0; j < 2; j++) {
    double y = top + ph - ph * ys[j] / 100;
    fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#59a14f\" "
               "stroke-dasharray=\"%s\"/>\n<text x=\"%d\" y=\"%.1f\" fill=\"#59a14f\" "
               "font-size=\"10\" text-anchor=\"end\">%s %.1f%%</text>\n",
            left, W - 20, y, y, j ? "2,3" : "6,3", W - 22, y - 3, yl[j], ys[j]);
  }
  for (int j = 0; j < 3; j++)
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\"/>"
               "<text x=\"%d\" y=\"%d\">%s</text>\n",
            left + 200 * j, H - 40, col[j], left + 200 * j + 16, H - 30, lab[j]);
  fprintf(f, "</svg>\n");
  fclose(f);
}

/* --------------------------------------------------------------- main */

static const struct { const char *name, *module; } POLICIES[] = {
    {"library", "reference"},
    {"round-robin", "sim-round-robin"},
    {"least-loaded", "sim-least-loaded"},
    {"consistent-hash", "sim-consistent-hash"},
    {"gateway-scorer", "sim-gateway-scorer"},
};
#define N_POLICIES (sizeof POLICIES / sizeof POLICIES[0])

static int wanted(const char *list, const char *name) {
  if (!list) return 1;
  size_t n = strlen(name);
  for (const char *p = list; (p = strstr(p, name)); p += n)
    if ((p == list || p[-1] == ',') && (p[n] == ',' || !p[n])) return 1;
  return 0;
}


int sim_main(const sim_opts *o) {
  sim_trace tr;
  char msg[256];
  int rc = o->trace ? sim_trace_read(&tr, o->trace, o->limit, o->gen.mix, o->gen.seed, msg, sizeof msg)
                    : sim_trace_generate(&tr, &o->gen);
  if (rc) {
    fprintf(stderr, "spotinfer_sim: %s\n", o->trace ? msg : "generator failed");
    return 1;
  }
  if (!tr.chain) {
    fprintf(stderr, "spotinfer_sim: out of memory\n");
    sim_trace_free(&tr);
    return 1;
  }
  double horizon_s = (double)tr.reqs[tr.n - 1].arrival_ns / 1e9 + 3600;
  zone zones[SIM_MAX_ZONES];
  size_t nz = 0;
  memset(zones, 0, sizeof zones);
  if (o->n_spot) {
    for (size_t k = 0; k < o->n_spot; k++) {
      if (sim_spot_read(&zones[nz].tr, o->spot[k], msg, sizeof msg)) {
        fprintf(stderr, "spotinfer_sim: %s\n", msg);
        for (size_t z = 0; z < nz; z++) sim_spot_free(&zones[z].tr);
        sim_trace_free(&tr);
        return 1;
      }
      /* With a cluster file the i-th trace drives its i-th spot zone. */
      if (o->cluster)
        snprintf(zones[nz].tr.zone, sizeof zones[nz].tr.zone, "%s", o->cluster->zones[k]);
      nz++;
    }
  } else if (o->cluster) {
    for (; nz < o->cluster->nzones; nz++)
      sim_spot_generate(&zones[nz].tr, o->cluster->zones[nz], o->cluster->zone_cloud[nz],
                        horizon_s, o->gen.seed * 1000003u + nz);
  } else {
    static const char *zn[4][2] = {{"us-east-1a", "aws"}, {"us-west-2b", "aws"},
                                   {"us-central1-a", "gcp"}, {"us-east1-b", "gcp"}};
    for (; nz < 4; nz++)
      sim_spot_generate(&zones[nz].tr, zn[nz][0], zn[nz][1], horizon_s,
                        o->gen.seed * 1000003u + nz);
  }
  ceilings c;
  compute_ceilings(o, &tr, &c);
  result rs[N_POLICIES + 1];
  memset(rs, 0, sizeof rs);
  size_t n = 0;
  double t0 = sim_wall_s();
  uint64_t simulated = 0;
  for (size_t k = 0; k <= N_POLICIES; k++) {
    int od = k == N_POLICIES;
    if (!od && !wanted(o->policies, POLICIES[k].name)) continue;
    snprintf(rs[n].name, sizeof rs[n].name, "%s", od ? "all-on-demand" : POLICIES[k].name);
    if (run_policy(o, &tr, zones, nz, od ? "reference" : POLICIES[k].module, od, &rs[n],
                   horizon_s)) {
      for (size_t z = 0; z < nz; z++) sim_spot_free(&zones[z].tr);
      sim_trace_free(&tr);
      return 1;
    }
    check_slos(&rs[n], &c);
    simulated += tr.n;
    n++;
  }
  double el = sim_wall_s() - t0;
  print_tables(o, &tr, &c, rs, n, zones, nz);
  if (o->json) write_json(o->json, &tr, &c, rs, n);
  if (o->svg) write_svg(o->svg, &c, rs, n);
  if (!o->quiet)
    fprintf(stderr, "simulated %" PRIu64 " requests (%zu policies x %zu) in %.2f s: %.0f requests/s\n",
            simulated, n, tr.n, el, el > 0 ? (double)simulated / el : 0);
  int bad = 0;
  for (size_t k = 0; k < n; k++) bad |= rs[k].lost != 0 || rs[k].completed + rs[k].lost != tr.n;
  for (size_t z = 0; z < nz; z++) sim_spot_free(&zones[z].tr);
  sim_trace_free(&tr);
  return bad ? 3 : 0;
}
