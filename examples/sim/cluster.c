/*
 * cluster.c - the --cluster file: groups of replicas per pool, zone and
 * instance type, each with its own price, prefill and decode rates and KV
 * capacity. Validation is strict: an unknown key, a wrong type or a value
 * out of range is refused with the key path that is wrong.
 *
 *   {"groups": [{"pool": "spot", "zone": "us-east-1a",
 *                "instance_type": "g5.xlarge", "count": 8,
 *                "usd_per_hour": 0.5, "prefill_tokens_per_s": 8000,
 *                "decode_tokens_per_s": 60, "kv_blocks": 512,
 *                "max_batch": 32}, ...]}
 *
 * Optional per group: "on_demand_usd_per_hour" (spot groups: their price in
 * the all-on-demand baseline; by default the price of an on_demand group of
 * the same instance type) and "cloud" ("aws", "gcp" or "azure"; spot groups:
 * the cloud of the zone's built-in capacity trace when no --spot-trace is
 * given).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim_run.h"

static int bad(char *msg, size_t cap, const char *path, const char *at,
               const char *why) {
  snprintf(msg, cap, "%s: %s: %s", path, at, why);
  return -1;
}

static int name_ok(const char *s) {
  size_t n = strlen(s);
  if (!n || n > SIM_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
          (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.'))
      return 0;
  }
  return 1;
}

/* A number that is an integer in [lo, hi]. */
static int get_uint(const cJSON *v, double lo, double hi, uint32_t *out) {
  if (!cJSON_IsNumber(v)) return -1;
  double d = v->valuedouble;
  if (!isfinite(d) || d != floor(d) || d < lo || d > hi) return -2;
  *out = (uint32_t)d;
  return 0;
}

static int get_pos(const cJSON *v, double hi, double *out) {
  if (!cJSON_IsNumber(v)) return -1;
  double d = v->valuedouble;
  if (!isfinite(d) || !(d > 0) || d > hi) return -2;
  *out = d;
  return 0;
}

static const char *const GROUP_KEYS[] = {
    "pool", "zone", "instance_type", "count", "usd_per_hour",
    "prefill_tokens_per_s", "decode_tokens_per_s", "kv_blocks", "max_batch",
    "on_demand_usd_per_hour", "cloud"};
#define N_GROUP_KEYS (sizeof GROUP_KEYS / sizeof GROUP_KEYS[0])
#define N_REQUIRED 9

