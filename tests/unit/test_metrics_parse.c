/*
 * test_metrics_parse.c - the vLLM / SGLang /metrics parser: realistic pages
 * of both servers and their versions, several label sets, escapes,
 * timestamps, number forms, every error class with its line number, and
 * every truncation of every page.
 */
#include <locale.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fake_fleet.h"
#include "routing.h"

/* ------------------------------------------------------------------ pages */

/* A vLLM V1 server (one engine): process metrics first, then vllm:*, with
 * histograms and counters we do not read. */
static const char VLLM_V1[] =
    "# HELP python_gc_objects_collected_total Objects collected during gc\n"
    "# TYPE python_gc_objects_collected_total counter\n"
    "python_gc_objects_collected_total{generation=\"0\"} 18231.0\n"
    "python_gc_objects_collected_total{generation=\"1\"} 4410.0\n"
    "python_gc_objects_collected_total{generation=\"2\"} 961.0\n"
    "# HELP python_info Python platform information\n"
    "# TYPE python_info gauge\n"
    "python_info{implementation=\"CPython\",major=\"3\",minor=\"12\","
    "patchlevel=\"9\",version=\"3.12.9\"} 1.0\n"
    "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
    "# TYPE process_resident_memory_bytes gauge\n"
    "process_resident_memory_bytes 3.221225472e+09\n"
    "# HELP process_start_time_seconds Start time of the process since unix "
    "epoch in seconds.\n"
    "# TYPE process_start_time_seconds gauge\n"
    "process_start_time_seconds 1.73160214853e+09\n"
    "# HELP vllm:num_requests_running Number of requests in model execution "
    "batches.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running{engine=\"0\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 7.0\n"
    "# HELP vllm:num_requests_waiting Number of requests waiting to be "
    "processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting{engine=\"0\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 2.0\n"
    "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent "
    "usage.\n"
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 0.4375\n"
    "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of "
    "number of queried tokens.\n"
    "# TYPE vllm:prefix_cache_queries_total counter\n"
    "vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 2.841e+06\n"
    "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
    "# TYPE vllm:prompt_tokens_total counter\n"
    "vllm:prompt_tokens_total{engine=\"0\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 2.912334e+06\n"
    "# HELP vllm:prompt_tokens_created Number of prefill tokens processed.\n"
    "# TYPE vllm:prompt_tokens_created gauge\n"
    "vllm:prompt_tokens_created{engine=\"0\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 1.7316021557e+09\n"
    "# HELP vllm:request_success_total Count of successfully processed "
    "requests.\n"
    "# TYPE vllm:request_success_total counter\n"
    "vllm:request_success_total{engine=\"0\",finished_reason=\"stop\","
    "model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 1290.0\n"
    "vllm:request_success_total{engine=\"0\",finished_reason=\"length\","
    "model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 34.0\n"
    "vllm:request_success_total{engine=\"0\",finished_reason=\"abort\","
    "model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0\n"
    "# HELP vllm:time_to_first_token_seconds Histogram of time to first "
    "token in seconds.\n"
    "# TYPE vllm:time_to_first_token_seconds histogram\n"
    "vllm:time_to_first_token_seconds_sum{engine=\"0\",model_name=\"meta-llama/"
    "Llama-3.1-8B-Instruct\"} 151.73399043083191\n"
    "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.001\","
    "model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0\n"
    "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.04\","
    "model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 211.0\n"
    "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.5\","
    "model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 1187.0\n"
    "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"+Inf\","
    "model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 1324.0\n"
    "vllm:time_to_first_token_seconds_count{engine=\"0\",model_name="
    "\"meta-llama/Llama-3.1-8B-Instruct\"} 1324.0\n";

/* An older vLLM (V0 engine): gpu_cache_usage_perc, swapped and CPU cache,
 * model_name only. */
static const char VLLM_V0[] =
    "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
    "# TYPE vllm:cache_config_info gauge\n"
    "vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\","
    "enable_prefix_caching=\"True\",gpu_memory_utilization=\"0.9\","
    "num_cpu_blocks=\"2048\",num_gpu_blocks=\"27910\",swap_space=\"4\"} 1.0\n"
    "# HELP vllm:num_requests_running Number of requests currently running "
    "on GPU.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running{model_name=\"mistralai/"
    "Mistral-7B-Instruct-v0.3\"} 12.0\n"
    "# HELP vllm:num_requests_swapped Number of requests swapped to CPU.\n"
    "# TYPE vllm:num_requests_swapped gauge\n"
    "vllm:num_requests_swapped{model_name=\"mistralai/"
    "Mistral-7B-Instruct-v0.3\"} 0.0\n"
    "# HELP vllm:num_requests_waiting Number of requests waiting to be "
    "processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting{model_name=\"mistralai/"
    "Mistral-7B-Instruct-v0.3\"} 5.0\n"
    "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 "
    "percent usage.\n"
    "# TYPE vllm:gpu_cache_usage_perc gauge\n"
    "vllm:gpu_cache_usage_perc{model_name=\"mistralai/"
    "Mistral-7B-Instruct-v0.3\"} 0.8125\n"
    "# HELP vllm:cpu_cache_usage_perc CPU KV-cache usage. 1 means 100 "
    "percent usage.\n"
    "# TYPE vllm:cpu_cache_usage_perc gauge\n"
    "vllm:cpu_cache_usage_perc{model_name=\"mistralai/"
    "Mistral-7B-Instruct-v0.3\"} 0.0\n"
    "# HELP vllm:avg_generation_throughput_toks_per_s Average generation "
    "throughput in tokens/s.\n"
    "# TYPE vllm:avg_generation_throughput_toks_per_s gauge\n"
    "vllm:avg_generation_throughput_toks_per_s{model_name=\"mistralai/"
    "Mistral-7B-Instruct-v0.3\"} 412.6\n";

