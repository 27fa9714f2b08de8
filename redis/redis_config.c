/*
 * redis_config.c - the configuration object every module of
 * libspotinfer_redis reads (redis_conn.h): parsing, defaults and checks.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "spotinfer/spotinfer.h"
#include "redis_conn.h"

#define CFG_MAX_BYTES (64u * 1024u)

static int cfail(char *err, size_t cap, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int cfail(char *err, size_t cap, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (cap) vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  return rc;
}

static const char *const KNOWN[] = {
    "address",          "key_prefix",       "consumer",
    "group",            "consumer_idle_ms", "db",
    "connect_timeout_ms", "timeout_ms",     "reconnect_min_ms",
    "reconnect_max_ms", "username",         "password",
    "tls",              NULL};

static const char *const TLS_KNOWN[] = {"enabled",   "verify",   "ca_file",
                                        "cert_file", "key_file", "server_name",
                                        NULL};

static int in_list(const char *const *list, const char *name) {
  for (size_t i = 0; list && list[i]; i++)
    if (strcmp(list[i], name) == 0) return 1;
  return 0;
}

static int check_keys(const cJSON *obj, const char *path,
                      const char *const *known, const char *const *extra,
                      char *err, size_t cap) {
  for (const cJSON *c = obj->child; c; c = c->next)
    if (!in_list(known, c->string) && !in_list(extra, c->string))
      return cfail(err, cap, SPI_EUNKNOWN, "%s.%.64s: unknown key", path,
                   c->string);
  return SPI_OK;
}

/* A string key into dst (capacity cap_dst including the NUL); absent keeps
 * dst. Empty strings are allowed only where allow_empty says. */
static int get_str(const cJSON *obj, const char *path, const char *key,
                   char *dst, size_t cap_dst, int allow_empty, char *err,
                   size_t cap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v || cJSON_IsNull(v)) return SPI_OK;
  if (!cJSON_IsString(v))
    return cfail(err, cap, SPI_ETYPE, "%s.%s: must be a string", path, key);
  size_t n = strlen(v->valuestring);
  if (n >= cap_dst)
    return cfail(err, cap, SPI_ERANGE, "%s.%s: longer than %zu bytes", path,
                 key, cap_dst - 1);
  if (n == 0 && !allow_empty)
    return cfail(err, cap, SPI_ERANGE, "%s.%s: must not be empty", path, key);
  memcpy(dst, v->valuestring, n + 1);
  return SPI_OK;
}

static int get_int(const cJSON *obj, const char *path, const char *key,
                   int *dst, int lo, int hi, char *err, size_t cap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v || cJSON_IsNull(v)) return SPI_OK;
  if (!cJSON_IsNumber(v) || v->valuedouble != (double)(long long)v->valuedouble)
    return cfail(err, cap, SPI_ETYPE, "%s.%s: must be an integer", path, key);
  if (v->valuedouble < lo || v->valuedouble > hi)
    return cfail(err, cap, SPI_ERANGE, "%s.%s: %.0f is not in [%d, %d]", path,
                 key, v->valuedouble, lo, hi);
  *dst = (int)v->valuedouble;
  return SPI_OK;
}

static int get_bool(const cJSON *obj, const char *path, const char *key,
                    int *dst, char *err, size_t cap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v || cJSON_IsNull(v)) return SPI_OK;
  if (!cJSON_IsBool(v))
    return cfail(err, cap, SPI_ETYPE, "%s.%s: must be true or false", path,
                 key);
  *dst = cJSON_IsTrue(v) ? 1 : 0;
  return SPI_OK;
}

