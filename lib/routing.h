/*
 * routing.h - internal interfaces of the routing core: the replica
 * registry, the prefix index, breakers, tickets, the cost ledger and the
 * metrics. Each lives in its own .c; route.c ties them together.
 *
 * Concurrency model. Routing (spi_route) takes no lock: it pins the engine's
 * RCU domain, reads the immutable configuration snapshot and the immutable
 * replica set, and touches per-replica and per-index state only through
 * atomics. Writers that change structure (configure, replica upsert/remove)
 * serialise on their own mutex, publish a new immutable object, and wait for
 * pinned readers of the old one before freeing it (spi__rcu_synchronize).
 * Reporting paths that are not the routing hot path (ticket finish into the
 * ledger, metrics rendering) may take a short mutex.
 */
#ifndef SPI_ROUTING_H
#define SPI_ROUTING_H

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

#include "spi_internal.h"

/* --------------------------------------------------------------------- RCU */

/* Two-epoch reader counters. The first SPI_RCU_OWN threads to ask for a
 * number (spi__thread_no) have a line of their own, which only they write:
 * a pin is a plain store there when asymmetric fences are cheap (fences.c),
 * the writer fencing every thread before it reads the counts. Other
 * threads, and every thread where fences are not cheap, pin with atomic
 * adds on counters striped over cache lines by thread number. A thread's own line also says which replica slot
 * it is opening a ticket on (spi__slot_open_begin). */
#define SPI_RCU_STRIPES 16
#define SPI_RCU_OWN 32
typedef struct spi_rcu_stripe {
  atomic_ulong n;
  char pad[64 - sizeof(atomic_ulong)];
} spi_rcu_stripe;
typedef struct spi_rcu_line {
  atomic_ulong n[2];   /* pins, by the epoch's parity */
  atomic_uint opening; /* 1 + the slot a ticket is being opened on; 0 none */
  char pad[64 - 2 * sizeof(atomic_ulong) - sizeof(atomic_uint)];
} spi_rcu_line;
typedef struct spi_rcu {
  atomic_uint epoch;
  char pad[64 - sizeof(atomic_uint)];
  spi_rcu_stripe readers[2][SPI_RCU_STRIPES];
  spi_rcu_line own[SPI_RCU_OWN]; /* thread number n's is own[n - 1] */
  /* Writers of different objects (configure, replica set) may synchronise
   * at once; flip-and-wait must not interleave or a reader pinned two
   * epochs back would be missed. */
  pthread_mutex_t sync_lock;
} spi_rcu;

/* The calling thread's own line (thread number thread_no), or NULL when it
 * has none or fences are not cheap: then it counts itself with atomic adds. */
static inline spi_rcu_line *spi__rcu_line(spi_rcu *r, uint32_t thread_no) {
  return thread_no - 1u < SPI_RCU_OWN && spi__fences_cheap()
             ? &r->own[thread_no - 1u]
             : NULL;
}

int spi__rcu_init(spi_rcu *r);
void spi__rcu_destroy(spi_rcu *r);
unsigned spi__rcu_enter(spi_rcu *r);
void spi__rcu_exit(spi_rcu *r, unsigned pin);
/* Wait until every reader pinned before this call has left. Call after
 * publishing the new object and before freeing the old one. */
void spi__rcu_synchronize(spi_rcu *r);

/* Doubles kept in atomics as their bit patterns. */
static inline uint64_t spi__dbits(double d) {
  uint64_t u;
  __builtin_memcpy(&u, &d, sizeof u);
  return u;
}
static inline double spi__bitsd(uint64_t u) {
  double d;
  __builtin_memcpy(&d, &u, sizeof d);
  return d;
}

/* ------------------------------------------------------- router config */

/* The "router" section: engine-level routing limits (config snapshot). */
typedef struct spi_router_cfg {
  int64_t max_replicas;      /* <= SPI_REPLICA_SLOTS */
  int64_t max_tickets;
  int64_t index_bytes;       /* hard cap of the prefix index */
  int64_t load_max_age_ms;   /* older load signals count as saturated */
  double kv_open, kv_close;  /* pool breaker: shed bronze above / below */
  double kv_silver_open, kv_silver_close; /* ... and silver */
  int64_t error_threshold;   /* consecutive ticket errors that open */
  int64_t error_cooldown_ms; /* open -> half-open after this */
  int64_t max_fallbacks;     /* <= SPI_MAX_FALLBACKS */
  double bytes_per_token;    /* TTFT estimate inputs */
  double ttft_base_ms, ttft_per_queued_ms, prefill_tokens_per_s;
  int64_t weight_seconds;    /* index: one class-weight unit of recency */
  int32_t class_weight[4];   /* index eviction weight by class */
  int64_t ledger_max_rows;
  int64_t metrics_max_families;
  char shadow_policy[64];    /* "" = shadow mode off */
  /* Interruptions (node.c). */
  double decode_tokens_per_s;      /* one stream, when a replica says none */
  int64_t drain_margin_ms;         /* kept free before the deadline */
  double gold_drain_progress;      /* gold past this progress drains */
  int64_t pool_cooldown_ms;        /* spot pool unavailable after a notice */
  int64_t advised_ttl_ms;          /* rebalance advice lasts this long */
  int64_t advised_max_output_tokens; /* longer requests avoid advised nodes */
  double advised_penalty_ms;       /* TTFT penalty of an advised replica */
  int64_t default_window_ms;       /* deadline when a notice gives none */
} spi_router_cfg;

