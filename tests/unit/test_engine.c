/*
 * test_engine.c - engine life cycle, hooks, configuration validation and
 * snapshots, option listing, the module registry and module failure policy.
 */
#define _DEFAULT_SOURCE /* mincore */
#include <locale.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "watchdog.h"

/* ---------------------------------------------------------------- helpers */

static spi_engine *new_engine(void) {
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  assert_non_null(e);
  return e;
}

static int configure(spi_engine *e, const char *json) {
  return spi_engine_configure(e, json, strlen(json));
}

static void expect_config_error(const char *json, int status,
                                const char *msg_part) {
  spi_engine *e = new_engine();
  int rc = configure(e, json);
  if (rc != status || !strstr(spi_engine_errmsg(e), msg_part))
    print_error("config %s\n  got %d (%s) \"%s\", want %d containing \"%s\"\n",
                json, rc, spi_strerror(rc), spi_engine_errmsg(e), status,
                msg_part);
  assert_int_equal(rc, status);
  assert_non_null(strstr(spi_engine_errmsg(e), msg_part));
  spi_engine_free(e);
}

static char *config_dump(spi_engine *e) {
  size_t need = 0;
  assert_int_equal(spi_engine_config_json(e, NULL, 0, &need), SPI_EBUFSIZE);
  char *buf = malloc(need + 1);
  assert_non_null(buf);
  assert_int_equal(spi_engine_config_json(e, buf, need + 1, &need), SPI_OK);
  assert_int_equal(strlen(buf), need);
  return buf;
}

/* A counting allocator that can fail the Nth allocation. */
typedef struct counting {
  long allocs, frees;
  long fail_at; /* -1 = never */
} counting;

static void *c_alloc(void *ud, size_t n) {
  counting *c = ud;
  if (c->fail_at >= 0 && c->allocs == c->fail_at) {
    c->fail_at = -2; /* fail once, then behave */
    return NULL;
  }
  c->allocs++;
  return malloc(n);
}

static void c_free(void *ud, void *p) {
  counting *c = ud;
  c->frees++;
  free(p);
}

/* --------------------------------------------------------------- lifecycle */

static void test_new_free(void **st) {
  (void)st;
  spi_engine *e = new_engine();
  assert_string_equal(spi_engine_errmsg(e), "");
  spi_engine_free(e);
  spi_engine_free(NULL);
  assert_int_equal(spi_engine_new(NULL, NULL), SPI_EINVAL);
}

static void test_bad_hooks(void **st) {
  (void)st;
  spi_engine *e = (spi_engine *)1;
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h - 1;
  assert_int_equal(spi_engine_new(&e, &h), SPI_EINVAL);
  assert_null(e);
  h.struct_size = sizeof h;
  h.alloc = c_alloc; /* free missing */
  assert_int_equal(spi_engine_new(&e, &h), SPI_EINVAL);
  h.alloc = NULL;
  h.free = c_free;
  assert_int_equal(spi_engine_new(&e, &h), SPI_EINVAL);
}

static void test_misuse(void **st) {
  (void)st;
  spi_engine fake;
  memset(&fake, 0, sizeof fake);
  assert_int_equal(spi_engine_configure(&fake, "{}", 2), SPI_EMISUSE);
  assert_int_equal(spi_engine_configure(NULL, "{}", 2), SPI_EMISUSE);
  assert_string_equal(spi_engine_errmsg(NULL), "invalid engine handle");
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(&fake, &r), SPI_EMISUSE);
  spi_engine_free(&fake); /* wrong magic: ignored, not freed */
}

/* Every allocation of the engine goes through the hook and is returned. */
static void test_alloc_failure_loop(void **st) {
  (void)st;
  for (long n = 0;; n++) {
    counting c = {0, 0, n};
    spi_hooks h;
    memset(&h, 0, sizeof h);
    h.struct_size = sizeof h;
    h.alloc = c_alloc;
    h.free = c_free;
    h.alloc_user_data = &c;
    spi_engine *e = NULL;
    int rc = spi_engine_new(&e, &h);
    if (rc == SPI_OK) {
      rc = configure(e, "{\"cache_key\":{\"block_bytes\":64},"
                        "\"classifier\":{\"default_class\":\"gold\"}}");
      if (rc != SPI_OK) {
        assert_int_equal(rc, SPI_ENOMEM);
        assert_non_null(strstr(spi_engine_errmsg(e), "memory"));
      }
      spi_engine_free(e);
    } else {
      assert_int_equal(rc, SPI_ENOMEM);
      assert_null(e);
    }
    assert_int_equal(c.allocs, c.frees);
    if (c.fail_at == n) break; /* nothing failed: every step covered */
    assert_true(n < 10000);
  }
}

/* ----------------------------------------------------------------- hooks */

static int64_t fake_now(void *ud) { return *(int64_t *)ud; }

typedef struct logbook {
  int lines;
  char last[256];
} logbook;

