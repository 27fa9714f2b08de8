/*
 * test_continuation.c - spi_replay_continuation(): chat and completions
 * continuations, budgets, replay from scratch for guided decoding and for
 * partial output the prompt cannot take, the buffer convention, and every
 * error.
 */
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

static spi_envelope env_of(const char *body, int32_t kind, const char *text,
                           uint64_t offset) {
  spi_envelope v;
  memset(&v, 0, sizeof v);
  v.struct_size = sizeof v;
  v.key = "k";
  v.key_len = 1;
  v.body = body;
  v.body_len = strlen(body);
  v.openai_kind = kind;
  v.klass = SPI_CLASS_GOLD;
  v.partial_text = text;
  v.partial_text_len = text ? strlen(text) : 0;
  v.stream_offset = offset;
  return v;
}

/* The continuation as a string (static buffer), with its flags. */
static const char *cont(const spi_envelope *v, uint32_t *flags, int *rc) {
  static char buf[8192];
  size_t need = 0;
  *rc = spi_replay_continuation(v, buf, sizeof buf, &need, flags);
  if (*rc == SPI_OK) assert_int_equal(strlen(buf), need);
  return buf;
}

static void expect(const spi_envelope *v, const char *want,
                   uint32_t want_flags) {
  uint32_t flags = 0xdead;
  int rc;
  const char *got = cont(v, &flags, &rc);
  if (rc != SPI_OK || strcmp(got, want) != 0)
    print_error("got %d %s\nwant    %s\n", rc, got, want);
  assert_int_equal(rc, SPI_OK);
  assert_string_equal(got, want);
  assert_int_equal(flags, want_flags);
}

static void expect_rc(const spi_envelope *v, int want) {
  uint32_t flags = 0;
  int rc;
  (void)cont(v, &flags, &rc);
  assert_int_equal(rc, want);
}

/* ---------------------------------------------------------------- chat */

static void test_chat_new_assistant_message(void **st) {
  (void)st;
  spi_envelope v = env_of(
      "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be "
      "brief\"},{\"role\":\"user\",\"content\":\"tell a story\"}],"
      "\"max_tokens\":100,\"stream\":true,\"temperature\":0.7}",
      SPI_OPENAI_CHAT, "Once upon a time", 4);
  expect(&v,
         "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be "
         "brief\"},{\"role\":\"user\",\"content\":\"tell a story\"},{\"role\":"
         "\"assistant\",\"content\":\"Once upon a time\"}],\"max_tokens\":96,"
         "\"stream\":true,\"temperature\":0.7,\"continue_final_message\":true,"
         "\"add_generation_prompt\":false}",
         0);
  /* AUTO finds "messages". */
  v.openai_kind = SPI_OPENAI_AUTO;
  uint32_t flags;
  int rc;
  assert_non_null(
      strstr(cont(&v, &flags, &rc), "\"continue_final_message\":true"));
  assert_int_equal(rc, SPI_OK);
}