/* ------------------------------------------------------------- replicas */

#define SPI_REPLICA_SLOTS 4096 /* hard cap of router.max_replicas */
#define SPI_PIX_MODELS 15 /* pool indexes of one model each (spi_registry) */
#define SPI_PIX_LANES 2   /* copies of the first index, for routes at once */
#define SPI_PIX_MODEL_MAX 128 /* the longest model name one is kept for */

/* Per-replica state that changes at run time, in a slot that never moves.
 * All fields atomic: routers read them without a lock. What every route
 * reads of every replica is in the first cache line; the rest is read when
 * something happens to the replica. */
typedef struct spi_replica_slot {
  _Alignas(64) atomic_int state; /* enum spi_replica_state; 0 = slot free */
  atomic_uint inflight;     /* open tickets */
  atomic_int breaker;       /* enum spi_breaker_state (breaker.c) */
  atomic_uint gen;          /* bumped on remove, state change off ACTIVE,
                               pool/models change: kills index entries */
  atomic_llong load_at_ns;  /* 0 = never reported */
  atomic_ullong running;    /* double bits */
  atomic_ullong waiting;    /* double bits */
  atomic_ullong kv_usage;   /* double bits */
  /* Interruption signals (node.c). */
  atomic_llong advised_until_ns; /* rebalance advice: no long requests, and
                                    a TTFT penalty, until then */
  atomic_llong cooldown_until_ns; /* its spot pool is cooling down */
  /* Second line. */
  atomic_uint incarnation;  /* bumped only when the slot gets a new replica
                               or loses one: what tickets compare against */
  atomic_uint consecutive_errors;
  atomic_llong open_until_ns;
  atomic_int probe_taken;   /* half-open: the single probe is out */
  /* Routes between their last look at the state and their ticket's
   * publish (spi__slot_open_begin): a notice waits for 0 before it plans
   * the replica's tickets. Outlives a replica, as state does. */
  atomic_uint opening;
  /* The cost model's per-replica state (prefill_model.h), kept
   * incrementally by tickets so a route only reads it: prefill this library
   * queued there and that has no first token yet, in uncached prompt
   * tokens; the work sent there since it joined, in tokens: prompts and
   * outputs, the expected output until a ticket's finish reports it (it
   * joins at its pool's mean, replica.c); and the prefill rate learnt from
   * first tokens. */
  atomic_ullong prefill_queued;
  atomic_ullong served_tokens;
  atomic_ullong prefill_rate; /* double bits, tokens/s; 0 = not learnt */
  atomic_uint rate_samples;
  /* Removed, but routes and ticket reports that saw its replica may still
   * be counting on it: not reusable until they are gone (replica.c). */
  atomic_int held;
  atomic_ullong mean_output; /* double bits: output tokens of its finished
                                tickets, a moving mean (prefill_model.c);
                                0 before the first */
} spi_replica_slot;

_Static_assert(offsetof(spi_replica_slot, cooldown_until_ns) + 8 <= 64,
               "the fields every route reads share one cache line");

/* A replica's identity: immutable once published in a replica set. */
typedef struct spi_replica_ident {
  /* What every route reads of every replica, in one cache line. */
  uint32_t slot;
  int32_t pool;
  int32_t model_tier;
  int32_t cell;             /* SPI_SUMMARY_INDEX(pool, model_tier) */
  uint32_t max_inflight;
  uint32_t models_len;      /* 0: serves any model */
  double inv_max_inflight;  /* 1 / max_inflight */
  double cap;               /* max_inflight as a double */
  uint64_t id_hash;         /* XXH3-64 of id: rendezvous weight input */
  double usd_per_hour;
  size_t id_len;
  /* The rest is read when the replica is chosen or listed. */
  size_t zone_len, type_len, node_len;
  double decode_tps;        /* one stream's decode rate; 0 = router default */
  /* The text, read when chosen or when models are listed. Each text ends
   * at its NUL: a set made by a removal or an update copies no byte past
   * it (replica.c, idents_copy), so nothing reads beyond. */
  char id[SPI_ID_MAX];
  char zone[SPI_ID_MAX];
  char instance_type[SPI_ID_MAX];
  char node[SPI_ID_MAX];    /* the machine it runs on (= id if not given) */
  char models[512];         /* comma-separated; "" = any */
} spi_replica_ident;

/* One stream's decode rate on r, tokens/s: its own, else the router's. */
static inline double spi__decode_rate(const spi_replica_ident *r,
                                      const spi_router_cfg *c) {
  return r->decode_tps > 0 ? r->decode_tps : c->decode_tokens_per_s;
}

