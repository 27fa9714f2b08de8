/*
 * test_canonjson.c - canonical JSON (spi__canon_json).
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

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "spi_internal.h"
#include "std_mem.h"

/* Canonicalise text; returns the status, *out gets a malloc'd copy. */
static int canon(const char *text, char **out) {
  counting_alloc a = {0, 0, -1};
  spi_mem m = counting_mem(&a);
  *out = NULL;
  cJSON *v = cJSON_ParseWithLengthOpts(text, strlen(text), NULL, 0);
  if (!v) fail_msg("cJSON could not parse %s", text);
  spi_buf b = {0};
  int rc = spi__canon_json(v, &b, &m);
  cJSON_Delete(v);
  if (rc == SPI_OK) {
    *out = malloc(b.len + 1);
    if (b.len) memcpy(*out, b.data, b.len);
    (*out)[b.len] = '\0';
  } else {
    assert_int_equal(b.len, 0);
  }
  spi__buf_free(&b, &m);
  assert_int_equal(a.live, 0);
  return rc;
}

static void expect(const char *in, const char *want) {
  char *got = NULL;
  int rc = canon(in, &got);
  if (rc != SPI_OK) fail_msg("%s: status %d", in, rc);
  if (strcmp(got, want) != 0) fail_msg("%s\n  gave %s\n  want %s", in, got, want);
  /* Canonical text is a fixed point. */
  char *again = NULL;
  assert_int_equal(canon(got, &again), SPI_OK);
  assert_string_equal(again, got);
  free(again);
  free(got);
}

static void expect_error(const char *in, int status) {
  char *got = NULL;
  int rc = canon(in, &got);
  if (rc != status) fail_msg("%s: status %d, expected %d", in, rc, status);
  free(got);
}

static void test_key_order(void **st) {
  (void)st;
  expect("{\"b\":1,\"a\":2}", "{\"a\":2,\"b\":1}");
  expect("{}", "{}");
  expect("[]", "[]");
  /* Bytewise: "" < "A" < "a" < "ab" < "b" < "z" < "é" (0xc3) < "😀" (0xf0) */
  expect("{\"😀\":0,\"é\":1,\"z\":2,\"b\":3,\"ab\":4,\"a\":5,\"A\":6,\"\":7}",
         "{\"\":7,\"A\":6,\"a\":5,\"ab\":4,\"b\":3,\"z\":2,\"é\":1,\"😀\":0}");
  /* Array order is kept; objects in arrays are sorted. */
  expect("[3,1,2,{\"y\":[{\"d\":1,\"c\":2}],\"x\":null}]",
         "[3,1,2,{\"x\":null,\"y\":[{\"c\":2,\"d\":1}]}]");
}

static void test_whitespace(void **st) {
  (void)st;
  expect(" \n\t{ \"a\" :\r\n [ 1 , 2 ,\t{ } , [ ] ] , \"b\" : \"x y\" } \n",
         "{\"a\":[1,2,{},[]],\"b\":\"x y\"}");
  expect("true", "true");
  expect(" false ", "false");
  expect("null", "null");
}

static void test_numbers(void **st) {
  (void)st;
  expect("[1,1.0,1e0,10E-1,0.1e1,1.000]", "[1,1,1,1,1,1]");
  expect("[0,-0,-0.0,0e5]", "[0,0,0,0]");
  expect("[-1,-123,42]", "[-1,-123,42]");
  expect("[1.5,-2.25,0.1,1e-7]",
         "[1.5,-2.25,0.10000000000000001,9.9999999999999995e-08]");
  /* The integer range ends at 2^53 in both directions. */
  expect("[9007199254740992,-9007199254740992]",
         "[9007199254740992,-9007199254740992]");
  expect("[9007199254740994,-9007199254740994]",
         "[9007199254740994,-9007199254740994]");
  /* 2^53 + 1 is not a double; it reads as 2^53. */
  expect("9007199254740993", "9007199254740992");
  expect("[1e300,123456789012345678901234567890,1e22]",
         "[1.0000000000000001e+300,1.2345678901234568e+29,1e+22]");
  expect("[2.5e-320]", "[2.4999721679567075e-320]"); /* subnormal */
  /* Overflow to infinity is refused. */
  expect_error("1e999", SPI_EPARSE);
  expect_error("[0,-1e400]", SPI_EPARSE);
}

