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

double sim_thread_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* -------------------------------------------------------------- events */

enum { EV_ARRIVE, EV_FIRST, EV_FINISH, EV_ZNOTICE, EV_ZGONE, EV_ZBACK, EV_PUMP, EV_UNPARK };

/* Requests the library held for spot capacity wait in the simulated
 * gateway and are offered again when a zone regains capacity, and at the
 * latest after this long (a breaker, not a zone, may have held them). */
#define SIM_PARK_POLL_NS MS(30000)

/* A request refused outright (shed, no capacity: HTTP 429 or 503 at a
 * gateway) is offered again as a client retries it: after 500 ms, doubling
 * with each refusal, at most SIM_PARK_POLL_NS apart. A fixed short delay
 * made an overloaded run's work grow with the square of its length. */
static int64_t refused_retry_ns(uint8_t refusals) {
  int64_t d = MS(500) << (refusals < 6 ? refusals : 6);
  return d < SIM_PARK_POLL_NS ? d : SIM_PARK_POLL_NS;
}

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

/* The heap is 4-ary: event i's children are 4i+1 to 4i+4, so a path from
 * the root is half as long as a binary heap's, and a pop's way down takes
 * three comparisons a level where the binary one took one in twice the
 * levels, with half the moves. */
#define HEAP_PARENT(i) (((i) - 1) / 4)

/* Room for more events: seldom (the queue doubles), so kept out of the
 * pushes, which are then short enough to inline at each caller. */
#if defined(__GNUC__)
__attribute__((noinline, cold))
#endif
static void heap_grow(heap *h) {
  h->cap = h->cap ? h->cap * 2 : 4096;
  event *p = realloc(h->e, h->cap * sizeof *p);
  if (!p) sim_oom("the event queue");
  h->e = p;
}

/* ev into the heap, its seq already drawn. */
static inline void heap_add(heap *h, event ev) {
  if (h->n == h->cap) heap_grow(h);
  size_t i = h->n++;
  while (i) {
    size_t p = HEAP_PARENT(i);
    if (!ev_less(&ev, &h->e[p])) break;
    h->e[i] = h->e[p];
    i = p;
  }
  h->e[i] = ev;
}

static inline void heap_push(heap *h, int64_t t, uint32_t type, uint32_t a,
                             uint32_t epoch) {
  event ev = {t, h->seq++, type, a, epoch};
  heap_add(h, ev);
}

/* The earliest of the children from c (at least one, at most four, below
 * n). */
static size_t heap_least_child(const event *e, size_t c, size_t n) {
  if (c + 4 <= n) {
    size_t a = ev_less(&e[c + 1], &e[c]) ? c + 1 : c;
    size_t b = ev_less(&e[c + 3], &e[c + 2]) ? c + 3 : c + 2;
    return ev_less(&e[b], &e[a]) ? b : a;
  }
  size_t m = c;
  for (size_t k = c + 1; k < n; k++)
    if (ev_less(&e[k], &e[m])) m = k;
  return m;
}

/* The earliest event out. Its hole goes down to a leaf along the earliest
 * child, and the last event goes up from there:
 * it came from the bottom, so it seldom rises far, where sifting it down
 * from the root compares it at every level too. The order events come
 * out in is (t, seq) either way: no two share a seq. */
static event heap_pop(heap *h) {
  event top = h->e[0], last = h->e[--h->n];
  size_t n = h->n, i = 0;
  if (!n) return top;
  for (;;) {
    size_t c = 4 * i + 1;
    if (c >= n) break;
    c = heap_least_child(h->e, c, n);
    h->e[i] = h->e[c];
    i = c;
  }
  while (i) {
    size_t p = HEAP_PARENT(i);
    if (!ev_less(&last, &h->e[p])) break;
    h->e[i] = h->e[p];
    i = p;
  }
  h->e[i] = last;
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
  uint32_t predicted; /* blocks the library said its replica holds */
  double gw_tokens; /* what the gateway view charged its replica */
  uint8_t state, hits_counted;
  uint8_t refusals; /* times refused outright (saturates) */
  uint8_t lost;     /* done, but never completed: its replay was refused */
  float ttft_ms, done_ms;
} sreq;


typedef struct replica {
  char id[32], node[48];
  size_t id_len;
  int32_t pool, zone; /* zone -1: on-demand */
  uint32_t zslot;     /* its place in the zone: it runs while zslot < cap */
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
  size_t wq_head, wq_tail, wq_cap; /* wq_cap: 0 or a power of two */
  int64_t prefill_free_at, up_since;
  double up_seconds;
  uint64_t starts;
  double tokens_served; /* prompt + output of the requests started here */
} replica;


/* A warm request handle, as a gateway's per-worker request would be. */
typedef struct sim_rq {
  spi_request *h;
  int warm;    /* h holds the attributes every request shares */
  int32_t cls; /* the class h's class attributes are set for; -1 none */
  int replay;  /* h has a replay-since time set */
} sim_rq;