/* The published set of replicas (immutable; replaced on every change). */
#define SPI_NO_POS 0xffffu
typedef struct spi_replica_set {
  size_t n;
  uint64_t version;         /* from the registry's count of sets published:
                               a newer set has a higher one (pool_index.c) */
  spi_replica_ident *r;     /* n entries, in order of addition */
  uint16_t *pos_of_slot;    /* SPI_REPLICA_SLOTS: index into r, or
                               SPI_NO_POS (the prefix index names slots) */
} spi_replica_set;

typedef struct spi_registry {
  spi_replica_slot *slots;  /* SPI_REPLICA_SLOTS, 64-byte aligned */
  void *slots_raw;          /* the allocation they are in */
  _Atomic(spi_replica_set *) set;
  pthread_mutex_t lock;     /* writers */
  uint32_t next_slot;       /* where the next free-slot search starts (under
                               lock): slots are reused as late as possible */
  uint64_t set_version;     /* the last published set's version (under lock) */
  /* Slots whose routing state changed since the pool index last read them
   * (pool_index.h): one bit a slot. The index knows which words hold its
   * set's slots and reads only those. */
  atomic_ullong dirty[SPI_REPLICA_SLOTS / 64];
  struct spi_pool_index *pix; /* made with the registry */
  /* Lanes of the first index: copies of it kept from the same marks, so
   * that routes on several threads each have one (pix_lane[0] is pix).
   * Made with the registry, opened when a route finds every open one
   * taken (pix_lanes: how many are open in the low byte, how many routes
   * asked for in the next; spi__pix_lanes_ask asks, the first lane's
   * holder opens them at its sync, others_in_use in pool_index.c). */
  struct spi_pool_index *pix_lane[SPI_PIX_LANES];
  atomic_uint pix_lanes;
  /* Indexes of one model each, for requests for a model pix's models list
   * does not name (pool_index.h, spi__pix_for_model): made as replicas'
   * models lists name models, one a distinct name up to SPI_PIX_MODELS
   * (spi__pix_models_make, under lock: the names met so far, and
   * pix_made_n indexes made, each published before the count), then
   * taken for a model in turn (pix_models_n of them so far); once all
   * are, one whose model no list names any more is given to another
   * (pix_rename; pix_renamed_at: the set version at which none was).
   * pix_counts: where each counts its waits (the engine's metrics). */
  struct spi_pool_index *pix_model[SPI_PIX_MODELS];
  char pix_names[SPI_PIX_MODELS][SPI_PIX_MODEL_MAX];
  uint32_t pix_names_len[SPI_PIX_MODELS], pix_names_n;
  atomic_uint pix_made_n;
  atomic_uint pix_models_n;
  _Atomic uint64_t pix_renamed_at;
  _Atomic(struct spi_metrics *) *pix_counts;
  /* The current set's replicas by machine and by spot pool (replica.c):
   * kept by the set's writers and read by node.c, both under lock. */
  struct spi_replica_links *links;
  uint64_t link_steps;      /* entries the writers' and node.c's lookups
                               looked at (under lock) */
  /* When a spot replica was last registered (engine clock, ns; 0: never):
   * a fleet that runs spot sizes its on-demand pool for the classes kept
   * there, even while every spot replica is gone
   * (spi_route_context.spot_seen_ns). */
  atomic_llong spot_seen_ns;
} spi_registry;

/* Every writer of a slot field that routing reads (state, load, in-flight
 * count, breaker, interruption deadlines, cost-model counters) calls this
 * after its writes, so the pool index reads the slot again. One locked
 * instruction: a route makes several of these, and each costs about as
 * much as a hundred plain ones. */
static inline void spi__replica_touch(spi_registry *g, uint32_t slot) {
  if (slot >= SPI_REPLICA_SLOTS) return;
  atomic_fetch_or_explicit(&g->dirty[slot / 64], UINT64_C(1) << (slot % 64),
                           memory_order_release);
}

struct spi_engine;
int spi__registry_init(spi_registry *g, const spi_mem *m);
void spi__registry_destroy(spi_registry *g, const spi_mem *m);
/* The ident for an id in set, or NULL. */
const spi_replica_ident *spi__registry_find(const spi_replica_set *set,
                                            const char *id, size_t len);
/* The replicas of the current set on machine node, and the spot replicas
 * of the pool (type, zone), one at a time: start with *cursor =
 * SPI_CHAIN_START; NULL at the end. Registry lock held, set the current
 * one. */
#define SPI_CHAIN_START UINT32_MAX
const spi_replica_ident *spi__registry_next_on_node(spi_registry *g,
                                                    const spi_replica_set *set,
                                                    const char *node,
                                                    size_t len,
                                                    uint32_t *cursor);
const spi_replica_ident *spi__registry_next_in_pool(spi_registry *g,
                                                    const spi_replica_set *set,
                                                    const char *type,
                                                    const char *zone,
                                                    uint32_t *cursor);
/* Set a live slot's state; leaving ACTIVE kills its prefix-index entries.
 * Registry lock held. */
void spi__replica_slot_set_state(spi_replica_slot *s, int32_t state);