/* %.17g honours LC_NUMERIC; the output must not. Runs in each installed
 * locale of the list: a comma separator, and ps_AF's two-byte U+066B. */
static void test_numbers_locale(void **st) {
  (void)st;
  static const char *const locales[] = {"de_DE.UTF-8", "de_DE.utf8",
                                        "fr_FR.UTF-8", "ru_RU.UTF-8",
                                        "ps_AF.UTF-8", "ps_AF.utf8"};
  int tried = 0;
  for (size_t i = 0; i < sizeof locales / sizeof locales[0]; i++) {
    if (!setlocale(LC_NUMERIC, locales[i])) continue;
    tried++;
    char probe[16];
    snprintf(probe, sizeof probe, "%.1f", 1.5);
    /* cJSON parses with the locale's separator too, so build the value. */
    cJSON *arr = cJSON_CreateArray();
    cJSON_AddItemToArray(arr, cJSON_CreateNumber(1.5));
    cJSON_AddItemToArray(arr, cJSON_CreateNumber(-0.1));
    cJSON_AddItemToArray(arr, cJSON_CreateNumber(1e300));
    cJSON_AddItemToArray(arr, cJSON_CreateNumber(12345.678));
    counting_alloc a = {0, 0, -1};
    spi_mem m = counting_mem(&a);
    spi_buf b = {0};
    int rc = spi__canon_json(arr, &b, &m);
    setlocale(LC_NUMERIC, "C");
    cJSON_Delete(arr);
    assert_int_equal(rc, SPI_OK);
    if (strcmp(probe, "1.5") == 0) fail_msg("%s uses '.'", locales[i]);
    const char want[] =
        "[1.5,-0.10000000000000001,1.0000000000000001e+300,12345.678]";
    if (b.len != strlen(want) || memcmp(b.data, want, b.len) != 0)
      fail_msg("%s: %.*s", locales[i], (int)b.len, (const char *)b.data);
    spi__buf_free(&b, &m);
  }
  if (!tried) skip();
}

static void test_strings(void **st) {
  (void)st;
  expect("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\\"\\\\/\\b\\f\\n\\r\\t\"");
  expect("\"\\u0001\\u001F\\u0000tail\"", "\"\\u0001\\u001f\"");
  expect("\"a\\u007fb\"", "\"a\x7f" "b\"");
  /* Raw control bytes (accepted by the parser) come out escaped. */
  expect("\"a\x01\x1b" "b\"", "\"a\\u0001\\u001bb\"");
  /* Unicode escapes become UTF-8, including surrogate pairs. */
  expect("\"caf\\u00e9 \\u20ac \\ud83d\\ude00\"", "\"café € 😀\"");
  expect("\"café € 😀\"", "\"café € 😀\"");
  /* Bytes that are not UTF-8 pass through unchanged. */
  expect("\"\xff\xfe\xc3(\"", "\"\xff\xfe\xc3(\"");
  /* Keys are escaped the same way. */
  expect("{\"k\\n\\\"\":\"v\"}", "{\"k\\n\\\"\":\"v\"}");
}

static void test_duplicates(void **st) {
  (void)st;
  expect_error("{\"a\":1,\"a\":2}", SPI_EPARSE);
  expect_error("{\"a\":1,\"b\":2,\"a\":1}", SPI_EPARSE);
  expect_error("[{\"x\":{\"k\":1,\"k\":1}}]", SPI_EPARSE);
  /* Same key after unescaping. */
  expect_error("{\"a\":1,\"\\u0061\":2}", SPI_EPARSE);
  /* Keys that differ only in case are distinct. */
  expect("{\"a\":1,\"A\":2}", "{\"A\":2,\"a\":1}");
}

