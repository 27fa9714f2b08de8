/*
 * xxh_wide.c - XXH3 compiled for AVX2, for the block hashes.
 *
 * Debian's libxxhash is built for the x86-64 baseline (SSE2). Its run-time
 * dispatch entry points pick AVX2 or AVX-512 but return with the upper
 * vector state dirty, which halves the speed of any SSE code the process
 * runs afterwards; so instead this file compiles xxHash's own inline
 * implementation (xxhash.h, XXH_INLINE_ALL) with -mavx2, and the compiler
 * clears the upper state on the way out. keybuilder.c calls it only after
 * checking that the CPU has AVX2. The results are the same bits as the
 * library's (the golden vectors are checked through both).
 *
 * CMake compiles this file with -mavx2 and defines SPI_HAVE_XXH_AVX2 only
 * on x86-64 compilers that accept the flag; elsewhere it is empty.
 */
#include <stddef.h>
#include <stdint.h>

#include "spi_internal.h"

#if SPI_HAVE_XXH_AVX2
#include <immintrin.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

/* Each entry point clears the upper halves of the vector registers on its
 * way out. The compiler is supposed to, but gcc 12 at -O2 (the optimisation
 * of RelWithDebInfo and of most distribution builds) leaves them dirty
 * here, and then every SSE instruction the process runs afterwards pays for
 * it: a plain SSE2 XXH3 pass takes about 1.7 times as long. At -O3 the
 * compiler's own vzeroupper makes this one a no-op. */
uint64_t spi__xxh3_seeded_avx2(const void *p, size_t n, uint64_t seed) {
  uint64_t h = XXH3_64bits_withSeed(p, n, seed);
  _mm256_zeroupper();
  return h;
}

uint64_t spi__xxh3_avx2(const void *p, size_t n) {
  uint64_t h = XXH3_64bits(p, n);
  _mm256_zeroupper();
  return h;
}
#else
typedef int spi_xxh_wide_unused; /* an empty file is not valid C */
#endif
