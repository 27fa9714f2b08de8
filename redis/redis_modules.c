/*
 * redis_modules.c - the one entry point of libspotinfer_redis
 * (spi_redis_get_module): a table of the modules the library provides, by
 * kind and name. Each module file contributes one row.
 */
#include <string.h>

#include "spotinfer/spotinfer_redis.h"
#include "redis_modules.h"

typedef struct spr_module_row {
  int32_t kind;
  const char *name;
  size_t struct_size; /* the kind's struct as this library knows it */
  spr_module_fill_fn fill;
} spr_module_row;

/* One row per module; the table ends with a row of kind 0. */
static const spr_module_row ROWS[] = {
    {SPI_MODULE_REPLAY_STORE, SPI_REDIS_STORE_NAME,
     sizeof(spi_replay_store_module), spr_store_fill},
    {SPI_MODULE_FLEET_BUS, SPI_REDIS_STORE_NAME, sizeof(spi_fleet_bus_module),
     spr_bus_fill},
    {0, NULL, 0, NULL},
};

int spi_redis_get_module(int32_t kind, const char *name, void *module,
                         size_t module_size, void **state,
                         spi_module_destroy_fn *destroy) {
  if (!name || !module || !state || !destroy) return SPI_EINVAL;
  *state = NULL;
  *destroy = NULL;
  for (size_t i = 0; ROWS[i].name; i++) {
    const spr_module_row *r = &ROWS[i];
    if (r->kind != kind || strcmp(r->name, name) != 0) continue;
    if (module_size < r->struct_size) return SPI_EABI;
    memset(module, 0, module_size);
    return r->fill(module, state, destroy);
  }
  return SPI_ENOTFOUND;
}

const char *spi_redis_version(void) { return SPI_VERSION_STRING; }
