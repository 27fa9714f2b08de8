/*
 * module_load.c - optional modules the engine loads by itself. A
 * "replay.store" or "modules.fleet_bus" of "redis" that nobody registered
 * loads libspotinfer_redis.so.0 (spotinfer_redis.h), asks its one entry
 * point for the module of that kind and registers it under that name, so a
 * configuration is all a binding needs.
 *
 * Where the file is looked for: beside the libspotinfer that runs (so an
 * installed prefix, a wheel or a build tree finds its own copy), then by
 * the dynamic loader's search (LD_LIBRARY_PATH, the cache, system dirs).
 * A library once loaded stays loaded for the life of the process (it is
 * never dlclose()d: engines freed later still run its destroy callback).
 *
 * Registration must not race other calls on the engine's module list: it
 * runs under config_lock (spi_engine_configure holds it already when it
 * reads "replay" and "modules"; spi_replay_open takes it), and the module
 * is appended to the list with a release store, so a thread walking the
 * list without the lock (spi_engine_module_name) sees it whole or not at
 * all. load_mu, process-wide, is taken under config_lock and is a leaf.
 */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h> /* access */

#include "engine.h"
#include "replay.h" /* spi__module_register_loaded */

#define LOAD_NAME "redis"
#define LOAD_FILE "libspotinfer_redis.so.0"
#define LOAD_ENTRY "spi_redis_get_module"

typedef int (*get_module_fn)(int32_t kind, const char *name, void *module,
                             size_t module_size, void **state,
                             spi_module_destroy_fn *destroy);

/* Process-wide: one dlopen, whatever the number of engines. */
static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;
static get_module_fn load_entry;

/* The directory of the libspotinfer this code runs in, with a '/', or "". */
static void own_dir(char *buf, size_t cap) {
  Dl_info info;
  buf[0] = '\0';
  if (!dladdr((const void *)&load_mu, &info) || !info.dli_fname) return;
  const char *slash = strrchr(info.dli_fname, '/');
  if (!slash) return;
  size_t n = (size_t)(slash - info.dli_fname) + 1;
  if (n + sizeof LOAD_FILE > cap) return;
  memcpy(buf, info.dli_fname, n);
  buf[n] = '\0';
}

/* With load_mu held: the entry point, loading the library the first time.
 * what names the option in messages. */
static get_module_fn entry_locked(const char *what, char *err, size_t cap) {
  if (load_entry) return load_entry;
  char path[4096], beside[SPI_ERRMSG_CAP] = "";
  own_dir(path, sizeof path - sizeof LOAD_FILE);
  void *h = NULL;
  if (path[0]) {
    strcat(path, LOAD_FILE);
    h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    /* There but not loadable (its libhiredis missing, say): that is the
     * reason to give, not the search that follows. */
    const char *why = h ? NULL : dlerror();
    if (why && access(path, F_OK) == 0) {
      size_t n = strlen(path);
      if (strncmp(why, path, n) == 0 && why[n] == ':') why += n + 1;
      while (*why == ' ') why++;
      spi__errf(beside, sizeof beside, "the one beside libspotinfer: %s", why);
    }
  }
  if (!h) h = dlopen(LOAD_FILE, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char *why = dlerror();
    spi__errf(err, cap,
              "%s: \"" LOAD_NAME "\" needs " LOAD_FILE " and libhiredis "
              "(Debian: libhiredis0.14): %s",
              what, beside[0] ? beside : why ? why : "not found");
    return NULL;
  }
  void *sym = dlsym(h, LOAD_ENTRY);
  if (!sym) {
    spi__errf(err, cap, "%s: " LOAD_FILE " has no " LOAD_ENTRY, what);
    dlclose(h);
    return NULL;
  }
  /* POSIX: a function pointer round-trips through void *. */
  memcpy(&load_entry, &sym, sizeof sym);
  return load_entry;
}

int spi__module_autoload(spi_engine *e, int32_t kind, const char *name,
                         size_t len, const char *what, char *err, size_t cap) {
  if (len != strlen(LOAD_NAME) || memcmp(name, LOAD_NAME, len) != 0)
    return SPI_ENOTFOUND;
  if (kind != SPI_MODULE_REPLAY_STORE && kind != SPI_MODULE_FLEET_BUS)
    return SPI_ENOTFOUND;
  if (spi__module_find(e, kind, name, len)) return SPI_OK;
  pthread_mutex_lock(&load_mu);
  get_module_fn get = entry_locked(what, err, cap);
  pthread_mutex_unlock(&load_mu);
  if (!get) return SPI_ENOTFOUND;
  union {
    spi_replay_store_module store;
    spi_fleet_bus_module bus;
  } m;
  size_t size = kind == SPI_MODULE_REPLAY_STORE ? sizeof m.store : sizeof m.bus;
  void *state = NULL;
  spi_module_destroy_fn destroy = NULL;
  int rc = get(kind, LOAD_NAME, &m, size, &state, &destroy);
  if (rc != SPI_OK) {
    spi__errf(err, cap, "%s: " LOAD_FILE ": " LOAD_ENTRY " has no %s: %s",
              what, spi_module_kind_name(kind), spi_strerror(rc));
    return rc == SPI_ENOMEM ? rc : SPI_EMODULE;
  }
  rc = spi__module_register_loaded(e, kind, LOAD_NAME, len, &m, state,
                                   destroy);
  if (rc != SPI_OK) {
    if (destroy) destroy(state);
    spi__errf(err, cap, "%s: registering \"" LOAD_NAME "\": %s", what,
              spi_strerror(rc));
  }
  return rc;
}
