#define _GNU_SOURCE /* memmem */
/*
 * classifier.c - the built-in "reference" classifier.
 *
 * Decides gold / silver / bronze, replayability, a degrade plan for a
 * pressure level, and a small/large model tier for cascade routing.
 * Precedence: an explicit class, then the request's priority (through the
 * engine's priority_map), then the ordered rules (first match wins), then
 * default_class. The default rules reproduce the reference architecture:
 * interactive traffic within a 2.5 s SLA is gold (on-demand first),
 * retry-tolerant traffic is silver (spot first), batch / background traffic
 * is bronze (spot only).
 *
 * Classification reads only the immutable instance and the request view: no
 * allocation, no lock, safe from any number of threads.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <cjson/cJSON.h>

#include "routing.h" /* spi__classifier_plan_at */

#define MAX_RULES 64
#define MAX_KEYWORDS 64
#define MAX_KEYWORD_BYTES 64
#define MAX_TOTAL_TENANT_TIERS 256
#define MAX_META_KEYS 8            /* a rule's when.metadata */
#define MAX_META_VALUES 32         /* ... one key's list */
#define MAX_TOTAL_META_KEYS 128    /* across all rules */
#define MAX_TOTAL_META_VALUES 256
#define META_KEY_MAX 64            /* bytes of a rule's metadata key */
#define META_VALUE_MAX 128
#define RULE_NAME_MAX 40

enum { ANY = -1 };

/* What a classification says it matched: "rule <name>", "rule #<i>" or
 * "default class <class>", made once at configure time in the calloc'd
 * instance and copied whole on every route (no printf, no strlen on that
 * path). */
#define REASON_MAX (RULE_NAME_MAX + 8)

typedef struct rule {
  char name[RULE_NAME_MAX];
  char reason[REASON_MAX]; /* NUL, then zeros to its end */
  int32_t klass;
  int32_t replayable; /* ANY = class default */
  int32_t stream, replayable_is, has_sla, has_tools; /* ANY = don't care */
  int64_t sla_max, sla_min, prio_min, prio_max, eot_min, eot_max;
  uint8_t have_sla_max, have_sla_min, have_prio_min, have_prio_max,
      have_eot_min, have_eot_max;
  uint8_t have_range; /* any of the six above (rule_needs) */
  uint32_t tier_mask; /* bit per enum spi_service_tier; 0 = don't care */
  uint32_t tenant_first, tenant_count; /* into inst->tenant_tiers */
  uint32_t meta_first, meta_count;     /* into inst->meta_keys */
  /* The yes/no tests above as what a request's facts (facts_of) must be
   * where need_mask is set: need_want (rule_needs). */
  uint32_t need_mask, need_want;
} rule;

typedef struct plan {
  int64_t max_output_tokens;
  int32_t tools, defer;
} plan;

typedef struct keyword {
  char text[MAX_KEYWORD_BYTES]; /* lowercase, not NUL-terminated */
  size_t len;
} keyword;

typedef struct tenant_tier {
  char text[64];
  size_t len;
} tenant_tier;

/* One key of a rule's when.metadata and the values it may have. */
typedef struct meta_key {
  char text[META_KEY_MAX]; /* not NUL-terminated */
  size_t len;
  uint32_t value_first, value_count; /* into inst->meta_values */
} meta_key;

typedef struct meta_value {
  char text[META_VALUE_MAX]; /* not NUL-terminated */
  size_t len;
} meta_value;

typedef struct instance {
  int32_t honor_explicit, honor_priority, default_class;
  char default_reason[REASON_MAX]; /* as a rule's reason */
  int32_t replayable_default[4];
  plan degrade[4][4]; /* [class][pressure] */
  rule rules[MAX_RULES];
  size_t nrules;
  /* The first rule a request's facts leave possible (rule_possible), by
   * its facts and whether it gives a service tier (bit 7): the rules
   * before it cannot match, so classification starts there. A rule that
   * tests the tier counts as possible whenever a tier is given. */
  uint8_t first_rule[256];
  tenant_tier tenant_tiers[MAX_TOTAL_TENANT_TIERS];
  size_t ntenant_tiers;
  meta_key meta_keys[MAX_TOTAL_META_KEYS];
  size_t nmeta_keys;
  meta_value meta_values[MAX_TOTAL_META_VALUES];
  size_t nmeta_values;
  int32_t cascade_enabled;
  int64_t scan_bytes, long_query_bytes, question_marks;
  double length_weight, keyword_weight, question_weight, large_threshold;
  keyword keywords[MAX_KEYWORDS];
  size_t nkeywords;
} instance;

static const char *const CLASSES[] = {"gold", "silver", "bronze"};
static const char *const TIERS[] = {"auto", "default", "flex", "priority",
                                    "scale"};

typedef struct parse_ctx {
  instance *in;
  char *err;
  size_t errcap;
} parse_ctx;

