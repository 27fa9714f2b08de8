/*
 * pix_avx2.c - the pool index's loops over a block's TTFTs with AVX2, for
 * CPUs without AVX-512 (rdv_wide.c has those).
 *
 * A block's TTFTs (replica_pass.c, block_ttft) are the TTFT model's
 * operations on the index's arrays, and the positions under a threshold
 * (block_under) a compare of each: four positions at a time here against
 * two in the baseline SSE2 build. Each lane is the same IEEE double
 * addition and multiplication, in the same order, as the scalar loop's
 * (never fused: -mavx2 does not enable FMA, gcc does not contract ISO C,
 * and clang is told not to), so the same bits.
 *
 * CMake compiles this file with -mavx2 and defines SPI_HAVE_PIX_AVX2 only
 * on x86-64 compilers that accept the flag; pool_index.c calls it only
 * after checking that the CPU has AVX2.
 */
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
  for (; i + 4 <= n; i += 4) {
    __m256d a = _mm256_add_pd(b, _mm256_loadu_pd(wait + i));
    __m256d p = _mm256_mul_pd(c, _mm256_loadu_pd(ms + i));
    p = _mm256_mul_pd(p, _mm256_loadu_pd(slow + i));
    _mm256_storeu_pd(t + i, _mm256_add_pd(a, p));
  }
  spi__pix_ttft_from(i, t, wait, ms, slow, n, base, cold);
  _mm256_zeroupper();
}

uint64_t spi__pix_under_avx2(const double *t, size_t n, double thr) {
  const __m256d th = _mm256_set1_pd(thr);
  uint64_t m = 0;
  size_t i = 0;
  /* Less or equal, false for a NaN: the scalar t <= thr. */
  for (; i + 4 <= n; i += 4)
    m |= (uint64_t)(unsigned)_mm256_movemask_pd(
             _mm256_cmp_pd(_mm256_loadu_pd(t + i), th, _CMP_LE_OQ))
         << i;
  m |= spi__pix_under_from(i, t, n, thr);
  _mm256_zeroupper();
  return m;
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
#endif
