/*
 * rdv_wide.c - the pool index's loops over every position, with AVX-512:
 * the rendezvous order of a prefix, the winners among free replicas, and a
 * block's TTFTs.
 *
 * A prefix whose order the pool index does not keep (pool_index.c,
 * spi__pix_rdv) has every replica of the set weighed: splitmix64's
 * finaliser of id_hash ^ rkey, two 64-bit multiplies each, then each
 * cell's few heaviest kept. Eight lanes at a time (vpmullq is AVX-512 DQ)
 * the weights are the same bits as spi__rdv_weight's; a lane is offered to
 * the order (spi__pix_rdv_offer, the one-by-one path's own insertion) only
 * when its weight is at least its cell's lightest kept one, so the order is
 * the same as one made one by one.
 *
 * A prefix no route has asked for before has each cell's winner among its
 * free replicas weighed instead (spi__pix_free_best), eight positions at a
 * time, each group once for two cells.
 *
 * A block's TTFTs (replica_pass.c, block_ttft) are the TTFT model's
 * operations on the index's arrays, eight positions at a time: each lane
 * is the same IEEE double addition and multiplication, in the same order,
 * as the scalar loop's (never fused: the file is compiled as ISO C, where
 * gcc does not contract, and clang is told not to), so the same bits.
 *
 * CMake compiles this file with -mavx512f -mavx512dq and defines
 * SPI_HAVE_RDV_AVX512 only on x86-64 compilers that accept the flags;
 * pool_index.c calls it only after checking that the CPU has both.
 */
#include "pool_index.h"

#if SPI_HAVE_RDV_AVX512
#include <immintrin.h>

#if defined(__clang__)
#pragma clang fp contract(off)
#endif

static __m512i mix_lanes(__m512i v) {
  v = _mm512_xor_si512(v, _mm512_srli_epi64(v, 30));
  v = _mm512_mullo_epi64(v, _mm512_set1_epi64((long long)0xbf58476d1ce4e5b9ULL));
  v = _mm512_xor_si512(v, _mm512_srli_epi64(v, 27));
  v = _mm512_mullo_epi64(v, _mm512_set1_epi64((long long)0x94d049bb133111ebULL));
  return _mm512_xor_si512(v, _mm512_srli_epi64(v, 31));
}

/* Each cell's lightest kept weight, lane k (0 while the cell's order is
 * not full: every weight is at least that); lanes 4..7 unused. */
static __m512i floors(const pix_rdv *o, const pix_rdv_acc *a) {
  uint64_t f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
    if (o->n[k] == PIX_RDV_TOP) f[k] = a->wt[k][PIX_RDV_TOP - 1];
  return _mm512_loadu_si512(f);
}

void spi__pix_rdv_avx512(pix_rdv *o, pix_rdv_acc *a, const spi_pool_index *p,
                         uint64_t rkey) {
  _Static_assert(SPI_SUMMARY_CELLS <= 8, "a cell's floor fits a lane");
  const __m512i key = _mm512_set1_epi64((long long)rkey);
  const __m512i zero = _mm512_setzero_si512();
  __m512i floor = floors(o, a);
  uint64_t w[8];
  /* Positions n.. up to a multiple of 8 have cell -1 (pool_index.c). */
  for (size_t i = 0; i < p->n; i += 8) {
    __m512i wt = mix_lanes(
        _mm512_xor_si512(_mm512_loadu_si512(&p->id_hash_at[i]), key));
    __m512i cell = _mm512_cvtepi8_epi64(
        _mm_loadl_epi64((const __m128i *)(const void *)&p->cell_at[i]));
    __mmask8 in = _mm512_cmpge_epi64_mask(cell, zero);
    __m512i fl = _mm512_permutexvar_epi64(cell, floor);
    __mmask8 may = _mm512_mask_cmpge_epu64_mask(in, wt, fl);
    if (!may) continue;
    _mm512_storeu_si512(w, wt);
    for (unsigned m = may; m; m &= m - 1) {
      unsigned j = (unsigned)__builtin_ctz(m);
      spi__pix_rdv_offer(o, a, p->cell_at[i + j], w[j], (uint32_t)(i + j));
    }
    floor = floors(o, a);
  }
  _mm256_zeroupper();
}

/* One cell's lanes: each keeps the heaviest weight above 0 it has met
 * among the cell's free positions, and that position (a strictly heavier
 * one replaces it, so a lane keeps its first on a tie). Starting from 0
 * with no "found" mask keeps the loop to a compare and two selects a cell;
 * a weight of 0 (one input of the finaliser in 2^64 gives it) is left to
 * the one-by-one pass (best_of). */
typedef struct best_lanes {
  __m512i w, at;
} best_lanes;

static inline void best_take(best_lanes *b, __mmask8 free, __m512i wt,
                             __m512i pos) {
  __mmask8 take = _mm512_mask_cmpgt_epu64_mask(free, wt, b->w);
  b->w = _mm512_mask_mov_epi64(b->w, take, wt);
  b->at = _mm512_mask_mov_epi64(b->at, take, pos);
}