static int read_group(sim_cluster *c, const cJSON *g, size_t gi,
                      const char *path, char *msg, size_t cap) {
  char at[96];
  sim_group *s = &c->g[gi];
  memset(s, 0, sizeof *s);
  s->zone_index = -1;
  snprintf(at, sizeof at, "groups[%zu]", gi);
  if (!cJSON_IsObject(g)) return bad(msg, cap, path, at, "must be an object");
  for (const cJSON *k = g->child; k; k = k->next) {
    size_t j = 0;
    while (j < N_GROUP_KEYS && strcmp(k->string, GROUP_KEYS[j])) j++;
    if (j == N_GROUP_KEYS) {
      snprintf(at, sizeof at, "groups[%zu].%.40s", gi, k->string);
      return bad(msg, cap, path, at, "unknown key");
    }
    for (const cJSON *e = g->child; e != k; e = e->next)
      if (!strcmp(e->string, k->string)) {
        snprintf(at, sizeof at, "groups[%zu].%.40s", gi, k->string);
        return bad(msg, cap, path, at, "given twice");
      }
  }
  for (size_t j = 0; j < N_REQUIRED; j++)
    if (!cJSON_GetObjectItemCaseSensitive(g, GROUP_KEYS[j])) {
      snprintf(at, sizeof at, "groups[%zu].%s", gi, GROUP_KEYS[j]);
      return bad(msg, cap, path, at, "required");
    }
  const cJSON *v;
#define AT(key) snprintf(at, sizeof at, "groups[%zu].%s", gi, key)
  v = cJSON_GetObjectItemCaseSensitive(g, "pool");
  AT("pool");
  if (!cJSON_IsString(v)) return bad(msg, cap, path, at, "must be a string");
  if (!strcmp(v->valuestring, "spot")) s->pool = SPI_POOL_SPOT;
  else if (!strcmp(v->valuestring, "on_demand")) s->pool = SPI_POOL_ON_DEMAND;
  else return bad(msg, cap, path, at, "must be \"spot\" or \"on_demand\"");
  static const char *const NAMES[2] = {"zone", "instance_type"};
  for (int j = 0; j < 2; j++) {
    v = cJSON_GetObjectItemCaseSensitive(g, NAMES[j]);
    AT(NAMES[j]);
    if (!cJSON_IsString(v)) return bad(msg, cap, path, at, "must be a string");
    if (!name_ok(v->valuestring))
      return bad(msg, cap, path, at,
                 "must be 1 to 40 characters of letters, digits, '-', '_' or '.'");
    snprintf(j ? s->instance_type : s->zone, SIM_NAME_MAX + 1, "%s", v->valuestring);
  }
  static const struct { const char *key; double lo, hi; size_t off; } U[] = {
      {"count", 1, 1000, offsetof(sim_group, count)},
      {"kv_blocks", 16, 100000000, offsetof(sim_group, kv_blocks)},
      {"max_batch", 1, 4096, offsetof(sim_group, max_batch)}};
  for (size_t j = 0; j < 3; j++) {
    AT(U[j].key);
    int rc = get_uint(cJSON_GetObjectItemCaseSensitive(g, U[j].key), U[j].lo, U[j].hi,
                      (uint32_t *)(void *)((char *)s + U[j].off));
    if (rc == -1) return bad(msg, cap, path, at, "must be a number");
    if (rc) {
      char why[80];
      snprintf(why, sizeof why, "must be an integer from %.0f to %.0f", U[j].lo, U[j].hi);
      return bad(msg, cap, path, at, why);
    }
  }
  static const struct { const char *key; double hi; size_t off; } D[] = {
      {"usd_per_hour", 1e4, offsetof(sim_group, usd_h)},
      {"prefill_tokens_per_s", 1e9, offsetof(sim_group, prefill_tps)},
      {"decode_tokens_per_s", 1e7, offsetof(sim_group, decode_tps)},
      {"on_demand_usd_per_hour", 1e4, offsetof(sim_group, od_usd_h)}};
  for (size_t j = 0; j < 4; j++) {
    v = cJSON_GetObjectItemCaseSensitive(g, D[j].key);
    if (!v) continue; /* only the optional one can be absent here */
    AT(D[j].key);
    int rc = get_pos(v, D[j].hi, (double *)(void *)((char *)s + D[j].off));
    if (rc == -1) return bad(msg, cap, path, at, "must be a number");
    if (rc) {
      char why[80];
      snprintf(why, sizeof why, "must be above 0 and at most %g", D[j].hi);
      return bad(msg, cap, path, at, why);
    }
  }
  v = cJSON_GetObjectItemCaseSensitive(g, "cloud");
  snprintf(s->cloud, sizeof s->cloud, "aws");
  if (v) {
    AT("cloud");
    if (!cJSON_IsString(v)) return bad(msg, cap, path, at, "must be a string");
    if (strcmp(v->valuestring, "aws") && strcmp(v->valuestring, "gcp") &&
        strcmp(v->valuestring, "azure"))
      return bad(msg, cap, path, at, "must be \"aws\", \"gcp\" or \"azure\"");
    if (s->pool != SPI_POOL_SPOT) return bad(msg, cap, path, at, "only for spot groups");
    snprintf(s->cloud, sizeof s->cloud, "%s", v->valuestring);
  }
  if (s->pool == SPI_POOL_ON_DEMAND) {
    if (s->od_usd_h > 0) {
      AT("on_demand_usd_per_hour");
      return bad(msg, cap, path, at, "only for spot groups (usd_per_hour is the price)");
    }
    s->od_usd_h = s->usd_h;
  }
#undef AT
  return 0;
}

int sim_cluster_read(sim_cluster *c, const char *path, char *msg, size_t cap) {
  memset(c, 0, sizeof *c);
  FILE *f = fopen(path, "rb");
  if (!f) return snprintf(msg, cap, "%s: cannot open", path), -1;
  char *buf = NULL;
  size_t len = 0, bcap = 0;
  for (;;) {
    if (len + 4096 > bcap) {
      bcap = bcap ? bcap * 2 : 16384;
      if (bcap > (1u << 24)) {
        free(buf);
        fclose(f);
        return snprintf(msg, cap, "%s: larger than 16 MiB", path), -1;
      }
      char *p = realloc(buf, bcap);
      if (!p) { free(buf); fclose(f); return snprintf(msg, cap, "out of memory"), -1; }
      buf = p;
    }
    size_t n = fread(buf + len, 1, bcap - len, f);
    len += n;
    if (!n) break;
  }
  fclose(f);
  int rc = sim_cluster_parse(c, buf, len, path, msg, cap);
  free(buf);
  return rc;
}

