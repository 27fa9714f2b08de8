/*
 * test_cost.c - the cost formulas and the built-in "reference" cost model.
 *
 * The worked examples are the reference figures the formulas were written
 * from: an A100 at $3.50/h making 1000 tok/s, 1000 spot hours at $1.80 with
 * 5% interrupted and 10 minutes lost each, self-hosting at $3.50/h for 720 h
 * against an API at $0.90/M, and Llama-3-8B's KV cache at 4096 tokens.
 */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "spi_internal.h"

#define GIB 1073741824.0

/* |got - want| <= rel * |want| (or <= rel when want is 0). */
static void near_(double got, double want, double rel, const char *what,
                  int line) {
  double diff = got > want ? got - want : want - got;
  double scale = want < 0 ? -want : want;
  if (scale == 0) scale = 1;
  if (!(diff <= rel * scale))
    fail_msg("line %d: %s = %.17g, want %.17g (rel %.3g)", line, what, got,
             want, rel);
}
#define NEAR(got, want, rel) near_((got), (want), (rel), #got, __LINE__)

static const double SENTINEL = -12345.678;

/* Awkward inputs every formula must survive. */
static const double AWKWARD[] = {NAN,  INFINITY, -INFINITY, -1.0, -0.0, 0.0,
                                 1e-300, 0.5,     1.0,       3.5,  1e300,
                                 DBL_MAX};
#define N_AWKWARD (sizeof AWKWARD / sizeof AWKWARD[0])

/* ---------------------------------------------------- $/M and break-even */

static void test_per_million_worked(void **st) {
  (void)st;
  double v = 0;
  /* $3.50 / (1000 tok/s * 3600 s) * 1e6 = $0.97222.../M */
  assert_int_equal(spi_cost_per_million_tokens(3.5, 1, 1000.0, &v), SPI_OK);
  NEAR(v, 3.5 / 3.6, 1e-14);
  NEAR(v, 0.9722222222222222, 1e-14);
  assert_int_equal(spi_cost_per_million_tokens(3.5, 2, 1000.0, &v), SPI_OK);
  NEAR(v, 7.0 / 3.6, 1e-14);
  /* 3.50 at 833 tok/s is about $1.17/M. */
  assert_int_equal(spi_cost_per_million_tokens(3.5, 1, 833.0, &v), SPI_OK);
  NEAR(v, 1.1671335200746966, 1e-12);
}

static void test_per_million_invalid(void **st) {
  (void)st;
  double v = SENTINEL;
  assert_int_equal(spi_cost_per_million_tokens(3.5, 1, 1000, NULL), SPI_EINVAL);
  const double bad[] = {NAN, INFINITY, -INFINITY, -1.0, 0.0, -0.0};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(spi_cost_per_million_tokens(bad[i], 1, 1000, &v),
                     SPI_ERANGE);
    assert_int_equal(spi_cost_per_million_tokens(3.5, 1, bad[i], &v),
                     SPI_ERANGE);
  }
  assert_int_equal(spi_cost_per_million_tokens(3.5, 0, 1000, &v), SPI_ERANGE);
  /* Overflow: a finite price over a tiny throughput is not a finite $/M. */
  assert_int_equal(spi_cost_per_million_tokens(1e300, 1024, 1e-300, &v),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_per_million_tokens(DBL_MAX, UINT32_MAX, 1, &v),
                   SPI_ERANGE);
  /* Underflow to zero is no price either. */
  assert_int_equal(spi_cost_per_million_tokens(1e-300, 1, 1e300, &v),
                   SPI_ERANGE);
  assert_true(v == SENTINEL);
}

static void test_break_even_tps(void **st) {
  (void)st;
  double v = 0;
  /* $3.50/h to reach $1.00/M needs 3.5e6 / 3600 = 972.2 tok/s. */
  assert_int_equal(spi_cost_break_even_tps(3.5, 1, 1.0, &v), SPI_OK);
  NEAR(v, 972.2222222222222, 1e-14);
  /* It inverts the $/M formula. */
  double per_m = 0;
  assert_int_equal(spi_cost_per_million_tokens(3.5, 4, v, &per_m), SPI_OK);
  NEAR(per_m, 4.0, 1e-14);

  v = SENTINEL;
  assert_int_equal(spi_cost_break_even_tps(3.5, 1, 1.0, NULL), SPI_EINVAL);
  const double bad[] = {NAN, INFINITY, -INFINITY, -2.0, 0.0};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(spi_cost_break_even_tps(bad[i], 1, 1.0, &v), SPI_ERANGE);
    assert_int_equal(spi_cost_break_even_tps(3.5, 1, bad[i], &v), SPI_ERANGE);
  }
  assert_int_equal(spi_cost_break_even_tps(3.5, 0, 1.0, &v), SPI_ERANGE);
  assert_int_equal(spi_cost_break_even_tps(1e300, 8, 1e-300, &v), SPI_ERANGE);
  assert_int_equal(spi_cost_break_even_tps(1e-300, 1, 1e300, &v), SPI_ERANGE);
  assert_true(v == SENTINEL);
}

/* ------------------------------------------------------------------ spot */

static spi_spot_cost sentinel_spot(void) {
  spi_spot_cost sc;
  sc.struct_size = sizeof sc;
  sc.effective_hours = sc.spot_cost = sc.cost_per_effective_hour = SENTINEL;
  sc.on_demand_cost = sc.savings = sc.savings_fraction = SENTINEL;
  sc.expected_interruptions = SENTINEL;
  return sc;
}

static void assert_spot_untouched(const spi_spot_cost *sc) {
  assert_true(sc->effective_hours == SENTINEL);
  assert_true(sc->spot_cost == SENTINEL);
  assert_true(sc->cost_per_effective_hour == SENTINEL);
  assert_true(sc->on_demand_cost == SENTINEL);
  assert_true(sc->savings == SENTINEL);
  assert_true(sc->savings_fraction == SENTINEL);
  assert_true(sc->expected_interruptions == SENTINEL);
}