/* vLLM with data parallelism: one label set per engine. */
static const char VLLM_DP[] =
    "# HELP vllm:num_requests_running Number of requests in model execution "
    "batches.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running{engine=\"0\",model_name=\"Qwen/Qwen2.5-32B\"} "
    "3.0\n"
    "vllm:num_requests_running{engine=\"1\",model_name=\"Qwen/Qwen2.5-32B\"} "
    "4.0\n"
    "vllm:num_requests_running{engine=\"2\",model_name=\"Qwen/Qwen2.5-32B\"} "
    "0.0\n"
    "# HELP vllm:num_requests_waiting Number of requests waiting to be "
    "processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting{engine=\"0\",model_name=\"Qwen/Qwen2.5-32B\"} "
    "1.0\n"
    "vllm:num_requests_waiting{engine=\"1\",model_name=\"Qwen/Qwen2.5-32B\"} "
    "6.0\n"
    "vllm:num_requests_waiting{engine=\"2\",model_name=\"Qwen/Qwen2.5-32B\"} "
    "0.0\n"
    "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent "
    "usage.\n"
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"Qwen/Qwen2.5-32B\"} "
    "0.25\n"
    "vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"Qwen/Qwen2.5-32B\"} "
    "0.75\n"
    "vllm:kv_cache_usage_perc{engine=\"2\",model_name=\"Qwen/Qwen2.5-32B\"} "
    "0.0\n";

/* An SGLang server with --enable-metrics. */
static const char SGLANG[] =
    "# HELP sglang:prompt_tokens_total Number of prefill tokens processed.\n"
    "# TYPE sglang:prompt_tokens_total counter\n"
    "sglang:prompt_tokens_total{model_name=\"Qwen/Qwen2.5-7B-Instruct\"} "
    "6.214907e+06\n"
    "# HELP sglang:generation_tokens_total Number of generation tokens "
    "processed.\n"
    "# TYPE sglang:generation_tokens_total counter\n"
    "sglang:generation_tokens_total{model_name=\"Qwen/Qwen2.5-7B-Instruct\"} "
    "5.90331e+06\n"
    "# HELP sglang:num_running_reqs The number of running requests.\n"
    "# TYPE sglang:num_running_reqs gauge\n"
    "sglang:num_running_reqs{model_name=\"Qwen/Qwen2.5-7B-Instruct\"} 21.0\n"
    "# HELP sglang:num_used_tokens The number of used tokens.\n"
    "# TYPE sglang:num_used_tokens gauge\n"
    "sglang:num_used_tokens{model_name=\"Qwen/Qwen2.5-7B-Instruct\"} 91533.0\n"
    "# HELP sglang:token_usage The token usage.\n"
    "# TYPE sglang:token_usage gauge\n"
    "sglang:token_usage{model_name=\"Qwen/Qwen2.5-7B-Instruct\"} 0.62\n"
    "# HELP sglang:gen_throughput The generation throughput (token/s).\n"
    "# TYPE sglang:gen_throughput gauge\n"
    "sglang:gen_throughput{model_name=\"Qwen/Qwen2.5-7B-Instruct\"} "
    "1380.2617315036214\n"
    "# HELP sglang:num_queue_reqs The number of requests in the waiting "
    "queue.\n"
    "# TYPE sglang:num_queue_reqs gauge\n"
    "sglang:num_queue_reqs{model_name=\"Qwen/Qwen2.5-7B-Instruct\"} 3.0\n"
    "# HELP sglang:cache_hit_rate The prefix cache hit rate.\n"
    "# TYPE sglang:cache_hit_rate gauge\n"
    "sglang:cache_hit_rate{model_name=\"Qwen/Qwen2.5-7B-Instruct\"} "
    "0.4127703180722\n"
    "# HELP sglang:time_to_first_token_seconds Histogram of time to first "
    "token in seconds.\n"
    "# TYPE sglang:time_to_first_token_seconds histogram\n"
    "sglang:time_to_first_token_seconds_sum{model_name=\"Qwen/"
    "Qwen2.5-7B-Instruct\"} 4471.912\n"
    "sglang:time_to_first_token_seconds_bucket{le=\"0.1\",model_name=\"Qwen/"
    "Qwen2.5-7B-Instruct\"} 1711.0\n"
    "sglang:time_to_first_token_seconds_bucket{le=\"+Inf\",model_name=\"Qwen/"
    "Qwen2.5-7B-Instruct\"} 9012.0\n"
    "sglang:time_to_first_token_seconds_count{model_name=\"Qwen/"
    "Qwen2.5-7B-Instruct\"} 9012.0\n";

/* A newer SGLang with more labels, two tensor-parallel ranks exporting. */
static const char SGLANG_TP[] =
    "# HELP sglang:num_running_reqs The number of running requests.\n"
    "# TYPE sglang:num_running_reqs gauge\n"
    "sglang:num_running_reqs{engine_type=\"unified\",model_name=\"deepseek-ai/"
    "DeepSeek-V3\",pp_rank=\"0\",tp_rank=\"0\"} 40.0\n"
    "sglang:num_running_reqs{engine_type=\"unified\",model_name=\"deepseek-ai/"
    "DeepSeek-V3\",pp_rank=\"0\",tp_rank=\"1\"} 38.0\n"
    "# HELP sglang:num_queue_reqs The number of requests in the waiting "
    "queue.\n"
    "# TYPE sglang:num_queue_reqs gauge\n"
    "sglang:num_queue_reqs{engine_type=\"unified\",model_name=\"deepseek-ai/"
    "DeepSeek-V3\",pp_rank=\"0\",tp_rank=\"0\"} 0.0\n"
    "sglang:num_queue_reqs{engine_type=\"unified\",model_name=\"deepseek-ai/"
    "DeepSeek-V3\",pp_rank=\"0\",tp_rank=\"1\"} 2.0\n"
    "# HELP sglang:token_usage The token usage.\n"
    "# TYPE sglang:token_usage gauge\n"
    "sglang:token_usage{engine_type=\"unified\",model_name=\"deepseek-ai/"
    "DeepSeek-V3\",pp_rank=\"0\",tp_rank=\"0\"} 0.91\n"
    "sglang:token_usage{engine_type=\"unified\",model_name=\"deepseek-ai/"
    "DeepSeek-V3\",pp_rank=\"0\",tp_rank=\"1\"} 0.93\n";

/* SGLang with --enable-priority-scheduling: each queue gauge is written as
 * the total under priority="" and again by priority under priority="<n>".
 * 5 running (3 at priority 0, 2 at priority 1), 4 queued (all at 1). */