int sim_cluster_parse(sim_cluster *c, const char *buf, size_t len, const char *path, char *msg,
                      size_t cap) {
  memset(c, 0, sizeof *c);
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
  if (root) { /* nothing but white space after the document */
    const char *e = end;
    while (e < buf + len && (*e == ' ' || *e == '\t' || *e == '\n' || *e == '\r')) e++;
    if (e < buf + len) {
      cJSON_Delete(root);
      root = NULL;
    }
  }
  if (!root) {
    snprintf(msg, cap, "%s: malformed JSON at byte %td", path, end ? end - buf : 0);
    return -1;
  }
  int rc = -1;
  if (!cJSON_IsObject(root)) {
    bad(msg, cap, path, "(top level)", "must be an object");
    goto out;
  }
  for (const cJSON *k = root->child; k; k = k->next)
    if (strcmp(k->string, "groups")) {
      char at[64];
      snprintf(at, sizeof at, "%.40s", k->string);
      bad(msg, cap, path, at, "unknown key (only \"groups\")");
      goto out;
    }
  const cJSON *groups = cJSON_GetObjectItemCaseSensitive(root, "groups");
  if (!groups) { bad(msg, cap, path, "groups", "required"); goto out; }
  if (!cJSON_IsArray(groups)) { bad(msg, cap, path, "groups", "must be an array"); goto out; }
  int ng = cJSON_GetArraySize(groups);
  if (ng < 1 || ng > SIM_MAX_GROUPS) {
    bad(msg, cap, path, "groups", "must hold 1 to 64 groups");
    goto out;
  }
  size_t gi = 0;
  int has_od = 0;
  uint64_t kv = 0;
  for (const cJSON *g = groups->child; g; g = g->next, gi++) {
    if (read_group(c, g, gi, path, msg, cap)) goto out;
    sim_group *s = &c->g[gi];
    c->replicas += s->count;
    if (c->replicas > 1000) {
      char at[32];
      snprintf(at, sizeof at, "groups[%zu].count", gi);
      bad(msg, cap, path, at, "the cluster would exceed 1000 replicas");
      goto out;
    }
    kv += (uint64_t)s->count * s->kv_blocks;
    if (kv > SIM_MAX_CLUSTER_KV) {
      char at[32], why[96];
      snprintf(at, sizeof at, "groups[%zu].kv_blocks", gi);
      snprintf(why, sizeof why, "the cluster would exceed %u KV blocks (count x kv_blocks)",
               SIM_MAX_CLUSTER_KV);
      bad(msg, cap, path, at, why);
      goto out;
    }
    has_od |= s->pool == SPI_POOL_ON_DEMAND;
    if (s->pool == SPI_POOL_SPOT) {
      size_t z = 0;
      while (z < c->nzones && strcmp(c->zones[z], s->zone)) z++;
      if (z == c->nzones) {
        if (z == SIM_MAX_ZONES) {
          char at[32];
          snprintf(at, sizeof at, "groups[%zu].zone", gi);
          bad(msg, cap, path, at, "more than 8 distinct spot zones");
          goto out;
        }
        snprintf(c->zones[z], sizeof c->zones[z], "%s", s->zone);
        snprintf(c->zone_cloud[z], sizeof c->zone_cloud[z], "%s", s->cloud);
        c->nzones++;
      } else if (strcmp(c->zone_cloud[z], s->cloud) != 0) {
        /* One zone has one cloud: its notices and their lead time. */
        char at[32];
        snprintf(at, sizeof at, "groups[%zu].cloud", gi);
        bad(msg, cap, path, at, "differs from an earlier group of the same zone");
        goto out;
      }
      s->zone_index = (int32_t)z;
    }
  }
  c->n = gi;
  /* A spot-only cluster is allowed: its spot groups then carry their
   * on-demand price themselves (checked below). */
  (void)has_od;
  /* A spot group's on-demand price defaults to that of an on-demand group
   * of the same instance type. */
  for (size_t i = 0; i < c->n; i++) {
    sim_group *s = &c->g[i];
    if (s->pool != SPI_POOL_SPOT || s->od_usd_h > 0) continue;
    for (size_t j = 0; j < c->n && !(s->od_usd_h > 0); j++)
      if (c->g[j].pool == SPI_POOL_ON_DEMAND &&
          !strcmp(c->g[j].instance_type, s->instance_type))
        s->od_usd_h = c->g[j].usd_h;
    if (!(s->od_usd_h > 0)) {
      char at[64];
      snprintf(at, sizeof at, "groups[%zu].on_demand_usd_per_hour", i);
      bad(msg, cap, path, at,
          "required: no on_demand group has this instance_type");
      goto out;
    }
  }
  rc = 0;
out:
  cJSON_Delete(root);
  return rc;
}
