/*
 * test_nginx_tokens.c - the nginx module's count of an answer's output
 * tokens (bindings/nginx/ngx_http_spotinfer_tokens.c), which its body
 * filter feeds with the answer's buffers as they pass: the estimate from an
 * event's words (the Go gateway's table, examples/gateway/tokens_test.go),
 * the backend's count when an event has one, the usage of a whole answer,
 * what is not counted, and the same answer cut into buffers anywhere.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ngx_http_spotinfer_tokens.h"

typedef ngx_http_spi_tokens_t tokens;

static void read_all(tokens *t, const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *)s;
  ngx_http_spi_tokens_read(t, p, p + len);
}

/* What the reader says once it has read s in one buffer; and the same,
 * checked, for s cut in two at every byte, and byte by byte. */
static tokens read_cuts(const char *s, int stream) {
  size_t len = strlen(s);
  tokens whole, cut;
  ngx_http_spi_tokens_init(&whole, stream);
  read_all(&whole, s, len);
  for (size_t at = 0; at <= len; at++) {
    ngx_http_spi_tokens_init(&cut, stream);
    read_all(&cut, s, at);
    read_all(&cut, s + at, len - at);
    assert_int_equal(ngx_http_spi_tokens_output(&cut),
                     ngx_http_spi_tokens_output(&whole));
    assert_memory_equal(cut.usage, whole.usage, sizeof whole.usage);
    assert_int_equal(cut.usage_found, whole.usage_found);
  }
  ngx_http_spi_tokens_init(&cut, stream);
  for (size_t i = 0; i < len; i++) read_all(&cut, s + i, 1);
  assert_int_equal(ngx_http_spi_tokens_output(&cut),
                   ngx_http_spi_tokens_output(&whole));
  return whole;
}

static uint64_t stream_output(const char *s) {
  tokens t = read_cuts(s, 1);
  return ngx_http_spi_tokens_output(&t);
}

/* One event's estimate, as the gateway's table has it. */
static uint64_t event_tokens(const char *json) {
  char buf[512];
  int n = snprintf(buf, sizeof buf, "data: %s\n\n", json);
  assert_true(n > 0 && (size_t)n < sizeof buf);
  return stream_output(buf);
}

static void test_estimate(void **st) {
  (void)st;
  static const struct {
    const char *event;
    uint64_t want;
  } cases[] = {
      {"{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}",
       0},
      {"{\"choices\":[{\"delta\":{\"content\":\" understanding\"}}]}", 1},
      {"{\"choices\":[{\"delta\":{\"content\":\"\\n\\n\"}}]}", 1},
      {"{\"choices\":[{\"delta\":{\"content\":\"ing\"}}]}", 1},
      {"{\"choices\":[{\"delta\":{\"content\":\" alpha bravo\\ncharlie  "
       "delta\"}}]}",
       4},
      {"{\"choices\":[{\"text\":\" one two three\"}]}", 3},
      {"{\"choices\":[{\"delta\":{\"reasoning_content\":\"so then\"}}]}", 2},
      {"{\"choices\":[{\"delta\":{\"reasoning\":\"so then\"}}]}", 2},
      {"{\"choices\":[{\"delta\":{\"reasoning\":\"so then\","
       "\"reasoning_content\":\"so then\"}}]}",
       2},
      {"{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}", 1},
      {"{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}", 0},
      {"{\"choices\":[{\"delta\":{\"content\":\"h\303\251llo w\303\266rld, "
       "\303\247a va\"}}]}",
       4},
      {"{\"choices\":[{\"delta\":{\"content\":\"\\u00a0x\\u2003y\"}}]}", 2},
      {"{\"choices\":[{\"delta\":{\"content\":\" "
       "a\"}},{\"index\":1,\"delta\":{\"content\":\" b\"}}]}",
       2},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint64_t got = event_tokens(cases[i].event);
    if (got != cases[i].want)
      fail_msg("%s: %llu tokens, want %llu", cases[i].event,
               (unsigned long long)got, (unsigned long long)cases[i].want);
  }
}

