/*
 * cmd_cost.c - `spotinfer cost FORMULA --name value ...`: the library's cost
 * formulas from the command line. Each formula's flags are named after the
 * C function's parameters, every one is required, and the library checks
 * the ranges (NaN, negative, zero where meaningless: exit 1).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <spotinfer/spotinfer.h>
#include <spotinfer/spotinfer_extras.h>

#include "cli.h"

#define MAX_ARGS 6

typedef struct formula {
  const char *name;
  const char *doc;
  const char *args[MAX_ARGS]; /* flag names without "--"; NULL-terminated */
} formula;

static const formula FORMULAS[] = {
    {"per-million", "$ per million tokens on that hardware",
     {"usd-per-gpu-hour", "gpus", "tokens-per-s", NULL}},
    {"break-even-tps", "tokens/s needed to reach a $ per million target",
     {"usd-per-gpu-hour", "gpus", "target-usd-per-million", NULL}},
    {"spot", "effective cost of spot hours with interruptions",
     {"spot-hours", "spot-usd-per-hour", "on-demand-usd-per-hour",
      "interruption-rate", "restart-overhead-hours", NULL}},
    {"self-host", "tokens per month above which self-hosting is cheaper",
     {"usd-per-gpu-hour", "gpus", "hours-per-month", "api-usd-per-million",
      NULL}},
    {"kv-bytes", "KV-cache bytes of one sequence",
     {"layers", "kv-heads", "head-dim", "seq-len", "bytes-per-element", NULL}},
    {"max-sequences", "sequences whose KV cache fits on the GPU",
     {"gpu-memory-bytes", "model-bytes", "utilization",
      "kv-bytes-per-sequence", NULL}},
};
#define N_FORMULAS (sizeof FORMULAS / sizeof FORMULAS[0])

static void help(FILE *f) {
  fputs("Usage: spotinfer cost [--json] FORMULA --name value ...\n\n"
        "Formulas (every flag is required):\n", f);
  for (size_t i = 0; i < N_FORMULAS; i++) {
    fprintf(f, "  %-15s %s\n                 ", FORMULAS[i].name,
            FORMULAS[i].doc);
    for (int k = 0; FORMULAS[i].args[k]; k++)
      fprintf(f, " --%s N", FORMULAS[i].args[k]);
    fputc('\n', f);
  }
  fputs("\nExample: spotinfer cost per-million --usd-per-gpu-hour 3.5 "
        "--gpus 1 --tokens-per-s 1000\n", f);
}

/* A uint32_t argument (gpus, layers, ...) from its double. */
static int u32(double v, uint32_t *out) {
  if (v < 0 || v > 4294967295.0 || v != (double)(uint32_t)v) return -1;
  *out = (uint32_t)v;
  return 0;
}

/* KV bytes are a whole number unless bytes-per-element is a fraction (a
 * 4-bit cache): a whole one is printed exactly. */
static void add_bytes(cJSON *o, double d) {
  if (d >= 0 && d < 18446744073709551616.0 && d == (double)(uint64_t)d)
    cli_add_uint(o, "bytes", (uint64_t)d);
  else
    cJSON_AddNumberToObject(o, "bytes", d);
}

