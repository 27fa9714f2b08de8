/*
 * node_table.c - the hash index, wake-up heap and key ring of the machine
 * table (node_table.h).
 */
#include <string.h>
#include <xxhash.h>

#include "node_table.h"

/* ------------------------------------------------------------ hash index */

int spi__hix_init(spi_hix *h, const spi_mem *m, size_t n, uint64_t *hash,
                  uint64_t *probes) {
  size_t slots = 16;
  while (slots < 2 * n) slots *= 2;
  memset(h, 0, sizeof *h);
  if (n >= SPI_NT_NIL / 2) return SPI_EINVAL;
  h->slot = spi__alloc(m, slots * sizeof *h->slot);
  if (!h->slot) return SPI_ENOMEM;
  memset(h->slot, 0xff, slots * sizeof *h->slot);
  h->hash = hash;
  h->mask = slots - 1;
  h->probes = probes;
  return SPI_OK;
}

void spi__hix_free(spi_hix *h, const spi_mem *m) {
  spi__free(m, h->slot);
  h->slot = NULL;
}

void spi__hix_insert(spi_hix *h, uint32_t e) {
  size_t i = (size_t)h->hash[e] & h->mask;
  while (h->slot[i] != SPI_NT_NIL) {
    ++*h->probes;
    i = (i + 1) & h->mask;
  }
  h->slot[i] = (uint16_t)e;
}

/* Whether home lies cyclically in (i, j]: an entry at j whose home is
 * there must stay past the hole at i. */
static int home_between(size_t home, size_t i, size_t j) {
  return i < j ? home > i && home <= j : home > i || home <= j;
}

void spi__hix_remove(spi_hix *h, uint32_t e) {
  size_t i = (size_t)h->hash[e] & h->mask;
  while (h->slot[i] != e) {
    if (h->slot[i] == SPI_NT_NIL) return; /* not in */
    ++*h->probes;
    i = (i + 1) & h->mask;
  }
  /* Shift back every later entry of the run that may move into the hole. */
  for (size_t j = i;;) {
    h->slot[i] = SPI_NT_NIL;
    for (;;) {
      j = (j + 1) & h->mask;
      if (h->slot[j] == SPI_NT_NIL) return;
      ++*h->probes;
      size_t home = (size_t)h->hash[h->slot[j]] & h->mask;
      if (!home_between(home, i, j)) break;
    }
    h->slot[i] = h->slot[j];
    i = j;
  }
}

uint32_t spi__hix_next(spi_hix *h, uint64_t hv, size_t *cursor) {
  for (; *cursor <= h->mask; ++*cursor) {
    uint16_t e = h->slot[((size_t)hv + *cursor) & h->mask];
    if (e == SPI_NT_NIL) break;
    ++*h->probes;
    if (h->hash[e] == hv) {
      ++*cursor;
      return e;
    }
  }
  *cursor = h->mask + 1;
  return SPI_NT_NIL;
}

/* ------------------------------------------------------------ wake heap */

int spi__wheap_init(spi_wheap *q, const spi_mem *m, size_t cap,
                    uint64_t *probes) {
  memset(q, 0, sizeof *q);
  q->v = spi__alloc(m, cap * sizeof *q->v);
  q->at = spi__alloc(m, cap * sizeof *q->at);
  q->wake = spi__alloc(m, cap * sizeof *q->wake);
  q->probes = probes;
  if (!q->v || !q->at || !q->wake) {
    spi__wheap_free(q, m);
    return SPI_ENOMEM;
  }
  memset(q->at, 0xff, cap * sizeof *q->at);
  return SPI_OK;
}

void spi__wheap_free(spi_wheap *q, const spi_mem *m) {
  spi__free(m, q->v);
  spi__free(m, q->at);
  spi__free(m, q->wake);
  q->v = q->at = NULL;
  q->wake = NULL;
}

static void heap_put(spi_wheap *q, size_t i, uint16_t e) {
  q->v[i] = e;
  q->at[e] = (uint16_t)i;
}

static void sift_up(spi_wheap *q, size_t i) {
  uint16_t e = q->v[i];
  while (i > 0) {
    size_t up = (i - 1) / 2;
    ++*q->probes;
    if (q->wake[q->v[up]] <= q->wake[e]) break;
    heap_put(q, i, q->v[up]);
    i = up;
  }
  heap_put(q, i, e);
}

static void sift_down(spi_wheap *q, size_t i) {
  uint16_t e = q->v[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= q->n) break;
    ++*q->probes;
    if (c + 1 < q->n && q->wake[q->v[c + 1]] < q->wake[q->v[c]]) c++;
    if (q->wake[e] <= q->wake[q->v[c]]) break;
    heap_put(q, i, q->v[c]);
    i = c;
  }
  heap_put(q, i, e);
}

void spi__wheap_set(spi_wheap *q, uint32_t e, int64_t wake) {
  if (q->at[e] == SPI_NT_NIL) {
    q->wake[e] = wake;
    heap_put(q, q->n++, (uint16_t)e);
    sift_up(q, q->n - 1);
    return;
  }
  int64_t was = q->wake[e];
  q->wake[e] = wake;
  if (wake < was)
    sift_up(q, q->at[e]);
  else if (wake > was)
    sift_down(q, q->at[e]);
}

