/*
 * cpu_pick.c - whether the 512-bit vector builds run (the block hashes in
 * keybuilder.c, the rendezvous weights and a block's TTFTs in rdv_wide.c)
 * or their AVX2 builds: both give the same bits.
 *
 * The 512-bit builds run where the CPU has AVX-512 F and DQ and is not an
 * Intel one. On Intel server cores a 512-bit instruction moves the core to
 * a lower clock licence and closes one vector port for a while after it;
 * a route is mostly scalar code around short vector loops, and pays that
 * for all of its code. Measured on an Intel Xeon (Sapphire Rapids) with
 * AVX-512, the route's p50 was 3-10 % lower with the AVX2 builds at every
 * size (docs/performance.md, "The 512-bit builds on an Intel Xeon"); the
 * 512-bit builds were adopted on an AMD EPYC, whose AVX-512 runs at the
 * core's usual clock, where they took 0.7 times the AVX2 builds' time.
 */
#include <stdatomic.h>

#include "spi_internal.h"

static atomic_int pick; /* 0 not yet, 1 the AVX2 builds, 2 the 512-bit */
static atomic_int any_vendor;

static int cpu_has_512(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512dq");
#else
  return 0;
#endif
}

static int cpu_is_intel(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_is("intel");
#else
  return 0;
#endif
}

int spi__cpu_wide512(void) {
  int v = atomic_load_explicit(&pick, memory_order_relaxed);
  if (!v) {
    int any = atomic_load_explicit(&any_vendor, memory_order_relaxed);
    v = cpu_has_512() && (any || !cpu_is_intel()) ? 2 : 1;
    atomic_store_explicit(&pick, v, memory_order_relaxed); /* racers agree */
  }
  return v == 2;
}

void spi__cpu_wide512_any_vendor(void) {
  atomic_store_explicit(&any_vendor, 1, memory_order_relaxed);
  atomic_store_explicit(&pick, 0, memory_order_relaxed);
}
