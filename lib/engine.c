/*
 * engine.c - the roof: engine life cycle and configuration snapshots. It
 * builds everything on the floor (floor.c, rcu.c) and the module registry
 * (modules.c); nothing below calls back up into it.
 *
 * Configuration is an immutable snapshot. spi_engine_configure() builds a new
 * one completely (every module configured) before it is swapped in, so a bad
 * config never half-applies and calls already running finish on the old one.
 * Readers pin a snapshot with a two-slot epoch counter (two atomic adds, no
 * lock); the writer, serialised by config_lock, swaps the pointer, flips the
 * epoch and waits for the old slot's readers to drain before freeing.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine.h"
#include "pool_index.h"

/* --------------------------------------------------------------- snapshot */

static void snapshot_free(spi_engine *e, spi_snapshot *s) {
  if (!s) return;
  for (int k = 0; k < SPI_KIND_MAX; k++) {
    spi_slot *sl = &s->slot[k];
    if (sl->mod && sl->inst && sl->mod->release)
      sl->mod->release(sl->mod->state, sl->inst);
    if (sl->builtin && sl->builtin != sl->mod && sl->builtin_inst &&
        sl->builtin->release)
      sl->builtin->release(sl->builtin->state, sl->builtin_inst);
  }
  if (s->shadow.mod && s->shadow.inst && s->shadow.mod->release)
    s->shadow.mod->release(s->shadow.mod->state, s->shadow.inst);
  spi__fleet_ref_drop(e, s->fleet);
  spi__free(&e->mem, s->json);
  spi__free(&e->mem, s);
}

/* Swap in s and free the old snapshot once no reader can still hold it. */
static void snapshot_install(spi_engine *e, spi_snapshot *s) {
  s->seq = atomic_load_explicit(&e->snap_seq, memory_order_relaxed) + 1;
  spi_snapshot *old = atomic_exchange(&e->snap, s);
  atomic_store_explicit(&e->snap_seq, s->seq, memory_order_release);
  spi__rcu_synchronize(&e->rcu);
  snapshot_free(e, old);
}

/* ----------------------------------------------------------- engine life */

int spi_engine_new(spi_engine **out, const spi_hooks *hooks) {
  if (!out) return SPI_EINVAL;
  *out = NULL;
  spi_mem mem = {spi__default_alloc, spi__default_free, NULL};
  if (hooks) {
    if (hooks->struct_size < sizeof(spi_hooks)) return SPI_EINVAL;
    if (!hooks->alloc != !hooks->free) return SPI_EINVAL;
    if (hooks->alloc) {
      mem.alloc = hooks->alloc;
      mem.free = hooks->free;
      mem.user_data = hooks->alloc_user_data;
    }
    if (hooks->log_level < SPI_LOG_ERROR || hooks->log_level > SPI_LOG_DEBUG)
      if (hooks->log) return SPI_EINVAL;
  }
  spi_engine *e = spi__alloc(&mem, sizeof *e);
  if (!e) return SPI_ENOMEM;
  memset(e, 0, sizeof *e);
  e->mem = mem;
  e->clock = spi__default_clock;
  e->log_level = SPI_LOG_WARN;
  if (hooks) {
    if (hooks->clock) {
      e->clock = hooks->clock;
      e->clock_user_data = hooks->clock_user_data;
    }
    e->log = hooks->log;
    e->log_user_data = hooks->log_user_data;
    if (hooks->log) e->log_level = hooks->log_level;
  }
  atomic_init(&e->snap, NULL);
  atomic_init(&e->snap_seq, 0);
  if (spi__rcu_init(&e->rcu) != SPI_OK) {
    spi__free(&mem, e);
    return SPI_ENOMEM;
  }
  atomic_init(&e->configuring, 0);
  atomic_init(&e->index, NULL);
  for (int p = 0; p < 4; p++) atomic_init(&e->kv_level[p], 0u);
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
    for (int h = 0; h < 2; h++) atomic_init(&e->route_hint[k][h], 0u);
  if (pthread_mutex_init(&e->config_lock, NULL) != 0) {
    spi__rcu_destroy(&e->rcu);
    spi__free(&mem, e);
    return SPI_ENOMEM;
  }
  if (spi__errtab_init(&e->err) != SPI_OK) {
    pthread_mutex_destroy(&e->config_lock);
    spi__rcu_destroy(&e->rcu);
    spi__free(&mem, e);
    return SPI_ENOMEM;
  }
  if (spi__registry_init(&e->registry, &e->mem) != SPI_OK) {
    spi__errtab_destroy(&e->err);
    pthread_mutex_destroy(&e->config_lock);
    spi__rcu_destroy(&e->rcu);
    spi__free(&mem, e);
    return SPI_ENOMEM;
  }
  for (size_t k = 0; k < SPI_PIX_LANES; k++)
    e->registry.pix_lane[k]->counts = &e->metrics;
  e->registry.pix_counts = &e->metrics; /* for model indexes made later */
  if (spi__nodes_new(e) != SPI_OK) {
    spi__registry_destroy(&e->registry, &e->mem);
    spi__errtab_destroy(&e->err);
    pthread_mutex_destroy(&e->config_lock);
    spi__rcu_destroy(&e->rcu);
    spi__free(&mem, e);
    return SPI_ENOMEM;
  }
  e->magic = SPI_ENGINE_MAGIC;
  int rc = spi__modules_register_builtins(e);
  if (rc == SPI_OK) rc = spi_engine_configure(e, "{}", 2);
  if (rc != SPI_OK) {
    spi_engine_free(e);
    return rc == SPI_ENOMEM ? SPI_ENOMEM : rc;
  }
  spi__errtab_clear(&e->err);
  *out = e;
  return SPI_OK;
}