typedef struct sim {
  const sim_opts *o;
  const sim_trace *tr;
  sim_zone *zones;
  size_t nz;
  int all_on_demand;
  int64_t now;
  heap h;
  /* First tokens wait in a heap of their own (their seqs drawn from h's
   * counter): a prefill ends soon after it starts, so its event sat near
   * the root of h, among the finishes of every running stream, and its
   * push and pop walked h's height; here they walk the height of a heap
   * of the prefills under way. The next event is the earliest of the two
   * tops and the arrival, in the same (t, seq) order. */
  heap hf;
  /* The trace's next arrival waits beside the heap, not in it: it is the
   * earliest event most of the time, so pushed it would rise to the root
   * and be popped from there at once. Its seq is drawn from the heap's
   * counter when it is set, as a push would, so events come out in the
   * same (t, seq) order. */
  event arrival;
  int arrival_set;
  spi_engine *eng;
  sim_rq rq[4]; /* a warm request handle a class (the class's value & 3) */
  spi_request *scratch;
  spi_replay_queue *q;
  replica *reps;
  uint32_t nrep;
  sreq *r;
  int pump_pending, unpark_pending;
  uint32_t *parked; /* FIFO of requests held for spot */
  size_t n_parked, parked_cap;
  char dir[64];
  sim_result *res;
  uint64_t done_n;
  sim_gw_view view;
} sim;

static int64_t clock_hook(void *ud) { return SIM_EPOCH_NS + ((sim *)ud)->now; }

static void report_load(sim *s, replica *p) {
  spi_load l = {sizeof l, (double)p->running, (double)p->waiting_n, 0, 0};
  double kv = (double)p->running_blocks / (double)p->kv_blocks;
  l.kv_usage = kv > 1 ? 1 : kv;
  spi_replica_report_load(s->eng, p->id, p->id_len, &l);
}

static int replica_upsert(sim *s, replica *p) {
  spi_replica_info ri;
  memset(&ri, 0, sizeof ri);
  ri.struct_size = sizeof ri;
  ri.id = p->id, ri.id_len = p->id_len;
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
    if (!n) sim_oom("a replica's wait queue");
    for (size_t k = 0; k < p->wq_cap; k++) n[k] = p->wq[(p->wq_head + k) & (p->wq_cap - 1)];
    p->wq_tail -= p->wq_head;
    p->wq_head = 0;
    free(p->wq);
    p->wq = n;
    p->wq_cap = c;
  }
  p->wq[p->wq_tail++ & (p->wq_cap - 1)] = i; /* a mask, not a division */
}

/* Leading prompt blocks present in an LRU, then all of them inserted. */

