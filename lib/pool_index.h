/*
 * pool_index.h - what the routing pass needs of every replica, kept as the
 * replicas change instead of read from every slot on every route
 * (pool_index.c has the design).
 *
 * Internal; replica_pass.c reads it, under spi__pix_acquire.
 */
#ifndef SPI_POOL_INDEX_H
#define SPI_POOL_INDEX_H

#include "replica_pass.h"


/* What the index knows of the replica at a position of the set. */
enum {
  PIX_OFF = 0, /* not ACTIVE: in no sum and no summary */
  PIX_REG = 1, /* regular: usable by any request, as it is until `until`
                  (its load going stale), its load fresh or stale for
                  good (read as saturated, out of the KV sums) */
  PIX_EXC = 2, /* anything else ACTIVE: read whole by every route */
  PIX_ASIDE = 3, /* ACTIVE, usable by no request the index serves (its
                    spot pool cooling down, its breaker open and cooling
                    down or half-open with its probe out, or serving none
                    of the models of the index's list): in the KV sums
                    while its load is fresh; as it is from `from` until
                    `until` (a cooldown's end, or its load's freshness
                    changing) or, for a probe, until its slot's next
                    write, then read whole again */
  PIX_ADV = 4 /* regular but for its machine's rebalance advice: usable by
                 a request that is not long only, at a TTFT higher by
                 router.advised_penalty_ms. Kept as a regular entry is
                 (hot, cold, ev_at), but in no block, order or sum but the
                 KV ones, as one set aside is; a route that may use it
                 offers it from what is kept (indexed_advised). As it is
                 until `until`: the advice lapsing, or its load's
                 freshness changing */
};

/* A regular replica as every route reads it: its TTFT for a request of c
 * uncached tokens is (ttft_base_ms + wait_ms) + (c * ms_tok) * slow, the
 * same operations in the same order as the TTFT model's. */
typedef struct pix_hot {
  double wait_ms, ms_tok, slow; /* slow: 1 + running / max_inflight */
  double rel;                   /* relative load */
  double srv;                   /* tokens served per stream (served_ratio) */
  uint64_t id_hash;
  int32_t cell;
  uint8_t kind, busy;
} pix_hot;

/* The rest of its evaluation, read when a summary takes it, and the
 * counters its wait was made from (queued, mean_out: entry_read finds a
 * slot that changed in tokens served alone). */
typedef struct pix_cold {
  double running, waiting, kv, rate;
  double queued, mean_out;
  uint64_t served;
  uint64_t wait_fix;            /* spi__wait_fix */
  int64_t until;                /* its load stale from then on: read
                                   again then (INT64_MAX: stale already) */
  int64_t from;                 /* regular since (regular_from;
                                   PIX_ASIDE: load_window's; PIX_ADV:
                                   cooled_from) */
  uint32_t inflight;
  int32_t pool;
  uint32_t max_inflight;
  /* The slot's words the entry was read from (its values are made from
   * these alone, slot_reading, so a slot whose words read the same again,
   * tokens served aside, gives the same values), and whether the entry is
   * regular exactly while from <= now < until as long as they stay
   * (neither bound saturated: entry_steady). */
  int steady;
  int fresh;                    /* its load fresh: kv in the sums */
  spi_slot_words raw;
} pix_cold;

/* The regular replicas of one cell among 64 positions (a word of the
 * bitmaps): the least of each part of their TTFT, so that
 * (ttft_base_ms + wait_ms) + (c * ms_tok) * slow is at most any of
 * theirs (floating-point addition and multiplication are monotonic), with
 * how many of them hold it (idle replicas tie at a wait of 0 and a
 * slowdown of 1: one of them taking work leaves the least where it is),
 * and the least loaded (least_before: relative load, tokens served per
 * stream, position) with its position. */
typedef struct pix_block {
  double wait_ms, ms_tok, slow, rel, srv; /* rel, srv: the least loaded's */
  uint32_t rel_pos, n;
  uint32_t n_wait_ms, n_ms_tok, n_slow; /* members at each least value */
} pix_block;