static const char SGLANG_PRIORITY[] =
    "# HELP sglang:num_running_reqs The number of running requests.\n"
    "# TYPE sglang:num_running_reqs gauge\n"
    "sglang:num_running_reqs{engine_type=\"unified\",model_name=\"m\","
    "moe_ep_rank=\"0\",pp_rank=\"0\",priority=\"\",tp_rank=\"0\"} 5.0\n"
    "sglang:num_running_reqs{engine_type=\"unified\",model_name=\"m\","
    "moe_ep_rank=\"0\",pp_rank=\"0\",priority=\"0\",tp_rank=\"0\"} 3.0\n"
    "sglang:num_running_reqs{engine_type=\"unified\",model_name=\"m\","
    "moe_ep_rank=\"0\",pp_rank=\"0\",priority=\"1\",tp_rank=\"0\"} 2.0\n"
    "# HELP sglang:num_queue_reqs The number of requests in the waiting "
    "queue.\n"
    "# TYPE sglang:num_queue_reqs gauge\n"
    "sglang:num_queue_reqs{engine_type=\"unified\",model_name=\"m\","
    "moe_ep_rank=\"0\",pp_rank=\"0\",priority=\"\",tp_rank=\"0\"} 4.0\n"
    "sglang:num_queue_reqs{engine_type=\"unified\",model_name=\"m\","
    "moe_ep_rank=\"0\",pp_rank=\"0\",priority=\"0\",tp_rank=\"0\"} 0.0\n"
    "sglang:num_queue_reqs{engine_type=\"unified\",model_name=\"m\","
    "moe_ep_rank=\"0\",pp_rank=\"0\",priority=\"1\",tp_rank=\"0\"} 4.0\n"
    "# HELP sglang:token_usage The token usage.\n"
    "# TYPE sglang:token_usage gauge\n"
    "sglang:token_usage{engine_type=\"unified\",model_name=\"m\","
    "moe_ep_rank=\"0\",pp_rank=\"0\",priority=\"\",tp_rank=\"0\"} 0.42\n";

typedef struct page {
  const char *name;
  const char *text;
  double running, waiting, kv;
} page;

static const page PAGES[] = {
    {"vllm_v1", VLLM_V1, 7, 2, 0.4375},
    {"vllm_v0", VLLM_V0, 12, 5, 0.8125},
    {"vllm_dp", VLLM_DP, 7, 7, 0.75},
    {"sglang", SGLANG, 21, 3, 0.62},
    {"sglang_tp", SGLANG_TP, 78, 2, 0.93},
    {"sglang_priority", SGLANG_PRIORITY, 5, 4, 0.42},
};

/* ---------------------------------------------------------------- helpers */

/* Parse an exact-size heap copy, so a read past len is caught by ASan and
 * valgrind. */
static int parse_n(const char *text, size_t len, spi_load *out, char *err,
                   size_t errcap) {
  char *copy = malloc(len ? len : 1);
  assert_non_null(copy);
  if (len) memcpy(copy, text, len);
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  int rc = spi__metrics_parse(copy, len, out, err, errcap);
  free(copy);
  return rc;
}

static int parse(const char *text, spi_load *out, char *err, size_t errcap) {
  return parse_n(text, strlen(text), out, err, errcap);
}

static void expect_ok(const char *text, double running, double waiting,
                      double kv) {
  spi_load l;
  char err[256] = "";
  int rc = parse(text, &l, err, sizeof err);
  if (rc != SPI_OK) print_error("%s\n  -> %d %s\n", text, rc, err);
  assert_int_equal(rc, SPI_OK);
  assert_true(l.running == running);
  assert_true(l.waiting == waiting);
  assert_true(l.kv_usage == kv);
  assert_true(l.at_ns == 0);
}

/* rc and a message that contains want (e.g. "line 3: "). */
static void expect_err(const char *text, int status, const char *want) {
  spi_load l;
  char err[256] = "";
  int rc = parse(text, &l, err, sizeof err);
  if (rc != status || !strstr(err, want))
    print_error("%s\n  -> %d \"%s\", want %d with \"%s\"\n", text, rc, err,
                status, want);
  assert_int_equal(rc, status);
  assert_non_null(strstr(err, want));
}

/* ------------------------------------------------------------ good pages */

static void test_pages(void **st) {
  (void)st;
  for (size_t i = 0; i < sizeof PAGES / sizeof PAGES[0]; i++)
    expect_ok(PAGES[i].text, PAGES[i].running, PAGES[i].waiting, PAGES[i].kv);
}

static void test_both_cache_names(void **st) {
  (void)st;
  /* A version that exports the old name beside the new one: the larger. */
  expect_ok("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n"
            "vllm:kv_cache_usage_perc{model_name=\"m\"} 0.625\n",
            0, 0, 0.625);
  expect_ok("vllm:kv_cache_usage_perc{model_name=\"m\"} 0.5\n"
            "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.625\n",
            0, 0, 0.625);
  /* Either alone. */
  expect_ok("vllm:gpu_cache_usage_perc 0.25\n", 0, 0, 0.25);
  expect_ok("vllm:kv_cache_usage_perc 1\n", 0, 0, 1);
  /* Only one of the three: the others read 0. */
  expect_ok("vllm:num_requests_waiting{model_name=\"m\"} 4\n", 0, 4, 0);
}

static void test_multiple_label_sets(void **st) {
  (void)st;
  /* Counts sum over label sets (and repeated series); usage takes the max. */
  expect_ok("vllm:num_requests_running{model_name=\"a\"} 1\n"
            "vllm:num_requests_running{model_name=\"b\"} 2\n"
            "vllm:num_requests_running{model_name=\"b\"} 3\n"
            "sglang:num_running_reqs 4\n"
            "vllm:num_requests_waiting{model_name=\"a\"} 0.5\n"
            "sglang:num_queue_reqs{x=\"y\"} 0.25\n"
            "sglang:token_usage 0.3\n"
            "vllm:kv_cache_usage_perc{model_name=\"a\"} 0.2\n",
            10, 0.75, 0.3);
  /* A metric name that only starts like a known one is not it. */
  expect_ok("vllm:num_requests_running_total 99\n"
            "vllm:num_requests_running 1\n"
            "xvllm:num_requests_running 50\n"
            "vllm:num_requests_runnin 50\n",
            1, 0, 0);
}