/* Objects larger than the stack array take the allocated path. */
static void test_large_object(void **st) {
  (void)st;
  char in[4096], want[4096];
  size_t n = 0, w = 0;
  n += (size_t)snprintf(in + n, sizeof in - n, "{");
  w += (size_t)snprintf(want + w, sizeof want - w, "{");
  for (int i = 99; i >= 0; i--)
    n += (size_t)snprintf(in + n, sizeof in - n, "%s\"k%03d\":%d",
                          i == 99 ? "" : ",", i, i);
  for (int i = 0; i < 100; i++)
    w += (size_t)snprintf(want + w, sizeof want - w, "%s\"k%03d\":%d",
                          i ? "," : "", i, i);
  snprintf(in + n, sizeof in - n, "}");
  snprintf(want + w, sizeof want - w, "}");
  expect(in, want);
  /* A duplicate among many. */
  in[n] = '\0'; /* drop the closing brace */
  char dup[4200];
  snprintf(dup, sizeof dup, "%.*s,\"k050\":1}", (int)n, in);
  expect_error(dup, SPI_EPARSE);
}

static char *nested(int depth, const char *open, const char *close) {
  size_t ol = strlen(open), cl = strlen(close);
  char *s = malloc((size_t)depth * (ol + cl) + 2);
  size_t k = 0;
  for (int i = 0; i < depth; i++, k += ol) memcpy(s + k, open, ol);
  s[k++] = '1';
  for (int i = 0; i < depth; i++, k += cl) memcpy(s + k, close, cl);
  s[k] = '\0';
  return s;
}

static void test_depth_limit(void **st) {
  (void)st;
  char *ok = nested(64, "[", "]");
  expect(ok, ok);
  free(ok);
  char *deep = nested(65, "[", "]");
  expect_error(deep, SPI_ETOOBIG);
  free(deep);
  char *obj_ok = nested(64, "{\"a\":", "}");
  expect(obj_ok, obj_ok);
  free(obj_ok);
  char *obj_deep = nested(65, "{\"a\":", "}");
  expect_error(obj_deep, SPI_ETOOBIG);
  free(obj_deep);
  char *very = nested(450, "[{\"k\":", "}]");
  expect_error(very, SPI_ETOOBIG);
  free(very);
}

static void test_appends_and_restores(void **st) {
  (void)st;
  counting_alloc a = {0, 0, -1};
  spi_mem m = counting_mem(&a);
  spi_buf b = {0};
  assert_int_equal(spi__buf_append(&b, &m, "pre:", 4), SPI_OK);
  cJSON *v = cJSON_Parse("{\"b\":[1,2],\"a\":true}");
  assert_int_equal(spi__canon_json(v, &b, &m), SPI_OK);
  cJSON_Delete(v);
  const char want[] = "pre:{\"a\":true,\"b\":[1,2]}";
  assert_int_equal(b.len, strlen(want));
  assert_memory_equal(b.data, want, b.len);
  /* An error leaves the buffer as it was. */
  v = cJSON_Parse("{\"z\":[1,2,3,4,5,6,7,8,9],\"a\":1,\"a\":2}");
  assert_int_equal(spi__canon_json(v, &b, &m), SPI_EPARSE);
  cJSON_Delete(v);
  assert_int_equal(b.len, strlen(want));
  assert_memory_equal(b.data, want, b.len);
  spi__buf_free(&b, &m);
  assert_int_equal(a.live, 0);
}

static void test_invalid_arguments(void **st) {
  (void)st;
  counting_alloc a = {0, 0, -1};
  spi_mem m = counting_mem(&a);
  spi_buf b = {0};
  cJSON *v = cJSON_CreateNull();
  assert_int_equal(spi__canon_json(NULL, &b, &m), SPI_EINVAL);
  assert_int_equal(spi__canon_json(v, NULL, &m), SPI_EINVAL);
  assert_int_equal(spi__canon_json(v, &b, NULL), SPI_EINVAL);
  cJSON_Delete(v);
  /* Trees no parser produces: raw text, NaN, infinity. */
  v = cJSON_CreateRaw("{\"a\":1}");
  assert_int_equal(spi__canon_json(v, &b, &m), SPI_EPARSE);
  cJSON_Delete(v);
  v = cJSON_CreateNumber(NAN);
  assert_int_equal(spi__canon_json(v, &b, &m), SPI_EPARSE);
  cJSON_Delete(v);
  v = cJSON_CreateNumber(-INFINITY);
  assert_int_equal(spi__canon_json(v, &b, &m), SPI_EPARSE);
  cJSON_Delete(v);
  assert_int_equal(b.len, 0);
  spi__buf_free(&b, &m);
  assert_int_equal(a.live, 0);
}

