/*
 * spotinfer_extras.h - the rest of libspotinfer's public API: what a proxy
 * does not need on its request path. Cost calculators (pure formulas), the
 * class maps to and from vLLM / llm-d priorities and OpenAI service tiers,
 * the listing of configuration options, and the cost ledger read-back.
 *
 * Same conventions, same ABI promise and the same library as spotinfer.h,
 * which it includes; every function here is exported and bound in Python
 * and Go. Until 0.2.0 these were declared in spotinfer.h.
 */
#ifndef SPOTINFER_EXTRAS_H
#define SPOTINFER_EXTRAS_H

#include <stddef.h>
#include <stdint.h>

#include "spotinfer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------- listing options */

enum spi_option_type {
  SPI_OPT_BOOL = 1,
  SPI_OPT_INT = 2,
  SPI_OPT_DOUBLE = 3,
  SPI_OPT_STRING = 4,
  SPI_OPT_ENUM = 5,   /* a string from a fixed set, listed in doc */
  SPI_OPT_LIST = 6,   /* an array; its element options follow as path[] */
  SPI_OPT_OBJECT = 7  /* a nested object */
};

/* One accepted configuration option. All strings are static. */
typedef struct spi_option_info {
  size_t struct_size;
  const char *path;          /* e.g. "cache_key.block_bytes" */
  int32_t type;              /* enum spi_option_type */
  int32_t reserved0;
  const char *default_json;  /* the default as JSON text */
  double min_value;          /* numeric bounds (inclusive); 0 otherwise */
  double max_value;
  const char *doc;           /* one line */
} spi_option_info;

/* Number of options spi_option_get() lists. */
SPI_API size_t spi_option_count(void);
/* Fill *out for option index (0 <= index < spi_option_count()).
 * Errors: SPI_EINVAL (out NULL or struct_size too small), SPI_ENOTFOUND. */
SPI_API int spi_option_get(size_t index, spi_option_info *out);

/* ----------------------------------------------------------- class maps */

/* Map a class to a priority value of a scheme using the engine's
 * classifier.priority_map. Errors: SPI_EINVAL. */
SPI_API int spi_engine_class_to_priority(spi_engine *engine, int32_t scheme,
                                         int32_t klass, int32_t *out_priority);
/* Map a priority value of a scheme back to a class. Errors: SPI_EINVAL. */
SPI_API int spi_engine_class_from_priority(spi_engine *engine, int32_t scheme,
                                           int32_t priority,
                                           int32_t *out_class);
/* Map a class to an OpenAI service tier (enum spi_service_tier) and back
 * (SPI_SERVICE_TIER_UNSET maps to SPI_CLASS_UNSET). Errors: SPI_EINVAL. */
SPI_API int spi_engine_class_to_service_tier(spi_engine *engine, int32_t klass,
                                             int32_t *out_tier);
SPI_API int spi_engine_class_from_service_tier(spi_engine *engine,
                                               int32_t tier,
                                               int32_t *out_class);

/* ------------------------------------------------------ cost calculators */

/*
 * Pure cost formulas. They validate every input (NaN, infinity, negative,
 * or zero where zero is meaningless give SPI_ERANGE; a NULL out gives
 * SPI_EINVAL) and never produce NaN or infinity. Thread-safe, no engine.
 */

/* $ per million tokens = usd_per_gpu_hour * gpus / (tokens_per_s * 3600) * 1e6 */
SPI_API int spi_cost_per_million_tokens(double usd_per_gpu_hour, uint32_t gpus,
                                        double tokens_per_s, double *out);
/* Tokens/s needed to reach target_usd_per_million on that hardware. */
SPI_API int spi_cost_break_even_tps(double usd_per_gpu_hour, uint32_t gpus,
                                    double target_usd_per_million, double *out);