/* A series with a non-empty priority label is a breakdown of the total
 * beside it: read (a malformed one still fails) but not added. */
static void test_priority_breakdown(void **st) {
  (void)st;
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  spi_parse_report rep;
  memset(&rep, 0, sizeof rep);
  rep.struct_size = sizeof rep;
  char err[256] = "x";
  assert_int_equal(spi_metrics_parse_v2(SGLANG_PRIORITY,
                                        strlen(SGLANG_PRIORITY), &l, &rep, err,
                                        sizeof err),
                   SPI_OK);
  assert_true(l.running == 5 && l.waiting == 4 && l.kv_usage == 0.42);
  /* Left out on purpose, as metrics we do not read are: not "skipped". */
  assert_int_equal(rep.found, 3);
  assert_int_equal(rep.skipped, 0);
  assert_string_equal(err, "");
  /* Totals of several ranks still add up; a quoted label name counts. */
  expect_ok("sglang:num_running_reqs{priority=\"\",tp_rank=\"0\"} 2\n"
            "sglang:num_running_reqs{priority=\"\",tp_rank=\"1\"} 3\n"
            "sglang:num_running_reqs{tp_rank=\"0\",priority=\"5\"} 2\n"
            "sglang:num_running_reqs{\"priority\"=\"7\",tp_rank=\"1\"} 3\n"
            "{\"sglang:num_queue_reqs\",\"priority\"=\"1\"} 9\n"
            "sglang:num_queue_reqs 1\n",
            5, 1, 0);
  /* Only the series' own labels: an exemplar's priority is not one, nor
   * is a label that only starts or ends like it. */
  expect_ok("sglang:num_running_reqs{a=\"b\"} 2 # {priority=\"1\"} 1\n"
            "sglang:num_running_reqs{priority_class=\"1\"} 3\n"
            "sglang:num_running_reqs{x_priority=\"1\"} 4\n",
            9, 0, 0);
  /* A breakdown is still checked as a line. */
  expect_err("sglang:num_running_reqs{priority=\"1\"} 2x\n", SPI_EPARSE,
             "line 1: invalid value");
}

static void test_escapes_and_labels(void **st) {
  (void)st;
  expect_ok("vllm:num_requests_running{model_name=\"a\\\"b\\\\c\\nd\"} 2\n", 2,
            0, 0);
  /* Braces, commas, '#' and '=' are plain text inside a value. */
  expect_ok("vllm:num_requests_running{model_name=\"x},{y=\\\"# 1\"} 3\n", 3,
            0, 0);
  /* Empty value, trailing comma, empty set, blanks around everything. */
  expect_ok("vllm:num_requests_running{model_name=\"\",} 1\n"
            "vllm:num_requests_running{} 1\n"
            "vllm:num_requests_running { a = \"1\" ,\tb=\"2\" , } 1\n"
            "  \tvllm:num_requests_running\t 1  \n",
            4, 0, 0);
  /* "name{...}value" without a blank is valid exposition text. */
  expect_ok("vllm:num_requests_running{a=\"b\"}5\n", 5, 0, 0);
  /* UTF-8 in a label value. */
  expect_ok("vllm:num_requests_running{model_name=\"\xc3\xa9t\xc3\xa9\"} 6\n",
            6, 0, 0);
}

static void test_timestamps_and_exemplars(void **st) {
  (void)st;
  expect_ok("vllm:num_requests_running{model_name=\"m\"} 3 1731602148530\n"
            "vllm:num_requests_waiting 2 -1731602148530  \n"
            "vllm:kv_cache_usage_perc 0.5\t1731602148.53\n",
            3, 2, 0.5);
  /* OpenMetrics exemplar after a counter sample, and the EOF marker. */
  expect_ok("# TYPE vllm:request_success counter\n"
            "vllm:request_success_total{finished_reason=\"stop\"} 17 # "
            "{trace_id=\"4bf92f3577b34da6\"} 1.0 1731602148.001\n"
            "vllm:request_success_total 17 1731602148 # {trace_id=\"a\"} 2\n"
            "vllm:num_requests_running 1\n"
            "# EOF\n",
            1, 0, 0);
  expect_err("vllm:num_requests_running 1 2 3\n", SPI_EPARSE,
             "line 1: unexpected text after the timestamp");
  expect_err("vllm:num_requests_running 1 abc\n", SPI_EPARSE,
             "line 1: invalid timestamp");
  expect_err("vllm:num_requests_running 1 NaN\n", SPI_EPARSE,
             "line 1: invalid timestamp");
  expect_err("x 1 # {a=\"b\"} 1 2 # {c=\"d\"} 1\n", SPI_EPARSE,
             "line 1: unexpected text after the timestamp");
  expect_err("x 1 # {a=\"b\"} 1 # {c=\"d\"} 1\n", SPI_EPARSE,
             "line 1: unexpected text after the sample");
  expect_err("x 1 z\n", SPI_EPARSE, "line 1: invalid timestamp");
  expect_err("x 1 # trace\n", SPI_EPARSE, "line 1: expected '{'");
  expect_err("x 1 # {a=\"b\"}\n", SPI_EPARSE, "line 1: expected a value");
  expect_err("x 1 # {a=\"b\"} zz\n", SPI_EPARSE,
             "line 1: invalid exemplar value");
}

