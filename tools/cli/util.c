/*
 * util.c - input, output and argument helpers of the spotinfer tool.
 */
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <spotinfer/spotinfer.h>

#include "cli.h"

/* Inputs are notice bodies, metrics pages, configs and request bodies: 64
 * MiB is far above any of them and keeps a mistaken device read bounded. */
#define CLI_MAX_INPUT ((size_t)64 << 20)

/* The buffer holds the input, its NUL and one byte more: a read that
 * fills it has found an input over the limit. */
#define CLI_INPUT_BUF (CLI_MAX_INPUT + 2)

char *cli_read_input(const char *path, size_t *len, char *why, size_t wcap) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (!f) {
    snprintf(why, wcap, "%s", strerror(errno));
    return NULL;
  }
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  if (!buf) snprintf(why, wcap, "out of memory");
  while (buf) {
    if (n + 1 >= cap) {
      size_t want = cap * 2 < CLI_INPUT_BUF ? cap * 2 : CLI_INPUT_BUF;
      char *b = n > CLI_MAX_INPUT ? NULL : realloc(buf, want);
      if (!b) {
        if (n > CLI_MAX_INPUT)
          snprintf(why, wcap, "larger than %zu bytes", CLI_MAX_INPUT);
        else
          snprintf(why, wcap, "out of memory");
        free(buf);
        buf = NULL;
        break;
      }
      buf = b;
      cap = want;
    }
    errno = 0;
    size_t got = fread(buf + n, 1, cap - n - 1, f);
    n += got;
    if (got == 0) {
      if (ferror(f)) {
        snprintf(why, wcap, "%s", errno ? strerror(errno) : "read error");
        free(buf);
        buf = NULL;
      }
      break;
    }
  }
  if (f != stdin) fclose(f);
  if (!buf) return NULL;
  buf[n] = '\0';
  *len = n;
  return buf;
}

/* "key value" lines; nested objects and arrays give dotted keys
 * (fallbacks.0, load.running). */
static void print_text(const cJSON *item, const char *prefix) {
  if (cJSON_IsObject(item) || cJSON_IsArray(item)) {
    int i = 0;
    const cJSON *ch;
    if (cJSON_GetArraySize(item) == 0 && *prefix) {
      printf("%s %s\n", prefix, cJSON_IsArray(item) ? "(none)" : "{}");
      return;
    }
    cJSON_ArrayForEach(ch, item) {
      char key[256];
      char idx[24];
      const char *name = ch->string;
      if (cJSON_IsArray(item)) {
        snprintf(idx, sizeof idx, "%d", i);
        name = idx;
      }
      snprintf(key, sizeof key, "%s%s%s", prefix, *prefix ? "." : "", name);
      print_text(ch, key);
      i++;
    }
    return;
  }
  if (cJSON_IsString(item)) {
    printf("%s %s\n", prefix, item->valuestring);
    return;
  }
  if (cJSON_IsNumber(item)) {
    printf("%s %.15g\n", prefix, item->valuedouble);
    return;
  }
  char *v = cJSON_PrintUnformatted(item);
  printf("%s %s\n", prefix, v ? v : "?");
  free(v);
}

/* Length of the valid UTF-8 sequence at s, or 0 (overlong forms,
 * surrogates and code points above U+10FFFF are not valid). */
static size_t utf8_seq(const unsigned char *s) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  size_t n = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
             : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  for (size_t k = 1; k < n; k++)
    if ((s[k] & 0xC0) != 0x80) return 0;
  if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F) ||
      (c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F))
    return 0;
  return n;
}

/* JSON text is UTF-8, but file names, flag values and the bytes an input
 * carries need not be: each byte that does not start a valid sequence is
 * printed as U+FFFD, so --json output always parses. */
static void utf8_fix(cJSON *item) {
  for (cJSON *ch = item; ch; ch = ch->next) {
    if (ch->child) utf8_fix(ch->child);
    if (!cJSON_IsString(ch) || !ch->valuestring) continue;
    const unsigned char *s = (const unsigned char *)ch->valuestring;
    size_t len = strlen(ch->valuestring), bad = 0;
    for (size_t i = 0, n; i < len; i += n ? n : 1) bad += (n = utf8_seq(s + i)) == 0;
    if (!bad) continue;
    char *fixed = malloc(len + 2 * bad + 1), *o = fixed;
    if (!fixed) continue;
    for (size_t i = 0, n; i < len; i += n ? n : 1) {
      n = utf8_seq(s + i);
      memcpy(o, n ? (const char *)s + i : "\xEF\xBF\xBD", n ? n : 3);
      o += n ? n : 3;
    }
    *o = '\0';
    cJSON_SetValuestring(ch, fixed);
    free(fixed);
  }
}

void cli_add_uint(cJSON *o, const char *key, uint64_t v) {
  char digits[24];
  snprintf(digits, sizeof digits, "%" PRIu64, v);
  cJSON_AddRawToObject(o, key, digits); /* printed as is, in both forms */
}

void cli_print(const cli_ctx *c, cJSON *root) {
  if (c->json) {
    utf8_fix(root);
    char *s = cJSON_Print(root);
    if (s) puts(s);
    free(s);
  } else {
    print_text(root, "");
  }
  cJSON_Delete(root);
}

int cli_invalid(const cli_ctx *c, const char *what, int status,
                const char *msg) {
  const char *text = msg && *msg ? msg : spi_strerror(status);
  fprintf(stderr, "spotinfer: %s: %s\n", what, text);
  if (c->json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 0);
    cJSON_AddStringToObject(o, "input", what);
    cJSON_AddStringToObject(o, "status", spi_strerror(status));
    cJSON_AddStringToObject(o, "error", text);
    cli_print(c, o);
  }
  return CLI_INVALID;
}

int cli_usage(const cli_ctx *c, const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s: ", c->prog);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nTry '%s %s--help'.\n", c->prog, cmd);
  return CLI_USAGE;
}

int cli_once(const cli_ctx *c, const char *cmd, const char *const *opts,
             const char *arg, unsigned *seen) {
  for (unsigned k = 0; opts[k]; k++) {
    if (strcmp(arg, opts[k]) != 0) continue;
    if (*seen & 1u << k)
      return cli_usage(c, cmd, "%s is given twice", arg);
    *seen |= 1u << k;
  }
  return CLI_OK;
}

int cli_is_help(const char *arg) {
  return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

int cli_double(const char *s, double *out) {
  char *end;
  errno = 0;
  /* strtod skips leading blanks; they are refused as trailing ones are. An
   * underflow (ERANGE with a result that is 0 or subnormal) is still the
   * number written, for the formula to judge; an overflow is not finite. */
  if (isspace((unsigned char)*s)) return -1;
  double v = strtod(s, &end);
  if (end == s || *end || !isfinite(v)) return -1;
  if (errno && !(errno == ERANGE && fabs(v) < DBL_MIN)) return -1;
  *out = v;
  return 0;
}

int cli_i64(const char *s, long long *out) {
  char *end;
  errno = 0;
  if (isspace((unsigned char)*s)) return -1;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end || errno) return -1;
  *out = v;
  return 0;
}