static void test_spot_worked(void **st) {
  (void)st;
  spi_spot_cost sc = sentinel_spot();
  assert_int_equal(
      spi_cost_spot_effective(1000.0, 1.80, 4.50, 0.05, 10.0 / 60.0, &sc),
      SPI_OK);
  /* 50 interruptions lose 50 * 10 min = 8.33 h of 1000. */
  NEAR(sc.expected_interruptions, 50.0, 1e-15);
  NEAR(sc.effective_hours, 1000.0 - 50.0 / 6.0, 1e-15);
  NEAR(sc.effective_hours, 991.6666666666666, 1e-15);
  NEAR(sc.spot_cost, 1800.0, 1e-15);
  /* 1800 / 991.67 = 216/119 */
  NEAR(sc.cost_per_effective_hour, 216.0 / 119.0, 1e-14);
  NEAR(sc.cost_per_effective_hour, 1.8151260504201681, 1e-14);
  NEAR(sc.on_demand_cost, 4462.5, 1e-14);
  NEAR(sc.savings, 2662.5, 1e-13);
  /* 2662.5 / 4462.5 = 71/119 */
  NEAR(sc.savings_fraction, 71.0 / 119.0, 1e-14);
  NEAR(sc.savings_fraction, 0.59663865546218486, 1e-14);

  /* As printed: $1.82, $4462.50, $2662.50, 59.66% / 59.6%. */
  char buf[64];
  snprintf(buf, sizeof buf, "%.2f", sc.cost_per_effective_hour);
  assert_string_equal(buf, "1.82");
  snprintf(buf, sizeof buf, "%.2f", sc.on_demand_cost);
  assert_string_equal(buf, "4462.50");
  snprintf(buf, sizeof buf, "%.2f", sc.savings);
  assert_string_equal(buf, "2662.50");
  snprintf(buf, sizeof buf, "%.2f%%", sc.savings_fraction * 100.0);
  assert_string_equal(buf, "59.66%");
  snprintf(buf, sizeof buf, "%.1f%%", sc.savings_fraction * 100.0);
  assert_string_equal(buf, "59.7%"); /* rounds; the 59.6 figure truncates */
  snprintf(buf, sizeof buf, "%.1f", sc.effective_hours);
  assert_string_equal(buf, "991.7");

  /* Without interruptions spot is the plain 60% discount. */
  sc = sentinel_spot();
  assert_int_equal(spi_cost_spot_effective(100, 1.80, 4.50, 0, 1, &sc), SPI_OK);
  NEAR(sc.effective_hours, 100, 0);
  NEAR(sc.spot_cost, 180, 1e-15);
  NEAR(sc.on_demand_cost, 450, 1e-15);
  NEAR(sc.savings, 270, 1e-15);
  NEAR(sc.savings_fraction, 0.6, 1e-15);
  NEAR(sc.expected_interruptions, 0, 0);

  /* Spot dearer than on-demand is a valid, negative saving. */
  sc = sentinel_spot();
  assert_int_equal(spi_cost_spot_effective(10, 5, 4, 0.5, 0.5, &sc), SPI_OK);
  NEAR(sc.effective_hours, 7.5, 1e-15);
  assert_true(sc.savings < 0 && sc.savings_fraction < 0);

  /* A bigger struct from a newer caller works; its tail is untouched. */
  struct {
    spi_spot_cost sc;
    double tail;
  } big;
  memset(&big, 0, sizeof big);
  big.sc.struct_size = sizeof big;
  big.tail = 42.0;
  assert_int_equal(
      spi_cost_spot_effective(1000, 1.8, 4.5, 0.05, 1.0 / 6, &big.sc), SPI_OK);
  assert_true(big.tail == 42.0);
}

