/*
 * json_syntax.c - whether text starts with a JSON value that cJSON would
 * parse, checked without allocating anything.
 *
 * cJSON answers NULL both for malformed text and when an allocation fails
 * part way, so on its own a parse failure cannot tell "malformed JSON" from
 * "out of memory". Asked after cJSON failed, this check tells them apart:
 * text it accepts is text cJSON accepts too, so cJSON's NULL on it can only
 * be an allocation failure, which the caller reports as SPI_ENOMEM.
 *
 * For that it must never be looser than cJSON (1.7): it follows cJSON where
 * cJSON is stricter than the JSON grammar - nesting deeper than
 * CJSON_NESTING_LIMIT, a number of 64 or more characters (cJSON copies
 * numbers into a 64-byte buffer), a lone or unpaired UTF-16 surrogate
 * escape - and is stricter than cJSON elsewhere (only space, tab, CR and LF
 * as whitespace, the grammar's number form, four hex digits after \u, no
 * raw control characters in strings). Being stricter costs nothing worse
 * than the old "malformed" message for such text when memory runs out.
 *
 * spi__json_scan is the other half: one pass over text cJSON has parsed,
 * for what cJSON takes and JSON does not - a byte below 0x20 other than
 * space, tab, CR and LF outside strings (cJSON skips any of them as
 * whitespace), and U+0000 inside a string (cJSON cuts the string there).
 */
#include <locale.h>
#include <pthread.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "spi_internal.h"

typedef struct jcur {
  const unsigned char *p, *end;
} jcur;

static int is_digit(unsigned char ch) { return ch >= '0' && ch <= '9'; }

static void skip_ws(jcur *c) {
  while (c->p < c->end && spi__json_is_ws(*c->p)) c->p++;
}

static int take(jcur *c, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return 0;
  c->p += n;
  return 1;
}

static int hex4(const unsigned char *p, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    unsigned char ch = p[i];
    unsigned d = is_digit(ch)               ? (unsigned)(ch - '0')
                 : (ch >= 'a' && ch <= 'f') ? (unsigned)(ch - 'a' + 10)
                 : (ch >= 'A' && ch <= 'F') ? (unsigned)(ch - 'A' + 10)
                                            : 16u;
    if (d == 16u) return 0;
    v = v << 4 | d;
  }
  *out = v;
  return 1;
}

/* \uXXXX at c->p (inside a string): a surrogate must be a high one
 * followed by a low one, as cJSON requires. */
static int unicode_escape(jcur *c) {
  unsigned hi, lo;
  if (c->end - c->p < 6 || !hex4(c->p + 2, &hi)) return 0;
  if (hi >= 0xDC00 && hi <= 0xDFFF) return 0;
  if (hi < 0xD800 || hi > 0xDBFF) {
    c->p += 6;
    return 1;
  }
  if (c->end - c->p < 12 || c->p[6] != '\\' || c->p[7] != 'u' ||
      !hex4(c->p + 8, &lo) || lo < 0xDC00 || lo > 0xDFFF)
    return 0;
  c->p += 12;
  return 1;
}

static int string(jcur *c) {
  c->p++; /* the opening quote */
  while (c->p < c->end) {
    unsigned char ch = *c->p;
    if (ch == '"') {
      c->p++;
      return 1;
    }
    if (ch < 0x20) return 0;
    if (ch != '\\') {
      c->p++;
      continue;
    }
    if (c->end - c->p < 2) return 0;
    ch = c->p[1];
    if (ch == 'u') {
      if (!unicode_escape(c)) return 0;
    } else if (ch && strchr("bfnrt\"\\/", ch)) {
      c->p += 2;
    } else {
      return 0;
    }
  }
  return 0;
}

static int number(jcur *c) {
  const unsigned char *start = c->p;
  if (*c->p == '-') c->p++;
  if (c->p >= c->end || !is_digit(*c->p)) return 0;
  if (*c->p == '0')
    c->p++;
  else
    while (c->p < c->end && is_digit(*c->p)) c->p++;
  if (c->p < c->end && *c->p == '.') {
    c->p++;
    if (c->p >= c->end || !is_digit(*c->p)) return 0;
    while (c->p < c->end && is_digit(*c->p)) c->p++;
  }
  if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
    c->p++;
    if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
    if (c->p >= c->end || !is_digit(*c->p)) return 0;
    while (c->p < c->end && is_digit(*c->p)) c->p++;
  }
  return c->p - start < 64;
}

static int value(jcur *c, int depth);

/* An array or object at c->p, depth counting it. */
static int container(jcur *c, int depth) {
  int object = *c->p == '{';
  char close = object ? '}' : ']';
  if (depth > CJSON_NESTING_LIMIT) return 0;
  c->p++;
  skip_ws(c);
  if (c->p < c->end && *c->p == close) {
    c->p++;
    return 1;
  }
  for (;;) {
    if (object) {
      if (c->p >= c->end || *c->p != '"' || !string(c)) return 0;
      skip_ws(c);
      if (c->p >= c->end || *c->p != ':') return 0;
      c->p++;
      skip_ws(c);
    }
    if (!value(c, depth)) return 0;
    skip_ws(c);
    if (c->p >= c->end) return 0;
    if (*c->p == close) {
      c->p++;
      return 1;
    }
    if (*c->p != ',') return 0;
    c->p++;
    skip_ws(c);
  }
}

static int value(jcur *c, int depth) {
  if (c->p >= c->end) return 0;
  switch (*c->p) {
  case '"':
    return string(c);
  case '{':
  case '[':
    return container(c, depth + 1);
  case 't':
    return take(c, "true");
  case 'f':
    return take(c, "false");
  case 'n':
    return take(c, "null");
  default:
    return (*c->p == '-' || is_digit(*c->p)) && number(c);
  }
}