/* The rendezvous order of one prefix: per cell, the PIX_RDV_TOP replicas
 * of highest weight (then lowest position) among all of the cell's, of the
 * set with that version. The winner among the regular replicas that are
 * not busy is the first of them that is one; when none is, the deeper
 * order (pix_deep), and when that has none either, the cell is weighed
 * whole (spi__pix_free_best). */
#define PIX_RDV_TOP 4
#define PIX_RDV_SETS 64 /* of PIX_RDV_WAYS prefixes each */
#define PIX_RDV_WAYS 4
typedef struct pix_rdv {
  uint64_t rkey, version;
  uint16_t pos[SPI_SUMMARY_CELLS][PIX_RDV_TOP];
  uint8_t n[SPI_SUMMARY_CELLS];
} pix_rdv;

/* What was asked for once, to make something only when it is asked for
 * again: tags (nonzero) in sets of PIX_SEEN_WAYS, each set replacing its
 * ways in turn. A few tags that meet in one set still take turns in its
 * ways rather than push each other out at once. */
#define PIX_SEEN_SETS 64
#define PIX_SEEN_WAYS 4
typedef struct pix_seen {
  uint64_t tag[PIX_SEEN_SETS][PIX_SEEN_WAYS];
  uint8_t next[PIX_SEEN_SETS];
} pix_seen;

/* A prefix's rendezvous order deeper than pix_rdv's, made for a cell when
 * every replica of the kept order is busy or not regular. A popular
 * prefix's first replicas are the ones its cold traffic loads, so they are
 * often busy all at once, and the winner would otherwise be weighed one
 * by one over the whole cell on every such route. */
#define PIX_DEEP_TOP 32
#define PIX_DEEP_WAYS 8
_Static_assert(PIX_DEEP_TOP > PIX_RDV_TOP && PIX_DEEP_TOP <= 255,
               "the deep order extends the kept one; its length fits a byte");
typedef struct pix_deep {
  uint64_t rkey, version;
  uint8_t made; /* cells whose order is made, a bit each */
  uint8_t n[SPI_SUMMARY_CELLS];
  uint16_t pos[SPI_SUMMARY_CELLS][PIX_DEEP_TOP];
} pix_deep;

/* Every configuration value an entry's reading depends on (entry_read:
 * the wait behind reported queues, the default prefill and decode rates,
 * the age from which a load is stale). A value the entries do not keep,
 * read by the route itself (ttft_base_ms, say), is not here. */
typedef struct pix_config {
  double per_queued_ms;  /* router.ttft_per_queued_ms */
  double default_rate;   /* router.prefill_tokens_per_s */
  double decode_rate;    /* router.decode_tokens_per_s (a slot's wait) */
  int64_t max_age;       /* router.load_max_age_ms, in ns */
} pix_config;

