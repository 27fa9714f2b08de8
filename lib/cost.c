/*
 * cost.c - the cost formulas and the built-in "reference" cost model.
 *
 * The pure formulas
 * -----------------
 * GPU time is the only thing a request really costs, so everything here is
 * GPU-hours converted to dollars:
 *
 *   $/M tokens        = usd_per_gpu_hour * gpus / (tokens_per_s * 3600) * 1e6
 *   break-even tok/s  = usd_per_gpu_hour * gpus * 1e6 / (3600 * target $/M)
 *   self-host break-even tokens/month
 *                     = usd_per_gpu_hour * gpus * hours_per_month
 *                       / api_usd_per_million * 1e6
 *   KV bytes/sequence = 2 (K and V) * layers * kv_heads * head_dim * seq_len
 *                       * bytes_per_element
 *   max sequences     = floor((gpu_memory - model) * utilization / kv_bytes)
 *
 * Spot with interruptions: of spot_hours paid for, spot_hours * rate hours
 * see an interruption, and each one throws away restart_overhead_hours of
 * work. The bill is still spot_hours * spot price, but only
 *
 *   effective_hours = spot_hours - spot_hours * rate * restart_overhead_hours
 *
 * did useful work, so the price of a useful hour is spot_cost /
 * effective_hours, and the fair comparison is effective_hours bought on
 * demand (which is never interrupted). Example: 1000 h at $1.80 spot vs
 * $4.50 on demand, 5% interrupted, 10 min lost each: 50 interruptions,
 * 991.67 useful hours, $1.8151 per useful hour, $4462.50 on demand,
 * $2662.50 (59.66%) saved.
 *
 * Every input is checked (NaN, infinity, negative, and zero where zero has no
 * meaning give SPI_ERANGE), every result is checked to be finite (a product
 * that overflows is SPI_ERANGE, never an infinity handed back), and *out is
 * written only on success. Nothing here needs libm: rounding is done on
 * integers so the library keeps its dependency list short.
 *
 * The reference cost model (the "cost" config section)
 * ----------------------------------------------------
 * A replica is gpus_per_replica GPUs that, with continuous batching, prefill
 * prefill_tokens_per_s prompt tokens and decode decode_tokens_per_s output
 * tokens per second in aggregate. A request's share of the replica is then
 *
 *   gpu_seconds = prompt_tokens / prefill_tokens_per_s
 *               + output_tokens / decode_tokens_per_s
 *   usd         = gpu_seconds * gpus_per_replica * hourly / 3600
 *
 * where hourly is the on-demand price per GPU-hour, or for spot the price
 * per *effective* GPU-hour from the interruption formula above (with
 * spot_interruption_rate and restart_overhead_s), so spot carries the cost
 * of the work it loses. usd_per_million is the pool's $/M output tokens at
 * decode_tokens_per_s with that same hourly price.
 *
 * Token counts, first that applies:
 *   prompt: the request's prompt_tokens, else the number of token ids given,
 *           else ceil(canonical prompt bytes / bytes_per_token);
 *   output: expected_output_tokens, else max_output_tokens (the cap is the
 *           worst case), else default_output_tokens.
 *
 * The model does not discount prefix-cache hits: whether a prefix is warm
 * depends on the replica the request lands on, which pricing does not know.
 * Everything that depends only on the configuration (the effective spot
 * price, each pool's $/M) is computed once, in configure; the instance is
 * immutable afterwards, so price() is safe from any number of threads.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine.h"

/* The cost section is a handful of numbers; anything larger is a mistake. */
#define COST_MAX_CONFIG_BYTES 65536

/* Rounding without libm works on integers: below 2^52 a double may have a
 * fraction, and a uint64_t holds anything below 2^64. */
#define COST_TWO_POW_52 4503599627370496.0
#define COST_TWO_POW_64 18446744073709551616.0

/* isfinite() is a macro, not a libm call. */
static int finite_num(double x) { return isfinite(x); }

