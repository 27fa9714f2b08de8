/*
 * engine.c - engine life cycle, hooks, the module registry and configuration
 * snapshots.
 *
 * Configuration is an immutable snapshot. spi_engine_configure() builds a new
 * one completely (every module configured) before it is swapped in, so a bad
 * config never half-applies and calls already running finish on the old one.
 * Readers pin a snapshot with a two-slot epoch counter (two atomic adds, no
 * lock); the writer, serialised by config_lock, swaps the pointer, flips the
 * epoch and waits for the old slot's readers to drain before freeing.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "engine.h"

static void *default_alloc(void *ud, size_t size) {
  (void)ud;
  return malloc(size);
}

static void default_free(void *ud, void *ptr) {
  (void)ud;
  free(ptr);
}

static int64_t default_clock(void *ud) {
  (void)ud;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int spi__engine_ok(const spi_engine *e) {
  return e && e->magic == SPI_ENGINE_MAGIC;
}

int64_t spi__engine_now(const spi_engine *e) {
  return e->clock(e->clock_user_data);
}

void spi__engine_log(const spi_engine *e, int32_t level, const char *fmt, ...) {
  if (!e->log || level > e->log_level) return;
  char line[SPI_ERRMSG_CAP];
  va_list ap;
  va_start(ap, fmt);
  spi__verrf(line, sizeof line, fmt, ap);
  va_end(ap);
  e->log(e->log_user_data, level, line, strlen(line));
}

int spi__engine_fail(spi_engine *e, int status, const char *fmt, ...) {
  char msg[SPI_ERRMSG_CAP];
  va_list ap;
  va_start(ap, fmt);
  spi__verrf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&e->err_lock);
  memcpy(e->errmsg, msg, sizeof msg);
  pthread_mutex_unlock(&e->err_lock);
  return status;
}

/* ---------------------------------------------------------------- version */

uint32_t spi_version_number(void) { return SPI_VERSION_NUMBER; }
const char *spi_version_string(void) { return SPI_VERSION_STRING; }

/* --------------------------------------------------------------- snapshot */

int spi__rcu_init(spi_rcu *r) {
  atomic_init(&r->epoch, 0u);
  for (int e = 0; e < 2; e++)
    for (int i = 0; i < SPI_RCU_STRIPES; i++)
      atomic_init(&r->readers[e][i].n, 0ul);
  return pthread_mutex_init(&r->sync_lock, NULL) == 0 ? SPI_OK : SPI_ENOMEM;
}

void spi__rcu_destroy(spi_rcu *r) { pthread_mutex_destroy(&r->sync_lock); }

/* Threads have separate stacks, so a mix of the stack address spreads them
 * over the stripes without thread-local state. */
static unsigned rcu_stripe(const void *stack_addr) {
  uint64_t x = (uint64_t)(uintptr_t)stack_addr >> 12;
  x ^= x >> 17;
  x *= 0xed5ad4bbu;
  x ^= x >> 11;
  return (unsigned)(x & (SPI_RCU_STRIPES - 1));
}

/* The pin holds the epoch parity in bit 0 and the stripe above it. */
unsigned spi__rcu_enter(spi_rcu *r) {
  char here = 0;
  unsigned stripe = rcu_stripe(&here);
  for (;;) {
    unsigned ep = atomic_load(&r->epoch) & 1u;
    atomic_fetch_add(&r->readers[ep][stripe].n, 1);
    if ((atomic_load(&r->epoch) & 1u) == ep) return stripe << 1 | ep;
    atomic_fetch_sub(&r->readers[ep][stripe].n, 1);
  }
}

void spi__rcu_exit(spi_rcu *r, unsigned pin) {
  atomic_fetch_sub(&r->readers[pin & 1u][pin >> 1].n, 1);
}

/* A reader that entered before the flip counted itself in the old epoch;
 * one that enters after it sees the new epoch and, having loaded the
 * published pointer after the writer stored it, the new object. */
