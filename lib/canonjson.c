/*
 * canonjson.c - canonical JSON text of a parsed cJSON tree.
 *
 * Canonical text is what gets hashed into cache keys (the tools array), so
 * two JSON texts that mean the same thing must produce the same bytes, on
 * every host and in every locale:
 *
 *   - objects: members sorted by key, bytewise (unsigned), no duplicates;
 *   - no whitespace anywhere;
 *   - numbers: a double that is integer-valued and within [-2^53, 2^53] is
 *     printed as a plain integer ("1", "1.0" and "1e0" all give "1", and
 *     -0 gives "0"); beyond that, with the source text at hand
 *     (spi__canon_json_src), a literal whose decimal value is an integer is
 *     printed as that integer's digits ("9007199254740993" stays itself
 *     rather than becoming the double 2^53, "1e20" and
 *     "100000000000000000000" both give the latter); any other finite
 *     double is printed as %.17g with '.' as the decimal separator whatever
 *     LC_NUMERIC says; non-finite numbers (e.g. 1e999 overflowing) are
 *     refused;
 *   - strings: only '"', '\\' and bytes below 0x20 are escaped (\" \\ \b \f
 *     \n \r \t, otherwise \u00xx in lowercase hex); every other byte,
 *     including UTF-8 sequences and 0x7f, is copied as is;
 *   - true, false, null as themselves.
 *
 * Nesting (arrays and objects) deeper than SPI_CANON_MAX_DEPTH is refused so
 * recursion stays bounded. On any error the output buffer is put back to the
 * length it had on entry.
 *
 * cJSON keeps strings NUL-terminated, so a "\u0000" inside a parsed string
 * would truncate it there; the callers refuse such text before it gets here
 * (spi__json_scan), so two different tool lists never key the same.
 */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spi_internal.h"

#define SPI_CANON_MAX_DEPTH 64
/* Objects with at most this many members are sorted in a stack array. */
#define SPI_CANON_STACK_MEMBERS 16

typedef struct canon_ctx {
  spi_buf *out;
  const spi_mem *mem;
  spi_json_src *src; /* may be NULL */
} canon_ctx;

/* ------------------------------------------------ number literals' text */

typedef struct spi_numlit {
  const cJSON *node;
  size_t off, len;
} spi_numlit;

void spi__json_src_init(spi_json_src *src, const char *text, size_t len,
                        const cJSON *root) {
  memset(src, 0, sizeof *src);
  src->text = text;
  src->len = len;
  src->root = root;
}

void spi__json_src_free(spi_json_src *src, const spi_mem *m) {
  if (src && src->lits) spi__free(m, src->lits);
  if (src) src->lits = NULL, src->n = 0, src->state = 0;
}

static size_t count_numbers(const cJSON *v) {
  size_t n = 0;
  for (; v; v = v->next) {
    if ((v->type & 0xff) == cJSON_Number) n++;
    n += count_numbers(v->child);
  }
  return n;
}

/* The number nodes in document order (cJSON keeps members and elements in
 * the order of the text; a pre-order walk visits them so). Recursion is
 * bounded by cJSON's nesting limit. */
static void list_numbers(const cJSON *v, spi_numlit *lits, size_t *k) {
  for (; v; v = v->next) {
    if ((v->type & 0xff) == cJSON_Number) lits[(*k)++].node = v;
    list_numbers(v->child, lits, k);
  }
}

static int lit_cmp(const void *a, const void *b) {
  const cJSON *x = ((const spi_numlit *)a)->node;
  const cJSON *y = ((const spi_numlit *)b)->node;
  return x < y ? -1 : x > y;
}

static int is_num_byte(char ch) {
  return (ch >= '0' && ch <= '9') || ch == '-' || ch == '+' || ch == '.' ||
         ch == 'e' || ch == 'E';
}

/* Pair each number node with its literal: the number tokens of the text
 * (outside strings) in order. SPI_OK (state 1, or -1 when the counts do not
 * agree, which text cJSON parsed never gives) or SPI_ENOMEM. */
