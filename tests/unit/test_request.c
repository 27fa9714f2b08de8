/*
 * test_request.c - a request's attributes and the OpenAI body reader.
 *
 * Covers the field-by-field API (setters, getters, ranges, errors), limits
 * taken from the configuration, spi_request_parse_openai() on realistic
 * chat and completions bodies and on every class of bad input, the
 * all-or-nothing contract, the canonical prompt, which text forms the system
 * prompt of the cache key, the allocation-free warm path, an
 * allocation-failure loop over the whole request life cycle, and handle
 * misuse.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine.h"
#include "fake_world.h"

/* ---------------------------------------------------------------- helpers */

#define LIT(s) (s), (sizeof(s) - 1)

static void assert_contains_(const char *hay, const char *needle, int line) {
  if (!hay || !strstr(hay, needle))
    fail_msg("line %d: \"%s\" does not contain \"%s\"", line,
             hay ? hay : "(null)", needle);
}
#define assert_contains(hay, needle) assert_contains_((hay), (needle), __LINE__)

/* The message starts with prefix (a field path). */
static void assert_starts_(const char *msg, const char *prefix, int line) {
  if (strncmp(msg, prefix, strlen(prefix)) != 0)
    fail_msg("line %d: \"%s\" does not start with \"%s\"", line, msg, prefix);
}
#define assert_starts(msg, prefix) assert_starts_((msg), (prefix), __LINE__)

static int parse(spi_request *r, const char *body) {
  return spi_request_parse_openai(r, body, strlen(body), SPI_OPENAI_AUTO);
}

static int parse_kind(spi_request *r, const char *body, int32_t kind) {
  return spi_request_parse_openai(r, body, strlen(body), kind);
}

static void assert_str_(spi_request *r, int32_t field, const char *want,
                        int line) {
  const char *p = NULL;
  size_t n = 99;
  if (spi_request_get_str(r, field, &p, &n) != SPI_OK)
    fail_msg("line %d: get_str(%d) failed", line, (int)field);
  if (n != strlen(want) || memcmp(p, want, n) != 0)
    fail_msg("line %d: field %d is \"%.*s\", want \"%s\"", line, (int)field,
             (int)n, p, want);
}
#define assert_str(r, field, want) assert_str_((r), (field), (want), __LINE__)

static void assert_int_(spi_request *r, int32_t field, int64_t want,
                        int line) {
  int64_t v = -777;
  int32_t set = -1;
  if (spi_request_get_int(r, field, &v, &set) != SPI_OK)
    fail_msg("line %d: get_int(%d) failed", line, (int)field);
  if (!set || v != want)
    fail_msg("line %d: int field %d is %lld (set %d), want %lld", line,
             (int)field, (long long)v, (int)set, (long long)want);
}
#define assert_int(r, field, want) assert_int_((r), (field), (want), __LINE__)

static void assert_unset_(spi_request *r, int32_t field, int line) {
  int64_t v = -777;
  int32_t set = -1;
  if (spi_request_get_int(r, field, &v, &set) != SPI_OK)
    fail_msg("line %d: get_int(%d) failed", line, (int)field);
  if (set != 0 || v != 0)
    fail_msg("line %d: int field %d is %lld (set %d), want unset", line,
             (int)field, (long long)v, (int)set);
}
#define assert_unset(r, field) assert_unset_((r), (field), __LINE__)

/* Every attribute is empty: what a failed parse must leave behind. */
static void assert_empty_(spi_request *r, int line) {
  if (spi_request_message_count(r) != 0)
    fail_msg("line %d: %zu messages left", line, spi_request_message_count(r));
  for (int32_t f = SPI_REQ_MODEL; f <= SPI_REQ_REQUEST_ID; f++) {
    const char *p = NULL;
    size_t n = 99;
    if (spi_request_get_str(r, f, &p, &n) != SPI_OK || n != 0 || p[0] != '\0')
      fail_msg("line %d: string field %d is not empty", line, (int)f);
  }
  for (int32_t f = SPI_REQ_PRIORITY; f <= SPI_REQ_MODEL_TIER; f++)
    assert_unset_(r, f, line);
  if (r->ntokens != 0 || r->nmeta != 0 || r->explicit_class != SPI_CLASS_UNSET ||
      r->service_tier != SPI_SERVICE_TIER_UNSET)
    fail_msg("line %d: tokens, metadata, class or tier left", line);
  const uint8_t *cp = NULL;
  size_t cn = 99;
  if (spi_request_canonical_prompt(r, &cp, &cn) != SPI_OK || cn != 0)
    fail_msg("line %d: canonical prompt not empty", line);
}
#define assert_empty(r) assert_empty_((r), __LINE__)

static void assert_prompt_(spi_request *r, const void *want, size_t want_len,
                           int line) {
  const uint8_t *p = NULL;
  size_t n = 0;
  if (spi_request_canonical_prompt(r, &p, &n) != SPI_OK)
    fail_msg("line %d: canonical_prompt failed: %s", line,
             spi_request_errmsg(r));
  if (n != want_len || memcmp(p, want, n) != 0)
    fail_msg("line %d: canonical prompt is \"%.*s\" (%zu bytes), want %zu bytes",
             line, (int)n, (const char *)p, n, want_len);
}
#define assert_prompt(r, lit) assert_prompt_((r), LIT(lit), __LINE__)

static spi_cache_key key_of(spi_request *r) {
  spi_cache_key k = {0, 0};
  assert_int_equal(spi_request_cache_key(r, &k), SPI_OK);
  return k;
}

static int keys_equal(spi_cache_key a, spi_cache_key b) {
  return a.high64 == b.high64 && a.low64 == b.low64;
}

/* Does the metadata buffer hold the pair key\0value\0? */
static int has_meta(const spi_request *r, const char *k, const char *v) {
  const char *p = (const char *)r->metabuf.data;
  const char *end = p + r->metabuf.len;
  for (size_t i = 0; i < r->nmeta && p < end; i++) {
    const char *val = p + strlen(p) + 1;
    if (strcmp(p, k) == 0 && strcmp(val, v) == 0) return 1;
    p = val + strlen(val) + 1;
  }
  return 0;
}

/* ------------------------------------------------------------- fixtures */

/* Each test gets a world (fake_world.h) as its cmocka state. */

static void configure(spi_engine *e, const char *json) {
  int rc = spi_engine_configure(e, json, strlen(json));
  if (rc != SPI_OK)
    fail_msg("configure %s: %d %s", json, rc, spi_engine_errmsg(e));
}

/* ------------------------------------------------------- string fields */

static void test_str_set_get(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  static const int32_t plain[] = {
      SPI_REQ_MODEL,       SPI_REQ_TOKENIZER_VERSION, SPI_REQ_SYSTEM_PROMPT,
      SPI_REQ_RETRIEVAL_TEMPLATE, SPI_REQ_TENANT,     SPI_REQ_TENANT_TIER,
      SPI_REQ_TENANT_SALT, SPI_REQ_DECODE_PROFILE,    SPI_REQ_USER,
      SPI_REQ_PROMPT,      SPI_REQ_REQUEST_ID};
  for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
    char v[32];
    snprintf(v, sizeof v, "value-%d", (int)plain[i]);
    assert_str(r, plain[i], "");
    assert_int_equal(spi_request_set_str(r, plain[i], v, strlen(v)), SPI_OK);
    assert_str(r, plain[i], v);
  }
  /* Every field kept its own value. */
  for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
    char v[32];
    snprintf(v, sizeof v, "value-%d", (int)plain[i]);
    assert_str(r, plain[i], v);
  }
  /* Replace, then clear with the empty string (NULL, 0 is the empty string). */
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, LIT("m2")), SPI_OK);
  assert_str(r, SPI_REQ_MODEL, "m2");
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, NULL, 0), SPI_OK);
  assert_str(r, SPI_REQ_MODEL, "");
  assert_int_equal(r->str_set[SPI_REQ_MODEL], 0);
  /* Pointer + length: an embedded NUL and no terminator are both fine. */
  const char raw[4] = {'a', '\0', 'b', 'c'};
  assert_int_equal(spi_request_set_str(r, SPI_REQ_USER, raw, 3), SPI_OK);
  const char *p;
  size_t n;
  assert_int_equal(spi_request_get_str(r, SPI_REQ_USER, &p, &n), SPI_OK);
  assert_int_equal(n, 3);
  assert_memory_equal(p, raw, 3);
  /* The value was copied. */
  char buf[8] = "copyme";
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TENANT, buf, 6), SPI_OK);
  memset(buf, 'x', sizeof buf);
  assert_str(r, SPI_REQ_TENANT, "copyme");
}

static void test_str_errors(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  static const int32_t bad[] = {0, -1, SPI_REQ_REQUEST_ID + 1, 1000};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(spi_request_set_str(r, bad[i], LIT("x")), SPI_EINVAL);
    assert_contains(spi_request_errmsg(r), "unknown string field");
    const char *p;
    size_t n;
    assert_int_equal(spi_request_get_str(r, bad[i], &p, &n), SPI_EINVAL);
  }
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, NULL, 3), SPI_EINVAL);
  assert_contains(spi_request_errmsg(r), "model");
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, NULL, 3),
                   SPI_EINVAL);
  const char *p;
  size_t n;
  assert_int_equal(spi_request_get_str(r, SPI_REQ_MODEL, NULL, &n), SPI_EINVAL);
  assert_int_equal(spi_request_get_str(r, SPI_REQ_MODEL, &p, NULL), SPI_EINVAL);
  /* A failed set leaves the old value. */
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, LIT("keep")), SPI_OK);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, NULL, 5), SPI_EINVAL);
  assert_str(r, SPI_REQ_MODEL, "keep");
}

static void test_class_and_service_tier_names(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  static const char *const classes[] = {"gold", "silver", "bronze"};
  for (int i = 0; i < 3; i++) {
    assert_int_equal(
        spi_request_set_str(r, SPI_REQ_CLASS, classes[i], strlen(classes[i])),
        SPI_OK);
    assert_int_equal(r->explicit_class, SPI_CLASS_GOLD + i);
    assert_str(r, SPI_REQ_CLASS, classes[i]);
  }
  static const char *const bad_classes[] = {"GOLD", "platinum", "gold ", "g",
                                            "silverx"};
  for (size_t i = 0; i < sizeof bad_classes / sizeof bad_classes[0]; i++) {
    assert_int_equal(spi_request_set_str(r, SPI_REQ_CLASS, bad_classes[i],
                                         strlen(bad_classes[i])),
                     SPI_EUNKNOWN);
    assert_starts(spi_request_errmsg(r), "class:");
    /* Unchanged by the failure. */
    assert_int_equal(r->explicit_class, SPI_CLASS_BRONZE);
    assert_str(r, SPI_REQ_CLASS, "bronze");
  }
  assert_int_equal(spi_request_set_str(r, SPI_REQ_CLASS, NULL, 0), SPI_OK);
  assert_int_equal(r->explicit_class, SPI_CLASS_UNSET);

  static const char *const tiers[] = {"auto", "default", "flex", "priority",
                                      "scale"};
  for (int i = 0; i < 5; i++) {
    assert_int_equal(spi_request_set_str(r, SPI_REQ_SERVICE_TIER, tiers[i],
                                         strlen(tiers[i])),
                     SPI_OK);
    assert_int_equal(r->service_tier, SPI_SERVICE_TIER_AUTO + i);
    assert_string_equal(spi_service_tier_name(r->service_tier), tiers[i]);
  }
  assert_int_equal(spi_request_set_str(r, SPI_REQ_SERVICE_TIER, LIT("turbo")),
                   SPI_EUNKNOWN);
  assert_starts(spi_request_errmsg(r), "service_tier:");
  assert_int_equal(r->service_tier, SPI_SERVICE_TIER_SCALE);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_SERVICE_TIER, LIT("")),
                   SPI_OK);
  assert_int_equal(r->service_tier, SPI_SERVICE_TIER_UNSET);
}

/* ------------------------------------------------------ integer fields */

static void test_int_ranges(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  static const struct {
    int32_t field;
    const char *name;
    int64_t lo, hi;
  } rows[] = {
      {SPI_REQ_PRIORITY, "priority", -1000000, 1000000},
      {SPI_REQ_SLA_MS, "sla_ms", 1, 86400000},
      {SPI_REQ_STREAM, "stream", 0, 1},
      {SPI_REQ_REPLAYABLE, "replayable", 0, 1},
      {SPI_REQ_MAX_OUTPUT_TOKENS, "max_output_tokens", 1, 1000000000},
      {SPI_REQ_EXPECTED_OUTPUT_TOKENS, "expected_output_tokens", 0, 1000000000},
      {SPI_REQ_PROMPT_TOKENS, "prompt_tokens", 0, 100000000000LL},
      {SPI_REQ_MODEL_TIER, "model_tier", SPI_TIER_SMALL, SPI_TIER_LARGE},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    int32_t fld = rows[i].field;
    assert_unset(r, fld);
    assert_int_equal(spi_request_set_int(r, fld, rows[i].lo), SPI_OK);
    assert_int(r, fld, rows[i].lo);
    assert_int_equal(spi_request_set_int(r, fld, rows[i].hi), SPI_OK);
    assert_int(r, fld, rows[i].hi);
    const int64_t out[] = {rows[i].lo - 1, rows[i].hi + 1, INT64_MIN,
                           INT64_MAX};
    for (size_t k = 0; k < 4; k++) {
      assert_int_equal(spi_request_set_int(r, fld, out[k]), SPI_ERANGE);
      assert_starts(spi_request_errmsg(r), rows[i].name);
      /* A refused value leaves the old one. */
      assert_int(r, fld, rows[i].hi);
    }
    assert_int_equal(spi_request_unset_int(r, fld), SPI_OK);
    assert_unset(r, fld);
  }
  /* Unset is distinct from zero. */
  assert_int_equal(spi_request_set_int(r, SPI_REQ_STREAM, 0), SPI_OK);
  assert_int(r, SPI_REQ_STREAM, 0);
  /* is_set may be NULL. */
  int64_t v = -1;
  assert_int_equal(spi_request_get_int(r, SPI_REQ_STREAM, &v, NULL), SPI_OK);
  assert_int_equal(v, 0);
  /* Unknown fields. */
  static const int32_t bad[] = {0, -1, SPI_REQ_REPLAY_SINCE_NS + 1, 99};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(spi_request_set_int(r, bad[i], 1), SPI_EINVAL);
    assert_contains(spi_request_errmsg(r), "unknown integer field");
    assert_int_equal(spi_request_unset_int(r, bad[i]), SPI_EINVAL);
    assert_int_equal(spi_request_get_int(r, bad[i], &v, NULL), SPI_EINVAL);
  }
  assert_int_equal(spi_request_get_int(r, SPI_REQ_STREAM, NULL, NULL),
                   SPI_EINVAL);
}

/* ------------------------------------------------------------ messages */