void spi__rcu_synchronize(spi_rcu *r) {
  pthread_mutex_lock(&r->sync_lock);
  unsigned ep = atomic_fetch_add(&r->epoch, 1u) & 1u;
  for (int i = 0; i < SPI_RCU_STRIPES; i++)
    while (atomic_load(&r->readers[ep][i].n) != 0) sched_yield();
  pthread_mutex_unlock(&r->sync_lock);
}

spi_snapshot *spi__snap_acquire(spi_engine *e, unsigned *pin) {
  *pin = spi__rcu_enter(&e->rcu);
  return atomic_load(&e->snap);
}

void spi__snap_release(spi_engine *e, unsigned pin) {
  spi__rcu_exit(&e->rcu, pin);
}

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
  spi__free(&e->mem, s->json);
  spi__free(&e->mem, s);
}

/* Swap in s and free the old snapshot once no reader can still hold it. */
static void snapshot_install(spi_engine *e, spi_snapshot *s) {
  spi_snapshot *old = atomic_exchange(&e->snap, s);
  spi__rcu_synchronize(&e->rcu);
  snapshot_free(e, old);
}

/* --------------------------------------------------------------- registry */

const char *spi_module_kind_name(int32_t kind) {
  switch (kind) {
  case SPI_MODULE_CLASSIFIER: return "classifier";
  case SPI_MODULE_KEY_BUILDER: return "key_builder";
  case SPI_MODULE_POLICY: return "policy";
  case SPI_MODULE_COST_MODEL: return "cost_model";
  case SPI_MODULE_NOTICE_SOURCE: return "notice_source";
  case SPI_MODULE_REPLAY_STORE: return "replay_store";
  default: return "invalid";
  }
}

static spi_modentry *find_module(const spi_engine *e, int32_t kind,
                                 const char *name, size_t len) {
  for (spi_modentry *m = e->modules; m; m = m->next)
    if (m->kind == kind && strlen(m->name) == len &&
        memcmp(m->name, name, len) == 0)
      return m;
  return NULL;
}

static int valid_module_name(const char *name, size_t len) {
  if (!name || len == 0 || len > SPI_MODULE_NAME_MAX) return 0;
  for (size_t i = 0; i < len; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
      return 0;
  }
  return 1;
}

/* Check the struct header every kind shares and copy the kind's struct. */
static int copy_module(spi_engine *e, int32_t kind, const void *module,
                       spi_modentry *m) {
  const uint32_t *hdr = module;
  uint32_t abi = hdr[0], size = hdr[1];
  if (abi != SPI_MODULE_ABI_VERSION)
    return spi__engine_fail(e, SPI_EABI, "module abi_version %u unsupported (%u)",
                       abi, (unsigned)SPI_MODULE_ABI_VERSION);
  size_t need = 0;
  switch (kind) {
  case SPI_MODULE_CLASSIFIER: need = sizeof(spi_classifier_module); break;
  case SPI_MODULE_KEY_BUILDER: need = sizeof(spi_key_builder_module); break;
  case SPI_MODULE_COST_MODEL: need = sizeof(spi_cost_model_module); break;
  case SPI_MODULE_POLICY: need = sizeof(spi_policy_module); break;
  case SPI_MODULE_REPLAY_STORE: need = sizeof(spi_replay_store_module); break;
  default:
    return spi__engine_fail(e, SPI_ENOTSUP,
                       "module kind %s is reserved and not defined in %s",
                       spi_module_kind_name(kind), SPI_VERSION_STRING);
  }
  /* Version 1 structs have no optional tail yet: they must be complete. */
  if (size != need)
    return spi__engine_fail(e, SPI_EABI, "%s module struct_size %u, expected %zu",
                       spi_module_kind_name(kind), size, need);
  memcpy(&m->m, module, need);
  switch (kind) {
  case SPI_MODULE_CLASSIFIER:
    m->configure = m->m.classifier.configure;
    m->release = m->m.classifier.release;
    m->on_failure = m->m.classifier.on_failure;
    if (!m->m.classifier.classify) goto missing;
    break;
  case SPI_MODULE_KEY_BUILDER:
    m->configure = m->m.key_builder.configure;
    m->release = m->m.key_builder.release;
    m->on_failure = m->m.key_builder.on_failure;
    if (!m->m.key_builder.build_key || !m->m.key_builder.block_hashes)
      goto missing;
    break;
  case SPI_MODULE_POLICY:
    m->configure = m->m.policy.configure;
    m->release = m->m.policy.release;
    m->on_failure = m->m.policy.on_failure;
    if (!m->m.policy.choose) goto missing;
    if (m->m.policy.flags & ~(int32_t)SPI_POLICY_SUMMARIES_ONLY)
      return spi__engine_fail(e, SPI_EINVAL,
                              "policy module flags 0x%x: unknown bits",
                              (unsigned)m->m.policy.flags);
    break;
  case SPI_MODULE_REPLAY_STORE:
    m->configure = m->m.replay_store.configure;
    m->release = m->m.replay_store.release;
    m->on_failure = m->m.replay_store.on_failure;
    if (!m->m.replay_store.release || !m->m.replay_store.recover ||
        !m->m.replay_store.append || !m->m.replay_store.sync ||
        !m->m.replay_store.stats)
      goto missing;
    break;
  default:
    m->configure = m->m.cost_model.configure;
    m->release = m->m.cost_model.release;
    m->on_failure = m->m.cost_model.on_failure;
    if (!m->m.cost_model.price) goto missing;
    break;
  }
  if (!m->configure) goto missing;
  if (m->on_failure != SPI_ON_FAILURE_ERROR &&
      m->on_failure != SPI_ON_FAILURE_FALLBACK)
    return spi__engine_fail(e, SPI_EINVAL, "module on_failure %d is not valid",
                       (int)m->on_failure);
  return SPI_OK;
missing:
  return spi__engine_fail(e, SPI_EINVAL, "%s module lacks a required callback",
                     spi_module_kind_name(kind));
}