void spi__wheap_remove(spi_wheap *q, uint32_t e) {
  size_t i = q->at[e];
  if (i == SPI_NT_NIL) return;
  q->at[e] = SPI_NT_NIL;
  if (i == --q->n) return;
  uint16_t last = q->v[q->n];
  heap_put(q, i, last);
  sift_up(q, i);
  sift_down(q, q->at[last]);
}

uint32_t spi__wheap_due(const spi_wheap *q, int64_t now) {
  return q->n && q->wake[q->v[0]] <= now ? q->v[0] : SPI_NT_NIL;
}

/* --------------------------------------------------------------- key ring */

int spi__keyring_init(spi_keyring *k, const spi_mem *m, size_t ring,
                      size_t cap, uint64_t *probes) {
  memset(k, 0, sizeof *k);
  k->keys = spi__calloc(m, ring, cap);
  k->hash = spi__calloc(m, ring, sizeof *k->hash);
  k->owner = spi__calloc(m, ring, sizeof *k->owner);
  k->live = spi__calloc(m, ring, sizeof *k->live);
  k->marked = spi__calloc(m, ring, sizeof *k->marked);
  k->when = spi__calloc(m, ring, sizeof *k->when);
  k->cap = cap;
  k->ring = ring;
  if (!k->keys || !k->hash || !k->owner || !k->live || !k->marked ||
      !k->when ||
      spi__hix_init(&k->ix, m, ring, k->hash, probes) != SPI_OK ||
      spi__hix_init(&k->by_owner, m, ring, k->owner, probes) != SPI_OK) {
    spi__keyring_free(k, m);
    return SPI_ENOMEM;
  }
  return SPI_OK;
}

void spi__keyring_free(spi_keyring *k, const spi_mem *m) {
  spi__hix_free(&k->by_owner, m);
  spi__hix_free(&k->ix, m);
  spi__free(m, k->keys);
  spi__free(m, k->hash);
  spi__free(m, k->owner);
  spi__free(m, k->live);
  spi__free(m, k->marked);
  spi__free(m, k->when);
  k->keys = NULL;
  k->hash = k->owner = NULL;
  k->live = k->marked = NULL;
  k->when = NULL;
}

/* The entry that remembers key for owner, or SPI_NT_NIL. */
static uint32_t keyring_find(spi_keyring *k, const char *key, uint64_t owner) {
  size_t len = strlen(key);
  if (len >= k->cap) return SPI_NT_NIL; /* only shorter keys are kept whole */
  uint64_t hv = XXH3_64bits(key, len);
  size_t cur = 0;
  for (uint32_t e; (e = spi__hix_next(&k->ix, hv, &cur)) != SPI_NT_NIL;)
    if (k->owner[e] == owner && !strcmp(k->keys + e * k->cap, key)) return e;
  return SPI_NT_NIL;
}

int spi__keyring_has(spi_keyring *k, const char *key, uint64_t owner,
                     int64_t *when) {
  uint32_t e = keyring_find(k, key, owner);
  if (e == SPI_NT_NIL) return 0;
  if (when) *when = k->when[e];
  return 1;
}

int spi__keyring_set_when(spi_keyring *k, const char *key, uint64_t owner,
                          int64_t when) {
  uint32_t e = keyring_find(k, key, owner);
  if (e == SPI_NT_NIL) return 0;
  k->when[e] = when;
  return 1;
}

/* Take entry e out of both indexes (before its hashes change). */
static void keyring_unlink(spi_keyring *k, uint32_t e) {
  spi__hix_remove(&k->ix, e);
  spi__hix_remove(&k->by_owner, e);
  k->live[e] = 0;
}

void spi__keyring_add(spi_keyring *k, const char *key, uint64_t owner,
                      int marked, int64_t when) {
  size_t e = k->next;
  if (k->live[e]) keyring_unlink(k, (uint32_t)e);
  char *dst = k->keys + e * k->cap;
  size_t len = strlen(key);
  if (len >= k->cap) len = k->cap - 1;
  memcpy(dst, key, len);
  dst[len] = '\0';
  k->hash[e] = XXH3_64bits(dst, len);
  k->owner[e] = owner;
  k->marked[e] = marked != 0;
  k->when[e] = when;
  spi__hix_insert(&k->ix, (uint32_t)e);
  spi__hix_insert(&k->by_owner, (uint32_t)e);
  k->live[e] = 1;
  k->next = (k->next + 1) % k->ring;
}

void spi__keyring_forget(spi_keyring *k, uint64_t owner, int keep_marked) {
  size_t cur = 0;
  /* A removal shifts the chain it walks: each one starts the walk again. */
  for (uint32_t e; (e = spi__hix_next(&k->by_owner, owner, &cur)) !=
                   SPI_NT_NIL;) {
    if (keep_marked && k->marked[e]) continue;
    keyring_unlink(k, e);
    cur = 0;
  }
}
