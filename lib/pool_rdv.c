/*
 * pool_rdv.c - the pool index's rendezvous orders: a prefix's replicas by
 * rendezvous weight, per cell, kept for prefixes asked for again (the
 * first PIX_RDV_TOP, and deeper ones where the first are busy), and the
 * winner among a cell's free regular replicas weighed whole when neither
 * has one; which build weighs them (AVX-512, AVX2 or one by one) is
 * picked per CPU.
 */
#include <string.h>

#include "pool_index.h"

/* Whether (w, a) ranks before (v, b) in rendezvous order. */
static int rdv_before(uint64_t w, uint32_t a, uint64_t v, uint32_t b) {
  return w > v || (w == v && a < b);
}

void spi__pix_rdv_offer(pix_rdv *o, pix_rdv_acc *a, int k, uint64_t w,
                        uint32_t i) {
  uint32_t n = o->n[k];
  if (n == PIX_RDV_TOP &&
      !rdv_before(w, i, a->wt[k][n - 1], o->pos[k][n - 1]))
    return;
  uint32_t at = n < PIX_RDV_TOP ? n : n - 1;
  while (at > 0 && rdv_before(w, i, a->wt[k][at - 1], o->pos[k][at - 1])) {
    a->wt[k][at] = a->wt[k][at - 1];
    o->pos[k][at] = o->pos[k][at - 1];
    at--;
  }
  a->wt[k][at] = w;
  o->pos[k][at] = (uint16_t)i;
  if (n < PIX_RDV_TOP) o->n[k] = (uint8_t)(n + 1);
}

/* Which build weighs the replicas: AVX-512 (F and DQ, for the 64-bit
 * multiply) where the 512-bit builds run (spi__cpu_wide512). */
static int rdv_wide(void) {
#if SPI_HAVE_RDV_AVX512
  return spi__cpu_wide512();
#else
  return 0;
#endif
}

/* Whether a block's TTFTs and the rendezvous order go four at a time
 * (pix_avx2.c), on CPUs with AVX2 but not the AVX-512 of rdv_wide. */
static int pix_avx2(void) {
#if SPI_HAVE_PIX_AVX2
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
#else
  return 0;
#endif
}

void spi__pix_builds(spi_pool_index *p) {
  p->wide = rdv_wide();
  p->avx2 = !p->wide && pix_avx2();
}

void spi__pix_rdv_each(pix_rdv *o, pix_rdv_acc *a, const spi_pool_index *p,
                       uint64_t rkey) {
  for (size_t i = 0; i < p->n; i++) {
    int k = p->cell_at[i];
    if (k >= 0)
      spi__pix_rdv_offer(o, a, k, spi__rdv_weight(p->id_hash_at[i], rkey),
                         (uint32_t)i);
  }
}

/* Weigh every replica of the set p describes for x->rkey (from the
 * index's copies of their id hashes and cells, which sit in a row where
 * the set's entries are a kilobyte apart); keep each cell's first few.
 * A small set is weighed one by one: the order is the same either way. */
static void rdv_make(pix_rdv *o, const spi_pool_index *p, const route_env *x,
                     const spi_replica_set *set) {
  pix_rdv_acc a;
  memset(o->n, 0, sizeof o->n);
  if (p->n >= 16 && p->wide)
    spi__pix_rdv_avx512(o, &a, p, x->rkey);
  else if (p->n >= 16 && p->avx2)
    spi__pix_rdv_avx2(o, &a, p, x->rkey);
  else
    spi__pix_rdv_each(o, &a, p, x->rkey);
  o->rkey = x->rkey;
  o->version = set->version;
}

/* Whether tag was asked for before (it is then forgotten); else it is
 * remembered, in place of its set's oldest. */
static int seen_again(pix_seen *s, uint64_t tag) {
  uint32_t set = (uint32_t)(tag >> 40) % PIX_SEEN_SETS;
  for (int w = 0; w < PIX_SEEN_WAYS; w++)
    if (s->tag[set][w] == tag) {
      s->tag[set][w] = 0;
      return 1;
    }
  s->tag[set][s->next[set]] = tag;
  s->next[set] = (uint8_t)((s->next[set] + 1) % PIX_SEEN_WAYS);
  return 0;
}

/* A nonzero tag of (prefix, set) for rdv_seen. */
static uint64_t rdv_tag(uint64_t rkey, uint64_t version) {
  return spi__rdv_weight(rkey ^ version, 0) | 1u;
}

