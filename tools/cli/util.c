/*
 * util.c - input, output and argument helpers of the spotinfer tool.
 */
#include <errno.h>
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

char *cli_read_input(const char *path, size_t *len) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "spotinfer: %s: %s\n", path, strerror(errno));
    return NULL;
  }
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    if (n + 1 >= cap) {
      if (cap >= CLI_MAX_INPUT) {
        fprintf(stderr, "spotinfer: %s: larger than %zu bytes\n", path,
                CLI_MAX_INPUT);
        free(buf);
        buf = NULL;
        break;
      }
      char *b = realloc(buf, cap * 2);
      if (!b) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = b;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - n - 1, f);
    n += got;
    if (got == 0) {
      if (ferror(f)) {
        fprintf(stderr, "spotinfer: %s: read error\n", path);
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

void cli_print(const cli_ctx *c, cJSON *root) {
  if (c->json) {
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

int cli_is_help(const char *arg) {
  return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

int cli_double(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || errno || !isfinite(v)) return -1;
  *out = v;
  return 0;
}

int cli_i64(const char *s, long long *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end || errno) return -1;
  *out = v;
  return 0;
}