static void start_one(sim *s, replica *p, uint32_t i) {
  sreq *q = &s->r[i];
  const sim_trace_req *t = &s->tr->reqs[i];
  uint32_t hit = sim_lru_prefix_fill(&p->lru, s->tr->chain + t->block_off, t->nblocks);
  if (!q->hits_counted) {
    q->hits_counted = 1;
    s->res->hit_blocks += hit;
    s->res->predicted_blocks += q->predicted;
    s->res->total_blocks += t->nblocks;
    uint32_t k = t->klass < 4 ? t->klass : 0;
    s->res->class_hit_blocks[k] += hit;
    s->res->class_total_blocks[k] += t->nblocks;
    if (p->pool == SPI_POOL_SPOT) {
      s->res->spot_hit_blocks += hit;
      s->res->spot_total_blocks += t->nblocks;
    }
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
  p->tokens_served += (double)q->prompt_tokens + (double)q->out_left;
  event first = {q->prefill_end, s->h.seq++, EV_FIRST, i, q->epoch};
  heap_add(&s->hf, first);
  heap_push(&s->h, end, EV_FINISH, i, q->epoch);
}

static void try_start(sim *s, replica *p) {
  while (p->running < p->max_batch && p->wq_head < p->wq_tail) {
    uint32_t i = p->wq[p->wq_head++ & (p->wq_cap - 1)];
    sreq *q = &s->r[i];
    if (q->state != RQ_WAITING || q->replica != (int32_t)(p - s->reps)) continue;
    p->waiting_n--;
    start_one(s, p, i);
  }
}

/* The replica a decision names: ids are "r<index>-...". */
static uint32_t replica_of(const char *id) {
  uint32_t k = 0;
  for (const char *c = id + 1; *c >= '0' && *c <= '9'; c++) k = k * 10 + (uint32_t)(*c - '0');
  return k;
}

/* Build the library request for request i from its trace blocks, in its
 * class's handle. A handle stays warm between requests, as a gateway's
 * per-worker request would: the model is set once, and every other
 * attribute a request may carry is set or cleared each time. A handle a
 * class sets the class's attributes once instead of at every change of
 * class (a route reads the handle and derives the request anew from it,
 * whichever handle it is). */
static spi_request *build_request(sim *s, uint32_t i, int *rc) {
  const sim_trace_req *t = &s->tr->reqs[i];
  sreq *q = &s->r[i];
  size_t n = (size_t)t->nblocks * SIM_IDS_PER_BLOCK;
  sim_rq *h = &s->rq[t->klass & 3];
  spi_request *rq = h->h;
  if (!h->warm) {
    spi_request_reset(rq);
    spi_request_set_str(rq, SPI_REQ_MODEL, "sim-model", 9);
    h->warm = 1;
    h->cls = -1;   /* none set yet */
    h->replay = 0; /* reset cleared it */
  }
  /* What depends on the class alone is set when the class changes: a
   * route reads the handle and leaves it as it was, and setting a field
   * to the value it holds changes nothing the token ids (always set
   * below) do not change too. */
  if (h->cls != (int32_t)t->klass) {
    const char *cls = spi_class_name((int32_t)t->klass);
    spi_request_set_str(rq, SPI_REQ_CLASS, cls, strlen(cls));
    if (t->klass != SPI_CLASS_GOLD) {
      spi_request_set_int(rq, SPI_REQ_REPLAYABLE, 1);
      spi_request_unset_int(rq, SPI_REQ_SLA_MS);
    } else {
      spi_request_unset_int(rq, SPI_REQ_REPLAYABLE);
      spi_request_set_int(rq, SPI_REQ_SLA_MS, 2000);
    }
    h->cls = (int32_t)t->klass;
  }
  spi_request_set_int(rq, SPI_REQ_PROMPT_TOKENS, q->prompt_tokens);
  spi_request_set_int(rq, SPI_REQ_EXPECTED_OUTPUT_TOKENS, q->out_left);
  spi_request_set_int(rq, SPI_REQ_MAX_OUTPUT_TOKENS, q->out_left);
  if (q->replay_since) {
    spi_request_set_int(rq, SPI_REQ_REPLAY_SINCE_NS, SIM_EPOCH_NS + q->replay_since);
    h->replay = 1;
  } else if (h->replay) {
    spi_request_unset_int(rq, SPI_REQ_REPLAY_SINCE_NS);
    h->replay = 0;
  }
  *rc = spi_request_set_token_ids(rq, s->tr->ids + t->block_off * SIM_IDS_PER_BLOCK, n);
  return rq;
}

/* Route request i; 1 when it landed on a replica, 0 when refused, 2 when
 * the library holds it for spot capacity that is not up, 3 when the library
 * does not take the request at all (a route error: offering it again would
 * give the same answer, so it is not). */
static int route(sim *s, uint32_t i) {
  sreq *q = &s->r[i];
  int brc;
  spi_request *rq = build_request(s, i, &brc);
  if (brc != SPI_OK) {
    if (!s->res->route_errors++)
      fprintf(stderr, "spotinfer_sim: %s: request %u not taken: %s: %s\n", s->res->name, i,
              spi_strerror(brc), spi_request_errmsg(rq));
    return 3;
  }
  spi_decision d; /* spi_route clears it; its fields are read on SPI_OK only */
  d.struct_size = sizeof d;
  int rc = spi_route(rq, &d);
  if (rc != SPI_OK || !d.ticket) {
    if (rc != SPI_OK && rc != SPI_ESHED && rc != SPI_ENOCAPACITY) {
      if (!s->res->route_errors++) /* the first, even with --quiet: the table counts them */
        fprintf(stderr, "spotinfer_sim: %s: route: %s: %s\n", s->res->name, spi_strerror(rc),
                spi_engine_errmsg(s->eng));
    }
    return rc == SPI_OK && d.reason_code == SPI_REASON_QUEUE_NO_SPOT ? 2 : 0;
  }
  uint32_t ri = replica_of(d.replica_id);
  replica *p = &s->reps[ri];
  if (d.pool == SPI_POOL_SPOT) s->res->spot_served++;
  else s->res->od_served++;
  q->ticket = d.ticket;
  q->replica = (int32_t)ri;
  q->predicted = d.matched_blocks;
  q->state = RQ_WAITING;
  q->gw_tokens = (double)q->prompt_tokens + (double)q->out_left;
  s->view.tokens[ri] += q->gw_tokens;
  member_add(s, p, i);
  p->waiting_n++;
  wq_push(p, i);
  try_start(s, p);
  report_load(s, p);
  return 1;
}

static void park(sim *s, uint32_t i) {
  if (s->n_parked == s->parked_cap) {
    size_t c = s->parked_cap ? s->parked_cap * 2 : 256;
    uint32_t *p = realloc(s->parked, c * sizeof *p);
    if (!p) sim_oom("the parked requests");
    s->parked = p;
    s->parked_cap = c;
  }
  s->parked[s->n_parked++] = i;
  if (!s->unpark_pending) {
    s->unpark_pending = 1;
    heap_push(&s->h, s->now + SIM_PARK_POLL_NS, EV_UNPARK, 0, 0);
  }
}

/* Offer every held request again now, in the order they were held (zone:
 * a zone's capacity came back; 0: the poll). */
static void unpark(sim *s, int zone) {
  if (!zone) s->unpark_pending = 0;
  for (size_t k = 0; k < s->n_parked; k++) heap_push(&s->h, s->now, EV_ARRIVE, s->parked[k], 0);
  s->n_parked = 0;
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
  s->view.tokens[q->replica] -= q->gw_tokens;
  q->gw_tokens = 0;
  q->epoch++;
  q->state = RQ_REPLAY;
  q->replays++;
  s->res->replays++;
  sim_timeline_count(&s->res->tl, (double)s->now / 1e9, SIM_TL_REPLAY);
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
    q->lost = 1;
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
    if (rc != SPI_OK || claim == 0) break; /* claim 0: nothing ready */
    uint32_t i = (uint32_t)strtoul(env.key + 1, NULL, 10);
    sreq *q = &s->r[i];
    size_t need = 0;
    uint32_t flags = 0;
    rc = spi_replay_continuation(&env, cont, sizeof cont, &need, &flags);
    int64_t left = -1;
    if (rc == SPI_OK &&
        spi_request_parse_openai(s->scratch, cont, need, SPI_OPENAI_COMPLETIONS) == SPI_OK)
      spi_request_get_int(s->scratch, SPI_REQ_MAX_OUTPUT_TOKENS, &left, NULL);
    /* The continuation's budget against the output the run still owes:
     * they differ when the library restarts the request from scratch (a
     * completions prompt with no partial text) while the run goes on from
     * where the stream stopped. Counted apart from the route errors. */
    if (left != (int64_t)q->out_left) s->res->budget_mismatches++;
    int routed = route(s, i);
    if (routed == 1 || routed == 3) { /* 3: never taken; it stays unfinished */
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
  s->view.tokens[q->replica] -= q->gw_tokens;
  q->gw_tokens = 0;
  q->state = RQ_DONE;
  q->done_ms = (float)((double)(s->now - t->arrival_ns) / 1e6);
  s->res->completed++;
  s->res->tokens += (double)t->in_tokens + (double)t->out_tokens;
  s->done_n++;
  try_start(s, p);
  report_load(s, p);
}

/* --------------------------------------------------------------- spot */

/* How many of the zone's replicas may run at t_s: all or none for a 0/1
 * trace, else the node count (at most the zone's size). */
static uint32_t zone_cap_at(const sim_zone *z, double t_s) {
  if (!z->tr.n) return z->size;
  size_t k = (size_t)((z->start_s + t_s) / z->tr.gap_s) % z->tr.n;
  int32_t v = z->tr.v[k];
  if (z->tr.vmax <= 1) return v > 0 ? z->size : 0;
  return (uint32_t)v < z->size ? (uint32_t)v : z->size;
}

/* Zone capacity changes over [0, horizon): a notice `lead` before each
 * drop (never before the previous change), the new capacity in the event.
 * --no-interruptions keeps the gains and drops nothing: the same run
 * without interruptions. */
static void schedule_zones(sim *s, double horizon_s) {
  for (size_t zi = 0; zi < s->nz; zi++) {
    sim_zone *z = &s->zones[zi];
    double gap = z->tr.gap_s, off = z->start_s;
    z->cap = zone_cap_at(z, 0);
    uint32_t cap = z->cap;
    double last_change = 0;
    if (!z->tr.n) continue;
    double first_tick = (floor(off / gap) + 1) * gap - off;
    for (double t = first_tick; t < horizon_s; t += gap) {
      uint32_t c = zone_cap_at(z, t + gap * 0.5);
      if (c == cap || (c < cap && s->o->no_interruptions)) continue;
      if (c < cap) {
        double nt = t - z->tr.lead_s;
        if (nt < last_change) nt = last_change;
        heap_push(&s->h, (int64_t)(nt * 1e9), EV_ZNOTICE, (uint32_t)zi, c);
        heap_push(&s->h, (int64_t)(t * 1e9), EV_ZGONE, (uint32_t)zi, c);
      } else {
        heap_push(&s->h, (int64_t)(t * 1e9), EV_ZBACK, (uint32_t)zi, c);
      }
      last_change = t;
      cap = c;
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
  const sim_zone *z = &s->zones[p->zone];
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
    if (!s->res->route_errors++)
      fprintf(stderr, "spotinfer_sim: %s: notice parse: %s: %s\n", s->res->name,
              spi_strerror(rc), err);
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
  plans[0].struct_size = sizeof plans[0];
  size_t np = 0;
  rc = spi_engine_notice(s->eng, &nt, plans, sizeof plans / sizeof plans[0], &np);
  s->res->notices++;
  sim_timeline_count(&s->res->tl, (double)s->now / 1e9, SIM_TL_NOTICE);
  if (rc != SPI_OK) {
    if (!s->o->quiet) fprintf(stderr, "notice: %s: %s\n", spi_strerror(rc), spi_engine_errmsg(s->eng));
    return;
  }
  for (size_t k = 0; k < np; k++) {
    int32_t i = p->head;
    while (i >= 0 && s->r[i].ticket != plans[k].ticket) i = s->r[i].next;
    if (i < 0) continue;
    if (plans[k].action == SPI_ACTION_REPLAY) cut(s, (uint32_t)i);
    else {
      s->res->drains++;
      sim_timeline_count(&s->res->tl, (double)s->now / 1e9, SIM_TL_DRAIN);
    }
  }
  report_load(s, p);
}

/* A capacity change of zone zi to cap replicas: notices to, removal of,
 * or return of the replicas at or above cap in the zone's order. */
static void zone_event(sim *s, uint32_t type, uint32_t zi, uint32_t cap) {
  sim_zone *z = &s->zones[zi];
  int64_t gone_at = s->now + (int64_t)(z->tr.lead_s * 1e9);
  for (uint32_t k = 0; k < s->nrep; k++) {
    replica *p = &s->reps[k];
    if (p->zone != (int32_t)zi) continue;
    if (type != EV_ZBACK && p->zslot < cap) continue;
    if (type == EV_ZBACK && p->zslot >= cap) continue;
    if (type == EV_ZNOTICE && p->up) {
      notice_replica(s, p, gone_at);
    } else if (type == EV_ZGONE && p->up) {
      while (p->head >= 0) cut(s, (uint32_t)p->head);
      spi_engine_tick(s->eng);
      spi_replica_remove(s->eng, p->id, p->id_len);
      p->up = 0;
      p->up_seconds += (double)(s->now - p->up_since) / 1e9;
      sim_lru_clear(&p->lru);
      p->wq_head = p->wq_tail = 0;
      p->prefill_free_at = 0;
    } else if (type == EV_ZBACK && !p->up) {
      p->incarnation++;
      p->up = 1;
      p->up_since = s->now;
      s->view.epoch[k]++;
      replica_upsert(s, p);
    }
  }
  if (type != EV_ZNOTICE) {
    z->cap = cap;
    sim_timeline_cap(&s->res->tl, (double)s->now / 1e9, zi, cap);
  }
  if (type == EV_ZBACK) unpark(s, 1);
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

/* The p-th percentile of all n values when v holds the m < n that exist,
 * sorted, and the others are infinitely large (requests never completed). */
static double pct_of_all(const float *v, size_t m, size_t n, double p) {
  if (!n) return 0;
  size_t k = (size_t)ceil(p * (double)n) - 1;
  return k < m ? v[k] : INFINITY;
}

static void summarise(sim *s) {
  sim_result *r = s->res;
  size_t n = s->tr->n;
  float *a = malloc((n ? n : 1) * sizeof *a), *b = malloc((n ? n : 1) * sizeof *b);
  if (!a || !b) sim_oom("the latency percentiles");
  for (size_t i = 0; i < n; i++) {
    const sreq *q = &s->r[i];
    r->n_class[s->tr->reqs[i].klass & 3]++;
    if (!q->replays) continue;
    r->replayed++;
    if (q->state == RQ_DONE && !q->lost && q->first_token_at >= 0) r->replayed_ok++;
  }
  for (uint32_t c = 1; c <= 3; c++) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
      if (s->tr->reqs[i].klass == c && s->r[i].state == RQ_DONE && !s->r[i].lost &&
          s->r[i].first_token_at >= 0) {
        a[m] = s->r[i].ttft_ms;
        b[m++] = s->r[i].done_ms;
      }
    r->done_class[c] = m;
    qsort(a, m, sizeof *a, cmp_float);
    qsort(b, m, sizeof *b, cmp_float);
    const double ps[3] = {0.50, 0.95, 0.99};
    for (int k = 0; k < 3; k++) {
      r->ttft[c][k] = pct(a, m, ps[k]);
      r->done[c][k] = pct(b, m, ps[k]);
    }
    if (c == SPI_CLASS_GOLD) r->slo_gold_ttft_p95 = pct_of_all(a, m, r->n_class[c], 0.95);
    if (c == SPI_CLASS_SILVER) r->slo_silver_done_p99 = pct_of_all(b, m, r->n_class[c], 0.99);
  }
  free(a);
  free(b);
  /* Imbalance per second a replica was up, so a spot replica that was
   * away half the run is not read as idle, and per stream (max_batch):
   * a replica of twice the streams carrying twice the load is balanced.
   * Its size is its streams over the mean of the replicas that were up,
   * exactly 1 when all have one size. */
  double mx = 0, sum = 0, smx = 0, ssum = 0, spot_up = 0, streams = 0;
  uint32_t cnt = 0, up = 0;
  for (uint32_t k = 0; k < s->nrep; k++) {
    replica *p = &s->reps[k];
    if (p->up) p->up_seconds += (double)(s->now - p->up_since) / 1e9;
    r->usd_fleet += p->up_seconds / 3600.0 * p->usd_h;
    if (p->pool == SPI_POOL_SPOT) spot_up += p->up_seconds;
    if (p->up_seconds > 0) streams += p->max_batch, up++;
  }
  for (uint32_t k = 0; k < s->nrep; k++) {
    const replica *p = &s->reps[k];
    if (p->up_seconds > 0) {
      double size = (double)p->max_batch * (double)up / streams;
      double v = p->tokens_served / p->up_seconds / size,
             w = (double)p->starts / p->up_seconds / size;
      if (v > mx) mx = v;
      if (w > smx) smx = w;
      sum += v;
      ssum += w;
      cnt++;
    }
  }
  /* Spot replicas up, on average over the run: what the spot pool had to
   * serve its classes with. */
  r->spot_up_mean = s->now > 0 ? spot_up / ((double)s->now / 1e9) : 0;
  r->imbalance = sum > 0 ? mx / (sum / cnt) : 0;
  r->start_imbalance = ssum > 0 ? smx / (ssum / cnt) : 0;
  for (size_t k = 0; k < spi_ledger_count(s->eng); k++) {
    spi_ledger_row row;
    memset(&row, 0, sizeof row);
    row.struct_size = sizeof row;
    if (spi_ledger_row_at(s->eng, k, &row) == SPI_OK) {
      r->usd += row.usd;
      r->usd_class[row.klass & 3] += row.usd;
    }
  }
  spi_replay_stats st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  spi_replay_stats_get(s->q, &st);
  /* Dead letters ran out of attempts or time: expired. Everything else not
   * done is still queued (or running) when the run reached its horizon. */
  uint64_t open = 0;
  for (size_t i = 0; i < n; i++)
    if (s->r[i].state != RQ_DONE) open++;
  r->expired = st.dead < open ? st.dead : open;
  r->at_horizon = open - r->expired;
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

static int view_init(sim_gw_view *v, const sim_opts *o, const sim_trace *tr, uint32_t nrep) {
  memset(v, 0, sizeof *v);
  v->nrep = nrep;
  v->tokens = calloc(nrep, sizeof *v->tokens);
  v->kv_blocks = calloc(nrep, sizeof *v->kv_blocks);
  v->epoch = calloc(nrep, sizeof *v->epoch);
  if (!v->tokens || !v->kv_blocks || !v->epoch) return -1;
  for (uint32_t k = 0, gi = 0, gk = 0; k < nrep; k++) {
    if (!o->cluster) {
      v->kv_blocks[k] = o->kv_blocks;
      continue;
    }
    while (gk == o->cluster->g[gi].count) gi++, gk = 0;
    gk++;
    v->kv_blocks[k] = o->cluster->g[gi].kv_blocks;
  }
  v->refs = tr->nb;
  v->seed = o->gen.seed;
  return 0;
}

static void view_free(sim_gw_view *v) {
  free(v->tokens);
  free(v->kv_blocks);
  free(v->epoch);
}

/* The next event, from the heaps or beside them (see sim.arrival and
 * sim.hf); NULL when there is none. */
static const event *next_event(const sim *s) {
  const event *e = s->arrival_set ? &s->arrival : NULL;
  if (s->h.n && (!e || ev_less(&s->h.e[0], e))) e = &s->h.e[0];
  if (s->hf.n && (!e || ev_less(&s->hf.e[0], e))) e = &s->hf.e[0];
  return e;
}

/* Take the next event out; 0 when there is none. */
static int take_event(sim *s, event *ev) {
  const event *e = next_event(s);
  if (!e) return 0;
  if (e == &s->arrival) {
    *ev = s->arrival;
    s->arrival_set = 0;
  } else {
    *ev = heap_pop(e == s->hf.e ? &s->hf : &s->h);
  }
  return 1;
}

/* The trace's request k arrives next (its event beside the heap). */
static void set_arrival(sim *s, size_t k) {
  event ev = {s->tr->reqs[k].arrival_ns, s->h.seq++, EV_ARRIVE, (uint32_t)k, 1};
  s->arrival = ev;
  s->arrival_set = 1;
}

/* Start loading what the next event in the heap will read (its request,
 * and an arrival's token ids, which the route copies and hashes) while
 * this one runs. A request's data is touched a few times over minutes of
 * simulated time, so it is out of cache when its event comes; a gateway's
 * request is not (it has just read it). Most likely still the next event
 * when this one is done; a hint otherwise. */
static void warm_next_event(const sim *s) {
  const event *e = next_event(s);
  if (!e || e->type > EV_FINISH) return;
  uint32_t i = e->a;
  const sim_trace_req *t = &s->tr->reqs[i];
  __builtin_prefetch(t);
  __builtin_prefetch(&s->r[i]);
  if (e->type != EV_ARRIVE) return;
  const char *ids = (const char *)(s->tr->ids + t->block_off * SIM_IDS_PER_BLOCK);
  size_t len = (size_t)t->nblocks * SIM_IDS_PER_BLOCK * sizeof *s->tr->ids;
  for (size_t off = 0; off < len; off += 64) __builtin_prefetch(ids + off);
  if (len) __builtin_prefetch(ids + len - 1); /* the line the last step skips */
}

/* The event loop: arrivals, starts, first tokens, finishes, replays and
 * zone changes in simulated-time order until every request is done or
 * the horizon is reached. */
/* Not inlined, so profiles show the loop apart from the set-up. */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void run_events(sim *s, double horizon_s) {
  /* Arrivals are set lazily, one ahead, beside the heap (sim.arrival). */
  size_t next_arrival = 0;
  if (s->tr->n) set_arrival(s, 0);
  next_arrival = 1;
  /* Progress on standard error at each 5% of the requests done, but at most
   * once every 2 s of wall time, so short runs print none. */
  size_t progress_step = s->tr->n / 20 ? s->tr->n / 20 : 1, next_progress = progress_step;
  double last_progress = sim_wall_s();
  int progressed = 0, tty = isatty(2);
  /* The horizon bounds the run: traffic that can never be placed is left
   * queued there and counted, not retried for ever. */
  const int64_t horizon_ns = (int64_t)(horizon_s * 1e9);
  event ev;
  while (s->done_n < s->tr->n && take_event(s, &ev)) {
    warm_next_event(s);
    if (ev.t > horizon_ns) {
      s->now = horizon_ns;
      break;
    }
    s->now = ev.t;
    switch (ev.type) {
    case EV_ARRIVE:
      if (ev.epoch && next_arrival < s->tr->n) set_arrival(s, next_arrival++);
      switch (route(s, ev.a)) {
      case 1:
        break;
      case 3: /* not taken at all: a route error, not offered again */
        break;
      case 2: /* held for spot: offered again when spot capacity returns */
        s->res->requeued++;
        park(s, ev.a);
        break;
      default: { /* refused (busy, shed): offered again as a client would */
        sreq *q = &s->r[ev.a];
        s->res->requeued++;
        heap_push(&s->h, s->now + refused_retry_ns(q->refusals), EV_ARRIVE, ev.a, 0);
        if (q->refusals < UINT8_MAX) q->refusals++;
      }
      }
      break;
    case EV_UNPARK:
      unpark(s, 0);
      break;
    case EV_FIRST: {
      sreq *q = &s->r[ev.a];
      if (ev.epoch != q->epoch) break;
      if (q->first_token_at < 0) {
        q->first_token_at = s->now;
        q->ttft_ms = (float)((double)(s->now - s->tr->reqs[ev.a].arrival_ns) / 1e6);
      }
      spi_ticket_first_token(s->eng, q->ticket);
      break;
    }
    case EV_FINISH:
      if (ev.epoch != s->r[ev.a].epoch) break;
      finish_req(s, ev.a);
      break;
    case EV_PUMP:
      pump(s);
      break;
    default:
      zone_event(s, ev.type, ev.a, ev.epoch);
    }
    if (s->done_n >= next_progress) {
      while (next_progress <= s->done_n) next_progress += progress_step;
      double w = sim_wall_s();
      if (!s->o->quiet && w - last_progress >= 2.0) {
        fprintf(stderr, "%s  %-16s %3d%% (%zu of %zu requests done)%s", tty ? "\r" : "",
                s->res->name, (int)(100.0 * (double)s->done_n / (double)s->tr->n),
                (size_t)s->done_n, s->tr->n, tty ? "" : "\n");
        last_progress = w;
        progressed = 1;
      }
    }
  }
  if (progressed && tty) fprintf(stderr, "\r%70s\r", "");
}

/* The replicas of a run: without a cluster file, on-demand first, then
 * spot spread over the zones; with one, its groups in file order. */
static void replicas_make(sim *s, int all_od) {
  const sim_opts *o = s->o;
  const sim_cluster *cl = o->cluster;
  for (uint32_t k = 0, gi = 0, gk = 0; k < s->nrep; k++) {
    replica *p = &s->reps[k];
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
      spot = !all_od && k >= o->on_demand && s->nz > 0;
      p->zone = spot ? (int32_t)((k - o->on_demand) % s->nz) : -1;
      p->usd_h = spot ? o->spot_usd_h : o->od_usd_h;
      p->prefill_tps = o->prefill_tps, p->decode_tps = o->decode_tps;
      p->kv_blocks = o->kv_blocks, p->max_batch = o->max_batch;
      p->itype = "gpu-1x";
      snprintf(p->id, sizeof p->id, "r%u-%s", k, spot ? s->zones[p->zone].tr.zone : "od");
    }
    p->id_len = strlen(p->id);
    p->pool = spot ? SPI_POOL_SPOT : SPI_POOL_ON_DEMAND;
    if (spot) p->zslot = s->zones[p->zone].size++;
    p->head = -1;
    if (sim_lru_init(&p->lru, p->kv_blocks)) sim_oom("a replica's KV cache");
  }
}

/* What the run tells the engine of its fleet and trace. */
static sim_engine_params engine_params(const sim_opts *o, const sim_trace *tr,
                                       const char *policy, int all_od) {
  const sim_cluster *cl = o->cluster;
  /* The engine's fleet-wide estimates: with a cluster file, replica-weighted
   * means (a spot replica counts at its on-demand price in the all-on-demand
   * baseline and in the on-demand price estimate). */
  double pre = o->prefill_tps, dec = o->decode_tps, batch = o->max_batch;
  double spot_h = o->spot_usd_h, od_h = o->od_usd_h;
  if (cl) {
    double n = 0, ns = 0, ss = 0, so = 0;
    pre = dec = batch = 0;
    for (size_t g = 0; g < cl->n; g++) {
      const sim_group *G = &cl->g[g];
      double c = G->count;
      n += c;
      pre += c * G->prefill_tps, dec += c * G->decode_tps, batch += c * G->max_batch;
      if (G->pool == SPI_POOL_SPOT) ns += c, ss += c * G->usd_h;
      so += c * G->od_usd_h;
    }
    pre /= n, dec /= n, batch /= n;
    od_h = so / n;
    spot_h = ns > 0 ? ss / ns : od_h;
  }
  /* Bronze may wait for spot capacity only where there is spot capacity
   * to wait for: on an on-demand-only cluster it would wait for ever. */
  int has_spot = 0;
  if (cl) {
    for (size_t g = 0; g < cl->n; g++) has_spot |= cl->g[g].pool == SPI_POOL_SPOT;
  } else {
    has_spot = o->on_demand < o->replicas;
  }
  sim_engine_params ep = {policy, all_od || !has_spot, pre, dec, batch, spot_h, od_h,
                          tr->n, tr->nb, 1};
  return ep;
}

int sim_run_policy(const sim_opts *o, const sim_trace *tr, sim_zone *zones, size_t nz,
                   const char *policy, int all_od, sim_result *res, double horizon_s) {
  double cpu0 = sim_thread_cpu_s();
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
  const sim_cluster *cl = o->cluster;
  s.nrep = cl ? cl->replicas : o->replicas;
  if (view_init(&s.view, o, tr, s.nrep)) sim_oom("the gateway's view");
  int rc = spi_engine_new(&s.eng, &hk);
  if (rc == SPI_OK) rc = sim_register_policies(s.eng, &s.view, policy);
  sim_engine_params ep = engine_params(o, tr, policy, all_od);
  char msg[256];
  char *cfg = rc == SPI_OK ? sim_engine_config(o->config_json, &ep, msg, sizeof msg) : NULL;
  res->price_ratio = ep.price_ratio;
  if (rc == SPI_OK && !cfg) {
    fprintf(stderr, "spotinfer_sim: %s\n", msg);
    spi_engine_free(s.eng);
    view_free(&s.view);
    return -1;
  }
  if (rc == SPI_OK) rc = spi_engine_configure(s.eng, cfg, strlen(cfg));
  free(cfg);
  if (rc != SPI_OK) {
    fprintf(stderr, "engine: %s: %s\n", spi_strerror(rc),
            s.eng ? spi_engine_errmsg(s.eng) : "");
    spi_engine_free(s.eng);
    view_free(&s.view);
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
  for (int c = 0; c < 4 && rc == SPI_OK; c++) rc = spi_request_new(s.eng, &s.rq[c].h);
  if (rc == SPI_OK) rc = spi_request_new(s.eng, &s.scratch);
  if (rc != SPI_OK) {
    fprintf(stderr, "setup: %s: %s\n", spi_strerror(rc), spi_engine_errmsg(s.eng));
    return -1;
  }
  s.reps = calloc(s.nrep, sizeof *s.reps);
  for (size_t z = 0; z < nz; z++) zones[z].size = 0;
  s.r = calloc(tr->n ? tr->n : 1, sizeof *s.r);
  if (!s.reps || !s.r) sim_oom("the replicas and requests");
  replicas_make(&s, all_od);
  if (!all_od) schedule_zones(&s, horizon_s);
  sim_timeline_init(&res->tl, (uint32_t)s.nz);
  for (size_t z = 0; z < s.nz && z < SIM_MAX_ZONES; z++) {
    res->tl.zone_size[z] = zones[z].size;
    sim_timeline_cap(&res->tl, 0, (uint32_t)z, zones[z].cap);
  }
  for (uint32_t k = 0; k < s.nrep; k++) {
    replica *p = &s.reps[k];
    p->up = p->zone < 0 || p->zslot < s.zones[p->zone].cap;
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
  double c0 = sim_thread_cpu_s();
  run_events(&s, horizon_s);
  res->loop_cpu_s = sim_thread_cpu_s() - c0;
  res->tl.end_s = (double)s.now / 1e9;
  summarise(&s);
  for (int c = 0; c < 4; c++) spi_request_free(s.rq[c].h);
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
  free(s.parked);
  free(s.h.e);
  free(s.hf.e);
  view_free(&s.view);
  res->other_cpu_s = sim_thread_cpu_s() - cpu0 - res->loop_cpu_s;
  return 0;
}