static void test_messages_and_canonical_prompt(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  assert_prompt(r, "");
  assert_int_equal(spi_request_add_message(r, LIT("system"), LIT("Be brief.")),
                   SPI_OK);
  assert_int_equal(spi_request_add_message(r, LIT("developer"), LIT("JSON")),
                   SPI_OK);
  assert_int_equal(spi_request_add_message(r, LIT("user"), LIT("hi")), SPI_OK);
  assert_int_equal(spi_request_add_message(r, LIT("assistant"), NULL, 0),
                   SPI_OK);
  /* "function" is the old name of a tool result. */
  assert_int_equal(spi_request_add_message(r, LIT("function"), LIT("42")),
                   SPI_OK);
  assert_int_equal(spi_request_add_message(r, LIT("tool"), LIT("43")), SPI_OK);
  assert_int_equal(spi_request_message_count(r), 6);
  assert_prompt(r, "system\x1f" "Be brief.\x1e"
                   "developer\x1fJSON\x1e"
                   "user\x1fhi\x1e"
                   "assistant\x1f\x1e"
                   "tool\x1f" "42\x1e"
                   "tool\x1f" "43\x1e");
  /* Content is bytes: a NUL inside survives. */
  spi_request_reset(r);
  assert_int_equal(spi_request_add_message(r, LIT("user"), "a\0b", 3), SPI_OK);
  assert_prompt(r, "user\x1f" "a\0b\x1e");

  /* Errors. */
  assert_int_equal(spi_request_add_message(r, LIT("wizard"), LIT("x")),
                   SPI_EUNKNOWN);
  assert_starts(spi_request_errmsg(r), "role:");
  assert_contains(spi_request_errmsg(r), "wizard");
  assert_int_equal(spi_request_add_message(r, LIT("User"), LIT("x")),
                   SPI_EUNKNOWN);
  assert_int_equal(spi_request_add_message(r, NULL, 0, LIT("x")), SPI_EUNKNOWN);
  assert_int_equal(spi_request_add_message(r, NULL, 4, LIT("x")), SPI_EINVAL);
  assert_int_equal(spi_request_add_message(r, LIT("user"), NULL, 2),
                   SPI_EINVAL);
  assert_int_equal(spi_request_message_count(r), 1);
  assert_prompt(r, "user\x1f" "a\0b\x1e");

  /* Completions: the prompt bytes themselves. */
  spi_request_reset(r);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_PROMPT, LIT("Once upon")),
                   SPI_OK);
  assert_prompt(r, "Once upon");
  /* The derived text follows later changes. */
  assert_int_equal(spi_request_set_str(r, SPI_REQ_PROMPT, LIT("a time")),
                   SPI_OK);
  assert_prompt(r, "a time");
  assert_int_equal(spi_request_canonical_prompt(r, NULL, NULL), SPI_EINVAL);
}

/* Only empty messages on a request that never held any text: the message
 * buffer has no memory yet, and deriving the prompt must cope. */
static void test_empty_messages_fresh_request(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  assert_int_equal(parse(r, "{\"model\":\"m\",\"messages\":[{\"role\":"
                            "\"system\"},{\"role\":\"user\",\"content\":"
                            "\"\"}]}"),
                   SPI_OK);
  assert_int_equal(spi_request_message_count(r), 2);
  assert_prompt(r, "system\x1f\x1euser\x1f\x1e");
  spi_classification c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  assert_int_equal(spi_classify(r, SPI_PRESSURE_NORMAL, &c), SPI_OK);
  /* An empty system message is the same system prompt as none. */
  spi_cache_key k = key_of(r);
  spi_request *other = NULL;
  assert_int_equal(spi_request_new(f->e, &other), SPI_OK);
  assert_int_equal(spi_request_set_str(other, SPI_REQ_MODEL, LIT("m")), SPI_OK);
  assert_int_equal(spi_request_add_message(other, LIT("user"), NULL, 0),
                   SPI_OK);
  assert_true(keys_equal(k, key_of(other)));
  size_t n = 99;
  assert_int_equal(spi_request_block_hashes(other, NULL, 0, &n), SPI_OK);
  assert_int_equal(n, 0);
  spi_request_free(other);
}

static void test_reset(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  assert_int_equal(parse(r, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
                            "\"content\":\"hi\"}],\"stream\":true,"
                            "\"metadata\":{\"class\":\"gold\",\"k\":\"v\"}}"),
                   SPI_OK);
  const uint32_t ids[] = {1, 2, 3};
  assert_int_equal(spi_request_set_token_ids(r, ids, 3), SPI_OK);
  assert_int_equal(spi_request_set_int(r, SPI_REQ_PRIORITY, 4), SPI_OK);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, LIT("[]")),
                   SPI_OK);
  assert_int_equal(spi_request_set_int(r, SPI_REQ_SLA_MS, 0), SPI_ERANGE);
  assert_string_not_equal(spi_request_errmsg(r), "");
  assert_int_equal(spi_request_reset(r), SPI_OK);
  assert_string_equal(spi_request_errmsg(r), "");
  assert_empty(r);
}

/* ---------------------------------------------------------------- tools */

#define TOOLS_CANON                                                          \
  "[{\"function\":{\"description\":\"Weather now\",\"name\":\"get_weather\","  \
  "\"parameters\":{\"properties\":{\"city\":{\"type\":\"string\"},"          \
  "\"days\":{\"maximum\":7,\"type\":\"integer\"}},\"required\":[\"city\"],"  \
  "\"type\":\"object\"}},\"type\":\"function\"}]"

/* Integers beyond 2^53 in tools (set or in a body) keep their digits: one
 * double stands for 2^53 and 2^53 + 1, their keys must not. */
static void test_tools_big_integers(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  static const char *const big[] = {"9007199254740993", "9007199254740992"};
  spi_cache_key set[2], body[2];
  for (int i = 0; i < 2; i++) {
    char tools[128], text[256];
    snprintf(tools, sizeof tools, "[{\"type\":\"integer\",\"enum\":[%s]}]",
             big[i]);
    spi_request_reset(r);
    assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, LIT("m")), SPI_OK);
    assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, tools,
                                         strlen(tools)),
                     SPI_OK);
    snprintf(text, sizeof text, "[{\"enum\":[%s],\"type\":\"integer\"}]", big[i]);
    assert_str(r, SPI_REQ_TOOLS_JSON, text);
    set[i] = key_of(r);
    snprintf(text, sizeof text,
             "{\"model\":\"m\",\"prompt\":\"q\",\"tools\":%s}", tools);
    assert_int_equal(parse(r, text), SPI_OK);
    body[i] = key_of(r);
    assert_true(keys_equal(set[i], body[i]));
  }
  assert_false(keys_equal(set[0], set[1]));
}

static void test_tools_canonical(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  const char *a =
      "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
      "\"description\":\"Weather now\",\"parameters\":{\"type\":\"object\","
      "\"properties\":{\"city\":{\"type\":\"string\"},\"days\":{\"type\":"
      "\"integer\",\"maximum\":7}},\"required\":[\"city\"]}}}]";
  const char *b =
      " [\n  {\n    \"function\" : {\n      \"parameters\" : {\n"
      "        \"required\" : [ \"city\" ],\n        \"properties\" : {\n"
      "          \"days\" : { \"maximum\" : 7.0, \"type\" : \"integer\" },\n"
      "          \"city\" : { \"type\" : \"string\" }\n        },\n"
      "        \"type\" : \"object\"\n      },\n"
      "      \"description\" : \"Weather now\",\n"
      "      \"name\" : \"get_weather\"\n    },\n"
      "    \"type\" : \"function\"\n  }\n]\n";
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, a, strlen(a)),
                   SPI_OK);
  assert_str(r, SPI_REQ_TOOLS_JSON, TOOLS_CANON);
  spi_cache_key ka = key_of(r);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, b, strlen(b)),
                   SPI_OK);
  assert_str(r, SPI_REQ_TOOLS_JSON, TOOLS_CANON);
  assert_true(keys_equal(ka, key_of(r)));

  /* The same tools through a body canonicalise the same way. */
  char body[1024];
  snprintf(body, sizeof body,
           "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
           "\"x\"}],\"tools\":%s}",
           b);
  assert_int_equal(parse(r, body), SPI_OK);
  assert_str(r, SPI_REQ_TOOLS_JSON, TOOLS_CANON);

  /* Different tools, different key. */
  spi_request_reset(r);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, a, strlen(a)),
                   SPI_OK);
  ka = key_of(r);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, LIT("[]")),
                   SPI_OK);
  assert_str(r, SPI_REQ_TOOLS_JSON, "[]");
  assert_false(keys_equal(ka, key_of(r)));
  /* Empty clears them. */
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, NULL, 0), SPI_OK);
  assert_str(r, SPI_REQ_TOOLS_JSON, "");
  assert_int_equal(r->str_set[SPI_REQ_TOOLS_JSON], 0);
}

static void test_tools_errors(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, LIT("[1,2]")),
                   SPI_OK);
  static const char *const not_arrays[] = {"{}", "\"tools\"", "1", "null",
                                           "true"};
  for (size_t i = 0; i < sizeof not_arrays / sizeof not_arrays[0]; i++) {
    assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, not_arrays[i],
                                         strlen(not_arrays[i])),
                     SPI_EPARSE);
    assert_starts(spi_request_errmsg(r), "tools:");
    assert_contains(spi_request_errmsg(r), "array");
    assert_str(r, SPI_REQ_TOOLS_JSON, "[1,2]");
  }
  static const char *const malformed[] = {"[", "[1,]", "[{\"a\":}]", "]",
                                          "[1] [2]", "[1]x"};
  for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
    int rc = spi_request_set_str(r, SPI_REQ_TOOLS_JSON, malformed[i],
                                 strlen(malformed[i]));
    if (rc != SPI_EPARSE)
      fail_msg("tools %s: %d, want SPI_EPARSE", malformed[i], rc);
    assert_starts(spi_request_errmsg(r), "tools:");
    assert_str(r, SPI_REQ_TOOLS_JSON, "[1,2]");
  }
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, LIT("[")),
                   SPI_EPARSE);
  assert_contains(spi_request_errmsg(r), "byte offset");
  /* Only the given length is read: no NUL needed, none assumed. */
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, "[3]]]]", 3),
                   SPI_OK);
  assert_str(r, SPI_REQ_TOOLS_JSON, "[3]");
  /* An escaped NUL would cut a name short, and two different lists would
   * key the same: refused. An escaped backslash before u0000 is text. */
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON,
                                       LIT("[{\"name\":\"a\\u0000b\"}]")),
                   SPI_EPARSE);
  assert_contains(spi_request_errmsg(r), "\\u0000 inside a string at byte offset 11");
  assert_str(r, SPI_REQ_TOOLS_JSON, "[3]");
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON,
                                       LIT("[\"a\\\\u0000\"]")),
                   SPI_OK);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, LIT("[3]")),
                   SPI_OK);
  /* Duplicate keys are ambiguous. */
  assert_int_equal(
      spi_request_set_str(r, SPI_REQ_TOOLS_JSON, LIT("[{\"a\":1,\"a\":2}]")),
      SPI_EPARSE);
  assert_str(r, SPI_REQ_TOOLS_JSON, "[3]");
  /* Nesting beyond what canonicalisation allows. */
  char deep[300];
  memset(deep, '[', 100);
  memset(deep + 100, ']', 100);
  deep[200] = '\0';
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, deep, 200),
                   SPI_ETOOBIG);
  assert_str(r, SPI_REQ_TOOLS_JSON, "[3]");
}

/* ---------------------------------------------------------------- limits */

/* A request keeps a copy of the limits between setters; every
 * configuration change must reach it, whether the request was used before
 * the change or made before the engine was configured at all. */
#define F16 "0123456789abcdef"
#define F17 F16 "g"
#define F25 F17 "hijklmno"
static void test_limits_follow_reconfigure(void **state) {
  world *f = *state;
  spi_request *r = f->r, *early = NULL;
  assert_int_equal(spi_request_new(f->e, &early), SPI_OK);
  const uint32_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  configure(f->e, "{\"limits\":{\"max_field_bytes\":16,\"max_token_ids\":2}}");
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, LIT(F16)), SPI_OK);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, LIT(F17)), SPI_ETOOBIG);
  assert_int_equal(spi_request_set_token_ids(r, ids, 3), SPI_ETOOBIG);
  /* Raised: the same request takes what it refused. */
  configure(f->e, "{\"limits\":{\"max_field_bytes\":24,\"max_token_ids\":4}}");
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, LIT(F17)), SPI_OK);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, LIT(F25)), SPI_ETOOBIG);
  assert_int_equal(spi_request_set_token_ids(r, ids, 4), SPI_OK);
  assert_int_equal(spi_request_set_token_ids(r, ids, 5), SPI_ETOOBIG);
  /* Lowered again, then an unrelated change: still the current limits. */
  configure(f->e, "{\"limits\":{\"max_field_bytes\":16,\"max_token_ids\":2}}");
  configure(f->e, "{\"limits\":{\"max_field_bytes\":16,\"max_token_ids\":2},"
                  "\"router\":{\"weight_seconds\":30}}");
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, LIT(F17)), SPI_ETOOBIG);
  assert_str(r, SPI_REQ_MODEL, F17);
  assert_int_equal(spi_request_set_token_ids(r, ids, 3), SPI_ETOOBIG);
  assert_int_equal(r->ntokens, 4);
  /* A request made before any of it sees the limits now in force. */
  assert_int_equal(spi_request_set_str(early, SPI_REQ_MODEL, LIT(F16)), SPI_OK);
  assert_int_equal(spi_request_set_str(early, SPI_REQ_MODEL, LIT(F17)),
                   SPI_ETOOBIG);
  /* The default limits come back with a configuration that sets none. */
  configure(f->e, "{}");
  assert_int_equal(spi_request_set_str(early, SPI_REQ_MODEL, LIT(F25)), SPI_OK);
  spi_request_free(early);
}
#undef F16
#undef F17
#undef F25

