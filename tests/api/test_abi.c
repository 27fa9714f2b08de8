/*
 * test_abi.c - the ABI promises a user relies on, checked through the shared
 * library and the public headers only: versions agree, every status integer
 * has text, the name functions never return NULL, free functions take NULL.
 *
 * The checks that need tools rather than C (each header alone as C99 and
 * C++, the exported symbol list, the SONAME) are ctests of their own; see
 * tests/CMakeLists.txt.
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <spotinfer/spotinfer.h>
#include <spotinfer/spotinfer_extras.h>
#include <spotinfer/spotinfer_module.h>

static void test_version_getters_match_macros(void **state) {
  (void)state;
  assert_int_equal(spi_version_number(), SPI_VERSION_NUMBER);
  assert_int_equal(SPI_VERSION_NUMBER, SPI_VERSION_MAJOR * 10000 +
                                           SPI_VERSION_MINOR * 100 +
                                           SPI_VERSION_PATCH);
  const char *s = spi_version_string();
  assert_non_null(s);
  assert_string_equal(s, SPI_VERSION_STRING);

  char expect[32];
  snprintf(expect, sizeof expect, "%d.%d.%d", SPI_VERSION_MAJOR,
           SPI_VERSION_MINOR, SPI_VERSION_PATCH);
  assert_string_equal(SPI_VERSION_STRING, expect);
}

/*
 * Values of enum spi_status as of 0.1.0. Statuses added later are found by
 * the sweep below (any integer whose text is not the "unknown" text), so
 * this list only needs to hold what must never disappear.
 */
static const int released_statuses[] = {
    SPI_OK,     SPI_EINVAL,  SPI_EMISUSE,   SPI_ERANGE,   SPI_EBUFSIZE,
    SPI_EPARSE, SPI_ETYPE,   SPI_EUNKNOWN,  SPI_EMISSING, SPI_ETOOBIG,
    SPI_ENOMEM, SPI_EIO,     SPI_ENOTFOUND, SPI_EEXIST,   SPI_EMODULE,
    SPI_EABI,   SPI_ENOTSUP,
};
#define N_RELEASED (sizeof released_statuses / sizeof released_statuses[0])

static void test_strerror_never_null(void **state) {
  (void)state;
  const int extremes[] = {INT_MIN, INT_MIN + 1, INT_MAX - 1, INT_MAX};
  for (size_t i = 0; i < sizeof extremes / sizeof extremes[0]; i++) {
    const char *s = spi_strerror(extremes[i]);
    if (!s) fail_msg("spi_strerror(%d) returned NULL", extremes[i]);
    assert_true(strlen(s) > 0);
  }
  for (int v = -1000; v <= 1000; v++) {
    const char *s = spi_strerror(v);
    if (!s) fail_msg("spi_strerror(%d) returned NULL", v);
    if (s[0] == '\0') fail_msg("spi_strerror(%d) is empty", v);
  }
  /* Statuses are never positive: every positive value is unknown. */
  const char *unknown = spi_strerror(INT_MIN);
  for (int v = 1; v <= 1000; v++)
    if (strcmp(spi_strerror(v), unknown) != 0)
      fail_msg("spi_strerror(%d) is \"%s\", not the unknown text", v,
               spi_strerror(v));
}

static void test_strerror_distinct_for_each_status(void **state) {
  (void)state;
  const char *unknown = spi_strerror(INT_MIN);
  assert_string_equal(unknown, spi_strerror(INT_MAX));
  for (size_t i = 0; i < N_RELEASED; i++) {
    const char *a = spi_strerror(released_statuses[i]);
    if (strcmp(a, unknown) == 0 || strstr(a, "unknown status") != NULL)
      fail_msg("status %d has no text of its own: \"%s\"",
               released_statuses[i], a);
  }
  /* Every value with text of its own (the released ones and any added
   * since) has text no other value shares. */
  for (int a = -1000; a <= 0; a++) {
    const char *ta = spi_strerror(a);
    if (strcmp(ta, unknown) == 0) continue;
    for (int b = a + 1; b <= 0; b++)
      if (strcmp(ta, spi_strerror(b)) == 0)
        fail_msg("statuses %d and %d share the text \"%s\"", a, b, ta);
  }
}

