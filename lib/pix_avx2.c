/*
 * pix_avx2.c - the pool index's loops over every position with AVX2, for
 * CPUs without AVX-512 (rdv_wide.c has those): a block's TTFTs, the
 * rendezvous order of a prefix, and the winners among free replicas.
 *
 * A block's TTFTs (replica_pass.c, block_ttft) are the TTFT model's
 * operations on the index's arrays, and the positions under a threshold
 * (block_under) a compare of each: four positions at a time here against
 * two in the baseline SSE2 build. Each lane is the same IEEE double
 * addition and multiplication, in the same order, as the scalar loop's
 * (never fused: -mavx2 does not enable FMA, gcc does not contract ISO C,
 * and clang is told not to), so the same bits.
 *
 * The rendezvous order (pool_index.c, spi__pix_rdv) weighs every replica
 * of the set: splitmix64's finaliser of id_hash ^ rkey, four lanes at a
 * time. AVX2 has no 64-bit multiply, so each product's low 64 bits are
 * made from three 32-bit ones (lo * lo + ((lo * hi + hi * lo) << 32), all
 * modulo 2^64, as the scalar multiply is): the same bits as
 * spi__rdv_weight's. As in rdv_wide.c, a lane is offered to the order
 * (spi__pix_rdv_offer) only when its weight is at least its cell's
 * lightest kept one, so the order is the same as one made one by one. A
 * prefix no route has asked for before has each cell's winner among its
 * free replicas weighed the same way (spi__pix_free_best), each group of
 * four once for two cells; where few replicas are free the one-by-one
 * pass would be faster (it weighs only those), where most are, this one.
 *
 * CMake compiles this file with -mavx2 and defines SPI_HAVE_PIX_AVX2 only
 * on x86-64 compilers that accept the flag; pool_index.c calls it only
 * after checking that the CPU has AVX2.
 */
#include <string.h>

#include "pool_index.h"

#if SPI_HAVE_PIX_AVX2
#include <immintrin.h>

#if defined(__clang__)
#pragma clang fp contract(off)
#endif

void spi__pix_ttft_avx2(double *t, const double *wait, const double *ms,
                        const double *slow, size_t n, double base,
                        double cold) {
  const __m256d b = _mm256_set1_pd(base), c = _mm256_set1_pd(cold);
  size_t i = 0;
  /* Eight at a time (two fours: one turn of the loop's count and test),
   * then four. */
#define TTFT4(j)                                                          \
  _mm256_storeu_pd(                                                       \
      t + i + (j),                                                        \
      _mm256_add_pd(_mm256_add_pd(b, _mm256_loadu_pd(wait + i + (j))),    \
                    _mm256_mul_pd(_mm256_mul_pd(c, _mm256_loadu_pd(ms + i + (j))), \
                                  _mm256_loadu_pd(slow + i + (j)))))
  for (; i + 8 <= n; i += 8) {
    TTFT4(0);
    TTFT4(4);
  }
  for (; i + 4 <= n; i += 4) TTFT4(0);
#undef TTFT4
  spi__pix_ttft_from(i, t, wait, ms, slow, n, base, cold);
  _mm256_zeroupper();
}

/* Four TTFTs (TTFT4's operations) stored at t, and which are at most th
 * (UNDER4's compare), as four bits. */
static inline uint64_t ttft_under4(double *t, const double *wait,
                                   const double *ms, const double *slow,
                                   __m256d b, __m256d c, __m256d th) {
  __m256d v = _mm256_add_pd(_mm256_add_pd(b, _mm256_loadu_pd(wait)),
                            _mm256_mul_pd(_mm256_mul_pd(c, _mm256_loadu_pd(ms)),
                                          _mm256_loadu_pd(slow)));
  _mm256_storeu_pd(t, v);
  return (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(v, th, _CMP_LE_OQ));
}

