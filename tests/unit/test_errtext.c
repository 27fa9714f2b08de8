/*
 * test_errtext.c - spi__errf, which every error message is written by, cuts
 * a message too long for its buffer before a character, never inside one;
 * text that is not UTF-8 is cut where it always was.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "spi_internal.h"

/* Whether s is well-formed UTF-8 (no sequence cut short). */
static int utf8_valid(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    unsigned char c = *p++;
    int n = c < 0x80 ? 0 : c >= 0xC2 && c < 0xE0 ? 1 : c >= 0xE0 && c < 0xF0 ? 2
            : c >= 0xF0 && c < 0xF5 ? 3 : -1;
    if (n < 0) return 0;
    for (int i = 0; i < n; i++, p++)
      if ((*p & 0xC0) != 0x80) return 0;
  }
  return 1;
}

static const char *const CHARS[] = {"\xc3\xa9", "\xe2\x82\xac",
                                    "\xf0\x9f\x98\x80"};

/* Every width of character at every offset a cut can fall on: the message
 * is the longest prefix of whole characters that fits. */
static void test_cut_keeps_whole_characters(void **st) {
  (void)st;
  for (size_t c = 0; c < 3; c++) {
    size_t w = strlen(CHARS[c]);
    for (size_t pad = 0; pad <= w; pad++) {
      char text[128] = "";
      memset(text, 'a', pad);
      for (size_t used = pad; used + w < sizeof text; used += w)
        memcpy(text + used, CHARS[c], w);
      for (size_t cap = 1; cap < 40; cap++) {
        char buf[64];
        memset(buf, 'z', sizeof buf);
        spi__errf(buf, cap, "%s", text);
        size_t n = strlen(buf);
        if (!utf8_valid(buf))
          fail_msg("width %zu pad %zu cap %zu: %zu bytes are not UTF-8", w,
                   pad, cap, n);
        assert_true(n < cap);
        assert_memory_equal(buf, text, n);
        /* No more than the part of one character is left out. */
        assert_true(n + w > cap - 1);
      }
    }
  }
}

/* A message that fits is as written, whatever bytes it holds. */
static void test_message_that_fits_is_untouched(void **st) {
  (void)st;
  char buf[16];
  spi__errf(buf, sizeof buf, "ab%s", "\xe2\x82");
  assert_string_equal(buf, "ab\xe2\x82");
  spi__errf(buf, sizeof buf, "%s", "\xe2\x82\xac");
  assert_string_equal(buf, "\xe2\x82\xac");
}

/* Bytes that are not UTF-8 are cut where the buffer ends: a run of
 * continuation bytes with no lead, and a lone lead byte at the end. */
static void test_text_not_utf8_is_cut_at_the_buffer(void **st) {
  (void)st;
  char buf[8];
  spi__errf(buf, sizeof buf, "%s", "a\x80\x80\x80\x80\x80\x80\x80\x80");
  assert_string_equal(buf, "a\x80\x80\x80\x80\x80\x80");
  spi__errf(buf, sizeof buf, "%s", "abcdef\xff\xff");
  assert_string_equal(buf, "abcdef\xff");
}

/* The per-thread message a handle keeps is cut the same way. */
static void test_kept_message_keeps_whole_characters(void **st) {
  (void)st;
  spi_errtab t;
  assert_int_equal(spi__errtab_init(&t), SPI_OK);
  char text[600] = "x";
  for (size_t used = 1; used + 3 < sizeof text; used += 3)
    memcpy(text + used, CHARS[1], 3);
  spi__errtab_set(&t, text);
  const char *m = spi__errtab_get(&t);
  assert_true(utf8_valid(m));
  assert_int_equal(strlen(m), 253); /* "x" and 84 whole euro signs */
  spi__errtab_destroy(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cut_keeps_whole_characters),
      cmocka_unit_test(test_message_that_fits_is_untouched),
      cmocka_unit_test(test_text_not_utf8_is_cut_at_the_buffer),
      cmocka_unit_test(test_kept_message_keeps_whole_characters),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
