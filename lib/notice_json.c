/*
 * notice_json.c - the fields of a notice document, by path: a member of an
 * object with its type checked and a duplicate key refused, ids within
 * bounds, names from a closed list, times in a given format. Every failure
 * names the field's path ("Events[1].NotBefore") in the message.
 */
#include <stdio.h>
#include <string.h>

#include "notice.h"

void spi__notice_field_path(char *buf, const char *parent, const char *key) {
  if (parent[0])
    spi__errf(buf, PATH_CAP, "%s.%s", parent, key);
  else
    spi__errf(buf, PATH_CAP, "%s", key);
}

const char *spi__notice_type_name(const cJSON *it) {
  if (cJSON_IsString(it)) return "a string";
  if (cJSON_IsNumber(it)) return "a number";
  if (cJSON_IsBool(it)) return "a boolean";
  if (cJSON_IsNull(it)) return "null";
  if (cJSON_IsArray(it)) return "an array";
  if (cJSON_IsObject(it)) return "an object";
  return "invalid";
}

/* The member of obj named key (exact case), NULL when absent. */
int spi__notice_member(nctx *c, const cJSON *obj, const char *parent,
                       const char *key, const cJSON **out) {
  *out = NULL;
  for (const cJSON *it = obj->child; it; it = it->next) {
    if (!it->string || strcmp(it->string, key) != 0) continue;
    if (*out) {
      char path[PATH_CAP];
      spi__notice_field_path(path, parent, key);
      return spi__notice_fail(c, SPI_EPARSE, "%s: duplicate key", path);
    }
    *out = it;
  }
  return SPI_OK;
}

/* A string member, NULL when absent; SPI_ETYPE for any other type. */
int spi__notice_get_string(nctx *c, const cJSON *obj, const char *parent,
                           const char *key, const char **out) {
  const cJSON *it;
  *out = NULL;
  int rc = spi__notice_member(c, obj, parent, key, &it);
  if (rc != SPI_OK || !it) return rc;
  if (!cJSON_IsString(it) || !it->valuestring) {
    char path[PATH_CAP];
    spi__notice_field_path(path, parent, key);
    return spi__notice_fail(c, SPI_ETYPE, "%s: must be a string, not %s", path,
                            spi__notice_type_name(it));
  }
  *out = it->valuestring;
  return SPI_OK;
}

/* A member of the given type (cJSON_Object / cJSON_Array), NULL when
 * absent. */
int spi__notice_get_typed(nctx *c, const cJSON *obj, const char *parent,
                          const char *key, int type, const cJSON **out) {
  int rc = spi__notice_member(c, obj, parent, key, out);
  if (rc != SPI_OK || !*out) return rc;
  if ((type == cJSON_Object && !cJSON_IsObject(*out)) ||
      (type == cJSON_Array && !cJSON_IsArray(*out))) {
    char path[PATH_CAP];
    spi__notice_field_path(path, parent, key);
    return spi__notice_fail(c, SPI_ETYPE, "%s: must be %s, not %s", path,
                            type == cJSON_Object ? "an object" : "an array",
                            spi__notice_type_name(*out));
  }
  return SPI_OK;
}

int spi__notice_missing(nctx *c, const char *parent, const char *key) {
  char path[PATH_CAP];
  spi__notice_field_path(path, parent, key);
  return spi__notice_fail(c, SPI_EMISSING, "%s: required", path);
}

/* An id from the body: 1..63 bytes, no control characters. */
int spi__notice_check_id(nctx *c, const char *path, const char *s) {
  size_t len = strlen(s);
  char q[QUOTE_CAP];
  if (len == 0) return spi__notice_fail(c, SPI_EPARSE, "%s: empty", path);
  if (len >= SPI_ID_MAX)
    return spi__notice_fail(c, SPI_ETOOBIG,
                            "%s: %zu bytes, over the %d allowed", path, len,
                            SPI_ID_MAX - 1);
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
      return spi__notice_fail(c, SPI_EPARSE, "%s: control character in %s",
                              path, spi__notice_quoted(q, sizeof q, s, len));
  return SPI_OK;
}

/* value must be one of names[0..n); *index gets which. */
int spi__notice_one_of(nctx *c, const char *path, const char *value,
                       const char *const *names, size_t n, size_t *index) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(value, names[i]) == 0) {
      *index = i;
      return SPI_OK;
    }
  char q[QUOTE_CAP], list[160];
  size_t o = 0;
  list[0] = '\0';
  for (size_t i = 0; i < n && o < sizeof list; i++)
    o += (size_t)snprintf(list + o, sizeof list - o, "%s%s",
                          i == 0       ? ""
                          : i == n - 1 ? " or "
                                       : ", ",
                          names[i]);
  return spi__notice_fail(
      c, SPI_EUNKNOWN, "%s: unknown value %s (expected %s)", path,
      spi__notice_quoted(q, sizeof q, value, strlen(value)), list);
}

/* Whether value is one of names[0..n); *index gets which. */
int spi__notice_known(const char *value, const char *const *names, size_t n,
                      size_t *index) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(value, names[i]) == 0) {
      *index = i;
      return 1;
    }
  return 0;
}

int spi__notice_parse_time(nctx *c, const char *path, const char *s,
                           time_parser parse, int64_t *out) {
  size_t len = strlen(s);
  const char *why = parse(s, len, out);
  if (!why) return SPI_OK;
  char q[QUOTE_CAP];
  return spi__notice_fail(c, SPI_EPARSE, "%s: %s: %s", path, why,
                          spi__notice_quoted(q, sizeof q, s, len));
}