/* Reasoning under vLLM's two names: an object's "reasoning" when it is
 * not empty, else its "reasoning_content", so the text vLLM sends under
 * both counts once; each choice on its own, and with content beside it. */
static void test_reasoning(void **st) {
  (void)st;
  static const struct {
    const char *event;
    uint64_t want;
  } cases[] = {
      {"{\"choices\":[{\"delta\":{\"reasoning_content\":\"a b c\","
       "\"reasoning\":\"a b c\"}}]}",
       3},
      {"{\"choices\":[{\"delta\":{\"reasoning\":\"\","
       "\"reasoning_content\":\"a b\"}}]}",
       2},
      /* "reasoning" holds a space: it is the reasoning, no word but
       * output (at least one) */
      {"{\"choices\":[{\"delta\":{\"reasoning\":\" \","
       "\"reasoning_content\":\"a b\"}}]}",
       1},
      {"{\"choices\":[{\"delta\":{\"reasoning\":\"a b\","
       "\"reasoning_content\":\"a b\",\"content\":\" c\"}}]}",
       3},
      {"{\"choices\":[{\"delta\":{\"reasoning\":\"a b\","
       "\"reasoning_content\":\"a b\"}},{\"index\":1,\"delta\":{"
       "\"reasoning_content\":\"c\"}},{\"index\":2,\"delta\":{"
       "\"reasoning\":\"d e\"}}]}",
       5},
      {"{\"choices\":[{\"delta\":{\"reasoning_content\":\"a b\","
       "\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}],"
       "\"reasoning\":\"a b\"}}]}",
       2},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint64_t got = event_tokens(cases[i].event);
    if (got != cases[i].want)
      fail_msg("%s: %llu tokens, want %llu", cases[i].event,
               (unsigned long long)got, (unsigned long long)cases[i].want);
  }
  /* Two events, each with both names. */
  assert_int_equal(
      stream_output("data: {\"choices\":[{\"delta\":{\"reasoning\":\"a b\","
                    "\"reasoning_content\":\"a b\"}}]}\n\n"
                    "data: {\"choices\":[{\"delta\":{\"reasoning_content\":"
                    "\"c\",\"reasoning\":\"c\"}}]}\n\n"),
      3);
}

/* Spaces are Go's unicode.IsSpace, raw or escaped; anything else, broken
 * UTF-8 included, is part of a word. */
static void test_spaces(void **st) {
  (void)st;
  static const struct {
    const char *content;
    uint64_t want;
  } cases[] = {
      {"p\xc2\xa0q", 2},     /* no-break space, raw */
      {"p\xe3\x80\x80q", 2}, /* ideographic space */
      {"p\xe2\x80\xa8q", 2}, /* line separator */
      {"p\xc2\x85q", 2},     /* next line */
      {"p\xc0\xa0q", 1},     /* an overlong form is no space */
      {"p\xe0\x82\xa0q", 1},
      {"p\xe2\x80\x8bq", 1}, /* zero-width space: not White_Space */
      {"p\xffq \xc2", 2},    /* broken sequences are characters */
      {"\xc2 x", 2},
      {"\\u0020a\\u0009b\\u000A", 2},
      {"a\\tb\\rc\\fd\\be", 4}, /* \b is no space */
      {"\\ud83d\\ude00 \\\"q\\\" \\\\ \\/", 4},
      {"\\u00zz", 1}, /* a broken escape is a character */
      {"   ", 1},     /* output without a word: one token */
  };
  char buf[256];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(buf, sizeof buf,
             "{\"choices\":[{\"delta\":{\"content\":\"%s\"}}]}",
             cases[i].content);
    uint64_t got = event_tokens(buf);
    if (got != cases[i].want)
      fail_msg("%s: %llu tokens, want %llu", cases[i].content,
               (unsigned long long)got, (unsigned long long)cases[i].want);
  }
}

