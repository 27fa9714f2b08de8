/*
 * text_avx2.c - the scan for the canonical prompt's reserved bytes
 * (0x1B-0x1F, util.c's spi__prompt_reserved_at) with AVX2: 128 bytes a
 * turn, one mask test for all of them, against 64 in the SSE2 build. Every
 * prompt set on a request is scanned once, so on long prompts this is of
 * the order of hashing its blocks.
 *
 * CMake compiles this file with -mavx2 and defines SPI_HAVE_TEXT_AVX2 only
 * on x86-64 compilers that accept the flag; util.c calls it only after
 * checking that the CPU has AVX2.
 */
#include "spi_internal.h"

#if defined(SPI_HAVE_TEXT_AVX2)
#include <immintrin.h>

/* The lanes of x that hold a reserved byte: b - 0x1B (wrapping) is at most
 * 4 exactly for those, i.e. equal to its minimum with 4. */
static inline __m256i reserved_lanes(__m256i x) {
  const __m256i base = _mm256_set1_epi8(0x1B), four = _mm256_set1_epi8(4);
  __m256i d = _mm256_sub_epi8(x, base);
  return _mm256_cmpeq_epi8(_mm256_min_epu8(d, four), d);
}

size_t spi__prompt_reserved_at_avx2(const void *data, size_t n) {
  const uint8_t *p = data;
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    const __m256i *v = (const __m256i *)(p + i);
    __m256i any = _mm256_or_si256(
        _mm256_or_si256(reserved_lanes(_mm256_loadu_si256(v)),
                        reserved_lanes(_mm256_loadu_si256(v + 1))),
        _mm256_or_si256(reserved_lanes(_mm256_loadu_si256(v + 2)),
                        reserved_lanes(_mm256_loadu_si256(v + 3))));
    if (!_mm256_testz_si256(any, any)) break; /* found below, in order */
  }
  for (; i + 32 <= n; i += 32) {
    __m256i x = _mm256_loadu_si256((const __m256i *)(p + i));
    unsigned hit = (unsigned)_mm256_movemask_epi8(reserved_lanes(x));
    if (hit) return i + (size_t)__builtin_ctz(hit);
  }
  for (; i < n; i++)
    if ((uint8_t)(p[i] - 0x1B) <= 4) return i;
  return n;
}
#endif