static int register_module(spi_engine *e, int32_t kind, const char *name,
                           size_t name_len, const void *module, void *state,
                           spi_module_destroy_fn destroy, const char *section) {
  if (kind < SPI_MODULE_CLASSIFIER || kind > SPI_MODULE_REPLAY_STORE)
    return spi__engine_fail(e, SPI_EINVAL, "module kind %d is not valid", (int)kind);
  if (!valid_module_name(name, name_len))
    return spi__engine_fail(e, SPI_EINVAL,
                       "module name must be 1..63 bytes of [A-Za-z0-9_.-]");
  if (!module) return spi__engine_fail(e, SPI_EINVAL, "module struct is NULL");
  if (find_module(e, kind, name, name_len))
    return spi__engine_fail(e, SPI_EEXIST, "a %s module named \"%.*s\" exists",
                       spi_module_kind_name(kind), (int)name_len, name);
  spi_modentry tmp;
  memset(&tmp, 0, sizeof tmp);
  int rc = copy_module(e, kind, module, &tmp);
  if (rc != SPI_OK) return rc;
  spi_modentry *m = spi__alloc(&e->mem, sizeof *m);
  if (!m) return spi__engine_fail(e, SPI_ENOMEM, "out of memory registering module");
  *m = tmp;
  m->kind = kind;
  memcpy(m->name, name, name_len);
  m->name[name_len] = '\0';
  m->builtin = section != NULL;
  m->section = section;
  m->state = state;
  m->destroy = destroy;
  /* Append: listing order is registration order. */
  spi_modentry **tail = &e->modules;
  while (*tail) tail = &(*tail)->next;
  *tail = m;
  return SPI_OK;
}

int spi_engine_register_module(spi_engine *engine, int32_t kind,
                               const char *name, size_t name_len,
                               const void *module, void *state,
                               spi_module_destroy_fn destroy) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (atomic_load(&engine->configuring)) return SPI_EMISUSE;
  return register_module(engine, kind, name, name_len, module, state, destroy,
                         NULL);
}

int spi_engine_module_name(spi_engine *engine, int32_t kind, size_t index,
                           const char **out) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!out) return SPI_EINVAL;
  size_t i = 0;
  for (spi_modentry *m = engine->modules; m; m = m->next) {
    if (m->kind != kind) continue;
    if (i++ == index) {
      *out = m->name;
      return SPI_OK;
    }
  }
  return SPI_ENOTFOUND;
}