static void log_line(void *ud, int32_t level, const char *msg, size_t len) {
  logbook *lb = ud;
  (void)level;
  lb->lines++;
  snprintf(lb->last, sizeof lb->last, "%.*s", (int)len, msg);
}

static void test_clock_hook(void **st) {
  (void)st;
  int64_t t = 1234567890123LL;
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = fake_now;
  h.clock_user_data = &t;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &h), SPI_OK);
  assert_int_equal(spi__engine_now(e), 1234567890123LL);
  t += 5;
  assert_int_equal(spi__engine_now(e), 1234567890128LL);
  spi_engine_free(e);
}

/* --------------------------------------------------------- configuration */

static void test_configure_defaults(void **st) {
  (void)st;
  spi_engine *e = new_engine();
  char *a = config_dump(e);
  assert_int_equal(configure(e, "{}"), SPI_OK);
  char *b = config_dump(e);
  assert_string_equal(a, b);
  /* Every section and some defaults are spelled out. */
  assert_non_null(strstr(a, "\"block_bytes\":"));
  assert_non_null(strstr(a, "\"max_messages\":2048"));
  assert_non_null(strstr(a, "\"classifier\":\"reference\""));
  assert_non_null(strstr(a, "\"interactive-sla\""));
  free(a);
  free(b);
  spi_engine_free(e);
}

static void test_configure_changes_dump(void **st) {
  (void)st;
  spi_engine *e = new_engine();
  assert_int_equal(configure(e, "{ \"limits\" : { \"max_messages\" : 7 } }"),
                   SPI_OK);
  char *a = config_dump(e);
  assert_non_null(strstr(a, "\"max_messages\":7"));
  /* A failed configure leaves the running snapshot alone. */
  assert_int_equal(configure(e, "{\"limits\":{\"max_messages\":0}}"),
                   SPI_ERANGE);
  char *b = config_dump(e);
  assert_string_equal(a, b);
  free(a);
  free(b);
  spi_engine_free(e);
}

/* JSON's whitespace is space, tab, LF and CR; cJSON would skip any byte
 * below 0x20. Before the configuration, between its tokens or after it,
 * such a byte is refused with its offset, and the running snapshot stays;
 * inside a string it is read like a letter (here: in an unknown key). */
static void test_config_control_bytes(void **st) {
  (void)st;
  static const char json[] = "{\"limits\":{\"max_messages\":7}}";
  const size_t len = sizeof json - 1;
  const size_t at[] = {0, 10, 11, len}; /* before, around the {, after */
  static const char bytes[] = {'\x01', '\x1f', '\x0b', '\0'};
  char t[sizeof json + 1], want[96];
  spi_engine *e = new_engine();
  char *before = config_dump(e);
  for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
    for (size_t k = 0; k < sizeof bytes; k++) {
      memcpy(t, json, at[i]);
      t[at[i]] = bytes[k];
      memcpy(t + at[i] + 1, json + at[i], len - at[i]);
      if (bytes[k] == 0)
        snprintf(want, sizeof want, "config: NUL byte at offset %zu", at[i]);
      else
        snprintf(want, sizeof want,
                 "config: control byte 0x%02x at byte offset %zu",
                 (unsigned)bytes[k], at[i]);
      int rc = spi_engine_configure(e, t, len + 1);
      if (rc != SPI_EPARSE || strcmp(spi_engine_errmsg(e), want) != 0)
        fail_msg("%d \"%s\", want \"%s\"", rc, spi_engine_errmsg(e), want);
    }
  }
  char *after = config_dump(e);
  assert_string_equal(before, after);
  free(before);
  free(after);
  assert_int_equal(spi_engine_configure(e, json, len), SPI_OK);
  spi_engine_free(e);
  expect_config_error("{\"limits\":{\"max_\x01messages\":7}}", SPI_EUNKNOWN,
                      "unknown key");
}