_Static_assert(SPI_SUMMARY_CELLS <= 8, "a byte holds a bit a cell");
typedef struct spi_pool_index {
  atomic_int taken;             /* held by the one route using it */
  atomic_uint turn;             /* routes that have taken it, this one too */
  atomic_uint stuck;            /* a turn a route waited out: its holder is
                                   not running (descheduled), so no route
                                   waits for it again (spi__pix_take) */
  atomic_uint holder;           /* the thread that took it last
                                   (spi__thread_no), which takes the same
                                   lane again (scan_indexed) */
  _Atomic(spi_metrics *) *counts; /* where the waits are counted (the
                                   engine's metrics), or NULL */
  int wide;                     /* the CPU has AVX-512 F and DQ (rdv_wide.c) */
  int avx2;                     /* ... or AVX2, for a block's TTFTs and
                                   the rendezvous order (pix_avx2.c) */
  uint64_t version;             /* the set described (0: none yet) */
  size_t n;                     /* its replicas */
  pix_config read_with;          /* the configuration its entries were read
                                   with (a change rebuilds it) */
  uint64_t read_seq;            /* a snapshot found to hold read_with (0:
                                   none): its routes compare no values */
  int64_t reg_from;             /* every regular entry has been regular
                                   since then (regular_from); a route
                                   earlier than it rebuilds the index */
  int64_t min_until;            /* no regular entry is stale, and none
                                   set aside due, before this */
  uint64_t rebuilds;            /* from every slot, since made (tests) */
  /* Marks of slots written since this index last read them, handed on by
   * another index that took them from the registry (marks_take): read as
   * the registry's are. Only while the registry has model indexes. */
  atomic_ullong pending[SPI_REPLICA_SLOTS / 64];
  /* The regular replicas' share of what the pass adds up. */
  uint32_t usable[SPI_SUMMARY_CELLS];
  int64_t kv_fix[4];
  uint32_t kv_n[4];
  uint64_t served[4];
  uint64_t streams[4];          /* max_inflight */
  uint64_t wait_fix[SPI_SUMMARY_CELLS];
  uint64_t reg[SPI_REPLICA_SLOTS / 64]; /* positions, by kind */
  uint64_t exc[SPI_REPLICA_SLOTS / 64];
  uint64_t aside[SPI_REPLICA_SLOTS / 64];
  uint64_t adv[SPI_REPLICA_SLOTS / 64];
  uint32_t adv_n;               /* positions in adv */
  /* The advised replicas' share of what the pass adds up, but KV (in the
   * sums above), for a request that may use them. */
  uint32_t adv_usable[SPI_SUMMARY_CELLS];
  uint64_t adv_served[4];
  uint64_t adv_streams[4];
  uint64_t adv_wait_fix[SPI_SUMMARY_CELLS];
  uint64_t creg[SPI_SUMMARY_CELLS][SPI_REPLICA_SLOTS / 64]; /* reg, by cell */
  uint64_t cfree[SPI_SUMMARY_CELLS][SPI_REPLICA_SLOTS / 64]; /* ... not busy */
  uint64_t blk_dirty[SPI_SUMMARY_CELLS]; /* blocks to sum up again */
  uint64_t lst_dirty[SPI_SUMMARY_CELLS]; /* blocks whose least loaded alone
                                            is to be found again */
  pix_block blk[SPI_SUMMARY_CELLS][SPI_REPLICA_SLOTS / 64];
  pix_rdv rdv[PIX_RDV_SETS][PIX_RDV_WAYS];
  uint8_t rdv_next[PIX_RDV_SETS]; /* the way a miss replaces next */
  pix_seen rdv_seen;             /* prefixes asked for once (rdv_tag) */
  pix_deep deep[PIX_DEEP_WAYS];
  uint8_t deep_next;            /* the one a miss replaces next */
  uint8_t fix_cells;            /* cells with a bit set in blk_dirty or
                                   lst_dirty, a bit each: most syncs find
                                   none (in deep_next's padding) */
  pix_seen deep_seen;           /* ... a deep order (deep_tag) */
  uint64_t tdone;               /* blocks whose t_now the route has made */
  pix_hot hot[SPI_REPLICA_SLOTS];
  pix_cold cold[SPI_REPLICA_SLOTS];
  /* hot's TTFT parts again, position after position, so that a block's
   * TTFTs are computed in one straight loop (written for every position
   * the index reads, regular or not: 0 when not), and the TTFTs the route
   * holding the index computed from them (blocks in tdone). */
  double t_wait[SPI_REPLICA_SLOTS], t_ms_tok[SPI_REPLICA_SLOTS],
      t_slow[SPI_REPLICA_SLOTS];
  double t_now[SPI_REPLICA_SLOTS];
  /* hot's rel and srv again, position after position (written where the
   * position is regular), for finding a block's least loaded again. */
  double t_rel[SPI_REPLICA_SLOTS], t_srv[SPI_REPLICA_SLOTS];
  /* A regular position's evaluation as a route takes it into its arena
   * (written with its entry, entry_eval): all of it but the TTFT and the
   * rendezvous weight, which are the request's. */
  replica_eval ev_at[SPI_REPLICA_SLOTS];
  /* Every position's id hash and cell (of the set described, whatever its
   * state), in a row: the rendezvous order weighs them all. Positions from
   * n up to the next multiple of 8 hold 0 and -1 (no cell), so a loop may
   * read eight at a time. */
  uint64_t id_hash_at[SPI_REPLICA_SLOTS];
  int8_t cell_at[SPI_REPLICA_SLOTS];
  /* The registry's dirty words holding the set's slots, a bit each (after
   * the arrays above, so that they keep their alignment). */
  uint64_t slot_words;
  /* The models list every regular replica serves each model of (as
   * chosen for the set: spi__pix_models_choose; "" when no replica has
   * one), the positions that do, which alone may be regular, and those
   * that serve none of its models (set aside; other_any: there are
   * some). A request for a model it does not name, or for none while some
   * replica serves other models, is routed by a pass over the slots
   * (spi__pix_serves). Set by every rebuild, which every index has before
   * its first route; after the arrays above, which the routes' passes
   * read, and not cleared when the index is made. */
  uint32_t models_len;
  char models[sizeof ((spi_replica_ident *)0)->models];
  uint64_t serves[SPI_REPLICA_SLOTS / 64];
  uint64_t other[SPI_REPLICA_SLOTS / 64];
  int other_any;
  /* An index of one model (spi__pix_for_model): the model, written
   * before named and model_key are set, and rewritten only while the
   * index is taken (pix_rename), so read only then; routes find the index
   * by model_key (0: none). Its models list is the model's name alone. The
   * registry's first index has none and chooses its list from the set. */
  atomic_int named;
  _Atomic uint64_t model_key;
  uint32_t model_len;
  char model[SPI_PIX_MODEL_MAX];
} spi_pool_index;

