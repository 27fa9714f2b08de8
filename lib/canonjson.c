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
 *     -0 gives "0"); any other finite double is printed as %.17g with '.'
 *     as the decimal separator whatever LC_NUMERIC says; non-finite numbers
 *     (e.g. 1e999 overflowing) are refused;
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
} canon_ctx;

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
static int canon_number(canon_ctx *c, double d) {
  char tmp[64];
  if (!isfinite(d)) return SPI_EPARSE;
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
    case cJSON_Number: return canon_number(c, v->valuedouble);
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
  if (!v || !out || !m) return SPI_EINVAL;
  size_t start = out->len;
  canon_ctx c = {out, m};
  int rc = canon_value(&c, v, 0);
  if (rc != SPI_OK) out->len = start;
  return rc;
}
