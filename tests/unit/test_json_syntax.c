/*
 * test_json_syntax.c - the allocation-free JSON check that tells cJSON's
 * out-of-memory NULL from malformed text: its answers on the edges where
 * cJSON is stricter than the JSON grammar (nesting, long numbers,
 * surrogates), and that every text it accepts, cJSON parses; and the
 * one parser built on it (spi__json_parse_as) with its messages, among
 * them the control bytes cJSON takes as whitespace and JSON does not.
 */
#include <locale.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "spi_internal.h"

static int check(const char *text, size_t len) {
  int ok = spi__json_well_formed(text, len);
  cJSON *root = cJSON_ParseWithLengthOpts(text, len, NULL, 0);
  /* Accepted means cJSON parses it too: its NULL can only be memory. */
  if (ok) assert_non_null(root);
  cJSON_Delete(root);
  return ok;
}

static int ck(const char *text) { return check(text, strlen(text)); }

static char *repeat(const char *open, size_t n, const char *close) {
  size_t lo = strlen(open), lc = strlen(close);
  char *s = malloc(n * (lo + lc) + 1);
  assert_non_null(s);
  for (size_t i = 0; i < n; i++) memcpy(s + i * lo, open, lo);
  for (size_t i = 0; i < n; i++) memcpy(s + n * lo + i * lc, close, lc);
  s[n * (lo + lc)] = '\0';
  return s;
}

static void test_values(void **st) {
  (void)st;
  assert_true(ck("{\"a\": [1, -2.5e+3, 0, -0.0, 1E9, true, false, null], "
                 "\"b\": {}, \"c\": []}"));
  assert_true(ck("\"x\\u00e9\\ud83d\\ude00\\n\\/\""));
  assert_true(ck("\xEF\xBB\xBF {\"a\":1}"));
  /* cJSON skips a byte-order mark only in a text of five bytes or more. */
  assert_true(ck("\xEF\xBB\xBF{}"));
  assert_false(ck("\xEF\xBB\xBF" "4"));
  assert_false(ck("\xEF\xBB\xBF "));
  assert_true(ck(" 7 trailing is not this check's business"));
  assert_false(ck(""));
  assert_false(ck("   "));
  assert_false(ck("{\"a\":1,}"));
  assert_false(ck("[1,]"));
  assert_false(ck("{\"a\" 1}"));
  assert_false(ck("{a:1}"));
  assert_false(ck("[tru]"));
  assert_false(ck("{\"action\": \"terminate\", \"time\": \"2026"));
  assert_false(ck("[\"a\x01\"]"));
  assert_false(ck("[\"\\x\"]"));
  assert_false(ck("[01]"));
  assert_false(ck("[.5]"));
  assert_false(ck("[1.]"));
  assert_false(ck("[-]"));
  assert_false(ck("[1e]"));
  assert_false(ck("[\"\\u00zz\"]"));
  /* NULL text, and bytes past len never read. */
  assert_false(spi__json_well_formed(NULL, 0));
  assert_true(check("[1]]]", 3));
  assert_false(check("[1]", 2));
}

/* Where cJSON refuses what the grammar allows, the check refuses too. */
static void test_cjson_limits(void **st) {
  (void)st;
  assert_false(ck("[\"\\udc00\"]"));        /* a lone low surrogate */
  assert_false(ck("[\"\\ud800\"]"));        /* a high one alone */
  assert_false(ck("[\"\\ud800\\u0041\"]")); /* followed by no low one */
  assert_true(ck("[\"\\ud800\\udc00\"]"));
  char num[80];
  memset(num, '1', sizeof num);
  num[0] = '[';
  num[64] = ']';
  num[65] = '\0';
  assert_true(ck(num)); /* 63 digits */
  num[64] = '1';
  num[65] = ']';
  num[66] = '\0';
  assert_false(ck(num)); /* 64 digits: cJSON reads numbers into 64 bytes */
  char *deep = repeat("[", CJSON_NESTING_LIMIT, "]");
  assert_true(ck(deep));
  free(deep);
  deep = repeat("[", CJSON_NESTING_LIMIT + 1, "]");
  assert_false(ck(deep));
  free(deep);
  deep = repeat("{\"a\":", CJSON_NESTING_LIMIT, "}");
  assert_false(ck(deep)); /* the innermost value is missing */
  free(deep);
}

