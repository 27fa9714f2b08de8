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
  PIX_REG = 1, /* regular: usable by any request until `until` */
  PIX_EXC = 2  /* anything else ACTIVE: read whole by every route */
};

/* A regular replica as every route reads it: its TTFT for a request of c
 * uncached tokens is (ttft_base_ms + wait_ms) + (c * ms_tok) * slow, the
 * same operations in the same order as the TTFT model's. */
typedef struct pix_hot {
  double wait_ms, ms_tok, slow; /* slow: 1 + running / max_inflight */
  double rel;                   /* relative load */
  uint64_t id_hash;
  int32_t cell;
  uint8_t kind, busy;
} pix_hot;

/* The rest of its evaluation, read when a summary takes it. */
typedef struct pix_cold {
  double running, waiting, kv, rate;
  uint64_t served;
  int64_t until;                /* stale from then on: regular no longer */
  uint32_t inflight;
  int32_t pool;
} pix_cold;

typedef struct spi_pool_index {
  atomic_int taken;             /* held by the one route using it */
  uint64_t version;             /* the set described (0: none yet) */
  size_t n;                     /* its replicas */
  /* The configuration it was read with (a change rebuilds it). */
  double per_queued_ms, default_rate;
  int64_t max_age;
  int64_t max_t;                /* the latest time an entry was read at */
  int64_t min_until;            /* no regular entry is stale before this */
  /* The regular replicas' share of what the pass adds up. */
  uint32_t usable[SPI_SUMMARY_CELLS];
  int64_t kv_fix[4];
  uint32_t kv_n[4];
  uint64_t served[4];
  uint64_t reg[SPI_REPLICA_SLOTS / 64]; /* positions, by kind */
  uint64_t exc[SPI_REPLICA_SLOTS / 64];
  pix_hot hot[SPI_REPLICA_SLOTS];
  pix_cold cold[SPI_REPLICA_SLOTS];
} spi_pool_index;

/* Made with the registry (replica.c), freed with it. */
spi_pool_index *spi__pix_new(const spi_mem *m);
void spi__pix_free(const spi_mem *m, spi_pool_index *p);

/* Take the index for one route without waiting: 0 when another route has
 * it (that route then reads every slot instead). */
static inline int spi__pix_acquire(spi_pool_index *p) {
  int expect = 0;
  return atomic_load_explicit(&p->taken, memory_order_relaxed) == 0 &&
         atomic_compare_exchange_strong_explicit(&p->taken, &expect, 1,
                                                 memory_order_acquire,
                                                 memory_order_relaxed);
}
static inline void spi__pix_release(spi_pool_index *p) {
  atomic_store_explicit(&p->taken, 0, memory_order_release);
}

/* With the index taken: bring it up to date with set at x->now (the slots
 * marked since, a newer set or configuration, regular entries gone stale).
 * 0 when it cannot describe set (an older set than it last described). */
int spi__pix_sync(spi_pool_index *p, const route_env *x,
                  const spi_replica_set *set);

#endif /* SPI_POOL_INDEX_H */