uint64_t spi__pix_ttft_under_avx2(double *t, const double *wait,
                                  const double *ms, const double *slow,
                                  size_t n, double base, double cold,
                                  double thr) {
  const __m256d b = _mm256_set1_pd(base), c = _mm256_set1_pd(cold),
                th = _mm256_set1_pd(thr);
  uint64_t m = 0;
  size_t i = 0;
#define TU4(j) \
  (ttft_under4(t + i + (j), wait + i + (j), ms + i + (j), slow + i + (j), b, c, th) << (j))
  for (; i + 8 <= n; i += 8) m |= (TU4(0) | TU4(4)) << i;
  for (; i + 4 <= n; i += 4) m |= TU4(0) << i;
#undef TU4
  spi__pix_ttft_from(i, t, wait, ms, slow, n, base, cold);
  m |= spi__pix_under_from(i, t, n, thr);
  _mm256_zeroupper();
  return m;
}

uint64_t spi__pix_under_avx2(const double *t, size_t n, double thr) {
  const __m256d th = _mm256_set1_pd(thr);
  uint64_t m = 0;
  size_t i = 0;
  /* Less or equal, false for a NaN: the scalar t <= thr. Sixteen at a
   * time, their four masks joined before the shift into m (a block of 64
   * is four turns, not sixteen). */
#define UNDER4(j)                                                          \
  ((uint64_t)(unsigned)_mm256_movemask_pd(                                 \
       _mm256_cmp_pd(_mm256_loadu_pd(t + i + (j)), th, _CMP_LE_OQ))        \
   << (j))
  for (; i + 16 <= n; i += 16)
    m |= (UNDER4(0) | UNDER4(4) | UNDER4(8) | UNDER4(12)) << i;
  for (; i + 4 <= n; i += 4) m |= UNDER4(0) << i;
#undef UNDER4
  m |= spi__pix_under_from(i, t, n, thr);
  _mm256_zeroupper();
  return m;
}
/* The low 64 bits of each lane times c. */
static __m256i mullo64(__m256i a, uint64_t c) {
  const __m256i lo = _mm256_set1_epi64x((long long)(c & 0xffffffffu));
  const __m256i hi = _mm256_set1_epi64x((long long)(c >> 32));
  __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(a, hi),
                                   _mm256_mul_epu32(_mm256_srli_epi64(a, 32), lo));
  return _mm256_add_epi64(_mm256_mul_epu32(a, lo), _mm256_slli_epi64(cross, 32));
}

/* spi__rdv_weight of four lanes (id_hash ^ rkey already). */
static __m256i mix_lanes(__m256i v) {
  v = _mm256_xor_si256(v, _mm256_srli_epi64(v, 30));
  v = mullo64(v, 0xbf58476d1ce4e5b9ULL);
  v = _mm256_xor_si256(v, _mm256_srli_epi64(v, 27));
  v = mullo64(v, 0x94d049bb133111ebULL);
  return _mm256_xor_si256(v, _mm256_srli_epi64(v, 31));
}

/* Each cell's lightest kept weight, lane k (0 while the cell's order is
 * not full: every weight is at least that), its sign bit flipped for
 * signed compares. */
static __m256i floors(const pix_rdv *o, const pix_rdv_acc *a, __m256i sign) {
  uint64_t f[4] = {0, 0, 0, 0};
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
    if (o->n[k] == PIX_RDV_TOP) f[k] = a->wt[k][PIX_RDV_TOP - 1];
  return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(const void *)f), sign);
}

/* The lanes whose cell is one (0..3) and whose weight wt is at least that
 * cell's floor, as four bits. */
static unsigned may_enter(__m256i wt, const int8_t *cells, __m256i floor,
                          __m256i sign) {
  int32_t c4;
  memcpy(&c4, cells, sizeof c4);
  __m256i cell = _mm256_cvtepi8_epi64(_mm_cvtsi32_si128(c4));
  __m256i in = _mm256_cmpgt_epi64(cell, _mm256_set1_epi64x(-1));
  /* The cell's floor in each lane: 32-bit halves 2c and 2c + 1 (a lane
   * of no cell reads cell 0's, and is masked out by in). */
  __m256i c2 = _mm256_slli_epi64(_mm256_and_si256(cell, in), 1);
  __m256i idx = _mm256_or_si256(
      c2, _mm256_slli_epi64(_mm256_add_epi64(c2, _mm256_set1_epi64x(1)), 32));
  __m256i fl = _mm256_permutevar8x32_epi32(floor, idx);
  /* wt >= fl, unsigned: not (fl > wt) with both signs flipped. */
  __m256i below = _mm256_cmpgt_epi64(fl, _mm256_xor_si256(wt, sign));
  return (unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_andnot_si256(below, in)));
}