static long cj_allocs, cj_fail_at = -1;

static void *cj_malloc(size_t n) {
  if (cj_allocs++ == cj_fail_at) return NULL;
  return malloc(n);
}

/* Parse text with the Nth of cJSON's allocations failed (-1: none): with
 * spi__json_parse_object for an object, spi__json_parse_as for an array.
 * *allocs gets how many cJSON asked for. */
static int parse_failing(const char *text, int want, long fail_at,
                         long *allocs, cJSON **root, char *err, size_t cap) {
  cJSON_Hooks hooks = {cj_malloc, free};
  cj_allocs = 0;
  cj_fail_at = fail_at;
  cJSON_InitHooks(&hooks);
  int rc = want == cJSON_Object
               ? spi__json_parse_object(text, strlen(text), 4096, "config",
                                        root, err, cap)
               : spi__json_parse_as(text, strlen(text), want, "config", root,
                                    err, cap);
  cJSON_InitHooks(NULL);
  *allocs = cj_allocs;
  return rc;
}

/* Failing each allocation in turn: SPI_ENOMEM every time until none fails;
 * returns how many failed. */
static long out_of_memory_points(const char *text, int want) {
  long points = 0;
  for (long k = 0;; k++) {
    cJSON *root = NULL;
    char err[128] = "";
    long allocs = 0;
    int rc = parse_failing(text, want, k, &allocs, &root, err, sizeof err);
    if (allocs <= k) {
      assert_int_equal(rc, SPI_OK);
      cJSON_Delete(root);
      return points;
    }
    points++;
    assert_int_equal(rc, SPI_ENOMEM);
    assert_null(root);
    assert_string_equal(err, "config: out of memory while parsing JSON");
  }
}

/* spi__json_parse_object (config, classifier, cost, replay sections, the
 * request body, the cloud notices) and its array form (the AWS
 * scheduled-events notice, a request's tools) report an allocation failure
 * inside cJSON as SPI_ENOMEM, failing each allocation in turn; malformed
 * text stays SPI_EPARSE. */
static void test_parse_object_out_of_memory(void **st) {
  (void)st;
  assert_true(out_of_memory_points(
                  "{\"router\":{\"index_bytes\":65536,\"max_tickets\":64},"
                  "\"classes\":[\"a\",\"b\",{\"c\":[1,2,3]}]}",
                  cJSON_Object) >= 10);
  assert_true(out_of_memory_points(
                  "[{\"Code\":\"system-reboot\"},[1,2],\"x\"]", cJSON_Array) >=
              6);
  for (long k = 0; k < 4; k++) {
    cJSON *root = NULL;
    char err[128] = "";
    long allocs = 0;
    int rc = parse_failing("{\"a\":[1,", cJSON_Object, k, &allocs, &root, err,
                           sizeof err);
    assert_int_equal(rc, SPI_EPARSE);
    assert_non_null(strstr(err, "malformed JSON"));
  }
}

/* spi__json_parse_as: one parse for both top-level types, each failure
 * with its status and its words, "what: " first. */
typedef struct parse_case {
  const char *text;
  size_t len;
  int want;
  int rc;
  const char *msg;
} parse_case;

#define CASE(text, want, rc, msg) {text, sizeof text - 1, want, rc, msg}
#define ARRAY_TOP "doc: top level must be a JSON array"
#define NUL_ESCAPE_AT_3 \
  "doc: \\u0000 inside a string at byte offset 3 is not supported"

