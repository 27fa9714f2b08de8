/*
 * redis_modules.h - what each module file of libspotinfer_redis gives the
 * entry point (redis_modules.c). Not exported.
 */
#ifndef SPI_REDIS_MODULES_H
#define SPI_REDIS_MODULES_H

#include "spotinfer/spotinfer_module.h"

/* Fill a zeroed module struct of the row's kind (as large as this library's
 * struct of that kind) and make a new state. SPI_ENOMEM on failure. */
typedef int (*spr_module_fill_fn)(void *module, void **state,
                                  spi_module_destroy_fn *destroy);

/* store_redis.c: the "redis" replay store. */
int spr_store_fill(void *module, void **state, spi_module_destroy_fn *destroy);
/* bus_redis.c: the "redis" fleet bus. */
int spr_bus_fill(void *module, void **state, spi_module_destroy_fn *destroy);

#endif /* SPI_REDIS_MODULES_H */