/* "host:port", "[v6]:port", "host" or "unix:/path". */
static int parse_address(const char *a, spr_config *c, const char *path,
                         char *err, size_t cap) {
  if (strncmp(a, "unix:", 5) == 0) {
    size_t n = strlen(a + 5);
    if (n == 0 || n >= sizeof c->unix_path)
      return cfail(err, cap, SPI_ERANGE,
                   "%s.address: a unix socket path of 1..%zu bytes", path,
                   sizeof c->unix_path - 1);
    memcpy(c->unix_path, a + 5, n + 1);
    c->host[0] = '\0';
    return SPI_OK;
  }
  const char *hs = a, *he = NULL, *colon = NULL;
  if (a[0] == '[') {
    hs = a + 1;
    he = strchr(hs, ']');
    if (!he || (he[1] != '\0' && he[1] != ':'))
      return cfail(err, cap, SPI_EINVAL, "%s.address: \"%.64s\": bad [v6]",
                   path, a);
    colon = he[1] == ':' ? he + 1 : NULL;
  } else {
    colon = strrchr(a, ':');
    if (colon && strchr(a, ':') != colon)
      return cfail(err, cap, SPI_EINVAL,
                   "%s.address: \"%.64s\": write an IPv6 address as [addr]:port",
                   path, a);
    he = colon ? colon : a + strlen(a);
  }
  size_t hl = (size_t)(he - hs);
  if (hl == 0 || hl > SPR_HOST_MAX)
    return cfail(err, cap, SPI_EINVAL, "%s.address: \"%.64s\": no host", path,
                 a);
  memcpy(c->host, hs, hl);
  c->host[hl] = '\0';
  c->port = 6379;
  if (colon) {
    char *end = NULL;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || !end || *end || end == colon + 1 || p < 1 || p > 65535)
      return cfail(err, cap, SPI_ERANGE,
                   "%s.address: \"%.64s\": port must be 1..65535", path, a);
    c->port = (int)p;
  }
  return SPI_OK;
}

static void defaults(spr_config *c) {
  memset(c, 0, sizeof *c);
  strcpy(c->host, "127.0.0.1");
  c->port = 6379;
  strcpy(c->key_prefix, "spotinfer:");
  strcpy(c->group, "spotinfer");
  char host[64] = "";
  if (gethostname(host, sizeof host - 1) != 0 || !host[0])
    strcpy(host, "localhost");
  host[sizeof host - 1] = '\0';
  snprintf(c->consumer, sizeof c->consumer, "%s-%ld", host, (long)getpid());
  c->consumer_idle_ms = 3600000;
  c->connect_timeout_ms = 1000;
  c->timeout_ms = 1000;
  c->reconnect_min_ms = 100;
  c->reconnect_max_ms = 5000;
  c->tls_verify = 1;
}

static int parse_tls(const cJSON *t, const char *path, spr_config *c,
                     char *err, size_t cap) {
  char tp[96];
  snprintf(tp, sizeof tp, "%s.tls", path);
  if (!cJSON_IsObject(t))
    return cfail(err, cap, SPI_ETYPE, "%s: must be an object", tp);
  int rc = check_keys(t, tp, TLS_KNOWN, NULL, err, cap);
  c->tls = 1;
  if (!rc) rc = get_bool(t, tp, "enabled", &c->tls, err, cap);
  if (!rc) rc = get_bool(t, tp, "verify", &c->tls_verify, err, cap);
  if (!rc)
    rc = get_str(t, tp, "ca_file", c->tls_ca_file, sizeof c->tls_ca_file, 0,
                 err, cap);
  if (!rc)
    rc = get_str(t, tp, "cert_file", c->tls_cert_file,
                 sizeof c->tls_cert_file, 0, err, cap);
  if (!rc)
    rc = get_str(t, tp, "key_file", c->tls_key_file, sizeof c->tls_key_file,
                 0, err, cap);
  if (!rc)
    rc = get_str(t, tp, "server_name", c->tls_server_name,
                 sizeof c->tls_server_name, 0, err, cap);
  if (!rc && (!c->tls_cert_file[0]) != (!c->tls_key_file[0]))
    rc = cfail(err, cap, SPI_EINVAL,
               "%s: cert_file and key_file go together", tp);
  return rc;
}