/* The spot-with-interruptions calculation. */
typedef struct spi_spot_cost {
  size_t struct_size;
  double effective_hours;        /* spot hours minus restart overhead lost */
  double spot_cost;              /* spot_hours * spot_usd_per_hour */
  double cost_per_effective_hour;
  double on_demand_cost;         /* effective_hours * on_demand price */
  double savings;                /* on_demand_cost - spot_cost */
  double savings_fraction;       /* savings / on_demand_cost */
  double expected_interruptions; /* spot_hours * interruption_rate */
} spi_spot_cost;

/*
 * Effective cost of spot_hours of spot capacity when interruption_rate of the
 * hours (0..1) are interrupted and each interruption loses
 * restart_overhead_hours of work. Errors: SPI_EINVAL, SPI_ERANGE (including
 * overhead that eats every hour).
 */
SPI_API int spi_cost_spot_effective(double spot_hours, double spot_usd_per_hour,
                                    double on_demand_usd_per_hour,
                                    double interruption_rate,
                                    double restart_overhead_hours,
                                    spi_spot_cost *out);

/* Tokens per month above which self-hosting (gpus at usd_per_gpu_hour, for
 * hours_per_month) is cheaper than an API at api_usd_per_million. */
SPI_API int spi_cost_self_host_break_even(double usd_per_gpu_hour,
                                          uint32_t gpus, double hours_per_month,
                                          double api_usd_per_million,
                                          double *out_tokens_per_month);

/* KV-cache bytes of one sequence:
 * 2 * layers * kv_heads * head_dim * seq_len * bytes_per_element. */
SPI_API int spi_cost_kv_bytes_per_sequence(uint32_t layers, uint32_t kv_heads,
                                           uint32_t head_dim, uint32_t seq_len,
                                           double bytes_per_element,
                                           double *out_bytes);
/* Sequences of kv_bytes_per_sequence that fit in gpu_memory_bytes after
 * model_bytes, times utilization (0..1]. Rounded down; may be 0. */
SPI_API int spi_cost_max_sequences(double gpu_memory_bytes, double model_bytes,
                                   double utilization,
                                   double kv_bytes_per_sequence,
                                   uint64_t *out_sequences);

/* ------------------------------------------------------------ the ledger */

/* One row of the cost ledger: completed work by tenant, model, pool, class. */
typedef struct spi_ledger_row {
  size_t struct_size;
  char tenant[SPI_ID_MAX];   /* "" when the request named none */
  char model[SPI_ID_MAX];
  int32_t pool;
  int32_t klass;
  uint64_t completed;        /* SPI_TICKET_OK */
  uint64_t failed;           /* every other status */
  uint64_t prompt_tokens, output_tokens, cached_tokens;
  double gpu_seconds;
  double usd;
  double usd_per_completed;  /* usd / completed (0 if none) */
  double tokens_per_gpu_second;
  /* Interruptions (spot work lost, and the replays that recovered it). */
  uint64_t interrupted;      /* tickets finished SPI_TICKET_INTERRUPTED */
  uint64_t wasted_output_tokens; /* generated, then cut off */
  uint64_t reprefilled_tokens;   /* prompt + partial output prefilled again */
  double wasted_usd;         /* GPU time of the work that was lost */
  uint64_t replays;          /* tickets that were replays (SPI_REQ_REPLAY_SINCE_NS) */
  double replay_latency_ms;  /* sum: interruption to the replay's first token */
  double fallback_on_demand_seconds; /* on-demand time spent on replays */
} spi_ledger_row;

/* Rows in the ledger: at most router.ledger_max_rows keyed rows, plus one
 * row per pool and class with tenant and model "(other)" into which further
 * combinations fold. Rows keep their index once created. */
SPI_API size_t spi_ledger_count(spi_engine *engine);
SPI_API int spi_ledger_row_at(spi_engine *engine, size_t index,
                              spi_ledger_row *out);

#ifdef __cplusplus
}
#endif

#endif /* SPOTINFER_EXTRAS_H */