static void test_config_errors(void **st) {
  (void)st;
  expect_config_error("", SPI_EPARSE, "empty");
  expect_config_error("{\"limits\":", SPI_EPARSE, "byte offset");
  expect_config_error("[1,2]", SPI_ETYPE, "object");
  expect_config_error("{} x", SPI_EPARSE, "trailing data at byte offset 3");
  expect_config_error("{\"bogus\":1}", SPI_EUNKNOWN, "bogus: unknown key");
  expect_config_error("{\"limits\":{\"max_msgs\":1}}", SPI_EUNKNOWN,
                      "limits.max_msgs: unknown key");
  expect_config_error("{\"limits\":{\"max_messages\":\"9\"}}", SPI_ETYPE,
                      "limits.max_messages: must be an integer");
  expect_config_error("{\"limits\":{\"max_messages\":1.5}}", SPI_ETYPE,
                      "limits.max_messages");
  expect_config_error("{\"limits\":{\"max_messages\":0}}", SPI_ERANGE,
                      "limits.max_messages: must be an integer in [1, 1048576]");
  expect_config_error("{\"limits\":[]}", SPI_ETYPE, "limits: must be an object");
  expect_config_error("{\"limits\":{},\"limits\":{}}", SPI_EPARSE,
                      "limits: duplicate key");
  expect_config_error("{\"priority_map\":{\"vllm\":{\"gold\":5}}}", SPI_ERANGE,
                      "priority_map.vllm: must satisfy gold < silver < bronze");
  expect_config_error("{\"priority_map\":{\"service_tier\":{\"gold\":\"vip\"}}}",
                      SPI_EUNKNOWN, "priority_map.service_tier.gold");
  expect_config_error("{\"modules\":{\"classifier\":\"nope\"}}", SPI_ENOTFOUND,
                      "modules.classifier: no classifier module named \"nope\"");
  expect_config_error("{\"modules\":{\"classifier\":3}}", SPI_ETYPE,
                      "modules.classifier: must be a string");
  expect_config_error("{\"module_config\":{\"ghost\":{}}}", SPI_EUNKNOWN,
                      "module_config.ghost");
  expect_config_error("{\"cache_key\":{\"block_bytes\":1}}", SPI_ERANGE,
                      "cache_key.block_bytes");
  expect_config_error("{\"cost\":{\"spot_usd_per_gpu_hour\":-1}}", SPI_ERANGE,
                      "cost.spot_usd_per_gpu_hour");
  expect_config_error("{\"classifier\":{\"rules\":[{\"class\":\"gold\","
                      "\"when\":{\"stream\":1}}]}}",
                      SPI_ETYPE, "classifier.rules[0].when.stream");
}

/* Each numeric option rejects a value just past its bounds, naming itself. */
static void test_every_bound_enforced(void **st) {
  (void)st;
  size_t n = spi_option_count();
  int checked = 0;
  for (size_t i = 0; i < n; i++) {
    spi_option_info o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    assert_int_equal(spi_option_get(i, &o), SPI_OK);
    if ((o.type != SPI_OPT_INT && o.type != SPI_OPT_DOUBLE) ||
        strstr(o.path, "[]") || o.max_value >= 1e9)
      continue;
    /* Build {"a":{"b":value}} from "a.b". */
    char json[512], inner[64];
    double bad = o.max_value + (o.type == SPI_OPT_INT ? 1 : o.max_value);
    snprintf(inner, sizeof inner, "%.17g", bad);
    const char *dot = strchr(o.path, '.');
    if (!dot) continue;
    const char *dot2 = strchr(dot + 1, '.');
    if (dot2)
      snprintf(json, sizeof json, "{\"%.*s\":{\"%.*s\":{\"%s\":%s}}}",
               (int)(dot - o.path), o.path, (int)(dot2 - dot - 1), dot + 1,
               dot2 + 1, inner);
    else
      snprintf(json, sizeof json, "{\"%.*s\":{\"%s\":%s}}",
               (int)(dot - o.path), o.path, dot + 1, inner);
    expect_config_error(json, SPI_ERANGE, o.path);
    checked++;
  }
  assert_true(checked > 20);
}

/* Spot and on-demand prices of one completions request. */
static void prices(spi_engine *e, double usd[2]) {
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  const char *body = "{\"model\":\"m\",\"prompt\":\"hello\",\"max_tokens\":100}";
  assert_int_equal(spi_request_parse_openai(r, body, strlen(body),
                                            SPI_OPENAI_AUTO),
                   SPI_OK);
  const int32_t pools[2] = {SPI_POOL_SPOT, SPI_POOL_ON_DEMAND};
  for (int i = 0; i < 2; i++) {
    spi_price p = {.struct_size = sizeof p};
    assert_int_equal(spi_request_price(r, pools[i], &p), SPI_OK);
    usd[i] = p.usd;
  }
  spi_request_free(r);
}

/* Option defaults and given numbers are read the same whatever LC_NUMERIC
 * the host set: in a decimal-comma locale strtod read the default "0.85"
 * as 0, so spi_engine_new failed (router.kv_open 0 is out of range) and
 * "1.8" $/h became 1; with ps_AF's two-byte separator cJSON could read no
 * fraction at all ("out of memory"). Runs in each installed locale of the
 * list; skipped when there is none (LOCPATH may point at generated ones). */