static void test_limits_from_config(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  configure(f->e, "{\"limits\":{\"max_messages\":2,\"max_field_bytes\":16,"
                  "\"max_metadata_pairs\":1,\"max_token_ids\":4,"
                  "\"max_tools_bytes\":8,\"max_body_bytes\":200}}");
  /* Exactly at each limit is fine. */
  assert_int_equal(
      spi_request_set_str(r, SPI_REQ_MODEL, LIT("0123456789abcdef")), SPI_OK);
  assert_int_equal(
      spi_request_set_str(r, SPI_REQ_MODEL, LIT("0123456789abcdefg")),
      SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "model:");
  assert_contains(spi_request_errmsg(r), "17 bytes exceeds 16");
  assert_str(r, SPI_REQ_MODEL, "0123456789abcdef");
  assert_int_equal(
      spi_request_set_str(r, SPI_REQ_TENANT_SALT, LIT("0123456789abcdefg")),
      SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "tenant_salt:");

  assert_int_equal(spi_request_add_message(r, LIT("user"), LIT("a")), SPI_OK);
  assert_int_equal(
      spi_request_add_message(r, LIT("user"), LIT("0123456789abcdefX")),
      SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "messages[1].content:");
  assert_int_equal(spi_request_add_message(r, LIT("user"), LIT("b")), SPI_OK);
  assert_int_equal(spi_request_add_message(r, LIT("user"), LIT("c")),
                   SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "messages:");
  assert_int_equal(spi_request_message_count(r), 2);

  assert_int_equal(spi_request_set_metadata(r, LIT("a"), LIT("1")), SPI_OK);
  assert_int_equal(spi_request_set_metadata(r, LIT("b"), LIT("2")),
                   SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "metadata:");

  const uint32_t ids[5] = {1, 2, 3, 4, 5};
  assert_int_equal(spi_request_set_token_ids(r, ids, 4), SPI_OK);
  assert_int_equal(spi_request_set_token_ids(r, ids, 5), SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "token ids:");
  assert_int_equal(r->ntokens, 4);

  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, LIT("[1,2,3]")),
                   SPI_OK);
  assert_int_equal(
      spi_request_set_str(r, SPI_REQ_TOOLS_JSON, LIT("[1,2,3,4]")),
      SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "tools:");

  /* The same limits apply to a body. */
  assert_int_equal(parse(r, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
                            "\"content\":\"a\"},{\"role\":\"user\",\"content\":"
                            "\"b\"},{\"role\":\"user\",\"content\":\"c\"}]}"),
                   SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "messages:");
  assert_empty(r);
  assert_int_equal(parse(r, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
                            "\"content\":\"0123456789abcdefX\"}]}"),
                   SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "messages[0]");
  assert_empty(r);
  assert_int_equal(parse(r, "{\"model\":\"0123456789abcdefX\",\"prompt\":\"p\"}"),
                   SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "model:");
  assert_int_equal(parse(r, "{\"model\":\"m\",\"prompt\":\"p\",\"user\":"
                            "\"0123456789abcdefX\"}"),
                   SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "user:");
  assert_int_equal(parse(r, "{\"model\":\"m\",\"prompt\":[1,2,3,4,5]}"),
                   SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "prompt:");
  assert_int_equal(parse(r, "{\"model\":\"m\",\"prompt\":\"p\",\"tools\":"
                            "[1,2,3,4]}"),
                   SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "tools:");
  assert_int_equal(parse(r, "{\"model\":\"m\",\"prompt\":\"p\",\"metadata\":"
                            "{\"a\":\"1\",\"b\":\"2\"}}"),
                   SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "metadata");
  assert_empty(r);

  /* limits.max_body_bytes: 200 bytes pass, 201 do not. */
  char body[256];
  memset(body, ' ', sizeof body);
  memcpy(body, "{\"model\":\"m\",\"prompt\":\"p\"}", 26);
  assert_int_equal(spi_request_parse_openai(r, body, 200, SPI_OPENAI_AUTO),
                   SPI_OK);
  assert_str(r, SPI_REQ_PROMPT, "p");
  assert_int_equal(spi_request_parse_openai(r, body, 201, SPI_OPENAI_AUTO),
                   SPI_ETOOBIG);
  assert_contains(spi_request_errmsg(r), "body");
  assert_contains(spi_request_errmsg(r), "exceeds");
  assert_empty(r);

  /* Back to the defaults: the same input passes. */
  configure(f->e, "{}");
  assert_int_equal(spi_request_add_message(r, LIT("user"), LIT("a")), SPI_OK);
  assert_int_equal(spi_request_add_message(r, LIT("user"), LIT("b")), SPI_OK);
  assert_int_equal(spi_request_add_message(r, LIT("user"), LIT("c")), SPI_OK);
  assert_int_equal(
      spi_request_set_str(r, SPI_REQ_MODEL, LIT("0123456789abcdefg")), SPI_OK);
}

/* ------------------------------------------------------ OpenAI: success */

static const char CHAT_BODY[] =
    "{\n"
    "  \"model\": \"meta-llama/Llama-3.1-8B-Instruct\",\n"
    "  \"messages\": [\n"
    "    {\"role\": \"system\", \"content\": \"You are a travel agent.\"},\n"
    "    {\"role\": \"user\", \"content\": \"Weather in Oslo?\"},\n"
    "    {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [\n"
    "      {\"id\": \"call_1\", \"type\": \"function\", \"function\": "
    "{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\":\\\"Oslo\\\"}\"}}\n"
    "    ]},\n"
    "    {\"role\": \"tool\", \"tool_call_id\": \"call_1\", \"content\": "
    "\"-3C, snow\"},\n"
    "    {\"role\": \"user\", \"content\": [\n"
    "      {\"type\": \"text\", \"text\": \"And this place? \"},\n"
    "      {\"type\": \"image_url\", \"image_url\": {\"url\": "
    "\"https://example.com/a.png\", \"detail\": \"low\"}},\n"
    "      {\"type\": \"text\", \"text\": \"Thanks.\"}\n"
    "    ]}\n"
    "  ],\n"
    "  \"tools\": [{\"type\": \"function\", \"function\": {\"name\": "
    "\"get_weather\", \"parameters\": {\"type\": \"object\", \"properties\": "
    "{\"city\": {\"type\": \"string\"}}}}}],\n"
    "  \"tool_choice\": \"auto\",\n"
    "  \"temperature\": 0.2,\n"
    "  \"stream\": true,\n"
    "  \"stream_options\": {\"include_usage\": true},\n"
    "  \"max_tokens\": 100,\n"
    "  \"max_completion_tokens\": 300,\n"
    "  \"service_tier\": \"flex\",\n"
    "  \"user\": \"user-1234\",\n"
    "  \"priority\": -3,\n"
    "  \"metadata\": {\n"
    "    \"class\": \"bronze\", \"sla_ms\": \"2000\", \"replayable\": \"true\",\n"
    "    \"tenant\": \"acme\", \"tenant_tier\": \"enterprise\",\n"
    "    \"tenant_salt\": \"s3cret\", \"decode_profile\": "
    "\"streaming-balanced\",\n"
    "    \"expected_output_tokens\": \"120\", \"trace_id\": \"abc-123\"\n"
    "  }\n"
    "}\n";

static void test_parse_chat(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  assert_int_equal(spi_request_parse_openai(r, CHAT_BODY, sizeof CHAT_BODY - 1,
                                            SPI_OPENAI_AUTO),
                   SPI_OK);
  assert_string_equal(spi_request_errmsg(r), "");
  assert_str(r, SPI_REQ_MODEL, "meta-llama/Llama-3.1-8B-Instruct");
  assert_int_equal(spi_request_message_count(r), 5);
  assert_prompt(
      r,
      "system\x1fYou are a travel agent.\x1e"
      "user\x1fWeather in Oslo?\x1e"
      "assistant\x1f\x1d[{\"function\":{\"arguments\":\"{\\\"city\\\":\\\"Oslo\\\"}"
      "\",\"name\":\"get_weather\"},\"id\":\"call_1\",\"type\":\"function\"}]"
      "\x1d\x1e"
      "tool\x1f-3C, snow\x1d\"call_1\"\x1d\x1e"
      "user\x1f" "And this place? "
      "\x1d{\"image_url\":{\"detail\":\"low\",\"url\":\"https://example.com/a.png\"},"
      "\"type\":\"image_url\"}\x1dThanks.\x1e");
  assert_str(r, SPI_REQ_TOOLS_JSON,
             "[{\"function\":{\"name\":\"get_weather\",\"parameters\":{"
             "\"properties\":{\"city\":{\"type\":\"string\"}},\"type\":"
             "\"object\"}},\"type\":\"function\"}]");
  assert_int(r, SPI_REQ_STREAM, 1);
  /* max_completion_tokens supersedes max_tokens. */
  assert_int(r, SPI_REQ_MAX_OUTPUT_TOKENS, 300);
  assert_str(r, SPI_REQ_SERVICE_TIER, "flex");
  assert_int_equal(r->service_tier, SPI_SERVICE_TIER_FLEX);
  assert_str(r, SPI_REQ_USER, "user-1234");
  assert_int(r, SPI_REQ_PRIORITY, -3);
  /* Known metadata keys set their attributes. */
  assert_str(r, SPI_REQ_CLASS, "bronze");
  assert_int_equal(r->explicit_class, SPI_CLASS_BRONZE);
  assert_int(r, SPI_REQ_SLA_MS, 2000);
  assert_int(r, SPI_REQ_REPLAYABLE, 1);
  assert_int(r, SPI_REQ_EXPECTED_OUTPUT_TOKENS, 120);
  assert_str(r, SPI_REQ_TENANT, "acme");
  assert_str(r, SPI_REQ_TENANT_TIER, "enterprise");
  assert_str(r, SPI_REQ_TENANT_SALT, "s3cret");
  assert_str(r, SPI_REQ_DECODE_PROFILE, "streaming-balanced");
  /* Every pair is kept, the unknown one too. */
  assert_int_equal(r->nmeta, 9);
  assert_true(has_meta(r, "trace_id", "abc-123"));
  assert_true(has_meta(r, "class", "bronze"));
  /* Not given: unset. */
  assert_unset(r, SPI_REQ_PROMPT_TOKENS);
  assert_str(r, SPI_REQ_PROMPT, "");
  assert_str(r, SPI_REQ_SYSTEM_PROMPT, "");
  assert_int_equal(r->ntokens, 0);

  /* The explicit class from metadata wins when classifying. */
  spi_classification c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  assert_int_equal(spi_classify(r, SPI_PRESSURE_NORMAL, &c), SPI_OK);
  assert_int_equal(c.klass, SPI_CLASS_BRONZE);
  assert_string_equal(c.reason, "explicit class bronze");
  /* The last user message is the cascade query. */
  assert_int_equal(r->last_user_len,
                   strlen("And this place? ") + strlen("Thanks.") + 2 +
                       strlen("{\"image_url\":{\"detail\":\"low\",\"url\":"
                              "\"https://example.com/a.png\"},\"type\":"
                              "\"image_url\"}"));
  /* Parsing the same body twice gives the same key. */
  spi_cache_key k1 = key_of(r);
  assert_int_equal(parse(r, CHAT_BODY), SPI_OK);
  assert_true(keys_equal(k1, key_of(r)));
}

static void test_parse_chat_variants(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  /* Minimal chat; stream false; order of the caps does not matter. */
  assert_int_equal(
      parse(r, "{\"max_completion_tokens\":7,\"messages\":[{\"role\":\"user\","
               "\"content\":\"q\"}],\"model\":\"m\",\"max_tokens\":9,"
               "\"stream\":false}"),
      SPI_OK);
  assert_int(r, SPI_REQ_MAX_OUTPUT_TOKENS, 7);
  assert_int(r, SPI_REQ_STREAM, 0);
  assert_unset(r, SPI_REQ_PRIORITY);
  assert_int_equal(r->nmeta, 0);
  assert_prompt(r, "user\x1fq\x1e");
  /* max_tokens alone. */
  assert_int_equal(parse(r, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
                            "\"content\":\"q\"}],\"max_tokens\":9}"),
                   SPI_OK);
  assert_int(r, SPI_REQ_MAX_OUTPUT_TOKENS, 9);
  assert_unset(r, SPI_REQ_STREAM);
  /* JSON null means absent. */
  assert_int_equal(
      parse(r, "{\"model\":\"m\",\"messages\":[{\"role\":\"developer\","
               "\"content\":\"d\"},{\"role\":\"user\",\"content\":\"q\"}],"
               "\"max_tokens\":null,\"stream\":null,\"tools\":null,"
               "\"metadata\":null,\"service_tier\":null,\"priority\":null,"
               "\"user\":null}"),
      SPI_OK);
  assert_unset(r, SPI_REQ_MAX_OUTPUT_TOKENS);
  assert_unset(r, SPI_REQ_STREAM);
  assert_unset(r, SPI_REQ_PRIORITY);
  assert_str(r, SPI_REQ_TOOLS_JSON, "");
  assert_prompt(r, "developer\x1f" "d\x1euser\x1fq\x1e");
  /* An empty parts array and an absent content are empty content. */
  assert_int_equal(
      parse(r, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
               "\"content\":[]},{\"role\":\"assistant\"}]}"),
      SPI_OK);
  assert_prompt(r, "user\x1f\x1e" "assistant\x1f\x1e");
  /* vLLM priority at both ends of its range; metadata priority wins over
   * the body's because metadata is read last. */
  assert_int_equal(
      parse(r, "{\"model\":\"m\",\"prompt\":\"p\",\"priority\":-1000000}"),
      SPI_OK);
  assert_int(r, SPI_REQ_PRIORITY, -1000000);
  assert_int_equal(parse(r, "{\"model\":\"m\",\"prompt\":\"p\",\"priority\":5,"
                            "\"metadata\":{\"priority\":\"-2\"}}"),
                   SPI_OK);
  assert_int(r, SPI_REQ_PRIORITY, -2);
  /* Metadata replayable words. */
  static const char *const words[][2] = {
      {"true", "1"}, {"false", "0"}, {"1", "1"}, {"0", "0"}};
  for (int i = 0; i < 4; i++) {
    char body[160];
    snprintf(body, sizeof body,
             "{\"model\":\"m\",\"prompt\":\"p\",\"metadata\":{\"replayable\":"
             "\"%s\"}}",
             words[i][0]);
    assert_int_equal(parse(r, body), SPI_OK);
    assert_int(r, SPI_REQ_REPLAYABLE, words[i][1][0] - '0');
  }
  /* Explicit kinds. */
  assert_int_equal(parse_kind(r, "{\"model\":\"m\",\"messages\":[{\"role\":"
                                 "\"user\",\"content\":\"q\"}]}",
                              SPI_OPENAI_CHAT),
                   SPI_OK);
  assert_int_equal(spi_request_message_count(r), 1);
  /* A completions body that also carries messages reads the prompt only. */
  assert_int_equal(parse_kind(r, "{\"model\":\"m\",\"prompt\":\"p\","
                                 "\"messages\":[]}",
                              SPI_OPENAI_COMPLETIONS),
                   SPI_OK);
  assert_int_equal(spi_request_message_count(r), 0);
  assert_str(r, SPI_REQ_PROMPT, "p");
}

/* What a body reads as: its canonical prompt, system prompt, key, and the
 * hashes of its first 64-byte blocks. */
typedef struct canon_of {
  uint8_t prompt[2048];
  size_t n;
  char sys[512];
  size_t sys_n;
  spi_cache_key key;
  uint64_t blocks[32];
  size_t nblocks;
} canon_of;