static void test_number_forms(void **st) {
  (void)st;
  expect_ok("vllm:num_requests_running 1e3\n", 1000, 0, 0);
  expect_ok("vllm:num_requests_running 1.5E+01\n", 15, 0, 0);
  expect_ok("vllm:num_requests_running +3\n", 3, 0, 0);
  expect_ok("vllm:num_requests_running 5.\n", 5, 0, 0);
  expect_ok("vllm:num_requests_running -0\n", 0, 0, 0);
  expect_ok("vllm:num_requests_running 0012\n", 12, 0, 0);
  expect_ok("vllm:kv_cache_usage_perc .5\n", 0, 0, 0.5);
  expect_ok("vllm:kv_cache_usage_perc 0.1\n", 0, 0, 0.1);
  expect_ok("vllm:kv_cache_usage_perc 1e-400\n", 0, 0, 0);
  expect_ok("vllm:kv_cache_usage_perc 100e-2\n", 0, 0, 1);
  /* Special values are fine on metrics we do not read. */
  expect_ok("other NaN\nother +Inf\nother -Inf\nother inf\nother -infinity\n"
            "other nan\nother 1e999\nvllm:num_requests_running 2\n",
            2, 0, 0);
  /* Long mantissas and far exponents come out close. */
  spi_load l;
  char err[128];
  assert_int_equal(parse("vllm:num_requests_running 2.3518979474117756e+06\n"
                         "vllm:num_requests_waiting "
                         "0.000000000000000000000000000001234e31\n"
                         "vllm:kv_cache_usage_perc 1.2345678901234567890123\n",
                         &l, err, sizeof err),
                   SPI_ERANGE);
  assert_int_equal(parse("vllm:num_requests_running 2.3518979474117756e+06\n"
                         "vllm:num_requests_waiting "
                         "0.000000000000000000000000000001234e31\n"
                         "vllm:kv_cache_usage_perc 0.12345678901234567890123\n",
                         &l, err, sizeof err),
                   SPI_OK);
  assert_true(fabs(l.running - 2351897.9474117756) < 1e-8);
  assert_true(fabs(l.waiting - 12.34) < 1e-12);
  assert_true(fabs(l.kv_usage - 0.12345678901234568) < 1e-16);
  assert_int_equal(
      parse("vllm:num_requests_running 123456789012345678901234567890e-20\n",
            &l, err, sizeof err),
      SPI_OK);
  assert_true(fabs(l.running - 1234567890.1234567) < 1e-6);
}

static void test_bad_numbers(void **st) {
  (void)st;
  static const char *const BAD[] = {"abc", "0x10", "1e", "1e+", "--1", "+",
                                    ".",   "1.2.3", "1,5", "Infx", "nana",
                                    "1_000", "e5"};
  for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
    char text[96];
    snprintf(text, sizeof text, "# ok\nvllm:num_requests_running %s\n", BAD[i]);
    expect_err(text, SPI_EPARSE, "line 2: invalid value");
  }
}

/* The decimal point is '.', whatever the process locale says. */
static void test_locale_independent(void **st) {
  (void)st;
  const char *names[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8",
                         "ru_RU.UTF-8"};
  const char *set = NULL;
  for (size_t i = 0; i < 4 && !set; i++) set = setlocale(LC_NUMERIC, names[i]);
  expect_ok("vllm:kv_cache_usage_perc 0.4375\nvllm:num_requests_running 1.5\n",
            1.5, 0, 0.4375);
  setlocale(LC_NUMERIC, "C");
  if (!set) skip();
}

static void test_line_structure(void **st) {
  (void)st;
  /* CRLF, blank and whitespace-only lines, plain comments. */
  expect_ok("# a comment\r\n\r\n   \r\n\t\n"
            "vllm:num_requests_running{model_name=\"m\"} 4\r\n"
            "#HELP vllm:num_requests_waiting squeezed\r\n"
            "vllm:num_requests_waiting 1\r\n"
            "# UNIT vllm:x seconds\n"
            "#\n",
            4, 1, 0);
  /* The docstring of HELP is free text. */
  expect_ok("# HELP vllm:num_requests_running \\ weird \"text\" {} 1 2 3\n"
            "# HELP vllm:num_requests_running\n"
            "vllm:num_requests_running 1\n",
            1, 0, 0);
  /* Trailing blank lines without a final line feed are fine, and so is
   * OpenMetrics' "# EOF" without one (its grammar makes it optional). */
  expect_ok("vllm:num_requests_running 1\n  ", 1, 0, 0);
  expect_ok("vllm:num_requests_running 3\n# EOF", 3, 0, 0);
  expect_ok("vllm:num_requests_running 3\r\n# EOF\r", 3, 0, 0);
  expect_err("vllm:num_requests_running 3\n# EO", SPI_EPARSE,
             "line 2: the last line has no line feed");
  /* A page cut in the middle of its last line is not read as a short one. */
  expect_err("vllm:num_requests_running 1\nvllm:num_requests_waiting 12",
             SPI_EPARSE, "line 2: the last line has no line feed");
  expect_err("vllm:num_requests_running 1", SPI_EPARSE, "line 1: ");
  expect_err("# HELP x y", SPI_EPARSE, "line 1: ");
}

/* v2 of text, expecting rc, the load and the skipped count. */
static void expect_v2(const char *text, int rc, double running,
                      size_t skipped, size_t first) {
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  spi_parse_report rep;
  memset(&rep, 0, sizeof rep);
  rep.struct_size = sizeof rep;
  char err[256];
  assert_int_equal(spi_metrics_parse_v2(text, strlen(text), &l, &rep, err,
                                        sizeof err),
                   rc);
  if (rc == SPI_OK) assert_true(l.running == running);
  assert_int_equal(rep.skipped, skipped);
  assert_int_equal(rep.first_skipped, first);
  if (skipped) assert_non_null(strstr(err, "a line after # EOF"));
}

/* OpenMetrics' "# EOF" ends the page: what follows is not read, whatever
 * it is, but skipped and counted; blank lines after it are not counted. */
static void test_eof_ends_page(void **st) {
  (void)st;
  expect_v2("vllm:num_requests_running 3\n# EOF\nvllm:num_requests_running 40\n",
            SPI_OK, 3, 1, 3);
  expect_ok("vllm:num_requests_running 3\n# EOF\nvllm:num_requests_running 40\n",
            3, 0, 0);
  /* Not metrics text, or cut short: not read, so no error. */
  expect_v2("vllm:num_requests_running 3\n  # EOF\r\n\n{\"a\":1}\n"
            "vllm:num_requests_running 4",
            SPI_OK, 3, 2, 4);
  expect_v2("vllm:num_requests_running 3\n# EOF\n\n \r\n", SPI_OK, 3, 0, 0);
  /* Nothing read before it: no load. */
  expect_v2("# EOF\nvllm:num_requests_running 40\n", SPI_EMISSING, 0, 1, 2);
  /* "# EOF" is the whole line; longer is a plain comment. */
  expect_v2("# EOF x\nvllm:num_requests_running 40\n", SPI_OK, 40, 0, 0);
}

