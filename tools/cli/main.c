/*
 * main.c - the spotinfer command-line tool: validate a configuration, list
 * the options, read notices and /metrics pages, route one body, and run the
 * cost formulas, all through the public API of libspotinfer.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <spotinfer/spotinfer.h>

#include "cli.h"

static const char USAGE[] =
    "Usage: spotinfer [--json] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  config check FILE|-         validate a configuration; print the\n"
    "                              effective configuration or the error\n"
    "                              with its key path\n"
    "  options                     every option with type, default, bounds\n"
    "  notice parse [--cloud aws|gcp|azure] [--format F] [--node ID]\n"
    "               [--status CODE] [--now-ns NS] FILE|-\n"
    "                              what a spot notice body means\n"
    "  metrics parse FILE|-        the load a vLLM or SGLang /metrics page\n"
    "                              yields\n"
    "  route --config FILE --replicas FILE [--pressure P] BODY.json|-\n"
    "                              class, key, pool, replica, reason and\n"
    "                              price for one OpenAI request body\n"
    "  cost FORMULA --name value...\n"
    "                              the cost formulas (spotinfer cost --help)\n"
    "  version                     the library version\n"
    "\n"
    "Options (anywhere on the line):\n"
    "  --json      print the answer as one JSON object (errors too: ok false)\n"
    "  -h, --help  help for the command\n"
    "\n"
    "Exit status: 0 the input is valid (answer printed); 1 the input is\n"
    "invalid or cannot be read (message on stderr); 2 usage error.\n"
    "See spotinfer(1).\n";

/* Takes --json out of argv wherever it is (after "--" it is an operand). */
static int strip_json(int argc, char **argv, int *json) {
  int n = 0, rest = 0;
  for (int i = 0; i < argc; i++) {
    if (!rest && strcmp(argv[i], "--") == 0) rest = 1;
    if (!rest && strcmp(argv[i], "--json") == 0) {
      *json = 1;
      continue;
    }
    argv[n++] = argv[i];
  }
  argv[n] = NULL;
  return n;
}

static int version(const cli_ctx *c) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "version", spi_version_string());
  cJSON_AddNumberToObject(o, "version_number", spi_version_number());
  cli_print(c, o);
  return CLI_OK;
}

static int dispatch(int argc, char **argv) {
  cli_ctx c = {0, "spotinfer"};
  argc = strip_json(argc, argv, &c.json);
  if (argc < 2) {
    fputs(USAGE, stderr);
    return CLI_USAGE;
  }
  const char *cmd = argv[1];
  const char *sub = argc > 2 ? argv[2] : "";
  if (cli_is_help(cmd)) {
    fputs(USAGE, stdout);
    return CLI_OK;
  }
  if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
    if (cli_is_help(sub)) {
      fputs("Usage: spotinfer version [--json]\n\nPrint the library's version.\n",
            stdout);
      return CLI_OK;
    }
    if (*sub) return cli_usage(&c, "version ", "unexpected argument '%s'", sub);
    return version(&c);
  }
  if (strcmp(cmd, "config") == 0 && strcmp(sub, "check") == 0)
    return cmd_config_check(&c, argc - 3, argv + 3);
  if (strcmp(cmd, "options") == 0) return cmd_options(&c, argc - 2, argv + 2);
  if (strcmp(cmd, "notice") == 0 && strcmp(sub, "parse") == 0)
    return cmd_notice_parse(&c, argc - 3, argv + 3);
  if (strcmp(cmd, "metrics") == 0 && strcmp(sub, "parse") == 0)
    return cmd_metrics_parse(&c, argc - 3, argv + 3);
  if (strcmp(cmd, "route") == 0) return cmd_route(&c, argc - 2, argv + 2);
  if (strcmp(cmd, "cost") == 0) return cmd_cost(&c, argc - 2, argv + 2);
  if ((strcmp(cmd, "config") == 0 || strcmp(cmd, "notice") == 0 ||
       strcmp(cmd, "metrics") == 0) &&
      (cli_is_help(sub) || !*sub)) {
    fputs(USAGE, *sub ? stdout : stderr);
    return *sub ? CLI_OK : CLI_USAGE;
  }
  return cli_usage(&c, "", "unknown command '%s%s%s'", cmd, *sub ? " " : "",
                   sub);
}

int main(int argc, char **argv) {
  int rc = dispatch(argc, argv);
  /* Output that did not reach its file (a full disk, a closed pipe) is a
   * failure, whatever the command found. */
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "spotinfer: write error: %s\n", strerror(errno));
    if (rc == CLI_OK) rc = CLI_INVALID;
  }
  return rc;
}