/* A backend's count is the stream's so far: it replaces the estimate, and
 * events without one add to it. */
static void test_backend_count(void **st) {
  (void)st;
  assert_int_equal(
      stream_output(
          "data: {\"choices\":[{\"delta\":{\"content\":\" a b c\"}}]}\n\n"
          "data: {\"choices\":[{\"delta\":{\"content\":\" d\"}}]}\n\n"),
      4);
  assert_int_equal(
      stream_output(
          "data: {\"choices\":[{\"delta\":{\"content\":\" a b c\"}}]}\n\n"
          "data: {\"choices\":[{\"delta\":{\"content\":\" d\"}}]}\n\n"
          "data: {\"choices\":[{\"delta\":{\"content\":\" e\"}}],"
          "\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":7}}\n\n"),
      7);
  assert_int_equal(
      stream_output(
          "data: {\"choices\":[{\"delta\":{\"content\":\" e\"}}],"
          "\"usage\":{\"completion_tokens\":7}}\n\n"
          "data: {\"choices\":[{\"delta\":{\"content\":\" f g\"}}]}\n\n"),
      9);
  /* The usage first in the event, or spaced as Python prints JSON. */
  assert_int_equal(
      stream_output(
          "data: {\"usage\": {\"completion_tokens\" : 12}, \"choices\": "
          "[{\"delta\": {\"content\": \" word\"}}]}\n\n"),
      12);
  /* A count below the estimate is still the backend's. */
  assert_int_equal(
      stream_output(
          "data: {\"choices\":[{\"delta\":{\"content\":\" a b c d\"}}]}\n\n"
          "data: {\"choices\":[{\"delta\":{\"content\":\" e\"}}],"
          "\"usage\":{\"completion_tokens\":2}}\n\n"),
      2);
}

/* vLLM's stream: several tokens an event, the finish chunk, the usage
 * chunk with include_usage, [DONE]. With continuous_usage_stats every
 * chunk has the usage so far, and the count follows it event by event. */
static void test_vllm_stream(void **st) {
  (void)st;
  const char *role =
      "data: "
      "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{"
      "\"index\":0,"
      "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,"
      "\"finish_reason\":null}]}\n\n";
  const char *text =
      "data: "
      "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" "
      "alpha bravo "
      "charlie\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
      "data: "
      "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" "
      "delta "
      "echo foxtrot\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
  const char *finish =
      "data: "
      "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
      "\"finish_reason\":\"length\"}]}\n\n";
  const char *usage =
      "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":31,"
      "\"completion_tokens\":6,\"total_tokens\":37,"
      "\"prompt_tokens_details\":{\"cached_tokens\":16}}}\n\n";
  char buf[2048];

  snprintf(buf, sizeof buf, "%s%s%sdata: [DONE]\n\n", role, text, finish);
  tokens t = read_cuts(buf, 1);
  assert_int_equal(ngx_http_spi_tokens_output(&t), 6);
  assert_int_equal(t.usage_found, 0);

  snprintf(buf, sizeof buf, "%s%s%s%sdata: [DONE]\n\n", role, text, finish,
           usage);
  t = read_cuts(buf, 1);
  assert_int_equal(ngx_http_spi_tokens_output(&t), 6);
  assert_int_equal(t.usage[NGX_HTTP_SPI_USAGE_PROMPT], 31);
  assert_int_equal(t.usage[NGX_HTTP_SPI_USAGE_CACHED], 16);

  /* The usage says 8 (two tokens no text shows): its count stands. */
  snprintf(buf, sizeof buf, "%s%s%s%sdata: [DONE]\n\n", role, text, finish,
           "data: "
           "{\"choices\":[],\"usage\":{\"prompt_tokens\":31,\"completion_"
           "tokens\":8}}\n\n");
  assert_int_equal(stream_output(buf), 8);

  /* continuous_usage_stats: the count after each event is the backend's. */
  static const char *const events[] = {
      "data: "
      "{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],"
      "\"usage\":{\"prompt_tokens\":31,\"completion_tokens\":0}}\n\n",
      "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}],"
      "\"usage\":{\"prompt_tokens\":31,\"completion_tokens\":3}}\n\n",
      "data: {\"choices\":[{\"delta\":{\"content\":\" world, again\"}}],"
      "\"usage\":{\"prompt_tokens\":31,\"completion_tokens\":7}}\n\n",
      "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],"
      "\"usage\":{\"prompt_tokens\":31,\"completion_tokens\":7}}\n\n",
      "data: "
      "{\"choices\":[],\"usage\":{\"prompt_tokens\":31,\"completion_tokens\":7}"
      "}\n\n",
      "data: [DONE]\n\n",
  };
  static const uint64_t after[] = {0, 3, 7, 7, 7, 7};
  ngx_http_spi_tokens_init(&t, 1);
  for (size_t i = 0; i < sizeof events / sizeof events[0]; i++) {
    read_all(&t, events[i], strlen(events[i]));
    assert_int_equal(ngx_http_spi_tokens_output(&t), after[i]);
  }
}

