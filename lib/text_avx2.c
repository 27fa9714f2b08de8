/*
 * text_avx2.c - the scan for the canonical prompt's reserved bytes
 * (0x1B-0x1F, util.c's spi__prompt_reserved_at) with AVX2: 256 bytes a
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

/* The wide loop's test: b + 0x65 (wrapping) takes the reserved bytes, and
 * only them, to 0x80..0x84, the five least as signed bytes; so a block
 * holds one exactly when the signed least of its bytes so moved is below
 * 0x85 (-123). Two operations a 32 bytes (the add, with its load, and a
 * signed min) and one compare a turn, against reserved_lanes' three a 32
 * bytes. */
static inline __m256i moved(const __m256i *v) {
  return _mm256_add_epi8(_mm256_loadu_si256(v), _mm256_set1_epi8(0x65));
}

size_t spi__prompt_reserved_at_avx2(const void *data, size_t n) {
  const uint8_t *p = data;
  size_t i = 0;
  /* 256 bytes a turn: the test's compare and branch once for eight loads. */
  const __m256i below = _mm256_set1_epi8(-123);
  for (; i + 256 <= n; i += 256) {
    const __m256i *v = (const __m256i *)(p + i);
    __m256i lo = _mm256_min_epi8(
        _mm256_min_epi8(_mm256_min_epi8(moved(v), moved(v + 1)),
                        _mm256_min_epi8(moved(v + 2), moved(v + 3))),
        _mm256_min_epi8(_mm256_min_epi8(moved(v + 4), moved(v + 5)),
                        _mm256_min_epi8(moved(v + 6), moved(v + 7))));
    __m256i hit = _mm256_cmpgt_epi8(below, lo);
    if (!_mm256_testz_si256(hit, hit)) break; /* found below, in order */
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
