/*
 * classmap.c - the class vocabularies: a class to and from vLLM and llm-d
 * priorities and OpenAI service tiers, read from the pinned snapshot's
 * priority_map.
 */
#include "engine.h"

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