static const parse_case PARSE_CASES[] = {
    CASE("[1, {\"a\": 2}] \r\n\t", cJSON_Array, SPI_OK, ""),
    CASE(" {\"a\": [1]}\n", cJSON_Object, SPI_OK, ""),
    CASE("{\"a\": 1}", cJSON_Array, SPI_ETYPE, ARRAY_TOP),
    CASE("\"s\"", cJSON_Array, SPI_ETYPE, ARRAY_TOP),
    CASE("[1]", cJSON_Object, SPI_ETYPE,
         "doc: top level must be a JSON object"),
    CASE("[1,", cJSON_Array, SPI_EPARSE,
         "doc: malformed JSON at byte offset 2"),
    CASE("[1] x", cJSON_Array, SPI_EPARSE,
         "doc: trailing data at byte offset 4"),
    CASE("{} {}", cJSON_Object, SPI_EPARSE,
         "doc: trailing data at byte offset 3"),
    CASE("[1] \0", cJSON_Array, SPI_EPARSE, "doc: NUL byte at offset 4"),
    CASE("{}\0", cJSON_Object, SPI_EPARSE, "doc: NUL byte at offset 2"),
    CASE("[\"a\\u0000\"]", cJSON_Array, SPI_EPARSE, NUL_ESCAPE_AT_3),
    CASE("{\"a\\u0000\":1}", cJSON_Object, SPI_EPARSE, NUL_ESCAPE_AT_3),
    /* Trailing data is reported before the type, the type before a NUL. */
    CASE("{} x", cJSON_Array, SPI_EPARSE,
         "doc: trailing data at byte offset 3"),
    CASE("{\"\\u0000\":1}", cJSON_Array, SPI_ETYPE, ARRAY_TOP),
    /* Only len bytes are read. */
    {"[3]]]", 3, cJSON_Array, SPI_OK, ""},
    /* JSON's whitespace is space, tab, LF and CR; cJSON skips any byte
     * below 0x20, which is refused wherever it stands outside a string. */
    CASE(" \t\r\n[ 1 ,\t2\r\n]\r\n", cJSON_Array, SPI_OK, ""),
    CASE("\0[1,\x01 2]", cJSON_Array, SPI_EPARSE, "doc: NUL byte at offset 0"),
    CASE("[1,\x01 2]", cJSON_Array, SPI_EPARSE,
         "doc: control byte 0x01 at byte offset 3"),
    CASE("{\"a\"\x1f:1}", cJSON_Object, SPI_EPARSE,
         "doc: control byte 0x1f at byte offset 4"),
    CASE("{} \x0b", cJSON_Object, SPI_EPARSE,
         "doc: control byte 0x0b at byte offset 3"),
    /* Inside a string cJSON keeps a raw control byte, and so does the
     * parser; only U+0000 is refused there. */
    CASE("[\"a\x01\x1f\tb\"]", cJSON_Array, SPI_OK, ""),
    CASE("[\"ab\0\"]", cJSON_Array, SPI_EPARSE,
         "doc: \\u0000 inside a string at byte offset 4 is not supported"),
    /* A control byte is a fault of syntax, as trailing data is: reported
     * before the type and before a \u0000 in a string, even an earlier
     * one; and before where cJSON gave up on malformed text after it.
     * Trailing data before it comes first. */
    CASE("\x01[1]", cJSON_Object, SPI_EPARSE,
         "doc: control byte 0x01 at byte offset 0"),
    CASE("[\x02] x", cJSON_Array, SPI_EPARSE,
         "doc: control byte 0x02 at byte offset 1"),
    CASE("{} x\x01", cJSON_Object, SPI_EPARSE,
         "doc: trailing data at byte offset 3"),
    CASE("[\"\\u0000\",\x01 1]", cJSON_Array, SPI_EPARSE,
         "doc: control byte 0x01 at byte offset 10"),
    CASE("[1,\x01 2,]", cJSON_Array, SPI_EPARSE,
         "doc: control byte 0x01 at byte offset 3"),
};

static void test_parse_as(void **st) {
  (void)st;
  for (size_t i = 0; i < sizeof PARSE_CASES / sizeof PARSE_CASES[0]; i++) {
    const parse_case *c = &PARSE_CASES[i];
    cJSON *root = (cJSON *)&root; /* set to NULL on every path */
    char err[160] = "";
    int rc = spi__json_parse_as(c->text, c->len, c->want, "doc", &root, err,
                                sizeof err);
    if (rc != c->rc || strcmp(err, c->msg) != 0)
      fail_msg("case %zu: %d \"%s\", want %d \"%s\"", i, rc, err, c->rc,
               c->msg);
    if (rc != SPI_OK) {
      assert_null(root);
      continue;
    }
    assert_true(c->want == cJSON_Array ? cJSON_IsArray(root)
                                       : cJSON_IsObject(root));
    cJSON_Delete(root);
  }
}

