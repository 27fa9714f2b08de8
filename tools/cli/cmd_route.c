/*
 * cmd_route.c - `spotinfer route`: what the engine decides for one OpenAI
 * request body, given a configuration and a fleet of replicas.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <spotinfer/spotinfer.h>

#include "cli.h"

static const char ROUTE_HELP[] =
    "Usage: spotinfer route [--json] --config FILE --replicas FILE\n"
    "           [--pressure normal|elevated|high|critical] BODY.json|-\n"
    "\n"
    "Route one OpenAI chat or completions body the way a gateway would and\n"
    "print the class (and the classifier's reason), the cache key, the\n"
    "pool, the replica and its fallbacks, the routing reason, the prefix\n"
    "blocks matched, the TTFT estimate, and the price on each pool. A shed\n"
    "or no-capacity outcome is an answer (exit 0, outcome says which).\n"
    "\n"
    "  --config FILE    engine configuration (JSON, as config check reads;\n"
    "                   - for standard input)\n"
    "  --replicas FILE  a JSON array of replicas (or {\"replicas\": [...]}):\n"
    "      {\"id\": \"spot-a\", \"pool\": \"spot\"|\"on_demand\",\n"
    "       \"usd_per_hour\": 1.8, \"max_inflight\": 16,\n"
    "       \"zone\": \"\", \"instance_type\": \"\", \"node\": \"\",\n"
    "       \"models\": \"llama,qwen\" or [\"llama\"], \"model_tier\": "
    "\"large\"|\"small\",\n"
    "       \"decode_tokens_per_s\": 0,\n"
    "       \"load\": {\"running\": 0, \"waiting\": 0, \"kv_usage\": 0}}\n"
    "      id, pool, usd_per_hour and max_inflight are required; a replica\n"
    "      without \"load\" is reported idle.\n"
    "  --pressure P     the pressure the classifier's degrade plan (plan.*)\n"
    "                   is shown for (default normal); the route's own\n"
    "                   max_output_tokens and tools_allowed are at the\n"
    "                   chosen pool's pressure\n";

/* Keys a replica object may have; anything else is an error. */
static const char *const KEYS[] = {
    "id",     "pool",       "usd_per_hour", "max_inflight",
    "zone",   "instance_type", "node",      "models",
    "model_tier", "decode_tokens_per_s", "load", NULL};

static int known_key(const char *k) {
  for (int i = 0; KEYS[i]; i++)
    if (strcmp(KEYS[i], k) == 0) return 1;
  return 0;
}

static const char *opt_str(const cJSON *o, const char *k, int *bad) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  if (!v) return "";
  if (!cJSON_IsString(v)) {
    *bad = 1;
    return "";
  }
  return v->valuestring;
}

/* Fill info from one replica object; 0 or an error in msg. models_buf
 * holds a joined "models" array. */
