/*
 * replay_ds.h - the two containers the replay queue is made of (replay.c,
 * replay_shared.c): an intrusive chained hash table and an intrusive
 * binary min-heap. Both keep pointers to nodes embedded in the caller's
 * structs, so insert and remove never allocate (the table only when it
 * grows: a failed growth leaves the chains longer, never loses a node).
 * Not thread-safe; nothing here is exported.
 */
#ifndef SPI_REPLAY_DS_H
#define SPI_REPLAY_DS_H

#include <stddef.h>
#include <stdint.h>

#include "spi_internal.h"

/* The struct holding member m at address p. */
#define SPI_CONTAINER(p, T, m) ((T *)(void *)((char *)(p) - offsetof(T, m)))

/* ------------------------------------------------------------ hash table */

typedef struct spi_hnode {
  struct spi_hnode *next;
  uint64_t hash;
} spi_hnode;

typedef struct spi_htab {
  spi_hnode **b;
  size_t mask, n;
} spi_htab;

/* An empty table of cap buckets (a power of two). SPI_ENOMEM. */
int spi__htab_init(spi_htab *t, const spi_mem *m, size_t cap);
void spi__htab_free(spi_htab *t, const spi_mem *m);
/* Add node under hash; doubles the buckets when fuller than one node per
 * bucket. */
void spi__htab_insert(spi_htab *t, const spi_mem *m, spi_hnode *node,
                      uint64_t hash);
/* Take node out; 0 when it was not there. */
int spi__htab_remove(spi_htab *t, spi_hnode *node);
/* The nodes of hash: for (n = spi__htab_first(t, h); n; n =
 * spi__htab_next(n, h)). */
spi_hnode *spi__htab_first(const spi_htab *t, uint64_t hash);
spi_hnode *spi__htab_next(const spi_hnode *node, uint64_t hash);
/* Every node, for freeing: fn may free the node it gets. */
void spi__htab_each(spi_htab *t, void (*fn)(spi_hnode *node, void *ud),
                    void *ud);

/* ---------------------------------------------------------------- heap */

typedef struct spi_hpnode {
  int64_t key;
  size_t idx; /* in the heap, or SIZE_MAX */
} spi_hpnode;

typedef struct spi_heap {
  spi_hpnode **a;
  size_t len, cap;
} spi_heap;

/* Room for n nodes in all (push never allocates). SPI_ENOMEM. */
int spi__heap_reserve(spi_heap *h, const spi_mem *m, size_t n);
void spi__heap_free(spi_heap *h, const spi_mem *m);
/* Push (room reserved); node->key set by the caller. */
void spi__heap_push(spi_heap *h, spi_hpnode *node);
void spi__heap_remove(spi_heap *h, spi_hpnode *node);
/* The smallest key's node, or NULL. */
static inline spi_hpnode *spi__heap_top(const spi_heap *h) {
  return h->len ? h->a[0] : NULL;
}

#endif /* SPI_REPLAY_DS_H */