void spi_engine_free(spi_engine *engine) {
  if (!spi__engine_ok(engine)) return;
  spi_mem mem = engine->mem;
  snapshot_free(engine, atomic_exchange(&engine->snap, NULL));
  spi__router_destroy(engine);
  spi__registry_destroy(&engine->registry, &engine->mem);
  spi__nodes_free(engine);
  spi__modules_free(engine);
  pthread_mutex_destroy(&engine->config_lock);
  spi__errtab_destroy(&engine->err);
  spi__rcu_destroy(&engine->rcu);
  engine->magic = SPI_DEAD_MAGIC;
  spi__free(&mem, engine);
}

/* --------------------------------------------------------- configuration */

static const char *const CLASS_NAMES[] = {"gold", "silver", "bronze"};
static const char *const TIER_NAMES[] = {"auto", "default", "flex", "priority",
                                         "scale"};

static int read_limits(const cJSON *root, spi_limits *l, char *err,
                       size_t errcap) {
  const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, "limits");
  int rc = SPI_OK;
  if (o && (rc = spi__cfg_check_keys(o, "limits", "limits", err, errcap)))
    return rc;
  struct {
    const char *path;
    int64_t *dst;
  } rows[] = {
      {"limits.max_body_bytes", &l->max_body_bytes},
      {"limits.max_field_bytes", &l->max_field_bytes},
      {"limits.max_messages", &l->max_messages},
      {"limits.max_tools_bytes", &l->max_tools_bytes},
      {"limits.max_metadata_pairs", &l->max_metadata_pairs},
      {"limits.max_token_ids", &l->max_token_ids},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
    if ((rc = spi__cfg_int(o, rows[i].path, "limits", rows[i].dst, err,
                           errcap)))
      return rc;
  return SPI_OK;
}

static int read_priority_map(const cJSON *root, spi_snapshot *s, char *err,
                             size_t errcap) {
  const cJSON *pm = cJSON_GetObjectItemCaseSensitive(root, "priority_map");
  int rc;
  if (pm && (rc = spi__cfg_check_keys(pm, "priority_map", "priority_map", err,
                                      errcap)))
    return rc;
  static const char *const subs[] = {"vllm", "llmd", "service_tier"};
  for (int k = 0; k < 3; k++) {
    const cJSON *o = pm ? cJSON_GetObjectItemCaseSensitive(pm, subs[k]) : NULL;
    char prefix[64], shown[64];
    snprintf(prefix, sizeof prefix, "priority_map.%s", subs[k]);
    snprintf(shown, sizeof shown, "priority_map.%s", subs[k]);
    if (o && (rc = spi__cfg_check_keys(o, prefix, shown, err, errcap)))
      return rc;
    for (int c = 0; c < 3; c++) {
      char path[96];
      snprintf(path, sizeof path, "%s.%s", prefix, CLASS_NAMES[c]);
      if (k < 2) {
        int64_t v = 0;
        if ((rc = spi__cfg_int(o, path, shown, &v, err, errcap))) return rc;
        (k == 0 ? s->vllm_prio : s->llmd_prio)[c + 1] = (int32_t)v;
      } else {
        int32_t idx = 0;
        if ((rc = spi__cfg_enum(o, path, shown, TIER_NAMES, 5, &idx, err,
                                errcap)))
          return rc;
        s->service_tier[c + 1] = idx + SPI_SERVICE_TIER_AUTO;
      }
    }
  }
  /* The reverse maps compare against these, so they must be ordered. */
  if (!(s->vllm_prio[1] < s->vllm_prio[2] && s->vllm_prio[2] < s->vllm_prio[3])) {
    spi__errf(err, errcap,
              "priority_map.vllm: must satisfy gold < silver < bronze");
    return SPI_ERANGE;
  }
  if (!(s->llmd_prio[1] > s->llmd_prio[2] && s->llmd_prio[2] > s->llmd_prio[3])) {
    spi__errf(err, errcap,
              "priority_map.llmd: must satisfy gold > silver > bronze");
    return SPI_ERANGE;
  }
  return SPI_OK;
}