void spi__pix_rdv_avx2(pix_rdv *o, pix_rdv_acc *a, const spi_pool_index *p,
                       uint64_t rkey) {
  _Static_assert(SPI_SUMMARY_CELLS <= 4, "a cell's floor fits a lane");
  const __m256i key = _mm256_set1_epi64x((long long)rkey);
  const __m256i sign = _mm256_set1_epi64x((long long)0x8000000000000000ULL);
  __m256i floor = floors(o, a, sign);
  uint64_t w[4];
  /* Positions n.. up to a multiple of 8 have cell -1 (pool_index.c). */
  for (size_t i = 0; i < p->n; i += 4) {
    __m256i wt = mix_lanes(_mm256_xor_si256(
        _mm256_loadu_si256((const __m256i *)(const void *)&p->id_hash_at[i]), key));
    unsigned may = may_enter(wt, &p->cell_at[i], floor, sign);
    if (!may) continue;
    _mm256_storeu_si256((__m256i *)(void *)w, wt);
    for (; may; may &= may - 1) {
      unsigned j = (unsigned)__builtin_ctz(may);
      spi__pix_rdv_offer(o, a, p->cell_at[i + j], w[j], (uint32_t)(i + j));
    }
    floor = floors(o, a, sign);
  }
  _mm256_zeroupper();
}

/* spi__pix_free_best four lanes at a time. A cell's lanes each keep the
 * heaviest weight above 0 they have met among its free positions and that
 * position (a strictly heavier one replaces it, so a lane keeps its first
 * on a tie); then the heaviest lanes' lowest position. Starting from 0
 * with no "found" mask keeps a cell's step to a compare, an and and two
 * selects; a weight of 0 (one input of the finaliser in 2^64 gives it) is
 * left to the one-by-one pass (best_of), as in rdv_wide.c. Unsigned
 * compares are signed ones with both signs flipped (w is kept flipped). */
typedef struct best_lanes {
  __m256i w, at;
} best_lanes;

/* The lane masks of each four bits of a free bitmap, bit j all ones in
 * lane j: one load where a broadcast, an and and a compare made it. */
static const int64_t lane_masks[16][4] = {
#define L(b, j) (((b) >> (j) & 1) ? -1 : 0)
#define ROW(b) {L(b, 0), L(b, 1), L(b, 2), L(b, 3)}
    ROW(0),  ROW(1),  ROW(2),  ROW(3),  ROW(4),  ROW(5),  ROW(6),  ROW(7),
    ROW(8),  ROW(9),  ROW(10), ROW(11), ROW(12), ROW(13), ROW(14), ROW(15),
#undef ROW
#undef L
};

/* A lane's take is all ones or all zeros, so a select by each 64-bit
 * lane's top bit (blendv_pd) is the byte select's answer in one
 * instruction (gcc made the byte select's mask again, with a compare). */
static inline __m256i select64(__m256i a, __m256i b, __m256i take) {
  return _mm256_castpd_si256(_mm256_blendv_pd(
      _mm256_castsi256_pd(a), _mm256_castsi256_pd(b), _mm256_castsi256_pd(take)));
}

static inline void best_take(best_lanes *b, uint64_t bits, __m256i wt,
                             __m256i pos) {
  __m256i m = _mm256_loadu_si256(
      (const __m256i *)(const void *)lane_masks[bits & 0xfu]);
  __m256i take = _mm256_and_si256(m, _mm256_cmpgt_epi64(wt, b->w));
  b->w = select64(b->w, wt, take);
  b->at = select64(b->at, pos, take);
}

/* Cell k's winner: the heaviest lanes' lowest position. When no lane took
 * a weight (the cell has no free replica, or only ones that weigh 0), the
 * one-by-one pass answers: UINT32_MAX or the lowest such position. */
