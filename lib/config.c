/*
 * config.c - typed, path-reporting readers of JSON configuration.
 *
 * Every reader takes the option's table path, so the default and the bounds
 * come from options.c and the message names where the bad value sits, e.g.
 * "classifier.rules[2].when.sla_ms_max: must be an integer in [1, 86400000]".
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "spi_internal.h"

static const char *last_component(const char *path) {
  const char *dot = strrchr(path, '.');
  return dot ? dot + 1 : path;
}

static void shown_path(char *buf, size_t cap, const char *shown,
                       const char *key) {
  if (shown && shown[0])
    spi__errf(buf, cap, "%s.%s", shown, key);
  else
    spi__errf(buf, cap, "%s", key);
}

/* A byte below 0x20 outside a string that is not JSON whitespace: cJSON
 * would skip it as whitespace. A NUL gets its own words, as the others get
 * their value: printed, the text would show none of them. */
static int control_byte(const char *text, size_t off, const char *what,
                        char *err, size_t errcap) {
  unsigned char ch = (unsigned char)text[off];
  if (ch == 0)
    spi__errf(err, errcap, "%s: NUL byte at offset %zu", what, off);
  else
    spi__errf(err, errcap, "%s: control byte 0x%02x at byte offset %zu", what,
              (unsigned)ch, off);
  return SPI_EPARSE;
}

/* Only JSON whitespace may follow the value (text[from..len)). */
static int check_trailing(const char *text, size_t len, size_t from,
                          const char *what, char *err, size_t errcap) {
  for (size_t i = from; i < len; i++) {
    if (spi__json_is_ws((unsigned char)text[i])) continue;
    if ((unsigned char)text[i] < 0x20)
      return control_byte(text, i, what, err, errcap);
    spi__errf(err, errcap, "%s: trailing data at byte offset %zu", what, i);
    return SPI_EPARSE;
  }
  return SPI_OK;
}

/* cJSON refused the text, and not for memory: the first control byte
 * outside a string up to where it stopped (that byte included: text that
 * ends too soon stops at its last byte), else where it stopped. */
static int malformed(const char *text, size_t len, const char *end,
                     const char *what, char *err, size_t errcap) {
  /* cJSON sets end to where it stopped; on allocation failure it may not. */
  size_t off =
      (end && end >= text && end <= text + len) ? (size_t)(end - text) : 0;
  size_t ctl, nul;
  spi__json_scan(text, off < len ? off + 1 : len, &ctl, &nul);
  if (ctl != SIZE_MAX) return control_byte(text, ctl, what, err, errcap);
  spi__errf(err, errcap, "%s: malformed JSON at byte offset %zu", what, off);
  return SPI_EPARSE;
}

/* The faults of parsed text, in this order: a control byte outside a
 * string, anything after the value, the top level's type, U+0000 inside
 * a string (so trailing data is named before an earlier \u0000). The
 * one pass over the value (spi__json_scan) finds the first and the last. */
static int check_parsed(const char *text, size_t len, const char *end,
                        const cJSON *root, int want, const char *what,
                        char *err, size_t errcap) {
  size_t vend = end && end >= text && end <= text + len ? (size_t)(end - text)
                                                        : len;
  size_t ctl, nul;
  spi__json_scan(text, vend, &ctl, &nul);
  if (ctl != SIZE_MAX) return control_byte(text, ctl, what, err, errcap);
  int rc = check_trailing(text, len, vend, what, err, errcap);
  if (rc != SPI_OK) return rc;
  if (!(want == cJSON_Array ? cJSON_IsArray(root) : cJSON_IsObject(root))) {
    spi__errf(err, errcap, "%s: top level must be a JSON %s", what,
              want == cJSON_Array ? "array" : "object");
    return SPI_ETYPE;
  }
  if (nul != SIZE_MAX) {
    spi__errf(err, errcap,
              "%s: \\u0000 inside a string at byte offset %zu is not "
              "supported",
              what, nul);
    return SPI_EPARSE;
  }
  return SPI_OK;
}

int spi__json_parse_as(const char *text, size_t len, int want,
                       const char *what, cJSON **out, char *err,
                       size_t errcap) {
  *out = NULL;
  const char *end = NULL;
  cJSON *root = spi__cjson_parse(text, len, &end);
  if (!root && spi__json_well_formed(text, len)) {
    /* cJSON answers NULL for both; well-formed text means it ran out. */
    spi__errf(err, errcap, "%s: out of memory while parsing JSON", what);
    return SPI_ENOMEM;
  }
  if (!root) return malformed(text, len, end, what, err, errcap);
  int rc = check_parsed(text, len, end, root, want, what, err, errcap);
  if (rc != SPI_OK) {
    cJSON_Delete(root);
    return rc;
  }
  *out = root;
  return SPI_OK;
}