/* The section a module reads: a built-in's own, else module_config.<name>. */
static const cJSON *module_section(const cJSON *root, const spi_modentry *m) {
  if (m->builtin) return cJSON_GetObjectItemCaseSensitive(root, m->section);
  const cJSON *mcfg = cJSON_GetObjectItemCaseSensitive(root, "module_config");
  return mcfg ? cJSON_GetObjectItemCaseSensitive(mcfg, m->name) : NULL;
}

/* router.shadow_policy: a second policy, configured like the active one. */
static int configure_shadow(spi_engine *e, const cJSON *root, spi_snapshot *s,
                            char *err, size_t errcap) {
  const char *name = s->router.shadow_policy;
  if (!name[0]) return SPI_OK;
  spi_modentry *m = spi__module_find(e, SPI_MODULE_POLICY, name, strlen(name));
  if (!m) {
    spi__errf(err, errcap, "router.shadow_policy: no policy module named \"%s\"",
              name);
    return SPI_ENOTFOUND;
  }
  char shown[96];
  snprintf(shown, sizeof shown, m->builtin ? "%s" : "module_config.%s",
           m->builtin ? m->section : m->name);
  s->shadow.mod = m;
  s->shadow.builtin = m;
  return spi__module_configure(e, m, module_section(root, m), shown,
                               &s->shadow.inst, err, errcap);
}

static const struct {
  int32_t kind;
  const char *key; /* under "modules" */
} KIND_KEYS[] = {
    {SPI_MODULE_CLASSIFIER, "classifier"},
    {SPI_MODULE_KEY_BUILDER, "key_builder"},
    {SPI_MODULE_COST_MODEL, "cost_model"},
    {SPI_MODULE_POLICY, "policy"},
};

/* module_config's shape: an object of objects. Checked before any module
 * (the fleet bus first) is handed its section. */
static int module_config_shape(const cJSON *root, char *err, size_t errcap) {
  const cJSON *mcfg = cJSON_GetObjectItemCaseSensitive(root, "module_config");
  if (!mcfg) return SPI_OK;
  if (!cJSON_IsObject(mcfg)) {
    spi__errf(err, errcap, "module_config: must be an object");
    return SPI_ETYPE;
  }
  for (const cJSON *c = mcfg->child; c; c = c->next)
    if (!cJSON_IsObject(c)) {
      spi__errf(err, errcap, "module_config.%.*s: must be an object",
                SPI_CUT(c->string ? c->string : "", 64));
      return SPI_ETYPE;
    }
  return SPI_OK;
}