/* ----------------------------------------------------------- engine life */

static int register_builtins(spi_engine *e) {
  spi_classifier_module c;
  spi_key_builder_module k;
  spi_cost_model_module m;
  spi_policy_module p, ll;
  spi__builtin_classifier(&c);
  spi__builtin_key_builder(&k);
  spi__builtin_cost_model(&m);
  spi__builtin_policy(&p, 1);
  spi__builtin_policy(&ll, 0);
  /* Built-ins allocate through the engine's allocator: their state is it. */
  int rc = register_module(e, SPI_MODULE_CLASSIFIER, SPI_BUILTIN_CLASSIFIER,
                           strlen(SPI_BUILTIN_CLASSIFIER), &c, &e->mem, NULL,
                           "classifier");
  if (rc == SPI_OK)
    rc = register_module(e, SPI_MODULE_KEY_BUILDER, SPI_BUILTIN_KEY_BUILDER,
                         strlen(SPI_BUILTIN_KEY_BUILDER), &k, &e->mem, NULL,
                         "cache_key");
  if (rc == SPI_OK)
    rc = register_module(e, SPI_MODULE_COST_MODEL, SPI_BUILTIN_COST_MODEL,
                         strlen(SPI_BUILTIN_COST_MODEL), &m, &e->mem, NULL,
                         "cost");
  /* The first built-in of a kind is its fallback: reference, then the
   * affinity-blind baseline that shadow mode compares against. */
  if (rc == SPI_OK)
    rc = register_module(e, SPI_MODULE_POLICY, SPI_BUILTIN_POLICY,
                         strlen(SPI_BUILTIN_POLICY), &p, &e->mem, NULL,
                         "policy");
  if (rc == SPI_OK)
    rc = register_module(e, SPI_MODULE_POLICY, SPI_BUILTIN_POLICY_BASELINE,
                         strlen(SPI_BUILTIN_POLICY_BASELINE), &ll, &e->mem,
                         NULL, "policy");
  /* Replay stores: the journal first (the default), then memory. */
  spi_replay_store_module js, ms;
  spi__builtin_store_journal(&js);
  spi__builtin_store_memory(&ms);
  void *jstate = rc == SPI_OK ? spi__journal_state_new(&e->mem) : NULL;
  if (rc == SPI_OK && !jstate) rc = SPI_ENOMEM;
  if (rc == SPI_OK) {
    rc = register_module(e, SPI_MODULE_REPLAY_STORE, SPI_BUILTIN_STORE_JOURNAL,
                         strlen(SPI_BUILTIN_STORE_JOURNAL), &js, jstate,
                         spi__journal_state_free, "replay");
    if (rc != SPI_OK) spi__journal_state_free(jstate);
  }
  if (rc == SPI_OK)
    rc = register_module(e, SPI_MODULE_REPLAY_STORE, SPI_BUILTIN_STORE_MEMORY,
                         strlen(SPI_BUILTIN_STORE_MEMORY), &ms, &e->mem, NULL,
                         "replay");
  return rc;
}

static void free_modules(spi_engine *e) {
  spi_modentry *m = e->modules;
  while (m) {
    spi_modentry *next = m->next;
    if (m->destroy) m->destroy(m->state);
    spi__free(&e->mem, m);
    m = next;
  }
  e->modules = NULL;
}

