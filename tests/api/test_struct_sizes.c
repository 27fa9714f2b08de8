/*
 * test_struct_sizes.c - structs grow at the end, and struct_size says which
 * version a caller was built with: a module struct from a newer header
 * (larger) registers and works, a smaller one is refused; an output array of
 * ticket plans from a newer caller (larger elements) is written element by
 * element at the caller's stride, its unknown tails zeroed, and a stride
 * below this version's struct is refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <spotinfer/spotinfer.h>
#include <spotinfer/spotinfer_module.h>

static int cfg_ok(void *state, const char *json, size_t len, void **out,
                  char *err, size_t errcap) {
  (void)state;
  (void)json;
  (void)len;
  (void)err;
  (void)errcap;
  *out = NULL;
  return SPI_OK;
}

static int always_bronze(void *state, void *inst, const spi_request_view *req,
                         int32_t pressure, spi_classification *out) {
  (void)state;
  (void)inst;
  (void)req;
  (void)pressure;
  out->klass = SPI_CLASS_BRONZE;
  out->model_tier = SPI_TIER_LARGE;
  return SPI_OK;
}

/* What a module built against a newer header might pass: this version's
 * struct with fields after it that this version does not know. */
typedef struct newer_classifier {
  spi_classifier_module m;
  void *future_callback[3];
  uint64_t future_flags;
} newer_classifier;

static void test_newer_module_struct_is_accepted(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  newer_classifier big;
  memset(&big, 0xab, sizeof big);
  memset(&big.m, 0, sizeof big.m);
  big.m.abi_version = SPI_MODULE_ABI_VERSION;
  big.m.struct_size = (uint32_t)sizeof big;
  big.m.on_failure = SPI_ON_FAILURE_ERROR;
  big.m.configure = cfg_ok;
  big.m.classify = always_bronze;
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER,
                                              "newer", 5, &big, NULL, NULL),
                   SPI_OK);
  const char *cfg = "{\"modules\":{\"classifier\":\"newer\"}}";
  assert_int_equal(spi_engine_configure(e, cfg, strlen(cfg)), SPI_OK);
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  spi_request_add_message(r, "user", 4, "hi", 2);
  spi_classification c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  assert_int_equal(spi_classify(r, SPI_PRESSURE_NORMAL, &c), SPI_OK);
  assert_int_equal(c.klass, SPI_CLASS_BRONZE);
  spi_request_free(r);

  /* Smaller than the first version's struct (which ends before
   * classify_levels): refused, and says why. */
  spi_classifier_module small = big.m;
  small.struct_size = (uint32_t)(offsetof(spi_classifier_module, classify_levels) -
                                 sizeof(void *));
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER,
                                              "older", 5, &small, NULL, NULL),
                   SPI_EABI);
  assert_non_null(strstr(spi_engine_errmsg(e), "struct_size"));
  spi_engine_free(e);
}

/* A newer caller's plan: this version's struct and more after it. */
typedef struct newer_plan {
  spi_ticket_plan p;
  uint64_t future[3];
} newer_plan;

static void test_plan_array_at_the_callers_stride(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_replica_info ri;
  memset(&ri, 0, sizeof ri);
  ri.struct_size = sizeof ri;
  ri.id = "r1";
  ri.id_len = 2;
  ri.pool = SPI_POOL_ON_DEMAND;
  ri.usd_per_hour = 2;
  ri.max_inflight = 8;
  ri.node = "m1";
  ri.node_len = 2;
  assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  assert_int_equal(spi_replica_report_load(e, "r1", 2, &l), SPI_OK);
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  uint64_t tickets[2];
  for (int i = 0; i < 2; i++) {
    spi_request_reset(r);
    spi_request_add_message(r, "user", 4, "hello", 5);
    spi_decision d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    assert_int_equal(spi_route(r, &d), SPI_OK);
    assert_true(d.ticket != 0);
    tickets[i] = d.ticket;
  }
  spi_request_free(r);

  spi_notice n;
  memset(&n, 0, sizeof n);
  n.struct_size = sizeof n;
  n.kind = SPI_NOTICE_TERMINATE;
  n.active = 1;
  snprintf(n.node, sizeof n.node, "m1");
  size_t found = 0;
  /* Too small an element: refused before anything changes. */
  spi_ticket_plan small[2];
  memset(small, 0, sizeof small);
  small[0].struct_size = sizeof small[0] - 8;
  assert_int_equal(spi_engine_notice(e, &n, small, 2, &found), SPI_EINVAL);
  assert_non_null(strstr(spi_engine_errmsg(e), "struct_size"));
  int32_t state = 0;
  assert_int_equal(spi_node_get_state(e, "m1", 2, &state), SPI_OK);
  assert_int_equal(state, SPI_NODE_ACTIVE);

  newer_plan big[3];
  memset(big, 0xab, sizeof big);
  big[0].p.struct_size = sizeof big[0];
  assert_int_equal(spi_engine_notice(e, &n, &big[0].p, 3, &found), SPI_OK);
  assert_int_equal(found, 2);
  for (size_t i = 0; i < found; i++) {
    assert_int_equal(big[i].p.struct_size, sizeof big[0]);
    assert_true(big[i].p.ticket == tickets[0] || big[i].p.ticket == tickets[1]);
    assert_string_equal(big[i].p.replica_id, "r1");
    for (int k = 0; k < 3; k++) assert_true(big[i].future[k] == 0);
  }
  assert_true(big[0].p.ticket != big[1].p.ticket);
  /* Past the plans written, the caller's memory is untouched. */
  assert_true(big[2].p.ticket == 0xababababababababull);
  spi_engine_free(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_newer_module_struct_is_accepted),
      cmocka_unit_test(test_plan_array_at_the_callers_stride),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
