/*
 * test_message_utf8.c - an error message cut to fit its buffer is still
 * UTF-8: neither the cut at the message's end nor a name shortened inside
 * it splits a character. Names and module texts here are made of two- and
 * three-byte characters, each tried at every offset a cut can fall on.
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

#define EURO "\xe2\x82\xac" /* U+20AC: three bytes */
#define EACUTE "\xc3\xa9"   /* U+00E9: two bytes */

/* Whether s is well-formed UTF-8 (no sequence cut short, none overlong). */
static int utf8_valid(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    unsigned char c = *p;
    int n = c < 0x80 ? 0 : c >= 0xC2 && c < 0xE0 ? 1 : c >= 0xE0 && c < 0xF0 ? 2
            : c >= 0xF0 && c < 0xF5 ? 3 : -1;
    if (n < 0) return 0;
    p++;
    for (int i = 0; i < n; i++, p++)
      if ((*p & 0xC0) != 0x80) return 0;
  }
  return 1;
}

#define assert_utf8(s)                                                      \
  do {                                                                      \
    const char *m_ = (s);                                                   \
    if (!utf8_valid(m_)) fail_msg("not UTF-8 (%zu bytes): %s", strlen(m_), m_); \
  } while (0)

/* Whether msg holds two of the characters the names here are made of. */
static int has_chars(const char *msg) {
  return strstr(msg, EACUTE EACUTE) || strstr(msg, EURO EURO);
}

/* A message that names a cut name or value (what): it holds the name's
 * characters, and every character it holds is whole. */
static void assert_cut_message(const char *msg, const char *what) {
  if (!has_chars(msg)) fail_msg("the %s is not in: %s", what, msg);
  assert_utf8(msg);
}

/* pad ASCII bytes, then count copies of ch, NUL-terminated in buf. */
static const char *text_of(char *buf, size_t cap, int pad, const char *ch,
                           int count) {
  size_t used = 0;
  for (int i = 0; i < pad && used + 1 < cap; i++) buf[used++] = 'a';
  size_t cl = strlen(ch);
  for (int i = 0; i < count && used + cl < cap; i++, used += cl)
    memcpy(buf + used, ch, cl);
  buf[used] = '\0';
  return buf;
}

/* ------------------------------------------ a message cut at its end */

/* A policy module whose configure fails with a message that fills the
 * buffer it is given, in whole characters; the library prefixes it with
 * the module's name and path, so the whole no longer fits. */
typedef struct { int pad; } fail_state;

static int fail_configure(void *state, const char *json, size_t len,
                          void **out, char *errbuf, size_t errcap) {
  (void)json;
  (void)len;
  (void)out;
  const fail_state *f = state;
  char buf[1024];
  text_of(buf, sizeof buf, f->pad, EURO, 400);
  size_t n = strlen(buf) < errcap - 1 ? strlen(buf) : errcap - 1;
  while (n > 0 && ((unsigned char)buf[n] & 0xC0) == 0x80) n--;
  memcpy(errbuf, buf, n);
  errbuf[n] = '\0';
  return SPI_EMODULE;
}

static int never_choose(void *state, void *inst, const spi_route_context *ctx,
                        spi_policy_choice *out) {
  (void)state;
  (void)inst;
  (void)ctx;
  (void)out;
  return SPI_EMODULE;
}

static void test_module_message_cut_at_its_end(void **st) {
  (void)st;
  for (int pad = 0; pad < 3; pad++) {
    spi_engine *e = NULL;
    assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
    fail_state f = {pad};
    spi_policy_module m;
    memset(&m, 0, sizeof m);
    m.abi_version = SPI_MODULE_ABI_VERSION;
    m.struct_size = sizeof m;
    m.configure = fail_configure;
    m.choose = never_choose;
    assert_int_equal(spi_engine_register_module(e, SPI_MODULE_POLICY, "fails",
                                                5, &m, &f, NULL),
                     SPI_OK);
    const char *cfg = "{\"modules\":{\"policy\":\"fails\"}}";
    assert_int_not_equal(spi_engine_configure(e, cfg, strlen(cfg)), SPI_OK);
    const char *msg = spi_engine_errmsg(e);
    assert_non_null(strstr(msg, "\"fails\""));
    assert_non_null(strstr(msg, EURO EURO));
    assert_utf8(msg);
    spi_engine_free(e);
  }
}

/* ------------------------------------ a name shortened inside a message */

