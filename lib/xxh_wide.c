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
 * A seeded hash of more than 240 bytes (a block hash) does not go through
 * xxHash's long path, which derives a 192-byte secret from the seed on
 * every call, stores it and reads it back 32 bytes at a time at offsets
 * that straddle its stores: each stripe's key is made in registers
 * instead, as keybuilder.c's AVX-512 build does (seeded_long below).
 *
 * CMake compiles this file with -mavx2 and defines SPI_HAVE_XXH_AVX2 only
 * on x86-64 compilers that accept the flag; elsewhere it is empty. With
 * gcc it is compiled at -O2 whatever the build type: at -O3, gcc 12's loop
 * transformations made seeded_long about 1.04 times as slow as xxHash's
 * long path instead of 0.87 times (eight chained 1 KiB blocks).
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
/*
 * XXH3_64bits_withSeed over more than 240 bytes with the seeded secret's
 * words made in registers. The seeded secret is the default one with the
 * seed added to its even 8-byte words and subtracted from its odd ones, so
 * the 32-byte key at byte offset off (a multiple of 8) is the default
 * secret's bytes there plus (+seed, -seed, +seed, -seed) when off / 8 is
 * even, or the opposite; a key that starts inside a word (the last
 * stripe's at byte 121, the merge's at byte 11) is joined from the two
 * aligned keys around it by shifts. Nothing goes through memory, so
 * nothing waits for a store. The accumulation, scramble and merge are
 * xxHash's, and so are the bits (test_keybuilder.c compares every length
 * to 2,200 bytes and around later block edges, at every alignment).
 */
static inline __m256i key_at8(size_t off, __m256i even, __m256i odd) {
  __m256i k = _mm256_loadu_si256((const __m256i *)(const void *)(XXH3_kSecret + off));
  return _mm256_add_epi64(k, (off / 8) % 2 ? odd : even);
}

static inline __m256i key_at(size_t off, __m256i even, __m256i odd) {
  size_t w = off / 8 * 8;
  int r = (int)(off % 8) * 8;
  __m256i lo = key_at8(w, even, odd), hi = key_at8(w + 8, even, odd);
  return _mm256_or_si256(_mm256_srli_epi64(lo, r), _mm256_slli_epi64(hi, 64 - r));
}

/* XXH3_accumulate_512 for one half (32 bytes) of a stripe. */
static inline __m256i half_stripe(__m256i acc, const uint8_t *p, __m256i key) {
  __m256i d = _mm256_loadu_si256((const __m256i *)(const void *)p);
  __m256i dk = _mm256_xor_si256(d, key);
  __m256i hi = _mm256_shuffle_epi32(dk, _MM_SHUFFLE(0, 3, 0, 1));
  __m256i swap = _mm256_shuffle_epi32(d, _MM_SHUFFLE(1, 0, 3, 2));
  return _mm256_add_epi64(_mm256_mul_epu32(dk, hi), _mm256_add_epi64(acc, swap));
}

/* Stripes s and s + 1 (s even, so their keys' patterns are known). */
static inline void two_stripes(__m256i acc[2], const uint8_t *p, size_t s,
                               __m256i even, __m256i odd) {
  size_t off = s * XXH_SECRET_CONSUME_RATE;
  p += s * XXH_STRIPE_LEN;
  acc[0] = half_stripe(acc[0], p, key_at8(off, even, odd));
  acc[1] = half_stripe(acc[1], p + 32, key_at8(off + 32, even, odd));
  acc[0] = half_stripe(acc[0], p + 64, key_at8(off + 8, even, odd));
  acc[1] = half_stripe(acc[1], p + 96, key_at8(off + 40, even, odd));
}

/* XXH3_scrambleAcc, after every 1 KiB (16 stripes) of a longer input. */
static inline __m256i scramble(__m256i acc, __m256i key) {
  const __m256i prime = _mm256_set1_epi32((int)XXH_PRIME32_1);
  __m256i dk = _mm256_xor_si256(_mm256_xor_si256(acc, _mm256_srli_epi64(acc, 47)), key);
  __m256i hi = _mm256_shuffle_epi32(dk, _MM_SHUFFLE(0, 3, 0, 1));
  return _mm256_add_epi64(_mm256_mul_epu32(dk, prime),
                          _mm256_slli_epi64(_mm256_mul_epu32(hi, prime), 32));
}

/* The seeded secret's additions to the default secret's words: (+seed,
 * -seed, +seed, -seed) for a key at an even word (even), the opposite at
 * an odd one (the negation of even). */
static inline __m256i seed_even(uint64_t seed) {
  return _mm256_set_epi64x((long long)(0 - seed), (long long)seed,
                           (long long)(0 - seed), (long long)seed);
}

/* XXH3_INIT_ACC. */
static inline void init_acc(__m256i acc[2]) {
  acc[0] = _mm256_set_epi64x((long long)XXH_PRIME64_3, (long long)XXH_PRIME64_2,
                             (long long)XXH_PRIME64_1, (long long)XXH_PRIME32_3);
  acc[1] = _mm256_set_epi64x((long long)XXH_PRIME32_1, (long long)XXH_PRIME64_5,
                             (long long)XXH_PRIME32_2, (long long)XXH_PRIME64_4);
}