/* A route opening a ticket on a replica against a notice planning the
 * replica's open tickets. The route reads the state long before it
 * publishes its ticket (the pass, then the policy); a notice that set the
 * state and scanned the tickets in between would miss a ticket published
 * on a machine that is going away. So the route counts itself as opening
 * on the slot, then reads the state again; the notice stores the state,
 * then waits until no route counts itself there, then scans. One side sees
 * the other: the route reads the state the notice stored (and publishes
 * nothing there), or the notice sees the route counted and waits for its
 * ticket to be published (and its scan finds it). The window holds no lock
 * and waits for nothing, so a notice may wait for it under its locks.
 *
 * A route with a line of its own (l, spi__rcu_line) counts itself there,
 * with a plain store of 1 + the slot, and the notice fences every thread
 * before it reads the lines (spi__fence_all, as the RCU writer does). Any
 * other adds 1 to the slot's `opening`, and both sides' counts and loads
 * are sequentially consistent.
 *
 * Whether the replica is still ACTIVE: if so the window is open, closed by
 * spi__slot_open_end once the ticket is published; if not, it is closed. */
static inline int spi__slot_open_begin(spi_rcu_line *l, spi_replica_slot *s,
                                       uint32_t slot) {
  if (l) {
    atomic_store_explicit(&l->opening, slot + 1u, memory_order_relaxed);
    atomic_signal_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&s->state, memory_order_acquire) ==
        SPI_REPLICA_ACTIVE)
      return 1;
    atomic_store_explicit(&l->opening, 0u, memory_order_relaxed);
    return 0;
  }
  atomic_fetch_add_explicit(&s->opening, 1u, memory_order_seq_cst);
  if (atomic_load_explicit(&s->state, memory_order_seq_cst) ==
      SPI_REPLICA_ACTIVE)
    return 1;
  atomic_fetch_sub_explicit(&s->opening, 1u, memory_order_release);
  return 0;
}
/* The ticket opened in the window is published (release: a notice that
 * reads 0 here sees it). */
static inline void spi__slot_open_end(spi_rcu_line *l, spi_replica_slot *s) {
  if (l)
    atomic_store_explicit(&l->opening, 0u, memory_order_release);
  else
    atomic_fetch_sub_explicit(&s->opening, 1u, memory_order_release);
}
/* Wait until no route is between its look at the state of a slot of mine
 * (a bit a slot, SPI_REPLICA_SLOTS bits) and its ticket's publish: the
 * notice's side, after it stored the states (replica.c). One fence for
 * them all. */
void spi__slot_opens_wait(spi_rcu *r, spi_registry *g, const uint64_t *mine);
/* The next name of a models list from *p (before end): where it starts
 * and, in *len, its length, the blanks around it left out; *p moves past
 * it and its comma. */
const char *spi__models_next(const char **p, const char *end, size_t *len);
/* Whether a models list (comma-separated names, "" any) serves model. */
int spi__models_serve(const char *models, size_t models_len,
                      const char *model, size_t len);
/* Whether ident serves model (its models list names it, or is empty). */
int spi__replica_serves(const spi_replica_ident *r, const char *model,
                        size_t len);
/* The load as routing sees it: stale or missing -> saturated. */
typedef struct spi_load_view {
  double running, waiting, kv_usage;
  int fresh;
} spi_load_view;
/* What a stale or missing load signal reads as: more than any replica runs. */
#define SPI_LOAD_SATURATED 1e9
#define SPI_DEFAULT_LOAD_MAX_AGE_MS 1000
/* The age from which a load is stale, in ns: max_age_ns, or the default
 * when it is not positive. Every reader of a load's freshness goes
 * through here, so they agree on it (the pool index's reasoning about
 * when an entry was and stays fresh depends on that). */
static inline int64_t spi__load_max_age(int64_t max_age_ns) {
  return max_age_ns > 0 ? max_age_ns : SPI_DEFAULT_LOAD_MAX_AGE_MS * 1000000ll;
}
/* The words of a replica's slot that a route reads (all in its first
 * cache line but the cost model's), as one read of the slot took them:
 * what routing makes of a replica is made from these alone, so a reading
 * is a function of them, whatever writers do to the slot meanwhile. */
typedef struct spi_slot_words {
  int64_t load_at, advised_until, cooldown_until;
  uint64_t running, waiting, kv;           /* double bits */
  uint64_t queued, served, rate, mean_out; /* rate, mean_out: double bits */
  uint32_t inflight, rate_samples;
  int32_t state, breaker;
} spi_slot_words;

/* The load signal's words of s into w (load_at, running, waiting, kv):
 * load_at first and with acquire, so the load published with it is seen
 * whole; the rest relaxed. */
static inline void spi__load_words_read(const spi_replica_slot *s,
                                        spi_slot_words *w) {
  w->load_at = atomic_load_explicit(&s->load_at_ns, memory_order_acquire);
  w->running = atomic_load_explicit(&s->running, memory_order_relaxed);
  w->waiting = atomic_load_explicit(&s->waiting, memory_order_relaxed);
  w->kv = atomic_load_explicit(&s->kv_usage, memory_order_relaxed);
}