static int finite_pos(double x) { return finite_num(x) && x > 0.0; }
static int finite_nonneg(double x) { return finite_num(x) && x >= 0.0; }

/* ------------------------------------------------------- pure formulas */

SPI_API int spi_cost_per_million_tokens(double usd_per_gpu_hour, uint32_t gpus,
                                        double tokens_per_s, double *out) {
  if (!out) return SPI_EINVAL;
  if (!finite_pos(usd_per_gpu_hour) || gpus == 0 || !finite_pos(tokens_per_s))
    return SPI_ERANGE;
  double usd_per_s = usd_per_gpu_hour * (double)gpus / 3600.0;
  double r = usd_per_s / tokens_per_s * 1e6;
  if (!finite_pos(r)) return SPI_ERANGE;
  *out = r;
  return SPI_OK;
}

SPI_API int spi_cost_break_even_tps(double usd_per_gpu_hour, uint32_t gpus,
                                    double target_usd_per_million,
                                    double *out) {
  if (!out) return SPI_EINVAL;
  if (!finite_pos(usd_per_gpu_hour) || gpus == 0 ||
      !finite_pos(target_usd_per_million))
    return SPI_ERANGE;
  /* Tokens per second such that the $/M formula gives exactly the target. */
  double usd_per_s = usd_per_gpu_hour * (double)gpus / 3600.0;
  double r = usd_per_s / target_usd_per_million * 1e6;
  if (!finite_pos(r)) return SPI_ERANGE;
  *out = r;
  return SPI_OK;
}

SPI_API int spi_cost_spot_effective(double spot_hours, double spot_usd_per_hour,
                                    double on_demand_usd_per_hour,
                                    double interruption_rate,
                                    double restart_overhead_hours,
                                    spi_spot_cost *out) {
  if (!out || out->struct_size < sizeof(spi_spot_cost)) return SPI_EINVAL;
  if (!finite_pos(spot_hours) || !finite_pos(spot_usd_per_hour) ||
      !finite_pos(on_demand_usd_per_hour) ||
      !finite_nonneg(interruption_rate) || interruption_rate > 1.0 ||
      !finite_nonneg(restart_overhead_hours))
    return SPI_ERANGE;

  double interruptions = spot_hours * interruption_rate;
  double lost = interruptions * restart_overhead_hours;
  double effective = spot_hours - lost;
  /* Overhead that eats every hour leaves nothing to divide by. */
  if (!finite_pos(effective)) return SPI_ERANGE;

  double spot_cost = spot_hours * spot_usd_per_hour;
  double per_effective = spot_cost / effective;
  double on_demand_cost = effective * on_demand_usd_per_hour;
  if (!finite_pos(spot_cost) || !finite_pos(per_effective) ||
      !finite_pos(on_demand_cost))
    return SPI_ERANGE;
  double savings = on_demand_cost - spot_cost;
  double fraction = savings / on_demand_cost;
  if (!finite_num(savings) || !finite_num(fraction) ||
      !finite_nonneg(interruptions))
    return SPI_ERANGE;

  /* Fields after the ones this version knows are the caller's business. */
  out->effective_hours = effective;
  out->spot_cost = spot_cost;
  out->cost_per_effective_hour = per_effective;
  out->on_demand_cost = on_demand_cost;
  out->savings = savings;
  out->savings_fraction = fraction;
  out->expected_interruptions = interruptions;
  return SPI_OK;
}

SPI_API int spi_cost_self_host_break_even(double usd_per_gpu_hour,
                                          uint32_t gpus, double hours_per_month,
                                          double api_usd_per_million,
                                          double *out_tokens_per_month) {
  if (!out_tokens_per_month) return SPI_EINVAL;
  if (!finite_pos(usd_per_gpu_hour) || gpus == 0 ||
      !finite_pos(hours_per_month) || !finite_pos(api_usd_per_million))
    return SPI_ERANGE;
  double monthly_usd = usd_per_gpu_hour * (double)gpus * hours_per_month;
  if (!finite_pos(monthly_usd)) return SPI_ERANGE;
  double r = monthly_usd / api_usd_per_million * 1e6;
  if (!finite_pos(r)) return SPI_ERANGE;
  *out_tokens_per_month = r;
  return SPI_OK;
}