static void test_spot_invalid(void **st) {
  (void)st;
  spi_spot_cost sc = sentinel_spot();
  assert_int_equal(spi_cost_spot_effective(1000, 1.8, 4.5, 0.05, 0.1, NULL),
                   SPI_EINVAL);
  sc.struct_size = sizeof sc - 1;
  assert_int_equal(spi_cost_spot_effective(1000, 1.8, 4.5, 0.05, 0.1, &sc),
                   SPI_EINVAL);
  sc.struct_size = 0;
  assert_int_equal(spi_cost_spot_effective(1000, 1.8, 4.5, 0.05, 0.1, &sc),
                   SPI_EINVAL);
  sc.struct_size = sizeof sc;
  /* Invalid struct wins over invalid numbers: the caller's bug first. */
  sc.struct_size = 4;
  assert_int_equal(spi_cost_spot_effective(NAN, 1.8, 4.5, 0.05, 0.1, &sc),
                   SPI_EINVAL);
  sc.struct_size = sizeof sc;

  const double nonfinite[] = {NAN, INFINITY, -INFINITY};
  for (size_t i = 0; i < 3; i++) {
    double b = nonfinite[i];
    assert_int_equal(spi_cost_spot_effective(b, 1.8, 4.5, 0.05, 0.1, &sc),
                     SPI_ERANGE);
    assert_int_equal(spi_cost_spot_effective(1000, b, 4.5, 0.05, 0.1, &sc),
                     SPI_ERANGE);
    assert_int_equal(spi_cost_spot_effective(1000, 1.8, b, 0.05, 0.1, &sc),
                     SPI_ERANGE);
    assert_int_equal(spi_cost_spot_effective(1000, 1.8, 4.5, b, 0.1, &sc),
                     SPI_ERANGE);
    assert_int_equal(spi_cost_spot_effective(1000, 1.8, 4.5, 0.05, b, &sc),
                     SPI_ERANGE);
  }
  /* Negative anything. */
  assert_int_equal(spi_cost_spot_effective(-1, 1.8, 4.5, 0.05, 0.1, &sc),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_spot_effective(1000, -1.8, 4.5, 0.05, 0.1, &sc),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_spot_effective(1000, 1.8, -4.5, 0.05, 0.1, &sc),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_spot_effective(1000, 1.8, 4.5, -0.05, 0.1, &sc),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_spot_effective(1000, 1.8, 4.5, 0.05, -0.1, &sc),
                   SPI_ERANGE);
  /* Zero where zero means nothing: hours and prices. */
  assert_int_equal(spi_cost_spot_effective(0, 1.8, 4.5, 0.05, 0.1, &sc),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_spot_effective(1000, 0, 4.5, 0.05, 0.1, &sc),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_spot_effective(1000, 1.8, 0, 0.05, 0.1, &sc),
                   SPI_ERANGE);
  /* A rate is a fraction of hours. */
  assert_int_equal(spi_cost_spot_effective(1000, 1.8, 4.5, 1.0001, 0.1, &sc),
                   SPI_ERANGE);
  /* Overhead that eats every hour (exactly, and more than). */
  assert_int_equal(spi_cost_spot_effective(1000, 1.8, 4.5, 1.0, 1.0, &sc),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_spot_effective(1000, 1.8, 4.5, 0.5, 3.0, &sc),
                   SPI_ERANGE);
  /* Overflow of the products. */
  assert_int_equal(spi_cost_spot_effective(1e300, 1e300, 4.5, 0, 0, &sc),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_spot_effective(1e300, 1.8, 1e300, 0, 0, &sc),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_spot_effective(DBL_MAX, 1.8, 4.5, 1, DBL_MAX, &sc),
                   SPI_ERANGE);
  assert_spot_untouched(&sc);

  /* The edges that are valid. */
  assert_int_equal(spi_cost_spot_effective(1000, 1.8, 4.5, 1.0, 0.999, &sc),
                   SPI_OK);
  NEAR(sc.effective_hours, 1.0, 1e-9);
}

/* ------------------------------------------------------------- self-host */

static void test_self_host(void **st) {
  (void)st;
  double v = 0;
  /* $3.50 * 720 h = $2520/month; / $0.90/M = 2.8e9 tokens/month. */
  assert_int_equal(spi_cost_self_host_break_even(3.5, 1, 720, 0.90, &v),
                   SPI_OK);
  NEAR(v, 2.8e9, 1e-14);
  assert_int_equal(spi_cost_self_host_break_even(3.5, 2, 720, 0.90, &v),
                   SPI_OK);
  NEAR(v, 5.6e9, 1e-14);

  v = SENTINEL;
  assert_int_equal(spi_cost_self_host_break_even(3.5, 1, 720, 0.9, NULL),
                   SPI_EINVAL);
  const double bad[] = {NAN, INFINITY, -INFINITY, -1.0, 0.0};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(spi_cost_self_host_break_even(bad[i], 1, 720, 0.9, &v),
                     SPI_ERANGE);
    assert_int_equal(spi_cost_self_host_break_even(3.5, 1, bad[i], 0.9, &v),
                     SPI_ERANGE);
    assert_int_equal(spi_cost_self_host_break_even(3.5, 1, 720, bad[i], &v),
                     SPI_ERANGE);
  }
  assert_int_equal(spi_cost_self_host_break_even(3.5, 0, 720, 0.9, &v),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_self_host_break_even(1e200, 1000, 1e200, 0.9, &v),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_self_host_break_even(1e200, 1, 1, 1e-200, &v),
                   SPI_ERANGE);
  assert_true(v == SENTINEL);
}

/* -------------------------------------------------------------- KV cache */

static void test_kv_bytes(void **st) {
  (void)st;
  double v = 0;
  /* Llama-3-8B: 2 * 32 * 8 * 128 * 4096 * 2 bytes = 512 MiB. */
  assert_int_equal(spi_cost_kv_bytes_per_sequence(32, 8, 128, 4096, 2.0, &v),
                   SPI_OK);
  assert_true(v == 536870912.0);
  /* INT8 cache halves it; fractional bytes (4-bit) are allowed. */
  assert_int_equal(spi_cost_kv_bytes_per_sequence(32, 8, 128, 4096, 1.0, &v),
                   SPI_OK);
  assert_true(v == 268435456.0);
  assert_int_equal(spi_cost_kv_bytes_per_sequence(32, 8, 128, 4096, 0.5, &v),
                   SPI_OK);
  assert_true(v == 134217728.0);
  /* The largest integer inputs are still a finite number of bytes. */
  assert_int_equal(spi_cost_kv_bytes_per_sequence(UINT32_MAX, UINT32_MAX,
                                                  UINT32_MAX, UINT32_MAX, 8.0,
                                                  &v),
                   SPI_OK);
  assert_true(isfinite(v) && v > 1e38);

  v = SENTINEL;
  assert_int_equal(spi_cost_kv_bytes_per_sequence(32, 8, 128, 4096, 2, NULL),
                   SPI_EINVAL);
  assert_int_equal(spi_cost_kv_bytes_per_sequence(0, 8, 128, 4096, 2, &v),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_kv_bytes_per_sequence(32, 0, 128, 4096, 2, &v),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_kv_bytes_per_sequence(32, 8, 0, 4096, 2, &v),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_kv_bytes_per_sequence(32, 8, 128, 0, 2, &v),
                   SPI_ERANGE);
  const double bad[] = {NAN, INFINITY, -INFINITY, -2.0, 0.0, -0.0};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(
        spi_cost_kv_bytes_per_sequence(32, 8, 128, 4096, bad[i], &v),
        SPI_ERANGE);
  /* Overflow: huge dims times a huge element size. */
  assert_int_equal(spi_cost_kv_bytes_per_sequence(UINT32_MAX, UINT32_MAX,
                                                  UINT32_MAX, UINT32_MAX,
                                                  1e300, &v),
                   SPI_ERANGE);
  assert_true(v == SENTINEL);
  /* Every factor is >= 1, so even the tiniest element size stays positive. */
  assert_int_equal(spi_cost_kv_bytes_per_sequence(1, 1, 1, 1, 4.9e-324, &v),
                   SPI_OK);
  assert_true(v > 0);
}