/* Whether every regular replica serves the model named model[0..len)
 * (spi__replica_serves): a request for one it does not cannot use the
 * index's summaries. */
int spi__pix_serves(const spi_pool_index *p, const char *model, size_t len);

/* The registry's index for requests for the model named model[0..len),
 * taking one of its model indexes for it when none has it yet and a
 * replica of set serves it (with every one taken, one whose model no
 * replica lists any more); NULL when none can (each taken for a model
 * still listed, no model named, a name longer than SPI_PIX_MODEL_MAX).
 * Found by a key of the name: the caller checks, once it has taken the
 * index, that it is still that model's (spi__pix_names). */
spi_pool_index *spi__pix_for_model(spi_registry *g, const spi_replica_set *set,
                                   const char *model, size_t len);
/* Whether model index q, taken, is the one for model[0..len). */
int spi__pix_names(const spi_pool_index *q, const char *model, size_t len);
/* The models list index p (taken, being rebuilt) serves for set: a model
 * index's own model, else the list the most replicas serve every model
 * of; and which positions serve all of it (p->serves: they alone may be
 * regular) and which none (p->other: set aside). pool_models.c. */
void spi__pix_models_choose(spi_pool_index *p, const spi_replica_set *set);

/* As a replica's models list (models[0..len)) is registered, under the
 * registry's lock: a model index made for each name no list named before,
 * up to SPI_PIX_MODELS in all. One that cannot be made (out of memory) is
 * not: requests for the models it would have served read every slot. */
void spi__pix_models_make(spi_registry *g, const spi_mem *m,
                          const char *models, size_t len);

/* Which builds index p weighs and ranks with on this CPU (p->wide,
 * p->avx2; pool_rdv.c). */
void spi__pix_builds(spi_pool_index *p);

/* Made with the registry (replica.c), freed with it; model indexes
 * (spi__pix_models_make) too. */
spi_pool_index *spi__pix_new(const spi_mem *m);
void spi__pix_free(const spi_mem *m, spi_pool_index *p);

/* Take the index for one route without waiting: 0 when another route has
 * it. */
static inline int spi__pix_acquire(spi_pool_index *p) {
  int expect = 0;
  if (atomic_load_explicit(&p->taken, memory_order_relaxed) != 0 ||
      !atomic_compare_exchange_strong_explicit(&p->taken, &expect, 1,
                                               memory_order_acquire,
                                               memory_order_relaxed))
    return 0;
  /* Only the holder writes turn: a load and a store, on the line the
   * exchange just took. */
  atomic_store_explicit(
      &p->turn, atomic_load_explicit(&p->turn, memory_order_relaxed) + 1,
      memory_order_relaxed);
  return 1;
}

/* One turn of a spin-wait: the CPU's hint that this is one, where it has
 * one (it also yields the core's pipeline to its other hardware thread). */
