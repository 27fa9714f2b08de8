/*
 * modules.c - the engine's module registry: registration checks and copies a
 * module struct, lists names, and registers the built-ins. Configure (the
 * roof, engine.c) selects registered modules by name and configures each
 * through spi__module_configure.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine.h"
#include "replay.h" /* spi__module_register_loaded */

spi_modentry *spi__module_find(const spi_engine *e, int32_t kind,
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
  size_t need = 0, full = 0;
  switch (kind) {
  case SPI_MODULE_CLASSIFIER:
    need = offsetof(spi_classifier_module, classify_levels);
    full = sizeof(spi_classifier_module);
    break;
  case SPI_MODULE_KEY_BUILDER: need = sizeof(spi_key_builder_module); break;
  case SPI_MODULE_COST_MODEL: need = sizeof(spi_cost_model_module); break;
  case SPI_MODULE_POLICY: need = sizeof(spi_policy_module); break;
  case SPI_MODULE_REPLAY_STORE:
    /* The queue-store callbacks (since 0.3.0) are an optional tail. */
    need = offsetof(spi_replay_store_module, enqueue);
    full = sizeof(spi_replay_store_module);
    break;
  case SPI_MODULE_FLEET_BUS: need = sizeof(spi_fleet_bus_module); break;
  default:
    return spi__engine_fail(e, SPI_ENOTSUP,
                       "module kind %s is reserved and not defined in %s",
                       spi_module_kind_name(kind), SPI_VERSION_STRING);
  }
  /* A struct must reach the end of its kind's first version (need). Fields
   * added since are an optional tail: an older caller's struct ends before
   * them and they read as NULL. A newer caller's larger struct is accepted:
   * the fields this version knows are copied, the tail it does not know is
   * ignored. */
  if (!full) full = need;
  if (size < need)
    return spi__engine_fail(e, SPI_EABI,
                            "%s module struct_size %u, expected at least %zu",
                            spi_module_kind_name(kind), size, need);
  memset(&m->m, 0, sizeof m->m);
  memcpy(&m->m, module, size >= full ? full : need);
  switch (kind) {
  case SPI_MODULE_CLASSIFIER:
    m->configure = m->m.classifier.configure;
    m->release = m->m.classifier.release;
    m->on_failure = m->m.classifier.on_failure;
    if (!m->m.classifier.classify && !m->m.classifier.classify_levels)
      goto missing;
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
    if (!m->m.replay_store.release || !m->m.replay_store.stats) goto missing;
    if (m->m.replay_store.enqueue
            ? !m->m.replay_store.claim || !m->m.replay_store.ack ||
                  !m->m.replay_store.nack || !m->m.replay_store.queue_stats
            : !m->m.replay_store.recover || !m->m.replay_store.append ||
                  !m->m.replay_store.sync)
      goto missing;
    break;
  case SPI_MODULE_FLEET_BUS:
    m->configure = m->m.fleet_bus.configure;
    m->release = m->m.fleet_bus.release;
    m->on_failure = SPI_ON_FAILURE_ERROR; /* not consulted: see the header */
    if (!m->m.fleet_bus.release || !m->m.fleet_bus.publish ||
        !m->m.fleet_bus.poll)
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
  if (kind < SPI_MODULE_CLASSIFIER || kind > SPI_MODULE_FLEET_BUS)
    return spi__engine_fail(e, SPI_EINVAL, "module kind %d is not valid", (int)kind);
  if (!valid_module_name(name, name_len))
    return spi__engine_fail(e, SPI_EINVAL,
                       "module name must be 1..63 bytes of [A-Za-z0-9_.-]");
  if (!module) return spi__engine_fail(e, SPI_EINVAL, "module struct is NULL");
  if (spi__module_find(e, kind, name, name_len))
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
  /* Append: listing order is registration order. Published with release
   * order: a module loaded while other threads walk the list (replay.store
   * "redis", spi__module_register_loaded) is seen whole or not at all. */
  spi_modentry **tail = &e->modules;
  while (*tail) tail = &(*tail)->next;
  __atomic_store_n(tail, m, __ATOMIC_RELEASE);
  return SPI_OK;
}

int spi__module_register_loaded(spi_engine *e, int32_t kind, const char *name,
                                size_t name_len, const void *module,
                                void *state, spi_module_destroy_fn destroy) {
  return register_module(e, kind, name, name_len, module, state, destroy,
                         NULL);
}

int spi_engine_register_module(spi_engine *engine, int32_t kind,
                               const char *name, size_t name_len,
                               const void *module, void *state,
                               spi_module_destroy_fn destroy) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (atomic_load(&engine->configuring))
    return spi__engine_fail(engine, SPI_EMISUSE,
                            "module: registered while the engine is being "
                            "configured");
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

int spi__modules_register_builtins(spi_engine *e) {
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

void spi__modules_free(spi_engine *e) {
  spi_modentry *m = e->modules;
  while (m) {
    spi_modentry *next = m->next;
    if (m->destroy) m->destroy(m->state);
    spi__free(&e->mem, m);
    m = next;
  }
  e->modules = NULL;
}

/* JSON text of a subtree for a module's configure ("{}" when absent). */
static char *section_text(const cJSON *sec) {
  if (!sec) return NULL;
  return spi__cjson_print(sec);
}

/* Whether rc is one of enum spi_status (a module may return anything). */
static int known_status(int rc) {
  return strcmp(spi_strerror(rc), spi_strerror(INT32_MIN)) != 0;
}

/* The engines whose module configure callbacks this thread is running,
 * innermost first: a chain of frames on the thread's own stack, so another
 * thread configuring at the same time neither reads nor writes it. A
 * callback may configure a second engine, whose callback may not
 * configure the first again: every engine of the chain is refused. */
typedef struct configure_frame {
  const spi_engine *e;
  const struct configure_frame *outer;
} configure_frame;

static _Thread_local const configure_frame *configuring_here;

int spi__in_module_configure(const spi_engine *e) {
  for (const configure_frame *f = configuring_here; f; f = f->outer)
    if (f->e == e) return 1;
  return 0;
}

/* Configure one module from its config section (NULL: "{}"), naming it as
 * shown in messages. The roof (engine.c) calls it for every selected module
 * and the fleet bus (notice_bus.c) for its own. */
int spi__module_configure(spi_engine *e, spi_modentry *m, const cJSON *sec,
                          const char *shown, void **out_inst, char *err,
                          size_t errcap) {
  char *text = section_text(sec);
  if (sec && !text) {
    spi__errf(err, errcap, "%s: out of memory", shown);
    return SPI_ENOMEM;
  }
  char merr[SPI_ERRMSG_CAP] = "";
  void *inst = NULL;
  configure_frame here = {e, configuring_here};
  configuring_here = &here;
  atomic_store(&e->configuring, 1);
  int rc = m->configure(m->state, text ? text : "{}", text ? strlen(text) : 2,
                        &inst, merr, sizeof merr);
  atomic_store(&e->configuring, 0);
  configuring_here = here.outer;
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