static void read_as_(spi_request *r, const char *body, canon_of *o, int line) {
  memset(o, 0, sizeof *o);
  if (parse(r, body) != SPI_OK)
    fail_msg("line %d: %s: %s", line, body, spi_request_errmsg(r));
  const uint8_t *p = NULL;
  assert_int_equal(spi_request_canonical_prompt(r, &p, &o->n), SPI_OK);
  assert_true(o->n <= sizeof o->prompt);
  if (o->n) memcpy(o->prompt, p, o->n);
  spi_request_view v;
  assert_int_equal(spi__request_view(r, &v), SPI_OK);
  assert_true(v.system_prompt_len <= sizeof o->sys);
  o->sys_n = v.system_prompt_len;
  if (o->sys_n) memcpy(o->sys, v.system_prompt, o->sys_n);
  o->key = key_of(r);
  assert_int_equal(spi_request_block_hashes(r, o->blocks, 32, &o->nblocks),
                   SPI_OK);
}
#define read_as(r, body, o) read_as_((r), (body), (o), __LINE__)

/* Two bodies of different structure never read the same: neither their
 * canonical prompts nor their system prompts (so neither their keys). */
static void assert_apart_(spi_request *r, const char *a, const char *b,
                          int line) {
  canon_of x, y;
  read_as_(r, a, &x, line);
  read_as_(r, b, &y, line);
  if (x.n == y.n && memcmp(x.prompt, y.prompt, x.n) == 0 &&
      x.sys_n == y.sys_n && memcmp(x.sys, y.sys, x.sys_n) == 0)
    fail_msg("line %d: read the same:\n  %s\n  %s", line, a, b);
}
#define assert_apart(r, a, b) assert_apart_((r), (a), (b), __LINE__)

#define MSGS "{\"model\":\"m\",\"messages\":["
#define CALL(city)                                                           \
  "{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\","      \
  "\"arguments\":\"{\\\"city\\\":\\\"" city "\\\"}\"}}"
/* 70 bytes of filler: prompts longer than a 64-byte block. */
#define PAD "0123456789012345678901234567890123456789012345678901234567890123456789"

/* The canonical prompt keeps each message's structure: tool calls next to
 * content, a tool result's call id, bytes 0x1B-0x1F in text, image parts
 * against text spelling them, empty system messages, completions prompts
 * against chat prompts. */