static int replica_from(const cJSON *r, size_t i, spi_replica_info *info,
                        spi_load *load, char *models_buf, size_t models_cap,
                        char *msg, size_t cap) {
  if (!cJSON_IsObject(r)) {
    snprintf(msg, cap, "replicas[%zu]: not an object", i);
    return -1;
  }
  const cJSON *ch;
  cJSON_ArrayForEach(ch, r) {
    if (!known_key(ch->string)) {
      snprintf(msg, cap, "replicas[%zu].%s: unknown key", i, ch->string);
      return -1;
    }
  }
  int bad = 0;
  const char *id = opt_str(r, "id", &bad);
  const char *pool = opt_str(r, "pool", &bad);
  const cJSON *usd = cJSON_GetObjectItemCaseSensitive(r, "usd_per_hour");
  const cJSON *mi = cJSON_GetObjectItemCaseSensitive(r, "max_inflight");
  const char *need = !*id ? "id" : !*pool ? "pool" : !cJSON_IsNumber(usd)
                                                           ? "usd_per_hour"
                     : !cJSON_IsNumber(mi) ? "max_inflight" : NULL;
  if (bad || need) {
    snprintf(msg, cap, "replicas[%zu].%s: required (%s)", i,
             need ? need : "id", need && (strcmp(need, "usd_per_hour") == 0 ||
                                          strcmp(need, "max_inflight") == 0)
                                     ? "a number"
                                     : "a string");
    return -1;
  }
  if (strcmp(pool, "spot") == 0)
    info->pool = SPI_POOL_SPOT;
  else if (strcmp(pool, "on_demand") == 0)
    info->pool = SPI_POOL_ON_DEMAND;
  else {
    snprintf(msg, cap, "replicas[%zu].pool: '%s' is not spot or on_demand", i,
             pool);
    return -1;
  }
  if (mi->valuedouble < 1 || mi->valuedouble > 4294967295.0 ||
      mi->valuedouble != (double)(uint32_t)mi->valuedouble) {
    snprintf(msg, cap, "replicas[%zu].max_inflight: not an integer >= 1", i);
    return -1;
  }
  info->id = id;
  info->id_len = strlen(id);
  info->usd_per_hour = usd->valuedouble;
  info->max_inflight = (uint32_t)mi->valuedouble;
  info->zone = opt_str(r, "zone", &bad);
  info->instance_type = opt_str(r, "instance_type", &bad);
  info->node = opt_str(r, "node", &bad);
  const char *tier = opt_str(r, "model_tier", &bad);
  if (bad) {
    snprintf(msg, cap, "replicas[%zu]: zone, instance_type, node and "
             "model_tier are strings", i);
    return -1;
  }
  info->zone_len = strlen(info->zone);
  info->instance_type_len = strlen(info->instance_type);
  info->node_len = strlen(info->node);
  if (!*tier || strcmp(tier, "large") == 0)
    info->model_tier = SPI_TIER_LARGE;
  else if (strcmp(tier, "small") == 0)
    info->model_tier = SPI_TIER_SMALL;
  else {
    snprintf(msg, cap, "replicas[%zu].model_tier: '%s' is not large or small",
             i, tier);
    return -1;
  }
  const cJSON *models = cJSON_GetObjectItemCaseSensitive(r, "models");
  models_buf[0] = '\0';
  if (cJSON_IsString(models)) {
    snprintf(models_buf, models_cap, "%s", models->valuestring);
  } else if (cJSON_IsArray(models)) {
    const cJSON *m;
    size_t used = 0;
    cJSON_ArrayForEach(m, models) {
      if (!cJSON_IsString(m)) {
        snprintf(msg, cap, "replicas[%zu].models: names are strings", i);
        return -1;
      }
      int w = snprintf(models_buf + used, models_cap - used, "%s%s",
                       used ? "," : "", m->valuestring);
      if (w < 0 || (size_t)w >= models_cap - used) {
        snprintf(msg, cap, "replicas[%zu].models: too long", i);
        return -1;
      }
      used += (size_t)w;
    }
  } else if (models) {
    snprintf(msg, cap, "replicas[%zu].models: a string or an array", i);
    return -1;
  }
  info->models = models_buf;
  info->models_len = strlen(models_buf);
  const cJSON *dps = cJSON_GetObjectItemCaseSensitive(r, "decode_tokens_per_s");
  if (dps && !cJSON_IsNumber(dps)) {
    snprintf(msg, cap, "replicas[%zu].decode_tokens_per_s: a number", i);
    return -1;
  }
  info->decode_tokens_per_s = dps ? dps->valuedouble : 0;
  const cJSON *l = cJSON_GetObjectItemCaseSensitive(r, "load");
  if (l) {
    static const char *const lk[] = {"running", "waiting", "kv_usage"};
    double *dst[] = {&load->running, &load->waiting, &load->kv_usage};
    if (!cJSON_IsObject(l)) {
      snprintf(msg, cap, "replicas[%zu].load: an object", i);
      return -1;
    }
    cJSON_ArrayForEach(ch, l) {
      int k = 0;
      while (k < 3 && strcmp(lk[k], ch->string)) k++;
      if (k == 3 || !cJSON_IsNumber(ch)) {
        snprintf(msg, cap, "replicas[%zu].load.%s: %s", i, ch->string,
                 k == 3 ? "unknown key" : "a number");
        return -1;
      }
      *dst[k] = ch->valuedouble;
    }
  }
  return 0;
}

