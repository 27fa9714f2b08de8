/* engine_config.c - the library configuration of one simulated run: the
 * user's own config (--config FILE), with the simulator's settings added
 * where the user gave none. The routing policy under test and the cache
 * key's block size are always the simulator's: the first is what a run
 * compares, the second is how it synthesizes prompts from trace blocks. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim_run.h"

/* The object under key, created when absent; NULL if key holds a non-object. */
static cJSON *section(cJSON *root, const char *key) {
  cJSON *o = cJSON_GetObjectItemCaseSensitive(root, key);
  if (!o) o = cJSON_AddObjectToObject(root, key);
  return cJSON_IsObject(o) ? o : NULL;
}

static void put_default(cJSON *obj, const char *key, double v) {
  if (obj && !cJSON_HasObjectItem(obj, key)) cJSON_AddNumberToObject(obj, key, v);
}

static void put_forced(cJSON *obj, const char *key, cJSON *v) {
  if (!obj) {
    cJSON_Delete(v);
    return;
  }
  if (cJSON_HasObjectItem(obj, key)) cJSON_ReplaceItemInObjectCaseSensitive(obj, key, v);
  else cJSON_AddItemToObject(obj, key, v);
}

char *sim_engine_config(const char *user_json, sim_engine_params *p, char *msg,
                        size_t msgcap) {
  cJSON *root = user_json ? cJSON_Parse(user_json) : cJSON_CreateObject();
  if (!cJSON_IsObject(root)) {
    snprintf(msg, msgcap, "--config: %s", root ? "not a JSON object" : "malformed JSON");
    cJSON_Delete(root);
    return NULL;
  }
  cJSON *modules = section(root, "modules"), *policy = section(root, "policy");
  cJSON *key = section(root, "cache_key"), *router = section(root, "router");
  cJSON *cost = section(root, "cost");
  if (!modules || !policy || !key || !router || !cost) {
    snprintf(msg, msgcap, "--config: modules, policy, cache_key, router and cost "
                          "must be objects");
    cJSON_Delete(root);
    return NULL;
  }
  put_forced(modules, "policy", cJSON_CreateString(p->policy));
  put_forced(key, "block_tokens", cJSON_CreateNumber(SIM_IDS_PER_BLOCK));
  if (!cJSON_HasObjectItem(policy, "bronze_queue_without_spot"))
    cJSON_AddBoolToObject(policy, "bronze_queue_without_spot", !p->all_on_demand);
  /* Load reports arrive on every change, so any age is fresh. */
  put_default(router, "load_max_age_ms", 3600000);
  /* Tables sized to the trace: no more tickets than requests can be open,
   * and 32 bytes of index (two entries) per block reference keep every prefix the trace
   * can make; larger tables only cost the time to clear them. */
  double tickets = 16384, index = 1 << 20;
  while (tickets < (double)p->requests + 1024 && tickets < 262144) tickets *= 2;
  while (index < (double)p->block_refs * 32 && index < 33554432) index *= 2;
  put_default(router, "max_tickets", tickets);
  put_default(router, "prefill_tokens_per_s", p->prefill_tps);
  put_default(router, "decode_tokens_per_s", p->decode_tps);
  put_default(router, "index_bytes", index);
  put_default(cost, "spot_usd_per_gpu_hour", p->spot_usd_h);
  put_default(cost, "on_demand_usd_per_gpu_hour", p->od_usd_h);
  put_default(cost, "prefill_tokens_per_s", p->prefill_tps);
  put_default(cost, "decode_tokens_per_s", p->decode_tps * p->batch);
  /* The prices the ledger will use, the user's where given: the
   * class-feasible maximum saving is reckoned with them. */
  const cJSON *sp = cJSON_GetObjectItemCaseSensitive(cost, "spot_usd_per_gpu_hour");
  const cJSON *od = cJSON_GetObjectItemCaseSensitive(cost, "on_demand_usd_per_gpu_hour");
  p->price_ratio = cJSON_IsNumber(sp) && cJSON_IsNumber(od) && od->valuedouble > 0
                       ? sp->valuedouble / od->valuedouble : 1;
  char *out = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (!out) snprintf(msg, msgcap, "out of memory");
  return out;
}