/* -------------------------------------------- newer syntax (bug 3) */

/* A page from a newer server: Prometheus 3 quoted names are read; a
 * native-histogram value and an OpenMetrics 2.0 start timestamp are lines
 * this version does not read, skipped and counted while the load is still
 * read. Before, the first such line refused the whole page. */
static const char NEWER[] =
    "# HELP \"vllm:num_requests_running\" Number of requests running.\n"
    "# TYPE \"vllm:num_requests_running\" gauge\n"
    "{\"vllm:num_requests_running\",engine=\"0\"} 3\n"
    "{\"vllm.num_requests.other\", \"label.with.dots\"=\"x\"} 99\n"
    "vllm:num_requests_waiting{\"model.name\"=\"m\",engine=\"0\"} 2\n"
    "# TYPE vllm:time_to_first_token_seconds histogram\n"
    "vllm:time_to_first_token_seconds{engine=\"0\"} {count:12,sum:100.5,"
    "schema:3,zero_threshold:1e-128,zero_count:0,positive_spans:[0:2],"
    "positive_deltas:[3,1]}\n"
    "vllm:request_success_total{finished_reason=\"stop\"} 17 st@1520430000.1\n"
    "vllm:num_requests_running{engine=\"1\"} 4 1731602148 st@1731602000\n"
    "vllm:kv_cache_usage_perc{engine=\"0\"} 0.5 # {trace_id=\"ab\"} 0.5\n"
    "# EOF\n";

static void test_newer_syntax(void **st) {
  (void)st;
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  spi_parse_report rep;
  memset(&rep, 0, sizeof rep);
  rep.struct_size = sizeof rep;
  char err[256] = "x";
  assert_int_equal(spi_metrics_parse_v2(NEWER, strlen(NEWER), &l, &rep, err,
                                        sizeof err),
                   SPI_OK);
  assert_true(l.running == 3 && l.waiting == 2 && l.kv_usage == 0.5);
  assert_int_equal(rep.found, 3);
  assert_int_equal(rep.skipped, 3);
  assert_int_equal(rep.first_skipped, 7);
  assert_non_null(strstr(err, "skipped 3 lines"));
  assert_non_null(strstr(err, "line 7, a native-histogram value"));
  /* The first interface reads the same load. */
  expect_ok(NEWER, 3, 2, 0.5);
  /* A start timestamp alone, after the value or after a timestamp. */
  static const char ST[] = "vllm:num_requests_running 1\nx_total 2 st@1.5\n";
  assert_int_equal(
      spi_metrics_parse_v2(ST, strlen(ST), &l, &rep, err, sizeof err), SPI_OK);
  assert_int_equal(rep.skipped, 1);
  assert_int_equal(rep.first_skipped, 2);
  assert_non_null(strstr(err, "line 2, an annotation after the value"));
  /* A composite value without labels: "name {count:...}" is not a label
   * set with a blank before it. */
  static const char NH[] = "h {count:2,sum:1}\nvllm:num_requests_waiting 4\n";
  assert_int_equal(
      spi_metrics_parse_v2(NH, strlen(NH), &l, &rep, err, sizeof err), SPI_OK);
  assert_true(l.waiting == 4);
  assert_int_equal(rep.skipped, 1);
  assert_int_equal(rep.first_skipped, 1);
  expect_ok("vllm:num_requests_running { a = \"1\" } 2\n", 2, 0, 0);
  /* Nothing skipped: an empty message and zero counts. */
  assert_int_equal(spi_metrics_parse_v2(VLLM_V1, strlen(VLLM_V1), &l, &rep,
                                        err, sizeof err),
                   SPI_OK);
  assert_string_equal(err, "");
  assert_int_equal(rep.skipped, 0);
  assert_int_equal(rep.first_skipped, 0);
  assert_int_equal(rep.found, 3);
  /* Every load line skipped: no load, and the message says why. */
  static const char ALL[] = "vllm:num_requests_running 1 st@2\n";
  assert_int_equal(
      spi_metrics_parse_v2(ALL, strlen(ALL), &l, &rep, err, sizeof err),
      SPI_EMISSING);
  assert_non_null(strstr(err, "no load metric"));
  assert_non_null(strstr(err, "skipped 1 line "));
  /* Malformed is still malformed, quoted or not. */
  expect_err("{\"vllm:num_requests_running\" 3\n", SPI_EPARSE,
             "line 1: expected a metric name");
  expect_err("{\"vllm:num_requests_running} 3\n", SPI_EPARSE,
             "line 1: unterminated quoted metric name");
  expect_err("x{\"a.b\"} 3\n", SPI_EPARSE,
             "line 1: expected '=' after a label name");
  expect_err("x{\"a\\tb\"=\"c\"} 3\n", SPI_EPARSE,
             "line 1: invalid escape in a quoted label name");
  expect_err("# TYPE \"a b gauge\n", SPI_EPARSE,
             "line 1: unterminated quoted metric name");
  expect_err("vllm:num_requests_running 1 @2\n", SPI_EPARSE,
             "line 1: invalid timestamp");
  expect_err("vllm:num_requests_running 1 2 @3\n", SPI_EPARSE,
             "line 1: unexpected text after the timestamp");
  /* Arguments. */
  rep.struct_size = 0;
  assert_int_equal(spi_metrics_parse_v2(VLLM_V1, strlen(VLLM_V1), &l, &rep,
                                        err, sizeof err),
                   SPI_EINVAL);
  assert_non_null(strstr(err, "report"));
  rep.struct_size = sizeof rep;
  assert_int_equal(spi_metrics_parse_v2(VLLM_V1, strlen(VLLM_V1), NULL, &rep,
                                        NULL, 0),
                   SPI_EINVAL);
}

/* Through the engine, which returns no report, skipped lines are counted
 * in spotinfer_metrics_lines_skipped_total and the load is still read. */
