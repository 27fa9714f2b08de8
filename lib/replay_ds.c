/*
 * replay_ds.c - an intrusive chained hash table and binary min-heap for the
 * replay queue (replay_ds.h).
 */
#include <string.h>

#include "replay_ds.h"

/* ------------------------------------------------------------ hash table */

int spi__htab_init(spi_htab *t, const spi_mem *m, size_t cap) {
  t->b = spi__calloc(m, cap, sizeof *t->b);
  t->mask = cap - 1;
  t->n = 0;
  return t->b ? SPI_OK : SPI_ENOMEM;
}

void spi__htab_free(spi_htab *t, const spi_mem *m) {
  spi__free(m, t->b);
  t->b = NULL;
  t->n = 0;
}

static void grow(spi_htab *t, const spi_mem *m) {
  size_t ncap = (t->mask + 1) * 2;
  spi_hnode **nb = spi__calloc(m, ncap, sizeof *nb);
  if (!nb) return; /* the chains only get longer */
  for (size_t i = 0; i <= t->mask; i++)
    for (spi_hnode *x = t->b[i], *nx; x; x = nx) {
      nx = x->next;
      size_t s = x->hash & (ncap - 1);
      x->next = nb[s];
      nb[s] = x;
    }
  spi__free(m, t->b);
  t->b = nb;
  t->mask = ncap - 1;
}

void spi__htab_insert(spi_htab *t, const spi_mem *m, spi_hnode *node,
                      uint64_t hash) {
  t->n++;
  if (t->n > t->mask + 1) grow(t, m);
  node->hash = hash;
  size_t s = hash & t->mask;
  node->next = t->b[s];
  t->b[s] = node;
}

int spi__htab_remove(spi_htab *t, spi_hnode *node) {
  for (spi_hnode **p = &t->b[node->hash & t->mask]; *p; p = &(*p)->next)
    if (*p == node) {
      *p = node->next;
      node->next = NULL;
      t->n--;
      return 1;
    }
  return 0;
}

spi_hnode *spi__htab_first(const spi_htab *t, uint64_t hash) {
  spi_hnode *x = t->b[hash & t->mask];
  while (x && x->hash != hash) x = x->next;
  return x;
}

spi_hnode *spi__htab_next(const spi_hnode *node, uint64_t hash) {
  spi_hnode *x = node->next;
  while (x && x->hash != hash) x = x->next;
  return x;
}

void spi__htab_each(spi_htab *t, void (*fn)(spi_hnode *node, void *ud),
                    void *ud) {
  for (size_t i = 0; t->b && i <= t->mask; i++)
    for (spi_hnode *x = t->b[i], *nx; x; x = nx) {
      nx = x->next;
      fn(x, ud);
    }
}

/* ---------------------------------------------------------------- heap */

static void put(spi_heap *h, size_t i, spi_hpnode *x) {
  h->a[i] = x;
  x->idx = i;
}

static void up(spi_heap *h, size_t i) {
  spi_hpnode *x = h->a[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (h->a[p]->key <= x->key) break;
    put(h, i, h->a[p]);
    i = p;
  }
  put(h, i, x);
}

static void down(spi_heap *h, size_t i) {
  spi_hpnode *x = h->a[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= h->len) break;
    if (c + 1 < h->len && h->a[c + 1]->key < h->a[c]->key) c++;
    if (x->key <= h->a[c]->key) break;
    put(h, i, h->a[c]);
    i = c;
  }
  put(h, i, x);
}

int spi__heap_reserve(spi_heap *h, const spi_mem *m, size_t n) {
  if (n <= h->cap) return SPI_OK;
  size_t cap = h->cap ? h->cap : 64;
  while (cap < n) cap *= 2;
  spi_hpnode **a = spi__calloc(m, cap, sizeof *a);
  if (!a) return SPI_ENOMEM;
  if (h->len) memcpy(a, h->a, h->len * sizeof *a);
  spi__free(m, h->a);
  h->a = a;
  h->cap = cap;
  return SPI_OK;
}

void spi__heap_free(spi_heap *h, const spi_mem *m) {
  spi__free(m, h->a);
  h->a = NULL;
  h->len = h->cap = 0;
}

void spi__heap_push(spi_heap *h, spi_hpnode *node) {
  put(h, h->len++, node);
  up(h, node->idx);
}

void spi__heap_remove(spi_heap *h, spi_hpnode *node) {
  size_t i = node->idx;
  node->idx = SIZE_MAX;
  spi_hpnode *last = h->a[--h->len];
  if (i == h->len) return;
  put(h, i, last);
  down(h, i);
  up(h, last->idx);
}