SPI_API int spi_cost_kv_bytes_per_sequence(uint32_t layers, uint32_t kv_heads,
                                           uint32_t head_dim, uint32_t seq_len,
                                           double bytes_per_element,
                                           double *out_bytes) {
  if (!out_bytes) return SPI_EINVAL;
  if (layers == 0 || kv_heads == 0 || head_dim == 0 || seq_len == 0 ||
      !finite_pos(bytes_per_element))
    return SPI_ERANGE;
  /* Each factor is < 2^32, so the double product loses nothing until it
   * passes 2^53 bytes, far beyond any real cache. */
  double r = 2.0 * (double)layers * (double)kv_heads * (double)head_dim *
             (double)seq_len * bytes_per_element;
  if (!finite_pos(r)) return SPI_ERANGE;
  *out_bytes = r;
  return SPI_OK;
}

SPI_API int spi_cost_max_sequences(double gpu_memory_bytes, double model_bytes,
                                   double utilization,
                                   double kv_bytes_per_sequence,
                                   uint64_t *out_sequences) {
  if (!out_sequences) return SPI_EINVAL;
  if (!finite_pos(gpu_memory_bytes) || !finite_nonneg(model_bytes) ||
      !finite_pos(utilization) || utilization > 1.0 ||
      !finite_pos(kv_bytes_per_sequence))
    return SPI_ERANGE;
  /* A model that does not fit at all is a wrong input, not "0 sequences". */
  if (model_bytes > gpu_memory_bytes) return SPI_ERANGE;
  double q = (gpu_memory_bytes - model_bytes) / kv_bytes_per_sequence *
             utilization;
  if (!finite_nonneg(q) || q >= COST_TWO_POW_64) return SPI_ERANGE;
  uint64_t n = (uint64_t)q; /* truncation is floor for q >= 0 */
  /* (64 GiB / 512 MiB) * 1.0 is exactly 128, but 100 * 0.29 comes out as
   * 28.999999999999996; a few ulps of slack give the count a person would
   * compute by hand. Only a few ulps, and only while they are far below a
   * sequence: at 1e15 an ulp is 1/8, and a slack relative to q reached a
   * whole sequence there. */
  double next = (double)n + 1.0;
  double gap = next - q, ulp = nextafter(q, INFINITY) - q;
  if (next < COST_TWO_POW_64 && gap > 0 && gap <= 8.0 * ulp && gap <= 1e-6) n++;
  *out_sequences = n;
  return SPI_OK;
}

/* ------------------------------------------------ the reference module */

/* One configuration snapshot of the reference cost model. Immutable. */
typedef struct cost_instance {
  double spot_usd_per_gpu_hour;
  double on_demand_usd_per_gpu_hour;
  double spot_effective_usd_per_gpu_hour; /* after interruptions */
  double gpus_per_replica;
  double prefill_tokens_per_s;
  double decode_tokens_per_s;
  double spot_interruption_rate;
  double restart_overhead_s;
  double default_output_tokens;
  double bytes_per_token;
  double spot_usd_per_million;      /* output tokens, effective price */
  double on_demand_usd_per_million; /* output tokens */
} cost_instance;