const pix_rdv *spi__pix_rdv(spi_pool_index *p, const route_env *x,
                            const spi_replica_set *set) {
  uint32_t at = (uint32_t)(spi__rdv_weight(x->rkey, 0) % PIX_RDV_SETS);
  for (int w = 0; w < PIX_RDV_WAYS; w++) {
    pix_rdv *o = &p->rdv[at][w];
    if (o->version == set->version && o->rkey == x->rkey && o->version)
      return o;
  }
  if (!seen_again(&p->rdv_seen, rdv_tag(x->rkey, set->version))) return NULL;
  pix_rdv *o = &p->rdv[at][p->rdv_next[at]];
  p->rdv_next[at] = (uint8_t)((p->rdv_next[at] + 1) % PIX_RDV_WAYS);
  rdv_make(o, p, x, set);
  return o;
}

/* Cell k's first PIX_DEEP_TOP in rendezvous order, weighed one by one:
 * positions ascend, so a tie keeps the lower position first. */
static void deep_make(pix_deep *d, const spi_pool_index *p, uint64_t rkey,
                      int k) {
  uint64_t wt[PIX_DEEP_TOP];
  uint16_t *pos = d->pos[k];
  uint32_t n = 0;
  for (size_t i = 0; i < p->n; i++) {
    if (p->cell_at[i] != k) continue;
    uint64_t w = spi__rdv_weight(p->id_hash_at[i], rkey);
    if (n == PIX_DEEP_TOP && !rdv_before(w, (uint32_t)i, wt[n - 1], pos[n - 1]))
      continue;
    uint32_t at = n < PIX_DEEP_TOP ? n : n - 1;
    while (at > 0 && rdv_before(w, (uint32_t)i, wt[at - 1], pos[at - 1])) {
      wt[at] = wt[at - 1];
      pos[at] = pos[at - 1];
      at--;
    }
    wt[at] = w;
    pos[at] = (uint16_t)i;
    if (n < PIX_DEEP_TOP) n++;
  }
  d->n[k] = (uint8_t)n;
  d->made |= (uint8_t)(1u << k);
}

/* A nonzero tag of (prefix, set, cell) for deep_seen. */
static uint64_t deep_tag(uint64_t rkey, uint64_t version, int k) {
  return spi__rdv_weight(rkey ^ version, (uint64_t)k + 1) | 1u;
}

const pix_deep *spi__pix_deep(spi_pool_index *p, const route_env *x,
                              const spi_replica_set *set, int k) {
  pix_deep *d = NULL;
  for (int w = 0; w < PIX_DEEP_WAYS && !d; w++)
    if (p->deep[w].version == set->version && p->deep[w].rkey == x->rkey &&
        p->deep[w].version)
      d = &p->deep[w];
  if (d && d->made >> k & 1u) return d;
  if (!seen_again(&p->deep_seen, deep_tag(x->rkey, set->version, k)))
    return NULL;
  if (!d) {
    d = &p->deep[p->deep_next];
    p->deep_next = (uint8_t)((p->deep_next + 1) % PIX_DEEP_WAYS);
    d->rkey = x->rkey;
    d->version = set->version;
    d->made = 0;
  }
  deep_make(d, p, x->rkey, k);
  return d;
}

static uint32_t free_best_one(const spi_pool_index *p, int k, uint64_t rkey) {
  uint64_t best_w = 0;
  uint32_t best = UINT32_MAX;
  for (size_t w = 0; w < (p->n + 63) / 64; w++)
    for (uint64_t m = p->cfree[k][w]; m; m &= m - 1) {
      uint32_t pos = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(m));
      uint64_t wt = spi__rdv_weight(p->id_hash_at[pos], rkey);
      if (best == UINT32_MAX || wt > best_w) {
        best_w = wt;
        best = pos;
      }
    }
  return best;
}

void spi__pix_free_best_each(const spi_pool_index *p, unsigned cells,
                             uint64_t rkey, uint32_t out[SPI_SUMMARY_CELLS]) {
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
    if (cells >> k & 1u) out[k] = free_best_one(p, k, rkey);
}

typedef void (*free_best2_fn)(const spi_pool_index *, int, int, uint64_t,
                              uint32_t *);

/* The wide passes take the cells two at a time. */
void spi__pix_free_best(const spi_pool_index *p, unsigned cells,
                        uint64_t rkey, uint32_t out[SPI_SUMMARY_CELLS]) {
  free_best2_fn two = NULL;
#if SPI_HAVE_PIX_AVX2
  if (p->avx2) two = spi__pix_free_best2_avx2;
#endif
#if SPI_HAVE_RDV_AVX512
  if (p->wide) two = spi__pix_free_best2_avx512;
#endif
  if (!two) {
    spi__pix_free_best_each(p, cells, rkey, out);
    return;
  }
  int ks[SPI_SUMMARY_CELLS], n = 0;
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
    if (cells >> k & 1u) ks[n++] = k;
  for (int j = 0; j < n; j += 2)
    two(p, ks[j], j + 1 < n ? ks[j + 1] : -1, rkey, out);
}