/* Add every replica of the file to the engine. */
static int load_replicas(const cli_ctx *c, spi_engine *e, const char *path) {
  size_t len;
  char why[128];
  char *text = cli_read_input(path, &len, why, sizeof why);
  if (!text) return cli_invalid(c, path, SPI_EIO, why);
  const char *end = NULL;
  cJSON *doc = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  int trailing = 0;
  for (const char *p = end; doc && p && p < text + len; p++)
    trailing |= !(*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r');
  free(text);
  const cJSON *list = doc;
  /* The object form holds "replicas" once and nothing else: a second
   * "replicas" would be dropped unread. */
  if (cJSON_IsObject(doc))
    list = cJSON_GetArraySize(doc) == 1
               ? cJSON_GetObjectItemCaseSensitive(doc, "replicas")
               : NULL;
  if (!cJSON_IsArray(list) || trailing) {
    cJSON_Delete(doc);
    return cli_invalid(c, path, SPI_EPARSE,
                       !doc       ? "malformed JSON"
                       : trailing ? "data after the JSON value"
                                  : "not an array of replicas (nor "
                                    "{\"replicas\": [...]} and nothing else)");
  }
  size_t i = 0;
  const cJSON *r;
  char msg[320];
  cJSON_ArrayForEach(r, list) {
    spi_replica_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    spi_load load;
    memset(&load, 0, sizeof load);
    load.struct_size = sizeof load;
    char models[1024];
    int rc = SPI_EINVAL;
    spi_replica_status seen;
    memset(&seen, 0, sizeof seen);
    seen.struct_size = sizeof seen;
    if (replica_from(r, i, &info, &load, models, sizeof models, msg,
                     sizeof msg) != 0) {
      rc = SPI_EINVAL;
    } else if (spi_replica_status_of(e, info.id, info.id_len, &seen) ==
               SPI_OK) {
      snprintf(msg, sizeof msg, "replicas[%zu]: id \"%s\" is given twice", i,
               info.id);
      rc = SPI_EINVAL;
    } else {
      rc = spi_replica_upsert(e, &info);
      if (rc == SPI_OK)
        rc = spi_replica_report_load(e, info.id, info.id_len, &load);
      if (rc != SPI_OK)
        snprintf(msg, sizeof msg, "replicas[%zu] (%s): %s", i, info.id,
                 spi_engine_errmsg(e));
    }
    if (rc != SPI_OK) {
      cJSON_Delete(doc);
      return cli_invalid(c, path, rc, msg);
    }
    i++;
  }
  cJSON_Delete(doc);
  return CLI_OK;
}

static const char *pool_name(int32_t p) {
  return p == SPI_POOL_SPOT        ? "spot"
         : p == SPI_POOL_ON_DEMAND ? "on_demand"
         : p == SPI_POOL_QUEUE     ? "queue"
                                   : "none";
}

static cJSON *price_json(spi_request *req, int32_t pool) {
  spi_price p;
  memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  if (spi_request_price(req, pool, &p) != SPI_OK) return cJSON_CreateNull();
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "usd", p.usd);
  cJSON_AddNumberToObject(o, "usd_per_million", p.usd_per_million);
  cJSON_AddNumberToObject(o, "gpu_seconds", p.gpu_seconds);
  cJSON_AddNumberToObject(o, "prompt_tokens", p.prompt_tokens);
  cJSON_AddNumberToObject(o, "output_tokens", p.output_tokens);
  return o;
}

static cJSON *decide(spi_request *req, int32_t pressure, int *rc_out) {
  spi_classification cl;
  memset(&cl, 0, sizeof cl);
  cl.struct_size = sizeof cl;
  int rc = spi_classify(req, pressure, &cl);
  if (rc != SPI_OK) {
    *rc_out = rc;
    return NULL;
  }
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  rc = spi_route(req, &d);
  if (rc != SPI_OK && rc != SPI_ESHED && rc != SPI_ENOCAPACITY) {
    *rc_out = rc;
    return NULL;
  }
  char key[33];
  spi_cache_key_hex(&d.key, key, sizeof key);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddBoolToObject(o, "ok", 1);
  cJSON_AddStringToObject(o, "outcome", rc == SPI_ESHED ? "shed"
                                        : rc == SPI_ENOCAPACITY
                                            ? "no_capacity"
                                        : d.pool == SPI_POOL_QUEUE ? "queued"
                                                                   : "serve");
  cJSON_AddStringToObject(o, "class", spi_class_name(d.klass));
  cJSON_AddStringToObject(o, "class_reason", cl.reason);
  cJSON_AddBoolToObject(o, "replayable", d.replayable);
  cJSON_AddStringToObject(o, "model_tier",
                          d.model_tier == SPI_TIER_SMALL ? "small" : "large");
  cJSON_AddStringToObject(o, "key", key);
  cJSON_AddStringToObject(o, "pool", pool_name(d.pool));
  cJSON_AddStringToObject(o, "replica", d.replica_id);
  cJSON *fb = cJSON_AddArrayToObject(o, "fallbacks");
  for (uint32_t k = 0; k < d.n_fallbacks && k < SPI_MAX_FALLBACKS; k++)
    cJSON_AddItemToArray(fb, cJSON_CreateString(d.fallback_ids[k]));
  cJSON_AddStringToObject(o, "reason_code", spi_reason_name(d.reason_code));
  cJSON_AddStringToObject(o, "reason", d.reason);
  cJSON_AddNumberToObject(o, "matched_blocks", d.matched_blocks);
  cJSON_AddNumberToObject(o, "total_blocks", d.total_blocks);
  cJSON_AddNumberToObject(o, "est_ttft_ms", d.est_ttft_ms);
  cJSON_AddNumberToObject(o, "est_usd", d.est_usd);
  cJSON_AddNumberToObject(o, "max_output_tokens", (double)d.max_output_tokens);
  cJSON_AddBoolToObject(o, "tools_allowed", d.tools_allowed);
  /* The classifier's degrade plan at the pressure asked for (--pressure),
   * beside the route's own plan above, which is at the chosen pool's. */
  static const char *const pnames[] = {"normal", "elevated", "high",
                                       "critical"};
  cJSON *plan = cJSON_AddObjectToObject(o, "plan");
  cJSON_AddStringToObject(plan, "pressure",
                          cl.pressure >= 0 && cl.pressure < 4
                              ? pnames[cl.pressure]
                              : "?");
  cJSON_AddNumberToObject(plan, "max_output_tokens",
                          (double)cl.max_output_tokens);
  cJSON_AddBoolToObject(plan, "tools_allowed", cl.tools_allowed);
  cJSON_AddBoolToObject(plan, "defer", cl.defer);
  cJSON *prices = cJSON_AddObjectToObject(o, "price");
  cJSON_AddItemToObject(prices, "spot", price_json(req, SPI_POOL_SPOT));
  cJSON_AddItemToObject(prices, "on_demand",
                        price_json(req, SPI_POOL_ON_DEMAND));
  return o;
}