/* Failing each allocation in turn gives SPI_ENOMEM, an unchanged buffer and
 * no leak, until the run that needs no failing allocation succeeds. */
static void test_alloc_failures(void **st) {
  (void)st;
  char text[8192];
  size_t n = (size_t)snprintf(text, sizeof text, "{\"list\":[");
  for (int i = 0; i < 40; i++)
    n += (size_t)snprintf(text + n, sizeof text - n,
                          "%s{\"name\":\"tool-%d\",\"z\":%d.5,\"k%d\":\"v\"}",
                          i ? "," : "", i, i, 39 - i);
  n += (size_t)snprintf(text + n, sizeof text - n, "]");
  for (int i = 0; i < 20; i++)
    n += (size_t)snprintf(text + n, sizeof text - n, ",\"m%02d\":%d", 19 - i, i);
  snprintf(text + n, sizeof text - n, "}");
  cJSON *v = cJSON_Parse(text);
  assert_non_null(v);
  for (long fail = 0;; fail++) {
    counting_alloc a = {0, 0, fail};
    spi_mem m = counting_mem(&a);
    spi_buf b = {0};
    int rc = spi__canon_json(v, &b, &m);
    if (a.calls <= fail) {
      assert_int_equal(rc, SPI_OK);
      assert_true(fail > 2); /* buffer growth and the 21-member object */
      spi__buf_free(&b, &m);
      assert_int_equal(a.live, 0);
      break;
    }
    assert_int_equal(rc, SPI_ENOMEM);
    assert_int_equal(b.len, 0);
    spi__buf_free(&b, &m);
    assert_int_equal(a.live, 0);
  }
  cJSON_Delete(v);
}

/* Canonicalise text with its source at hand (spi__canon_json_src), as the
 * request module does; fail_at refuses that allocation (-1: none). */
static int canon_src(const char *text, long fail_at, char **out) {
  counting_alloc a = {0, 0, fail_at};
  spi_mem m = counting_mem(&a);
  *out = NULL;
  cJSON *v = cJSON_ParseWithLengthOpts(text, strlen(text), NULL, 0);
  if (!v) fail_msg("cJSON could not parse %s", text);
  spi_json_src src;
  spi__json_src_init(&src, text, strlen(text), v);
  spi_buf b = {0};
  assert_int_equal(spi__buf_append(&b, &m, "x", 1), SPI_OK);
  int rc = spi__canon_json_src(v, &b, &m, &src);
  spi__json_src_free(&src, &m);
  cJSON_Delete(v);
  if (rc == SPI_OK) {
    *out = malloc(b.len);
    memcpy(*out, b.data + 1, b.len - 1);
    (*out)[b.len - 1] = '\0';
  } else {
    assert_int_equal(b.len, 1);
  }
  spi__buf_free(&b, &m);
  assert_int_equal(a.live, 0);
  return rc;
}

static void expect_src(const char *in, const char *want) {
  char *got = NULL;
  if (canon_src(in, -1, &got) != SPI_OK) fail_msg("%s: refused", in);
  if (strcmp(got, want) != 0) fail_msg("%s\n  gave %s\n  want %s", in, got, want);
  char *again = NULL;
  assert_int_equal(canon_src(got, -1, &again), SPI_OK);
  assert_string_equal(again, got);
  free(again);
  free(got);
}

/* From 2^53 on one double stands for several integers (2^53 + 1 reads as
 * 2^53): with the source text an integer literal keeps its digits, so two
 * tool lists that differ there never key the same. */