/* Name functions: a name for every defined value, "invalid" otherwise. */
static void sweep_names(const char *(*fn)(int32_t), const int32_t *valid,
                        size_t n_valid, const char *what) {
  const int32_t probes[] = {INT32_MIN, INT32_MIN + 1, -1000, -2, -1, 0,   1,
                            2,         3,             4,     5,  6,  7,   8,
                            63,        64,            255,   256, 1000, 65536,
                            INT32_MAX - 1, INT32_MAX};
  for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
    const char *s = fn(probes[i]);
    if (!s) fail_msg("%s(%d) returned NULL", what, (int)probes[i]);
  }
  for (int32_t v = -300; v <= 300; v++)
    if (!fn(v)) fail_msg("%s(%d) returned NULL", what, (int)v);
  for (size_t i = 0; i < n_valid; i++) {
    const char *s = fn(valid[i]);
    assert_non_null(s);
    if (strcmp(s, "invalid") == 0)
      fail_msg("%s(%d) is \"invalid\" for a defined value", what,
               (int)valid[i]);
    for (size_t j = i + 1; j < n_valid; j++)
      if (strcmp(s, fn(valid[j])) == 0)
        fail_msg("%s: %d and %d share the name \"%s\"", what, (int)valid[i],
                 (int)valid[j], s);
  }
  assert_string_equal(fn(INT32_MAX), "invalid");
  assert_string_equal(fn(INT32_MIN), "invalid");
  assert_string_equal(fn(-1), "invalid");
}

static void test_class_names(void **state) {
  (void)state;
  const int32_t valid[] = {SPI_CLASS_UNSET, SPI_CLASS_GOLD, SPI_CLASS_SILVER,
                           SPI_CLASS_BRONZE};
  sweep_names(spi_class_name, valid, sizeof valid / sizeof valid[0],
              "spi_class_name");
  assert_string_equal(spi_class_name(SPI_CLASS_GOLD), "gold");
  assert_string_equal(spi_class_name(SPI_CLASS_SILVER), "silver");
  assert_string_equal(spi_class_name(SPI_CLASS_BRONZE), "bronze");
  assert_string_equal(spi_class_name(SPI_CLASS_UNSET), "unset");
  assert_string_equal(spi_class_name(4), "invalid");
}

static void test_service_tier_names(void **state) {
  (void)state;
  /* UNSET names as "", so it is left out of the distinctness sweep. */
  const int32_t valid[] = {SPI_SERVICE_TIER_AUTO, SPI_SERVICE_TIER_DEFAULT,
                           SPI_SERVICE_TIER_FLEX, SPI_SERVICE_TIER_PRIORITY,
                           SPI_SERVICE_TIER_SCALE};
  sweep_names(spi_service_tier_name, valid, sizeof valid / sizeof valid[0],
              "spi_service_tier_name");
  assert_string_equal(spi_service_tier_name(SPI_SERVICE_TIER_UNSET), "");
  assert_string_equal(spi_service_tier_name(SPI_SERVICE_TIER_AUTO), "auto");
  assert_string_equal(spi_service_tier_name(SPI_SERVICE_TIER_DEFAULT),
                      "default");
  assert_string_equal(spi_service_tier_name(SPI_SERVICE_TIER_FLEX), "flex");
  assert_string_equal(spi_service_tier_name(SPI_SERVICE_TIER_PRIORITY),
                      "priority");
  assert_string_equal(spi_service_tier_name(SPI_SERVICE_TIER_SCALE), "scale");
  assert_string_equal(spi_service_tier_name(6), "invalid");
}