static void test_max_sequences(void **st) {
  (void)st;
  uint64_t n = 0;
  const double kv = 536870912.0;
  /* 80 GiB - 16 GiB = 64 GiB of 512 MiB sequences: 128 at full use. */
  assert_int_equal(spi_cost_max_sequences(80 * GIB, 16 * GIB, 1.0, kv, &n),
                   SPI_OK);
  assert_true(n == 128);
  /* At 0.9: 115.2, rounded down. */
  assert_int_equal(spi_cost_max_sequences(80 * GIB, 16 * GIB, 0.9, kv, &n),
                   SPI_OK);
  assert_true(n == 115);
  /* Decimal gigabytes: (80e9 - 16e9) * 0.9 / 512 MiB = 107.29. */
  assert_int_equal(spi_cost_max_sequences(80e9, 16e9, 0.9, kv, &n), SPI_OK);
  assert_true(n == 107);
  /* No room, or less than one sequence of room: 0, not an error. */
  assert_int_equal(spi_cost_max_sequences(80 * GIB, 80 * GIB, 0.9, kv, &n),
                   SPI_OK);
  assert_true(n == 0);
  assert_int_equal(spi_cost_max_sequences(16 * GIB + kv - 1, 16 * GIB, 1.0, kv,
                                          &n),
                   SPI_OK);
  assert_true(n == 0);
  /* No model (0 bytes) is allowed. */
  assert_int_equal(spi_cost_max_sequences(GIB, 0, 1.0, kv, &n), SPI_OK);
  assert_true(n == 2);
  /* 100 * 0.29 is 28.999999999999996 in binary; by hand it is 29. */
  assert_int_equal(spi_cost_max_sequences(100, 0, 0.29, 1, &n), SPI_OK);
  assert_true(n == 29);
  /* But a real shortfall still rounds down. */
  assert_int_equal(spi_cost_max_sequences(100, 0, 0.2899, 1, &n), SPI_OK);
  assert_true(n == 28);
  /* The slack is a few ulps, never a whole sequence: a large exact count
   * stays what it is (1e15 came out as 1e15 + 1, 2^53 as 2^53 + 1). */
  assert_int_equal(spi_cost_max_sequences(1e15, 0, 1.0, 1, &n), SPI_OK);
  assert_true(n == UINT64_C(1000000000000000));
  assert_int_equal(spi_cost_max_sequences(0x1p53, 0, 1.0, 1, &n), SPI_OK);
  assert_true(n == UINT64_C(1) << 53);
  assert_int_equal(spi_cost_max_sequences(0x1p40 + 0.5, 0, 1.0, 1, &n), SPI_OK);
  assert_true(n == UINT64_C(1) << 40);

  n = 777;
  assert_int_equal(spi_cost_max_sequences(80 * GIB, 16 * GIB, 0.9, kv, NULL),
                   SPI_EINVAL);
  const double bad[] = {NAN, INFINITY, -INFINITY, -1.0};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    double b = bad[i];
    assert_int_equal(spi_cost_max_sequences(b, 16 * GIB, 0.9, kv, &n),
                     SPI_ERANGE);
    assert_int_equal(spi_cost_max_sequences(80 * GIB, b, 0.9, kv, &n),
                     SPI_ERANGE);
    assert_int_equal(spi_cost_max_sequences(80 * GIB, 16 * GIB, b, kv, &n),
                     SPI_ERANGE);
    assert_int_equal(spi_cost_max_sequences(80 * GIB, 16 * GIB, 0.9, b, &n),
                     SPI_ERANGE);
  }
  /* Zero memory, zero utilisation, zero-byte sequences, utilisation > 1. */
  assert_int_equal(spi_cost_max_sequences(0, 0, 0.9, kv, &n), SPI_ERANGE);
  assert_int_equal(spi_cost_max_sequences(80 * GIB, 16 * GIB, 0, kv, &n),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_max_sequences(80 * GIB, 16 * GIB, 0.9, 0, &n),
                   SPI_ERANGE);
  assert_int_equal(spi_cost_max_sequences(80 * GIB, 16 * GIB, 1.01, kv, &n),
                   SPI_ERANGE);
  /* A model bigger than the GPU. */
  assert_int_equal(spi_cost_max_sequences(16 * GIB, 80 * GIB, 0.9, kv, &n),
                   SPI_ERANGE);
  /* More sequences than a uint64_t counts. */
  assert_int_equal(spi_cost_max_sequences(1e300, 0, 1, 1e-300, &n), SPI_ERANGE);
  assert_int_equal(spi_cost_max_sequences(1e30, 0, 1, 1, &n), SPI_ERANGE);
  assert_true(n == 777);
}