static void test_defaults_in_comma_locale(void **st) {
  (void)st;
  static const char *const names[] = {"de_DE.UTF-8", "fr_FR.UTF-8",
                                      "ru_RU.UTF-8", "ps_AF.UTF-8"};
  spi_engine *c = new_engine();
  double want[2];
  prices(c, want);
  const char *given = "{\"router\":{\"kv_open\":0.9,\"kv_close\":0.8}}";
  assert_int_equal(configure(c, given), SPI_OK);
  char *want_dump = config_dump(c);
  int tried = 0;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (!setlocale(LC_NUMERIC, names[i])) continue;
    tried++;
    char probe[16];
    snprintf(probe, sizeof probe, "%.1f", 1.5);
    spi_engine *e = NULL;
    int rc = spi_engine_new(&e, NULL);
    int rc2 = rc == SPI_OK ? configure(e, "{}") : rc;
    double got[2] = {0, 0};
    if (rc2 == SPI_OK) prices(e, got);
    int rc3 = rc2 == SPI_OK ? configure(e, given) : rc2;
    char *dump = rc3 == SPI_OK ? config_dump(e) : NULL;
    setlocale(LC_NUMERIC, "C");
    if (strcmp(probe, "1.5") == 0) fail_msg("%s uses '.'", names[i]);
    if (rc != SPI_OK || rc2 != SPI_OK || rc3 != SPI_OK)
      fail_msg("%s: new %d, {} %d, given %d: %s", names[i], rc, rc2, rc3,
               e ? spi_engine_errmsg(e) : "");
    assert_true(got[0] == want[0]);
    assert_true(got[1] == want[1]);
    assert_string_equal(dump, want_dump);
    free(dump);
    spi_engine_free(e);
  }
  free(want_dump);
  spi_engine_free(c);
  if (!tried) skip();
}

static void test_option_listing(void **st) {
  (void)st;
  size_t n = spi_option_count();
  assert_true(n > 50);
  spi_option_info o;
  memset(&o, 0, sizeof o);
  assert_int_equal(spi_option_get(0, &o), SPI_EINVAL); /* struct_size 0 */
  o.struct_size = sizeof o;
  assert_int_equal(spi_option_get(n, &o), SPI_ENOTFOUND);
  assert_int_equal(spi_option_get(0, NULL), SPI_EINVAL);
  int found = 0;
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(spi_option_get(i, &o), SPI_OK);
    assert_non_null(o.path);
    assert_non_null(o.doc);
    assert_true(o.type >= SPI_OPT_BOOL && o.type <= SPI_OPT_OBJECT);
    assert_true(o.min_value <= o.max_value);
    /* Every default is JSON the engine itself can read back. */
    char json[2048];
    snprintf(json, sizeof json, "[%s]", o.default_json);
    spi_engine *e = new_engine();
    assert_int_equal(spi_engine_configure(e, "{}", 2), SPI_OK);
    spi_engine_free(e);
    if (strcmp(o.path, "cache_key.max_blocks") == 0) {
      found = 1;
      assert_int_equal(o.type, SPI_OPT_INT);
      assert_true(o.min_value >= 1);
    }
  }
  assert_true(found);
}

/* Configuring with every default spelled out is the same as "{}". */
static void test_dump_round_trips(void **st) {
  (void)st;
  spi_engine *e = new_engine();
  char *a = config_dump(e);
  assert_int_equal(configure(e, a), SPI_OK);
  char *b = config_dump(e);
  assert_string_equal(a, b);
  free(a);
  free(b);
  spi_engine_free(e);
}

static void test_configure_file(void **st) {
  (void)st;
  spi_engine *e = new_engine();
  assert_int_equal(spi_engine_configure_file(e, "/nonexistent/spi.json"),
                   SPI_EIO);
  assert_non_null(strstr(spi_engine_errmsg(e), "/nonexistent/spi.json"));
  /* A directory opens; reading it fails, and the message says why. */
  assert_int_equal(spi_engine_configure_file(e, "/tmp"), SPI_EIO);
  assert_non_null(strstr(spi_engine_errmsg(e), "/tmp: Is a directory"));
  char path[] = "/tmp/spi_cfg_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "w");
  fputs("{\"limits\":{\"max_messages\":9}}\n", f);
  fclose(f);
  assert_int_equal(spi_engine_configure_file(e, path), SPI_OK);
  char *d = config_dump(e);
  assert_non_null(strstr(d, "\"max_messages\":9"));
  free(d);
  remove(path);
  assert_int_equal(spi_engine_configure_file(e, NULL), SPI_EINVAL);
  spi_engine_free(e);
}

/* -------------------------------------------------------- module registry */

typedef struct user_clf {
  int destroyed;
  int fail;           /* classify returns this when non-zero */
  int bad_output;     /* classify returns an invalid class */
  char seen_config[128];
} user_clf;

static int uc_configure(void *state, const char *json, size_t len,
                        void **inst, char *err, size_t errcap) {
  user_clf *u = state;
  snprintf(u->seen_config, sizeof u->seen_config, "%.*s", (int)len, json);
  if (strstr(u->seen_config, "reject")) {
    snprintf(err, errcap, "reject: not today");
    return SPI_ERANGE;
  }
  *inst = u;
  return SPI_OK;
}

