/*
 * cmd_config.c - `spotinfer config check` and `spotinfer options`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <spotinfer/spotinfer.h>
#include <spotinfer/spotinfer_extras.h>

#include "cli.h"

static const char CHECK_HELP[] =
    "Usage: spotinfer config check [--json] FILE|-\n"
    "\n"
    "Validate a configuration the way spi_engine_configure() does. A valid\n"
    "one prints the effective configuration (every key, defaults filled in,\n"
    "canonical JSON); an invalid one prints the error with the key path\n"
    "(e.g. router.max_replicas: 0 is below the minimum 1) and exits 1.\n";

static const char OPTIONS_HELP[] =
    "Usage: spotinfer options [--json] [PREFIX]\n"
    "\n"
    "Every configuration option: path, type, default (JSON), bounds for\n"
    "numbers, and what it does. PREFIX keeps the options whose path starts\n"
    "with it (e.g. router.).\n";

int cmd_config_check(const cli_ctx *c, int argc, char **argv) {
  const char *path = NULL;
  for (int i = 0; i < argc; i++) {
    if (cli_is_help(argv[i])) {
      fputs(CHECK_HELP, stdout);
      return CLI_OK;
    }
    if (argv[i][0] == '-' && argv[i][1])
      return cli_usage(c, "config check ", "unknown option '%s'", argv[i]);
    if (path)
      return cli_usage(c, "config check ", "one FILE only ('%s' is extra)",
                       argv[i]);
    path = argv[i];
  }
  if (!path) return cli_usage(c, "config check ", "FILE is missing");
  size_t len;
  char why[128];
  char *text = cli_read_input(path, &len, why, sizeof why);
  if (!text) return cli_invalid(c, path, SPI_EIO, why);
  spi_engine *e = NULL;
  int rc = spi_engine_new(&e, NULL);
  if (rc != SPI_OK) {
    free(text);
    return cli_invalid(c, path, rc, NULL);
  }
  rc = spi_engine_configure(e, text, len);
  free(text);
  if (rc != SPI_OK) {
    rc = cli_invalid(c, path, rc, spi_engine_errmsg(e));
    spi_engine_free(e);
    return rc;
  }
  size_t need = 0;
  spi_engine_config_json(e, NULL, 0, &need);
  char *eff = malloc(need + 1);
  if (!eff || spi_engine_config_json(e, eff, need + 1, NULL) != SPI_OK) {
    free(eff);
    spi_engine_free(e);
    return cli_invalid(c, path, SPI_ENOMEM, NULL);
  }
  spi_engine_free(e);
  if (c->json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 1);
    cJSON_AddStringToObject(o, "input", path);
    cJSON_AddItemToObject(o, "config", cJSON_Parse(eff));
    cli_print(c, o);
  } else {
    fprintf(stderr, "%s: valid\n", path);
    puts(eff);
  }
  free(eff);
  return CLI_OK;
}

static const char *type_name(int32_t t) {
  static const char *const names[] = {"?",      "bool", "int",   "double",
                                      "string", "enum", "list",  "object"};
  return t >= 1 && t <= 7 ? names[t] : "?";
}

int cmd_options(const cli_ctx *c, int argc, char **argv) {
  const char *prefix = "";
  for (int i = 0; i < argc; i++) {
    if (cli_is_help(argv[i])) {
      fputs(OPTIONS_HELP, stdout);
      return CLI_OK;
    }
    if (argv[i][0] == '-')
      return cli_usage(c, "options ", "unknown option '%s'", argv[i]);
    if (*prefix)
      return cli_usage(c, "options ", "one PREFIX only ('%s' is extra)",
                       argv[i]);
    prefix = argv[i];
  }
  size_t n = spi_option_count(), shown = 0;
  cJSON *list = cJSON_CreateArray();
  for (size_t i = 0; i < n; i++) {
    spi_option_info o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    if (spi_option_get(i, &o) != SPI_OK) continue;
    if (strncmp(o.path, prefix, strlen(prefix)) != 0) continue;
    shown++;
    int numeric = o.type == SPI_OPT_INT || o.type == SPI_OPT_DOUBLE;
    if (!c->json) {
      printf("%-44s %-6s %-18s", o.path, type_name(o.type),
             o.default_json ? o.default_json : "");
      if (numeric)
        printf(" [%.17g, %.17g]", o.min_value, o.max_value);
      printf("  %s\n", o.doc ? o.doc : "");
      continue;
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "path", o.path);
    cJSON_AddStringToObject(j, "type", type_name(o.type));
    cJSON *def = o.default_json ? cJSON_Parse(o.default_json) : NULL;
    cJSON_AddItemToObject(j, "default", def ? def : cJSON_CreateNull());
    if (numeric) {
      cJSON_AddNumberToObject(j, "min", o.min_value);
      cJSON_AddNumberToObject(j, "max", o.max_value);
    }
    cJSON_AddStringToObject(j, "doc", o.doc ? o.doc : "");
    cJSON_AddItemToArray(list, j);
  }
  if (shown == 0 && *prefix) {
    cJSON_Delete(list);
    return cli_invalid(c, prefix, SPI_ENOTFOUND, "no option has this prefix");
  }
  if (c->json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 1);
    cJSON_AddItemToObject(o, "options", list);
    cli_print(c, o);
  } else {
    cJSON_Delete(list);
  }
  return CLI_OK;
}
