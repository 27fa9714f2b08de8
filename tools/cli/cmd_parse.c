/*
 * cmd_parse.c - `spotinfer notice parse` and `spotinfer metrics parse`:
 * what the library reads from a cloud's notice body or a model server's
 * /metrics page.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <spotinfer/spotinfer.h>

#include "cli.h"

static const char NOTICE_HELP[] =
    "Usage: spotinfer notice parse [--json] [--cloud aws|gcp|azure]\n"
    "           [--format F] [--node ID] [--status CODE] [--now-ns NS]\n"
    "           FILE|-\n"
    "\n"
    "Parse a spot or maintenance notice body as the cloud serves it and\n"
    "print each notice: kind, format, node, deadline (UTC and seconds from\n"
    "now), whether it is active, the event id and the dedup key.\n"
    "\n"
    "  --cloud     which cloud's metadata service the body came from; the\n"
    "              format is then told from the body. Without --cloud (or\n"
    "              --format) both are told from the body.\n"
    "  --format F  one of aws-instance-action, aws-rebalance, aws-scheduled,\n"
    "              aws-eventbridge, gcp-preempted, gcp-maintenance,\n"
    "              azure-scheduled\n"
    "  --node ID   the machine that was polled, for formats whose body\n"
    "              does not name it (default: this host's name)\n"
    "  --status N  the HTTP status of the metadata request (404: no notice,\n"
    "              whatever the body; needs no --cloud)\n"
    "  --now-ns N  the time of the poll in ns since the epoch (default now;\n"
    "              a GCP preemption's deadline is now + 30 s), at most\n"
    "              9223372006854775807 (2^63 - 1 less 30 s)\n";

static const char METRICS_HELP[] =
    "Usage: spotinfer metrics parse [--json] FILE|-\n"
    "\n"
    "Read a vLLM or SGLang Prometheus /metrics page the way the router\n"
    "does and print the load it yields (running, waiting, kv_usage), how\n"
    "many samples were read and which lines were skipped.\n";

static const char *const FORMATS[] = {
    NULL,           "aws-instance-action", "aws-rebalance", "aws-scheduled",
    "aws-eventbridge", "gcp-preempted",    "gcp-maintenance",
    "azure-scheduled"};
#define N_FORMATS 8

static const char *skip_ws(const char *s) {
  while (isspace((unsigned char)*s)) s++;
  return s;
}

/* Tell the body's format from the cloud (NULL: any) and its text. The
 * shapes are distinct: Azure's document has "Events", EventBridge
 * envelopes a "detail-type", AWS scheduled events are a JSON array, GCP
 * answers bare words. 0 when nothing matches. */
static int detect(const char *cloud, const char *body) {
  const char *t = skip_ws(body);
  int any = cloud == NULL;
  if (any || strcmp(cloud, "azure") == 0) {
    if (!any || strstr(t, "\"Events\"") || strstr(t, "DocumentIncarnation"))
      return SPI_NOTICE_AZURE_SCHEDULED;
  }
  if (any || strcmp(cloud, "gcp") == 0) {
    if (strncmp(t, "TRUE", 4) == 0 || strncmp(t, "FALSE", 5) == 0)
      return SPI_NOTICE_GCP_PREEMPTED;
    if (!any || strncmp(t, "NONE", 4) == 0 ||
        strncmp(t, "MIGRATE_ON_HOST_MAINTENANCE", 27) == 0 ||
        strncmp(t, "TERMINATE_ON_HOST_MAINTENANCE", 29) == 0)
      return SPI_NOTICE_GCP_MAINTENANCE;
  }
  if (any || strcmp(cloud, "aws") == 0) {
    if (strstr(t, "\"detail-type\"")) return SPI_NOTICE_AWS_EVENTBRIDGE;
    if (*t == '[') return SPI_NOTICE_AWS_SCHEDULED;
    if (strstr(t, "\"noticeTime\"")) return SPI_NOTICE_AWS_REBALANCE;
    if (!any || strstr(t, "\"action\"")) return SPI_NOTICE_AWS_INSTANCE_ACTION;
  }
  return 0;
}

/* The parser adds up to GCP's 30 s to the time of the poll, which must
 * leave room for it (spi_notice_parse): a later --now-ns is a usage error
 * like any other bad value, not an invalid input. */
#define NOW_NS_MAX ((long long)INT64_MAX - 30 * 1000000000LL)

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void add_time(cJSON *o, const char *key, int64_t ns) {
  time_t s = (time_t)(ns / 1000000000);
  struct tm tm;
  char buf[40];
  if (ns > 0 && gmtime_r(&s, &tm) &&
      strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm))
    cJSON_AddStringToObject(o, key, buf);
  else
    cJSON_AddNullToObject(o, key);
}

