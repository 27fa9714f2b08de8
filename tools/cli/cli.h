/*
 * cli.h - shared pieces of the spotinfer command-line tool.
 *
 * The tool is built on the public API (spotinfer.h) only. Every subcommand
 * builds its answer as a cJSON tree, which out_print() writes either as
 * JSON (--json) or as "key value" lines, so both forms carry the same
 * fields.
 *
 * Exit statuses: CLI_OK (0) the input was read and is valid; CLI_INVALID
 * (1) the input is invalid or cannot be read (the message says why);
 * CLI_USAGE (2) the command line is wrong.
 */
#ifndef SPOTINFER_CLI_H
#define SPOTINFER_CLI_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

enum { CLI_OK = 0, CLI_INVALID = 1, CLI_USAGE = 2 };

typedef struct cli_ctx {
  int json;         /* --json */
  const char *prog; /* argv[0] for messages */
} cli_ctx;

/* Read FILE ("-" = stdin) whole into a NUL-terminated buffer. NULL when it
 * cannot be read, with the reason (strerror, too large) in why, for the
 * caller's cli_invalid() to print once and put in the --json answer. */
char *cli_read_input(const char *path, size_t *len, char *why, size_t wcap);

/* Add an integer to o exactly, in JSON and text alike: cJSON keeps numbers
 * as doubles and prints 15 or 17 digits, so counts above 2^53 (or 1e17)
 * lost digits or came out in exponent form. */
void cli_add_uint(cJSON *o, const char *key, uint64_t v);

/* Print a finished answer (takes ownership of root). */
void cli_print(const cli_ctx *c, cJSON *root);

/* Report invalid input: the message on stderr and, with --json, an
 * {"ok": false, "status", "error"} object on stdout. Returns CLI_INVALID. */
int cli_invalid(const cli_ctx *c, const char *what, int status,
                const char *msg);

/* A usage error: the message and a pointer to --help. Returns CLI_USAGE. */
int cli_usage(const cli_ctx *c, const char *cmd, const char *fmt, ...);

/* An option that takes a value may be given once: CLI_USAGE (with the
 * message) when arg is one of opts (NULL-terminated) already in *seen, else
 * marks it and returns CLI_OK. */
int cli_once(const cli_ctx *c, const char *cmd, const char *const *opts,
             const char *arg, unsigned *seen);

/* 1 if arg is --help or -h. */
int cli_is_help(const char *arg);

/* Parse a finite double or an integer option value; 0 on success. */
int cli_double(const char *s, double *out);
int cli_i64(const char *s, long long *out);

/* The subcommands: argv starts after the subcommand's name(s). */
int cmd_config_check(const cli_ctx *c, int argc, char **argv);
int cmd_options(const cli_ctx *c, int argc, char **argv);
int cmd_notice_parse(const cli_ctx *c, int argc, char **argv);
int cmd_metrics_parse(const cli_ctx *c, int argc, char **argv);
int cmd_route(const cli_ctx *c, int argc, char **argv);
int cmd_cost(const cli_ctx *c, int argc, char **argv);

#endif