static void test_canonical_prompt_structure(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  assert_int_equal(spi_engine_configure(f->e, "{\"cache_key\":{\"block_bytes\":64}}",
                                        strlen("{\"cache_key\":{\"block_bytes\":64}}")),
                   SPI_OK);
  /* Tool calls count whatever the content is. */
  assert_apart(r,
               MSGS "{\"role\":\"user\",\"content\":\"" PAD "\"},"
               "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":["
               CALL("Oslo") "]}]}",
               MSGS "{\"role\":\"user\",\"content\":\"" PAD "\"},"
               "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":["
               CALL("Paris") "]}]}");
  assert_apart(r,
               MSGS "{\"role\":\"assistant\",\"content\":\"Checking.\","
               "\"tool_calls\":[" CALL("Oslo") "]}]}",
               MSGS "{\"role\":\"assistant\",\"content\":\"Checking.\","
               "\"tool_calls\":[" CALL("Paris") "]}]}");
  assert_apart(r,
               MSGS "{\"role\":\"assistant\",\"content\":\"Checking.\","
               "\"tool_calls\":[" CALL("Oslo") "]}]}",
               MSGS "{\"role\":\"assistant\",\"content\":\"Checking.\"}]}");
  canon_of o;
  read_as(r, MSGS "{\"role\":\"assistant\",\"content\":\"Hm\",\"tool_calls\":[]}]}",
          &o);
  assert_int_equal(o.n, strlen("assistant\x1fHm\x1d[]\x1d\x1e"));
  assert_memory_equal(o.prompt, "assistant\x1fHm\x1d[]\x1d\x1e", o.n);
  /* A tool result's call id counts. */
  assert_apart(r,
               MSGS "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"-3C\"}]}",
               MSGS "{\"role\":\"tool\",\"tool_call_id\":\"c2\",\"content\":\"-3C\"}]}");
  /* Content that spells a message boundary is not one. */
  assert_apart(r,
               MSGS "{\"role\":\"user\",\"content\":\"hi\\u001eassistant\\u001f"
               "yes" PAD "\"}]}",
               MSGS "{\"role\":\"user\",\"content\":\"hi\"},"
               "{\"role\":\"assistant\",\"content\":\"yes" PAD "\"}]}");
  read_as(r, MSGS "{\"role\":\"user\",\"content\":\"a\\u001bb\\u001cc\\u001dd"
               "\\u001ee\\u001ff\\u001ag\"}]}",
          &o);
  static const char esc[] =
      "user\x1f" "a\x1b[b\x1b\\c\x1b]d\x1b^e\x1b_f\x1ag\x1e";
  assert_int_equal(o.n, sizeof esc - 1);
  assert_memory_equal(o.prompt, esc, o.n);
  /* System prompts: one message holding 0x1E is not two, and an empty
   * system message does not vanish from the join. */
  assert_apart(r,
               MSGS "{\"role\":\"system\",\"content\":\"A\\u001eB\"},"
               "{\"role\":\"user\",\"content\":\"q\"}]}",
               MSGS "{\"role\":\"system\",\"content\":\"A\"},"
               "{\"role\":\"system\",\"content\":\"B\"},"
               "{\"role\":\"user\",\"content\":\"q\"}]}");
  canon_of a, b;
  read_as(r, MSGS "{\"role\":\"system\",\"content\":\"A\\u001eB\"},"
               "{\"role\":\"user\",\"content\":\"q\"}]}", &a);
  read_as(r, MSGS "{\"role\":\"system\",\"content\":\"A\"},"
               "{\"role\":\"system\",\"content\":\"B\"},"
               "{\"role\":\"user\",\"content\":\"q\"}]}", &b);
  assert_false(keys_equal(a.key, b.key));
  read_as(r, MSGS "{\"role\":\"system\",\"content\":\"\"},"
               "{\"role\":\"system\",\"content\":\"B\"},"
               "{\"role\":\"user\",\"content\":\"q\"}]}", &a);
  read_as(r, MSGS "{\"role\":\"system\",\"content\":\"B\"},"
               "{\"role\":\"user\",\"content\":\"q\"}]}", &b);
  assert_false(keys_equal(a.key, b.key));
  assert_int_equal(a.sys_n, 2);
  assert_memory_equal(a.sys, "\x1e" "B", 2);
  /* A completions prompt is never a chat prompt. */
  assert_apart(r, "{\"model\":\"m\",\"prompt\":\"user\\u001f" PAD "\\u001e\"}",
               MSGS "{\"role\":\"user\",\"content\":\"" PAD "\"}]}");
  read_as(r, "{\"model\":\"m\",\"prompt\":\"user\\u001fhi\\u001e\"}", &o);
  assert_int_equal(o.n, strlen("user\x1b_hi\x1b^"));
  assert_memory_equal(o.prompt, "user\x1b_hi\x1b^", o.n);
  /* An image part is not the text of its canonical JSON, nor are tool
   * calls the text of theirs. */
  assert_apart(r,
               MSGS "{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
               "\"image_url\":{\"url\":\"https://x/a.png\"}}]}]}",
               MSGS "{\"role\":\"user\",\"content\":[{\"type\":\"text\","
               "\"text\":\"{\\\"image_url\\\":{\\\"url\\\":\\\"https://x/a.png"
               "\\\"},\\\"type\\\":\\\"image_url\\\"}\"}]}]}");
  assert_apart(r,
               MSGS "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]}]}",
               MSGS "{\"role\":\"assistant\",\"content\":\"[]\"}]}");
  /* Ordinary requests read as before: text as is, roles and separators. */
  read_as(r, MSGS "{\"role\":\"system\",\"content\":\"S\\n1\"},"
               "{\"role\":\"developer\",\"content\":\"D\"},"
               "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
               "{\"type\":\"text\",\"text\":\"b\\t\"}]}]}",
          &o);
  static const char plain[] =
      "system\x1fS\n1\x1e" "developer\x1f" "D\x1e" "user\x1f" "ab\t\x1e";
  assert_int_equal(o.n, sizeof plain - 1);
  assert_memory_equal(o.prompt, plain, o.n);
  assert_int_equal(o.sys_n, 5);
  assert_memory_equal(o.sys, "S\n1\x1e" "D", 5);
  read_as(r, "{\"model\":\"m\",\"prompt\":\"Say \\\"hi\\\"\\n\"}", &o);
  assert_int_equal(o.n, 9);
  assert_memory_equal(o.prompt, "Say \"hi\"\n", 9);
  /* Messages added one by one are escaped the same way. */
  spi_request_reset(r);
  assert_int_equal(spi_request_add_message(r, LIT("user"), LIT("hi\x1e" "assistant\x1fyes")),
                   SPI_OK);
  const uint8_t *p = NULL;
  size_t n = 0;
  assert_int_equal(spi_request_canonical_prompt(r, &p, &n), SPI_OK);
  static const char added[] = "user\x1fhi\x1b^assistant\x1b_yes\x1e";
  assert_int_equal(n, sizeof added - 1);
  assert_memory_equal(p, added, n);
  /* Bad types are refused with their path. */
  assert_int_equal(parse(r, MSGS "{\"role\":\"assistant\",\"content\":\"x\","
                            "\"tool_calls\":{}}]}"),
                   SPI_ETYPE);
  assert_starts(spi_request_errmsg(r), "messages[0].tool_calls:");
  assert_int_equal(parse(r, MSGS "{\"role\":\"tool\",\"content\":\"x\","
                            "\"tool_call_id\":7}]}"),
                   SPI_ETYPE);
  assert_starts(spi_request_errmsg(r), "messages[0].tool_call_id:");
}

/* Content-part forms vLLM reads besides OpenAI's: a plain string part is
 * text, a text part whose text is null adds nothing, and a part without
 * "type" that carries image_url, audio_url, input_audio or video_url is a
 * media part, framed as any non-text part is. */
static void test_vllm_content_parts(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  canon_of a, b;
  static const char hi[] = "user\x1fhello\x1e";
  read_as(r, MSGS "{\"role\":\"user\",\"content\":[\"hello\"]}]}", &a);
  assert_int_equal(a.n, sizeof hi - 1);
  assert_memory_equal(a.prompt, hi, a.n);
  read_as(r, MSGS "{\"role\":\"user\",\"content\":[{\"type\":\"text\","
               "\"text\":\"hel\"},\"lo\"]}]}",
          &b);
  assert_int_equal(b.n, a.n);
  assert_memory_equal(b.prompt, a.prompt, a.n);
  /* Escaped as any text is. */
  read_as(r, MSGS "{\"role\":\"user\",\"content\":[\"a\\u001eb\"]}]}", &a);
  assert_int_equal(a.n, strlen("user\x1f" "a\x1b^b\x1e"));
  assert_memory_equal(a.prompt, "user\x1f" "a\x1b^b\x1e", a.n);
  read_as(r, MSGS "{\"role\":\"user\",\"content\":[{\"type\":\"text\","
               "\"text\":null},{\"type\":\"text\",\"text\":\"hello\"}]}]}",
          &a);
  assert_int_equal(a.n, sizeof hi - 1);
  assert_memory_equal(a.prompt, hi, a.n);
  static const char img[] =
      "user\x1f\x1d{\"image_url\":\"https://x/y.png\"}\x1dhi\x1e";
  read_as(r, MSGS "{\"role\":\"user\",\"content\":[{\"image_url\":"
               "\"https://x/y.png\"},{\"type\":\"text\",\"text\":\"hi\"}]}]}",
          &a);
  assert_int_equal(a.n, sizeof img - 1);
  assert_memory_equal(a.prompt, img, a.n);
  assert_int_equal(parse(r, MSGS "{\"role\":\"user\",\"content\":[{"
                            "\"audio_url\":{\"url\":\"u\"}},{\"video_url\":\"v\"},"
                            "{\"input_audio\":{\"data\":\"d\"}}]}]}"),
                   SPI_OK);
  /* Without one of those, or with it null, a part still needs a type. */
  assert_int_equal(parse(r, MSGS "{\"role\":\"user\",\"content\":[{"
                            "\"image_url\":null,\"text\":\"a\"}]}]}"),
                   SPI_EMISSING);
  assert_starts(spi_request_errmsg(r), "messages[0].content[0].type:");
  assert_int_equal(parse(r, MSGS "{\"role\":\"user\",\"content\":[{"
                            "\"type\":\"text\",\"text\":false}]}]}"),
                   SPI_ETYPE);
  assert_int_equal(parse(r, MSGS "{\"role\":\"user\",\"content\":[null]}]}"),
                   SPI_ETYPE);
  assert_starts(spi_request_errmsg(r), "messages[0].content[0]:");
}

static void test_parse_completions(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  assert_int_equal(parse(r, "{\"model\":\"gpt-3.5-turbo-instruct\",\"prompt\":"
                            "\"Say this is a test\",\"max_tokens\":7,"
                            "\"temperature\":0,\"echo\":false}"),
                   SPI_OK);
  assert_str(r, SPI_REQ_MODEL, "gpt-3.5-turbo-instruct");
  assert_str(r, SPI_REQ_PROMPT, "Say this is a test");
  assert_prompt(r, "Say this is a test");
  assert_int_equal(spi_request_message_count(r), 0);
  assert_int(r, SPI_REQ_MAX_OUTPUT_TOKENS, 7);
  spi_cache_key k1 = key_of(r);

  /* A one-element array is the same request. */
  assert_int_equal(
      parse(r, "{\"model\":\"gpt-3.5-turbo-instruct\",\"prompt\":"
               "[\"Say this is a test\"],\"max_tokens\":7}"),
      SPI_OK);
  assert_str(r, SPI_REQ_PROMPT, "Say this is a test");
  assert_prompt(r, "Say this is a test");
  assert_true(keys_equal(k1, key_of(r)));
  assert_int_equal(r->ntokens, 0);

  /* Token ids: blocks are counted in tokens (16 per block by default). */
  char body[1024];
  size_t n = (size_t)snprintf(body, sizeof body,
                              "{\"model\":\"m\",\"prompt\":[");
  for (int i = 0; i < 40; i++)
    n += (size_t)snprintf(body + n, sizeof body - n, "%s%d", i ? "," : "",
                          1000 + i);
  snprintf(body + n, sizeof body - n, "]}");
  assert_int_equal(parse(r, body), SPI_OK);
  assert_int_equal(r->ntokens, 40);
  assert_int_equal(r->tokens[0], 1000);
  assert_int_equal(r->tokens[39], 1039);
  assert_str(r, SPI_REQ_PROMPT, "");
  size_t blocks = 99;
  uint64_t hashes[4];
  assert_int_equal(spi_request_block_hashes(r, hashes, 4, &blocks), SPI_OK);
  assert_int_equal(blocks, 2);
  /* The largest token id is accepted. */
  assert_int_equal(parse(r, "{\"model\":\"m\",\"prompt\":[0,4294967295]}"),
                   SPI_OK);
  assert_int_equal(r->tokens[1], 4294967295u);
  /* The same 40 bytes as text make no full 1024-byte block. */
  assert_int_equal(parse(r, "{\"model\":\"m\",\"prompt\":\"0123456789012345678"
                            "901234567890123456789\"}"),
                   SPI_OK);
  assert_int_equal(spi_request_block_hashes(r, hashes, 4, &blocks), SPI_OK);
  assert_int_equal(blocks, 0);

  /* Batches are not one request. */
  assert_int_equal(parse(r, "{\"model\":\"m\",\"prompt\":[\"a\",\"b\"]}"),
                   SPI_ENOTSUP);
  assert_starts(spi_request_errmsg(r), "prompt:");
  assert_empty(r);
  assert_int_equal(parse(r, "{\"model\":\"m\",\"prompt\":[[1,2],[3]]}"),
                   SPI_ENOTSUP);
  assert_starts(spi_request_errmsg(r), "prompt:");
  assert_empty(r);
}

/* ------------------------------------------------------- OpenAI: errors */

typedef struct bad_body {
  const char *body;
  int32_t kind;
  int status;
  const char *prefix; /* the message starts with this */
  const char *also;   /* and contains this (may be NULL) */
} bad_body;

#define CHAT_OK "\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]"

static const bad_body BAD_BODIES[] = {
    /* Malformed JSON. */
    {"{\"model\":\"m\",", 0, SPI_EPARSE, "body:", "byte offset"},
    {"{\"model\":\"m\" \"prompt\":\"p\"}", 0, SPI_EPARSE, "body:",
     "byte offset"},
    {"{\"model\":\"m\",\"prompt\":\"p\"} trailing", 0, SPI_EPARSE, "body:",
     "trailing data at byte offset 27"},
    {"{\"model\":\"m\",\"prompt\":\"p\"}{}", 0, SPI_EPARSE, "body:", "offset"},
    {"{\"model\":\"\xff\",\"prompt\":nul}", 0, SPI_EPARSE, "body:",
     "byte offset"},
    {"", 0, SPI_EPARSE, "body:", "empty"},
    /* An escaped NUL would cut the string short: refused, not shortened. */
    {"{\"model\":\"m\",\"prompt\":\"ab\\u0000cd\"}", 0, SPI_EPARSE, "body:",
     "\\u0000 inside a string at byte offset 25"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\\u0000\"}]}",
     0, SPI_EPARSE, "body:", "u0000"},
    /* A name given twice would be read one way here and maybe the other
     * way by the server: refused in the body and in every object of it
     * that is read. */
    {"{\"model\":\"m\",\"prompt\":\"p\",\"model\":\"n\"}", 0, SPI_EPARSE,
     "model:", "duplicate key"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"role\":\"user\","
     "\"content\":\"A\"}]}",
     0, SPI_EPARSE, "messages[0].role:", "duplicate key"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
     "\"text\",\"text\":\"a\",\"text\":\"b\"}]}]}",
     0, SPI_EPARSE, "messages[0].content[0].text:", "duplicate key"},
    {"{\"model\":\"m\",\"prompt\":\"p\",\"metadata\":{\"class\":\"gold\","
     "\"class\":\"bronze\"}}",
     0, SPI_EPARSE, "metadata.class:", "duplicate key"},
    /* An escaped backslash before "u0000" is text, not a NUL. */
    {"{\"model\":\"m\",\"prompt\":\"a\\\\u0000\"}", 0, SPI_OK, "", NULL},
    {"   ", 0, SPI_EPARSE, "body:", "byte offset"},
    /* Top level not an object. */
    {"[{\"model\":\"m\"}]", 0, SPI_ETYPE, "body:", "object"},
    {"\"model\"", 0, SPI_ETYPE, "body:", "object"},
    {"null", 0, SPI_ETYPE, "body:", "object"},
    {"42", 0, SPI_ETYPE, "body:", "object"},
    /* Missing fields. */
    {"{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}", 0, SPI_EMISSING,
     "model:", "missing"},
    {"{\"model\":null,\"prompt\":\"p\"}", 0, SPI_EMISSING, "model:", NULL},
    {"{\"model\":\"m\"}", SPI_OPENAI_CHAT, SPI_EMISSING, "messages:",
     "missing"},
    {"{\"model\":\"m\",\"prompt\":\"p\"}", SPI_OPENAI_CHAT, SPI_EMISSING,
     "messages:", NULL},
    {"{\"model\":\"m\",\"messages\":[]}", 0, SPI_EMISSING, "messages:",
     "empty"},
    {"{\"model\":\"m\"}", 0, SPI_EMISSING, "prompt:", "missing"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}",
     SPI_OPENAI_COMPLETIONS, SPI_EMISSING, "prompt:", NULL},
    {"{\"model\":\"m\",\"prompt\":[]}", 0, SPI_EMISSING, "prompt:", NULL},
    {"{\"model\":\"m\",\"messages\":[{\"content\":\"q\"}]}", 0, SPI_EMISSING,
     "messages[0].role:", "missing"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":"
     "\"a\"}]}]}",
     0, SPI_EMISSING, "messages[0].content[0].type:", "missing"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
     "7,\"text\":\"a\"}]}]}",
     0, SPI_ETYPE, "messages[0].content[0].type:", "string"},
    /* Wrong types, each naming its path. */
    {"{\"model\":5,\"prompt\":\"p\"}", 0, SPI_ETYPE, "model:", "string"},
    {"{\"model\":[\"m\"],\"prompt\":\"p\"}", 0, SPI_ETYPE, "model:", NULL},
    {"{\"model\":\"m\",\"messages\":{\"role\":\"user\"}}", 0, SPI_ETYPE,
     "messages:", "array"},
    {"{\"model\":\"m\",\"messages\":\"hi\"}", 0, SPI_ETYPE, "messages:", NULL},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"},"
     "\"hello\"]}",
     0, SPI_ETYPE, "messages[1]:", "object"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"},"
     "{\"role\":7,\"content\":\"a\"}]}",
     0, SPI_ETYPE, "messages[1].role:", "string"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":5}]}", 0,
     SPI_ETYPE, "messages[0].content:", NULL},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":{\"a\":1}}"
     "]}",
     0, SPI_ETYPE, "messages[0].content:", NULL},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
     "\"text\",\"text\":\"a\"},5]}]}",
     0, SPI_ETYPE, "messages[0].content[1]:", "string or an object"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
     "\"text\",\"text\":1}]}]}",
     0, SPI_ETYPE, "messages[0].content[0].text:", NULL},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
     "\"text\"}]}]}",
     0, SPI_ETYPE, "messages[0].content[0].text:", NULL},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"tool_calls\":"
     "{\"id\":1}}]}",
     0, SPI_ETYPE, "messages[0].tool_calls:", "array"},
    {"{" CHAT_OK ",\"stream\":\"yes\"}", 0, SPI_ETYPE, "stream:", NULL},
    {"{" CHAT_OK ",\"stream\":1}", 0, SPI_ETYPE, "stream:", NULL},
    {"{" CHAT_OK ",\"max_tokens\":1.5}", 0, SPI_ETYPE, "max_tokens:",
     "integer"},
    {"{" CHAT_OK ",\"max_tokens\":\"100\"}", 0, SPI_ETYPE, "max_tokens:", NULL},
    {"{" CHAT_OK ",\"max_completion_tokens\":true}", 0, SPI_ETYPE,
     "max_completion_tokens:", NULL},
    {"{" CHAT_OK ",\"priority\":\"high\"}", 0, SPI_ETYPE, "priority:", NULL},
    {"{" CHAT_OK ",\"service_tier\":1}", 0, SPI_ETYPE, "service_tier:", NULL},
    {"{" CHAT_OK ",\"user\":{}}", 0, SPI_ETYPE, "user:", NULL},
    {"{" CHAT_OK ",\"tools\":{\"type\":\"function\"}}", 0, SPI_ETYPE, "tools:",
     "array"},
    {"{" CHAT_OK ",\"metadata\":[\"a\"]}", 0, SPI_ETYPE, "metadata:", "object"},
    {"{" CHAT_OK ",\"metadata\":\"x\"}", 0, SPI_ETYPE, "metadata:", NULL},
    {"{\"model\":\"m\",\"prompt\":5}", 0, SPI_ETYPE, "prompt:", NULL},
    {"{\"model\":\"m\",\"prompt\":{}}", 0, SPI_ETYPE, "prompt:", NULL},
    {"{\"model\":\"m\",\"prompt\":[1,\"a\"]}", 0, SPI_ETYPE, "prompt[1]:",
     NULL},
    {"{\"model\":\"m\",\"prompt\":[1,2.5]}", 0, SPI_ETYPE, "prompt[1]:", NULL},
    {"{\"model\":\"m\",\"prompt\":[-1]}", 0, SPI_ETYPE, "prompt[0]:", NULL},
    {"{\"model\":\"m\",\"prompt\":[4294967296]}", 0, SPI_ETYPE, "prompt[0]:",
     NULL},
    {"{\"model\":\"m\",\"prompt\":[null]}", 0, SPI_ETYPE, "prompt[0]:", NULL},
    {"{\"model\":\"m\",\"prompt\":[{}]}", 0, SPI_ETYPE, "prompt[0]:", NULL},
    /* Unknown names. */
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"wizard\",\"content\":\"q\"}]}",
     0, SPI_EUNKNOWN, "messages[0].role:", "wizard"},
    {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"},"
     "{\"role\":\"\",\"content\":\"q\"}]}",
     0, SPI_EUNKNOWN, "messages[1].role:", NULL},
    {"{" CHAT_OK ",\"service_tier\":\"turbo\"}", 0, SPI_EUNKNOWN,
     "service_tier:", "turbo"},
    {"{" CHAT_OK ",\"metadata\":{\"class\":\"platinum\"}}", 0, SPI_EUNKNOWN,
     "metadata.class:", "platinum"},
    /* Metadata values. */
    {"{" CHAT_OK ",\"metadata\":{\"n\":1}}", 0, SPI_ETYPE, "metadata.n:",
     "string"},
    {"{" CHAT_OK ",\"metadata\":{\"ok\":\"1\",\"flag\":true}}", 0, SPI_ETYPE,
     "metadata.flag:", NULL},
    {"{" CHAT_OK ",\"metadata\":{\"x\":null}}", 0, SPI_ETYPE, "metadata.x:",
     NULL},
    {"{" CHAT_OK ",\"metadata\":{\"priority\":\"high\"}}", 0, SPI_ETYPE,
     "metadata.priority:", "integer"},
    {"{" CHAT_OK ",\"metadata\":{\"priority\":\"1.5\"}}", 0, SPI_ETYPE,
     "metadata.priority:", NULL},
    {"{" CHAT_OK ",\"metadata\":{\"priority\":\" 1\"}}", 0, SPI_ETYPE,
     "metadata.priority:", NULL},
    {"{" CHAT_OK ",\"metadata\":{\"priority\":\"-\"}}", 0, SPI_ETYPE,
     "metadata.priority:", NULL},
    {"{" CHAT_OK ",\"metadata\":{\"sla_ms\":\"\"}}", 0, SPI_ETYPE,
     "metadata.sla_ms:", NULL},
    {"{" CHAT_OK ",\"metadata\":{\"sla_ms\":\"0\"}}", 0, SPI_ERANGE,
     "metadata.sla_ms:", NULL},
    {"{" CHAT_OK ",\"metadata\":{\"sla_ms\":\"86400001\"}}", 0, SPI_ERANGE,
     "metadata.sla_ms:", NULL},
    {"{" CHAT_OK ",\"metadata\":{\"replayable\":\"yes\"}}", 0, SPI_ETYPE,
     "metadata.replayable:", "true or false"},
    {"{" CHAT_OK ",\"metadata\":{\"expected_output_tokens\":\"-1\"}}", 0,
     SPI_ERANGE, "metadata.expected_output_tokens:", NULL},
    {"{" CHAT_OK ",\"metadata\":{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\",\"d\":"
     "\"4\",\"e\":\"5\",\"f\":\"6\",\"g\":\"7\",\"h\":\"8\",\"i\":\"9\",\"j\":"
     "\"10\",\"k\":\"11\",\"l\":\"12\",\"m\":\"13\",\"n\":\"14\",\"o\":\"15\","
     "\"p\":\"16\",\"q\":\"17\"}}",
     0, SPI_ETOOBIG, "metadata:", "more than 16"},
    {"{" CHAT_OK ",\"metadata\":{\"\":\"v\"}}", 0, SPI_ETOOBIG, "metadata:",
     NULL},
    {"{" CHAT_OK ",\"metadata\":{\"k\":\"a\\u0000b\"}}", 0, SPI_EPARSE, "body:",
     "u0000"},
    /* Ranges. */
    {"{" CHAT_OK ",\"max_tokens\":0}", 0, SPI_ERANGE, "max_tokens:", NULL},
    {"{" CHAT_OK ",\"max_tokens\":-5}", 0, SPI_ERANGE, "max_tokens:", NULL},
    {"{" CHAT_OK ",\"max_completion_tokens\":1000000001}", 0, SPI_ERANGE,
     "max_completion_tokens:", NULL},
    {"{" CHAT_OK ",\"priority\":1000001}", 0, SPI_ERANGE, "priority:", NULL},
    /* Absurd sizes. */
    {"{" CHAT_OK ",\"max_tokens\":1e300}", 0, SPI_ETYPE, "max_tokens:", NULL},
    {"{" CHAT_OK ",\"max_tokens\":1e15}", 0, SPI_ERANGE, "max_tokens:", NULL},
    {"{" CHAT_OK ",\"priority\":-1e300}", 0, SPI_ETYPE, "priority:", NULL},
    {"{" CHAT_OK ",\"priority\":9007199254740993}", 0, SPI_ERANGE, "priority:",
     NULL},
    {"{" CHAT_OK ",\"metadata\":{\"priority\":\"9999999999999999999\"}}", 0,
     SPI_ETYPE, "metadata.priority:", NULL},
    {"{" CHAT_OK ",\"metadata\":{\"priority\":\"99999999999999999999\"}}", 0,
     SPI_ETYPE, "metadata.priority:", NULL},
    {"{" CHAT_OK ",\"metadata\":{\"prompt_tokens\":\"99999999999999999999\"}}",
     0, SPI_OK, NULL, NULL},
    {"{\"model\":\"m\",\"prompt\":[1e300]}", 0, SPI_ETYPE, "prompt[0]:", NULL},
};

static void test_parse_errors(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  for (size_t i = 0; i < sizeof BAD_BODIES / sizeof BAD_BODIES[0]; i++) {
    const bad_body *b = &BAD_BODIES[i];
    /* Start from a filled request each time. */
    assert_int_equal(spi_request_parse_openai(r, CHAT_BODY,
                                              sizeof CHAT_BODY - 1,
                                              SPI_OPENAI_AUTO),
                     SPI_OK);
    int rc = parse_kind(r, b->body, b->kind);
    if (rc != b->status)
      fail_msg("body #%zu %s: status %d (%s), want %d", i, b->body, rc,
               spi_request_errmsg(r), b->status);
    if (b->status == SPI_OK) continue;
    const char *msg = spi_request_errmsg(r);
    if (strncmp(msg, b->prefix, strlen(b->prefix)) != 0)
      fail_msg("body #%zu %s: message \"%s\" does not start with \"%s\"", i,
               b->body, msg, b->prefix);
    if (b->also && !strstr(msg, b->also))
      fail_msg("body #%zu %s: message \"%s\" lacks \"%s\"", i, b->body, msg,
               b->also);
    assert_empty(r);
  }
}