static void test_module_kind_names(void **state) {
  (void)state;
  const int32_t valid[] = {SPI_MODULE_CLASSIFIER,    SPI_MODULE_KEY_BUILDER,
                           SPI_MODULE_POLICY,        SPI_MODULE_COST_MODEL,
                           SPI_MODULE_NOTICE_SOURCE, SPI_MODULE_REPLAY_STORE,
                           SPI_MODULE_FLEET_BUS};
  sweep_names(spi_module_kind_name, valid, sizeof valid / sizeof valid[0],
              "spi_module_kind_name");
  assert_string_equal(spi_module_kind_name(SPI_MODULE_CLASSIFIER),
                      "classifier");
  assert_string_equal(spi_module_kind_name(SPI_MODULE_KEY_BUILDER),
                      "key_builder");
  assert_string_equal(spi_module_kind_name(SPI_MODULE_POLICY), "policy");
  assert_string_equal(spi_module_kind_name(SPI_MODULE_COST_MODEL),
                      "cost_model");
  assert_string_equal(spi_module_kind_name(SPI_MODULE_NOTICE_SOURCE),
                      "notice_source");
  assert_string_equal(spi_module_kind_name(SPI_MODULE_REPLAY_STORE),
                      "replay_store");
  assert_string_equal(spi_module_kind_name(SPI_MODULE_FLEET_BUS),
                      "fleet_bus");
  assert_string_equal(spi_module_kind_name(0), "invalid");
  assert_string_equal(spi_module_kind_name(8), "invalid");
}

static void test_free_null_is_harmless(void **state) {
  (void)state;
  spi_engine_free(NULL);
  spi_request_free(NULL);
}

static void test_engine_round_trip(void **state) {
  (void)state;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  assert_non_null(e);
  assert_non_null(spi_engine_errmsg(e));
  assert_int_equal(spi_engine_configure(e, "{}", 2), SPI_OK);
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  assert_non_null(r);
  assert_non_null(spi_request_errmsg(r));
  /* Any id of 1..63 bytes may be excluded, one no replica has too. */
  assert_int_equal(spi_request_exclude_replica(r, "gone", 4), SPI_OK);
  assert_int_equal(spi_request_exclude_replica(NULL, "gone", 4), SPI_EMISUSE);
  spi_request_free(r);
  spi_engine_free(e);

  /* A constructor with nowhere to put the object fails cleanly. */
  assert_int_equal(spi_engine_new(NULL, NULL), SPI_EINVAL);
}

/* Structs callers allocate start with their size, so they can grow. */
static void test_struct_size_first(void **state) {
  (void)state;
  assert_int_equal(offsetof(spi_hooks, struct_size), 0);
  assert_int_equal(offsetof(spi_option_info, struct_size), 0);
  assert_int_equal(offsetof(spi_classification, struct_size), 0);
  assert_int_equal(offsetof(spi_spot_cost, struct_size), 0);
  assert_int_equal(offsetof(spi_price, struct_size), 0);
  assert_int_equal(offsetof(spi_request_view, struct_size), 0);
  assert_int_equal(offsetof(spi_classifier_module, abi_version), 0);
  assert_int_equal(offsetof(spi_classifier_module, struct_size), 4);
  assert_int_equal(offsetof(spi_key_builder_module, abi_version), 0);
  assert_int_equal(offsetof(spi_key_builder_module, struct_size), 4);
  assert_int_equal(offsetof(spi_cost_model_module, abi_version), 0);
  assert_int_equal(offsetof(spi_cost_model_module, struct_size), 4);
  /* The cache key is a wire value: two 64-bit halves, no padding. */
  assert_int_equal(sizeof(spi_cache_key), 16);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_version_getters_match_macros),
      cmocka_unit_test(test_strerror_never_null),
      cmocka_unit_test(test_strerror_distinct_for_each_status),
      cmocka_unit_test(test_class_names),
      cmocka_unit_test(test_service_tier_names),
      cmocka_unit_test(test_module_kind_names),
      cmocka_unit_test(test_free_null_is_harmless),
      cmocka_unit_test(test_engine_round_trip),
      cmocka_unit_test(test_struct_size_first),
  };
  return cmocka_run_group_tests_name("abi", tests, NULL, NULL);
}