static int configure_modules(spi_engine *e, const cJSON *root, spi_snapshot *s,
                             char *err, size_t errcap) {
  const cJSON *mods = cJSON_GetObjectItemCaseSensitive(root, "modules");
  const cJSON *mcfg = cJSON_GetObjectItemCaseSensitive(root, "module_config");
  int rc;
  if (mods && (rc = spi__cfg_check_keys(mods, "modules", "modules", err, errcap)))
    return rc;
  /* Every section names a user module (the fleet bus's own was loaded by
   * now); their shape was checked first (module_config_shape). */
  for (const cJSON *c = mcfg ? mcfg->child : NULL; c; c = c->next) {
    int found = 0;
    for (spi_modentry *m = e->modules; m; m = m->next)
      if (!m->builtin && c->string && strcmp(m->name, c->string) == 0)
        found = 1;
    if (!found) {
      spi__errf(err, errcap, "module_config.%.*s: no user module of that name",
                SPI_CUT(c->string ? c->string : "", 64));
      return SPI_EUNKNOWN;
    }
  }
  for (size_t i = 0; i < sizeof KIND_KEYS / sizeof KIND_KEYS[0]; i++) {
    int32_t kind = KIND_KEYS[i].kind;
    char path[64];
    snprintf(path, sizeof path, "modules.%s", KIND_KEYS[i].key);
    const char *name = NULL;
    size_t nlen = 0;
    if ((rc = spi__cfg_string(mods, path, "modules", &name, &nlen, err, errcap)))
      return rc;
    spi_modentry *sel = spi__module_find(e, kind, name, nlen);
    if (!sel) {
      spi__errf(err, errcap, "%s: no %s module named \"%.*s\"", path,
                KIND_KEYS[i].key, (int)spi__utf8_fit(name, nlen, 64), name);
      return SPI_ENOTFOUND;
    }
    spi_modentry *bi = NULL;
    for (spi_modentry *m = e->modules; m && !bi; m = m->next)
      if (m->kind == kind && m->builtin) bi = m;
    spi_slot *sl = &s->slot[kind];
    sl->builtin = bi;
    sl->mod = sel;
    /* The built-in is always configured: it is the fallback. */
    const cJSON *bsec = cJSON_GetObjectItemCaseSensitive(root, bi->section);
    if ((rc = spi__module_configure(e, bi, bsec, bi->section,
                                    &sl->builtin_inst, err, errcap)))
      return rc;
    if (sel == bi) {
      sl->inst = sl->builtin_inst;
    } else {
      char shown[96];
      snprintf(shown, sizeof shown, "module_config.%s", sel->name);
      const cJSON *usec =
          mcfg ? cJSON_GetObjectItemCaseSensitive(mcfg, sel->name) : NULL;
      if ((rc = spi__module_configure(e, sel, usec, shown, &sl->inst, err,
                                      errcap)))
        return rc;
    }
  }
  return configure_shadow(e, root, s, err, errcap);
}

/* Add every non-list default the tree lacks, so the dump shows all keys. */
static int fill_defaults(cJSON *root) {
  size_t n = 0;
  const spi_optdesc *t = spi__opt_table(&n);
  for (size_t i = 0; i < n; i++) {
    if (strstr(t[i].path, "[]") || strcmp(t[i].default_json, "null") == 0)
      continue;
    if (strcmp(t[i].path, "module_config") == 0 && cJSON_GetObjectItem(root, "module_config"))
      continue;
    cJSON *obj = root;
    char buf[160];
    snprintf(buf, sizeof buf, "%s", t[i].path);
    char *part = buf, *dot;
    while ((dot = strchr(part, '.')) != NULL) {
      *dot = '\0';
      cJSON *child = cJSON_GetObjectItemCaseSensitive(obj, part);
      if (!child) {
        child = cJSON_AddObjectToObject(obj, part);
        if (!child) return SPI_ENOMEM;
      }
      if (!cJSON_IsObject(child)) break; /* validated elsewhere */
      obj = child;
      part = dot + 1;
    }
    if (dot) continue;
    if (cJSON_GetObjectItemCaseSensitive(obj, part)) continue;
    cJSON *v = spi__cjson_parse(t[i].default_json,
                                 strlen(t[i].default_json), NULL);
    if (!v) return SPI_ENOMEM;
    if (!cJSON_AddItemToObject(obj, part, v)) {
      cJSON_Delete(v);
      return SPI_ENOMEM;
    }
  }
  return SPI_OK;
}

static int effective_json(spi_engine *e, cJSON *root, spi_snapshot *s) {
  if (fill_defaults(root) != SPI_OK) return SPI_ENOMEM;
  spi_buf b = {0};
  int rc = spi__canon_json(root, &b, &e->mem);
  if (rc == SPI_OK) rc = spi__buf_append_byte(&b, &e->mem, 0);
  if (rc != SPI_OK) {
    spi__buf_free(&b, &e->mem);
    return rc;
  }
  s->json = (char *)b.data;
  s->json_len = b.len - 1;
  return SPI_OK;
}