/* Lines of an event stream that are no event, and other spellings. */
static void test_lines(void **st) {
  (void)st;
  /* "data:" without its space, CRLF line ends, comments, event names. */
  assert_int_equal(
      stream_output(
          ": ping\n\nevent: message\n"
          "data:{\"choices\":[{\"delta\":{\"content\":\" a b\"}}]}\r\n\r\n"
          "id: 7\ndata:   {\"choices\":[{\"text\":\"c\"}]}\n\n"
          "data: [DONE]\n\n"),
      3);
  /* A line that only looks like data. */
  assert_int_equal(stream_output("xdata: {\"choices\":[{\"text\":\"a\"}]}\n"
                                 "dat: {\"choices\":[{\"text\":\"a\"}]}\n"
                                 " data: {\"choices\":[{\"text\":\"a\"}]}\n"
                                 "data: x{\"choices\":[{\"text\":\"a\"}]}\n"),
                   0);
  /* An event's count is taken at its line's end: the last line, cut, is
   * not counted yet. */
  tokens t;
  ngx_http_spi_tokens_init(&t, 1);
  const char *s = "data: {\"choices\":[{\"text\":\"a b\"}]}";
  read_all(&t, s, strlen(s));
  assert_int_equal(ngx_http_spi_tokens_output(&t), 0);
  read_all(&t, "\n", 1);
  assert_int_equal(ngx_http_spi_tokens_output(&t), 2);
}

/* What is not output: strings that are not text values, null, logprobs'
 * "content" (an array of tokens), a key's name inside a text value. */
static void test_not_counted(void **st) {
  (void)st;
  assert_int_equal(
      event_tokens("{\"choices\":[{\"delta\":{\"content\":null}}]}"), 0);
  assert_int_equal(
      event_tokens("{\"choices\":[{\"delta\":{\"tool_calls\":null}}]}"), 0);
  assert_int_equal(
      event_tokens("{\"id\":\"a b c\",\"model\":\"m x\",\"object\":\"content\","
                   "\"x\":\"text\",\"y\":\"p q\"}"),
      0);
  assert_int_equal(
      event_tokens(
          "{\"choices\":[{\"delta\":{\"content\":\" word\"},"
          "\"logprobs\":{\"content\":[{\"token\":\" word\",\"logprob\":-0.5,"
          "\"bytes\":[32,119],\"top_logprobs\":[{\"token\":\" a b\","
          "\"logprob\":-1}]}]}}]}"),
      1);
  /* Inside a text value a quote is escaped: nothing there is a key. */
  assert_int_equal(event_tokens("{\"choices\":[{\"delta\":{\"content\":"
                                "\"{\\\"completion_tokens\\\": 99, "
                                "\\\"text\\\": \\\"x y z\\\"}\"}}]}"),
                   6);
  /* Other keys that end like ours, or hold an escape. */
  assert_int_equal(
      event_tokens("{\"choices\":[{\"delta\":{\"\\ncontent\":\"a b\","
                   "\"t\\u0065xt\":\"c\"}}]}"),
      0);
  assert_int_equal(
      event_tokens("{\"choices\":[{\"delta\":{\"my_content\":\"a b\","
                   "\"contents\":\"c d\",\"tex\":\"e\"}}],"
                   "\"usage\":{\"completion_tokens_details\":{\"x\":5}}}"),
      0);
  /* A usage count that is not a number is no count. */
  assert_int_equal(event_tokens("{\"choices\":[{\"text\":\"a b\"}],"
                                "\"usage\":{\"completion_tokens\":null}}"),
                   2);
  assert_int_equal(event_tokens("{\"choices\":[{\"text\":\"a b\"}],"
                                "\"usage\":{\"completion_tokens\":\"5\"}}"),
                   2);
}