/* A list option's array: the given one, or the table default parsed. */
static int get_list(const cJSON *obj, const char *key, const char *table_path,
                    const char *shown, cJSON **owned, const cJSON **out,
                    parse_ctx *c) {
  const cJSON *it = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
  *owned = NULL;
  if (!it || cJSON_IsNull(it)) {
    const spi_optdesc *d = spi__opt_find(table_path);
    *owned = spi__cjson_parse(d->default_json, strlen(d->default_json), NULL);
    if (!*owned) {
      spi__errf(c->err, c->errcap, "%s: out of memory", shown);
      return SPI_ENOMEM;
    }
    it = *owned;
  }
  if (!cJSON_IsArray(it)) {
    spi__errf(c->err, c->errcap, "%s: must be an array", shown);
    return SPI_ETYPE;
  }
  const spi_optdesc *d = spi__opt_find(table_path);
  int n = cJSON_GetArraySize(it);
  if (n < d->min_value || n > d->max_value) {
    spi__errf(c->err, c->errcap, "%s: must have %g..%g entries, got %d", shown,
              d->min_value, d->max_value, n);
    return SPI_ERANGE;
  }
  *out = it;
  return SPI_OK;
}

static int opt_int(const cJSON *o, const char *path, const char *shown,
                   int64_t *v, uint8_t *have, parse_ctx *c) {
  const char *key = strrchr(path, '.') + 1;
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
  *have = it && !cJSON_IsNull(it);
  return *have ? spi__cfg_int(o, path, shown, v, c->err, c->errcap) : SPI_OK;
}

static int opt_bool(const cJSON *o, const char *path, const char *shown,
                    int32_t *v, parse_ctx *c) {
  int32_t b = ANY;
  int rc = spi__cfg_bool(o, path, shown, &b, c->err, c->errcap);
  *v = b;
  return rc;
}

/* One key's list of a when.metadata (shown: its path). */
static int parse_meta_values(const cJSON *list, const char *shown, meta_key *k,
                             parse_ctx *c) {
  int n = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : -1;
  if (n < 1 || n > MAX_META_VALUES) {
    spi__errf(c->err, c->errcap, "%s: must be a list of 1..%d strings", shown,
              MAX_META_VALUES);
    return n < 0 ? SPI_ETYPE : SPI_ERANGE;
  }
  k->value_first = (uint32_t)c->in->nmeta_values;
  int i = 0;
  for (const cJSON *t = list->child; t; t = t->next, i++) {
    size_t len = cJSON_IsString(t) ? strlen(t->valuestring) : 0;
    if (!cJSON_IsString(t) || len > META_VALUE_MAX) {
      spi__errf(c->err, c->errcap, "%s[%d]: must be a string of at most %d bytes",
                shown, i, META_VALUE_MAX);
      return cJSON_IsString(t) ? SPI_ERANGE : SPI_ETYPE;
    }
    if (c->in->nmeta_values == MAX_TOTAL_META_VALUES) {
      spi__errf(c->err, c->errcap,
                "%s[%d]: more than %d metadata values across all rules", shown,
                i, MAX_TOTAL_META_VALUES);
      return SPI_ERANGE;
    }
    meta_value *dst = &c->in->meta_values[c->in->nmeta_values++];
    memcpy(dst->text, t->valuestring, len);
    dst->len = len;
  }
  k->value_count = (uint32_t)i;
  return SPI_OK;
}

/* when.metadata: {key: [values]}, each key's list kept in the instance. */
static int parse_meta_when(const cJSON *m, const char *shown, rule *r,
                           parse_ctx *c) {
  char sub[SPI_ERRMSG_CAP];
  snprintf(sub, sizeof sub, "%s.metadata", shown);
  if (!cJSON_IsObject(m)) {
    spi__errf(c->err, c->errcap, "%s: must be an object", sub);
    return SPI_ETYPE;
  }
  if (cJSON_GetArraySize(m) > MAX_META_KEYS) {
    spi__errf(c->err, c->errcap, "%s: at most %d keys", sub, MAX_META_KEYS);
    return SPI_ERANGE;
  }
  r->meta_first = (uint32_t)c->in->nmeta_keys;
  for (const cJSON *e = m->child; e; e = e->next) {
    const char *key = e->string ? e->string : "";
    size_t klen = strlen(key);
    char el[SPI_ERRMSG_CAP];
    spi__errf(el, sizeof el, "%s.%.*s", sub, SPI_CUT(key, 64));
    if (klen == 0 || klen > META_KEY_MAX) {
      spi__errf(c->err, c->errcap, "%s: a key is 1..%d bytes", el, META_KEY_MAX);
      return SPI_ERANGE;
    }
    for (const cJSON *o = m->child; o != e; o = o->next)
      if (strcmp(o->string, key) == 0) {
        spi__errf(c->err, c->errcap, "%s: duplicate key", el);
        return SPI_EPARSE;
      }
    if (c->in->nmeta_keys == MAX_TOTAL_META_KEYS) {
      spi__errf(c->err, c->errcap, "%s: more than %d metadata keys across all "
                "rules", el, MAX_TOTAL_META_KEYS);
      return SPI_ERANGE;
    }
    meta_key *k = &c->in->meta_keys[c->in->nmeta_keys++];
    memcpy(k->text, key, klen);
    k->len = klen;
    int rc = parse_meta_values(e, el, k, c);
    if (rc) return rc;
    r->meta_count++;
  }
  return SPI_OK;
}