static void test_big_integers(void **st) {
  (void)st;
  expect_src("[9007199254740993]", "[9007199254740993]");
  expect_src("[9007199254740992]", "[9007199254740992]");
  expect_src("[-9007199254740993,-9007199254740992]",
             "[-9007199254740993,-9007199254740992]");
  expect_src("[18446744073709551617]", "[18446744073709551617]");
  /* An integer is one whatever its spelling, as 1 and 1.0 are. */
  expect_src("[1e20,100000000000000000000,1.0E+20,100000000000000000000.000]",
             "[100000000000000000000,100000000000000000000,"
             "100000000000000000000,100000000000000000000]");
  expect_src("[9007199254740993.0,90071992547409930e-1]",
             "[9007199254740993,9007199254740993]");
  /* Below 2^53 and for fractions, the double as before. */
  expect_src("[1,1.0,-0,-0.0,1e0,0.5,1e-7,2.5e15]",
             "[1,1,0,0,1,0.5,9.9999999999999995e-08,2500000000000000]");
  expect_src("[9007199254740993.5]", "[9007199254740994]");
  expect_src("[1e300]", "[1"
             "000000000000000000000000000000000000000000000000000000000000"
             "000000000000000000000000000000000000000000000000000000000000"
             "000000000000000000000000000000000000000000000000000000000000"
             "000000000000000000000000000000000000000000000000000000000000"
             "000000000000000000000000000000000000000000000000000000000000]");
  /* Digits and signs inside strings and keys are not numbers. */
  expect_src("{\"k-1\":\"9007199254740993 -5 \\\" 7\",\"n\":[9007199254740995],"
             "\"m\":{\"x\\\\\":9007199254740997}}",
             "{\"k-1\":\"9007199254740993 -5 \\\" 7\",\"m\":{\"x\\\\\":"
             "9007199254740997},\"n\":[9007199254740995]}");
  /* A lone number, nested values, a subtree of the parsed text. */
  expect_src("9007199254740993", "9007199254740993");
  expect_src("[[[{\"a\":[1,2,9007199254740993]}]],3]",
             "[[[{\"a\":[1,2,9007199254740993]}]],3]");
  const char *text = "{\"a\":[9007199254740993],\"b\":[9007199254740995]}";
  cJSON *v = cJSON_Parse(text);
  spi_json_src src;
  spi__json_src_init(&src, text, strlen(text), v);
  spi_buf b = {0};
  assert_int_equal(spi__canon_json_src(cJSON_GetObjectItem(v, "b"), &b, &MEM,
                                       &src), SPI_OK);
  assert_int_equal(b.len, strlen("[9007199254740995]"));
  assert_memory_equal(b.data, "[9007199254740995]", b.len);
  spi__json_src_free(&src, &MEM);
  spi__buf_free(&b, &MEM);
  cJSON_Delete(v);
  /* Without the text (NULL source), the double as before; overflow is
   * refused either way. */
  expect("[9007199254740993]", "[9007199254740992]");
  char *got = NULL;
  assert_int_equal(canon_src("[1e999]", -1, &got), SPI_EPARSE);
  /* The map is allocated on first need: refusing that allocation is
   * SPI_ENOMEM and leaves the buffer as it was; text without big numbers
   * allocates nothing for it. */
  assert_int_equal(canon_src("[9007199254740993]", 1, &got), SPI_ENOMEM);
  assert_int_equal(canon_src("[1,2.5]", 1, &got), SPI_OK);
  assert_string_equal(got, "[1,2.5]");
  free(got);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_key_order),
      cmocka_unit_test(test_whitespace),
      cmocka_unit_test(test_numbers),
      cmocka_unit_test(test_numbers_locale),
      cmocka_unit_test(test_big_integers),
      cmocka_unit_test(test_strings),
      cmocka_unit_test(test_duplicates),
      cmocka_unit_test(test_large_object),
      cmocka_unit_test(test_depth_limit),
      cmocka_unit_test(test_appends_and_restores),
      cmocka_unit_test(test_invalid_arguments),
      cmocka_unit_test(test_alloc_failures),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