/* A raw zero byte inside a string (JSON has none; cJSON takes it, given a
 * length, and cuts the string there) is refused like "\u0000": a tenant
 * "acme\0evil" would otherwise read as "acme". And a body with very many
 * members is checked for repeated names in O(n log n). */
static void test_parse_raw_nul_and_many_members(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  static const char nul[] = "{\"model\":\"m\",\"metadata\":{\"tenant\":"
                            "\"acme\0evil\"},\"prompt\":\"p\"}";
  assert_int_equal(spi_request_parse_openai(r, nul, sizeof nul - 1,
                                            SPI_OPENAI_AUTO),
                   SPI_EPARSE);
  assert_non_null(strstr(spi_request_errmsg(r), "inside a string at byte offset 39"));
  assert_empty(r);
  static const char tools[] = "[{\"name\":\"a\0b\"}]";
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, tools,
                                       sizeof tools - 1),
                   SPI_EPARSE);
  enum { MEMBERS = 100000 };
  char *big = malloc((size_t)MEMBERS * 16 + 64);
  assert_non_null(big);
  size_t n = (size_t)sprintf(big, "{\"model\":\"m\",\"prompt\":\"p\"");
  for (int i = 0; i < MEMBERS; i++) n += (size_t)sprintf(big + n, ",\"k%d\":1", i);
  big[n++] = '}';
  assert_int_equal(spi_request_parse_openai(r, big, n, SPI_OPENAI_AUTO), SPI_OK);
  n = (size_t)sprintf(big + n - 1, ",\"k7\":2}") + n - 1;
  assert_int_equal(spi_request_parse_openai(r, big, n, SPI_OPENAI_AUTO),
                   SPI_EPARSE);
  assert_non_null(strstr(spi_request_errmsg(r), "k7: duplicate key"));
  free(big);
}

/* The two JSON inputs of a request: an OpenAI body, a tool list. */
typedef int (*json_setter)(spi_request *r, const char *text, size_t len);

static int set_body(spi_request *r, const char *text, size_t len) {
  return spi_request_parse_openai(r, text, len, SPI_OPENAI_AUTO);
}

static int set_tools(spi_request *r, const char *text, size_t len) {
  return spi_request_set_str(r, SPI_REQ_TOOLS_JSON, text, len);
}

/* The setter's status and message for text with ch put in at byte at (a
 * heap copy of len + 1 bytes, nothing after them). */
static int with_byte(spi_request *r, json_setter set, const char *text,
                     size_t at, char ch) {
  size_t len = strlen(text);
  char *t = malloc(len + 1);
  assert_non_null(t);
  memcpy(t, text, at);
  t[at] = ch;
  memcpy(t + at + 1, text + at, len - at);
  int rc = set(r, t, len + 1);
  free(t);
  return rc;
}

static void expect_control_(spi_request *r, json_setter set, const char *what,
                            const char *text, size_t at, char ch, int line) {
  int rc = with_byte(r, set, text, at, ch);
  char want[96];
  if (ch == 0)
    snprintf(want, sizeof want, "%s: NUL byte at offset %zu", what, at);
  else
    snprintf(want, sizeof want, "%s: control byte 0x%02x at byte offset %zu",
             what, (unsigned)(unsigned char)ch, at);
  if (rc != SPI_EPARSE || strcmp(spi_request_errmsg(r), want) != 0)
    fail_msg("line %d: %d \"%s\", want \"%s\"", line, rc,
             spi_request_errmsg(r), want);
}
#define expect_control(r, set, what, text, at, ch) \
  expect_control_((r), (set), (what), (text), (at), (ch), __LINE__)

/* JSON's whitespace is space, tab, LF and CR; cJSON would skip any byte
 * below 0x20. Before a body or a tool list, between tokens and after, such
 * a byte is refused with its offset. Inside a string it is read as a
 * letter there would be. */
static void test_parse_control_bytes(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  static const char body[] = "{" CHAT_OK "}";
  static const char tools[] = "[{\"name\":\"a\"},2]";
  const struct {
    json_setter set;
    const char *what, *text;
    size_t between, in_string;
  } inputs[] = {
      {set_body, "body", body, 9, 51}, /* after "model":, in "q" */
      {set_tools, "tools", tools, 1, 10}, /* after [, in "a" */
  };
  for (size_t i = 0; i < 2; i++) {
    json_setter set = inputs[i].set;
    const char *what = inputs[i].what, *text = inputs[i].text;
    size_t len = strlen(text);
    expect_control(r, set, what, text, 0, '\x01');
    expect_control(r, set, what, text, 0, '\0');
    expect_control(r, set, what, text, inputs[i].between, '\x1f');
    expect_control(r, set, what, text, inputs[i].between, '\0');
    expect_control(r, set, what, text, len, '\x0b');
    expect_control(r, set, what, text, len, '\0');
    assert_int_equal(set(r, text, len), SPI_OK);
    assert_int_equal(with_byte(r, set, text, inputs[i].in_string, '\x01'),
                     SPI_OK);
  }
  assert_str(r, SPI_REQ_TOOLS_JSON, "[{\"name\":\"\\u0001a\"},2]");
}

static void test_parse_deep_and_large(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  /* A length far beyond the buffer is refused before anything is read. */
  const char tiny[] = "{";
  assert_int_equal(spi_request_parse_openai(r, tiny, SIZE_MAX, SPI_OPENAI_AUTO),
                   SPI_ETOOBIG);
  assert_contains(spi_request_errmsg(r), "exceeds");
  assert_int_equal(spi_request_parse_openai(r, tiny, (size_t)4194305,
                                            SPI_OPENAI_AUTO),
                   SPI_ETOOBIG);
  /* NULL with a length; bad kinds. */
  assert_int_equal(spi_request_parse_openai(r, NULL, 5, SPI_OPENAI_AUTO),
                   SPI_EINVAL);
  assert_int_equal(spi_request_parse_openai(r, NULL, 0, SPI_OPENAI_AUTO),
                   SPI_EPARSE);
  assert_int_equal(parse_kind(r, "{" CHAT_OK "}", 3), SPI_EINVAL);
  assert_int_equal(parse_kind(r, "{" CHAT_OK "}", -1), SPI_EINVAL);
  assert_empty(r);

  /* Deeply nested tools: JSON, but too deep to canonicalise. */
  size_t depth = 200;
  size_t cap = 64 + 2 * depth + sizeof("{" CHAT_OK ",\"tools\":}");
  char *body = malloc(cap);
  assert_non_null(body);
  size_t n = (size_t)snprintf(body, cap, "{" CHAT_OK ",\"tools\":");
  memset(body + n, '[', depth);
  memset(body + n + depth, ']', depth);
  n += 2 * depth;
  body[n++] = '}';
  assert_int_equal(spi_request_parse_openai(r, body, n, SPI_OPENAI_AUTO),
                   SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "tools:");
  assert_empty(r);
  /* Deeply nested content parts. */
  n = (size_t)snprintf(body, cap,
                       "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
                       "\"content\":[{\"type\":\"x\",\"v\":");
  memset(body + n, '[', depth);
  memset(body + n + depth, ']', depth);
  n += 2 * depth;
  n += (size_t)snprintf(body + n, cap - n, "}]}]}");
  assert_int_equal(spi_request_parse_openai(r, body, n, SPI_OPENAI_AUTO),
                   SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "messages[0].content[0]");
  assert_empty(r);
  free(body);

  /* More messages than limits.max_messages (default 2048). */
  size_t count = 2049;
  const char *one = "{\"role\":\"user\",\"content\":\"x\"},";
  cap = 64 + count * strlen(one);
  body = malloc(cap);
  assert_non_null(body);
  n = (size_t)snprintf(body, cap, "{\"model\":\"m\",\"messages\":[");
  for (size_t i = 0; i < count; i++) {
    memcpy(body + n, one, strlen(one));
    n += strlen(one);
  }
  body[n - 1] = ']';
  body[n++] = '}';
  assert_int_equal(spi_request_parse_openai(r, body, n, SPI_OPENAI_AUTO),
                   SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "messages:");
  assert_empty(r);
  /* One fewer fits. */
  n = (size_t)snprintf(body, cap, "{\"model\":\"m\",\"messages\":[");
  for (size_t i = 0; i + 1 < count; i++) {
    memcpy(body + n, one, strlen(one));
    n += strlen(one);
  }
  body[n - 1] = ']';
  body[n++] = '}';
  assert_int_equal(spi_request_parse_openai(r, body, n, SPI_OPENAI_AUTO),
                   SPI_OK);
  assert_int_equal(spi_request_message_count(r), 2048);
  free(body);

  /* A message over limits.max_field_bytes (default 1 MiB). */
  size_t big = 1048577;
  cap = big + 128;
  body = malloc(cap);
  assert_non_null(body);
  n = (size_t)snprintf(body, cap, "{\"model\":\"m\",\"messages\":[{\"role\":"
                                  "\"user\",\"content\":\"");
  memset(body + n, 'a', big);
  n += big;
  n += (size_t)snprintf(body + n, cap - n, "\"}]}");
  assert_int_equal(spi_request_parse_openai(r, body, n, SPI_OPENAI_AUTO),
                   SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "messages[0]");
  assert_contains(spi_request_errmsg(r), "1048577");
  assert_empty(r);
  free(body);
}

/* limits.max_field_bytes holds a parsed message's text, all its text parts
 * together; its images and other framed parts count toward the body only,
 * so a photo does not make a chat message too big. */
static void test_field_limit_counts_text_only(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  configure(f->e, "{\"limits\":{\"max_field_bytes\":16}}");
  char img[300];
  memset(img, 'A', sizeof img - 1);
  img[sizeof img - 1] = 0;
  char body[1024];
  const char *fmt =
      "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":["
      "{\"type\":\"text\",\"text\":\"%s\"},{\"type\":\"image_url\","
      "\"image_url\":{\"url\":\"data:image/png;base64,%s\"}},"
      "{\"type\":\"text\",\"text\":\"%s\"}]}]}";
  /* 16 bytes of text and a 299-byte image: accepted, image and all. */
  snprintf(body, sizeof body, fmt, "0123456789", img, "abcdef");
  assert_int_equal(parse(r, body), SPI_OK);
  assert_int_equal(spi_request_message_count(r), 1);
  assert_true(r->msgs[0].len > 300);
  /* 17 bytes of text over two parts: refused, naming the message. */
  snprintf(body, sizeof body, fmt, "0123456789", img, "abcdefg");
  assert_int_equal(parse(r, body), SPI_ETOOBIG);
  assert_starts(spi_request_errmsg(r), "messages[0].content:");
  assert_contains(spi_request_errmsg(r), "17 bytes of text exceeds 16");
  /* A string content is all text. */
  assert_int_equal(parse(r, "{\"model\":\"m\",\"messages\":[{\"role\":"
                            "\"user\",\"content\":\"0123456789abcdefg\"}]}"),
                   SPI_ETOOBIG);
  /* The field-by-field API still holds the whole message to the limit. */
  assert_int_equal(
      spi_request_add_message(r, LIT("user"), LIT("0123456789abcdefg")),
      SPI_ETOOBIG);
}

/* A failed parse replaces nothing it did not finish: the request is empty,
 * not a mix of the old and the new body. */
static void test_parse_all_or_nothing(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  /* The error sits at the very end, after model, messages, tools, stream
   * and the caps have all been read. */
  static const char *const late[] = {
      ("{\"model\":\"other\",\"messages\":[{\"role\":\"user\",\"content\":"
       "\"new\"}],\"tools\":[],\"stream\":false,\"max_tokens\":5,\"user\":"
       "\"u\",\"priority\":1,\"metadata\":{\"tenant\":\"t\",\"sla_ms\":\"x\"}}"),
      ("{\"model\":\"other\",\"messages\":[{\"role\":\"user\",\"content\":"
       "\"new\"},{\"role\":\"bad\"}]}"),
      "{\"model\":\"other\",\"prompt\":[1,2,3,\"x\"]}",
      "{\"model\":\"other\",\"prompt\":\"p\",\"service_tier\":\"nope\"}",
      "{\"model\":\"other\",\"prompt\":\"p\"",
  };
  for (size_t i = 0; i < sizeof late / sizeof late[0]; i++) {
    assert_int_equal(spi_request_parse_openai(r, CHAT_BODY,
                                              sizeof CHAT_BODY - 1,
                                              SPI_OPENAI_AUTO),
                     SPI_OK);
    const uint32_t ids[] = {9, 9};
    assert_int_equal(spi_request_set_token_ids(r, ids, 2), SPI_OK);
    assert_int_equal(spi_request_set_str(r, SPI_REQ_SYSTEM_PROMPT, LIT("s")),
                     SPI_OK);
    assert_int_equal(spi_request_set_int(r, SPI_REQ_PROMPT_TOKENS, 10), SPI_OK);
    int rc = parse(r, late[i]);
    assert_true(rc < 0);
    assert_string_not_equal(spi_request_errmsg(r), "");
    assert_empty(r);
    /* The emptied request still works, and classifies as empty. */
    spi_classification c;
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    assert_int_equal(spi_classify(r, SPI_PRESSURE_NORMAL, &c), SPI_OK);
    assert_int_equal(c.klass, SPI_CLASS_SILVER);
    assert_string_equal(c.reason, "default class silver");
    /* And a later good parse fills it completely. */
    assert_int_equal(parse(r, "{\"model\":\"m2\",\"prompt\":\"p2\"}"), SPI_OK);
    assert_str(r, SPI_REQ_MODEL, "m2");
    assert_str(r, SPI_REQ_SYSTEM_PROMPT, "");
    assert_unset(r, SPI_REQ_PROMPT_TOKENS);
    assert_int_equal(r->ntokens, 0);
  }
}

/* ------------------------------------------------- system prompt in key */

static spi_cache_key chat_key(spi_request *r, const char *sys_role,
                              const char *sys, const char *user,
                              const char *override) {
  spi_request_reset(r);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, LIT("m")), SPI_OK);
  if (sys)
    assert_int_equal(spi_request_add_message(r, sys_role, strlen(sys_role), sys,
                                             strlen(sys)),
                     SPI_OK);
  assert_int_equal(
      spi_request_add_message(r, LIT("user"), user, strlen(user)), SPI_OK);
  if (override)
    assert_int_equal(spi_request_set_str(r, SPI_REQ_SYSTEM_PROMPT, override,
                                         strlen(override)),
                     SPI_OK);
  return key_of(r);
}