/* A whole answer: only its usage is read; without one, 0 (unknown). */
static void test_whole_answer(void **st) {
  (void)st;
  const char *answer =
      "{\n  \"id\": \"c2\",\n  \"choices\": [\n    {\n      \"message\": {\n"
      "        \"role\": \"assistant\",\n        \"content\": \"one two "
      "three\"\n"
      "      }\n    }\n  ],\n  \"usage\": {\n    \"prompt_tokens\": 120,\n"
      "    \"completion_tokens\": 17,\n    \"prompt_tokens_details\": "
      "{\"cached_tokens\": 96}\n  }\n}\n";
  tokens t = read_cuts(answer, 0);
  assert_int_equal(ngx_http_spi_tokens_output(&t), 17);
  assert_int_equal(t.usage[NGX_HTTP_SPI_USAGE_PROMPT], 120);
  assert_int_equal(t.usage[NGX_HTTP_SPI_USAGE_CACHED], 96);

  t = read_cuts("{\"choices\":[{\"message\":{\"content\":\"one two\"}}]}", 0);
  assert_int_equal(ngx_http_spi_tokens_output(&t), 0);

  /* An event stream read as a whole answer counts nothing but usage. */
  t = read_cuts("data: {\"choices\":[{\"text\":\"a b\"}]}\n\n", 0);
  assert_int_equal(ngx_http_spi_tokens_output(&t), 0);
}

/* Bytes nginx spooled to a file pass unread: a stream reads on from the
 * next line (the next byte, when the bytes unread ended a line), a whole
 * answer stops. */
static void test_gap(void **st) {
  (void)st;
  tokens t;
  ngx_http_spi_tokens_init(&t, 1);
  const char *a =
      "data: {\"choices\":[{\"text\":\"a b\"}]}\n\ndata: {\"choices\":[{\"te";
  const char *b =
      "xt\":\"c d e\"}]}\n\ndata: {\"choices\":[{\"text\":\"f\"}]}\n\n";
  read_all(&t, a, strlen(a));
  ngx_http_spi_tokens_gap(&t, 0);
  read_all(&t, b, strlen(b));
  assert_int_equal(ngx_http_spi_tokens_output(&t), 3);

  /* The bytes unread ended a line: the next event is read whole, and one
   * cut by the gap is not counted. */
  const char *e = "data: {\"choices\":[{\"text\":\"g h\"}]}\n\n";
  const char *f = "data: {\"choices\":[{\"text\":\"i j k\"}]}\n\n";
  ngx_http_spi_tokens_init(&t, 1);
  read_all(&t, e, strlen(e));
  ngx_http_spi_tokens_gap(&t, 1);
  read_all(&t, f, strlen(f));
  assert_int_equal(ngx_http_spi_tokens_output(&t), 5);
  ngx_http_spi_tokens_init(&t, 1);
  read_all(&t, a, strlen(a));
  ngx_http_spi_tokens_gap(&t, 1);
  read_all(&t, f, strlen(f));
  assert_int_equal(ngx_http_spi_tokens_output(&t), 5);

  ngx_http_spi_tokens_init(&t, 0);
  const char *c = "{\"usage\":{\"prompt_tokens\":5,";
  const char *d = "\"completion_tokens\":9}}";
  read_all(&t, c, strlen(c));
  ngx_http_spi_tokens_gap(&t, 1);
  read_all(&t, d, strlen(d));
  assert_int_equal(ngx_http_spi_tokens_output(&t), 0);
  assert_int_equal(t.usage[NGX_HTTP_SPI_USAGE_PROMPT], 5);
}