/* Every word of s a route reads into w, each once: the load's first
 * (spi__load_words_read), then the cost model's and the rest, relaxed. */
static inline void spi__slot_words_read(const spi_replica_slot *s,
                                        spi_slot_words *w) {
  spi__load_words_read(s, w);
  w->rate_samples =
      atomic_load_explicit(&s->rate_samples, memory_order_relaxed);
  w->rate = atomic_load_explicit(&s->prefill_rate, memory_order_relaxed);
  w->queued = atomic_load_explicit(&s->prefill_queued, memory_order_relaxed);
  w->served = atomic_load_explicit(&s->served_tokens, memory_order_relaxed);
  w->mean_out = atomic_load_explicit(&s->mean_output, memory_order_relaxed);
  w->inflight = atomic_load_explicit(&s->inflight, memory_order_relaxed);
  w->state = atomic_load_explicit(&s->state, memory_order_relaxed);
  w->breaker = atomic_load_explicit(&s->breaker, memory_order_relaxed);
  w->advised_until =
      atomic_load_explicit(&s->advised_until_ns, memory_order_relaxed);
  w->cooldown_until =
      atomic_load_explicit(&s->cooldown_until_ns, memory_order_relaxed);
}

/* The load as routing sees it at now_ns, from w's load words alone
 * (load_at, running, waiting, kv): the one definition of a stale load.
 * Inline: routing reads every replica's load on every route. */
static inline void spi__load_view_of(const spi_slot_words *w, int64_t now_ns,
                                     int64_t max_age_ns, spi_load_view *out) {
  max_age_ns = spi__load_max_age(max_age_ns);
  int64_t age;
  /* Missing, or older than max_age_ns, is stale. A signal stamped further
   * in the future than it may be old is as suspect as an old one (a clock
   * or unit mix-up): it counts as stale too. Each test is its own branch,
   * the stale case said to be rare: written as one flag, gcc laid the
   * stale case out as the straight path of the routing pass's loop and
   * jumped out of it for every fresh replica. */
  if (__builtin_expect(w->load_at == 0, 0) ||
      __builtin_expect(__builtin_sub_overflow(now_ns, w->load_at, &age), 0) ||
      __builtin_expect(age >= max_age_ns || age <= -max_age_ns, 0)) {
    out->running = out->waiting = SPI_LOAD_SATURATED;
    out->kv_usage = 1.0;
    out->fresh = 0;
    return;
  }
  out->running = spi__bitsd(w->running);
  out->waiting = spi__bitsd(w->waiting);
  out->kv_usage = spi__bitsd(w->kv);
  out->fresh = 1;
}

/* The load of slot s as routing sees it at now_ns (spi__load_view_of). */
static inline void spi__replica_load(const spi_replica_slot *s, int64_t now_ns,
                                     int64_t max_age_ns, spi_load_view *out) {
  spi_slot_words w;
  spi__load_words_read(s, &w);
  spi__load_view_of(&w, now_ns, max_age_ns, out);
}

/* Prometheus text of a vLLM/SGLang /metrics page -> load (metrics_parse.c).
 * On error, err gets "line N: ..." */
int spi__metrics_parse(const char *text, size_t len, spi_load *out, char *err,
                       size_t errcap);
/* The same, also filling report (may be NULL): lines in newer syntax are
 * skipped and counted, and on SPI_OK err says which was the first. */
int spi__metrics_parse_report(const char *text, size_t len, spi_load *out,
                              spi_parse_report *report, char *err,
                              size_t errcap);

/* ----------------------------------------------------------- classifier */

/* The built-in classifier's plan (max_output_tokens, tools_allowed, defer,
 * pressure) at pressure for a request it classified into c (classifier.c);
 * inst is its instance. */
void spi__classifier_plan_at(const void *inst, int32_t pressure,
                             spi_classification *c);

/* ------------------------------------------------------------- breakers */

/* Pool KV-pressure breaker with hysteresis (breaker.c). level: 0 closed,
 * 1 sheds bronze, 2 sheds silver and bronze. Returns the new level. */
int spi__kv_breaker_step(int level, double pressure, const spi_router_cfg *c);
/* Pressure level (enum spi_pressure) for the degrade plan of a pool. */
int32_t spi__pressure_level(double pressure, const spi_router_cfg *c);
/* Both of the above for one pool's reading, in one call (a route asks
 * both for each pool): the new level, and the pressure level in *plevel. */
int spi__kv_breaker_step_level(int level, double pressure,
                               const spi_router_cfg *c, int32_t *plevel);
/* "closed", "shed_bronze", "shed_silver"; "invalid" otherwise. */
const char *spi__kv_level_name(int level);
/* "closed", "open", "half_open" (enum spi_breaker_state); "invalid". */
const char *spi__breaker_state_name(int32_t state);

/* Replica error breaker: whether a new request may go there now; *probe = 1
 * if it would be the half-open probe (claimed only by spi__breaker_claim). */