static cJSON *notice_json(const spi_notice *n, int64_t now) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "kind", spi_notice_kind_name(n->kind));
  cJSON_AddStringToObject(o, "format", n->format > 0 && n->format < N_FORMATS
                                           ? FORMATS[n->format]
                                           : "?");
  cJSON_AddStringToObject(o, "node", n->node);
  cJSON_AddBoolToObject(o, "active", n->active);
  add_time(o, "deadline", n->deadline_ns);
  if (n->deadline_ns > 0)
    cJSON_AddNumberToObject(o, "seconds_left",
                            (double)(n->deadline_ns - now) / 1e9);
  else
    cJSON_AddNullToObject(o, "seconds_left");
  cJSON_AddStringToObject(o, "event_id", n->event_id);
  cJSON_AddStringToObject(o, "dedup_key", n->dedup_key);
  return o;
}

/* Without --cloud or --format the format is told from the body, but a
 * poll answered with a status other than 2xx carries no notice (its body
 * is an error page): 404 is "no notice" for every cloud, another status
 * an error. */
static int status_only(const cli_ctx *c, const char *path, long long status) {
  if (status != 404) {
    char msg[96];
    snprintf(msg, sizeof msg, "http status %lld: only 2xx carries a notice "
             "and 404 means none", status);
    return cli_invalid(c, path, SPI_EINVAL, msg);
  }
  cJSON *o = cJSON_CreateObject();
  cJSON_AddBoolToObject(o, "ok", 1);
  cJSON_AddStringToObject(o, "input", path);
  cJSON_AddNullToObject(o, "format");
  cJSON_AddNumberToObject(o, "found", 0);
  cJSON_AddNumberToObject(o, "skipped", 0);
  cJSON_AddArrayToObject(o, "notices");
  cli_print(c, o);
  return CLI_OK;
}

/* Every option notice parse takes (each with a value); the help texts list
 * them all (tests/cli checks). */
static const char *const NOTICE_OPTS[] = {"--cloud", "--format", "--node",
                                           "--status", "--now-ns", NULL};