static void test_engine_counts_skipped(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  assert_int_equal(spi_engine_configure(e, "{}", 2), SPI_OK);
  spi_replica_info ri = ff_replica("r1", SPI_POOL_ON_DEMAND, 1, 4);
  assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
  static char buf[1 << 17];
  size_t need = 0;
  assert_int_equal(spi_engine_metrics(e, buf, sizeof buf, &need), SPI_OK);
  assert_non_null(strstr(buf, "\nspotinfer_metrics_lines_skipped_total 0\n"));
  assert_int_equal(spi_replica_report_metrics(e, "r1", 2, NEWER, strlen(NEWER)),
                   SPI_OK);
  assert_int_equal(spi_replica_report_metrics(e, "r1", 2, NEWER, strlen(NEWER)),
                   SPI_OK);
  spi_replica_status rs;
  memset(&rs, 0, sizeof rs);
  rs.struct_size = sizeof rs;
  assert_int_equal(spi_replica_status_of(e, "r1", 2, &rs), SPI_OK);
  assert_true(rs.running == 3 && rs.waiting == 2 && rs.kv_usage == 0.5);
  assert_int_equal(spi_engine_metrics(e, buf, sizeof buf, &need), SPI_OK);
  assert_non_null(strstr(buf, "# TYPE spotinfer_metrics_lines_skipped_total "
                              "counter\n"));
  assert_non_null(strstr(buf, "\nspotinfer_metrics_lines_skipped_total 6\n"));
  spi_engine_free(e);
}

/* ----------------------------------------------------------------- errors */

static void test_parse_errors(void **st) {
  (void)st;
  static const struct {
    const char *text;
    const char *msg;
  } CASES[] = {
      {"# HELP a b\n# TYPE a gauge\nvllm:num_requests_running\n",
       "line 3: missing value"},
      {"\n\nvllm:num_requests_running   \n", "line 3: missing value"},
      {"vllm:num_requests_running{model_name=llama} 1\n",
       "line 1: expected '\"' to open a label value"},
      {"x 1\nvllm:num_requests_running{model_name=\"llama} 1\n",
       "line 2: unterminated label value"},
      {"vllm:num_requests_running{model_name=\"a\\\n", 
       "line 1: unterminated label value"},
      {"vllm:num_requests_running{model_name=\"a\\tb\"} 1\n",
       "line 1: invalid escape"},
      {"vllm:num_requests_running{model_name} 1\n",
       "line 1: expected '=' after a label name"},
      {"vllm:num_requests_running{1a=\"b\"} 1\n",
       "line 1: expected a label name or '}'"},
      {"vllm:num_requests_running{a:b=\"c\"} 1\n",
       "line 1: expected '=' after a label name"},
      {"vllm:num_requests_running{,} 1\n",
       "line 1: expected a label name or '}'"},
      {"vllm:num_requests_running{a=\"b\" c=\"d\"} 1\n",
       "line 1: expected ',' or '}'"},
      {"vllm:num_requests_running{a=\"b\"\n", "line 1: expected ',' or '}'"},
      {"vllm:num_requests_running{a=\"b\",\n",
       "line 1: expected a label name or '}'"},
      {"1vllm 3\n", "line 1: expected a metric name"},
      {"{a=\"b\"} 3\n", "line 1: expected a metric name"},
      {"x\n-1\n", "line 1: missing value"},
      {"vllm:num_requests_running-1\n",
       "line 1: expected a blank before the value"},
      {"vllm:num_requests_running 1\rx\n", "line 1: invalid value"},
      {"vllm:num_requests_running \x01 1\n", "line 1: invalid value"},
      {"# TYPE vllm:num_requests_running gaug\n",
       "line 1: # TYPE has an unknown metric type"},
      {"# TYPE vllm:num_requests_running\n",
       "line 1: # TYPE has an unknown metric type"},
      {"# TYPE vllm:num_requests_running gauge extra\n",
       "line 1: unexpected text after # TYPE"},
      {"# TYPE\n", "line 1: # TYPE needs a metric name"},
      {"# HELP\n", "line 1: # HELP needs a metric name"},
      {"# HELP 9abc doc\n", "line 1: # HELP needs a metric name"},
      {"# TYPE a-b gauge\n", "line 1: # TYPE needs a metric name"},
      {"<html><body>502 Bad Gateway</body></html>\n",
       "line 1: expected a metric name"},
      {"{\"object\":\"error\",\"message\":\"not found\"}\n",
       "line 1: expected a metric name"},
  };
  for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
    expect_err(CASES[i].text, SPI_EPARSE, CASES[i].msg);
  /* A NUL inside the text is just a bad byte, not the end. */
  spi_load l;
  char err[128];
  static const char nul[] = "vllm:num_requests_running 1\n\0x 1\n";
  assert_int_equal(parse_n(nul, sizeof nul - 1, &l, err, sizeof err),
                   SPI_EPARSE);
  assert_non_null(strstr(err, "line 2: "));
  /* The line number counts every line, comments and blanks included. */
  char big[4096] = "";
  for (int i = 0; i < 100; i++) strcat(big, i % 3 ? "# c\n" : "\n");
  strcat(big, "vllm:num_requests_running oops\n");
  expect_err(big, SPI_EPARSE, "line 101: invalid value");
}

static void test_range_errors(void **st) {
  (void)st;
  expect_err("# x\nvllm:num_requests_running NaN\n", SPI_ERANGE,
             "line 2: vllm:num_requests_running is NaN");
  expect_err("vllm:num_requests_waiting +Inf\n", SPI_ERANGE,
             "line 1: vllm:num_requests_waiting is infinite");
  expect_err("vllm:num_requests_waiting 1e400\n", SPI_ERANGE,
             "line 1: vllm:num_requests_waiting is infinite");
  expect_err("\n\nsglang:num_running_reqs -1\n", SPI_ERANGE,
             "line 3: sglang:num_running_reqs is negative");
  expect_err("vllm:gpu_cache_usage_perc 1.5\n", SPI_ERANGE,
             "line 1: vllm:gpu_cache_usage_perc is 1.5, above 1");
  expect_err("vllm:kv_cache_usage_perc 1.0000001\n", SPI_ERANGE,
             "above 1");
  expect_err("sglang:token_usage -0.1\n", SPI_ERANGE,
             "line 1: sglang:token_usage is negative");
  expect_err("vllm:kv_cache_usage_perc -Inf\n", SPI_ERANGE, "is infinite");
  expect_err("vllm:num_requests_running 1.5e308\n"
             "vllm:num_requests_running 1.5e308\n",
             SPI_ERANGE, "line 2: the sum of vllm:num_requests_running");
  /* The first problem wins, parse or range. */
  expect_err("vllm:num_requests_running -1\nbad line\n", SPI_ERANGE, "line 1:");
  expect_err("bad line\nvllm:num_requests_running -1\n", SPI_EPARSE, "line 1:");
}