static int build_lits(spi_json_src *src, const spi_mem *m) {
  size_t n = count_numbers(src->root->child);
  if ((src->root->type & 0xff) == cJSON_Number) n++;
  spi_numlit *lits = spi__calloc(m, n ? n : 1, sizeof *lits);
  if (!lits) return SPI_ENOMEM;
  size_t k = 0;
  if ((src->root->type & 0xff) == cJSON_Number) lits[k++].node = src->root;
  list_numbers(src->root->child, lits, &k);
  size_t t = 0;
  const char *p = src->text;
  for (size_t i = 0; i < src->len;) {
    char ch = p[i];
    if (ch == '"') {
      for (i++; i < src->len && p[i] != '"'; i++)
        if (p[i] == '\\') i++;
      i++;
    } else if (ch == '-' || (ch >= '0' && ch <= '9')) {
      size_t start = i;
      while (i < src->len && is_num_byte(p[i])) i++;
      if (t < n) lits[t].off = start, lits[t].len = i - start;
      t++;
    } else {
      i++;
    }
  }
  if (t != n) {
    spi__free(m, lits);
    src->state = -1;
    return SPI_OK;
  }
  qsort(lits, n, sizeof *lits, lit_cmp);
  src->lits = lits;
  src->n = n;
  src->state = 1;
  return SPI_OK;
}

int spi__json_src_literal(spi_json_src *src, const cJSON *v,
                          const spi_mem *m, const char **lit, size_t *len) {
  if (!src || !src->text || !src->root || src->state < 0) return 0;
  if (src->state == 0 && build_lits(src, m) != SPI_OK) return SPI_ENOMEM;
  if (src->state != 1) return 0;
  spi_numlit key = {v, 0, 0};
  const spi_numlit *hit =
      bsearch(&key, src->lits, src->n, sizeof key, lit_cmp);
  if (!hit) return 0;
  *lit = src->text + hit->off;
  *len = hit->len;
  return 1;
}

/*
 * The literal of node v as an exact integer, when its decimal value is one:
 * "-" (unless zero) and the digits, without leading zeros, in dst (room for
 * cap). 1 when written, 0 when the value is not an integer (or the text
 * is not at hand), -1 on no memory.
 */
static int integer_literal(canon_ctx *c, const cJSON *v, char *dst,
                           size_t cap, size_t *dn) {
  const char *t = NULL;
  size_t n = 0, i = 0;
  int found = spi__json_src_literal(c->src, v, c->mem, &t, &n);
  if (found != 1) return found == SPI_ENOMEM ? -1 : 0;
  int neg = 0;
  if (i < n && t[i] == '-') neg = 1, i++;
  /* The significant digits are those of t[ib, ie) then t[fb, fe) (integer
   * and fraction part); exp10 is the power of ten of the last. */
  size_t ib = i;
  while (i < n && t[i] >= '0' && t[i] <= '9') i++;
  size_t ie = i, fb = i, fe = i;
  if (i < n && t[i] == '.') {
    fb = ++i;
    while (i < n && t[i] >= '0' && t[i] <= '9') i++;
    fe = i;
  }
  long exp10 = -(long)(fe - fb);
  if (i < n && (t[i] == 'e' || t[i] == 'E')) {
    i++;
    int eneg = 0;
    if (i < n && (t[i] == '+' || t[i] == '-')) eneg = t[i++] == '-';
    long e = 0;
    for (; i < n && t[i] >= '0' && t[i] <= '9'; i++) {
      if (e >= 100000000) return 0; /* absurd: the double decides */
      e = e * 10 + (t[i] - '0');
    }
    exp10 += eneg ? -e : e;
  }
  if (i != n || ie == ib || fe - fb > 100000000) return 0;
  size_t nd = (ie - ib) + (fe - fb);
#define DIGIT(k) ((k) < ie - ib ? t[ib + (k)] : t[fb + (k) - (ie - ib)])
  size_t lead = 0;
  while (lead < nd && DIGIT(lead) == '0') lead++;
  while (nd > lead && DIGIT(nd - 1) == '0') nd--, exp10++;
  if (lead == nd || exp10 < 0) return 0; /* zero or not an integer */
  if ((size_t)exp10 + (nd - lead) + 2 > cap) return 0;
  size_t k = 0;
  if (neg) dst[k++] = '-';
  for (size_t j = lead; j < nd; j++) dst[k++] = DIGIT(j);
#undef DIGIT
  memset(dst + k, '0', (size_t)exp10);
  k += (size_t)exp10;
  *dn = k;
  return 1;
}

static int canon_value(canon_ctx *c, const cJSON *v, int depth);

static int put(canon_ctx *c, const void *p, size_t n) {
  return spi__buf_append(c->out, c->mem, p, n);
}