static int parse_when(const cJSON *w, const char *shown, rule *r,
                      parse_ctx *c) {
  const char *P = "classifier.rules[].when";
  int rc = spi__cfg_check_keys(w, P, shown, c->err, c->errcap);
  if (rc) return rc;
  if ((rc = opt_bool(w, "classifier.rules[].when.stream", shown, &r->stream, c)) ||
      (rc = opt_bool(w, "classifier.rules[].when.replayable", shown,
                     &r->replayable_is, c)) ||
      (rc = opt_bool(w, "classifier.rules[].when.has_sla", shown, &r->has_sla, c)) ||
      (rc = opt_bool(w, "classifier.rules[].when.has_tools", shown, &r->has_tools, c)) ||
      (rc = opt_int(w, "classifier.rules[].when.sla_ms_max", shown, &r->sla_max,
                    &r->have_sla_max, c)) ||
      (rc = opt_int(w, "classifier.rules[].when.sla_ms_min", shown, &r->sla_min,
                    &r->have_sla_min, c)) ||
      (rc = opt_int(w, "classifier.rules[].when.priority_min", shown,
                    &r->prio_min, &r->have_prio_min, c)) ||
      (rc = opt_int(w, "classifier.rules[].when.priority_max", shown,
                    &r->prio_max, &r->have_prio_max, c)) ||
      (rc = opt_int(w, "classifier.rules[].when.expected_output_tokens_min",
                    shown, &r->eot_min, &r->have_eot_min, c)) ||
      (rc = opt_int(w, "classifier.rules[].when.expected_output_tokens_max",
                    shown, &r->eot_max, &r->have_eot_max, c)))
    return rc;
  char sub[SPI_ERRMSG_CAP];
  const cJSON *tiers = cJSON_GetObjectItemCaseSensitive(w, "service_tier");
  if (tiers && !cJSON_IsNull(tiers)) {
    snprintf(sub, sizeof sub, "%s.service_tier", shown);
    cJSON *owned = NULL;
    const cJSON *arr;
    if ((rc = get_list(w, "service_tier", "classifier.rules[].when.service_tier",
                       sub, &owned, &arr, c)))
      return rc;
    int i = 0;
    for (const cJSON *t = arr->child; t; t = t->next, i++) {
      char el[sizeof sub + 16]; /* sub, "[", an int, "]" */
      snprintf(el, sizeof el, "%s[%d]", sub, i);
      if (!cJSON_IsString(t)) {
        spi__errf(c->err, c->errcap, "%s: must be a string", el);
        return SPI_ETYPE;
      }
      int found = -1;
      for (int k = 0; k < 5; k++)
        if (strcmp(t->valuestring, TIERS[k]) == 0) found = k;
      if (found < 0) {
        spi__errf(c->err, c->errcap,
                  "%s: unknown value \"%.*s\" (expected "
                  "auto|default|flex|priority|scale)",
                  el, SPI_CUT(t->valuestring, 32));
        return SPI_EUNKNOWN;
      }
      r->tier_mask |= 1u << (found + SPI_SERVICE_TIER_AUTO);
    }
  }
  const cJSON *tt = cJSON_GetObjectItemCaseSensitive(w, "tenant_tier");
  if (tt && !cJSON_IsNull(tt)) {
    snprintf(sub, sizeof sub, "%s.tenant_tier", shown);
    cJSON *owned = NULL;
    const cJSON *arr;
    if ((rc = get_list(w, "tenant_tier", "classifier.rules[].when.tenant_tier",
                       sub, &owned, &arr, c)))
      return rc;
    r->tenant_first = (uint32_t)c->in->ntenant_tiers;
    int i = 0;
    for (const cJSON *t = arr->child; t; t = t->next, i++) {
      size_t len = cJSON_IsString(t) ? strlen(t->valuestring) : 0;
      if (!cJSON_IsString(t) || len == 0 || len >= 64) {
        spi__errf(c->err, c->errcap, "%s[%d]: must be a string of 1..63 bytes",
                  sub, i);
        return SPI_ETYPE;
      }
      if (c->in->ntenant_tiers == MAX_TOTAL_TENANT_TIERS) {
        spi__errf(c->err, c->errcap,
                  "%s[%d]: more than %d tenant tiers across all rules", sub, i,
                  MAX_TOTAL_TENANT_TIERS);
        return SPI_ERANGE;
      }
      tenant_tier *dst = &c->in->tenant_tiers[c->in->ntenant_tiers++];
      memcpy(dst->text, t->valuestring, len + 1);
      dst->len = len;
    }
    r->tenant_count = (uint32_t)i;
  }
  const cJSON *md = cJSON_GetObjectItemCaseSensitive(w, "metadata");
  if (md && !cJSON_IsNull(md) && (rc = parse_meta_when(md, shown, r, c)))
    return rc;
  return SPI_OK;
}