/* Read every option of the section into inst (no allocation). */
static int read_section(const cJSON *obj, cost_instance *inst, char *err,
                        size_t errcap) {
  int rc = spi__cfg_check_keys(obj, "cost", "cost", err, errcap);
  if (rc != SPI_OK) return rc;

  const struct {
    const char *path;
    double *dst;
  } doubles[] = {
      {"cost.spot_usd_per_gpu_hour", &inst->spot_usd_per_gpu_hour},
      {"cost.on_demand_usd_per_gpu_hour", &inst->on_demand_usd_per_gpu_hour},
      {"cost.prefill_tokens_per_s", &inst->prefill_tokens_per_s},
      {"cost.decode_tokens_per_s", &inst->decode_tokens_per_s},
      {"cost.spot_interruption_rate", &inst->spot_interruption_rate},
      {"cost.restart_overhead_s", &inst->restart_overhead_s},
      {"cost.bytes_per_token", &inst->bytes_per_token},
  };
  for (size_t i = 0; i < sizeof doubles / sizeof doubles[0]; i++) {
    rc = spi__cfg_double(obj, doubles[i].path, "cost", doubles[i].dst, err,
                         errcap);
    if (rc != SPI_OK) return rc;
  }

  int64_t gpus = 0, default_output = 0;
  rc = spi__cfg_int(obj, "cost.gpus_per_replica", "cost", &gpus, err, errcap);
  if (rc != SPI_OK) return rc;
  rc = spi__cfg_int(obj, "cost.default_output_tokens", "cost", &default_output,
                    err, errcap);
  if (rc != SPI_OK) return rc;
  inst->gpus_per_replica = (double)gpus;
  inst->default_output_tokens = (double)default_output;
  return SPI_OK;
}

/* The numbers that follow from the options; fails on combinations that each
 * option's own bounds cannot catch. */
static int derive(cost_instance *inst, char *err, size_t errcap) {
  spi_spot_cost sc;
  memset(&sc, 0, sizeof sc);
  sc.struct_size = sizeof sc;
  int rc = spi_cost_spot_effective(1.0, inst->spot_usd_per_gpu_hour,
                                   inst->on_demand_usd_per_gpu_hour,
                                   inst->spot_interruption_rate,
                                   inst->restart_overhead_s / 3600.0, &sc);
  if (rc != SPI_OK) {
    spi__errf(err, errcap,
              "cost.restart_overhead_s: %.17g s lost per interruption at a "
              "spot_interruption_rate of %.17g leaves no useful spot hours",
              inst->restart_overhead_s, inst->spot_interruption_rate);
    return SPI_ERANGE;
  }
  inst->spot_effective_usd_per_gpu_hour = sc.cost_per_effective_hour;

  uint32_t gpus = (uint32_t)inst->gpus_per_replica;
  rc = spi_cost_per_million_tokens(inst->spot_effective_usd_per_gpu_hour, gpus,
                                   inst->decode_tokens_per_s,
                                   &inst->spot_usd_per_million);
  if (rc == SPI_OK)
    rc = spi_cost_per_million_tokens(inst->on_demand_usd_per_gpu_hour, gpus,
                                     inst->decode_tokens_per_s,
                                     &inst->on_demand_usd_per_million);
  if (rc != SPI_OK) {
    spi__errf(err, errcap, "cost: the configured prices and throughput give "
                           "no finite price per million tokens");
    return SPI_ERANGE;
  }
  return SPI_OK;
}

static int cost_configure(void *state, const char *config_json,
                          size_t config_len, void **out_instance, char *errbuf,
                          size_t errcap) {
  const spi_mem *mem = state;
  if (!out_instance) return SPI_EINVAL;
  if (!mem || !mem->alloc || !mem->free) {
    spi__errf(errbuf, errcap, "cost: the module has no allocator");
    return SPI_EINVAL;
  }

  cJSON *obj = NULL;
  int rc = spi__json_parse_object(config_json, config_len,
                                  COST_MAX_CONFIG_BYTES, "cost", &obj, errbuf,
                                  errcap);
  if (rc != SPI_OK) return rc;
  cost_instance tmp;
  memset(&tmp, 0, sizeof tmp);
  rc = read_section(obj, &tmp, errbuf, errcap);
  cJSON_Delete(obj);
  if (rc != SPI_OK) return rc;
  rc = derive(&tmp, errbuf, errcap);
  if (rc != SPI_OK) return rc;

  cost_instance *inst = spi__alloc(mem, sizeof *inst);
  if (!inst) {
    spi__errf(errbuf, errcap, "cost: out of memory");
    return SPI_ENOMEM;
  }
  *inst = tmp;
  *out_instance = inst;
  return SPI_OK;
}