int spi__breaker_allows(spi_replica_slot *s, int64_t now_ns, int *probe);
int spi__breaker_claim_probe(spi_replica_slot *s);
/* Hand back a claimed probe whose request ended without a verdict (e.g.
 * cancelled), so the half-open breaker can send another one. */
void spi__breaker_release_probe(spi_replica_slot *s);
/* A ticket on the replica ended: ok or error. Returns 1 if it opened. */
int spi__breaker_record(spi_replica_slot *s, int ok, int was_probe,
                        int64_t now_ns, const spi_router_cfg *c);

/* --------------------------------------------------------- prefix index */

typedef struct spi_prefix_index spi_prefix_index;

/* The index keeps only the low 12 bits of a replica's gen: the gen a live
 * callback receives, and the gens spi__index_longest returns, are
 * (gen & SPI_INDEX_GEN_MASK); spi__index_insert masks what it is given. */
#define SPI_INDEX_GEN_MASK 0xfffu

/* Liveness of an entry's (slot, gen): the registry's current gen, masked
 * with SPI_INDEX_GEN_MASK, matches and the replica is ACTIVE. */
typedef int (*spi_index_live_fn)(void *ctx, uint32_t slot, uint32_t gen);

/* The engine's liveness test (route.c): ctx is the spi_engine. */
int spi__entry_live(void *ctx, uint32_t slot, uint32_t gen);

/* memset(p, 0, n) for the structs a route clears (a decision, a view, a
 * context, a choice, a ticket's texts). With a constant size of a hundred
 * bytes or more, gcc inlines a "rep stos", which takes 17-21 ns to start
 * on the AMD EPYC machine docs/performance.md measures on, whatever the
 * size, against 2-4 ns for the C library's memset; a route made six. The
 * size goes through a volatile, so no build (nor link-time optimisation)
 * sees it as a constant. */
static inline void spi__zero(void *p, size_t n) {
  volatile size_t size = n;
  memset(p, 0, size);
}

/* The largest table of 8-entry buckets within byte_budget (including the
 * header). SPI_ERANGE if not even one bucket fits. */
int spi__index_new(const spi_mem *m, size_t byte_budget,
                   spi_prefix_index **out);
void spi__index_free(const spi_mem *m, spi_prefix_index *ix);
size_t spi__index_bytes(const spi_prefix_index *ix);    /* all memory used */
size_t spi__index_capacity(const spi_prefix_index *ix); /* entries */
/* Entries not empty, O(capacity): those being written and those of dead
 * replicas count too (no liveness test is made). */
size_t spi__index_live_entries(const spi_prefix_index *ix);

/*
 * The longest prefix of hashes[0..n) some live replica likely holds, by
 * binary search over the chain (O(log n) bucket probes, not one per block).
 * Writes up to cap (slot, gen) pairs holding the deepest matched block into
 * slots/gens and their count into *n_holders, and sets bit h of *continued
 * (may be NULL) if holder h (h < 64) has that block marked continued
 * (spi__index_mark_continued). Returns the matched length (0..n).
 */
uint32_t spi__index_longest(const spi_prefix_index *ix, const uint64_t *hashes,
                            uint32_t n, spi_index_live_fn live, void *ctx,
                            uint32_t *slots, uint32_t *gens, uint32_t cap,
                            uint32_t *n_holders, uint64_t *continued);
/* Start loading the buckets (tags and payloads) of the first blocks of a
 * chain, up to SPI_INDEX_PREFETCH_MAX, without waiting for them. Called as
 * soon as the hashes are known, so the table's cache misses overlap the
 * routing work that follows instead of adding up inside the binary search
 * and the insert, which read those same buckets. */
#define SPI_INDEX_PREFETCH_MAX 32
void spi__index_prefetch(const spi_prefix_index *ix, const uint64_t *hashes,
                         uint32_t n);
/* Record that (slot, gen) holds blocks hashes[from..n): insert or refresh,
 * evicting the bucket's lowest-value entry (dead first, then by recency plus
 * weight * weight_seconds). O(1) per block. */
void spi__index_insert(spi_prefix_index *ix, const uint64_t *hashes,
                       uint32_t from, uint32_t n, uint32_t slot, uint32_t gen,
                       uint32_t weight, uint32_t now_s, uint32_t weight_seconds,
                       spi_index_live_fn live, void *ctx);
/* Mark (slot, gen)'s entry of block h, if it has one, continued: a request
 * routed there matched the prompt up to h and goes on with blocks of its
 * own. A later request that matches only up to h there is then a branch
 * of a shared prefix (a document, a tenant's prompt) rather than the next
 * turn of the conversation that ended at h. Inserts refresh an entry's
 * stamp and weight and keep the mark; a rewrite of the entry clears it. */
void spi__index_mark_continued(spi_prefix_index *ix, uint64_t h, uint32_t slot,
                               uint32_t gen);

/* ---------------------------------------------------------------- tickets */

#define SPI_TICKET_HASHES 32 /* block hashes kept to refresh on finish */