/* Cell k's winner: the heaviest lanes' lowest position. When no lane took
 * a weight (the cell has no free replica, or only ones that weigh 0), the
 * one-by-one pass answers: UINT32_MAX or the lowest such position. */
static uint32_t best_of(const best_lanes *b, const spi_pool_index *p, int k,
                        uint64_t rkey) {
  uint64_t top = _mm512_reduce_max_epu64(b->w);
  if (!top) {
    uint32_t out[SPI_SUMMARY_CELLS];
    spi__pix_free_best_each(p, 1u << k, rkey, out);
    return out[k];
  }
  __mmask8 tie =
      _mm512_cmpeq_epu64_mask(b->w, _mm512_set1_epi64((long long)top));
  return (uint32_t)_mm512_mask_reduce_min_epu64(tie, b->at);
}

/* Cells ka and kb (kb < 0: ka alone), each group of eight positions weighed
 * once for both. The weighing is most of the work, and a route placing a
 * new prefix wants both pools' winners. */
void spi__pix_free_best2_avx512(const spi_pool_index *p, int ka, int kb,
                                uint64_t rkey,
                                uint32_t out[SPI_SUMMARY_CELLS]) {
  const __m512i key = _mm512_set1_epi64((long long)rkey);
  const __m512i step = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  best_lanes a = {_mm512_setzero_si512(), _mm512_setzero_si512()}, b = a;
  for (size_t w = 0; w < (p->n + 63) / 64; w++) {
    uint64_t fa = p->cfree[ka][w], fb = kb >= 0 ? p->cfree[kb][w] : 0;
    for (size_t i = w * 64; fa | fb; i += 8, fa >>= 8, fb >>= 8) {
      if (!((fa | fb) & 0xffu)) continue;
      __m512i wt = mix_lanes(
          _mm512_xor_si512(_mm512_loadu_si512(&p->id_hash_at[i]), key));
      __m512i pos = _mm512_add_epi64(_mm512_set1_epi64((long long)i), step);
      best_take(&a, (__mmask8)fa, wt, pos);
      best_take(&b, (__mmask8)fb, wt, pos);
    }
  }
  out[ka] = best_of(&a, p, ka, rkey);
  if (kb >= 0) out[kb] = best_of(&b, p, kb, rkey);
  _mm256_zeroupper();
}

void spi__pix_ttft_avx512(double *t, const double *wait, const double *ms,
                          const double *slow, size_t n, double base,
                          double cold) {
  const __m512d b = _mm512_set1_pd(base), c = _mm512_set1_pd(cold);
  for (size_t i = 0; i < n; i += 8) {
    __mmask8 m = (__mmask8)(n - i >= 8 ? 0xffu : (1u << (n - i)) - 1u);
    __m512d a = _mm512_add_pd(b, _mm512_maskz_loadu_pd(m, wait + i));
    __m512d p = _mm512_mul_pd(c, _mm512_maskz_loadu_pd(m, ms + i));
    p = _mm512_mul_pd(p, _mm512_maskz_loadu_pd(m, slow + i));
    _mm512_mask_storeu_pd(t + i, m, _mm512_add_pd(a, p));
  }
  _mm256_zeroupper();
}

uint64_t spi__pix_under_avx512(const double *t, size_t n, double thr) {
  const __m512d th = _mm512_set1_pd(thr);
  uint64_t m = 0;
  for (size_t i = 0; i < n; i += 8) {
    __mmask8 in = (__mmask8)(n - i >= 8 ? 0xffu : (1u << (n - i)) - 1u);
    /* Less or equal, false for a NaN: the scalar t <= thr. */
    __mmask8 le = _mm512_mask_cmp_pd_mask(in, _mm512_maskz_loadu_pd(in, t + i),
                                          th, _CMP_LE_OQ);
    m |= (uint64_t)le << i;
  }
  _mm256_zeroupper();
  return m;
}
#else
/* Without the AVX-512 build the index never calls these (its wide flag is
 * 0); they exist so that tests link either way. */
void spi__pix_ttft_avx512(double *t, const double *wait, const double *ms,
                          const double *slow, size_t n, double base,
                          double cold) {
  spi__pix_ttft_from(0, t, wait, ms, slow, n, base, cold);
}

uint64_t spi__pix_under_avx512(const double *t, size_t n, double thr) {
  return spi__pix_under_from(0, t, n, thr);
}

void spi__pix_rdv_avx512(pix_rdv *o, pix_rdv_acc *a, const spi_pool_index *p,
                         uint64_t rkey) {
  spi__pix_rdv_each(o, a, p, rkey);
}

void spi__pix_free_best2_avx512(const spi_pool_index *p, int ka, int kb,
                                uint64_t rkey,
                                uint32_t out[SPI_SUMMARY_CELLS]) {
  spi__pix_free_best_each(p, 1u << ka | (kb >= 0 ? 1u << kb : 0u), rkey, out);
}
#endif