static uint32_t best_of(const best_lanes *b, const spi_pool_index *p, int k,
                        uint64_t rkey) {
  uint64_t w[4], a[4];
  _mm256_storeu_si256((__m256i *)(void *)w, b->w);
  _mm256_storeu_si256((__m256i *)(void *)a, b->at);
  uint32_t pos = UINT32_MAX;
  uint64_t top = 0;
  for (int j = 0; j < 4; j++) {
    uint64_t v = w[j] ^ 0x8000000000000000ULL;
    if (v > top || (v == top && v && a[j] < pos)) {
      top = v;
      pos = (uint32_t)a[j];
    }
  }
  if (!top) {
    uint32_t out[SPI_SUMMARY_CELLS];
    spi__pix_free_best_each(p, 1u << k, rkey, out);
    return out[k];
  }
  return pos;
}

/* Cells ka and kb (kb < 0: ka alone), each group of four positions weighed
 * once for both: the weighing (six 32-bit multiplies a lane) is most of
 * the work, and a route placing a new prefix wants both pools' winners. */
void spi__pix_free_best2_avx2(const spi_pool_index *p, int ka, int kb,
                              uint64_t rkey, uint32_t out[SPI_SUMMARY_CELLS]) {
  const __m256i key = _mm256_set1_epi64x((long long)rkey);
  const __m256i sign = _mm256_set1_epi64x((long long)0x8000000000000000ULL);
  const __m256i step = _mm256_set_epi64x(3, 2, 1, 0);
  const __m256i four = _mm256_set1_epi64x(4);
  best_lanes a = {sign, _mm256_setzero_si256()};
  best_lanes b = a;
  for (size_t w = 0; w < (p->n + 63) / 64; w++) {
    uint64_t fa = p->cfree[ka][w], fb = kb >= 0 ? p->cfree[kb][w] : 0;
    /* The lanes' positions i .. i + 3, stepped with i. */
    __m256i pos = _mm256_add_epi64(_mm256_set1_epi64x((long long)(w * 64)), step);
    for (size_t i = w * 64; fa | fb;
         i += 4, fa >>= 4, fb >>= 4, pos = _mm256_add_epi64(pos, four)) {
      if (!((fa | fb) & 0xfu)) continue;
      const __m256i *at = (const __m256i *)(const void *)&p->id_hash_at[i];
      __m256i wt = _mm256_xor_si256(
          mix_lanes(_mm256_xor_si256(_mm256_loadu_si256(at), key)), sign);
      best_take(&a, fa, wt, pos);
      best_take(&b, fb, wt, pos);
    }
  }
  out[ka] = best_of(&a, p, ka, rkey);
  if (kb >= 0) out[kb] = best_of(&b, p, kb, rkey);
  _mm256_zeroupper();
}

#else
/* Without the AVX2 build the index never calls these (its avx2 flag is 0);
 * they exist so that tests link either way. */
void spi__pix_ttft_avx2(double *t, const double *wait, const double *ms,
                        const double *slow, size_t n, double base,
                        double cold) {
  spi__pix_ttft_from(0, t, wait, ms, slow, n, base, cold);
}

uint64_t spi__pix_under_avx2(const double *t, size_t n, double thr) {
  return spi__pix_under_from(0, t, n, thr);
}

uint64_t spi__pix_ttft_under_avx2(double *t, const double *wait,
                                  const double *ms, const double *slow,
                                  size_t n, double base, double cold,
                                  double thr) {
  spi__pix_ttft_from(0, t, wait, ms, slow, n, base, cold);
  return spi__pix_under_from(0, t, n, thr);
}

void spi__pix_free_best2_avx2(const spi_pool_index *p, int ka, int kb,
                              uint64_t rkey, uint32_t out[SPI_SUMMARY_CELLS]) {
  spi__pix_free_best_each(p, 1u << ka | (kb >= 0 ? 1u << kb : 0u), rkey, out);
}

void spi__pix_rdv_avx2(pix_rdv *o, pix_rdv_acc *a, const spi_pool_index *p,
                       uint64_t rkey) {
  spi__pix_rdv_each(o, a, p, rkey);
}
#endif