static void test_chat_extends_trailing_assistant(void **st) {
  (void)st;
  /* A prefilled assistant message grows; existing flags are overwritten. */
  spi_envelope v =
      env_of("{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":"
             "\"assistant\",\"content\":\"The answer is\"}],"
             "\"continue_final_message\":false,\"add_generation_prompt\":true,"
             "\"max_completion_tokens\":10}",
             SPI_OPENAI_CHAT, " 42", 2);
  expect(&v,
         "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":"
         "\"assistant\",\"content\":\"The answer is 42\"}],"
         "\"continue_final_message\":true,\"add_generation_prompt\":false,"
         "\"max_completion_tokens\":8}",
         0);
  /* Content parts: a text part is added. */
  v = env_of("{\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":"
             "\"text\",\"text\":\"a\"}]}]}",
             SPI_OPENAI_CHAT, "b", 1);
  expect(&v,
         "{\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":"
         "\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]}],"
         "\"continue_final_message\":true,\"add_generation_prompt\":false}",
         0);
  /* Null content takes the text. */
  v = env_of("{\"messages\":[{\"role\":\"assistant\",\"content\":null}]}",
             SPI_OPENAI_CHAT, "x", 1);
  expect(&v,
         "{\"messages\":[{\"role\":\"assistant\",\"content\":\"x\"}],"
         "\"continue_final_message\":true,\"add_generation_prompt\":false}",
         0);
  /* A trailing assistant message with tool calls is an action: a new
   * message follows it. */
  v = env_of("{\"messages\":[{\"role\":\"assistant\",\"content\":null,"
             "\"tool_calls\":[{\"id\":\"1\"}]}]}",
             SPI_OPENAI_CHAT, "x", 1);
  expect(&v,
         "{\"messages\":[{\"role\":\"assistant\",\"content\":null,"
         "\"tool_calls\":[{\"id\":\"1\"}]},{\"role\":\"assistant\","
         "\"content\":\"x\"}],\"continue_final_message\":true,"
         "\"add_generation_prompt\":false}",
         0);
  /* Escapes and UTF-8 survive. */
  v = env_of("{\"messages\":[]}", SPI_OPENAI_CHAT,
             "line\n\"quoted\" \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 5);
  expect(&v,
         "{\"messages\":[{\"role\":\"assistant\",\"content\":\"line\\n\\\""
         "quoted\\\" \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}],"
         "\"continue_final_message\":true,\"add_generation_prompt\":false}",
         0);
}

/* ------------------------------------------------------------ budgets */

static void test_budgets(void **st) {
  (void)st;
  spi_envelope v = env_of("{\"messages\":[],\"max_tokens\":10,"
                          "\"max_completion_tokens\":20,\"min_tokens\":5}",
                          SPI_OPENAI_CHAT, "t", 9);
  expect(&v,
         "{\"messages\":[{\"role\":\"assistant\",\"content\":\"t\"}],"
         "\"max_tokens\":1,\"max_completion_tokens\":11,\"min_tokens\":0,"
         "\"continue_final_message\":true,\"add_generation_prompt\":false}",
         0);
  /* Nothing left to generate. */
  v.stream_offset = 10;
  expect_rc(&v, SPI_ERANGE);
  v = env_of("{\"messages\":[],\"max_completion_tokens\":3}", SPI_OPENAI_CHAT,
             "t", 3);
  expect_rc(&v, SPI_ERANGE);
  /* Budgets of the wrong kind. */
  v = env_of("{\"messages\":[],\"max_tokens\":\"10\"}", SPI_OPENAI_CHAT, "t",
             1);
  expect_rc(&v, SPI_EPARSE);
  v = env_of("{\"messages\":[],\"max_tokens\":2.5}", SPI_OPENAI_CHAT, "t", 1);
  expect_rc(&v, SPI_EPARSE);
  v = env_of("{\"messages\":[],\"max_tokens\":-1}", SPI_OPENAI_CHAT, "t", 1);
  expect_rc(&v, SPI_EPARSE);
  /* null is no budget. */
  v = env_of("{\"messages\":[],\"max_tokens\":null}", SPI_OPENAI_CHAT, "t", 1);
  expect(&v,
         "{\"messages\":[{\"role\":\"assistant\",\"content\":\"t\"}],"
         "\"max_tokens\":null,\"continue_final_message\":true,"
         "\"add_generation_prompt\":false}",
         0);
}

/* ------------------------------------------------------------- numbers */

/* The cache key of a body, from a request of a fresh engine. */
static spi_cache_key key_of_body(const char *body) {
  spi_engine *e = NULL;
  spi_request *r = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  int rc = spi_request_parse_openai(r, body, strlen(body), SPI_OPENAI_AUTO);
  if (rc != SPI_OK) print_error("parse %d %s\n", rc, spi_request_errmsg(r));
  assert_int_equal(rc, SPI_OK);
  spi_cache_key k = {0, 0};
  assert_int_equal(spi_request_cache_key(r, &k), SPI_OK);
  spi_request_free(r);
  spi_engine_free(e);
  return k;
}

/* Every number of the body comes back as the client spelled it: an integer
 * beyond 2^53 (which a double would round), a float, an exponent, one that
 * overflows a double. The tools keep their exact digits, so the
 * continuation keys as the original does. */
static void test_numbers_as_spelled(void **st) {
  (void)st;
#define TOOLS                                                              \
  "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","       \
  "\"parameters\":{\"type\":\"object\",\"properties\":{\"n\":{\"type\":"   \
  "\"integer\",\"maximum\":9007199254740993,\"minimum\":-1.50E+1}}}}}]"
  static const char body[] =
      "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
      TOOLS ",\"seed\":12345678901234567,\"temperature\":0.1,\"top_p\":1.0,"
      "\"logit_bias\":{\"50256\":-100,\"11\":2.5e-3},\"max_tokens\":100,"
      "\"x\":[1e400,-0,0.30000000000000004]}";
  spi_envelope v = env_of(body, SPI_OPENAI_CHAT, "Hel", 1);
  static const char want[] =
      "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},"
      "{\"role\":\"assistant\",\"content\":\"Hel\"}]," TOOLS
      ",\"seed\":12345678901234567,\"temperature\":0.1,\"top_p\":1.0,"
      "\"logit_bias\":{\"50256\":-100,\"11\":2.5e-3},\"max_tokens\":99,"
      "\"x\":[1e400,-0,0.30000000000000004],"
      "\"continue_final_message\":true,\"add_generation_prompt\":false}";
  expect(&v, want, 0);
  /* The continuation's key is the original's (the messages are not in it). */
  spi_cache_key a = key_of_body(body), b = key_of_body(want);
  assert_true(a.high64 == b.high64 && a.low64 == b.low64);
  /* A budget keeps its spelling when nothing changes it, and is written
   * anew when the offset reduces it. */
  v = env_of("{\"prompt\":\"a\",\"max_tokens\":1.0e2,\"min_tokens\":5}",
             SPI_OPENAI_COMPLETIONS, "b", 0);
  expect(&v, "{\"prompt\":\"ab\",\"max_tokens\":1.0e2,\"min_tokens\":5}", 0);
  v.stream_offset = 3;
  expect(&v, "{\"prompt\":\"ab\",\"max_tokens\":97,\"min_tokens\":2}", 0);
  /* Token ids keep theirs; the ids added are written as integers. */
  static const uint32_t ids[] = {7, 8};
  v = env_of("{\"prompt\":[1,2.0E0],\"max_tokens\":9}", SPI_OPENAI_COMPLETIONS,
             NULL, 2);
  v.partial_tokens = ids;
  v.partial_token_count = 2;
  expect(&v, "{\"prompt\":[1,2.0E0,7,8],\"max_tokens\":7}", 0);
  /* cJSON also reads literals JSON has not; they print from the double. */
  v = env_of("{\"prompt\":\"a\",\"x\":[01,1.,-2.e1]}",
             SPI_OPENAI_COMPLETIONS, "b", 0);
  expect(&v, "{\"prompt\":\"ab\",\"x\":[1,1,-20]}", 0);
#undef TOOLS
}

/* ---------------------------------------------------------- completions */

static void test_completions(void **st) {
  (void)st;
  spi_envelope v = env_of("{\"model\":\"m\",\"prompt\":\"The sky is\","
                          "\"max_tokens\":16}",
                          SPI_OPENAI_COMPLETIONS, " blue", 1);
  expect(&v,
         "{\"model\":\"m\",\"prompt\":\"The sky is blue\",\"max_tokens\":15}",
         0);
  /* AUTO without messages is completions. */
  v.openai_kind = SPI_OPENAI_AUTO;
  expect(&v,
         "{\"model\":\"m\",\"prompt\":\"The sky is blue\",\"max_tokens\":15}",
         0);
  /* Token ids extend a token-id prompt. */
  static const uint32_t toks[] = {7, 4294967295u};
  v = env_of("{\"prompt\":[1,2,3],\"max_tokens\":5}", SPI_OPENAI_COMPLETIONS,
             NULL, 2);
  v.partial_tokens = toks;
  v.partial_token_count = 2;
  expect(&v, "{\"prompt\":[1,2,3,7,4294967295],\"max_tokens\":3}", 0);
  /* One-element lists are one prompt. */
  v = env_of("{\"prompt\":[\"a\"]}", SPI_OPENAI_COMPLETIONS, "b", 1);
  expect(&v, "{\"prompt\":[\"ab\"]}", 0);
  v = env_of("{\"prompt\":[[1]]}", SPI_OPENAI_COMPLETIONS, NULL, 1);
  v.partial_tokens = toks;
  v.partial_token_count = 1;
  expect(&v, "{\"prompt\":[[1,7]]}", 0);
  /* A batch is not one request. */
  v = env_of("{\"prompt\":[\"a\",\"b\"]}", SPI_OPENAI_COMPLETIONS, "c", 1);
  expect_rc(&v, SPI_EPARSE);
  v = env_of("{\"max_tokens\":3}", SPI_OPENAI_COMPLETIONS, "c", 1);
  expect_rc(&v, SPI_EPARSE);
  v = env_of("{\"prompt\":5}", SPI_OPENAI_COMPLETIONS, "c", 1);
  expect_rc(&v, SPI_EPARSE);
}

/* ------------------------------------------------------------ from scratch */

static void test_from_scratch(void **st) {
  (void)st;
  static const char *const guided[] = {
      ("{\"messages\":[],\"response_format\":{\"type\":\"json_schema\","
       "\"json_schema\":{}},\"max_tokens\":9}"),
      "{\"messages\":[],\"response_format\":{\"type\":\"json_object\"}}",
      "{\"messages\":[],\"guided_json\":{\"type\":\"object\"}}",
      "{\"messages\":[],\"guided_regex\":\"[a-z]+\"}",
      "{\"messages\":[],\"guided_grammar\":\"root ::= x\"}",
      "{\"messages\":[],\"guided_choice\":[\"yes\",\"no\"]}",
      "{\"messages\":[],\"guided_decoding\":{\"choice\":[\"a\"]}}",
      "{\"prompt\":\"p\", \"structured_outputs\":{\"regex\":\"x\"}}",
  };
  for (size_t i = 0; i < sizeof guided / sizeof guided[0]; i++) {
    spi_envelope v = env_of(guided[i], SPI_OPENAI_AUTO, "{\"a\":", 3);
    /* The original bytes, as they came. */
    expect(&v, guided[i], SPI_ENVELOPE_FROM_SCRATCH);
  }
  /* A text response format is fine to continue. */
  spi_envelope v = env_of("{\"messages\":[],\"response_format\":{\"type\":"
                          "\"text\"},\"guided_json\":null}",
                          SPI_OPENAI_CHAT, "x", 1);
  uint32_t flags = 9;
  int rc;
  assert_non_null(strstr(cont(&v, &flags, &rc), "continue_final_message"));
  assert_int_equal(flags, 0);
  /* Flagged already: from scratch. */
  v = env_of("{\"messages\":[]}", SPI_OPENAI_CHAT, "x", 1);
  v.flags = SPI_ENVELOPE_FROM_SCRATCH;
  expect(&v, "{\"messages\":[]}", SPI_ENVELOPE_FROM_SCRATCH);
  /* Partial output in a form the prompt cannot take. */
  static const uint32_t toks[] = {1};
  v = env_of("{\"messages\":[]}", SPI_OPENAI_CHAT, NULL, 1);
  v.partial_tokens = toks;
  v.partial_token_count = 1;
  expect(&v, "{\"messages\":[]}", SPI_ENVELOPE_FROM_SCRATCH);
  v = env_of("{\"prompt\":\"p\"}", SPI_OPENAI_COMPLETIONS, NULL, 1);
  v.partial_tokens = toks;
  v.partial_token_count = 1;
  expect(&v, "{\"prompt\":\"p\"}", SPI_ENVELOPE_FROM_SCRATCH);
  v = env_of("{\"prompt\":[5]}", SPI_OPENAI_COMPLETIONS, "text", 1);
  expect(&v, "{\"prompt\":[5]}", SPI_ENVELOPE_FROM_SCRATCH);
  v = env_of("{\"messages\":[]}", SPI_OPENAI_CHAT, NULL, 3); /* offset only */
  expect(&v, "{\"messages\":[]}", SPI_ENVELOPE_FROM_SCRATCH);
  /* Nothing streamed: the request as it came, not flagged. */
  v = env_of("{ \"messages\" : [] , \"max_tokens\":4 }", SPI_OPENAI_CHAT, NULL,
             0);
  expect(&v, "{ \"messages\" : [] , \"max_tokens\":4 }", 0);
}

/* ------------------------------------------------------------ buffers */

static void test_buffer(void **st) {
  (void)st;
  spi_envelope v = env_of("{\"prompt\":\"a\"}", SPI_OPENAI_COMPLETIONS, "b", 1);
  size_t need = 0;
  uint32_t flags = 0;
  assert_int_equal(spi_replay_continuation(&v, NULL, 0, &need, &flags),
                   SPI_EBUFSIZE);
  assert_int_equal(need, strlen("{\"prompt\":\"ab\"}"));
  char buf[64];
  assert_int_equal(spi_replay_continuation(&v, buf, need, &need, NULL),
                   SPI_EBUFSIZE);
  assert_int_equal(spi_replay_continuation(&v, buf, need + 1, NULL, NULL),
                   SPI_OK);
  assert_string_equal(buf, "{\"prompt\":\"ab\"}");
  /* From scratch too. */
  v.flags = SPI_ENVELOPE_FROM_SCRATCH;
  assert_int_equal(spi_replay_continuation(&v, buf, 3, &need, &flags),
                   SPI_EBUFSIZE);
  assert_int_equal(need, v.body_len);
  assert_int_equal(flags, SPI_ENVELOPE_FROM_SCRATCH);
}

/* ------------------------------------------------------------ errors */

static void test_errors(void **st) {
  (void)st;
  char buf[256];
  spi_envelope v = env_of("{\"prompt\":\"a\"}", SPI_OPENAI_COMPLETIONS, "b", 1);
  assert_int_equal(spi_replay_continuation(NULL, buf, sizeof buf, NULL, NULL),
                   SPI_EINVAL);
  assert_int_equal(spi_replay_continuation(&v, NULL, 5, NULL, NULL),
                   SPI_EINVAL);
  spi_envelope b = v;
  b.struct_size = 4;
  expect_rc(&b, SPI_EINVAL);
  b = v;
  b.partial_text = NULL;
  expect_rc(&b, SPI_EINVAL);
  b = v;
  b.partial_token_count = 2;
  expect_rc(&b, SPI_EINVAL);
  b = v;
  b.body = NULL;
  expect_rc(&b, SPI_EINVAL);
  b = v;
  b.body_len = 0;
  expect_rc(&b, SPI_EPARSE);
  b.openai_kind = 7;
  b.body = "{\"prompt\":\"a\"}";
  b.body_len = strlen(b.body);
  expect_rc(&b, SPI_EINVAL);
  /* Partial text that is not UTF-8, or holds a NUL. */
  b = v;
  b.partial_text = "\xc3";
  b.partial_text_len = 1;
  expect_rc(&b, SPI_EINVAL);
  b.partial_text = "\xed\xa0\x80"; /* a surrogate */
  b.partial_text_len = 3;
  expect_rc(&b, SPI_EINVAL);
  b.partial_text = "\xc0\xaf"; /* overlong */
  b.partial_text_len = 2;
  expect_rc(&b, SPI_EINVAL);
  b.partial_text = "a\0b";
  b.partial_text_len = 3;
  expect_rc(&b, SPI_EINVAL);
  /* Bodies. */
  static const char *const bad[] = {
      "{",
      "[1]",
      "\"s\"",
      "{\"prompt\":\"a\"} x",
      "{\"prompt\":\"a\",\"prompt\":\"b\"}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    b = env_of(bad[i], SPI_OPENAI_COMPLETIONS, "x", 1);
    expect_rc(&b, SPI_EPARSE);
  }
  b = env_of("{\"messages\":{}}", SPI_OPENAI_CHAT, "x", 1);
  expect_rc(&b, SPI_EPARSE);
  b = env_of("{\"messages\":[{\"role\":\"assistant\",\"content\":3}]}",
             SPI_OPENAI_CHAT, "x", 1);
  expect_rc(&b, SPI_EPARSE);
  /* cJSON would cut the string at an escaped NUL, so the continuation
   * would resume a different prompt: refused, as spi_route refuses it. */
  b = env_of("{\"prompt\":\"a\\u0000b\"}", SPI_OPENAI_COMPLETIONS, "x", 1);
  expect_rc(&b, SPI_EPARSE);
  b = env_of("{\"messages\":[{\"role\":\"user\",\"content\":\"q\\u0000\"}]}",
             SPI_OPENAI_CHAT, "x", 1);
  expect_rc(&b, SPI_EPARSE);
  /* Trailing whitespace is fine. */
  b = env_of("{\"prompt\":\"a\"}\n ", SPI_OPENAI_COMPLETIONS, "x", 1);
  expect(&b, "{\"prompt\":\"ax\"}", 0);
}


/* -------------------------------------------------- allocation failures */

/* cJSON's allocations, counted, and the Nth one failed. The library never
 * sets cJSON's hooks; this test process does, to reach the continuation's
 * own cJSON calls. */
static long cj_calls, cj_live, cj_fail_at = -1;

static void *cj_malloc(size_t n) {
  if (cj_calls++ == cj_fail_at) return NULL;
  void *p = malloc(n);
  if (p) cj_live++;
  return p;
}

static void cj_free(void *p) {
  if (p) cj_live--;
  free(p);
}

/* Every allocation of a continuation fails in turn: each time the call
 * answers SPI_ENOMEM, the body's own parse included, and frees
 * everything. */
/* JSON's whitespace is space, tab, LF and CR; cJSON would skip any byte
 * below 0x20. Before the body, between its tokens or after it, such a byte
 * makes the body malformed; inside a string it is text, and comes out
 * escaped. */
static void test_control_bytes(void **st) {
  (void)st;
  static const char body[] = "{\"prompt\":\"ab\"}";
  const size_t len = sizeof body - 1;
  const size_t at[] = {0, 10, len}; /* before, after the colon, after */
  static const char bytes[] = {'\x01', '\x1f', '\x0b', '\0'};
  char t[sizeof body + 1];
  for (size_t i = 0; i < 3; i++) {
    for (size_t k = 0; k < sizeof bytes; k++) {
      memcpy(t, body, at[i]);
      t[at[i]] = bytes[k];
      memcpy(t + at[i] + 1, body + at[i], len - at[i]);
      spi_envelope v = env_of("{}", SPI_OPENAI_COMPLETIONS, "x", 1);
      v.body = t;
      v.body_len = len + 1;
      uint32_t flags = 0;
      int rc;
      (void)cont(&v, &flags, &rc);
      if (rc != SPI_EPARSE)
        fail_msg("byte 0x%02x at %zu: %d", (unsigned)(unsigned char)bytes[k],
                 at[i], rc);
    }
  }
  spi_envelope v = env_of("{\"prompt\":\"a\x01" "b\"}",
                          SPI_OPENAI_COMPLETIONS, "x", 1);
  expect(&v, "{\"prompt\":\"a\\u0001bx\"}", 0);
}

static void test_alloc_failures(void **st) {
  (void)st;
  const char *bodies[] = {
      "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
      "\"max_tokens\":50}",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},"
      "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\","
      "\"text\":\"a\"}]}],\"max_tokens\":50}",
      "{\"prompt\":\"Once\",\"max_tokens\":50}",
  };
  cJSON_Hooks hooks = {cj_malloc, cj_free};
  cJSON_InitHooks(&hooks);
  for (size_t b = 0; b < sizeof bodies / sizeof bodies[0]; b++) {
    spi_envelope v = env_of(bodies[b], SPI_OPENAI_AUTO, " upon", 3);
    int done = 0;
    for (long n = 0; !done && n < 10000; n++) {
      cj_calls = 0;
      cj_live = 0;
      cj_fail_at = n;
      char buf[4096];
      int rc = spi_replay_continuation(&v, buf, sizeof buf, NULL, NULL);
      if (cj_live != 0)
        fail_msg("body %zu, allocation %ld failed: %ld cJSON blocks leaked",
                 b, n, cj_live);
      if (cj_calls <= n) {
        assert_int_equal(rc, SPI_OK); /* no allocation was failed */
        done = 1;
      } else if (rc != SPI_ENOMEM) {
        fail_msg("body %zu, allocation %ld failed: status %d", b, n, rc);
      }
    }
    assert_true(done);
  }
  cj_fail_at = -1;
  cJSON_InitHooks(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_chat_new_assistant_message),
      cmocka_unit_test(test_chat_extends_trailing_assistant),
      cmocka_unit_test(test_budgets),
      cmocka_unit_test(test_numbers_as_spelled),
      cmocka_unit_test(test_completions),
      cmocka_unit_test(test_from_scratch),
      cmocka_unit_test(test_buffer),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_control_bytes),
      cmocka_unit_test(test_alloc_failures),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