/* A request's yes/no facts that rules test, a bit each (facts_of), in
 * the order the view holds them. */
enum {
  FACT_PRIO = 1u << 0,
  FACT_STREAM = 1u << 1,
  FACT_SLA = 1u << 2,
  FACT_REPLAY = 1u << 3,
  FACT_REPLAY_SET = 1u << 4,
  FACT_EOT = 1u << 5,
  FACT_TOOLS = 1u << 6,
  FACT_NEVER = 1u << 7 /* in need_want only: a rule no request matches */
};

/* Require fact bit b to be yes (want 1) or no (want 0); asking both makes
 * the rule one no request matches. */
static void need(rule *r, uint32_t b, int want) {
  uint32_t w = want ? b : 0;
  if ((r->need_mask & b) && (r->need_want & b) != w) r->need_want |= FACT_NEVER;
  r->need_mask |= b;
  r->need_want = (r->need_want & ~b) | w;
}

/* The facts a rule tests of a request, as one mask and value, so the
 * rules a request's facts rule out cost one compare each (ref_classify,
 * rule_possible); rule_matches tests the rest of a rule that passes. */
static void rule_needs(rule *r) {
  r->need_mask = r->need_want = 0;
  if (r->stream != ANY) need(r, FACT_STREAM, r->stream);
  if (r->replayable_is != ANY) {
    need(r, FACT_REPLAY_SET, 1);
    need(r, FACT_REPLAY, r->replayable_is);
  }
  if (r->has_sla != ANY) need(r, FACT_SLA, r->has_sla);
  if (r->has_tools != ANY) need(r, FACT_TOOLS, r->has_tools);
  if (r->have_sla_max || r->have_sla_min) need(r, FACT_SLA, 1);
  if (r->have_prio_min || r->have_prio_max) need(r, FACT_PRIO, 1);
  if (r->have_eot_min || r->have_eot_max) need(r, FACT_EOT, 1);
  r->have_range = r->have_sla_max || r->have_sla_min || r->have_prio_min ||
                  r->have_prio_max || r->have_eot_min || r->have_eot_max;
}

static int parse_rule(const cJSON *o, int idx, rule *r, parse_ctx *c) {
  char shown[64];
  snprintf(shown, sizeof shown, "classifier.rules[%d]", idx);
  int rc = spi__cfg_check_keys(o, "classifier.rules[]", shown, c->err, c->errcap);
  if (rc) return rc;
  memset(r, 0, sizeof *r);
  r->stream = r->replayable_is = r->has_sla = r->has_tools = ANY;
  const char *name = "";
  size_t nlen = 0;
  if ((rc = spi__cfg_string(o, "classifier.rules[].name", shown, &name, &nlen,
                            c->err, c->errcap)))
    return rc;
  if (nlen >= RULE_NAME_MAX) {
    spi__errf(c->err, c->errcap, "%s.name: at most %d bytes", shown,
              RULE_NAME_MAX - 1);
    return SPI_ERANGE;
  }
  memcpy(r->name, name, nlen);
  if (nlen)
    spi__join(r->reason, sizeof r->reason, "rule ", NULL, r->name);
  else
    snprintf(r->reason, sizeof r->reason, "rule #%d", idx);
  const cJSON *cls_item = cJSON_GetObjectItemCaseSensitive(o, "class");
  if (!cls_item || cJSON_IsNull(cls_item)) {
    spi__errf(c->err, c->errcap, "%s.class: missing", shown);
    return SPI_EMISSING;
  }
  int32_t k = 0;
  if ((rc = spi__cfg_enum(o, "classifier.rules[].class", shown, CLASSES, 3, &k,
                          c->err, c->errcap)))
    return rc;
  r->klass = k + SPI_CLASS_GOLD;
  if ((rc = opt_bool(o, "classifier.rules[].replayable", shown, &r->replayable,
                     c)))
    return rc;
  const cJSON *w = cJSON_GetObjectItemCaseSensitive(o, "when");
  if (w && !cJSON_IsNull(w)) {
    char ws[80];
    snprintf(ws, sizeof ws, "%s.when", shown);
    if ((rc = parse_when(w, ws, r, c))) return rc;
  }
  rule_needs(r);
  return SPI_OK;
}

/* instance.first_rule, once the rules are read. */
static void index_rules(instance *in) {
  _Static_assert(MAX_RULES < 256, "a rule index fits a byte");
  for (uint32_t key = 0; key < 256; key++) {
    uint32_t facts = key & 0x7f, tier = key >> 7;
    size_t i = 0;
    while (i < in->nrules &&
           !((facts & in->rules[i].need_mask) == in->rules[i].need_want &&
             (!in->rules[i].tier_mask || tier)))
      i++;
    in->first_rule[key] = (uint8_t)i;
  }
}