static int configure_locked(spi_engine *e, const char *json, size_t len) {
  char err[SPI_ERRMSG_CAP] = "";
  cJSON *root = NULL;
  int rc = spi__json_parse_object(json, len, SPI_CONFIG_MAX_BYTES, "config",
                                  &root, err, sizeof err);
  if (rc != SPI_OK) return spi__engine_fail(e, rc, "%s", err);
  spi_snapshot *s = spi__calloc(&e->mem, 1, sizeof *s);
  if (!s) {
    cJSON_Delete(root);
    return spi__engine_fail(e, SPI_ENOMEM, "config: out of memory");
  }
  rc = spi__cfg_check_keys(root, "", "", err, sizeof err);
  if (rc == SPI_OK) rc = read_limits(root, &s->limits, err, sizeof err);
  if (rc == SPI_OK) rc = read_priority_map(root, s, err, sizeof err);
  if (rc == SPI_OK) rc = spi__replay_check_section(e, root, err, sizeof err);
  if (rc == SPI_OK) rc = spi__router_read_cfg(root, &s->router, err, sizeof err);
  /* The fleet bus first: it may load its module (modules.fleet_bus
   * "redis"), whose module_config section configure_modules then accepts. */
  if (rc == SPI_OK) rc = module_config_shape(root, err, sizeof err);
  if (rc == SPI_OK) rc = spi__fleet_configure(e, root, s, err, sizeof err);
  if (rc == SPI_OK) rc = configure_modules(e, root, s, err, sizeof err);
  spi_router_prep prep;
  memset(&prep, 0, sizeof prep);
  if (rc == SPI_OK) rc = spi__router_prepare(e, &s->router, &prep, err, sizeof err);
  if (rc == SPI_OK) {
    /* The free-form sections (module_config, replay.store_config) are
     * checked here only, as the whole is written canonically. */
    rc = effective_json(e, root, s);
    if (rc == SPI_EPARSE)
      spi__errf(err, sizeof err, "config: a member name appears twice in one "
                "object, or a number is not finite");
    else if (rc == SPI_ETOOBIG)
      spi__errf(err, sizeof err, "config: nested more than 64 levels deep");
    else if (rc != SPI_OK)
      spi__errf(err, sizeof err, "config: out of memory");
  }
  if (rc == SPI_OK)
    rc = spi__router_take_tables(e, &s->router, &prep, err, sizeof err);
  cJSON_Delete(root);
  if (rc != SPI_OK) {
    spi__router_discard(e, &prep);
    snapshot_free(e, s);
    return spi__engine_fail(e, rc, "%s", err);
  }
  snapshot_install(e, s);
  spi__router_commit(e, &prep);
  spi__errtab_clear(&e->err);
  return SPI_OK;
}

int spi_engine_configure(spi_engine *engine, const char *json, size_t len) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  /* A module's configure callback calling back in would deadlock. */
  if (spi__in_module_configure(engine))
    return spi__engine_fail(engine, SPI_EMISUSE,
                            "config: called from a module's configure callback");
  if (!json && len) return spi__engine_fail(engine, SPI_EINVAL, "config: NULL json");
  pthread_mutex_lock(&engine->config_lock);
  int rc = configure_locked(engine, json, len);
  pthread_mutex_unlock(&engine->config_lock);
  return rc;
}

int spi_engine_configure_file(spi_engine *engine, const char *path) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!path) return spi__engine_fail(engine, SPI_EINVAL, "config file: NULL path");
  FILE *f = fopen(path, "rb");
  if (!f)
    return spi__engine_fail(engine, SPI_EIO, "config file %.*s: %s",
                            SPI_CUT(path, 160), strerror(errno));
  spi_buf b = {0};
  int rc = SPI_OK;
  char chunk[4096];
  size_t n;
  errno = 0;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (b.len + n > SPI_CONFIG_MAX_BYTES) {
      rc = spi__engine_fail(engine, SPI_ETOOBIG,
                            "config file %.*s: over %u bytes",
                            SPI_CUT(path, 160), SPI_CONFIG_MAX_BYTES);
      break;
    }
    if ((rc = spi__buf_append(&b, &engine->mem, chunk, n)) != SPI_OK) {
      rc = spi__engine_fail(engine, rc, "config file: out of memory");
      break;
    }
  }
  /* fopen opens a directory; its first read fails (EISDIR): say so. */
  if (rc == SPI_OK && ferror(f))
    rc = spi__engine_fail(engine, SPI_EIO, "config file %.*s: %s",
                          SPI_CUT(path, 160),
                          errno ? strerror(errno) : "read error");
  fclose(f);
  if (rc == SPI_OK)
    rc = spi_engine_configure(engine, (const char *)b.data, b.len);
  spi__buf_free(&b, &engine->mem);
  return rc;
}

int spi_engine_config_json(spi_engine *engine, char *buf, size_t cap,
                           size_t *needed) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!buf && cap) return SPI_EINVAL;
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(engine, &pin);
  size_t len = s->json_len;
  if (needed) *needed = len;
  int rc = SPI_OK;
  if (cap < len + 1) {
    rc = SPI_EBUFSIZE;
  } else {
    memcpy(buf, s->json, len + 1);
  }
  spi__snap_release(engine, pin);
  return rc;
}