/* Whatever goes in, what comes out is an error or a finite number. */
static void test_never_nonfinite(void **st) {
  (void)st;
  const uint32_t gpus[] = {0, 1, 8, UINT32_MAX};
  for (size_t a = 0; a < N_AWKWARD; a++) {
    for (size_t b = 0; b < N_AWKWARD; b++) {
      for (size_t g = 0; g < 4; g++) {
        double v = SENTINEL;
        int rc =
            spi_cost_per_million_tokens(AWKWARD[a], gpus[g], AWKWARD[b], &v);
        assert_true(rc == SPI_OK ? isfinite(v) && v > 0
                                 : rc == SPI_ERANGE && v == SENTINEL);
        v = SENTINEL;
        rc = spi_cost_break_even_tps(AWKWARD[a], gpus[g], AWKWARD[b], &v);
        assert_true(rc == SPI_OK ? isfinite(v) && v > 0
                                 : rc == SPI_ERANGE && v == SENTINEL);
        v = SENTINEL;
        rc = spi_cost_self_host_break_even(AWKWARD[a], gpus[g], AWKWARD[b],
                                           AWKWARD[(a + b) % N_AWKWARD], &v);
        assert_true(rc == SPI_OK ? isfinite(v) && v > 0
                                 : rc == SPI_ERANGE && v == SENTINEL);
        v = SENTINEL;
        rc = spi_cost_kv_bytes_per_sequence(gpus[g], 8, gpus[(g + 1) % 4],
                                            4096, AWKWARD[a], &v);
        assert_true(rc == SPI_OK ? isfinite(v) && v > 0
                                 : rc == SPI_ERANGE && v == SENTINEL);
      }
      for (size_t c = 0; c < N_AWKWARD; c++) {
        uint64_t n = 777;
        int rc = spi_cost_max_sequences(AWKWARD[a], AWKWARD[b], AWKWARD[c],
                                        AWKWARD[(a * 7 + c) % N_AWKWARD], &n);
        assert_true(rc == SPI_OK || (rc == SPI_ERANGE && n == 777));
        for (size_t d = 0; d < N_AWKWARD; d += 3) {
          spi_spot_cost sc = sentinel_spot();
          rc = spi_cost_spot_effective(AWKWARD[a], AWKWARD[b], AWKWARD[c],
                                       AWKWARD[d] > 1 ? 0.5 : AWKWARD[d],
                                       AWKWARD[(a + d) % N_AWKWARD], &sc);
          if (rc == SPI_OK) {
            assert_true(isfinite(sc.effective_hours) && sc.effective_hours > 0);
            assert_true(isfinite(sc.spot_cost));
            assert_true(isfinite(sc.cost_per_effective_hour));
            assert_true(isfinite(sc.on_demand_cost));
            assert_true(isfinite(sc.savings));
            assert_true(isfinite(sc.savings_fraction));
            assert_true(isfinite(sc.expected_interruptions));
          } else {
            assert_int_equal(rc, SPI_ERANGE);
            assert_spot_untouched(&sc);
          }
        }
      }
    }
  }
}

/* ------------------------------------------------------ the cost module */

/* An allocator that counts and can fail the Nth allocation (1-based). */
typedef struct counting_alloc {
  long allocs;
  long frees;
  long fail_at; /* 0 = never */
} counting_alloc;

static void *counting_malloc(void *ud, size_t size) {
  counting_alloc *c = ud;
  if (c->fail_at && c->allocs + 1 == c->fail_at) {
    c->fail_at = 0; /* fail once, like a transient shortage */
    return NULL;
  }
  void *p = malloc(size);
  if (p) c->allocs++;
  return p;
}

static void counting_free(void *ud, void *p) {
  counting_alloc *c = ud;
  if (p) c->frees++;
  free(p);
}

typedef struct fixture {
  counting_alloc counts;
  spi_mem mem;
  spi_cost_model_module mod;
  char err[SPI_ERRMSG_CAP];
} fixture;

static int fixture_setup(void **st) {
  fixture *f = calloc(1, sizeof *f);
  if (!f) return -1;
  f->mem.alloc = counting_malloc;
  f->mem.free = counting_free;
  f->mem.user_data = &f->counts;
  spi__builtin_cost_model(&f->mod);
  *st = f;
  return 0;
}

static int fixture_teardown(void **st) {
  fixture *f = *st;
  /* Every test must leave nothing allocated. */
  int leaked = f->counts.allocs != f->counts.frees;
  free(f);
  return leaked ? -1 : 0;
}

static int configure(fixture *f, const char *json, void **inst) {
  f->err[0] = '\0';
  *inst = NULL;
  return f->mod.configure(&f->mem, json, json ? strlen(json) : 0, inst, f->err,
                          sizeof f->err);
}

static spi_request_view empty_view(void) {
  spi_request_view v;
  memset(&v, 0, sizeof v);
  v.struct_size = sizeof v;
  return v;
}

static int price(fixture *f, void *inst, const spi_request_view *v,
                 int32_t pool, spi_price *out) {
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  out->pool = pool;
  return f->mod.price(&f->mem, inst, v, pool, out);
}

static void test_module_struct(void **st) {
  fixture *f = *st;
  assert_int_equal(f->mod.abi_version, SPI_MODULE_ABI_VERSION);
  assert_int_equal(f->mod.struct_size, sizeof(spi_cost_model_module));
  assert_int_equal(f->mod.on_failure, SPI_ON_FAILURE_ERROR);
  assert_non_null(f->mod.configure);
  assert_non_null(f->mod.release);
  assert_non_null(f->mod.price);
}