static int parse_rules(const cJSON *sec, parse_ctx *c) {
  cJSON *owned = NULL;
  const cJSON *arr;
  int rc = get_list(sec, "rules", "classifier.rules", "classifier.rules",
                    &owned, &arr, c);
  if (rc) return rc;
  int i = 0;
  for (const cJSON *o = arr->child; o && rc == SPI_OK; o = o->next, i++)
    rc = parse_rule(o, i, &c->in->rules[i], c);
  c->in->nrules = (size_t)i;
  cJSON_Delete(owned);
  if (rc == SPI_OK) index_rules(c->in);
  return rc;
}

static int parse_degrade(const cJSON *sec, parse_ctx *c) {
  const cJSON *d = cJSON_GetObjectItemCaseSensitive(sec, "degrade");
  int rc;
  if (d && !cJSON_IsNull(d) &&
      (rc = spi__cfg_check_keys(d, "classifier.degrade", "classifier.degrade",
                                c->err, c->errcap)))
    return rc;
  for (int k = 0; k < 3; k++) {
    /* Each sized for what is written into it: path, then an index or a
     * key after it. */
    char path[64], shown[sizeof path + 16];
    snprintf(path, sizeof path, "classifier.degrade.%s", CLASSES[k]);
    cJSON *owned = NULL;
    const cJSON *arr;
    if ((rc = get_list(d, CLASSES[k], path, path, &owned, &arr, c))) return rc;
    int lvl = 0;
    char el_prefix[sizeof path + 2];
    snprintf(el_prefix, sizeof el_prefix, "%s[]", path);
    for (const cJSON *o = arr->child; o && rc == SPI_OK; o = o->next, lvl++) {
      snprintf(shown, sizeof shown, "%s[%d]", path, lvl);
      char p1[sizeof el_prefix + 32], p2[sizeof p1], p3[sizeof p1];
      snprintf(p1, sizeof p1, "%s.max_output_tokens", el_prefix);
      snprintf(p2, sizeof p2, "%s.tools", el_prefix);
      snprintf(p3, sizeof p3, "%s.defer", el_prefix);
      plan *pl = &c->in->degrade[k + 1][lvl];
      rc = spi__cfg_check_keys(o, el_prefix, shown, c->err, c->errcap);
      if (!rc) rc = spi__cfg_int(o, p1, shown, &pl->max_output_tokens, c->err, c->errcap);
      if (!rc) rc = spi__cfg_bool(o, p2, shown, &pl->tools, c->err, c->errcap);
      if (!rc) rc = spi__cfg_bool(o, p3, shown, &pl->defer, c->err, c->errcap);
    }
    cJSON_Delete(owned);
    if (rc) return rc;
  }
  return SPI_OK;
}