int spi__json_parse_object(const char *text, size_t len, size_t max_len,
                           const char *what, cJSON **out, char *err,
                           size_t errcap) {
  *out = NULL;
  if (!text && len) {
    spi__errf(err, errcap, "%s: NULL text with length %zu", what, len);
    return SPI_EINVAL;
  }
  if (len > max_len) {
    spi__errf(err, errcap, "%s: %zu bytes exceeds the limit of %zu", what, len,
              max_len);
    return SPI_ETOOBIG;
  }
  if (len == 0) {
    spi__errf(err, errcap, "%s: empty input, expected a JSON object", what);
    return SPI_EPARSE;
  }
  return spi__json_parse_as(text, len, cJSON_Object, what, out, err, errcap);
}

/* The item for the option's key in obj, or NULL when absent or null. */
static const cJSON *lookup(const cJSON *obj, const char *table_path) {
  if (!obj) return NULL;
  const cJSON *it =
      cJSON_GetObjectItemCaseSensitive(obj, last_component(table_path));
  if (!it || cJSON_IsNull(it)) return NULL;
  return it;
}

static const spi_optdesc *must_find(const char *table_path, char *err,
                                    size_t errcap) {
  const spi_optdesc *d = spi__opt_find(table_path);
  if (!d) spi__errf(err, errcap, "%s: not in the option table", table_path);
  return d;
}

/* Defaults are JSON text in the table; parse the scalar ones directly, and
 * not with strtod, which follows LC_NUMERIC: in a locale with a decimal
 * comma it read "0.85" as 0. */
static int default_number(const spi_optdesc *d, double *out) {
  if (strcmp(d->default_json, "null") == 0) return 0;
  double v = 0;
  if (spi__json_number(d->default_json, strlen(d->default_json), &v) != 0)
    return 0;
  *out = v;
  return 1;
}

int spi__cfg_int(const cJSON *obj, const char *table_path, const char *shown,
                 int64_t *out, char *err, size_t errcap) {
  const spi_optdesc *d = must_find(table_path, err, errcap);
  if (!d) return SPI_EINVAL;
  const char *key = last_component(table_path);
  char where[SPI_ERRMSG_CAP];
  shown_path(where, sizeof where, shown, key);
  const cJSON *it = lookup(obj, table_path);
  if (!it) {
    double v = 0;
    if (default_number(d, &v)) *out = (int64_t)v;
    return SPI_OK;
  }
  if (!cJSON_IsNumber(it)) {
    spi__errf(err, errcap, "%s: must be an integer", where);
    return SPI_ETYPE;
  }
  double v = it->valuedouble;
  if (!isfinite(v) || v != floor(v)) {
    spi__errf(err, errcap, "%s: must be an integer, got %.17g", where, v);
    return SPI_ETYPE;
  }
  if (v < d->min_value || v > d->max_value) {
    spi__errf(err, errcap, "%s: must be an integer in [%.0f, %.0f], got %.0f",
              where, d->min_value, d->max_value, v);
    return SPI_ERANGE;
  }
  *out = (int64_t)v;
  return SPI_OK;
}

int spi__cfg_double(const cJSON *obj, const char *table_path,
                    const char *shown, double *out, char *err, size_t errcap) {
  const spi_optdesc *d = must_find(table_path, err, errcap);
  if (!d) return SPI_EINVAL;
  char where[SPI_ERRMSG_CAP];
  shown_path(where, sizeof where, shown, last_component(table_path));
  const cJSON *it = lookup(obj, table_path);
  if (!it) {
    double v = 0;
    if (default_number(d, &v)) *out = v;
    return SPI_OK;
  }
  if (!cJSON_IsNumber(it)) {
    spi__errf(err, errcap, "%s: must be a number", where);
    return SPI_ETYPE;
  }
  double v = it->valuedouble;
  if (!isfinite(v) || v < d->min_value || v > d->max_value) {
    spi__errf(err, errcap, "%s: must be a number in [%g, %g], got %.17g", where,
              d->min_value, d->max_value, v);
    return SPI_ERANGE;
  }
  *out = v;
  return SPI_OK;
}