static void configure_fails_utf8(spi_engine *e, const char *fmt,
                                 const char *name) {
  char cfg[1024];
  snprintf(cfg, sizeof cfg, fmt, name);
  assert_int_not_equal(spi_engine_configure(e, cfg, strlen(cfg)), SPI_OK);
  assert_cut_message(spi_engine_errmsg(e), "name");
}

static void test_config_names_cut_between_characters(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  char name[512];
  for (int pad = 0; pad < 3; pad++) {
    text_of(name, sizeof name, pad, pad == 2 ? EURO : EACUTE, 60);
    /* module_config.<key>: must be an object */
    configure_fails_utf8(e, "{\"module_config\":{\"%s\":1}}", name);
    /* module_config.<key>: no user module of that name */
    configure_fails_utf8(e, "{\"module_config\":{\"%s\":{}}}", name);
    /* modules.policy: no policy module named "<name>" */
    configure_fails_utf8(e, "{\"modules\":{\"policy\":\"%s\"}}", name);
    /* a value none of the expected ones */
    configure_fails_utf8(e, "{\"policy\":{\"default_pool\":\"%s\"}}", name);
  }
  spi_engine_free(e);
}

static void test_replay_store_name_cut_between_characters(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  char name[512], cfg[1024];
  for (int pad = 0; pad < 3; pad++) {
    text_of(name, sizeof name, pad, pad == 2 ? EURO : EACUTE, 60);
    static const char *const cfgs[] = {
        "{\"store\":\"%s\"}", "{\"fsync\":\"%s\"}",
        "{\"dir\":\"/nonexistent/%s/%s/q\"}"};
    for (size_t c = 0; c < 3; c++) {
      snprintf(cfg, sizeof cfg, cfgs[c], name, name);
      spi_replay_queue *q = NULL;
      assert_int_not_equal(spi_replay_open(e, cfg, strlen(cfg), &q), SPI_OK);
      assert_null(q);
      assert_cut_message(spi_engine_errmsg(e), "name");
    }
  }
  spi_engine_free(e);
}

/* A config file's path, shortened in its message. */
static void test_config_path_cut_between_characters(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  char name[512], path[1024];
  for (int pad = 0; pad < 3; pad++) {
    text_of(name, sizeof name, pad, pad == 2 ? EURO : EACUTE, 100);
    snprintf(path, sizeof path, "/nonexistent/%s.json", name);
    assert_int_equal(spi_engine_configure_file(e, path), SPI_EIO);
    assert_cut_message(spi_engine_errmsg(e), "path");
  }
  spi_engine_free(e);
}

/* A request body's names: a duplicate key, a metadata key, a role. */
#define MSG "[{\"role\":\"user\",\"content\":\"x\"}]"
static void test_request_names_cut_between_characters(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  static const char *const bodies[] = {
      "{\"model\":\"m\",\"messages\":" MSG ",\"%s\":1,\"%s\":2}",
      "{\"model\":\"m\",\"messages\":" MSG ",\"metadata\":{\"%s\":1}}",
      "{\"model\":\"m\",\"messages\":[{\"role\":\"%s\",\"content\":\"x\"}]}",
  };
  char name[512], body[2048];
  for (size_t b = 0; b < sizeof bodies / sizeof bodies[0]; b++)
    for (int pad = 0; pad < 3; pad++) {
      text_of(name, sizeof name, pad, pad == 2 ? EURO : EACUTE, 60);
      snprintf(body, sizeof body, bodies[b], name, name);
      assert_int_not_equal(spi_request_parse_openai(r, body, strlen(body), 0),
                           SPI_OK);
      assert_cut_message(spi_request_errmsg(r), "name");
    }
  spi_request_free(r);
  spi_engine_free(e);
}

/* The request setters' values: a class, a service tier, a role, and a
 * metadata value that should be a number or a boolean. */
static void test_request_values_cut_between_characters(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  static const char *const bodies[] = {
      "{\"model\":\"m\",\"messages\":" MSG ",\"metadata\":{\"replayable\":\"%s\"}}",
      "{\"model\":\"m\",\"messages\":" MSG ",\"metadata\":{\"priority\":\"%s\"}}",
  };
  char name[512], body[2048];
  for (int pad = 0; pad < 3; pad++) {
    text_of(name, sizeof name, pad, pad == 2 ? EURO : EACUTE, 60);
    const int32_t fields[] = {SPI_REQ_CLASS, SPI_REQ_SERVICE_TIER};
    for (size_t f = 0; f < 2; f++) {
      assert_int_not_equal(spi_request_set_str(r, fields[f], name, strlen(name)), SPI_OK);
      assert_cut_message(spi_request_errmsg(r), "value");
    }
    assert_int_not_equal(spi_request_add_message(r, name, strlen(name), "x", 1), SPI_OK);
    assert_cut_message(spi_request_errmsg(r), "role");
    for (size_t b = 0; b < sizeof bodies / sizeof bodies[0]; b++) {
      snprintf(body, sizeof body, bodies[b], name);
      assert_int_not_equal(spi_request_parse_openai(r, body, strlen(body), 0), SPI_OK);
      assert_cut_message(spi_request_errmsg(r), "value");
    }
  }
  spi_request_free(r);
  spi_engine_free(e);
}