/* Every byte below 0x20 but JSON's four whitespace bytes, before the
 * value, between tokens and after it: refused with its offset by both
 * parsers; inside a string: kept, but for U+0000. */
static int parse_n(const char *text, size_t len, int want, char *err,
                   size_t cap) {
  cJSON *root = NULL;
  int rc = want == cJSON_Object
               ? spi__json_parse_object(text, len, 4096, "doc", &root, err,
                                        cap)
               : spi__json_parse_as(text, len, want, "doc", &root, err, cap);
  if (rc != SPI_OK) assert_null(root);
  cJSON_Delete(root);
  return rc;
}

static void expect_control(const char *text, size_t len, int want,
                           size_t off) {
  char err[160] = "", msg[160];
  unsigned char ch = (unsigned char)text[off];
  if (ch == 0)
    snprintf(msg, sizeof msg, "doc: NUL byte at offset %zu", off);
  else
    snprintf(msg, sizeof msg, "doc: control byte 0x%02x at byte offset %zu",
             (unsigned)ch, off);
  int rc = parse_n(text, len, want, err, sizeof err);
  if (rc != SPI_EPARSE || strcmp(err, msg) != 0)
    fail_msg("byte 0x%02x at %zu: %d \"%s\", want \"%s\"", (unsigned)ch, off,
             rc, err, msg);
}

static void test_control_bytes(void **st) {
  (void)st;
  for (unsigned ch = 0; ch < 0x20; ch++) {
    if (ch == '\t' || ch == '\n' || ch == '\r') continue;
    char t[32];
    /* before the value, between tokens (three places), after it */
    int n = snprintf(t, sizeof t, "X[1,2]");
    t[0] = (char)ch;
    expect_control(t, (size_t)n, cJSON_Array, 0);
    n = snprintf(t, sizeof t, "[1,X2]");
    t[3] = (char)ch;
    expect_control(t, (size_t)n, cJSON_Array, 3);
    n = snprintf(t, sizeof t, "{\"a\"X:1}");
    t[4] = (char)ch;
    expect_control(t, (size_t)n, cJSON_Object, 4);
    n = snprintf(t, sizeof t, "{\"a\": {}X }");
    t[8] = (char)ch;
    expect_control(t, (size_t)n, cJSON_Object, 8);
    n = snprintf(t, sizeof t, "{\"a\":1} X");
    t[8] = (char)ch;
    expect_control(t, (size_t)n, cJSON_Object, 8);
    /* the last byte of text that ends too soon (cJSON stops at it) */
    n = snprintf(t, sizeof t, "X");
    t[0] = (char)ch;
    expect_control(t, (size_t)n, cJSON_Array, 0);
    n = snprintf(t, sizeof t, "[1,X");
    t[3] = (char)ch;
    expect_control(t, (size_t)n, cJSON_Array, 3);
    n = snprintf(t, sizeof t, "{\"a\":1,X");
    t[7] = (char)ch;
    expect_control(t, (size_t)n, cJSON_Object, 7);
    /* inside a string */
    n = snprintf(t, sizeof t, "{\"aXb\":\"cXd\"}");
    t[2] = t[8] = (char)ch;
    char err[160] = "";
    int rc = parse_n(t, (size_t)n, cJSON_Object, err, sizeof err);
    if (ch == 0) {
      assert_int_equal(rc, SPI_EPARSE);
      assert_string_equal(err, "doc: \\u0000 inside a string at byte offset 2 "
                               "is not supported");
    } else if (rc != SPI_OK) {
      fail_msg("byte 0x%02x in a string: %d \"%s\"", ch, rc, err);
    }
  }
}

/* Malformed is malformed whichever allocation fails: text with a control
 * byte between tokens is never taken for an allocation failure. */