typedef struct spi_ticket {
  /* A whole number of cache lines (ticket.c starts the table's records on
   * one), so no two records share a line. */
  alignas(64) atomic_ullong id; /* current ticket id; 0 = free */
  atomic_uint readers;       /* scans reading this record (ticket pins) */
  /* Kept from one use of the record to the next (ticket.c): */
  uint64_t uses;             /* times published: its ids' generation */
  uint32_t stripe;           /* the free stack it goes back to */
  atomic_uint below;         /* while free: (index + 1) of the record below
                                it on its stack, 0 = bottom */
  uint32_t slot, gen;        /* replica; gen for the index entries */
  uint32_t incarnation;      /* the slot's replica when the ticket opened */
  uint64_t expected_output;  /* for drain estimates at notice time, and
                                counted in served_tokens until the finish */
  int64_t replay_since_ns;   /* a replay: when the original was cut off */
  int32_t pool, klass, model_tier, probe;
  int64_t start_ns;
  atomic_llong first_token_ns;
  atomic_ullong tokens_streamed;
  uint64_t prompt_tokens_est;
  uint32_t n_hashes, weight;
  /* What the ticket added to its replica's cost-model counters (taken back
   * at first token, or at finish if none came), and the prefill queued
   * ahead of it when it opened (for learning the rate). */
  uint64_t prefill_tokens, ahead_tokens;
  double slowdown;           /* 1 + running / max_inflight at open; 0 unknown */
  uint64_t hashes[SPI_TICKET_HASHES];
  char tenant[SPI_ID_MAX];
  char model[SPI_ID_MAX];
} spi_ticket;

typedef struct spi_ticket_table spi_ticket_table;

int spi__tickets_new(const spi_mem *m, size_t capacity, spi_ticket_table **out);
void spi__tickets_free(const spi_mem *m, spi_ticket_table *t);
size_t spi__tickets_capacity(const spi_ticket_table *t);
size_t spi__tickets_open(const spi_ticket_table *t);
/* The free records on stripe's stack (a record's stripe is k->stripe);
 * exact while no take or release runs meanwhile. */
size_t spi__tickets_free_in(const spi_ticket_table *t, unsigned stripe);
/* Take a free ticket (lock-free); NULL when all are open. The caller fills
 * it and then publishes it with spi__ticket_publish (which assigns the id). */
spi_ticket *spi__ticket_take(spi_ticket_table *t);
/* spi__ticket_take by the thread of number thread_no (spi__thread_no). */
spi_ticket *spi__ticket_take_for(spi_ticket_table *t, uint32_t thread_no);
uint64_t spi__ticket_publish(spi_ticket_table *t, spi_ticket *k);
/* The open ticket with this id, or NULL (stale, finished, never issued). */
spi_ticket *spi__ticket_lookup(spi_ticket_table *t, uint64_t id);
/* Claim the ticket for finishing: exactly one caller wins (others get 0). */
int spi__ticket_claim(spi_ticket_table *t, spi_ticket *k, uint64_t id);
/* The record at index i (0..capacity-1), open or not: for scans at notice
 * time, which read its id atomically and skip free ones. NULL for a record
 * never handed out (records are initialised on first use). */
spi_ticket *spi__ticket_at(spi_ticket_table *t, size_t i);
/* Records at or above this index have never been handed out. */
size_t spi__tickets_high(spi_ticket_table *t);
/* Pin the record at index i for reading while it is open: returns its id, or
 * 0 (then nothing is pinned) when it is free or was never handed out. While
 * pinned, the record's plain fields stay as published: releasing it waits
 * for its pins to end, so the next route cannot reset it under the reader.
 * Readers that are not the ticket's finisher (notice plans) read plain
 * fields only while pinned. */
uint64_t spi__ticket_pin(spi_ticket_table *t, size_t i);
void spi__ticket_unpin(spi_ticket_table *t, size_t i);
/* Pin the open ticket with this id (as spi__ticket_pin): its record, or
 * NULL (nothing pinned) when the id names no open ticket. Stream reports
 * read a ticket's plain fields only while it is pinned like this; a finish
 * that claims it meanwhile waits in its release until the pin ends. */
spi_ticket *spi__ticket_pin_id(spi_ticket_table *t, uint64_t id);
void spi__ticket_unpin_record(spi_ticket_table *t, spi_ticket *k);
/* Make a table that never handed out a ticket hand out none from now on
 * (nothing is left to take), so it can be replaced without losing one.
 * Returns 0 if a ticket was ever taken: the table must stay. */
int spi__tickets_seal(spi_ticket_table *t);
/* Return a claimed ticket to the free list. */
void spi__ticket_release(spi_ticket_table *t, spi_ticket *k);

/* ----------------------------------------------------------------- ledger */

typedef struct spi_ledger spi_ledger;
int spi__ledger_new(const spi_mem *m, size_t max_rows, spi_ledger **out);
void spi__ledger_free(const spi_mem *m, spi_ledger *l);
/* Add one finished ticket (mutex inside). */
void spi__ledger_add(spi_ledger *l, const char *tenant, const char *model,
                     int32_t pool, int32_t klass, int ok,
                     uint64_t prompt_tokens, uint64_t output_tokens,
                     uint64_t cached_tokens, double gpu_seconds, double usd);