static int parse_cascade(const cJSON *sec, parse_ctx *c) {
  const cJSON *o = cJSON_GetObjectItemCaseSensitive(sec, "cascade");
  const char *S = "classifier.cascade";
  instance *in = c->in;
  int rc = SPI_OK;
  if (o && !cJSON_IsNull(o) &&
      (rc = spi__cfg_check_keys(o, S, S, c->err, c->errcap)))
    return rc;
  if ((rc = spi__cfg_bool(o, "classifier.cascade.enabled", S,
                          &in->cascade_enabled, c->err, c->errcap)) ||
      (rc = spi__cfg_int(o, "classifier.cascade.scan_bytes", S,
                         &in->scan_bytes, c->err, c->errcap)) ||
      (rc = spi__cfg_int(o, "classifier.cascade.long_query_bytes", S,
                         &in->long_query_bytes, c->err, c->errcap)) ||
      (rc = spi__cfg_int(o, "classifier.cascade.question_marks", S,
                         &in->question_marks, c->err, c->errcap)) ||
      (rc = spi__cfg_double(o, "classifier.cascade.length_weight", S,
                            &in->length_weight, c->err, c->errcap)) ||
      (rc = spi__cfg_double(o, "classifier.cascade.keyword_weight", S,
                            &in->keyword_weight, c->err, c->errcap)) ||
      (rc = spi__cfg_double(o, "classifier.cascade.question_weight", S,
                            &in->question_weight, c->err, c->errcap)) ||
      (rc = spi__cfg_double(o, "classifier.cascade.large_threshold", S,
                            &in->large_threshold, c->err, c->errcap)))
    return rc;
  cJSON *owned = NULL;
  const cJSON *arr;
  if ((rc = get_list(o, "keywords", "classifier.cascade.keywords",
                     "classifier.cascade.keywords", &owned, &arr, c)))
    return rc;
  int i = 0;
  for (const cJSON *k = arr->child; k; k = k->next, i++) {
    size_t len = cJSON_IsString(k) ? strlen(k->valuestring) : 0;
    if (!cJSON_IsString(k) || len == 0 || len > MAX_KEYWORD_BYTES) {
      spi__errf(c->err, c->errcap,
                "classifier.cascade.keywords[%d]: must be a string of 1..%d "
                "bytes",
                i, MAX_KEYWORD_BYTES);
      cJSON_Delete(owned);
      return SPI_ETYPE;
    }
    keyword *kw = &in->keywords[i];
    for (size_t j = 0; j < len; j++) {
      char ch = k->valuestring[j];
      kw->text[j] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    kw->len = len;
  }
  in->nkeywords = (size_t)i;
  cJSON_Delete(owned);
  return SPI_OK;
}

static int parse_section(const cJSON *sec, parse_ctx *c) {
  const char *S = "classifier";
  instance *in = c->in;
  int rc = spi__cfg_check_keys(sec, S, S, c->err, c->errcap);
  if (rc) return rc;
  int32_t dc = 1;
  if ((rc = spi__cfg_bool(sec, "classifier.honor_explicit_class", S,
                          &in->honor_explicit, c->err, c->errcap)) ||
      (rc = spi__cfg_bool(sec, "classifier.honor_priority", S,
                          &in->honor_priority, c->err, c->errcap)) ||
      (rc = spi__cfg_enum(sec, "classifier.default_class", S, CLASSES, 3, &dc,
                          c->err, c->errcap)))
    return rc;
  in->default_class = dc + SPI_CLASS_GOLD;
  spi__join(in->default_reason, sizeof in->default_reason, "default class ",
            NULL, spi_class_name(in->default_class));
  const cJSON *rd = cJSON_GetObjectItemCaseSensitive(sec, "replayable_default");
  const char *R = "classifier.replayable_default";
  if (rd && !cJSON_IsNull(rd) &&
      (rc = spi__cfg_check_keys(rd, R, R, c->err, c->errcap)))
    return rc;
  for (int k = 0; k < 3; k++) {
    char path[64];
    snprintf(path, sizeof path, "%s.%s", R, CLASSES[k]);
    if ((rc = spi__cfg_bool(rd, path, R, &in->replayable_default[k + 1], c->err,
                            c->errcap)))
      return rc;
  }
  if ((rc = parse_rules(sec, c)) || (rc = parse_degrade(sec, c)) ||
      (rc = parse_cascade(sec, c)))
    return rc;
  return SPI_OK;
}

static int ref_configure(void *state, const char *json, size_t len,
                         void **out_instance, char *err, size_t errcap) {
  const spi_mem *mem = state;
  cJSON *sec = NULL;
  int rc = spi__json_parse_object(json, len, SIZE_MAX, "classifier", &sec, err,
                                  errcap);
  if (rc) return rc;
  instance *in = spi__calloc(mem, 1, sizeof *in);
  if (!in) {
    cJSON_Delete(sec);
    spi__errf(err, errcap, "classifier: out of memory");
    return SPI_ENOMEM;
  }
  parse_ctx c = {in, err, errcap};
  rc = parse_section(sec, &c);
  cJSON_Delete(sec);
  if (rc) {
    spi__free(mem, in);
    return rc;
  }
  *out_instance = in;
  return SPI_OK;
}

static void ref_release(void *state, void *inst) {
  spi__free((const spi_mem *)state, inst);
}

/* ---------------------------------------------------------------- verdict */

/* The request's metadata pairs, split once per classification, and only
 * when a rule tests metadata: each rule key is then looked up among them
 * by length first, so a classification compares at most the rules' keys
 * times the pairs, never scanning the pairs' bytes again for each key. */
#define META_PAIRS_MAX 256 /* limits.max_metadata_pairs' bound (options.c) */
typedef struct meta_pair {
  const char *k, *v;
  size_t klen, vlen;
} meta_pair;
typedef struct meta_pairs {
  int ready;
  size_t n;
  meta_pair p[META_PAIRS_MAX];
} meta_pairs;

static void meta_split(const spi_request_view *v, meta_pairs *mp) {
  mp->ready = 1;
  mp->n = 0;
  if (!v->metadata_count) return;
  const char *p = v->metadata, *end = v->metadata + v->metadata_len;
  for (size_t i = 0; i < v->metadata_count && mp->n < META_PAIRS_MAX; i++) {
    const char *kz = memchr(p, 0, (size_t)(end - p));
    const char *vz = kz ? memchr(kz + 1, 0, (size_t)(end - kz - 1)) : NULL;
    if (!vz) break; /* the library writes both NULs: cannot happen */
    meta_pair *o = &mp->p[mp->n++];
    o->k = p;
    o->klen = (size_t)(kz - p);
    o->v = kz + 1;
    o->vlen = (size_t)(vz - kz - 1);
    p = vz + 1;
  }
}

/* Whether the request's metadata has key k with one of its values: the
 * last pair with the key counts, as a later pair overrides an earlier one
 * for the attributes too. */
static int meta_matches(const instance *in, const meta_key *k,
                        const spi_request_view *v, meta_pairs *mp) {
  if (!mp->ready) meta_split(v, mp);
  const meta_pair *hit = NULL;
  for (size_t i = mp->n; i-- > 0 && !hit;)
    if (mp->p[i].klen == k->len && memcmp(mp->p[i].k, k->text, k->len) == 0)
      hit = &mp->p[i];
  if (!hit) return 0;
  for (uint32_t i = 0; i < k->value_count; i++) {
    const meta_value *m = &in->meta_values[k->value_first + i];
    if (m->len == hit->vlen && memcmp(m->text, hit->v, hit->vlen) == 0)
      return 1;
  }
  return 0;
}

/* Whether v's tenant tier and metadata are among rule r's. Out of line:
 * a rule without such lists (the built-in's defaults) keeps the rule
 * scan free of the registers these loops and their calls take. */
static __attribute__((noinline)) int lists_match(const instance *in,
                                                 const rule *r,
                                                 const spi_request_view *v,
                                                 meta_pairs *mp) {
  if (r->tenant_count) {
    int hit = 0;
    for (uint32_t i = 0; i < r->tenant_count && !hit; i++) {
      const tenant_tier *t = &in->tenant_tiers[r->tenant_first + i];
      hit = t->len == v->tenant_tier_len &&
            memcmp(t->text, v->tenant_tier, t->len) == 0;
    }
    if (!hit) return 0;
  }
  for (uint32_t i = 0; i < r->meta_count; i++)
    if (!meta_matches(in, &in->meta_keys[r->meta_first + i], v, mp)) return 0;
  return 1;
}

/* Whether v is within rule r's ranges (SLA, priority, expected output). */
static inline int in_ranges(const rule *r, const spi_request_view *v) {
  if (r->have_sla_max && v->sla_ms > r->sla_max) return 0;
  if (r->have_sla_min && v->sla_ms < r->sla_min) return 0;
  if (r->have_prio_min && v->priority < r->prio_min) return 0;
  if (r->have_prio_max && v->priority > r->prio_max) return 0;
  if (r->have_eot_min && v->expected_output_tokens < r->eot_min) return 0;
  if (r->have_eot_max && v->expected_output_tokens > r->eot_max) return 0;
  return 1;
}

/* Whether rule r matches v, once rule_possible has passed it: that
 * settled its yes/no conditions (stream, replayable, SLA, tools), that
 * each value a range tests is set, and the service tier (rule_needs makes
 * need_mask of exactly those), so only the ranges, the tenant tiers and
 * the metadata are left to test. */
static int rule_matches(const instance *in, const rule *r,
                        const spi_request_view *v, meta_pairs *mp) {
  if (r->have_range && !in_ranges(r, v)) return 0;
  return (r->tenant_count | r->meta_count) == 0 || lists_match(in, r, v, mp);
}

/* The facts of v that rule_needs describes. */
#if defined(__SSE2__)
#define VIEW_AT(f) offsetof(spi_request_view, f)
_Static_assert(VIEW_AT(stream) == VIEW_AT(priority_set) + 4 &&
                   VIEW_AT(replayable) == VIEW_AT(sla_ms_set) + 4 &&
                   VIEW_AT(replayable_set) == VIEW_AT(sla_ms_set) + 8 &&
                   VIEW_AT(expected_output_tokens_set) ==
                       VIEW_AT(expected_output_tokens) + 8 &&
                   VIEW_AT(has_tools) == VIEW_AT(prompt_tokens) + 12 &&
                   VIEW_AT(has_tools) + 4 <= sizeof(spi_request_view),
               "the view's yes/no fields lie in four 16-byte rows");
/* The 32-bit lanes of the 16 bytes at v + off that are 0, a bit each. */
static inline uint32_t zero_lanes(const spi_request_view *v, size_t off) {
  __m128i x = _mm_loadu_si128((const __m128i *)((const char *)v + off));
  return (uint32_t)_mm_movemask_ps(
      _mm_castsi128_ps(_mm_cmpeq_epi32(x, _mm_setzero_si128())));
}
/* Four rows of the view, one compare each: priority_set and stream (lanes
 * 0-1), sla_ms_set, replayable and replayable_set (0-2), the expected
 * output's flag (2) and has_tools (3), each fact's bit its lane's. */
static uint32_t facts_of(const spi_request_view *v) {
  uint32_t zero = (zero_lanes(v, VIEW_AT(priority_set)) & 3) |
                  (zero_lanes(v, VIEW_AT(sla_ms_set)) & 7) << 2 |
                  ((zero_lanes(v, VIEW_AT(expected_output_tokens)) & 4) |
                   (zero_lanes(v, VIEW_AT(prompt_tokens)) & 8))
                      << 3;
  _Static_assert(FACT_PRIO == 1 && FACT_STREAM == 2 && FACT_SLA == 4 &&
                     FACT_REPLAY == 8 && FACT_REPLAY_SET == 16 &&
                     FACT_EOT == 32 && FACT_TOOLS == 64,
                 "each fact's bit is its lane's");
  return ~zero & 0x7Fu;
}
#undef VIEW_AT
#else
static uint32_t facts_of(const spi_request_view *v) {
  return (v->priority_set ? FACT_PRIO : 0) |
         (v->stream != 0 ? FACT_STREAM : 0) | (v->sla_ms_set ? FACT_SLA : 0) |
         (v->replayable != 0 ? FACT_REPLAY : 0) |
         (v->replayable_set ? FACT_REPLAY_SET : 0) |
         (v->expected_output_tokens_set ? FACT_EOT : 0) |
         (v->has_tools ? FACT_TOOLS : 0);
}
#endif

/* Whether v's facts and service tier leave rule r possible: when not,
 * rule_matches refuses it too. */
static int rule_possible(const rule *r, uint32_t facts, uint32_t tier_bit) {
  return (facts & r->need_mask) == r->need_want &&
         (!r->tier_mask || (r->tier_mask & tier_bit));
}

#define SCAN_MAX 8192 /* classifier.cascade.scan_bytes max: a stack buffer */

/*
 * The cascade score of the last user text. Keywords are matched
 * case-insensitively within the first scan_bytes: the window is lowercased
 * once into a stack buffer and searched with memmem, so the cost is a few
 * passes over at most scan_bytes, whatever the prompt's size.
 */
static double complexity(const instance *in, const spi_request_view *v) {
  const char *q = v->last_user_text;
  size_t n = v->last_user_text_len;
  double score = 0;
  if ((int64_t)n > in->long_query_bytes) score += in->length_weight;
  char low[SCAN_MAX];
  size_t w = n < (size_t)in->scan_bytes ? n : (size_t)in->scan_bytes;
  size_t marks = 0;
  for (size_t i = 0; i < w; i++) {
    unsigned char ch = (unsigned char)q[i];
    low[i] = (char)((ch >= 'A' && ch <= 'Z') ? ch + 32 : ch);
    marks += ch == '?';
  }
  for (size_t i = 0; i < in->nkeywords; i++)
    if (memmem(low, w, in->keywords[i].text, in->keywords[i].len))
      score += in->keyword_weight;
  if ((int64_t)marks > in->question_marks) score += in->question_weight;
  return score;
}

static int ref_classify(void *state, void *inst, const spi_request_view *v,
                        int32_t pressure, spi_classification *out) {
  (void)state;
  const instance *in = inst;
  const rule *hit = NULL;
  if (in->honor_explicit && v->explicit_class != SPI_CLASS_UNSET) {
    out->klass = v->explicit_class;
    spi__join(out->reason, sizeof out->reason, "explicit class ", NULL,
              spi_class_name(out->klass));
  } else if (in->honor_priority && v->priority_class != SPI_CLASS_UNSET) {
    out->klass = v->priority_class;
    spi__errf(out->reason, sizeof out->reason, "priority %lld maps to %s",
              (long long)v->priority, spi_class_name(out->klass));
  } else {
    meta_pairs mp; /* split when a rule first tests metadata */
    mp.ready = 0;
    uint32_t facts = facts_of(v);
    uint32_t tier_bit = v->service_tier > 0 && v->service_tier < 32
                            ? 1u << v->service_tier
                            : 0;
    size_t first = in->first_rule[facts | (tier_bit ? 0x80u : 0)];
    for (size_t i = first; i < in->nrules && !hit; i++) {
      if (rule_possible(&in->rules[i], facts, tier_bit) &&
          rule_matches(in, &in->rules[i], v, &mp)) {
        hit = &in->rules[i];
        out->rule_index = (int32_t)i;
      }
    }
    out->klass = hit ? hit->klass : in->default_class;
    /* Made at configure time: classification runs on every route. Its
     * whole array (its NUL, then the zeros of the calloc'd instance) goes
     * in a few fixed moves, fewer instructions than a copy of its length
     * through the C library's memcpy. */
    _Static_assert(REASON_MAX <= sizeof out->reason, "a reason fits");
    memcpy(out->reason, hit ? hit->reason : in->default_reason, REASON_MAX);
  }
  /* The request's own word on replayability wins, then the rule's. */
  if (v->replayable_set)
    out->replayable = v->replayable != 0;
  else if (hit && hit->replayable != ANY)
    out->replayable = hit->replayable;
  else
    out->replayable = in->replayable_default[out->klass];
  const plan *p = &in->degrade[out->klass][pressure];
  out->max_output_tokens = p->max_output_tokens;
  out->tools_allowed = p->tools;
  out->defer = p->defer;
  /* Without cascade routing every request goes to the large (target) model. */
  out->complexity = in->cascade_enabled ? complexity(in, v) : 0;
  out->model_tier = in->cascade_enabled && out->complexity < in->large_threshold
                        ? SPI_TIER_SMALL
                        : SPI_TIER_LARGE;
  return SPI_OK;
}

/* The plan at another pressure for a request this classifier classified:
 * its class, rule and tier do not depend on the pressure, only the plan
 * does, so routing asks for the plan instead of classifying again. */
void spi__classifier_plan_at(const void *inst, int32_t pressure,
                             spi_classification *c) {
  const instance *in = inst;
  const plan *p = &in->degrade[c->klass][pressure];
  c->max_output_tokens = p->max_output_tokens;
  c->tools_allowed = p->tools;
  c->defer = p->defer;
  c->pressure = pressure;
}

void spi__builtin_classifier(spi_classifier_module *out) {
  memset(out, 0, sizeof *out);
  out->abi_version = SPI_MODULE_ABI_VERSION;
  out->struct_size = sizeof *out;
  out->on_failure = SPI_ON_FAILURE_ERROR;
  out->configure = ref_configure;
  out->release = ref_release;
  out->classify = ref_classify;
}