/* The classifier's rules: a metadata key too long, a service tier it does
 * not know; and a fleet bus module that is not registered. */
static void test_classifier_and_bus_names_cut_between_characters(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  char name[512];
  for (int pad = 0; pad < 3; pad++) {
    text_of(name, sizeof name, pad, pad == 2 ? EURO : EACUTE, 60);
    configure_fails_utf8(e,
                         "{\"classifier\":{\"rules\":[{\"class\":\"gold\","
                         "\"when\":{\"metadata\":{\"%s\":[\"x\"]}}}]}}",
                         name);
    configure_fails_utf8(e,
                         "{\"classifier\":{\"rules\":[{\"class\":\"gold\","
                         "\"when\":{\"service_tier\":[\"%s\"]}}]}}",
                         name);
    configure_fails_utf8(e, "{\"modules\":{\"fleet_bus\":\"%s\"}}", name);
  }
  spi_engine_free(e);
}

/* A fleet bus whose every poll hands in one message of a type no engine
 * reads, named by text. */
static int bus_configure(void *state, const char *json, size_t len,
                         void **out, char *errbuf, size_t errcap) {
  (void)json;
  (void)len;
  (void)errbuf;
  (void)errcap;
  *out = state;
  return SPI_OK;
}

static void bus_release(void *state, void *inst) {
  (void)state;
  (void)inst;
}

static int bus_publish(void *state, void *inst, const char *msg, size_t len,
                       char *errbuf, size_t errcap) {
  (void)state;
  (void)inst;
  (void)msg;
  (void)len;
  (void)errbuf;
  (void)errcap;
  return SPI_OK;
}

static int bus_poll(void *state, void *inst, size_t max, spi_fleet_msg_fn fn,
                    void *ud, char *errbuf, size_t errcap) {
  (void)inst;
  (void)errbuf;
  (void)errcap;
  char msg[1024];
  snprintf(msg, sizeof msg, "{\"type\":\"%s\",\"v\":1}", (const char *)state);
  return max ? (fn(ud, msg, strlen(msg)), SPI_OK) : SPI_OK;
}

static void test_bus_message_type_cut_between_characters(void **st) {
  (void)st;
  char name[512];
  for (int pad = 0; pad < 3; pad++) {
    text_of(name, sizeof name, pad, pad == 2 ? EURO : EACUTE, 60);
    spi_engine *e = NULL;
    assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
    spi_fleet_bus_module m;
    memset(&m, 0, sizeof m);
    m.abi_version = SPI_MODULE_ABI_VERSION;
    m.struct_size = sizeof m;
    m.configure = bus_configure;
    m.release = bus_release;
    m.publish = bus_publish;
    m.poll = bus_poll;
    assert_int_equal(spi_engine_register_module(e, SPI_MODULE_FLEET_BUS, "b", 1,
                                                &m, name, NULL),
                     SPI_OK);
    const char *cfg = "{\"modules\":{\"fleet_bus\":\"b\"}}";
    assert_int_equal(spi_engine_configure(e, cfg, strlen(cfg)), SPI_OK);
    spi_engine_tick(e);
    spi_fleet_stats fs;
    memset(&fs, 0, sizeof fs);
    fs.struct_size = sizeof fs;
    assert_int_equal(spi_engine_fleet_stats(e, &fs), SPI_OK);
    assert_int_equal(fs.unknown, 1);
    assert_cut_message(fs.last_error, "type");
    spi_engine_free(e);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_module_message_cut_at_its_end),
      cmocka_unit_test(test_config_names_cut_between_characters),
      cmocka_unit_test(test_replay_store_name_cut_between_characters),
      cmocka_unit_test(test_config_path_cut_between_characters),
      cmocka_unit_test(test_request_names_cut_between_characters),
      cmocka_unit_test(test_request_values_cut_between_characters),
      cmocka_unit_test(test_classifier_and_bus_names_cut_between_characters),
      cmocka_unit_test(test_bus_message_type_cut_between_characters),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