static void test_system_prompt_in_key(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  spi_cache_key base = chat_key(r, "system", "Be nice.", "hi", NULL);
  /* The conversation itself is not in the key; the system prompt is. */
  assert_true(keys_equal(base, chat_key(r, "system", "Be nice.", "bye", NULL)));
  assert_false(keys_equal(base, chat_key(r, "system", "Be mean.", "hi", NULL)));
  assert_false(keys_equal(base, chat_key(r, "system", NULL, "hi", NULL)));
  /* developer messages count as system messages. */
  assert_true(
      keys_equal(base, chat_key(r, "developer", "Be nice.", "hi", NULL)));
  /* SPI_REQ_SYSTEM_PROMPT overrides the messages... */
  assert_true(
      keys_equal(base, chat_key(r, "system", "Be mean.", "hi", "Be nice.")));
  assert_true(keys_equal(base, chat_key(r, "system", NULL, "hi", "Be nice.")));
  assert_false(
      keys_equal(base, chat_key(r, "system", "Be nice.", "hi", "Be mean.")));
  /* ...until it is cleared again. */
  chat_key(r, "system", "Be mean.", "hi", "Be nice.");
  assert_int_equal(spi_request_set_str(r, SPI_REQ_SYSTEM_PROMPT, NULL, 0),
                   SPI_OK);
  assert_false(keys_equal(base, key_of(r)));

  /* Several system messages join with 0x1E, wherever they sit. */
  spi_request_reset(r);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, LIT("m")), SPI_OK);
  assert_int_equal(spi_request_add_message(r, LIT("system"), LIT("A")), SPI_OK);
  assert_int_equal(spi_request_add_message(r, LIT("user"), LIT("u")), SPI_OK);
  assert_int_equal(spi_request_add_message(r, LIT("developer"), LIT("B")),
                   SPI_OK);
  spi_cache_key joined = key_of(r);
  assert_true(keys_equal(joined, chat_key(r, "system", NULL, "x", "A\x1e" "B")));
  assert_false(keys_equal(joined, chat_key(r, "system", NULL, "x", "AB")));

  /* The same through a body. */
  assert_int_equal(parse(r, "{\"model\":\"m\",\"messages\":[{\"role\":"
                            "\"system\",\"content\":\"Be nice.\"},{\"role\":"
                            "\"user\",\"content\":\"other\"}]}"),
                   SPI_OK);
  assert_true(keys_equal(base, key_of(r)));
  assert_int_equal(parse(r, "{\"model\":\"m\",\"messages\":[{\"role\":"
                            "\"system\",\"content\":[{\"type\":\"text\","
                            "\"text\":\"Be \"},{\"type\":\"text\",\"text\":"
                            "\"nice.\"}]},{\"role\":\"user\",\"content\":"
                            "\"q\"}]}"),
                   SPI_OK);
  assert_true(keys_equal(base, key_of(r)));
}

/* ------------------------------------------------ counting allocator */

typedef struct counter {
  long calls;   /* allocation attempts */
  long allocs;  /* successful allocations */
  long frees;
  long fail_at; /* the attempt that fails (0-based), -1 for none */
  int injected; /* the failure happened */
} counter;

static void *count_alloc(void *ud, size_t size) {
  counter *c = ud;
  if (c->calls++ == c->fail_at) {
    c->injected = 1;
    return NULL;
  }
  void *p = malloc(size);
  if (p) c->allocs++;
  return p;
}

static void count_free(void *ud, void *p) {
  counter *c = ud;
  if (p) c->frees++;
  free(p);
}

static spi_hooks hooks_for(counter *c) {
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.alloc = count_alloc;
  h.free = count_free;
  h.alloc_user_data = c;
  return h;
}

/* ------------------------------------------------------- warm hot path */

typedef struct round_out {
  spi_classification c;
  spi_cache_key key;
  uint64_t hashes[8];
  size_t nblocks;
} round_out;

static char LONG_TEXT[3000];

/* One request as a gateway fills it field by field, then every hot call. */
static void hot_round(spi_request *r, int with_tokens, round_out *o) {
  static const char tools[] =
      "[{\"type\":\"function\",\"function\":{\"name\":\"lookup\","
      "\"parameters\":{\"type\":\"object\"}}}]";
  assert_int_equal(spi_request_reset(r), SPI_OK);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, LIT("llama-3-8b")),
                   SPI_OK);
  assert_int_equal(
      spi_request_set_str(r, SPI_REQ_TOKENIZER_VERSION, LIT("tok-v3")), SPI_OK);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TENANT, LIT("acme")), SPI_OK);
  assert_int_equal(
      spi_request_set_str(r, SPI_REQ_TENANT_TIER, LIT("enterprise")), SPI_OK);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, LIT(tools)),
                   SPI_OK);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_SERVICE_TIER, LIT("default")),
                   SPI_OK);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_CLASS, LIT("")), SPI_OK);
  assert_int_equal(
      spi_request_add_message(r, LIT("system"), LIT("You are helpful.")),
      SPI_OK);
  assert_int_equal(spi_request_add_message(r, LIT("user"), LONG_TEXT,
                                           sizeof LONG_TEXT - 1),
                   SPI_OK);
  assert_int_equal(spi_request_add_message(r, LIT("assistant"), LIT("Sure.")),
                   SPI_OK);
  assert_int_equal(spi_request_add_message(r, LIT("user"),
                                           LIT("Analyze and compare them?")),
                   SPI_OK);
  assert_int_equal(spi_request_set_metadata(r, LIT("trace_id"), LIT("t-1")),
                   SPI_OK);
  assert_int_equal(spi_request_set_metadata(r, LIT("sla_ms"), LIT("2000")),
                   SPI_OK);
  assert_int_equal(spi_request_set_int(r, SPI_REQ_STREAM, 1), SPI_OK);
  assert_int_equal(spi_request_set_int(r, SPI_REQ_MAX_OUTPUT_TOKENS, 512),
                   SPI_OK);
  if (with_tokens) {
    uint32_t ids[80];
    for (uint32_t i = 0; i < 80; i++) ids[i] = i * 7u;
    assert_int_equal(spi_request_set_token_ids(r, ids, 80), SPI_OK);
  }
  memset(&o->c, 0, sizeof o->c);
  o->c.struct_size = sizeof o->c;
  assert_int_equal(spi_classify(r, SPI_PRESSURE_HIGH, &o->c), SPI_OK);
  assert_int_equal(spi_request_cache_key(r, &o->key), SPI_OK);
  assert_int_equal(spi_request_block_hashes(r, o->hashes, 8, &o->nblocks),
                   SPI_OK);
}

static void warm_path(int with_tokens) {
  counter c = {0, 0, 0, -1, 0};
  spi_hooks h = hooks_for(&c);
  memset(LONG_TEXT, 'w', sizeof LONG_TEXT - 1);
  spi_engine *e = NULL;
  spi_request *r = NULL;
  assert_int_equal(spi_engine_new(&e, &h), SPI_OK);
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  round_out first, second;
  hot_round(r, with_tokens, &first);
  long before = c.allocs;
  hot_round(r, with_tokens, &second);
  if (c.allocs != before)
    fail_msg("warm round allocated %ld times", c.allocs - before);
  /* Same input, same answers; and the round did real work. */
  assert_int_equal(first.c.klass, SPI_CLASS_GOLD);
  assert_string_equal(first.c.reason, "rule interactive-sla");
  assert_int_equal(first.c.model_tier, SPI_TIER_LARGE);
  assert_int_equal(first.nblocks, with_tokens ? 5 : 3);
  assert_int_equal(second.c.klass, first.c.klass);
  assert_true(keys_equal(first.key, second.key));
  assert_int_equal(second.nblocks, first.nblocks);
  assert_memory_equal(first.hashes, second.hashes,
                      first.nblocks * sizeof first.hashes[0]);
  /* A third round on a fresh reset still does not allocate. */
  hot_round(r, with_tokens, &second);
  assert_int_equal(c.allocs, before);
  spi_request_free(r);
  spi_engine_free(e);
  assert_int_equal(c.allocs, c.frees);
}

static void test_warm_path_no_alloc(void **state) {
  (void)state;
  warm_path(0);
}

static void test_warm_path_no_alloc_tokens(void **state) {
  (void)state;
  warm_path(1);
}

/* -------------------------------------------------- allocation failure */

static const char TORTURE_BODY[] =
    "{\"model\":\"m\",\"messages\":["
    "{\"role\":\"system\",\"content\":\"sys\"},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"look \"},"
    "{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://x/y.png\"}}]},"
    "{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"type\":"
    "\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
    "{\"role\":\"tool\",\"content\":\"ok\"},"
    "{\"role\":\"user\",\"content\":\"why? explain why step by step\"}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
    "\"stream\":true,\"metadata\":{\"sla_ms\":\"1000\",\"tenant\":\"t\","
    "\"note\":\"kept\"}}";

/* Check a failed step: SPI_ENOMEM, with a message on the handle. */
static void assert_enomem_(int rc, const char *msg, int line) {
  if (rc != SPI_ENOMEM)
    fail_msg("line %d: status %d (%s), want SPI_ENOMEM", line, rc, msg);
  if (!msg || !msg[0]) fail_msg("line %d: no message", line);
}
#define assert_enomem(rc, msg) assert_enomem_((rc), (msg), __LINE__)

static void test_alloc_failure_loop(void **state) {
  (void)state;
  /* The reference results, without failures. */
  spi_engine *e = NULL;
  spi_request *r = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  assert_int_equal(parse(r, TORTURE_BODY), SPI_OK);
  spi_classification want_c;
  memset(&want_c, 0, sizeof want_c);
  want_c.struct_size = sizeof want_c;
  assert_int_equal(spi_classify(r, SPI_PRESSURE_NORMAL, &want_c), SPI_OK);
  spi_cache_key want_k = key_of(r);
  const uint8_t *p;
  size_t want_plen;
  assert_int_equal(spi_request_canonical_prompt(r, &p, &want_plen), SPI_OK);
  spi_request_free(r);
  spi_engine_free(e);

  long n;
  int steps_failed[5] = {0, 0, 0, 0, 0};
  for (n = 0; n < 100000; n++) {
    counter c = {0, 0, 0, n, 0};
    spi_hooks h = hooks_for(&c);
    e = NULL;
    r = NULL;
    int rc = spi_engine_new(&e, &h);
    if (rc != SPI_OK) {
      assert_int_equal(rc, SPI_ENOMEM);
      assert_null(e);
      steps_failed[0]++;
      goto check;
    }
    rc = spi_request_new(e, &r);
    if (rc != SPI_OK) {
      assert_enomem(rc, spi_engine_errmsg(e));
      assert_null(r);
      steps_failed[1]++;
      goto free_engine;
    }
    rc = parse(r, TORTURE_BODY);
    if (rc != SPI_OK) {
      assert_enomem(rc, spi_request_errmsg(r));
      assert_empty(r);
      steps_failed[2]++;
      /* Nothing is left broken: the same body parses now. */
      assert_int_equal(parse(r, TORTURE_BODY), SPI_OK);
    }
    spi_classification got;
    memset(&got, 0, sizeof got);
    got.struct_size = sizeof got;
    rc = spi_classify(r, SPI_PRESSURE_NORMAL, &got);
    if (rc != SPI_OK) {
      assert_enomem(rc, spi_request_errmsg(r));
      steps_failed[3]++;
      assert_int_equal(spi_classify(r, SPI_PRESSURE_NORMAL, &got), SPI_OK);
    }
    assert_int_equal(got.klass, want_c.klass);
    assert_int_equal(got.model_tier, want_c.model_tier);
    assert_string_equal(got.reason, want_c.reason);
    spi_cache_key k;
    rc = spi_request_cache_key(r, &k);
    if (rc != SPI_OK) {
      assert_enomem(rc, spi_request_errmsg(r));
      steps_failed[4]++;
      assert_int_equal(spi_request_cache_key(r, &k), SPI_OK);
    }
    assert_true(keys_equal(k, want_k));
    size_t plen;
    assert_int_equal(spi_request_canonical_prompt(r, &p, &plen), SPI_OK);
    assert_int_equal(plen, want_plen);
    spi_request_free(r);
  free_engine:
    spi_engine_free(e);
  check:
    if (c.allocs != c.frees)
      fail_msg("failing allocation %ld: %ld allocations, %ld frees", n,
               c.allocs, c.frees);
    if (!c.injected) break; /* the whole sequence ran without a failure */
  }
  /* The loop ended because the sequence succeeded, and every step that
   * allocates was made to fail at least once. */
  assert_true(n < 100000);
  assert_true(n > 10);
  assert_true(steps_failed[0] > 0);
  assert_true(steps_failed[1] > 0);
  assert_true(steps_failed[2] > 0);
  assert_true(steps_failed[3] > 0);
}

/* --------------------------------------------------------------- misuse */

