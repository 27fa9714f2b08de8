/*
 * test_options.c - lookups in the option table (options.c): every row is
 * found by its path, nothing else is, and the order the search relies on
 * holds (checked here, not assumed).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "spi_internal.h"

/* The first lookups of the process race to build the sorted index; each
 * thread must see the whole index (run under ThreadSanitizer in CI). */
static void *look_up_all(void *arg) {
  (void)arg;
  size_t n = 0;
  const spi_optdesc *rows = spi__opt_table(&n);
  for (size_t i = 0; i < n; i++)
    if (spi__opt_find(rows[i].path) != &rows[i]) return (void *)1;
  return NULL;
}

static void test_first_use_from_threads(void **st) {
  (void)st;
  pthread_t t[4];
  for (int i = 0; i < 4; i++)
    assert_int_equal(pthread_create(&t[i], NULL, look_up_all, NULL), 0);
  for (int i = 0; i < 4; i++) {
    void *bad = (void *)1;
    assert_int_equal(pthread_join(t[i], &bad), 0);
    assert_null(bad);
  }
}

/* The index is a permutation of the rows, in strictly increasing path
 * order: sorted, and no path appears twice. */
static void test_index_sorted(void **st) {
  (void)st;
  size_t n = 0, m = 0;
  const spi_optdesc *rows = spi__opt_table(&n);
  const uint16_t *by = spi__opt_by_path(&m);
  assert_int_equal(m, n);
  assert_true(n > 100);
  assert_int_equal(spi_option_count(), n);
  unsigned char *seen = calloc(n, 1);
  assert_non_null(seen);
  for (size_t i = 0; i < n; i++) {
    assert_true(by[i] < n);
    assert_false(seen[by[i]]);
    seen[by[i]] = 1;
    if (i > 0) assert_true(strcmp(rows[by[i - 1]].path, rows[by[i]].path) < 0);
  }
  free(seen);
}

/* Every row by its path (a copy, so no pointer equality can help). */
static void test_every_option_found(void **st) {
  (void)st;
  size_t n = 0;
  const spi_optdesc *rows = spi__opt_table(&n);
  char path[256];
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(rows[i].path);
    assert_true(len > 0 && len < sizeof path);
    memcpy(path, rows[i].path, len + 1);
    assert_ptr_equal(spi__opt_find(path), &rows[i]);
    spi_option_info o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    assert_int_equal(spi_option_get(i, &o), SPI_OK);
    assert_ptr_equal(spi__opt_find(o.path), &rows[i]);
  }
}

/* Near misses of every path, and names outside the table's range. */
static void test_unknown_not_found(void **st) {
  (void)st;
  static const char *const none[] = {
      "", "a", "zzzz", "~", " router.max_tickets", "router.max_tickets ",
      "Router.max_tickets", "router.", "router.max_ticket", "rules",
      "classifier.rules[", "classifier.rules[0]", "cost.spot_usd_per_gpu_hou"};
  for (size_t i = 0; i < sizeof none / sizeof none[0]; i++)
    assert_null(spi__opt_find(none[i]));
  size_t n = 0;
  const spi_optdesc *rows = spi__opt_table(&n);
  char path[260];
  size_t tried = 0;
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(rows[i].path);
    /* One byte more, one byte less (unless that is a row itself, as
     * "classifier.rules" is of "classifier.rules[" + "]"), one byte
     * changed at each end. */
    memcpy(path, rows[i].path, len);
    memcpy(path + len, "x", 2);
    assert_null(spi__opt_find(path));
    path[len] = '\0';
    path[len - 1] = '\0';
    int is_row = 0;
    for (size_t j = 0; j < n; j++) is_row |= strcmp(rows[j].path, path) == 0;
    if (!is_row) assert_null(spi__opt_find(path));
    memcpy(path, rows[i].path, len + 1);
    path[0] = (char)(path[0] + 1);
    assert_null(spi__opt_find(path));
    memcpy(path, rows[i].path, len + 1);
    path[len - 1] = (char)(path[len - 1] - 1);
    is_row = 0;
    for (size_t j = 0; j < n; j++) is_row |= strcmp(rows[j].path, path) == 0;
    if (!is_row) assert_null(spi__opt_find(path));
    tried++;
  }
  assert_int_equal(tried, n);
}

/* Every number default reads (as config.c reads it, without strtod) as
 * the same double strtod gives in the C locale, and lies in its bounds. */
static void test_number_defaults(void **st) {
  (void)st;
  size_t n = 0, tried = 0;
  const spi_optdesc *rows = spi__opt_table(&n);
  for (size_t i = 0; i < n; i++) {
    if (rows[i].type != SPI_OPT_INT && rows[i].type != SPI_OPT_DOUBLE) continue;
    const char *t = rows[i].default_json;
    if (strcmp(t, "null") == 0) continue;
    double v = 0;
    if (spi__json_number(t, strlen(t), &v) != 0)
      fail_msg("%s: default %s is not a JSON number", rows[i].path, t);
    char *end = NULL;
    double c = strtod(t, &end);
    if (*end != '\0' || v != c)
      fail_msg("%s: default %s read as %.17g", rows[i].path, t, v);
    if (v < rows[i].min_value || v > rows[i].max_value)
      fail_msg("%s: default %s out of bounds", rows[i].path, t);
    tried++;
  }
  assert_true(tried > 50);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_first_use_from_threads),
      cmocka_unit_test(test_index_sorted),
      cmocka_unit_test(test_every_option_found),
      cmocka_unit_test(test_unknown_not_found),
      cmocka_unit_test(test_number_defaults),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