static void test_module_price_defaults(void **st) {
  fixture *f = *st;
  void *inst = NULL;
  assert_int_equal(configure(f, "{}", &inst), SPI_OK);
  assert_non_null(inst);

  /* 1000 prompt tokens at 10000/s + 500 output at 1000/s = 0.6 s. */
  spi_request_view v = empty_view();
  v.prompt_tokens = 1000;
  v.prompt_tokens_set = 1;
  v.expected_output_tokens = 500;
  v.expected_output_tokens_set = 1;
  v.max_output_tokens = 4000; /* the expectation wins over the cap */
  v.max_output_tokens_set = 1;

  spi_price p;
  assert_int_equal(price(f, inst, &v, SPI_POOL_ON_DEMAND, &p), SPI_OK);
  assert_int_equal(p.pool, SPI_POOL_ON_DEMAND);
  NEAR(p.prompt_tokens, 1000, 0);
  NEAR(p.output_tokens, 500, 0);
  NEAR(p.gpu_seconds, 0.6, 1e-15);
  NEAR(p.usd, 0.6 * 4.5 / 3600, 1e-14); /* $0.00075 */
  NEAR(p.usd_per_million, 1.25, 1e-14); /* $4.50/h at 1000 tok/s */

  /* Spot: $1.80 adjusted for 5% interruptions losing 600 s each. */
  const double spot_hourly = 1.8 / (1.0 - 0.05 / 6.0); /* 1.8151... */
  assert_int_equal(price(f, inst, &v, SPI_POOL_SPOT, &p), SPI_OK);
  assert_int_equal(p.pool, SPI_POOL_SPOT);
  NEAR(p.gpu_seconds, 0.6, 1e-15);
  NEAR(p.usd, 0.6 * spot_hourly / 3600, 1e-14);
  NEAR(p.usd_per_million, spot_hourly / 3.6, 1e-14); /* $0.5042/M */
  NEAR(p.usd_per_million, 0.50420168067226889, 1e-14);

  f->mod.release(&f->mem, inst);
}

static void test_module_token_fallbacks(void **st) {
  fixture *f = *st;
  void *inst = NULL;
  assert_int_equal(configure(f, "{}", &inst), SPI_OK);
  spi_price p;

  /* Nothing known: prompt from bytes (4 per token, rounded up), output the
   * default 256. */
  static const uint8_t text[4001] = {0};
  spi_request_view v = empty_view();
  v.prompt = text;
  v.prompt_len = sizeof text;
  assert_int_equal(price(f, inst, &v, SPI_POOL_ON_DEMAND, &p), SPI_OK);
  NEAR(p.prompt_tokens, 1001, 0);
  NEAR(p.output_tokens, 256, 0);
  NEAR(p.gpu_seconds, 0.1001 + 0.256, 1e-15);

  v.prompt_len = 4000;
  assert_int_equal(price(f, inst, &v, SPI_POOL_ON_DEMAND, &p), SPI_OK);
  NEAR(p.prompt_tokens, 1000, 0);

  /* Token ids beat bytes; the cap stands in for an unknown expectation. */
  static const uint32_t ids[7] = {1, 2, 3, 4, 5, 6, 7};
  v.token_ids = ids;
  v.token_count = 7;
  v.max_output_tokens = 300;
  v.max_output_tokens_set = 1;
  assert_int_equal(price(f, inst, &v, SPI_POOL_SPOT, &p), SPI_OK);
  NEAR(p.prompt_tokens, 7, 0);
  NEAR(p.output_tokens, 300, 0);

  /* A given prompt_tokens beats both, even 0. */
  v.prompt_tokens = 0;
  v.prompt_tokens_set = 1;
  v.expected_output_tokens = 0;
  v.expected_output_tokens_set = 1;
  assert_int_equal(price(f, inst, &v, SPI_POOL_SPOT, &p), SPI_OK);
  NEAR(p.prompt_tokens, 0, 0);
  NEAR(p.output_tokens, 0, 0);
  NEAR(p.gpu_seconds, 0, 0);
  NEAR(p.usd, 0, 0);
  assert_true(p.usd_per_million > 0);

  /* Empty request: no prompt at all. */
  v = empty_view();
  assert_int_equal(price(f, inst, &v, SPI_POOL_ON_DEMAND, &p), SPI_OK);
  NEAR(p.prompt_tokens, 0, 0);
  NEAR(p.output_tokens, 256, 0);

  f->mod.release(&f->mem, inst);
}

static void test_module_price_configured(void **st) {
  fixture *f = *st;
  void *inst = NULL;
  assert_int_equal(
      configure(f,
                "{\"spot_usd_per_gpu_hour\":2.1,\"on_demand_usd_per_gpu_hour\":"
                "6,\"gpus_per_replica\":4,\"prefill_tokens_per_s\":20000,"
                "\"decode_tokens_per_s\":2500,\"spot_interruption_rate\":0.1,"
                "\"restart_overhead_s\":1800,\"default_output_tokens\":100,"
                "\"bytes_per_token\":2}",
                &inst),
      SPI_OK);
  spi_request_view v = empty_view();
  static const uint8_t text[100] = {0};
  v.prompt = text;
  v.prompt_len = 99; /* 49.5 -> 50 tokens */
  spi_price p;
  assert_int_equal(price(f, inst, &v, SPI_POOL_ON_DEMAND, &p), SPI_OK);
  NEAR(p.prompt_tokens, 50, 0);
  NEAR(p.output_tokens, 100, 0);
  const double secs = 50.0 / 20000 + 100.0 / 2500;
  NEAR(p.gpu_seconds, secs, 1e-15);
  NEAR(p.usd, secs * 4 * 6.0 / 3600, 1e-14);
  NEAR(p.usd_per_million, 6.0 * 4 / (2500 * 3600.0) * 1e6, 1e-14);

  /* 10% of hours interrupted, 30 min lost each: 95% of hours are useful. */
  const double spot_hourly = 2.1 / 0.95;
  assert_int_equal(price(f, inst, &v, SPI_POOL_SPOT, &p), SPI_OK);
  NEAR(p.usd, secs * 4 * spot_hourly / 3600, 1e-14);
  NEAR(p.usd_per_million, spot_hourly * 4 / (2500 * 3600.0) * 1e6, 1e-14);

  /* Integers where doubles go, and nulls meaning the default, are fine. */
  f->mod.release(&f->mem, inst);
  assert_int_equal(configure(f, "{\"spot_usd_per_gpu_hour\":2,"
                                "\"restart_overhead_s\":null}",
                             &inst),
                   SPI_OK);
  v = empty_view();
  assert_int_equal(price(f, inst, &v, SPI_POOL_SPOT, &p), SPI_OK);
  NEAR(p.usd_per_million, 2.0 / (1.0 - 0.05 / 6.0) / 3.6, 1e-14);
  f->mod.release(&f->mem, inst);
}