static void test_missing(void **st) {
  (void)st;
  expect_err("", SPI_EMISSING, "no load metric");
  expect_err("\n\n", SPI_EMISSING, "no load metric");
  expect_err("# HELP vllm:num_requests_running x\n"
             "# TYPE vllm:num_requests_running gauge\n",
             SPI_EMISSING, "no load metric");
  expect_err("process_resident_memory_bytes 1e9\n"
             "vllm:num_requests_swapped 0\n"
             "vllm:cpu_cache_usage_perc 0.5\n",
             SPI_EMISSING, "no load metric");
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  assert_int_equal(spi__metrics_parse(NULL, 0, &l, NULL, 0), SPI_EMISSING);
}

static void test_public_api(void **st) {
  (void)st;
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  l.at_ns = 77;
  assert_int_equal(spi_metrics_parse(VLLM_V0, strlen(VLLM_V0), &l), SPI_OK);
  assert_true(l.running == 12 && l.waiting == 5 && l.kv_usage == 0.8125);
  assert_true(l.at_ns == 0);
  assert_int_equal(l.struct_size, sizeof l);
  /* A failure leaves *out as it was. */
  spi_load before = l;
  assert_int_equal(spi_metrics_parse("x y\n", 4, &l), SPI_EPARSE);
  assert_memory_equal(&before, &l, sizeof l);
  assert_int_equal(spi_metrics_parse("", 0, &l), SPI_EMISSING);
  assert_int_equal(spi_metrics_parse(NULL, 0, &l), SPI_EMISSING);
  assert_int_equal(spi_metrics_parse(NULL, 3, &l), SPI_EINVAL);
  assert_int_equal(spi_metrics_parse("x 1\n", 4, NULL), SPI_EINVAL);
  l.struct_size = sizeof l - 1;
  assert_int_equal(spi_metrics_parse(VLLM_V0, strlen(VLLM_V0), &l), SPI_EINVAL);
  l.struct_size = 0;
  assert_int_equal(spi_metrics_parse(VLLM_V0, strlen(VLLM_V0), &l), SPI_EINVAL);
  /* Internal: NULL output and a NULL err buffer. */
  char err[64];
  assert_int_equal(spi__metrics_parse("x 1\n", 4, NULL, err, sizeof err),
                   SPI_EINVAL);
  assert_non_null(strstr(err, "NULL"));
  assert_int_equal(spi__metrics_parse("x\n", 2, &l, NULL, 0), SPI_EPARSE);
  /* A small err buffer is cut, not overrun. */
  char tiny[8];
  memset(tiny, 'z', sizeof tiny);
  assert_int_equal(spi__metrics_parse("x\n", 2, &l, tiny, 5), SPI_EPARSE);
  assert_string_equal(tiny, "line");
  assert_true(tiny[5] == 'z');
}

/* Text after len is never looked at. */
static void test_not_nul_terminated(void **st) {
  (void)st;
  static const char text[] = "vllm:num_requests_running 7\nGARBAGE{{{";
  size_t len = strlen("vllm:num_requests_running 7\n");
  spi_load l;
  char err[64];
  assert_int_equal(parse_n(text, len, &l, err, sizeof err), SPI_OK);
  assert_true(l.running == 7);
  /* A value that would continue past len is cut there. */
  static const char t2[] = "vllm:num_requests_running 7\n9";
  assert_int_equal(parse_n(t2, sizeof t2 - 2, &l, err, sizeof err), SPI_OK);
  assert_true(l.running == 7);
}

/* Every prefix of every page parses or fails cleanly; one that parses ends
 * at a line boundary and reads values no larger than the whole page's. */
static void test_truncation(void **st) {
  (void)st;
  for (size_t p = 0; p < sizeof PAGES / sizeof PAGES[0]; p++) {
    const char *t = PAGES[p].text;
    size_t n = strlen(t);
    for (size_t len = 0; len <= n; len++) {
      spi_load l;
      char err[256] = "";
      int rc = parse_n(t, len, &l, err, sizeof err);
      if (rc == SPI_OK) {
        assert_true(len == n || t[len - 1] == '\n');
        assert_true(l.running <= PAGES[p].running);
        assert_true(l.waiting <= PAGES[p].waiting);
        assert_true(l.kv_usage <= PAGES[p].kv);
      } else {
        if (rc != SPI_EPARSE && rc != SPI_EMISSING)
          print_error("%s at %zu: %d %s\n", PAGES[p].name, len, rc, err);
        assert_true(rc == SPI_EPARSE || rc == SPI_EMISSING);
        assert_true(err[0] != '\0');
        if (rc == SPI_EPARSE) assert_true(strncmp(err, "line ", 5) == 0);
      }
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pages),
      cmocka_unit_test(test_both_cache_names),
      cmocka_unit_test(test_multiple_label_sets),
      cmocka_unit_test(test_priority_breakdown),
      cmocka_unit_test(test_escapes_and_labels),
      cmocka_unit_test(test_timestamps_and_exemplars),
      cmocka_unit_test(test_number_forms),
      cmocka_unit_test(test_bad_numbers),
      cmocka_unit_test(test_locale_independent),
      cmocka_unit_test(test_line_structure),
      cmocka_unit_test(test_eof_ends_page),
      cmocka_unit_test(test_newer_syntax),
      cmocka_unit_test(test_engine_counts_skipped),
      cmocka_unit_test(test_parse_errors),
      cmocka_unit_test(test_range_errors),
      cmocka_unit_test(test_missing),
      cmocka_unit_test(test_public_api),
      cmocka_unit_test(test_not_nul_terminated),
      cmocka_unit_test(test_truncation),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