static int uc_classify(void *state, void *inst, const spi_request_view *v,
                       int32_t pressure, spi_classification *out) {
  user_clf *u = state;
  (void)v;
  (void)pressure;
  assert_ptr_equal(inst, u);
  if (u->fail) return u->fail;
  out->klass = u->bad_output ? 9 : SPI_CLASS_BRONZE;
  out->replayable = 1;
  out->model_tier = SPI_TIER_SMALL;
  out->tools_allowed = 1;
  snprintf(out->reason, sizeof out->reason, "user says bronze");
  return SPI_OK;
}

static void uc_destroy(void *state) { ((user_clf *)state)->destroyed++; }

static spi_classifier_module user_module(int32_t on_failure) {
  spi_classifier_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.on_failure = on_failure;
  m.configure = uc_configure;
  m.classify = uc_classify;
  return m;
}

static void classify_stream(spi_engine *e, int expect_rc,
                            spi_classification *out) {
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  assert_int_equal(spi_request_set_int(r, SPI_REQ_STREAM, 1), SPI_OK);
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  assert_int_equal(spi_classify(r, SPI_PRESSURE_NORMAL, out), expect_rc);
  if (expect_rc == SPI_EMODULE)
    assert_non_null(strstr(spi_request_errmsg(r), "classifier module"));
  spi_request_free(r);
}

static void test_register_and_select(void **st) {
  (void)st;
  user_clf u = {0};
  spi_engine *e = new_engine();
  spi_classifier_module m = user_module(SPI_ON_FAILURE_ERROR);
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER, "mine",
                                              4, &m, &u, uc_destroy),
                   SPI_OK);
  const char *name = NULL;
  assert_int_equal(spi_engine_module_name(e, SPI_MODULE_CLASSIFIER, 0, &name),
                   SPI_OK);
  assert_string_equal(name, "reference");
  assert_int_equal(spi_engine_module_name(e, SPI_MODULE_CLASSIFIER, 1, &name),
                   SPI_OK);
  assert_string_equal(name, "mine");
  assert_int_equal(spi_engine_module_name(e, SPI_MODULE_CLASSIFIER, 2, &name),
                   SPI_ENOTFOUND);

  spi_classification c;
  classify_stream(e, SPI_OK, &c);
  assert_int_equal(c.klass, SPI_CLASS_GOLD); /* still the reference */

  assert_int_equal(configure(e, "{\"modules\":{\"classifier\":\"mine\"},"
                                "\"module_config\":{\"mine\":{\"x\":1}}}"),
                   SPI_OK);
  assert_string_equal(u.seen_config, "{\"x\":1}");
  classify_stream(e, SPI_OK, &c);
  assert_int_equal(c.klass, SPI_CLASS_BRONZE);
  assert_string_equal(c.reason, "user says bronze");
  /* The library fills the vocabularies, not the module. */
  assert_int_equal(c.vllm_priority, 1);
  assert_int_equal(c.service_tier, SPI_SERVICE_TIER_FLEX);

  /* A module's configure error is reported with its path. */
  assert_int_equal(configure(e, "{\"modules\":{\"classifier\":\"mine\"},"
                                "\"module_config\":{\"mine\":{\"reject\":1}}}"),
                   SPI_ERANGE);
  assert_non_null(strstr(spi_engine_errmsg(e), "module_config.mine"));
  assert_non_null(strstr(spi_engine_errmsg(e), "not today"));

  spi_engine_free(e);
  assert_int_equal(u.destroyed, 1);
}

static void test_register_errors(void **st) {
  (void)st;
  user_clf u = {0};
  spi_engine *e = new_engine();
  spi_classifier_module m = user_module(SPI_ON_FAILURE_ERROR);
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER,
                                              "reference", 9, &m, &u, uc_destroy),
                   SPI_EEXIST);
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER, "a b",
                                              3, &m, &u, uc_destroy),
                   SPI_EINVAL);
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER, "", 0,
                                              &m, &u, uc_destroy),
                   SPI_EINVAL);
  assert_int_equal(spi_engine_register_module(e, 99, "x", 1, &m, &u, uc_destroy),
                   SPI_EINVAL);
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER, "x", 1,
                                              NULL, &u, uc_destroy),
                   SPI_EINVAL);
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_NOTICE_SOURCE, "x",
                                              1, &m, &u, uc_destroy),
                   SPI_ENOTSUP);
  spi_classifier_module bad = m;
  bad.abi_version = 2;
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER, "x", 1,
                                              &bad, &u, uc_destroy),
                   SPI_EABI);
  bad = m;
  bad.struct_size = 8;
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER, "x", 1,
                                              &bad, &u, uc_destroy),
                   SPI_EABI);
  bad = m;
  bad.classify = NULL;
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER, "x", 1,
                                              &bad, &u, uc_destroy),
                   SPI_EINVAL);
  bad = m;
  bad.on_failure = 7;
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER, "x", 1,
                                              &bad, &u, uc_destroy),
                   SPI_EINVAL);
  spi_engine_free(e);
  /* Failed registrations never call destroy. */
  assert_int_equal(u.destroyed, 0);
}

