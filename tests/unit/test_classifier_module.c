/*
 * test_classifier_module.c - a caller's classifier module, asked once per
 * route.
 *
 * The spot pool runs hot and the on-demand pool cool, so a route classifies
 * at the spot pool's (higher) pressure and needs the plan at on-demand's,
 * where the gold request goes. A module with classify_levels answers for
 * every pressure at once and is asked once per route; a module with
 * classify only, including one built against a header older than
 * classify_levels, is asked again at the chosen pool's pressure, as before.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "spotinfer/spotinfer_module.h"
#include "fake_world.h"

typedef struct counter {
  int calls;
  int32_t pressures[8]; /* of classify calls, in order */
  int bad_level;        /* classify_levels returns tools_allowed 7 at CRITICAL */
} counter;

static int cfg_ok(void *state, const char *json, size_t len, void **instance,
                  char *err, size_t errcap) {
  (void)json, (void)len, (void)err, (void)errcap;
  *instance = state;
  return SPI_OK;
}

static void gold(spi_classification *out, const char *why) {
  out->klass = SPI_CLASS_GOLD;
  out->replayable = 0;
  out->model_tier = SPI_TIER_LARGE;
  snprintf(out->reason, sizeof out->reason, "%s", why);
}

/* Every pressure's plan: a cap of 100 * (pressure + 1), tools only at
 * normal pressure. */
static int levels_classify(void *state, void *inst, const spi_request_view *req,
                           spi_classification *out, spi_degrade_levels *lv) {
  (void)state, (void)req;
  counter *c = inst;
  c->calls++;
  gold(out, "levels");
  assert_int_equal(lv->struct_size, sizeof *lv);
  for (int p = 0; p < 4; p++) {
    assert_int_equal(lv->max_output_tokens[p], 0); /* cleared by the library */
    lv->max_output_tokens[p] = 100 * (p + 1);
    lv->tools_allowed[p] = p == SPI_PRESSURE_NORMAL;
  }
  if (c->bad_level) lv->tools_allowed[SPI_PRESSURE_CRITICAL] = 7;
  return SPI_OK;
}

/* The same answers, one pressure per call. */
static int plain_classify(void *state, void *inst, const spi_request_view *req,
                          int32_t pressure, spi_classification *out) {
  (void)state, (void)req;
  counter *c = inst;
  if (c->calls < 8) c->pressures[c->calls] = pressure;
  c->calls++;
  gold(out, "plain");
  out->max_output_tokens = 100 * (pressure + 1);
  out->tools_allowed = pressure == SPI_PRESSURE_NORMAL;
  return SPI_OK;
}

static spi_classifier_module module(int levels, int plain) {
  spi_classifier_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.on_failure = SPI_ON_FAILURE_ERROR;
  m.configure = cfg_ok;
  if (levels) m.classify_levels = levels_classify;
  if (plain) m.classify = plain_classify;
  return m;
}

/* A world whose classifier is m (state c), spot hot or not. */
static world *with(const spi_classifier_module *m, counter *c, double spot_kv) {
  world *w = mk(NULL);
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_CLASSIFIER,
                                              "counting", 8, m, c, NULL),
                   SPI_OK);
  const char *cfg = "{\"modules\":{\"classifier\":\"counting\"}}";
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_OK);
  add_replica(w, "od-a", SPI_POOL_ON_DEMAND, 64);
  add_replica(w, "spot-a", SPI_POOL_SPOT, 64);
  report_load(w, "od-a", 0, 0, 0.1);
  report_load(w, "spot-a", 0, 0, spot_kv);
  return w;
}

static int route(world *w, spi_decision *d) {
  static const char user[] = "summarise this for me";
  spi_request_reset(w->r);
  spi_request_set_str(w->r, SPI_REQ_MODEL, "llama", 5);
  spi_request_add_message(w->r, "user", 4, user, sizeof user - 1);
  memset(d, 0, sizeof *d);
  d->struct_size = sizeof *d;
  int rc = spi_route(w->r, d);
  if (rc == SPI_OK && d->ticket)
    assert_int_equal(finish_rc(w, d->ticket, SPI_TICKET_OK), SPI_OK);
  return rc;
}