static void test_misuse(void **state) {
  world *f = *state;
  spi_request fake;
  memset(&fake, 0, sizeof fake);
  spi_request *r = &fake;
  const char *p;
  size_t n;
  int64_t v;
  uint64_t hashes[2];
  spi_cache_key k;
  spi_classification c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  spi_price pr;
  memset(&pr, 0, sizeof pr);
  pr.struct_size = sizeof pr;
  const uint8_t *cp;
  const uint32_t ids[1] = {1};
  /* Zeroed (never a request) and "freed" (dead magic) handles alike, and a
   * request whose engine is not an engine. */
  spi_engine fake_engine;
  memset(&fake_engine, 0, sizeof fake_engine);
  for (int round = 0; round < 3; round++) {
    if (round == 1) fake.magic = SPI_DEAD_MAGIC;
    if (round == 2) {
      fake.magic = SPI_REQUEST_MAGIC;
      fake.engine = &fake_engine;
    }
    assert_int_equal(spi_request_reset(r), SPI_EMISUSE);
    assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, LIT("m")),
                     SPI_EMISUSE);
    assert_int_equal(spi_request_set_int(r, SPI_REQ_STREAM, 1), SPI_EMISUSE);
    assert_int_equal(spi_request_unset_int(r, SPI_REQ_STREAM), SPI_EMISUSE);
    assert_int_equal(spi_request_get_str(r, SPI_REQ_MODEL, &p, &n),
                     SPI_EMISUSE);
    assert_int_equal(spi_request_get_int(r, SPI_REQ_STREAM, &v, NULL),
                     SPI_EMISUSE);
    assert_int_equal(spi_request_add_message(r, LIT("user"), LIT("x")),
                     SPI_EMISUSE);
    assert_int_equal(spi_request_set_metadata(r, LIT("k"), LIT("v")),
                     SPI_EMISUSE);
    assert_int_equal(spi_request_set_token_ids(r, ids, 1), SPI_EMISUSE);
    assert_int_equal(spi_request_exclude_replica(r, LIT("od-a")), SPI_EMISUSE);
    assert_int_equal(parse(r, "{" CHAT_OK "}"), SPI_EMISUSE);
    assert_int_equal(spi_classify(r, 0, &c), SPI_EMISUSE);
    assert_int_equal(spi_request_cache_key(r, &k), SPI_EMISUSE);
    assert_int_equal(spi_request_block_hashes(r, hashes, 2, &n), SPI_EMISUSE);
    assert_int_equal(spi_request_canonical_prompt(r, &cp, &n), SPI_EMISUSE);
    assert_int_equal(spi_request_price(r, SPI_POOL_SPOT, &pr), SPI_EMISUSE);
    assert_int_equal(spi_request_message_count(r), 0);
    if (round < 2)
      assert_string_equal(spi_request_errmsg(r), "invalid request handle");
    /* Freeing a handle that is not a live request does nothing. */
    spi_request_free(round < 2 ? r : NULL);
  }
  assert_string_equal(spi_request_errmsg(NULL), "invalid request handle");
  spi_request_free(NULL);
  assert_int_equal(spi_request_message_count(NULL), 0);
  assert_int_equal(spi_request_reset(NULL), SPI_EMISUSE);

  /* Constructor arguments. */
  spi_request *out = (spi_request *)&fake;
  assert_int_equal(spi_request_new(f->e, NULL), SPI_EINVAL);
  assert_int_equal(spi_request_new(NULL, &out), SPI_EMISUSE);
  assert_null(out);
  out = (spi_request *)&fake;
  assert_int_equal(spi_request_new(&fake_engine, &out), SPI_EMISUSE);
  assert_null(out);

  /* Calls on a live request with bad output arguments. */
  assert_int_equal(spi_classify(f->r, 0, NULL), SPI_EINVAL);
  assert_int_equal(spi_request_cache_key(f->r, NULL), SPI_EINVAL);
  assert_int_equal(spi_request_block_hashes(f->r, NULL, 2, &n), SPI_EINVAL);
  assert_int_equal(spi_request_block_hashes(f->r, hashes, 2, NULL), SPI_EINVAL);
  assert_int_equal(spi_request_set_token_ids(f->r, NULL, 2), SPI_EINVAL);
  assert_int_equal(spi_request_set_metadata(f->r, NULL, 2, LIT("v")),
                   SPI_EINVAL);
  assert_int_equal(spi_request_set_metadata(f->r, LIT("k"), NULL, 2),
                   SPI_EINVAL);
  assert_int_equal(spi_request_message_count(f->r), 0);
}

/* -------------------------------------------------------------- metadata */

/* n copies of the UTF-8 character c into buf (room for them), its length. */
static size_t repeat_utf8(char *buf, const char *c, size_t n) {
  size_t m = strlen(c);
  for (size_t i = 0; i < n; i++) memcpy(buf + i * m, c, m);
  return n * m;
}

/* Metadata limits are OpenAI's, in characters: a value of 200 CJK
 * characters is 600 bytes and within them. Bytes are bounded at 4 a
 * character whatever the text is. */
static void test_metadata_characters(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  static char buf[4096];
  const char *cjk = "\xe6\x97\xa5", *emoji = "\xf0\x9f\x99\x82";
  size_t n = repeat_utf8(buf, cjk, 200);
  assert_int_equal(spi_request_set_metadata(r, LIT("note"), buf, n), SPI_OK);
  n = repeat_utf8(buf, emoji, 512);
  assert_int_equal(n, 2048);
  assert_int_equal(spi_request_set_metadata(r, LIT("note"), buf, n), SPI_OK);
  n = repeat_utf8(buf, cjk, 513);
  assert_int_equal(spi_request_set_metadata(r, LIT("note"), buf, n),
                   SPI_ETOOBIG);
  assert_non_null(strstr(spi_request_errmsg(r), "512"));
  n = repeat_utf8(buf, emoji, 64);
  assert_int_equal(spi_request_set_metadata(r, buf, n, LIT("v")), SPI_OK);
  n = repeat_utf8(buf, cjk, 65);
  assert_int_equal(spi_request_set_metadata(r, buf, n, LIT("v")), SPI_ETOOBIG);
  /* Not UTF-8: stray continuation bytes start no character, but the bytes
   * stay bounded. */
  memset(buf, 0x80, 2049);
  assert_int_equal(spi_request_set_metadata(r, LIT("raw"), buf, 2048), SPI_OK);
  assert_int_equal(spi_request_set_metadata(r, LIT("raw"), buf, 2049),
                   SPI_ETOOBIG);
  assert_int_equal(spi_request_set_metadata(r, buf, 256, LIT("v")), SPI_OK);
  assert_int_equal(spi_request_set_metadata(r, buf, 257, LIT("v")),
                   SPI_ETOOBIG);
  /* And from a body. */
  static char body[4096];
  n = repeat_utf8(buf, cjk, 200);
  snprintf(body, sizeof body,
           "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
           "\"hi\"}],\"metadata\":{\"note\":\"%.*s\"}}",
           (int)n, buf);
  assert_int_equal(spi_request_parse_openai(r, body, strlen(body), 0), SPI_OK);
  buf[n] = '\0';
  assert_true(has_meta(r, "note", buf));
}

static void test_metadata_setter(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  static const struct {
    const char *key, *value;
    int32_t str_field, int_field;
    int64_t want;
  } known[] = {
      {"class", "gold", SPI_REQ_CLASS, 0, 0},
      {"priority", "-7", 0, SPI_REQ_PRIORITY, -7},
      {"sla_ms", "1500", 0, SPI_REQ_SLA_MS, 1500},
      {"replayable", "false", 0, SPI_REQ_REPLAYABLE, 0},
      {"expected_output_tokens", "64", 0, SPI_REQ_EXPECTED_OUTPUT_TOKENS, 64},
      {"tenant", "acme", SPI_REQ_TENANT, 0, 0},
      {"tenant_tier", "free", SPI_REQ_TENANT_TIER, 0, 0},
      {"tenant_salt", "pepper", SPI_REQ_TENANT_SALT, 0, 0},
      {"decode_profile", "batch-greedy", SPI_REQ_DECODE_PROFILE, 0, 0},
      {"tokenizer_version", "v9", SPI_REQ_TOKENIZER_VERSION, 0, 0},
      {"retrieval_template", "rag-1", SPI_REQ_RETRIEVAL_TEMPLATE, 0, 0},
  };
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
    assert_int_equal(spi_request_set_metadata(r, known[i].key,
                                              strlen(known[i].key),
                                              known[i].value,
                                              strlen(known[i].value)),
                     SPI_OK);
    if (known[i].str_field)
      assert_str(r, known[i].str_field, known[i].value);
    else
      assert_int(r, known[i].int_field, known[i].want);
  }
  assert_int_equal(r->nmeta, 11);
  assert_int_equal(r->explicit_class, SPI_CLASS_GOLD);
  /* Keys are case-sensitive: "Class" is just a pair. */
  assert_int_equal(spi_request_set_metadata(r, LIT("Class"), LIT("junk")),
                   SPI_OK);
  assert_int_equal(r->explicit_class, SPI_CLASS_GOLD);
  assert_true(has_meta(r, "Class", "junk"));
  /* An empty value is allowed for a plain key. */
  assert_int_equal(spi_request_set_metadata(r, LIT("empty"), NULL, 0), SPI_OK);
  assert_true(has_meta(r, "empty", ""));
  /* Sizes: key 1..64 characters, value up to 512 (ASCII here). */
  char k65[65], v513[513];
  memset(k65, 'k', sizeof k65);
  memset(v513, 'v', sizeof v513);
  assert_int_equal(spi_request_set_metadata(r, k65, 64, LIT("v")), SPI_OK);
  assert_int_equal(spi_request_set_metadata(r, k65, 65, LIT("v")), SPI_ETOOBIG);
  assert_int_equal(spi_request_set_metadata(r, LIT("big"), v513, 512), SPI_OK);
  assert_int_equal(spi_request_set_metadata(r, LIT("big"), v513, 513),
                   SPI_ETOOBIG);
  assert_int_equal(spi_request_set_metadata(r, NULL, 0, LIT("v")), SPI_ETOOBIG);
  /* A NUL would split the key\0value\0 record. */
  assert_int_equal(spi_request_set_metadata(r, "a\0b", 3, LIT("v")),
                   SPI_EPARSE);
  assert_int_equal(spi_request_set_metadata(r, LIT("k"), "a\0b", 3),
                   SPI_EPARSE);
  /* The 16th pair is the last (default limits.max_metadata_pairs). */
  assert_int_equal(r->nmeta, 15);
  assert_int_equal(spi_request_set_metadata(r, LIT("last"), LIT("1")), SPI_OK);
  assert_int_equal(spi_request_set_metadata(r, LIT("over"), LIT("1")),
                   SPI_ETOOBIG);
  assert_int_equal(r->nmeta, 16);
  /* A failed forward is reported with the metadata path, stores nothing. */
  spi_request_reset(r);
  assert_int_equal(spi_request_set_metadata(r, LIT("sla_ms"), LIT("-1")),
                   SPI_ERANGE);
  assert_starts(spi_request_errmsg(r), "metadata.sla_ms:");
  assert_int_equal(spi_request_set_metadata(r, LIT("class"), LIT("tin")),
                   SPI_EUNKNOWN);
  assert_starts(spi_request_errmsg(r), "metadata.class:");
  assert_int_equal(r->nmeta, 0);
  assert_empty(r);
}

static void test_token_ids(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  uint32_t ids[48];
  for (uint32_t i = 0; i < 48; i++) ids[i] = i;
  assert_int_equal(spi_request_set_token_ids(r, ids, 48), SPI_OK);
  ids[0] = 999; /* copied */
  assert_int_equal(r->ntokens, 48);
  assert_int_equal(r->tokens[0], 0);
  size_t blocks = 0;
  assert_int_equal(spi_request_block_hashes(r, NULL, 0, &blocks), SPI_EBUFSIZE);
  assert_int_equal(blocks, 3);
  assert_contains(spi_request_errmsg(r), "3 blocks, room for 0");
  /* Shrinking reuses the memory; zero clears. */
  assert_int_equal(spi_request_set_token_ids(r, ids, 16), SPI_OK);
  assert_int_equal(spi_request_block_hashes(r, NULL, 0, &blocks), SPI_EBUFSIZE);
  assert_int_equal(blocks, 1);
  assert_int_equal(spi_request_set_token_ids(r, NULL, 0), SPI_OK);
  assert_int_equal(r->ntokens, 0);
  assert_int_equal(spi_request_block_hashes(r, NULL, 0, &blocks), SPI_OK);
  assert_int_equal(blocks, 0);
}

/* The escape scan reads eight bytes at a time: every byte value at every
 * position of a word and of the tail is found (or not) as one by one. */
static void test_prompt_text_escape(void **st) {
  (void)st;
  uint8_t buf[24];
  for (size_t len = 0; len <= sizeof buf; len++)
    for (size_t pos = 0; pos < len; pos++)
      for (int c = 0; c < 256; c++) {
        memset(buf, 'a', sizeof buf);
        buf[pos] = (uint8_t)c;
        if (pos + 1 < len) buf[pos + 1] = 0x1A; /* not reserved */
        size_t want = len;
        for (size_t i = 0; i < len && want == len; i++)
          if (buf[i] >= 0x1B && buf[i] <= 0x1F) want = i;
        assert_int_equal(spi__prompt_reserved_at(buf, len), want);
      }
  /* Long texts take the wide loops (64 bytes a turn, or 256 with AVX2 from
   * 256 bytes where the CPU has it): one byte at every position, its
   * neighbours in value around it (and those the AVX2 turn's moved bytes
   * wrap or change sign at: 0x9A, 0x9B, 0x00, 0x7F, 0x80), and a second
   * reserved byte later that must not be the one found. */
  static const uint8_t probe[] = {0x1A, 0x1B, 0x1D, 0x1F, 0x20, 0x9A,
                                  0x9B, 0xFF, 0x00, 0x7F, 0x80};
  static const size_t lens[] = {63, 64, 127, 255, 256, 257, 300, 511, 512, 513, 1031};
  static uint8_t wide[1031];
  for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++)
    for (size_t pos = 0; pos < lens[l]; pos++)
      for (size_t c = 0; c < sizeof probe; c++) {
        size_t len = lens[l];
        memset(wide, 'a', len);
        wide[pos] = probe[c];
        if (pos + 40 < len) wide[pos + 40] = 0x1E;
        int hit = probe[c] >= 0x1B && probe[c] <= 0x1F;
        size_t want = hit ? pos : pos + 40 < len ? pos + 40 : len;
        assert_int_equal(spi__prompt_reserved_at(wide, len), want);
      }
  counter a = {0, 0, 0, -1, 0};
  spi_mem m = {count_alloc, count_free, &a};
  spi_buf b = {0};
  static const char in[] = "x\x1b\x1c\x1d\x1e\x1f\x18\x1a\n" "0123456789\x1e";
  static const char out[] = "x\x1b[\x1b\\\x1b]\x1b^\x1b_\x18\x1a\n" "0123456789\x1b^";
  assert_int_equal(spi__buf_append_text(&b, &m, in, sizeof in - 1), SPI_OK);
  assert_int_equal(b.len, sizeof out - 1);
  assert_memory_equal(b.data, out, b.len);
  /* Out of memory part way: the buffer is as it was. */
  static char big[200];
  memset(big, 'z', sizeof big);
  big[100] = 0x1e;
  a.fail_at = a.calls;
  assert_int_equal(spi__buf_append_text(&b, &m, big, sizeof big), SPI_ENOMEM);
  assert_int_equal(b.len, sizeof out - 1);
  assert_memory_equal(b.data, out, b.len);
  spi__buf_free(&b, &m);
  assert_int_equal(a.allocs, a.frees);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_str_set_get, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_str_errors, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_class_and_service_tier_names, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_int_ranges, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_messages_and_canonical_prompt, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_empty_messages_fresh_request, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_reset, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_tools_canonical, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_tools_errors, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_limits_from_config, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_field_limit_counts_text_only, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_limits_follow_reconfigure, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_metadata_setter, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_metadata_characters, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_token_ids, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_parse_chat, world_setup, world_teardown),
      cmocka_unit_test(test_prompt_text_escape),
      cmocka_unit_test_setup_teardown(test_tools_big_integers, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_canonical_prompt_structure,
                                      world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_vllm_content_parts, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_parse_chat_variants, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_parse_completions, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_parse_errors, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_parse_raw_nul_and_many_members,
                                      world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_parse_control_bytes, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_parse_deep_and_large, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_parse_all_or_nothing, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_system_prompt_in_key, world_setup,
                                      world_teardown),
      cmocka_unit_test(test_warm_path_no_alloc),
      cmocka_unit_test(test_warm_path_no_alloc_tokens),
      cmocka_unit_test(test_alloc_failure_loop),
      cmocka_unit_test_setup_teardown(test_misuse, world_setup, world_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