static int put_str(canon_ctx *c, const char *s) {
  return put(c, s, strlen(s));
}

static int canon_string(canon_ctx *c, const char *s) {
  static const char hex[] = "0123456789abcdef";
  int rc = spi__buf_append_byte(c->out, c->mem, '"');
  if (rc != SPI_OK) return rc;
  if (!s) s = "";
  /* Copy runs of bytes that need no escape in one append. */
  const unsigned char *p = (const unsigned char *)s;
  const unsigned char *run = p;
  for (;; p++) {
    unsigned char ch = *p;
    if (ch != 0 && ch >= 0x20 && ch != '"' && ch != '\\') continue;
    if (p > run && (rc = put(c, run, (size_t)(p - run))) != SPI_OK) return rc;
    if (ch == 0) break;
    char esc[6] = {'\\', 0, 0, 0, 0, 0};
    size_t n = 2;
    switch (ch) {
      case '"': esc[1] = '"'; break;
      case '\\': esc[1] = '\\'; break;
      case '\b': esc[1] = 'b'; break;
      case '\f': esc[1] = 'f'; break;
      case '\n': esc[1] = 'n'; break;
      case '\r': esc[1] = 'r'; break;
      case '\t': esc[1] = 't'; break;
      default:
        esc[1] = 'u';
        esc[2] = '0';
        esc[3] = '0';
        esc[4] = hex[ch >> 4];
        esc[5] = hex[ch & 0xf];
        n = 6;
        break;
    }
    if ((rc = put(c, esc, n)) != SPI_OK) return rc;
    run = p + 1;
  }
  return spi__buf_append_byte(c->out, c->mem, '"');
}

/*
 * Number text independent of the locale. Integers are printed from an
 * int64_t, which involves no separator at all. For %.17g the only
 * locale-dependent part is the decimal separator (which some locales make
 * multibyte), and %g never groups digits without the ' flag, so every run of
 * bytes that is not a digit, sign or exponent letter is the separator and is
 * replaced by a single '.'.
 */
static int canon_number(canon_ctx *c, const cJSON *v) {
  double d = v->valuedouble;
  char tmp[64];
  if (!isfinite(d)) return SPI_EPARSE;
  if (d == floor(d) && fabs(d) >= 9007199254740992.0) {
    /* One double stands for several integers from 2^53 on (2^53 + 1 reads
     * as 2^53): write the literal's own digits when it is an integer (a
     * finite double has at most 309 of them). */
    char big[320];
    size_t n = 0;
    int rc = integer_literal(c, v, big, sizeof big, &n);
    if (rc < 0) return SPI_ENOMEM;
    if (rc > 0) return put(c, big, n);
  }
  if (d == floor(d) && fabs(d) <= 9007199254740992.0) {
    int n = snprintf(tmp, sizeof tmp, "%" PRId64, (int64_t)d);
    if (n < 0 || (size_t)n >= sizeof tmp) return SPI_EPARSE;
    return put(c, tmp, (size_t)n);
  }
  int n = snprintf(tmp, sizeof tmp, "%.17g", d);
  if (n < 0 || (size_t)n >= sizeof tmp) return SPI_EPARSE;
  char fixed[64];
  size_t k = 0;
  int in_sep = 0;
  for (int i = 0; i < n; i++) {
    char ch = tmp[i];
    int keep = (ch >= '0' && ch <= '9') || ch == '-' || ch == '+' ||
               ch == 'e' || ch == 'E';
    if (keep) {
      fixed[k++] = ch;
      in_sep = 0;
    } else if (!in_sep) {
      fixed[k++] = '.';
      in_sep = 1;
    }
  }
  return put(c, fixed, k);
}

/* strcmp compares as unsigned char, which is the bytewise order we want. */
static int member_cmp(const void *a, const void *b) {
  const cJSON *x = *(const cJSON *const *)a;
  const cJSON *y = *(const cJSON *const *)b;
  return strcmp(x->string ? x->string : "", y->string ? y->string : "");
}

/* obj's members sorted by name into *members: stack (room for
 * SPI_CANON_STACK_MEMBERS) when they fit, else an allocation the caller
 * frees (members != stack). SPI_OK or SPI_ENOMEM. */