int spi_engine_new(spi_engine **out, const spi_hooks *hooks) {
  if (!out) return SPI_EINVAL;
  *out = NULL;
  spi_mem mem = {default_alloc, default_free, NULL};
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
  e->clock = default_clock;
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
  if (pthread_mutex_init(&e->err_lock, NULL) != 0) {
    pthread_mutex_destroy(&e->config_lock);
    spi__rcu_destroy(&e->rcu);
    spi__free(&mem, e);
    return SPI_ENOMEM;
  }
  if (spi__registry_init(&e->registry, &e->mem) != SPI_OK) {
    pthread_mutex_destroy(&e->err_lock);
    pthread_mutex_destroy(&e->config_lock);
    spi__rcu_destroy(&e->rcu);
    spi__free(&mem, e);
    return SPI_ENOMEM;
  }
  if (spi__nodes_new(e) != SPI_OK) {
    spi__registry_destroy(&e->registry, &e->mem);
    pthread_mutex_destroy(&e->err_lock);
    pthread_mutex_destroy(&e->config_lock);
    spi__rcu_destroy(&e->rcu);
    spi__free(&mem, e);
    return SPI_ENOMEM;
  }
  e->magic = SPI_ENGINE_MAGIC;
  int rc = register_builtins(e);
  if (rc == SPI_OK) rc = spi_engine_configure(e, "{}", 2);
  if (rc != SPI_OK) {
    spi_engine_free(e);
    return rc == SPI_ENOMEM ? SPI_ENOMEM : rc;
  }
  e->errmsg[0] = '\0';
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
  free_modules(engine);
  pthread_mutex_destroy(&engine->config_lock);
  pthread_mutex_destroy(&engine->err_lock);
  spi__rcu_destroy(&engine->rcu);
  engine->magic = SPI_DEAD_MAGIC;
  spi__free(&mem, engine);
}