/* The route needs two pressures; the module with levels is asked once per
 * route, and the plan is the chosen pool's level. */
static void test_levels_module_asked_once_per_route(void **st) {
  (void)st;
  counter c = {0};
  spi_classifier_module m = module(1, 1);
  world *w = with(&m, &c, 0.97);
  for (int i = 1; i <= 5; i++) {
    spi_decision d;
    assert_int_equal(route(w, &d), SPI_OK);
    assert_int_equal(c.calls, i);
    assert_int_equal(d.pool, SPI_POOL_ON_DEMAND);
    assert_int_equal(d.klass, SPI_CLASS_GOLD);
    assert_int_equal(d.pressure, SPI_PRESSURE_NORMAL);
    assert_int_equal(d.max_output_tokens, 100);
    assert_int_equal(d.tools_allowed, 1);
  }
  done(w);
}

/* The same world with a classify-only module: two calls a route, first at
 * the spot pool's pressure, then at on-demand's; the decisions agree. */
static void test_plain_module_asked_at_both_pressures(void **st) {
  (void)st;
  counter c = {0};
  spi_classifier_module m = module(0, 1);
  world *w = with(&m, &c, 0.97);
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(c.calls, 2);
  assert_true(c.pressures[0] > SPI_PRESSURE_NORMAL);
  assert_int_equal(c.pressures[1], SPI_PRESSURE_NORMAL);
  assert_int_equal(d.pool, SPI_POOL_ON_DEMAND);
  assert_int_equal(d.pressure, SPI_PRESSURE_NORMAL);
  assert_int_equal(d.max_output_tokens, 100);
  assert_int_equal(d.tools_allowed, 1);
  done(w);

  /* Both pools cool: one call. */
  memset(&c, 0, sizeof c);
  w = with(&m, &c, 0.1);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(c.calls, 1);
  done(w);
}

/* A module built against a header without classify_levels: its struct
 * ends before the field. It registers and is asked as before. */
static void test_older_module_struct_still_works(void **st) {
  (void)st;
  counter c = {0};
  spi_classifier_module m = module(0, 1);
  /* What lies past an older struct_size is not the module's: poison it. */
  memset(&m.classify_levels, 0xab, sizeof m.classify_levels);
  m.struct_size = (uint32_t)offsetof(spi_classifier_module, classify_levels);
  world *w = with(&m, &c, 0.97);
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(c.calls, 2);
  assert_int_equal(d.max_output_tokens, 100);
  done(w);

  /* Shorter than that: refused. */
  w = mk(NULL);
  m.struct_size -= (uint32_t)sizeof(void *);
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_CLASSIFIER,
                                              "short", 5, &m, &c, NULL),
                   SPI_EABI);
  /* Neither callback: refused. */
  m = module(0, 0);
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_CLASSIFIER,
                                              "none", 4, &m, &c, NULL),
                   SPI_EINVAL);
  done(w);
}

/* Every level is checked, even one the route does not use; spi_classify
 * picks the asked pressure's plan from a levels-only module. */
static void test_levels_checked_and_picked(void **st) {
  (void)st;
  counter c = {0};
  spi_classifier_module m = module(1, 0);
  world *w = with(&m, &c, 0.97);
  spi_classification cl;
  for (int32_t p = SPI_PRESSURE_NORMAL; p <= SPI_PRESSURE_CRITICAL; p++) {
    memset(&cl, 0, sizeof cl);
    cl.struct_size = sizeof cl;
    assert_int_equal(spi_classify(w->r, p, &cl), SPI_OK);
    assert_int_equal(cl.pressure, p);
    assert_int_equal(cl.max_output_tokens, 100 * (p + 1));
    assert_int_equal(cl.tools_allowed, p == SPI_PRESSURE_NORMAL);
    assert_string_equal(cl.reason, "levels");
  }
  assert_int_equal(c.calls, 4);
  c.bad_level = 1;
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_EMODULE);
  assert_non_null(strstr(spi_request_errmsg(w->r), "invalid classification"));
  done(w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_levels_module_asked_once_per_route),
      cmocka_unit_test(test_plain_module_asked_at_both_pressures),
      cmocka_unit_test(test_older_module_struct_still_works),
      cmocka_unit_test(test_levels_checked_and_picked),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