/* Interruption accounting for a finished ticket (mutex inside). */
typedef struct spi_ledger_extra {
  int interrupted;
  uint64_t wasted_output_tokens, reprefilled_tokens;
  double wasted_usd;
  int replay;
  double replay_latency_ms, fallback_on_demand_seconds;
} spi_ledger_extra;
void spi__ledger_add_extra(spi_ledger *l, const char *tenant, const char *model,
                           int32_t pool, int32_t klass,
                           const spi_ledger_extra *x);
size_t spi__ledger_count(spi_ledger *l);
size_t spi__ledger_max_rows(const spi_ledger *l);
/* One row's key and totals, as the ledger keeps them. */
typedef struct spi_ledger_totals {
  char tenant[SPI_ID_MAX];
  char model[SPI_ID_MAX];
  int32_t pool, klass;
  uint64_t completed, failed;
  uint64_t prompt_tokens, output_tokens, cached_tokens;
  double gpu_seconds, usd;
  uint64_t interrupted, wasted_output_tokens, reprefilled_tokens, replays;
  double wasted_usd, replay_latency_ms, fallback_on_demand_seconds;
} spi_ledger_totals;
/* A copy of row index (mutex inside); SPI_ENOTFOUND past the last row. */
int spi__ledger_totals_at(spi_ledger *l, size_t index, spi_ledger_totals *out);
/* Row index as the public read-back shows it (readout.c). */
int spi__ledger_row(spi_ledger *l, size_t index, spi_ledger_row *out);

/* ---------------------------------------------------------------- metrics */

#define SPI_REASON_COUNT 11
#define SPI_TTFT_BUCKETS 14

typedef struct spi_metrics spi_metrics;
int spi__metrics_new(const spi_mem *m, size_t max_families, spi_metrics **out);
void spi__metrics_free(const spi_mem *m, spi_metrics *x);
size_t spi__metrics_max_families(const spi_metrics *x);
int spi__metrics_untouched(const spi_metrics *x);
/* Counters (atomic, callable from any thread). */
void spi__metrics_decision(spi_metrics *x, int32_t pool, int32_t klass,
                           int32_t reason, uint64_t family,
                           uint32_t matched_blocks, uint32_t total_blocks);
void spi__metrics_shed(spi_metrics *x, int32_t klass);
void spi__metrics_breaker_open(spi_metrics *x);
void spi__metrics_ttft(spi_metrics *x, int32_t klass, double ttft_ms);
void spi__metrics_queue_delta(spi_metrics *x, int32_t klass, int delta);
/* A request routed to a replica, on the thread of number thread_no
 * (spi__thread_no): spi__metrics_decision and a queue delta of +1. */
void spi__metrics_routed_for(spi_metrics *x, uint32_t thread_no, int32_t pool,
                             int32_t klass, int32_t reason, uint64_t family,
                             uint32_t matched_blocks, uint32_t total_blocks);
void spi__metrics_draft(spi_metrics *x, int accepted);
void spi__metrics_shadow(spi_metrics *x, int agreed, uint32_t matched_blocks);
void spi__metrics_node_transition(spi_metrics *x, int32_t from, int32_t to);
/* Count lines of a /metrics page skipped as newer syntax. */
void spi__metrics_lines_skipped(spi_metrics *x, uint64_t n);
/* A route that found the pool index held and waited for it: took it or
 * not; a route that read every replica's slot instead of the index. */
void spi__metrics_index_wait(spi_metrics *x, int took);
void spi__metrics_slot_pass(spi_metrics *x);
/* A replay queue's fallback journal (replay_shared.c): held_delta changes
 * the gauge of envelopes held, the counters grow by enqueued and moved. */
void spi__metrics_replay_fallback(spi_metrics *x, int64_t held_delta,
                                  uint64_t enqueued, uint64_t moved);
/* Read-outs (readout.c). The p95 TTFT of a class from its histogram (0 if
 * no sample). */
double spi__metrics_p95_ttft(spi_metrics *x, int32_t klass);
double spi__metrics_queue_depth(spi_metrics *x, int32_t klass);
double spi__metrics_cache_miss_rate(spi_metrics *x);
/* Prefix blocks of routed requests, all families: the entries' sums (an
 * O(families) read; the routes add to one family's counters only), with
 * matched never above total. */
void spi__metrics_blocks(const spi_metrics *x, uint64_t *matched,
                         uint64_t *total);
double spi__metrics_draft_acceptance(spi_metrics *x);
void spi__metrics_signals(spi_metrics *x, spi_signals *s);
/* Render everything, plus the per-replica gauges passed in, as Prometheus
 * text into out (readout_text.c). */
typedef struct spi_replica_gauge {
  const char *id;
  int32_t pool, state, breaker;
  uint32_t inflight;
  double kv_usage;
} spi_replica_gauge;
int spi__metrics_render(spi_metrics *x, const spi_replica_gauge *g, size_t ng,
                        const spi_signals *sig, spi_buf *out,
                        const spi_mem *m);

#endif /* SPI_ROUTING_H */