static int compute(const formula *f, const double *v, cJSON *o, char *msg,
                   size_t cap) {
  double d = 0;
  uint32_t a, b, c2, e;
  int rc;
  if (strcmp(f->name, "per-million") == 0) {
    if (u32(v[1], &a)) goto notint;
    rc = spi_cost_per_million_tokens(v[0], a, v[2], &d);
    if (rc == SPI_OK) cJSON_AddNumberToObject(o, "usd_per_million", d);
  } else if (strcmp(f->name, "break-even-tps") == 0) {
    if (u32(v[1], &a)) goto notint;
    rc = spi_cost_break_even_tps(v[0], a, v[2], &d);
    if (rc == SPI_OK) cJSON_AddNumberToObject(o, "tokens_per_s", d);
  } else if (strcmp(f->name, "spot") == 0) {
    spi_spot_cost s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    rc = spi_cost_spot_effective(v[0], v[1], v[2], v[3], v[4], &s);
    if (rc == SPI_OK) {
      cJSON_AddNumberToObject(o, "effective_hours", s.effective_hours);
      cJSON_AddNumberToObject(o, "spot_cost", s.spot_cost);
      cJSON_AddNumberToObject(o, "cost_per_effective_hour",
                              s.cost_per_effective_hour);
      cJSON_AddNumberToObject(o, "on_demand_cost", s.on_demand_cost);
      cJSON_AddNumberToObject(o, "savings", s.savings);
      cJSON_AddNumberToObject(o, "savings_fraction", s.savings_fraction);
      cJSON_AddNumberToObject(o, "expected_interruptions",
                              s.expected_interruptions);
    }
  } else if (strcmp(f->name, "self-host") == 0) {
    if (u32(v[1], &a)) goto notint;
    rc = spi_cost_self_host_break_even(v[0], a, v[2], v[3], &d);
    if (rc == SPI_OK) cJSON_AddNumberToObject(o, "tokens_per_month", d);
  } else if (strcmp(f->name, "kv-bytes") == 0) {
    if (u32(v[0], &a) || u32(v[1], &b) || u32(v[2], &c2) || u32(v[3], &e))
      goto notint;
    rc = spi_cost_kv_bytes_per_sequence(a, b, c2, e, v[4], &d);
    if (rc == SPI_OK) add_bytes(o, d);
  } else {
    uint64_t n = 0;
    rc = spi_cost_max_sequences(v[0], v[1], v[2], v[3], &n);
    if (rc == SPI_OK) cli_add_uint(o, "sequences", n);
  }
  /* cli_invalid names the formula; the message is what is wrong. */
  if (rc != SPI_OK)
    snprintf(msg, cap, "an input is out of range, or the result is (NaN, "
             "negative, zero where meaningless, a rate above 1, overhead "
             "that eats every hour, or a result too large)");
  return rc;
notint:
  snprintf(msg, cap, "gpus, layers, kv-heads, head-dim and seq-len are "
           "whole numbers up to 4294967295");
  return SPI_ERANGE;
}

int cmd_cost(const cli_ctx *c, int argc, char **argv) {
  if (argc < 1 || cli_is_help(argv[0])) {
    help(argc < 1 ? stderr : stdout);
    return argc < 1 ? CLI_USAGE : CLI_OK;
  }
  const formula *f = NULL;
  for (size_t i = 0; i < N_FORMULAS; i++)
    if (strcmp(argv[0], FORMULAS[i].name) == 0) f = &FORMULAS[i];
  if (!f) return cli_usage(c, "cost ", "unknown formula '%s'", argv[0]);
  double v[MAX_ARGS];
  int seen[MAX_ARGS] = {0};
  int n = 0;
  while (f->args[n]) n++;
  for (int i = 1; i < argc; i++) {
    if (cli_is_help(argv[i])) {
      help(stdout);
      return CLI_OK;
    }
    int k = -1;
    if (strncmp(argv[i], "--", 2) == 0)
      for (int j = 0; j < n; j++)
        if (strcmp(argv[i] + 2, f->args[j]) == 0) k = j;
    if (k < 0)
      return cli_usage(c, "cost ", "%s: unknown argument '%s'", f->name,
                       argv[i]);
    if (i + 1 >= argc)
      return cli_usage(c, "cost ", "%s needs a value", argv[i]);
    if (seen[k])
      return cli_usage(c, "cost ", "%s: %s is given twice", f->name, argv[i]);
    if (cli_double(argv[i + 1], &v[k]))
      return cli_usage(c, "cost ", "%s: '%s' is not a finite number", argv[i],
                       argv[i + 1]);
    seen[k] = 1;
    i++;
  }
  for (int j = 0; j < n; j++)
    if (!seen[j])
      return cli_usage(c, "cost ", "%s: --%s is missing", f->name, f->args[j]);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddBoolToObject(o, "ok", 1);
  cJSON_AddStringToObject(o, "formula", f->name);
  char msg[200] = "";
  int rc = compute(f, v, o, msg, sizeof msg);
  if (rc != SPI_OK) {
    cJSON_Delete(o);
    return cli_invalid(c, f->name, rc, msg);
  }
  cli_print(c, o);
  return CLI_OK;
}