int cmd_notice_parse(const cli_ctx *c, int argc, char **argv) {
  const char *cloud = NULL, *path = NULL, *node = "";
  int format = 0;
  long long status = 200, now = 0;
  int have_now = 0;
  unsigned seen = 0;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (cli_is_help(a)) {
      fputs(NOTICE_HELP, stdout);
      return CLI_OK;
    }
    int has_val = i + 1 < argc;
    if (has_val && cli_once(c, "notice parse ", NOTICE_OPTS, a, &seen))
      return CLI_USAGE;
    if (strcmp(a, "--cloud") == 0 && has_val) {
      cloud = argv[++i];
      if (strcmp(cloud, "aws") && strcmp(cloud, "gcp") && strcmp(cloud, "azure"))
        return cli_usage(c, "notice parse ", "--cloud: '%s' is not aws, gcp "
                         "or azure", cloud);
    } else if (strcmp(a, "--format") == 0 && has_val) {
      const char *f = argv[++i];
      format = 0;
      for (int k = 1; k < N_FORMATS; k++)
        if (strcmp(f, FORMATS[k]) == 0) format = k;
      if (!format)
        return cli_usage(c, "notice parse ", "--format: unknown format '%s'",
                         f);
    } else if (strcmp(a, "--node") == 0 && has_val) {
      node = argv[++i];
    } else if (strcmp(a, "--status") == 0 && has_val) {
      if (cli_i64(argv[++i], &status) || status < 0 || status > 999)
        return cli_usage(c, "notice parse ", "--status: '%s' is not an "
                         "HTTP status", argv[i]);
    } else if (strcmp(a, "--now-ns") == 0 && has_val) {
      if (cli_i64(argv[++i], &now) || now <= 0 || now > NOW_NS_MAX)
        return cli_usage(c, "notice parse ", "--now-ns: '%s' is not an "
                         "integer in 1..%lld", argv[i], NOW_NS_MAX);
      have_now = 1;
    } else if (a[0] == '-' && a[1]) {
      return cli_usage(c, "notice parse ", "unknown option or missing value "
                       "'%s'", a);
    } else if (path) {
      return cli_usage(c, "notice parse ", "one FILE only ('%s' is extra)", a);
    } else {
      path = a;
    }
  }
  if (!path) return cli_usage(c, "notice parse ", "FILE is missing");
  char host[SPI_ID_MAX] = "";
  if (!*node && gethostname(host, sizeof host) == 0) {
    host[sizeof host - 1] = '\0';
    node = host;
  }
  size_t len;
  char why[128];
  char *body = cli_read_input(path, &len, why, sizeof why);
  if (!body) return cli_invalid(c, path, SPI_EIO, why);
  if (!have_now) now = now_ns();
  if (!format && !cloud && status != 0 && (status < 200 || status > 299)) {
    free(body);
    return status_only(c, path, status);
  }
  if (!format) format = detect(cloud, body);
  if (!format) {
    free(body);
    return cli_invalid(c, path, SPI_EUNKNOWN,
                       "not a notice body of any cloud this version reads; "
                       "give --cloud or --format");
  }
  /* Room for 64 notices first; a document with more says how many, and
   * is parsed again with room for all of them. */
  size_t cap = 64;
  spi_notice *out = NULL;
  spi_parse_report rep;
  char err[256] = "";
  int rc;
  do {
    free(out);
    out = calloc(cap, sizeof *out);
    if (!out) {
      free(body);
      return cli_invalid(c, path, SPI_ENOMEM, "out of memory");
    }
    for (size_t k = 0; k < cap; k++) out[k].struct_size = sizeof out[k];
    memset(&rep, 0, sizeof rep);
    rep.struct_size = sizeof rep;
    err[0] = '\0';
    rc = spi_notice_parse_v2(format, (int32_t)status, body, len, node,
                             strlen(node), now, out, cap, &rep, err,
                             sizeof err);
  } while (rc == SPI_EBUFSIZE && rep.found > cap && (cap = rep.found));
  free(body);
  if (rc != SPI_OK) {
    free(out);
    return cli_invalid(c, path, rc, err);
  }
  cJSON *o = cJSON_CreateObject();
  cJSON_AddBoolToObject(o, "ok", 1);
  cJSON_AddStringToObject(o, "input", path);
  cJSON_AddStringToObject(o, "format", FORMATS[format]);
  cJSON_AddNumberToObject(o, "found", (double)rep.found);
  cJSON_AddNumberToObject(o, "skipped", (double)rep.skipped);
  if (rep.skipped) cJSON_AddStringToObject(o, "skipped_why", err);
  cJSON *list = cJSON_AddArrayToObject(o, "notices");
  for (size_t k = 0; k < rep.found && k < cap; k++)
    cJSON_AddItemToArray(list, notice_json(&out[k], now));
  free(out);
  cli_print(c, o);
  return CLI_OK;
}

int cmd_metrics_parse(const cli_ctx *c, int argc, char **argv) {
  const char *path = NULL;
  for (int i = 0; i < argc; i++) {
    if (cli_is_help(argv[i])) {
      fputs(METRICS_HELP, stdout);
      return CLI_OK;
    }
    if (argv[i][0] == '-' && argv[i][1])
      return cli_usage(c, "metrics parse ", "unknown option '%s'", argv[i]);
    if (path)
      return cli_usage(c, "metrics parse ", "one FILE only ('%s' is extra)",
                       argv[i]);
    path = argv[i];
  }
  if (!path) return cli_usage(c, "metrics parse ", "FILE is missing");
  size_t len;
  char why[128];
  char *text = cli_read_input(path, &len, why, sizeof why);
  if (!text) return cli_invalid(c, path, SPI_EIO, why);
  spi_load load;
  memset(&load, 0, sizeof load);
  load.struct_size = sizeof load;
  spi_parse_report rep;
  memset(&rep, 0, sizeof rep);
  rep.struct_size = sizeof rep;
  char err[256] = "";
  int rc = spi_metrics_parse_v2(text, len, &load, &rep, err, sizeof err);
  free(text);
  if (rc != SPI_OK) return cli_invalid(c, path, rc, err);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddBoolToObject(o, "ok", 1);
  cJSON_AddStringToObject(o, "input", path);
  cJSON_AddNumberToObject(o, "running", load.running);
  cJSON_AddNumberToObject(o, "waiting", load.waiting);
  cJSON_AddNumberToObject(o, "kv_usage", load.kv_usage);
  cJSON_AddNumberToObject(o, "samples", (double)rep.found);
  cJSON_AddNumberToObject(o, "skipped_lines", (double)rep.skipped);
  if (rep.skipped) {
    cJSON_AddNumberToObject(o, "first_skipped_line", (double)rep.first_skipped);
    cJSON_AddStringToObject(o, "skipped_why", err);
  }
  cli_print(c, o);
  return CLI_OK;
}