static void cost_release(void *state, void *instance) {
  const spi_mem *mem = state;
  if (mem && instance) spi__free(mem, instance);
}

/* cost_price past its argument checks; the library calls it directly for
 * the views it makes (dispatch.c). */
int spi__cost_price_view(const void *instance, const spi_request_view *req,
                         int32_t pool, spi_price *out) {
  const cost_instance *inst = instance;
  double hourly, per_million;
  switch (pool) {
    case SPI_POOL_SPOT:
      hourly = inst->spot_effective_usd_per_gpu_hour;
      per_million = inst->spot_usd_per_million;
      break;
    case SPI_POOL_ON_DEMAND:
      hourly = inst->on_demand_usd_per_gpu_hour;
      per_million = inst->on_demand_usd_per_million;
      break;
    default:
      return SPI_EINVAL;
  }

  /* A count the request gives is refused when negative; the others (the
   * token ids, the estimate from the bytes, the configured default) are
   * at least 0. */
  double prompt;
  if (req->prompt_tokens_set) {
    if (req->prompt_tokens < 0) return SPI_ERANGE;
    prompt = (double)req->prompt_tokens;
  } else if (req->token_count > 0) {
    prompt = (double)req->token_count;
  } else {
    double q = (double)req->prompt_len / inst->bytes_per_token;
    /* Round up to whole tokens; from 2^52 on every double is whole. */
    if (q < COST_TWO_POW_52) {
      int64_t whole = (int64_t)q;
      prompt = (double)whole < q ? (double)whole + 1.0 : (double)whole;
    } else {
      prompt = q;
    }
  }

  double output;
  if (req->expected_output_tokens_set || req->max_output_tokens_set) {
    int64_t said = req->expected_output_tokens_set
                       ? req->expected_output_tokens
                       : req->max_output_tokens;
    if (said < 0) return SPI_ERANGE;
    output = (double)said;
  } else {
    output = inst->default_output_tokens;
  }

  /* Counts at least 0 over rates of at least 1 token/s (the options'
   * floors): gpu_seconds is finite and at least 0, and whatever a change
   * to that let through (a NaN, an infinity) would carry into usd, a
   * product with the positive, finite GPUs and price, which is tested. */
  double gpu_seconds = prompt / inst->prefill_tokens_per_s +
                       output / inst->decode_tokens_per_s;
  double usd = gpu_seconds * inst->gpus_per_replica * hourly / 3600.0;
  if (!finite_nonneg(usd)) return SPI_ERANGE;

  out->pool = pool;
  out->reserved0 = 0;
  out->prompt_tokens = prompt;
  out->output_tokens = output;
  out->gpu_seconds = gpu_seconds;
  out->usd = usd;
  out->usd_per_million = per_million;
  return SPI_OK;
}

static int cost_price(void *state, void *instance, const spi_request_view *req,
                      int32_t pool, spi_price *out) {
  (void)state;
  if (!instance || !req || req->struct_size < sizeof(spi_request_view) ||
      !out || out->struct_size < sizeof(spi_price))
    return SPI_EINVAL;
  return spi__cost_price_view(instance, req, pool, out);
}

void spi__builtin_cost_model(spi_cost_model_module *out) {
  memset(out, 0, sizeof *out);
  out->abi_version = SPI_MODULE_ABI_VERSION;
  out->struct_size = (uint32_t)sizeof *out;
  out->on_failure = SPI_ON_FAILURE_ERROR;
  out->configure = cost_configure;
  out->release = cost_release;
  out->price = cost_price;
}