static void test_module_price_invalid(void **st) {
  fixture *f = *st;
  void *inst = NULL;
  assert_int_equal(configure(f, "{}", &inst), SPI_OK);
  spi_request_view v = empty_view();
  spi_price p;

  const int32_t pools[] = {0, 3, -1, 1000, INT32_MIN};
  for (size_t i = 0; i < sizeof pools / sizeof pools[0]; i++)
    assert_int_equal(price(f, inst, &v, pools[i], &p), SPI_EINVAL);

  assert_int_equal(f->mod.price(&f->mem, inst, &v, SPI_POOL_SPOT, NULL),
                   SPI_EINVAL);
  assert_int_equal(f->mod.price(&f->mem, inst, NULL, SPI_POOL_SPOT, &p),
                   SPI_EINVAL);
  assert_int_equal(f->mod.price(&f->mem, NULL, &v, SPI_POOL_SPOT, &p),
                   SPI_EINVAL);
  p.struct_size = sizeof p - 1;
  assert_int_equal(f->mod.price(&f->mem, inst, &v, SPI_POOL_SPOT, &p),
                   SPI_EINVAL);
  v.struct_size = 8;
  assert_int_equal(price(f, inst, &v, SPI_POOL_SPOT, &p), SPI_EINVAL);

  /* Negative counts are not a price; nothing is written. */
  v = empty_view();
  v.prompt_tokens = -1;
  v.prompt_tokens_set = 1;
  memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  p.usd = SENTINEL;
  assert_int_equal(f->mod.price(&f->mem, inst, &v, SPI_POOL_SPOT, &p),
                   SPI_ERANGE);
  assert_true(p.usd == SENTINEL);
  v = empty_view();
  v.expected_output_tokens = INT64_MIN;
  v.expected_output_tokens_set = 1;
  assert_int_equal(f->mod.price(&f->mem, inst, &v, SPI_POOL_ON_DEMAND, &p),
                   SPI_ERANGE);
  v = empty_view();
  v.max_output_tokens = -5;
  v.max_output_tokens_set = 1;
  assert_int_equal(f->mod.price(&f->mem, inst, &v, SPI_POOL_ON_DEMAND, &p),
                   SPI_ERANGE);
  assert_true(p.usd == SENTINEL);
  /* Only the count that is read is refused: an expected output wins over
   * max_output_tokens, whatever that says. */
  v.expected_output_tokens = 10;
  v.expected_output_tokens_set = 1;
  assert_int_equal(price(f, inst, &v, SPI_POOL_ON_DEMAND, &p), SPI_OK);
  assert_true(p.output_tokens == 10);
  v.expected_output_tokens = -1;
  v.max_output_tokens = 10;
  assert_int_equal(price(f, inst, &v, SPI_POOL_ON_DEMAND, &p), SPI_ERANGE);

  /* The largest counts still give finite, non-negative dollars. */
  v = empty_view();
  v.prompt_tokens = INT64_MAX;
  v.prompt_tokens_set = 1;
  v.expected_output_tokens = INT64_MAX;
  v.expected_output_tokens_set = 1;
  assert_int_equal(price(f, inst, &v, SPI_POOL_SPOT, &p), SPI_OK);
  assert_true(isfinite(p.usd) && p.usd > 0 && isfinite(p.gpu_seconds));
  v = empty_view();
  v.prompt_len = SIZE_MAX;
  assert_int_equal(price(f, inst, &v, SPI_POOL_SPOT, &p), SPI_OK);
  assert_true(isfinite(p.usd) && p.usd > 0);
  NEAR(p.prompt_tokens, (double)SIZE_MAX / 4, 1e-15);

  f->mod.release(&f->mem, inst);
}

static void expect_config_error(fixture *f, const char *json, int want,
                                const char *needle) {
  void *inst = (void *)&inst; /* must stay untouched */
  void *const before = inst;
  f->err[0] = '\0';
  int rc = f->mod.configure(&f->mem, json, strlen(json), &inst, f->err,
                            sizeof f->err);
  if (rc != want)
    fail_msg("config %s: status %d, want %d; message \"%s\"", json, rc, want,
             f->err);
  assert_ptr_equal(inst, before);
  if (!strstr(f->err, needle))
    fail_msg("config %s: message \"%s\" does not name \"%s\"", json, f->err,
             needle);
}