static inline void spi__spin_turn(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield" ::: "memory");
#else
  atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* How many lanes of the registry's first index are open (acquire: a
 * lane counted is one its opener's marks hand on to). */
static inline unsigned spi__pix_lanes(spi_registry *g) {
  return atomic_load_explicit(&g->pix_lanes, memory_order_acquire) & 0xffu;
}
/* A route found every open lane taken: ask for all of them to be opened
 * (the first lane's holder opens them, spi__pix_sync). */
static inline void spi__pix_lanes_ask(spi_registry *g) {
  atomic_fetch_or_explicit(&g->pix_lanes, (unsigned)SPI_PIX_LANES << 8,
                           memory_order_relaxed);
}

/* The wait of spi__pix_take, once the index was found taken. */
int spi__pix_wait(spi_pool_index *p, size_t turns);

/* Take the index for one route, waiting up to turns turns of a spin-wait
 * for the route that has it to give it back: 0 when it is still taken
 * (this route then reads every slot instead). A route runs through the
 * index in a microsecond or so, so one that keeps it for a whole wait is
 * not running (its thread was descheduled, as happens with more routing
 * threads than CPUs): its turn is marked stuck, and later routes do not
 * wait for it, only for the routes after it. */
static inline int spi__pix_take(spi_pool_index *p, size_t turns) {
  return spi__pix_acquire(p) || spi__pix_wait(p, turns);
}
static inline void spi__pix_release(spi_pool_index *p) {
  atomic_store_explicit(&p->taken, 0, memory_order_release);
}

/* With the index taken: bring it up to date with set at x->now (the slots
 * marked since, a newer set or configuration, regular entries gone stale),
 * for a route whose request excludes the replicas of x->excl (when not
 * NULL) with each regular one of them set aside (its KV usage still in
 * the sums, as a pass adds up an excluded replica's), so that the index
 * ranks only what the request may use. Their slots are marked again: the
 * next sync reads them whole, and they are regular again for the routes
 * after. 0 when it cannot describe set (an older set than it last
 * described). */
int spi__pix_sync(spi_pool_index *p, const route_env *x,
                  const spi_replica_set *set);
/* With the index taken: whether every block's bounds are what a pass over
 * its regular replicas makes (for tests). */
int spi__pix_blocks_exact(spi_pool_index *p);
/* With the index taken and synced: the rendezvous order of x->rkey over
 * set, made now if it is not kept; NULL the first time the prefix and set
 * ask for it (most prefixes are seen once, and making an order costs
 * several times finding one cell's winner: spi__pix_free_best). */
const pix_rdv *spi__pix_rdv(spi_pool_index *p, const route_env *x,
                            const spi_replica_set *set);
/* The rendezvous winner for rkey among the regular replicas that are not
 * busy (cfree) of each cell k whose bit is set in cells: out[k], the
 * heaviest, the lower position on a tie; UINT32_MAX when the cell has
 * none. The other entries of out are left as they are. Wide when the CPU
 * allows (p->wide, p->avx2), where a position is weighed once for two
 * cells: a route that places a new prefix wants the winner of each pool. */
void spi__pix_free_best(const spi_pool_index *p, unsigned cells,
                        uint64_t rkey, uint32_t out[SPI_SUMMARY_CELLS]);
/* ... one by one (pool_index.c); and for cells ka and kb (kb < 0: ka
 * alone) with AVX-512 (rdv_wide.c) and with AVX2 (pix_avx2.c): the same
 * answer. */
void spi__pix_free_best_each(const spi_pool_index *p, unsigned cells,
                             uint64_t rkey, uint32_t out[SPI_SUMMARY_CELLS]);
void spi__pix_free_best2_avx512(const spi_pool_index *p, int ka, int kb,
                                uint64_t rkey, uint32_t out[SPI_SUMMARY_CELLS]);
void spi__pix_free_best2_avx2(const spi_pool_index *p, int ka, int kb,
                              uint64_t rkey, uint32_t out[SPI_SUMMARY_CELLS]);
/* With the index taken and synced: the first PIX_DEEP_TOP replicas (fewer
 * when the cell has fewer) of cell k in x->rkey's rendezvous order over
 * set, made now if they are not kept; NULL the first time the prefix,
 * set and cell need them, so that a prefix that needs them once (most
 * prefixes are seen once) does not pay for making them. Their first
 * PIX_RDV_TOP are spi__pix_rdv's. */
const pix_deep *spi__pix_deep(spi_pool_index *p, const route_env *x,
                              const spi_replica_set *set, int k);
/* Rendezvous order in the making: each cell's weights, best first. */
typedef struct pix_rdv_acc {
  uint64_t wt[SPI_SUMMARY_CELLS][PIX_RDV_TOP];
} pix_rdv_acc;
/* Offer the replica at position i of cell k, of weight w, to o's order. */
void spi__pix_rdv_offer(pix_rdv *o, pix_rdv_acc *a, int k, uint64_t w,
                        uint32_t i);
/* The same order made with AVX-512 (rdv_wide.c; callers check the CPU):
 * every position of p weighed eight at a time, and only those that may
 * enter offered. */
void spi__pix_rdv_avx512(pix_rdv *o, pix_rdv_acc *a, const spi_pool_index *p,
                         uint64_t rkey);
/* ... with AVX2, four at a time (pix_avx2.c; callers check p->avx2). */
void spi__pix_rdv_avx2(pix_rdv *o, pix_rdv_acc *a, const spi_pool_index *p,
                       uint64_t rkey);
/* ... one by one, every position offered (pool_index.c). */
void spi__pix_rdv_each(pix_rdv *o, pix_rdv_acc *a, const spi_pool_index *p,
                       uint64_t rkey);

/* One TTFT of the index's values: (base + wait) + (cold * ms) * slow, in
 * this order (floating point does not reassociate), so that every loop and
 * build, scalar or wide, comes to the same bits as indexed_t. */
static inline double spi__pix_ttft(double base, double wait, double cold,
                                   double ms, double slow) {
  return (base + wait) + (cold * ms) * slow;
}

/* A block's TTFTs from position i on, and the mask of those at most thr
 * (false for a NaN), a position at a time: the scalar loops, and the wide
 * builds' tails. */
static inline void spi__pix_ttft_from(size_t i, double *t, const double *wait,
                                      const double *ms, const double *slow,
                                      size_t n, double base, double cold) {
  for (; i < n; i++) t[i] = spi__pix_ttft(base, wait[i], cold, ms[i], slow[i]);
}
static inline uint64_t spi__pix_under_from(size_t i, const double *t, size_t n,
                                           double thr) {
  uint64_t m = 0;
  for (; i < n; i++) m |= (uint64_t)(t[i] <= thr) << i;
  return m;
}

/* A block's TTFTs for i < n and the mask of those at most thr, with
 * AVX-512 (rdv_wide.c; callers check p->wide): the same bits as the
 * scalar loops. */
void spi__pix_ttft_avx512(double *t, const double *wait, const double *ms,
                          const double *slow, size_t n, double base,
                          double cold);
uint64_t spi__pix_under_avx512(const double *t, size_t n, double thr);
/* The same two with AVX2 (pix_avx2.c; callers check p->avx2). */
void spi__pix_ttft_avx2(double *t, const double *wait, const double *ms,
                        const double *slow, size_t n, double base, double cold);
uint64_t spi__pix_under_avx2(const double *t, size_t n, double thr);
/* ... and both in one pass (the TTFTs stored, their mask returned): a
 * block read for its tops is one whose TTFTs were not made yet. */
uint64_t spi__pix_ttft_under_avx2(double *t, const double *wait,
                                  const double *ms, const double *slow,
                                  size_t n, double base, double cold,
                                  double thr);

/* The rendezvous weight of a replica for a prefix key. */
static inline uint64_t spi__rdv_weight(uint64_t id_hash, uint64_t rkey) {
  uint64_t v = id_hash ^ rkey; /* splitmix64's finaliser */
  v ^= v >> 30;
  v *= 0xbf58476d1ce4e5b9ULL;
  v ^= v >> 27;
  v *= 0x94d049bb133111ebULL;
  v ^= v >> 31;
  return v;
}

#endif /* SPI_POOL_INDEX_H */