int spi__json_well_formed(const char *text, size_t len) {
  if (!text) return 0;
  jcur c = {(const unsigned char *)text, (const unsigned char *)text + len};
  /* cJSON 1.7.15 skips a byte-order mark only in a text of at least five
   * bytes (it asks can_access_at_index(buffer, 4)), so to it a BOM and one
   * more byte is malformed; agree with it, or its failure reads as ENOMEM. */
  if (len >= 5 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) c.p += 3;
  skip_ws(&c);
  return value(&c, 0);
}

void spi__json_scan(const char *text, size_t len, size_t *ctl, size_t *nul) {
  const unsigned char *s = (const unsigned char *)text;
  *ctl = *nul = SIZE_MAX;
  int in_string = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = s[i];
    if (!in_string) {
      if (ch < 0x20 && !spi__json_is_ws(ch)) {
        *ctl = i;
        return;
      }
      in_string = ch == '"';
    } else if (ch == '"') {
      in_string = 0;
    } else if (ch == '\\' && i + 1 < len) {
      if (*nul == SIZE_MAX && s[i + 1] == 'u' && i + 5 < len &&
          memcmp(s + i + 2, "0000", 4) == 0)
        *nul = i;
      i++; /* the escaped character, whatever it is */
    } else if (ch == '\0' && *nul == SIZE_MAX) {
      *nul = i; /* a raw zero byte: cJSON takes it, and cuts the string */
    }
  }
}

/* ------------------------------------------------------ number text */

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,
                                 1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17,
                                 1e18, 1e19, 1e20, 1e21, 1e22};

/*
 * The whole of s[0..n) as a JSON number, read without strtod, so the
 * process's (or thread's) LC_NUMERIC never turns "0.85" into 0. The value
 * is correctly rounded when the significant digits fit 2^53 and the
 * decimal exponent is within 22 (one exact operation), which every option
 * default is (test_options checks each against strtod in the C locale);
 * beyond that it is within a few ulps.
 */
int spi__json_number(const char *s, size_t n, double *out) {
  size_t i = 0;
  int neg = 0;
  if (i < n && s[i] == '-') neg = 1, i++;
  if (i >= n || !is_digit((unsigned char)s[i])) return -1;
  if (s[i] == '0' && i + 1 < n && is_digit((unsigned char)s[i + 1]))
    return -1; /* no leading zeros in JSON */
  uint64_t mant = 0;
  int ndig = 0; /* significant digits kept in mant (at most 19) */
  long e10 = 0; /* decimal exponent of mant */
  for (; i < n && is_digit((unsigned char)s[i]); i++) {
    if (ndig < 19) {
      mant = mant * 10 + (uint64_t)(s[i] - '0');
      if (mant) ndig++;
    } else {
      e10++;
    }
  }
  if (i < n && s[i] == '.') {
    i++;
    if (i >= n || !is_digit((unsigned char)s[i])) return -1;
    for (; i < n && is_digit((unsigned char)s[i]); i++) {
      if (ndig < 19) {
        mant = mant * 10 + (uint64_t)(s[i] - '0');
        if (mant) ndig++;
        e10--;
      }
    }
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    int eneg = 0;
    if (i < n && (s[i] == '+' || s[i] == '-')) eneg = s[i++] == '-';
    if (i >= n || !is_digit((unsigned char)s[i])) return -1;
    long ex = 0;
    for (; i < n && is_digit((unsigned char)s[i]); i++)
      if (ex < 100000) ex = ex * 10 + (s[i] - '0');
    e10 += eneg ? -ex : ex;
  }
  if (i != n) return -1;
  double d = (double)mant;
  if (mant == 0) {
    d = 0.0;
  } else if (mant <= (1ull << 53) && e10 >= -22 && e10 <= 22) {
    d = e10 < 0 ? d / POW10[-e10] : d * POW10[e10];
  } else if (e10 > 330) {
    return -1; /* out of range: not a finite double */
  } else if (e10 < -350) {
    d = 0.0;
  } else {
    /* Split the scaling so no intermediate power overflows. */
    for (; e10 > 22; e10 -= 22) d *= POW10[22];
    for (; e10 < -22; e10 += 22) d /= POW10[22];
    d = e10 < 0 ? d / POW10[-e10] : d * POW10[e10];
    if (!(d - d == 0)) return -1; /* overflowed to infinity */
  }
  *out = neg ? -d : d;
  return 0;
}

/* ------------------------------------------------ cJSON in the C locale */

/*
 * cJSON reads and prints numbers with the C library in the thread's
 * LC_NUMERIC, swapping '.' for the first byte of the locale's decimal
 * point. That works for a comma; for a two-byte separator (ps_AF's U+066B)
 * every fraction fails to parse (and read as out of memory) and prints as
 * broken JSON. So the library runs cJSON in the C locale: uselocale on the
 * calling thread only, put back after, which leaves the host's locale
 * alone. When the C locale object cannot be made (no memory at first use),
 * cJSON runs in whatever locale there is, as before.
 */
static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;

static void make_c_locale(void) {
  c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
}

static locale_t enter_c_locale(void) {
  pthread_once(&c_locale_once, make_c_locale);
  return c_locale ? uselocale(c_locale) : (locale_t)0;
}

static void leave_c_locale(locale_t old) {
  if (old) uselocale(old);
}

cJSON *spi__cjson_parse(const char *text, size_t len, const char **end) {
  locale_t old = enter_c_locale();
  cJSON *root = cJSON_ParseWithLengthOpts(text, len, end, 0);
  leave_c_locale(old);
  return root;
}

char *spi__cjson_print(const cJSON *item) {
  locale_t old = enter_c_locale();
  char *text = cJSON_PrintUnformatted(item);
  leave_c_locale(old);
  return text;
}