/* The end of an input of n bytes: its last stripe, with the secret from
 * byte 121, then XXH3_mergeAccs, with the secret from byte 11, and the
 * avalanche. */
static inline uint64_t last_and_merge(__m256i acc[2], const uint8_t *input, size_t n,
                                      __m256i even, __m256i odd) {
  const uint8_t *last = input + n - XXH_STRIPE_LEN;
  size_t off = XXH_SECRET_DEFAULT_SIZE - XXH_STRIPE_LEN - XXH_SECRET_LASTACC_START;
  acc[0] = half_stripe(acc[0], last, key_at(off, even, odd));
  acc[1] = half_stripe(acc[1], last + 32, key_at(off + 32, even, odd));
  off = XXH_SECRET_MERGEACCS_START;
  uint64_t a[8] __attribute__((aligned(32)));
  _mm256_store_si256((__m256i *)(void *)a, _mm256_xor_si256(acc[0], key_at(off, even, odd)));
  _mm256_store_si256((__m256i *)(void *)(a + 4),
                     _mm256_xor_si256(acc[1], key_at(off + 32, even, odd)));
  uint64_t h = (uint64_t)n * XXH_PRIME64_1;
  for (int i = 0; i < 4; i++) h += XXH3_mul128_fold64(a[2 * i], a[2 * i + 1]);
  return XXH3_avalanche(h);
}

static uint64_t seeded_long(const uint8_t *input, size_t n, uint64_t seed) {
  const __m256i even = seed_even(seed);
  const __m256i odd = _mm256_sub_epi64(_mm256_setzero_si256(), even);
  const size_t per_block = (XXH_SECRET_DEFAULT_SIZE - XXH_STRIPE_LEN) /
                           XXH_SECRET_CONSUME_RATE; /* 16 stripes, 1 KiB */
  const size_t block = per_block * XXH_STRIPE_LEN;
  __m256i acc[2];
  init_acc(acc);
  const uint8_t *p = input;
  size_t blocks = (n - 1) / block;
  for (size_t b = 0; b < blocks; b++, p += block) {
    for (size_t s = 0; s < per_block; s += 2) two_stripes(acc, p, s, even, odd);
    size_t off = XXH_SECRET_DEFAULT_SIZE - XXH_STRIPE_LEN;
    acc[0] = scramble(acc[0], key_at8(off, even, odd));
    acc[1] = scramble(acc[1], key_at8(off + 32, even, odd));
  }
  size_t stripes = ((n - 1) - block * blocks) / XXH_STRIPE_LEN, s = 0;
  for (; s + 2 <= stripes; s += 2) two_stripes(acc, p, s, even, odd);
  if (s < stripes) { /* s is even */
    p += s * XXH_STRIPE_LEN;
    acc[0] = half_stripe(acc[0], p, key_at8(s * XXH_SECRET_CONSUME_RATE, even, odd));
    acc[1] = half_stripe(acc[1], p + 32,
                         key_at8(s * XXH_SECRET_CONSUME_RATE + 32, even, odd));
  }
  return last_and_merge(acc, input, n, even, odd);
}

/* seeded_long for exactly 1 KiB (cache_key.block_bytes' default): the
 * same steps with every offset known, so each key is an add with the
 * secret's bytes in the instruction, and nothing counts stripes. */
static uint64_t seeded_1k(const uint8_t *input, uint64_t seed) {
  const __m256i even = seed_even(seed);
  const __m256i odd = _mm256_sub_epi64(_mm256_setzero_si256(), even);
  __m256i acc[2];
  init_acc(acc);
  /* (1024 - 1) / 64 = 15 stripes before the last one. */
#pragma GCC unroll 8
  for (size_t s = 0; s < 14; s += 2) {
    two_stripes(acc, input, s, even, odd);
    /* Kept apart: gcc would otherwise reassociate the whole unrolled sum,
     * compute every term first and spill most of them. */
    __asm__("" : "+x"(acc[0]), "+x"(acc[1]));
  }
  acc[0] = half_stripe(acc[0], input + 14 * XXH_STRIPE_LEN,
                       key_at8(14 * XXH_SECRET_CONSUME_RATE, even, odd));
  acc[1] = half_stripe(acc[1], input + 14 * XXH_STRIPE_LEN + 32,
                       key_at8(14 * XXH_SECRET_CONSUME_RATE + 32, even, odd));
  return last_and_merge(acc, input, 1024, even, odd);
}

uint64_t spi__xxh3_seeded_avx2(const void *p, size_t n, uint64_t seed) {
  uint64_t h = n == 1024                ? seeded_1k(p, seed)
               : n > XXH3_MIDSIZE_MAX ? seeded_long(p, n, seed)
                                      : XXH3_64bits_withSeed(p, n, seed);
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