const char *spi_engine_errmsg(const spi_engine *engine) {
  if (!spi__engine_ok(engine)) return "invalid engine handle";
  return engine->errmsg;
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

/* JSON text of a subtree for a module's configure ("{}" when absent). */
static char *section_text(const cJSON *sec) {
  if (!sec) return NULL;
  return cJSON_PrintUnformatted(sec);
}

/* Whether rc is one of enum spi_status (a module may return anything). */
static int known_status(int rc) {
  return strcmp(spi_strerror(rc), spi_strerror(INT32_MIN)) != 0;
}

static int configure_one(spi_engine *e, spi_modentry *m, const cJSON *sec,
                         const char *shown, void **out_inst, char *err,
                         size_t errcap) {
  char *text = section_text(sec);
  if (sec && !text) {
    spi__errf(err, errcap, "%s: out of memory", shown);
    return SPI_ENOMEM;
  }
  char merr[SPI_ERRMSG_CAP] = "";
  void *inst = NULL;
  atomic_store(&e->configuring, 1);
  int rc = m->configure(m->state, text ? text : "{}", text ? strlen(text) : 2,
                        &inst, merr, sizeof merr);
  atomic_store(&e->configuring, 0);
  cJSON_free(text);
  if (rc != SPI_OK) {
    if (rc > 0 || !known_status(rc)) rc = SPI_EMODULE;
    if (m->builtin)
      spi__errf(err, errcap, "%s", merr[0] ? merr : spi_strerror(rc));
    else
      spi__errf(err, errcap, "%s: %s module \"%s\": %s", shown,
                spi_module_kind_name(m->kind), m->name,
                merr[0] ? merr : spi_strerror(rc));
    if (inst && m->release) m->release(m->state, inst);
    return rc;
  }
  *out_inst = inst;
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
  spi_modentry *m = find_module(e, SPI_MODULE_POLICY, name, strlen(name));
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
  return configure_one(e, m, module_section(root, m), shown, &s->shadow.inst,
                       err, errcap);
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

static int configure_modules(spi_engine *e, const cJSON *root, spi_snapshot *s,
                             char *err, size_t errcap) {
  const cJSON *mods = cJSON_GetObjectItemCaseSensitive(root, "modules");
  const cJSON *mcfg = cJSON_GetObjectItemCaseSensitive(root, "module_config");
  int rc;
  if (mods && (rc = spi__cfg_check_keys(mods, "modules", "modules", err, errcap)))
    return rc;
  if (mcfg) {
    if (!cJSON_IsObject(mcfg)) {
      spi__errf(err, errcap, "module_config: must be an object");
      return SPI_ETYPE;
    }
    for (const cJSON *c = mcfg->child; c; c = c->next) {
      int found = 0;
      for (spi_modentry *m = e->modules; m; m = m->next)
        if (!m->builtin && c->string && strcmp(m->name, c->string) == 0)
          found = 1;
      if (!found) {
        spi__errf(err, errcap, "module_config.%.64s: no user module of that name",
                  c->string ? c->string : "");
        return SPI_EUNKNOWN;
      }
      if (!cJSON_IsObject(c)) {
        spi__errf(err, errcap, "module_config.%.64s: must be an object",
                  c->string);
        return SPI_ETYPE;
      }
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
    spi_modentry *sel = find_module(e, kind, name, nlen);
    if (!sel) {
      spi__errf(err, errcap, "%s: no %s module named \"%.*s\"", path,
                KIND_KEYS[i].key, (int)(nlen > 64 ? 64 : nlen), name);
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
    if ((rc = configure_one(e, bi, bsec, bi->section, &sl->builtin_inst, err,
                            errcap)))
      return rc;
    if (sel == bi) {
      sl->inst = sl->builtin_inst;
    } else {
      char shown[96];
      snprintf(shown, sizeof shown, "module_config.%s", sel->name);
      const cJSON *usec =
          mcfg ? cJSON_GetObjectItemCaseSensitive(mcfg, sel->name) : NULL;
      if ((rc = configure_one(e, sel, usec, shown, &sl->inst, err, errcap)))
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
    cJSON *v = cJSON_Parse(t[i].default_json);
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
  if (rc == SPI_OK) rc = configure_modules(e, root, s, err, sizeof err);
  spi_router_prep prep;
  memset(&prep, 0, sizeof prep);
  if (rc == SPI_OK) rc = spi__router_prepare(e, &s->router, &prep, err, sizeof err);
  if (rc == SPI_OK) {
    rc = effective_json(e, root, s);
    if (rc != SPI_OK) spi__errf(err, sizeof err, "config: out of memory");
  }
  cJSON_Delete(root);
  if (rc != SPI_OK) {
    spi__router_discard(e, &prep);
    snapshot_free(e, s);
    return spi__engine_fail(e, rc, "%s", err);
  }
  snapshot_install(e, s);
  spi__router_commit(e, &prep);
  pthread_mutex_lock(&e->err_lock);
  e->errmsg[0] = '\0';
  pthread_mutex_unlock(&e->err_lock);
  return SPI_OK;
}

int spi_engine_configure(spi_engine *engine, const char *json, size_t len) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  /* A module's configure callback calling back in would deadlock. */
  if (atomic_load(&engine->configuring) &&
      pthread_equal(engine->config_owner, pthread_self()))
    return SPI_EMISUSE;
  if (!json && len) return spi__engine_fail(engine, SPI_EINVAL, "config: NULL json");
  pthread_mutex_lock(&engine->config_lock);
  engine->config_owner = pthread_self();
  int rc = configure_locked(engine, json, len);
  pthread_mutex_unlock(&engine->config_lock);
  return rc;
}

int spi_engine_configure_file(spi_engine *engine, const char *path) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!path) return spi__engine_fail(engine, SPI_EINVAL, "config file: NULL path");
  FILE *f = fopen(path, "rb");
  if (!f)
    return spi__engine_fail(engine, SPI_EIO, "config file %.160s: %s", path,
                       strerror(errno));
  spi_buf b = {0};
  int rc = SPI_OK;
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (b.len + n > SPI_CONFIG_MAX_BYTES) {
      rc = spi__engine_fail(engine, SPI_ETOOBIG, "config file %.160s: over %u bytes",
                       path, SPI_CONFIG_MAX_BYTES);
      break;
    }
    if ((rc = spi__buf_append(&b, &engine->mem, chunk, n)) != SPI_OK) {
      rc = spi__engine_fail(engine, rc, "config file: out of memory");
      break;
    }
  }
  if (rc == SPI_OK && ferror(f))
    rc = spi__engine_fail(engine, SPI_EIO, "config file %.160s: read error", path);
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

/* ------------------------------------------------------ class vocabularies */

const char *spi_class_name(int32_t klass) {
  switch (klass) {
  case SPI_CLASS_UNSET: return "unset";
  case SPI_CLASS_GOLD: return "gold";
  case SPI_CLASS_SILVER: return "silver";
  case SPI_CLASS_BRONZE: return "bronze";
  default: return "invalid";
  }
}

const char *spi_service_tier_name(int32_t tier) {
  switch (tier) {
  case SPI_SERVICE_TIER_UNSET: return "";
  case SPI_SERVICE_TIER_AUTO: return "auto";
  case SPI_SERVICE_TIER_DEFAULT: return "default";
  case SPI_SERVICE_TIER_FLEX: return "flex";
  case SPI_SERVICE_TIER_PRIORITY: return "priority";
  case SPI_SERVICE_TIER_SCALE: return "scale";
  default: return "invalid";
  }
}

static int valid_class(int32_t c) {
  return c >= SPI_CLASS_GOLD && c <= SPI_CLASS_BRONZE;
}

int spi_engine_class_to_priority(spi_engine *engine, int32_t scheme,
                                 int32_t klass, int32_t *out_priority) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!out_priority || !valid_class(klass)) return SPI_EINVAL;
  if (scheme != SPI_PRIO_VLLM && scheme != SPI_PRIO_LLMD) return SPI_EINVAL;
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(engine, &pin);
  *out_priority = scheme == SPI_PRIO_VLLM ? s->vllm_prio[klass]
                                          : s->llmd_prio[klass];
  spi__snap_release(engine, pin);
  return SPI_OK;
}

int spi_engine_class_from_priority(spi_engine *engine, int32_t scheme,
                                   int32_t priority, int32_t *out_class) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!out_class) return SPI_EINVAL;
  if (scheme != SPI_PRIO_VLLM && scheme != SPI_PRIO_LLMD) return SPI_EINVAL;
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(engine, &pin);
  /* Thresholds: anything at least as urgent as a class's value is that class;
   * llm-d's negative (sheddable) values land in bronze. */
  if (scheme == SPI_PRIO_VLLM)
    *out_class = priority <= s->vllm_prio[1]   ? SPI_CLASS_GOLD
                 : priority <= s->vllm_prio[2] ? SPI_CLASS_SILVER
                                               : SPI_CLASS_BRONZE;
  else
    *out_class = priority >= s->llmd_prio[1]   ? SPI_CLASS_GOLD
                 : priority >= s->llmd_prio[2] ? SPI_CLASS_SILVER
                                               : SPI_CLASS_BRONZE;
  spi__snap_release(engine, pin);
  return SPI_OK;
}