static void test_control_bytes_out_of_memory(void **st) {
  (void)st;
  const char *texts[] = {"{\"a\":[1,\x01 2],\"b\":{\"c\":\"d\"}}",
                         "\x1f{\"a\":[1,2],\"b\":{\"c\":\"d\"}}"};
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    for (long k = 0; k < 12; k++) {
      cJSON *root = NULL;
      char err[128] = "";
      long allocs = 0;
      int rc = parse_failing(texts[i], cJSON_Object, k, &allocs, &root, err,
                             sizeof err);
      assert_int_equal(rc, SPI_EPARSE);
      assert_null(root);
    }
  }
}

/* spi__json_number: the JSON number grammar, no locale, exact results. */
static void test_number_text(void **st) {
  (void)st;
  static const struct {
    const char *text;
    double want;
  } ok[] = {{"0", 0},         {"-0", -0.0},     {"0.85", 0.85},
            {"1.8", 1.8},     {"4.5", 4.5},     {"8388608", 8388608},
            {"-1", -1},       {"1e3", 1000},    {"2.5E-2", 0.025},
            {"1e+2", 100},    {"0.1", 0.1},     {"123456789012345", 123456789012345.0},
            {"9007199254740992", 9007199254740992.0}, {"1e22", 1e22},
            {"1e-22", 1e-22}, {"0.000001", 1e-6}};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    double v = -7;
    if (spi__json_number(ok[i].text, strlen(ok[i].text), &v) != 0 ||
        v != ok[i].want)
      fail_msg("%s read as %.17g", ok[i].text, v);
  }
  /* Outside the exact range the answer is still close. */
  double v = 0;
  assert_int_equal(spi__json_number("1.5e300", 7, &v), 0);
  assert_true(fabs(v / 1.5e300 - 1) < 1e-14);
  assert_int_equal(spi__json_number("12345678901234567890123", 23, &v), 0);
  assert_true(fabs(v / 12345678901234567890123.0 - 1) < 1e-14);
  assert_int_equal(spi__json_number("1e-400", 6, &v), 0);
  assert_true(v == 0);
  static const char *const bad[] = {"",    "-",    "+1",  "01",   "1.",
                                    ".5",  "1e",   "1e+", "0x10", "1,5",
                                    "1.5 ", " 1",  "inf", "NaN",  "1e999",
                                    "null", "--1", "1..2"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    v = -7;
    if (spi__json_number(bad[i], strlen(bad[i]), &v) != -1 || v != -7)
      fail_msg("\"%s\" accepted as %.17g", bad[i], v);
  }
  /* Only the n bytes given are read. */
  assert_int_equal(spi__json_number("0.85xyz", 4, &v), 0);
  assert_true(v == 0.85);
}

/* cJSON through the library reads and prints numbers the same in every
 * locale; ps_AF's two-byte decimal separator broke both. Runs in each
 * installed locale of the list, skipped when there is none. */
static void test_cjson_in_any_locale(void **st) {
  (void)st;
  static const char *const names[] = {"de_DE.UTF-8", "fr_FR.UTF-8",
                                      "ps_AF.UTF-8"};
  int tried = 0;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (!setlocale(LC_NUMERIC, names[i])) continue;
    tried++;
    const char *text = "[0.85,-2.5e-3,1.5]";
    cJSON *v = spi__cjson_parse(text, strlen(text), NULL);
    char *out = v ? spi__cjson_print(v) : NULL;
    double a = v ? v->child->valuedouble : 0;
    setlocale(LC_NUMERIC, "C");
    if (!v) fail_msg("%s: %s not parsed", names[i], text);
    assert_true(a == 0.85);
    assert_string_equal(out, "[0.85,-0.0025,1.5]");
    cJSON_free(out);
    cJSON_Delete(v);
  }
  if (!tried) skip();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_values),
      cmocka_unit_test(test_cjson_limits),
      cmocka_unit_test(test_parse_object_out_of_memory),
      cmocka_unit_test(test_parse_as),
      cmocka_unit_test(test_control_bytes),
      cmocka_unit_test(test_control_bytes_out_of_memory),
      cmocka_unit_test(test_number_text),
      cmocka_unit_test(test_cjson_in_any_locale),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