static void test_module_failure_policy(void **st) {
  (void)st;
  user_clf strict = {0}, lenient = {0};
  strict.fail = SPI_ERANGE;
  lenient.fail = SPI_ERANGE;
  spi_engine *e = new_engine();
  logbook lb = {0};
  e->log = log_line; /* set directly: the hook struct is copied at new */
  e->log_user_data = &lb;
  spi_classifier_module ms = user_module(SPI_ON_FAILURE_ERROR);
  spi_classifier_module ml = user_module(SPI_ON_FAILURE_FALLBACK);
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER,
                                              "strict", 6, &ms, &strict, NULL),
                   SPI_OK);
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER,
                                              "lenient", 7, &ml, &lenient, NULL),
                   SPI_OK);
  spi_classification c;
  assert_int_equal(configure(e, "{\"modules\":{\"classifier\":\"strict\"}}"),
                   SPI_OK);
  classify_stream(e, SPI_EMODULE, &c);
  strict.fail = 0;
  strict.bad_output = 1; /* claims success with class 9 */
  classify_stream(e, SPI_EMODULE, &c);

  assert_int_equal(configure(e, "{\"modules\":{\"classifier\":\"lenient\"}}"),
                   SPI_OK);
  classify_stream(e, SPI_OK, &c);
  assert_int_equal(c.klass, SPI_CLASS_GOLD); /* the built-in's verdict */
  assert_int_equal(lb.lines, 1);
  assert_non_null(strstr(lb.last, "lenient"));
  spi_engine_free(e);
}

/* A key builder that always fails. */
static int failing_key(void *state, void *inst, const spi_request_view *req,
                       spi_cache_key *out) {
  (void)state;
  (void)inst;
  (void)req;
  (void)out;
  return SPI_EIO;
}

static int no_blocks(void *state, void *inst, const spi_request_view *req,
                     const spi_cache_key *key, uint64_t *out, size_t cap,
                     size_t *n_out) {
  (void)state;
  (void)inst;
  (void)req;
  (void)key;
  (void)out;
  (void)cap;
  *n_out = 0;
  return SPI_OK;
}

static int key_configure(void *state, const char *json, size_t len,
                         void **inst, char *err, size_t errcap) {
  (void)json;
  (void)len;
  (void)err;
  (void)errcap;
  *inst = state;
  return SPI_OK;
}

/* The key builder, the block hashes and the price fall back as the
 * classifier does: the built-in answers, and a warning names the module. */
static void test_key_builder_fallback_logged(void **st) {
  (void)st;
  spi_engine *e = new_engine();
  logbook lb = {0};
  e->log = log_line;
  e->log_user_data = &lb;
  spi_key_builder_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.on_failure = SPI_ON_FAILURE_FALLBACK;
  m.configure = key_configure;
  m.build_key = failing_key;
  m.block_hashes = no_blocks;
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_KEY_BUILDER, "flaky",
                                              5, &m, NULL, NULL),
                   SPI_OK);
  assert_int_equal(configure(e, "{\"modules\":{\"key_builder\":\"flaky\"}}"),
                   SPI_OK);
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_PROMPT, "hello", 5), SPI_OK);
  spi_cache_key k;
  assert_int_equal(spi_request_cache_key(r, &k), SPI_OK);
  assert_int_equal(lb.lines, 1);
  assert_non_null(strstr(lb.last, "\"flaky\" failed; using built-in"));
  spi_request_free(r);
  spi_engine_free(e);
}

/* ------------------------------------------------------------- vocabulary */

static void test_names(void **st) {
  (void)st;
  assert_string_equal(spi_class_name(SPI_CLASS_GOLD), "gold");
  assert_string_equal(spi_class_name(42), "invalid");
  assert_string_equal(spi_service_tier_name(SPI_SERVICE_TIER_FLEX), "flex");
  assert_string_equal(spi_service_tier_name(-3), "invalid");
  assert_string_equal(spi_module_kind_name(SPI_MODULE_COST_MODEL), "cost_model");
  assert_string_equal(spi_module_kind_name(0), "invalid");
  for (int s = -100; s <= 5; s++) assert_non_null(spi_strerror(s));
}

/* ------------------------------------------------------------ concurrency */

typedef struct race {
  spi_engine *e;
  int iterations;
  int failures;
} race;

static void *classify_loop(void *arg) {
  race *rc = arg;
  spi_request *r = NULL;
  if (spi_request_new(rc->e, &r) != SPI_OK) {
    rc->failures++;
    return NULL;
  }
  spi_request_set_int(r, SPI_REQ_STREAM, 1);
  spi_request_add_message(r, "user", 4, "hello there", 11);
  for (int i = 0; i < rc->iterations; i++) {
    spi_classification c;
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    spi_cache_key k;
    if (spi_classify(r, SPI_PRESSURE_HIGH, &c) != SPI_OK ||
        spi_request_cache_key(r, &k) != SPI_OK)
      rc->failures++;
    else if (c.klass != SPI_CLASS_GOLD && c.klass != SPI_CLASS_BRONZE)
      rc->failures++;
  }
  spi_request_free(r);
  return NULL;
}