/* The answer's end ends its last line: an event without its line feed
 * counts when its JSON is whole, one cut short does not. */
static void test_end(void **st) {
  (void)st;
  static const struct {
    const char *answer;
    uint64_t want;
  } cases[] = {
      {"data: {\"choices\":[{\"text\":\"a b\"}]}\n\n"
       "data: {\"choices\":[{\"text\":\"c d e\"}]}",
       5},
      {"data: {\"choices\":[{\"text\":\"a\"}]}\r", 1},
      {"data: {\"choices\":[],\"usage\":{\"completion_tokens\":7}}", 7},
      {"data: {\"choices\":[{\"text\":\"a b\"}]}\n\n"
       "data: {\"choices\":[{\"text\":\"c d e\"}",
       2},
      {"data: {\"choices\":[{\"text\":\"a b\"}]}\n\ndata: [DONE]", 2},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    tokens t = read_cuts(cases[i].answer, 1);
    ngx_http_spi_tokens_end(&t);
    if (ngx_http_spi_tokens_output(&t) != cases[i].want)
      fail_msg("%s: %llu tokens, want %llu", cases[i].answer,
               (unsigned long long)ngx_http_spi_tokens_output(&t),
               (unsigned long long)cases[i].want);
    /* Nothing is read after the end, and a second end changes nothing. */
    read_all(&t, "\n", 1);
    ngx_http_spi_tokens_end(&t);
    assert_int_equal(ngx_http_spi_tokens_output(&t), cases[i].want);
  }
  tokens w = read_cuts("{\"usage\":{\"completion_tokens\":4}}", 0);
  ngx_http_spi_tokens_end(&w);
  assert_int_equal(ngx_http_spi_tokens_output(&w), 4);
}

/* Counts past what the library takes are kept at a bound, never wrapped. */
static void test_large(void **st) {
  (void)st;
  uint64_t n =
      stream_output("data: {\"choices\":[],\"usage\":{\"completion_tokens\":"
                    "99999999999999999999999999999}}\n\n");
  assert_true(n >= UINT64_C(1000000000) && n < UINT64_C(100000000000000));
  char *big = malloc(1 << 20);
  assert_non_null(big);
  size_t len = (size_t)sprintf(big, "data: {\"choices\":[{\"text\":\"");
  uint64_t words = 0;
  for (; len < (1 << 20) - 16; words++) {
    big[len++] = 'w';
    big[len++] = ' ';
  }
  len += (size_t)sprintf(big + len, "\"}]}\n");
  tokens t;
  ngx_http_spi_tokens_init(&t, 1);
  read_all(&t, big, len);
  assert_int_equal(ngx_http_spi_tokens_output(&t), words);
  free(big);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_estimate),      cmocka_unit_test(test_spaces),
      cmocka_unit_test(test_backend_count), cmocka_unit_test(test_vllm_stream),
      cmocka_unit_test(test_lines),         cmocka_unit_test(test_not_counted),
      cmocka_unit_test(test_whole_answer),  cmocka_unit_test(test_gap),
      cmocka_unit_test(test_large),         cmocka_unit_test(test_reasoning),
      cmocka_unit_test(test_end),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