static int sorted_members(const cJSON *obj, const spi_mem *m,
                          const cJSON **stack, const cJSON ***members,
                          size_t *n_out) {
  size_t n = 0;
  for (const cJSON *it = obj->child; it; it = it->next) n++;
  *members = stack;
  if (n > SPI_CANON_STACK_MEMBERS) {
    *members = spi__calloc(m, n, sizeof **members);
    if (!*members) return SPI_ENOMEM;
  }
  size_t i = 0;
  for (const cJSON *it = obj->child; it; it = it->next) (*members)[i++] = it;
  qsort((void *)*members, n, sizeof **members, member_cmp);
  *n_out = n;
  return SPI_OK;
}

int spi__json_duplicate_key(const struct cJSON *obj, const spi_mem *m,
                            const char **dup) {
  *dup = NULL;
  const cJSON *stack[SPI_CANON_STACK_MEMBERS], **members;
  size_t n;
  if (sorted_members(obj, m, stack, &members, &n) != SPI_OK) return SPI_ENOMEM;
  for (size_t i = 1; i < n && !*dup; i++)
    if (member_cmp(&members[i - 1], &members[i]) == 0)
      *dup = members[i]->string ? members[i]->string : "";
  if (members != stack) spi__free(m, (void *)members);
  return *dup ? SPI_EPARSE : SPI_OK;
}

static int canon_object(canon_ctx *c, const cJSON *obj, int depth) {
  const cJSON *stack_members[SPI_CANON_STACK_MEMBERS], **members;
  size_t n, i;
  if (sorted_members(obj, c->mem, stack_members, &members, &n) != SPI_OK)
    return SPI_ENOMEM;

  int rc = spi__buf_append_byte(c->out, c->mem, '{');
  for (i = 0; rc == SPI_OK && i < n; i++) {
    if (i > 0 && member_cmp(&members[i - 1], &members[i]) == 0) {
      rc = SPI_EPARSE; /* duplicate key */
      break;
    }
    if (i > 0) rc = spi__buf_append_byte(c->out, c->mem, ',');
    if (rc == SPI_OK) rc = canon_string(c, members[i]->string);
    if (rc == SPI_OK) rc = spi__buf_append_byte(c->out, c->mem, ':');
    if (rc == SPI_OK) rc = canon_value(c, members[i], depth);
  }
  if (rc == SPI_OK) rc = spi__buf_append_byte(c->out, c->mem, '}');
  if (members != stack_members) spi__free(c->mem, (void *)members);
  return rc;
}

static int canon_array(canon_ctx *c, const cJSON *arr, int depth) {
  int rc = spi__buf_append_byte(c->out, c->mem, '[');
  for (const cJSON *it = arr->child; rc == SPI_OK && it; it = it->next) {
    if (it != arr->child) rc = spi__buf_append_byte(c->out, c->mem, ',');
    if (rc == SPI_OK) rc = canon_value(c, it, depth);
  }
  if (rc == SPI_OK) rc = spi__buf_append_byte(c->out, c->mem, ']');
  return rc;
}

/* depth is the number of arrays/objects enclosing v. */
static int canon_value(canon_ctx *c, const cJSON *v, int depth) {
  switch (v->type & 0xff) {
    case cJSON_False: return put_str(c, "false");
    case cJSON_True: return put_str(c, "true");
    case cJSON_NULL: return put_str(c, "null");
    case cJSON_Number: return canon_number(c, v);
    case cJSON_String: return canon_string(c, v->valuestring);
    case cJSON_Array:
      if (depth >= SPI_CANON_MAX_DEPTH) return SPI_ETOOBIG;
      return canon_array(c, v, depth + 1);
    case cJSON_Object:
      if (depth >= SPI_CANON_MAX_DEPTH) return SPI_ETOOBIG;
      return canon_object(c, v, depth + 1);
    default:
      /* cJSON_Invalid, or cJSON_Raw which no parse produces. */
      return SPI_EPARSE;
  }
}

int spi__canon_json(const struct cJSON *v, spi_buf *out, const spi_mem *m) {
  return spi__canon_json_src(v, out, m, NULL);
}

int spi__canon_json_src(const struct cJSON *v, spi_buf *out, const spi_mem *m,
                        spi_json_src *src) {
  if (!v || !out || !m) return SPI_EINVAL;
  size_t start = out->len;
  canon_ctx c = {out, m, src};
  int rc = canon_value(&c, v, 0);
  if (rc != SPI_OK) out->len = start;
  return rc;
}