/* Reconfiguring while other threads classify: every call sees one whole
 * snapshot, old or new, and nothing is freed under a reader. */
static void test_reload_while_classifying(void **st) {
  (void)st;
  spi_engine *e = new_engine();
  race rc = {e, 3000, 0};
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&t[i], NULL, classify_loop, &rc), 0);
  for (int i = 0; i < 200; i++) {
    const char *cfg = (i & 1) ? "{\"classifier\":{\"honor_priority\":false,"
                                "\"default_class\":\"bronze\",\"rules\":[]}}"
                              : "{}";
    assert_int_equal(configure(e, cfg), SPI_OK);
  }
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  assert_int_equal(rc.failures, 0);
  spi_engine_free(e);
}

/* Resident memory of the process, in bytes (/proc/self/statm). */
static size_t resident_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  assert_non_null(f);
  unsigned long size = 0, resident = 0;
  assert_int_equal(fscanf(f, "%lu %lu", &size, &resident), 2);
  fclose(f);
  return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* ThreadSanitizer's calloc writes the block (and its shadow). */
#if defined(__SANITIZE_THREAD__)
#define SPI_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SPI_TEST_TSAN 1
#endif
#endif

/* Whether valgrind runs this process: its calloc writes every byte. */
static int under_valgrind(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  char line[512];
  int found = 0;
  while (f && !found && fgets(line, sizeof line, f))
    found = strstr(line, "vgpreload") != NULL;
  if (f) fclose(f);
  return found;
}

/* Resident pages of [p, p + len), by mincore: what this process's pages
 * are, whatever memory the allocator hands back from earlier tests. */
static size_t resident_pages_of(const void *p, size_t len) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  uintptr_t lo = (uintptr_t)p / page * page;
  uintptr_t hi = ((uintptr_t)p + len + page - 1) / page * page;
  size_t n = (hi - lo) / page, resident = 0;
  unsigned char *vec = malloc(n);
  assert_non_null(vec);
  assert_int_equal(mincore((void *)lo, hi - lo, vec), 0);
  for (size_t i = 0; i < n; i++) resident += vec[i] & 1u;
  free(vec);
  return resident;
}

/* A new engine with the default configuration writes its prefix index
 * (router.index_bytes, 8 MiB: every page, so that no route takes a page
 * fault on a bucket no insert has touched yet) and little else: the ticket
 * table (~8.5 MB of records) is made so that its pages are touched only
 * when used. Every page of each index is resident (mincore: the process's
 * growth alone is not a measure of it, since an engine's index may take
 * pages an earlier test freed and left resident), and the process grew by
 * less than an index and 2 MiB an engine. */
static void test_new_engine_writes_its_index_only(void **st) {
  (void)st;
#ifdef SPI_TEST_TSAN
  print_message("skipped under ThreadSanitizer (its calloc writes the block)\n");
  return;
#endif
  if (under_valgrind()) {
    print_message("skipped under valgrind (its calloc writes every byte)\n");
    return;
  }
  enum { N = 6 };
  const size_t index = (size_t)8 << 20, page = (size_t)sysconf(_SC_PAGESIZE);
  spi_engine *e[N];
  size_t before = resident_bytes();
  for (int i = 0; i < N; i++) assert_int_equal(spi_engine_new(&e[i], NULL), SPI_OK);
  size_t after = resident_bytes();
  size_t grew = after > before ? (after - before) / N : 0;
  print_message("resident growth per default engine: %zu bytes\n", grew);
  for (int i = 0; i < N; i++) {
    spi_prefix_index *ix = atomic_load(&e[i]->index);
    size_t bytes = spi__index_bytes(ix);
    assert_true(bytes > index / 4 * 3 && bytes <= index);
    /* A page at either end may hold other blocks; one the touch skips. */
    assert_true(resident_pages_of(ix, bytes) + 1 >= bytes / page);
  }
  assert_true(grew < index + ((size_t)2 << 20));
  for (int i = 0; i < N; i++) spi_engine_free(e[i]);
}

/* A classifier whose configure calls configure on an engine: its own
 * (which would deadlock: refused) or another (which may). */
typedef struct reentry {
  spi_engine *self, *other;
  int self_rc, other_rc;
} reentry;

static int reentry_configure(void *state, const char *json, size_t len,
                             void **instance, char *err, size_t errcap) {
  (void)json, (void)len, (void)err, (void)errcap;
  reentry *r = state;
  r->self_rc = configure(r->self, "{}");
  if (r->other) r->other_rc = configure(r->other, "{}");
  *instance = state;
  return SPI_OK;
}

