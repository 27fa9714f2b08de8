/*
 * spotinfer_redis.h - libspotinfer_redis, the optional Redis modules of
 * libspotinfer: a replay store whose queue lives in Redis Streams, so that
 * several proxy processes share one replay queue (docs/redis.md), and a
 * fleet bus (kind fleet_bus, also named "redis": {"modules": {"fleet_bus":
 * "redis"}}) through which the engines share interruption notices and
 * spot-pool cooldowns on one stream (README, "Running several proxy
 * instances"); the engine loads it by itself for that name too.
 *
 * The library depends on hiredis (and OpenSSL for TLS), not on
 * libspotinfer itself: it only hands out module structs, which the engine
 * registers like any user module. Two ways to use it:
 *
 *   - By configuration alone: {"replay": {"store": "redis", "store_config":
 *     {...}}}. When an engine meets a store named "redis" that nobody has
 *     registered, it loads libspotinfer_redis.so.0 itself (dlopen, once per
 *     process) and registers the module it gets from spi_redis_get_module()
 *     under that name. This is what the Python and Go bindings rely on.
 *   - By hand, e.g. to register it under another name or with a static
 *     build: call spi_redis_get_module() and pass what it fills to
 *     spi_engine_register_module().
 *
 * Since: 0.3.0.
 */
#ifndef SPOTINFER_REDIS_H
#define SPOTINFER_REDIS_H

#include "spotinfer/spotinfer_module.h" /* installed beside it */

#ifdef __cplusplus
extern "C" {
#endif

#if defined(SPI_REDIS_BUILDING) && defined(__GNUC__)
#define SPI_REDIS_API __attribute__((visibility("default")))
#else
#define SPI_REDIS_API
#endif

/* The name the engine registers the replay store under when it loads the
 * library by itself. */
#define SPI_REDIS_STORE_NAME "redis"
/* The file the engine loads, and the entry point it looks up. */
#define SPI_REDIS_LIBRARY "libspotinfer_redis.so.0"
#define SPI_REDIS_ENTRY "spi_redis_get_module"

/* The signature of spi_redis_get_module, for dlsym(). */
typedef int (*spi_redis_get_module_fn)(int32_t kind, const char *name,
                                       void *module, size_t module_size,
                                       void **state,
                                       spi_module_destroy_fn *destroy);

/*
 * Fill *module (a struct of kind's type, module_size bytes: e.g.
 * sizeof(spi_replay_store_module)) with the library's module of that kind
 * named name ("redis" for the replay store), and *state / *destroy with
 * what spi_engine_register_module() takes next. Each call makes a new
 * state; if registration fails and *destroy is not NULL, call
 * (*destroy)(*state) yourself.
 * Errors: SPI_EINVAL (NULL argument), SPI_ENOTFOUND (no such module here),
 * SPI_EABI (module_size smaller than this library's struct), SPI_ENOMEM.
 */
SPI_REDIS_API int spi_redis_get_module(int32_t kind, const char *name,
                                       void *module, size_t module_size,
                                       void **state,
                                       spi_module_destroy_fn *destroy);

/* The library's version, SPI_VERSION_STRING of the headers it was built
 * with. */
SPI_REDIS_API const char *spi_redis_version(void);

#ifdef __cplusplus
}
#endif

#endif /* SPOTINFER_REDIS_H */