static int parse_pressure(const char *s) {
  static const char *const names[] = {"normal", "elevated", "high",
                                      "critical"};
  for (int i = 0; i < 4; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return -1;
}

/* Every option route takes (each with a value); the help texts list them
 * all (tests/cli checks). */
static const char *const ROUTE_OPTS[] = {"--config", "--replicas",
                                         "--pressure", NULL};

int cmd_route(const cli_ctx *c, int argc, char **argv) {
  const char *config = NULL, *replicas = NULL, *body_path = NULL;
  int pressure = SPI_PRESSURE_NORMAL;
  unsigned seen = 0;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (cli_is_help(a)) {
      fputs(ROUTE_HELP, stdout);
      return CLI_OK;
    }
    int has_val = i + 1 < argc;
    if (has_val && cli_once(c, "route ", ROUTE_OPTS, a, &seen))
      return CLI_USAGE;
    if (strcmp(a, "--config") == 0 && has_val)
      config = argv[++i];
    else if (strcmp(a, "--replicas") == 0 && has_val)
      replicas = argv[++i];
    else if (strcmp(a, "--pressure") == 0 && has_val) {
      pressure = parse_pressure(argv[++i]);
      if (pressure < 0)
        return cli_usage(c, "route ", "--pressure: '%s' is not normal, "
                         "elevated, high or critical", argv[i]);
    } else if (a[0] == '-' && a[1])
      return cli_usage(c, "route ", "unknown option or missing value '%s'", a);
    else if (body_path)
      return cli_usage(c, "route ", "one BODY only ('%s' is extra)", a);
    else
      body_path = a;
  }
  if (!config || !replicas || !body_path)
    return cli_usage(c, "route ", "%s is missing",
                     !config ? "--config FILE" : !replicas ? "--replicas FILE"
                                                           : "BODY");
  if ((strcmp(config, "-") == 0) + (strcmp(replicas, "-") == 0) +
          (strcmp(body_path, "-") == 0) > 1)
    return cli_usage(c, "route ", "only one of --config, --replicas and BODY "
                                  "can be '-' (standard input)");
  spi_engine *e = NULL;
  int rc = spi_engine_new(&e, NULL);
  if (rc != SPI_OK) return cli_invalid(c, "engine", rc, NULL);
  int ret = CLI_OK;
  spi_request *req = NULL;
  size_t len = 0;
  char *body = NULL;
  char why[128];
  if (strcmp(config, "-") == 0) { /* as config check reads it */
    char *text = cli_read_input(config, &len, why, sizeof why);
    if (!text) {
      ret = cli_invalid(c, config, SPI_EIO, why);
      goto done;
    }
    rc = spi_engine_configure(e, text, len);
    free(text);
  } else {
    rc = spi_engine_configure_file(e, config);
  }
  if (rc != SPI_OK) {
    ret = cli_invalid(c, config, rc, spi_engine_errmsg(e));
    goto done;
  }
  ret = load_replicas(c, e, replicas);
  if (ret != CLI_OK) goto done;
  body = cli_read_input(body_path, &len, why, sizeof why);
  if (!body) {
    ret = cli_invalid(c, body_path, SPI_EIO, why);
    goto done;
  }
  rc = spi_request_new(e, &req);
  if (rc == SPI_OK) rc = spi_request_parse_openai(req, body, len, SPI_OPENAI_AUTO);
  if (rc != SPI_OK) {
    ret = cli_invalid(c, body_path, rc,
                      req ? spi_request_errmsg(req) : spi_engine_errmsg(e));
    goto done;
  }
  cJSON *o = decide(req, pressure, &rc);
  if (!o) {
    ret = cli_invalid(c, body_path, rc, spi_request_errmsg(req));
    goto done;
  }
  cli_print(c, o);
done:
  free(body);
  spi_request_free(req);
  spi_engine_free(e);
  return ret;
}