static void test_configure_from_configure_callback(void **st) {
  (void)st;
  spi_engine *e = new_engine(), *e2 = new_engine();
  reentry r = {e, e2, -1, -1};
  spi_classifier_module m = user_module(SPI_ON_FAILURE_ERROR);
  m.configure = reentry_configure;
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_CLASSIFIER, "re",
                                              2, &m, &r, NULL),
                   SPI_OK);
  assert_int_equal(configure(e, "{\"modules\":{\"classifier\":\"re\"}}"),
                   SPI_OK);
  assert_int_equal(r.self_rc, SPI_EMISUSE);
  assert_int_equal(r.other_rc, SPI_OK); /* another engine is not refused */
  /* Once the callback is over, the thread configures e as any other. */
  assert_int_equal(configure(e, "{}"), SPI_OK);
  spi_engine_free(e);
  spi_engine_free(e2);
}

/* Nested: A's callback configures B, whose callback configures A again
 * (A's configuration lock is held: a deadlock if let through) and B. */
typedef struct nested {
  spi_engine *a, *b;
  int depth, a_again, b_again, b_rc;
} nested;

static int nested_configure(void *state, const char *json, size_t len,
                            void **instance, char *err, size_t errcap) {
  (void)json, (void)len, (void)err, (void)errcap;
  nested *n = state;
  *instance = state;
  if (n->depth++ == 0) {
    n->b_rc = configure(n->b, "{\"modules\":{\"classifier\":\"nest\"}}");
  } else {
    n->a_again = configure(n->a, "{}");
    n->b_again = configure(n->b, "{}");
  }
  return SPI_OK;
}

static void test_configure_nested_callbacks(void **st) {
  (void)st;
  spi_test_watchdog("a configure callback nested two engines deep", 30);
  nested n = {new_engine(), new_engine(), 0, -1, -1, -1};
  spi_classifier_module m = user_module(SPI_ON_FAILURE_ERROR);
  m.configure = nested_configure;
  for (int i = 0; i < 2; i++)
    assert_int_equal(spi_engine_register_module(i ? n.b : n.a,
                                                SPI_MODULE_CLASSIFIER, "nest",
                                                4, &m, &n, NULL),
                     SPI_OK);
  assert_int_equal(configure(n.a, "{\"modules\":{\"classifier\":\"nest\"}}"),
                   SPI_OK);
  assert_int_equal(n.b_rc, SPI_OK);
  assert_int_equal(n.a_again, SPI_EMISUSE);
  assert_int_equal(n.b_again, SPI_EMISUSE);
  spi_engine_free(n.a);
  spi_engine_free(n.b);
}

/* Two threads configuring one engine at once: each waits for the other,
 * and neither reads what the other writes unlocked (ThreadSanitizer). */
static void *configure_loop(void *arg) {
  spi_engine *e = arg;
  for (int i = 0; i < 300; i++) {
    const char *c = i & 1 ? "{\"router\":{\"ttft_base_ms\":50}}"
                          : "{\"router\":{\"ttft_base_ms\":60}}";
    if (configure(e, c) != SPI_OK) return (void *)1;
  }
  return NULL;
}

static void test_configure_on_two_threads(void **st) {
  (void)st;
  spi_engine *e = new_engine();
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&t[i], NULL, configure_loop, e), 0);
  for (int i = 0; i < 2; i++) {
    void *rc = NULL;
    assert_int_equal(pthread_join(t[i], &rc), 0);
    assert_null(rc);
  }
  spi_engine_free(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_new_free),
      cmocka_unit_test(test_bad_hooks),
      cmocka_unit_test(test_misuse),
      cmocka_unit_test(test_alloc_failure_loop),
      cmocka_unit_test(test_clock_hook),
      cmocka_unit_test(test_configure_defaults),
      cmocka_unit_test(test_configure_changes_dump),
      cmocka_unit_test(test_config_errors),
      cmocka_unit_test(test_config_control_bytes),
      cmocka_unit_test(test_every_bound_enforced),
      cmocka_unit_test(test_option_listing),
      cmocka_unit_test(test_dump_round_trips),
      cmocka_unit_test(test_configure_file),
      cmocka_unit_test(test_register_and_select),
      cmocka_unit_test(test_register_errors),
      cmocka_unit_test(test_module_failure_policy),
      cmocka_unit_test(test_configure_from_configure_callback),
      cmocka_unit_test(test_configure_on_two_threads),
      cmocka_unit_test(test_configure_nested_callbacks),
      cmocka_unit_test(test_key_builder_fallback_logged),
      cmocka_unit_test(test_names),
      cmocka_unit_test(test_defaults_in_comma_locale),
      cmocka_unit_test(test_reload_while_classifying),
      cmocka_unit_test(test_new_engine_writes_its_index_only),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
