/*
 * notice_bus_load.c - a "modules.fleet_bus" of "redis" that nobody has
 * registered: the engine loads libspotinfer_redis.so.0 and registers the
 * bus it hands out, as replay_load.c does for a "replay.store" of "redis",
 * so a configuration is all the Python and Go bindings need. Looked for
 * beside the libspotinfer that runs, then by the dynamic loader's search;
 * never unloaded (dlopen counts references: both loaders share one copy).
 * Runs under config_lock (spi_engine_configure).
 */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <string.h>

#include "engine.h"
#include "replay.h" /* spi__module_register_loaded */

#define LOAD_NAME "redis"
#define LOAD_FILE "libspotinfer_redis.so.0"
#define LOAD_ENTRY "spi_redis_get_module"

typedef int (*get_module_fn)(int32_t kind, const char *name, void *module,
                             size_t module_size, void **state,
                             spi_module_destroy_fn *destroy);

/* An object of this library, for dladdr to say where the library is. */
static const char here;

/* The library's entry point, loading it if need be; NULL with err set. */
static get_module_fn entry(char *err, size_t cap) {
  char path[4096] = "";
  Dl_info info;
  if (dladdr(&here, &info) && info.dli_fname) {
    const char *slash = strrchr(info.dli_fname, '/');
    size_t n = slash ? (size_t)(slash - info.dli_fname) + 1 : 0;
    if (n && n + sizeof LOAD_FILE <= sizeof path) {
      memcpy(path, info.dli_fname, n);
      memcpy(path + n, LOAD_FILE, sizeof LOAD_FILE);
    }
  }
  void *h = path[0] ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
  if (!h) h = dlopen(LOAD_FILE, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char *why = dlerror();
    spi__errf(err, cap,
              "modules.fleet_bus: \"" LOAD_NAME "\" needs " LOAD_FILE
              " (libspotinfer_redis, built when hiredis is installed): %s",
              why ? why : "not found");
    return NULL;
  }
  void *sym = dlsym(h, LOAD_ENTRY);
  if (!sym) {
    spi__errf(err, cap, "modules.fleet_bus: " LOAD_FILE " has no " LOAD_ENTRY);
    return NULL; /* h stays open: harmless, and another loader may share it */
  }
  get_module_fn fn;
  memcpy(&fn, &sym, sizeof sym); /* POSIX: round-trips through void * */
  return fn;
}

int spi__fleet_autoload(spi_engine *e, const char *name, size_t len,
                        char *err, size_t cap) {
  if (len != strlen(LOAD_NAME) || memcmp(name, LOAD_NAME, len) != 0)
    return SPI_ENOTFOUND;
  get_module_fn get = entry(err, cap);
  if (!get) return SPI_ENOTFOUND;
  spi_fleet_bus_module m;
  void *state = NULL;
  spi_module_destroy_fn destroy = NULL;
  int rc = get(SPI_MODULE_FLEET_BUS, LOAD_NAME, &m, sizeof m, &state, &destroy);
  if (rc != SPI_OK) {
    spi__errf(err, cap, "modules.fleet_bus: " LOAD_FILE ": " LOAD_ENTRY
              " has no fleet bus: %s", spi_strerror(rc));
    return rc == SPI_ENOMEM ? rc : SPI_EMODULE;
  }
  rc = spi__module_register_loaded(e, SPI_MODULE_FLEET_BUS, LOAD_NAME, len, &m,
                                   state, destroy);
  if (rc != SPI_OK) {
    if (destroy) destroy(state);
    spi__errf(err, cap, "modules.fleet_bus: registering \"" LOAD_NAME "\": %s",
              spi_strerror(rc));
  }
  return rc;
}