int spi__cfg_bool(const cJSON *obj, const char *table_path, const char *shown,
                  int32_t *out, char *err, size_t errcap) {
  const spi_optdesc *d = must_find(table_path, err, errcap);
  if (!d) return SPI_EINVAL;
  char where[SPI_ERRMSG_CAP];
  shown_path(where, sizeof where, shown, last_component(table_path));
  const cJSON *it = lookup(obj, table_path);
  if (!it) {
    if (strcmp(d->default_json, "true") == 0) *out = 1;
    else if (strcmp(d->default_json, "false") == 0) *out = 0;
    return SPI_OK;
  }
  if (!cJSON_IsBool(it)) {
    spi__errf(err, errcap, "%s: must be true or false", where);
    return SPI_ETYPE;
  }
  *out = cJSON_IsTrue(it) ? 1 : 0;
  return SPI_OK;
}

int spi__cfg_string(const cJSON *obj, const char *table_path,
                    const char *shown, const char **out, size_t *out_len,
                    char *err, size_t errcap) {
  const spi_optdesc *d = must_find(table_path, err, errcap);
  if (!d) return SPI_EINVAL;
  char where[SPI_ERRMSG_CAP];
  shown_path(where, sizeof where, shown, last_component(table_path));
  const cJSON *it = lookup(obj, table_path);
  if (!it) {
    /* The default is JSON text; hand out the inside of its quotes. */
    size_t dl = strlen(d->default_json);
    if (dl >= 2 && d->default_json[0] == '"') {
      *out = d->default_json + 1;
      *out_len = dl - 2;
    }
    return SPI_OK;
  }
  if (!cJSON_IsString(it) || !it->valuestring) {
    spi__errf(err, errcap, "%s: must be a string", where);
    return SPI_ETYPE;
  }
  *out = it->valuestring;
  *out_len = strlen(it->valuestring);
  return SPI_OK;
}

int spi__cfg_enum(const cJSON *obj, const char *table_path, const char *shown,
                  const char *const *names, size_t n, int32_t *out_index,
                  char *err, size_t errcap) {
  const spi_optdesc *d = must_find(table_path, err, errcap);
  if (!d) return SPI_EINVAL;
  char where[SPI_ERRMSG_CAP];
  shown_path(where, sizeof where, shown, last_component(table_path));
  const cJSON *it = lookup(obj, table_path);
  const char *val = NULL;
  size_t vlen = 0;
  if (!it) {
    /* Default: the JSON string in the table, without its quotes. */
    size_t dl = strlen(d->default_json);
    if (dl < 2 || d->default_json[0] != '"') return SPI_OK;
    val = d->default_json + 1;
    vlen = dl - 2;
  } else {
    if (!cJSON_IsString(it) || !it->valuestring) {
      spi__errf(err, errcap, "%s: must be a string", where);
      return SPI_ETYPE;
    }
    val = it->valuestring;
    vlen = strlen(val);
  }
  for (size_t i = 0; i < n; i++) {
    if (strlen(names[i]) == vlen && memcmp(names[i], val, vlen) == 0) {
      *out_index = (int32_t)i;
      return SPI_OK;
    }
  }
  char list[160] = "";
  size_t used = 0;
  for (size_t i = 0; i < n && used + 1 < sizeof list; i++) {
    int w = snprintf(list + used, sizeof list - used, "%s%s", i ? "|" : "",
                     names[i]);
    if (w < 0) break;
    used += (size_t)w;
  }
  spi__errf(err, errcap, "%s: unknown value \"%.*s\" (expected %s)", where,
            (int)spi__utf8_fit(val, vlen, 64), val, list);
  return SPI_EUNKNOWN;
}

int spi__cfg_check_keys(const cJSON *obj, const char *table_prefix,
                        const char *shown, char *err, size_t errcap) {
  if (!cJSON_IsObject(obj)) {
    spi__errf(err, errcap, "%s: must be an object", shown[0] ? shown : "(root)");
    return SPI_ETYPE;
  }
  char path[SPI_ERRMSG_CAP];
  for (const cJSON *c = obj->child; c; c = c->next) {
    const char *key = c->string ? c->string : "";
    if (table_prefix[0])
      spi__errf(path, sizeof path, "%s.%s", table_prefix, key);
    else
      spi__errf(path, sizeof path, "%s", key);
    if (!spi__opt_find(path) || strchr(key, '.') || strchr(key, '[')) {
      char where[SPI_ERRMSG_CAP];
      shown_path(where, sizeof where, shown, key);
      spi__errf(err, errcap, "%s: unknown key", where);
      return SPI_EUNKNOWN;
    }
    /* A key given twice is ambiguous; refuse rather than pick one. */
    for (const cJSON *o = obj->child; o != c; o = o->next) {
      if (o->string && strcmp(o->string, key) == 0) {
        char where[SPI_ERRMSG_CAP];
        shown_path(where, sizeof where, shown, key);
        spi__errf(err, errcap, "%s: duplicate key", where);
        return SPI_EPARSE;
      }
    }
  }
  return SPI_OK;
}