static void test_module_configure_errors(void **st) {
  fixture *f = *st;
  expect_config_error(f, "{\"bogus\":1}", SPI_EUNKNOWN, "cost.bogus");
  expect_config_error(f, "{\"spot_usd_per_gpu_hour\":1,\"bogus\":1}",
                      SPI_EUNKNOWN, "cost.bogus");
  expect_config_error(f, "{\"gpus_per_replica\":\"2\"}", SPI_ETYPE,
                      "cost.gpus_per_replica");
  expect_config_error(f, "{\"gpus_per_replica\":1.5}", SPI_ETYPE,
                      "cost.gpus_per_replica");
  expect_config_error(f, "{\"spot_usd_per_gpu_hour\":true}", SPI_ETYPE,
                      "cost.spot_usd_per_gpu_hour");
  expect_config_error(f, "{\"decode_tokens_per_s\":[1000]}", SPI_ETYPE,
                      "cost.decode_tokens_per_s");
  expect_config_error(f, "{\"spot_interruption_rate\":1.5}", SPI_ERANGE,
                      "cost.spot_interruption_rate");
  expect_config_error(f, "{\"spot_interruption_rate\":-0.1}", SPI_ERANGE,
                      "cost.spot_interruption_rate");
  expect_config_error(f, "{\"on_demand_usd_per_gpu_hour\":0}", SPI_ERANGE,
                      "cost.on_demand_usd_per_gpu_hour");
  expect_config_error(f, "{\"gpus_per_replica\":0}", SPI_ERANGE,
                      "cost.gpus_per_replica");
  expect_config_error(f, "{\"gpus_per_replica\":4096}", SPI_ERANGE,
                      "cost.gpus_per_replica");
  expect_config_error(f, "{\"prefill_tokens_per_s\":1e300}", SPI_ERANGE,
                      "cost.prefill_tokens_per_s");
  expect_config_error(f, "{\"bytes_per_token\":0.1}", SPI_ERANGE,
                      "cost.bytes_per_token");
  expect_config_error(f, "{\"default_output_tokens\":-1}", SPI_ERANGE,
                      "cost.default_output_tokens");
  /* Each option in range, but together the overhead eats every hour. */
  expect_config_error(f,
                      "{\"spot_interruption_rate\":1,"
                      "\"restart_overhead_s\":3600}",
                      SPI_ERANGE, "cost.restart_overhead_s");
  expect_config_error(f,
                      "{\"spot_interruption_rate\":0.5,"
                      "\"restart_overhead_s\":86400}",
                      SPI_ERANGE, "cost.restart_overhead_s");
  /* Not an object, or not JSON. */
  expect_config_error(f, "[]", SPI_ETYPE, "cost");
  expect_config_error(f, "2.5", SPI_ETYPE, "cost");
  expect_config_error(f, "{\"spot_usd_per_gpu_hour\":", SPI_EPARSE, "cost");
  expect_config_error(f, "{} {}", SPI_EPARSE, "cost");
  expect_config_error(f, "", SPI_EPARSE, "cost");
  expect_config_error(f, "{\"bytes_per_token\":4,\"bytes_per_token\":4}",
                      SPI_EPARSE, "cost.bytes_per_token");

  /* A short message buffer truncates but stays a string. */
  void *inst = NULL;
  char small[8];
  memset(small, 'x', sizeof small);
  assert_int_equal(f->mod.configure(&f->mem, "{\"bogus\":1}", 11, &inst, small,
                                    sizeof small),
                   SPI_EUNKNOWN);
  assert_int_equal(small[7], '\0');
  assert_null(inst);

  /* No place for the instance, or no allocator. */
  assert_int_equal(f->mod.configure(&f->mem, "{}", 2, NULL, f->err,
                                    sizeof f->err),
                   SPI_EINVAL);
  assert_int_equal(f->mod.configure(NULL, "{}", 2, &inst, f->err,
                                    sizeof f->err),
                   SPI_EINVAL);
  assert_int_equal(f->mod.configure(&f->mem, NULL, 5, &inst, f->err,
                                    sizeof f->err),
                   SPI_EINVAL);
  assert_null(inst);
  /* Release of nothing is harmless. */
  f->mod.release(&f->mem, NULL);
  assert_int_equal(f->counts.allocs, 0);
}

/* Fail each allocation configure makes in turn: ENOMEM, nothing leaked,
 * until it runs out of allocations to fail and succeeds. */
static void test_module_configure_enomem(void **st) {
  fixture *f = *st;
  const char *json = "{\"spot_usd_per_gpu_hour\":2.1}";
  int saw_enomem = 0;
  for (long n = 1; n < 64; n++) {
    f->counts.allocs = f->counts.frees = 0;
    f->counts.fail_at = n;
    void *inst = NULL;
    int rc = configure(f, json, &inst);
    if (rc == SPI_ENOMEM) {
      saw_enomem = 1;
      assert_null(inst);
      assert_int_equal(f->counts.allocs, f->counts.frees);
      assert_non_null(strstr(f->err, "cost"));
      continue;
    }
    assert_int_equal(rc, SPI_OK);
    assert_int_equal(f->counts.fail_at, n); /* nothing left to fail */
    f->mod.release(&f->mem, inst);
    assert_int_equal(f->counts.allocs, f->counts.frees);
    break;
  }
  assert_true(saw_enomem);
  f->counts.fail_at = 0;
}

/* Instances are independent snapshots: a new one does not change an old. */
static void test_module_instances_independent(void **st) {
  fixture *f = *st;
  void *a = NULL, *b = NULL;
  assert_int_equal(configure(f, "{}", &a), SPI_OK);
  assert_int_equal(configure(f, "{\"on_demand_usd_per_gpu_hour\":9}", &b),
                   SPI_OK);
  spi_request_view v = empty_view();
  spi_price pa, pb;
  assert_int_equal(price(f, a, &v, SPI_POOL_ON_DEMAND, &pa), SPI_OK);
  assert_int_equal(price(f, b, &v, SPI_POOL_ON_DEMAND, &pb), SPI_OK);
  NEAR(pb.usd, 2 * pa.usd, 1e-14);
  f->mod.release(&f->mem, a);
  assert_int_equal(price(f, b, &v, SPI_POOL_ON_DEMAND, &pb), SPI_OK);
  NEAR(pb.usd_per_million, 2.5, 1e-14);
  f->mod.release(&f->mem, b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_per_million_worked),
      cmocka_unit_test(test_per_million_invalid),
      cmocka_unit_test(test_break_even_tps),
      cmocka_unit_test(test_spot_worked),
      cmocka_unit_test(test_spot_invalid),
      cmocka_unit_test(test_self_host),
      cmocka_unit_test(test_kv_bytes),
      cmocka_unit_test(test_max_sequences),
      cmocka_unit_test(test_never_nonfinite),
      cmocka_unit_test_setup_teardown(test_module_struct, fixture_setup,
                                      fixture_teardown),
      cmocka_unit_test_setup_teardown(test_module_price_defaults,
                                      fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_module_token_fallbacks,
                                      fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_module_price_configured,
                                      fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_module_price_invalid,
                                      fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_module_configure_errors,
                                      fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_module_configure_enomem,
                                      fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_module_instances_independent,
                                      fixture_setup, fixture_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