static int parse_obj(const cJSON *o, const char *path,
                     const char *const *extra, spr_config *c, char *err,
                     size_t cap) {
  int rc = check_keys(o, path, KNOWN, extra, err, cap);
  char addr[SPR_HOST_MAX + 16] = "";
  if (!rc) rc = get_str(o, path, "address", addr, sizeof addr, 0, err, cap);
  if (!rc && addr[0]) rc = parse_address(addr, c, path, err, cap);
  if (!rc)
    rc = get_str(o, path, "key_prefix", c->key_prefix, sizeof c->key_prefix,
                 1, err, cap);
  if (!rc)
    rc = get_str(o, path, "consumer", c->consumer, sizeof c->consumer, 0, err,
                 cap);
  if (!rc)
    rc = get_str(o, path, "group", c->group, sizeof c->group, 0, err, cap);
  if (!rc)
    rc = get_int(o, path, "consumer_idle_ms", &c->consumer_idle_ms, 1000,
                 604800000, err, cap);
  if (!rc) rc = get_int(o, path, "db", &c->db, 0, 1 << 20, err, cap);
  if (!rc)
    rc = get_int(o, path, "connect_timeout_ms", &c->connect_timeout_ms, 1,
                 600000, err, cap);
  if (!rc)
    rc = get_int(o, path, "timeout_ms", &c->timeout_ms, 1, 600000, err, cap);
  if (!rc)
    rc = get_int(o, path, "reconnect_min_ms", &c->reconnect_min_ms, 0, 600000,
                 err, cap);
  if (!rc)
    rc = get_int(o, path, "reconnect_max_ms", &c->reconnect_max_ms, 0, 600000,
                 err, cap);
  if (!rc)
    rc = get_str(o, path, "username", c->username, sizeof c->username, 0, err,
                 cap);
  if (!rc)
    rc = get_str(o, path, "password", c->password, sizeof c->password, 1, err,
                 cap);
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "tls");
  if (!rc && t && !cJSON_IsNull(t)) rc = parse_tls(t, path, c, err, cap);
  if (!rc && c->reconnect_max_ms < c->reconnect_min_ms)
    rc = cfail(err, cap, SPI_ERANGE,
               "%s.reconnect_max_ms: must be at least reconnect_min_ms (%d)",
               path, c->reconnect_min_ms);
  if (!rc && c->username[0] && !c->password[0])
    rc = cfail(err, cap, SPI_EINVAL, "%s.username: needs a password", path);
  if (!rc && c->tls && c->unix_path[0])
    rc = cfail(err, cap, SPI_EINVAL,
               "%s.tls: not over a unix socket address", path);
  return rc;
}

int spr_config_parse(const char *json, size_t len, const char *path,
                     const char *const *extra_keys, spr_config *out,
                     char *err, size_t cap) {
  if (!out || (!json && len)) return cfail(err, cap, SPI_EINVAL, "NULL config");
  if (!path) path = "store_config";
  defaults(out);
  if (len == 0) return SPI_OK;
  if (len > CFG_MAX_BYTES)
    return cfail(err, cap, SPI_ETOOBIG, "%s: more than %u bytes", path,
                 CFG_MAX_BYTES);
  cJSON *o = cJSON_ParseWithLength(json, len);
  if (!o)
    return cfail(err, cap, SPI_EPARSE, "%s: not valid JSON", path);
  int rc = cJSON_IsObject(o)
               ? parse_obj(o, path, extra_keys, out, err, cap)
               : cfail(err, cap, SPI_ETYPE, "%s: must be an object", path);
  cJSON_Delete(o);
  return rc;
}

const char *spr_config_address(const spr_config *c, char *buf, size_t cap) {
  if (c->unix_path[0])
    snprintf(buf, cap, "unix:%s", c->unix_path);
  else if (strchr(c->host, ':'))
    snprintf(buf, cap, "[%s]:%d", c->host, c->port);
  else
    snprintf(buf, cap, "%s:%d", c->host, c->port);
  return buf;
}