int spi_engine_class_to_service_tier(spi_engine *engine, int32_t klass,
                                     int32_t *out_tier) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!out_tier || !valid_class(klass)) return SPI_EINVAL;
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(engine, &pin);
  *out_tier = s->service_tier[klass];
  spi__snap_release(engine, pin);
  return SPI_OK;
}

int spi_engine_class_from_service_tier(spi_engine *engine, int32_t tier,
                                       int32_t *out_class) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!out_class || tier < SPI_SERVICE_TIER_UNSET ||
      tier > SPI_SERVICE_TIER_SCALE)
    return SPI_EINVAL;
  if (tier == SPI_SERVICE_TIER_UNSET) {
    *out_class = SPI_CLASS_UNSET;
    return SPI_OK;
  }
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(engine, &pin);
  /* The first class mapped to this tier; tiers no class maps to ("auto",
   * and by default "scale") are the default tier's class. */
  int32_t c = SPI_CLASS_UNSET;
  for (int32_t k = SPI_CLASS_GOLD; k <= SPI_CLASS_BRONZE && !c; k++)
    if (s->service_tier[k] == tier) c = k;
  if (!c && tier == SPI_SERVICE_TIER_SCALE) c = SPI_CLASS_GOLD;
  for (int32_t k = SPI_CLASS_GOLD; k <= SPI_CLASS_BRONZE && !c; k++)
    if (s->service_tier[k] == SPI_SERVICE_TIER_DEFAULT) c = k;
  if (!c) c = SPI_CLASS_SILVER;
  *out_class = c;
  spi__snap_release(engine, pin);
  return SPI_OK;
}
