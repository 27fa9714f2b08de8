/*
 * options.c - the one table of accepted configuration options.
 *
 * The runtime listing (spi_option_get) and every validator read this table,
 * so a bound, a default or a doc line exists exactly once. Paths use "[]" for
 * the elements of a list. Rows are grouped by section; a section's rows are
 * parsed by the module that owns it (classifier.c, keybuilder.c, cost.c) or
 * by the engine (modules, module_config, limits, priority_map).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spi_internal.h"

#define B SPI_OPT_BOOL
#define I SPI_OPT_INT
#define D SPI_OPT_DOUBLE
#define S SPI_OPT_STRING
#define E SPI_OPT_ENUM
#define L SPI_OPT_LIST
#define O SPI_OPT_OBJECT

/* The reference classification rules (see README "Classifier"). */
#define SPI_DEFAULT_RULES                                                      \
  "[{\"name\":\"priority-tier\",\"when\":{\"service_tier\":[\"priority\","    \
  "\"scale\"]},\"class\":\"gold\"},"                                           \
  "{\"name\":\"interactive-sla\",\"when\":{\"stream\":true,\"sla_ms_max\":"   \
  "2500},\"class\":\"gold\"},"                                                 \
  "{\"name\":\"interactive\",\"when\":{\"stream\":true,\"has_sla\":false},"   \
  "\"class\":\"gold\"},"                                                       \
  "{\"name\":\"background\",\"when\":{\"service_tier\":[\"flex\"]},"          \
  "\"class\":\"bronze\"},"                                                     \
  "{\"name\":\"batch\",\"when\":{\"stream\":false,\"sla_ms_min\":60000},"     \
  "\"class\":\"bronze\"},"                                                     \
  "{\"name\":\"retry-tolerant\",\"when\":{\"replayable\":true},"              \
  "\"class\":\"silver\"}]"

static const spi_optdesc OPTIONS[] = {
    /* modules: which registered module of each kind the engine uses. */
    {"modules", O, "{}", 0, 0, "module of each kind, by registered name"},
    {"modules.classifier", S, "\"reference\"", 0, 0, "classifier module"},
    {"modules.key_builder", S, "\"xxh3-v1\"", 0, 0, "cache-key builder module"},
    {"modules.cost_model", S, "\"reference\"", 0, 0, "cost model module"},
    {"modules.policy", S, "\"reference\"", 0, 0,
     "routing policy module (reference, least-loaded, or a user's)"},
    {"modules.fleet_bus", S, "\"\"", 0, 0,
     "fleet bus module sharing notices and cooldowns between engines "
     "(\"\" = none)"},
    {"module_config", O, "{}", 0, 0,
     "free-form configuration of user modules, by module name"},

    /* fleet: what the engine does with its fleet bus (notice_bus.c). */
    {"fleet", O, "{}", 0, 0, "sharing notices and cooldowns (modules.fleet_bus)"},
    {"fleet.max_per_poll", I, "256", 1, 65536,
     "most bus messages one tick takes; the rest wait for the next"},

    /* limits: absurd input is refused before it costs memory. */
    {"limits", O, "{}", 0, 0, "size limits on request input"},
    {"limits.max_body_bytes", I, "4194304", 64, 1073741824,
     "largest OpenAI JSON body accepted"},
    {"limits.max_field_bytes", I, "1048576", 16, 1073741824,
     "largest single string attribute, or text of a message (its images "
     "and other parts count toward max_body_bytes only)"},
    {"limits.max_messages", I, "2048", 1, 1048576, "most chat messages"},
    {"limits.max_tools_bytes", I, "262144", 2, 1073741824,
     "largest tools JSON array"},
    {"limits.max_metadata_pairs", I, "16", 0, 256, "most metadata pairs"},
    {"limits.max_token_ids", I, "1048576", 1, 268435456,
     "most prompt token ids"},

    /* priority_map: the class in other schedulers' vocabularies. */
    {"priority_map", O, "{}", 0, 0, "class <-> priority / service tier"},
    {"priority_map.vllm", O, "{}", 0, 0,
     "vLLM priority per class (lower is more urgent)"},
    {"priority_map.vllm.gold", I, "-1", -1000000, 1000000, "vLLM priority of gold"},
    {"priority_map.vllm.silver", I, "0", -1000000, 1000000, "vLLM priority of silver"},
    {"priority_map.vllm.bronze", I, "1", -1000000, 1000000, "vLLM priority of bronze"},
    {"priority_map.llmd", O, "{}", 0, 0,
     "llm-d priority per class (higher is more urgent, negative sheddable)"},
    {"priority_map.llmd.gold", I, "1", -1000000, 1000000, "llm-d priority of gold"},
    {"priority_map.llmd.silver", I, "0", -1000000, 1000000, "llm-d priority of silver"},
    {"priority_map.llmd.bronze", I, "-1", -1000000, 1000000, "llm-d priority of bronze"},
    {"priority_map.service_tier", O, "{}", 0, 0, "OpenAI service_tier per class"},
    {"priority_map.service_tier.gold", E, "\"priority\"", 0, 0,
     "auto|default|flex|priority|scale"},
    {"priority_map.service_tier.silver", E, "\"default\"", 0, 0,
     "auto|default|flex|priority|scale"},
    {"priority_map.service_tier.bronze", E, "\"flex\"", 0, 0,
     "auto|default|flex|priority|scale"},

    /* classifier: the built-in "reference" classifier. */
    {"classifier", O, "{}", 0, 0, "the reference classifier"},
    {"classifier.honor_explicit_class", B, "true", 0, 0,
     "an explicit class on the request wins"},
    {"classifier.honor_priority", B, "true", 0, 0,
     "a request priority (vLLM scale) maps to a class through priority_map.vllm"},
    {"classifier.default_class", E, "\"silver\"", 0, 0,
     "class when no rule matches: gold|silver|bronze"},
    {"classifier.rules", L, SPI_DEFAULT_RULES, 0, 64,
     "ordered rules, first match wins (at most 64)"},
    {"classifier.rules[]", O, "{}", 0, 0, "one rule: name, when, class, replayable"},
    {"classifier.rules[].name", S, "\"\"", 0, 0, "name shown in the reason"},
    {"classifier.rules[].class", E, "\"silver\"", 0, 0, "gold|silver|bronze"},
    {"classifier.rules[].replayable", B, "null", 0, 0,
     "override replayable (default: the class default)"},
    {"classifier.rules[].when", O, "{}", 0, 0,
     "conditions, all must hold; {} matches everything"},
    {"classifier.rules[].when.stream", B, "null", 0, 0, "request streams"},
    {"classifier.rules[].when.replayable", B, "null", 0, 0,
     "request's replayable flag (unset never matches)"},
    {"classifier.rules[].when.has_sla", B, "null", 0, 0, "an SLA is given"},
    {"classifier.rules[].when.has_tools", B, "null", 0, 0, "tools are given"},
    {"classifier.rules[].when.sla_ms_max", I, "null", 1, 86400000,
     "SLA given and <= this"},
    {"classifier.rules[].when.sla_ms_min", I, "null", 1, 86400000,
     "SLA given and >= this"},
    {"classifier.rules[].when.priority_min", I, "null", -1000000, 1000000,
     "priority given and >= this (vLLM scale)"},
    {"classifier.rules[].when.priority_max", I, "null", -1000000, 1000000,
     "priority given and <= this (vLLM scale)"},
    {"classifier.rules[].when.expected_output_tokens_min", I, "null", 0,
     1000000000, "expected output tokens given and >= this"},
    {"classifier.rules[].when.expected_output_tokens_max", I, "null", 0,
     1000000000, "expected output tokens given and <= this"},
    {"classifier.rules[].when.service_tier", L, "null", 0, 5,
     "service_tier is one of these"},
    {"classifier.rules[].when.service_tier[]", E, "\"default\"", 0, 0,
     "auto|default|flex|priority|scale"},
    {"classifier.rules[].when.tenant_tier", L, "null", 0, 32,
     "tenant tier is one of these"},
    {"classifier.rules[].when.tenant_tier[]", S, "\"\"", 0, 0, "a tenant tier"},
    {"classifier.rules[].when.metadata", O, "null", 0, 8,
     "{key: [values]}: the request's metadata has each key (its last pair) "
     "with one of its values; at most 8 keys of 1..64 bytes, 32 values of "
     "at most 128 bytes each"},
    {"classifier.replayable_default", O, "{}", 0, 0,
     "replayable when neither the request nor the rule says"},
    {"classifier.replayable_default.gold", B, "false", 0, 0, "gold default"},
    {"classifier.replayable_default.silver", B, "true", 0, 0, "silver default"},
    {"classifier.replayable_default.bronze", B, "true", 0, 0, "bronze default"},
    {"classifier.degrade", O, "{}", 0, 0,
     "degrade plan per class, one entry per pressure level 0..3"},
    {"classifier.degrade.gold", L,
     "[{},{},{},{\"max_output_tokens\":2048}]", 4, 4, "gold plan, 4 levels"},
    {"classifier.degrade.gold[]", O, "{}", 0, 0, "one level"},
    {"classifier.degrade.gold[].max_output_tokens", I, "0", 0, 1000000000,
     "output-token cap, 0 = none"},
    {"classifier.degrade.gold[].tools", B, "true", 0, 0, "tools allowed"},
    {"classifier.degrade.gold[].defer", B, "false", 0, 0, "queue instead"},
    {"classifier.degrade.silver", L,
     "[{},{\"max_output_tokens\":1024},{\"max_output_tokens\":512,\"tools\":"
     "false},{\"max_output_tokens\":256,\"tools\":false}]",
     4, 4, "silver plan, 4 levels"},
    {"classifier.degrade.silver[]", O, "{}", 0, 0, "one level"},
    {"classifier.degrade.silver[].max_output_tokens", I, "0", 0, 1000000000,
     "output-token cap, 0 = none"},
    {"classifier.degrade.silver[].tools", B, "true", 0, 0, "tools allowed"},
    {"classifier.degrade.silver[].defer", B, "false", 0, 0, "queue instead"},
    {"classifier.degrade.bronze", L,
     "[{},{\"max_output_tokens\":512},{\"max_output_tokens\":256,\"tools\":"
     "false},{\"max_output_tokens\":256,\"tools\":false,\"defer\":true}]",
     4, 4, "bronze plan, 4 levels"},
    {"classifier.degrade.bronze[]", O, "{}", 0, 0, "one level"},
    {"classifier.degrade.bronze[].max_output_tokens", I, "0", 0, 1000000000,
     "output-token cap, 0 = none"},
    {"classifier.degrade.bronze[].tools", B, "true", 0, 0, "tools allowed"},
    {"classifier.degrade.bronze[].defer", B, "false", 0, 0, "queue instead"},
    {"classifier.cascade", O, "{}", 0, 0,
     "small/large model choice from a complexity score"},
    {"classifier.cascade.enabled", B, "false", 0, 0,
     "score complexity and pick a model tier (off: always large, score 0)"},
    {"classifier.cascade.scan_bytes", I, "2048", 64, 8192,
     "keywords and question marks are looked for in this many leading bytes"},
    {"classifier.cascade.long_query_bytes", I, "300", 1, 1073741824,
     "a query longer than this scores length_weight"},
    {"classifier.cascade.length_weight", D, "1", 0, 1000, "weight of length"},
    {"classifier.cascade.keywords", L,
     "[\"analyze\",\"compare\",\"explain why\",\"step by step\",\"write code\"]",
     0, 64, "each keyword present (case-insensitive) scores keyword_weight"},
    {"classifier.cascade.keywords[]", S, "\"\"", 0, 0, "a keyword, 1..64 bytes"},
    {"classifier.cascade.keyword_weight", D, "1", 0, 1000, "weight per keyword"},
    {"classifier.cascade.question_marks", I, "2", 0, 1000000,
     "more '?' than this scores question_weight"},
    {"classifier.cascade.question_weight", D, "1", 0, 1000, "weight of questions"},
    {"classifier.cascade.large_threshold", D, "2", 0, 1000000,
     "score >= this picks the large model"},


    /* router: engine-level routing state and its bounds. */
    {"router", O, "{}", 0, 0, "routing limits, load freshness, breakers"},
    {"router.max_replicas", I, "1024", 1, 4096, "most replicas registered"},
    {"router.max_tickets", I, "16384", 16, 4194304,
     "most open tickets; fixed once the engine has routed"},
    {"router.index_bytes", I, "8388608", 4096, 4294967296.0,
     "hard memory cap of the prefix index, bytes; all of it resident "
     "from when it is made, so no route takes a page fault on it"},
    {"router.load_max_age_ms", I, "1000", 1, 3600000,
     "a load signal older than this counts as saturated"},
    {"router.bytes_per_token", D, "4", 0.5, 64,
     "prompt bytes per token when the count is unknown (TTFT estimate)"},
    {"router.ttft_base_ms", D, "20", 0, 1000000, "TTFT estimate: fixed part"},
    {"router.ttft_per_queued_ms", D, "50", 0, 1000000,
     "TTFT estimate: per request waiting on the replica"},
    {"router.prefill_tokens_per_s", D, "10000", 1, 1e9,
     "TTFT estimate: uncached prompt tokens prefilled per second"},
    {"router.kv_open", D, "0.85", 0, 1,
     "pool KV usage at which bronze is shed"},
    {"router.kv_close", D, "0.75", 0, 1,
     "pool KV usage below which bronze is served again"},
    {"router.kv_silver_open", D, "0.95", 0, 1,
     "pool KV usage at which silver is shed too"},
    {"router.kv_silver_close", D, "0.85", 0, 1,
     "pool KV usage below which silver is served again"},
    {"router.error_threshold", I, "5", 1, 1000,
     "consecutive ticket errors that open a replica's breaker"},
    {"router.error_cooldown_ms", I, "10000", 1, 3600000,
     "open breaker cools down this long, then allows one probe"},
    {"router.max_fallbacks", I, "3", 0, 4, "fallback replicas per decision"},
    {"router.weight_seconds", I, "60", 0, 86400,
     "prefix index: seconds of recency one unit of class weight is worth"},
    {"router.class_weight", O, "{}", 0, 0, "prefix index eviction weight"},
    {"router.class_weight.gold", I, "4", 1, 255, "gold entries' weight"},
    {"router.class_weight.silver", I, "2", 1, 255, "silver entries' weight"},
    {"router.class_weight.bronze", I, "1", 1, 255, "bronze entries' weight"},
    {"router.ledger_max_rows", I, "1024", 2, 1048576,
     "cost ledger rows (tenant x model x pool x class)"},
    {"router.metrics_max_families", I, "64", 1, 65536,
     "prefix families tracked by name in metrics"},
    {"router.shadow_policy", S, "\"\"", 0, 0,
     "a second policy run beside the active one and only recorded"},
    {"router.decode_tokens_per_s", D, "30", 0.01, 1e6,
     "one stream's decode rate when a replica does not say (drain estimates)"},
    {"router.drain_margin_ms", I, "10000", 0, 3600000,
     "a request drains only if it ends this long before the deadline"},
    {"router.gold_drain_progress", D, "0.85", 0, 1,
     "gold past this fraction of its output drains whatever the deadline"},
    {"router.pool_cooldown_ms", I, "180000", 0, 86400000,
     "an interruption makes its spot pool (type, zone) unavailable this long"},
    {"router.advised_ttl_ms", I, "1200000", 1000, 86400000,
     "rebalance advice lasts this long unless renewed"},
    {"router.advised_max_output_tokens", I, "512", 0, 1000000000,
     "an advised machine takes no request expected to be longer"},
    {"router.advised_penalty_ms", D, "500", 0, 1000000,
     "TTFT penalty that lowers an advised machine's weight"},
    {"router.default_window_ms", I, "30000", 1000, 3600000,
     "deadline of a notice that gives none"},

    /* policy: the built-in "reference" policy. */
    {"policy", O, "{}", 0, 0, "the reference routing policy"},
    {"policy.affinity", B, "true", 0, 0,
     "prefer replicas holding the prefix (least-loaded runs without)"},
    {"policy.gold_on_demand_sla_ms", I, "2500", 1, 86400000,
     "gold with an SLA at most this (or none) goes on-demand"},
    {"policy.gold_spot_overflow", E, "\"warm\"", 0, 0,
     "gold overflows to spot when on-demand is full: never|warm|always"},
    {"policy.cache_hit_spot_max_output_tokens", I, "400", 0, 1000000000,
     "a spot cache hit with expected output below this goes to spot"},
    {"policy.replayable_to_spot", B, "true", 0, 0,
     "replayable requests go to spot"},
    {"policy.bronze_queue_without_spot", B, "true", 0, 0,
     "bronze is queued, not sent on-demand, when no spot is up"},
    {"policy.silver_on_demand_fallback", B, "true", 0, 0,
     "silver may fall back to on-demand"},
    {"policy.fallback_batch_share", D, "0.2", 0, 1,
     "in a fleet that runs spot, a class below gold that falls back to "
     "on-demand takes a replica only while its streams, this one "
     "included, are at most this share of its batch (1: no limit)"},
    {"policy.default_pool", E, "\"on_demand\"", 0, 0,
     "pool when no rule applies: spot|on_demand"},
    {"policy.gold_wait_weight", D, "1", 0.01, 1,
     "what a ms of queue wait costs gold, against a ms of prefill"},
    {"policy.silver_wait_weight", D, "0.5", 0.01, 1,
     "what a ms of queue wait costs silver (below 1: it may wait for a "
     "replica holding its prefix)"},
    {"policy.bronze_wait_weight", D, "0.25", 0.01, 1,
     "what a ms of queue wait costs bronze"},
    {"policy.load_share_cap", D, "1.2", 1, 100,
     "a replica's share of its pool's work (tokens sent, prompt and "
     "output), as a multiple of the pool's mean, beyond which a "
     "conversation staying there pays for the excess as prefill time"},
    {"policy.speculative_first", B, "false", 0, 0,
     "send every request to the small/draft tier first"},

    /* cache_key: the built-in "xxh3-v1" key builder. */
    {"cache_key", O, "{}", 0, 0, "the xxh3-v1 cache-key builder"},
    {"cache_key.schema_version", I, "1", 1, 65535,
     "key-schema version mixed into every key; bump to invalidate all keys"},
    /* 1024 is the smallest block size at which key + block hashes of an 8
     * and a 64 KiB prompt keep >= 0.6x the throughput of one plain XXH3 pass
     * (about 0.65x and 0.8x; 512 gives 0.55x and 0.7x, since XXH3's per-call
     * cost is not yet amortised; tests/bench/bench_key.c), and still
     * resolves a shared prefix to about 256 tokens of text. */
    {"cache_key.block_bytes", I, "1024", 16, 1048576,
     "prefix block size in bytes of canonical prompt text"},
    /* At most 4096 so a token block serialises into a 16 KiB stack buffer
     * (keybuilder.c); KV-cache pages are far smaller. */
    {"cache_key.block_tokens", I, "16", 1, 4096,
     "prefix block size in tokens when token ids are given"},
    {"cache_key.max_blocks", I, "8192", 1, 1048576,
     "most prefix blocks hashed per request"},

    /* replay: the replay queue (replay.c) and its stores (journal.c,
     * store_memory.c). The engine's section gives every queue opened on it
     * its defaults; the JSON given to spi_replay_open() overrides them. */
    {"replay", O, "{}", 0, 0, "replay queue defaults (spi_replay_open)"},
    {"replay.store", S, "\"journal\"", 0, 0,
     "replay store module: journal, memory, or a user's"},
    {"replay.dir", S, "\"\"", 0, 0,
     "journal directory (the journal store requires one)"},
    {"replay.fsync", E, "\"batch\"", 0, 0,
     "journal durability: always|batch|none (none survives a killed "
     "process, not a machine crash; its compactions are synced all the "
     "same)"},
    {"replay.group_commit_ms", I, "0", 0, 1000,
     "batch: the syncing caller first waits this long for others to share "
     "its fsync"},
    {"replay.segment_bytes", I, "67108864", 4096, 1073741824,
     "journal segment size at which the next segment starts"},
    {"replay.compact_min_bytes", I, "8388608", 0, 1099511627776.0,
     "journal size below which it is never compacted"},
    {"replay.compact_ratio", D, "2", 1.1, 1000,
     "compact once the journal is this many times its live records"},
    {"replay.lease_ms", I, "30000", 1, 86400000,
     "claim lease (visibility timeout) when a claim names none"},
    {"replay.backoff_base_ms", I, "1000", 1, 86400000,
     "retry delay after the first failure; doubles per failure"},
    {"replay.backoff_max_ms", I, "60000", 1, 86400000,
     "longest retry delay, at least backoff_base_ms"},
    {"replay.backoff_jitter", D, "0.5", 0, 1,
     "retry delays are shortened by up to this fraction (fixed per key and "
     "attempt)"},
    {"replay.max_attempts", I, "5", 1, 1000,
     "failed attempts (nacks, expired leases) before the dead-letter"},
    {"replay.max_bytes", I, "268435456", 4096, 1099511627776.0,
     "memory for queued and dead envelopes; enqueue beyond it is SPI_EFULL"},
    {"replay.max_envelope_bytes", I, "16777216", 64, 1073741824,
     "largest envelope (key, body and partial output), else SPI_ETOOBIG"},
    {"replay.max_acked_keys", I, "65536", 0, 16777216,
     "acked keys remembered so a duplicate enqueue is refused"},
    {"replay.max_dead", I, "1024", 0, 16777216,
     "dead-lettered envelopes kept; beyond, the oldest keeps only its key"},
    {"replay.fallback", E, "\"none\"", 0, 0,
     "queue store (e.g. redis) unreachable: none (fail) or journal (keep "
     "enqueues in replay.dir, moved to the store when it answers)"},
    {"replay.store_config", O, "{}", 0, 0,
     "free-form configuration handed to a user's replay store"},

    /* cost: the built-in "reference" cost model. */
    {"cost", O, "{}", 0, 0, "the reference cost model"},
    {"cost.spot_usd_per_gpu_hour", D, "1.8", 0.0001, 1000,
     "spot price per GPU-hour"},
    {"cost.on_demand_usd_per_gpu_hour", D, "4.5", 0.0001, 1000,
     "on-demand price per GPU-hour"},
    {"cost.gpus_per_replica", I, "1", 1, 1024, "GPUs behind one replica"},
    {"cost.prefill_tokens_per_s", D, "10000", 1, 1e9,
     "prompt tokens a replica prefills per second"},
    {"cost.decode_tokens_per_s", D, "1000", 1, 1e9,
     "output tokens a replica generates per second (batched)"},
    {"cost.spot_interruption_rate", D, "0.05", 0, 1,
     "fraction of spot hours interrupted"},
    {"cost.restart_overhead_s", D, "600", 0, 86400,
     "work lost per interruption, seconds"},
    {"cost.default_output_tokens", I, "256", 1, 10000000,
     "output tokens assumed when nothing says"},
    {"cost.bytes_per_token", D, "4", 0.5, 64,
     "bytes of prompt text per token when the count is unknown"},
};

const spi_optdesc *spi__opt_table(size_t *count) {
  *count = sizeof OPTIONS / sizeof OPTIONS[0];
  return OPTIONS;
}

#define N_OPTIONS (sizeof OPTIONS / sizeof OPTIONS[0])

/*
 * Lookups by path. OPTIONS stays in listing order (spi_option_get shows the
 * sections in the order a reader wants them), so a path is looked up in
 * BY_PATH: the row numbers ordered by path, sorted once per process, then
 * searched by halving. Every configure looks up each option it reads (about
 * 140); a scan with string compares over the whole table made that lookup
 * most of the cost of spi_engine_configure and spi_replay_open.
 */
static uint16_t BY_PATH[N_OPTIONS];
static pthread_once_t by_path_once = PTHREAD_ONCE_INIT;

static int cmp_rows(const void *a, const void *b) {
  return strcmp(OPTIONS[*(const uint16_t *)a].path,
                OPTIONS[*(const uint16_t *)b].path);
}

static void sort_by_path(void) {
  for (size_t i = 0; i < N_OPTIONS; i++) BY_PATH[i] = (uint16_t)i;
  qsort(BY_PATH, N_OPTIONS, sizeof BY_PATH[0], cmp_rows);
}

const uint16_t *spi__opt_by_path(size_t *count) {
  pthread_once(&by_path_once, sort_by_path);
  *count = N_OPTIONS;
  return BY_PATH;
}

const spi_optdesc *spi__opt_find(const char *path) {
  size_t n;
  const uint16_t *rows = spi__opt_by_path(&n);
  size_t lo = 0, hi = n; /* the path, if present, is in rows[lo, hi) */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(path, OPTIONS[rows[mid]].path);
    if (c == 0) return &OPTIONS[rows[mid]];
    if (c < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return NULL;
}

size_t spi_option_count(void) { return sizeof OPTIONS / sizeof OPTIONS[0]; }

int spi_option_get(size_t index, spi_option_info *out) {
  if (!out || out->struct_size < sizeof(spi_option_info)) return SPI_EINVAL;
  if (index >= sizeof OPTIONS / sizeof OPTIONS[0]) return SPI_ENOTFOUND;
  const spi_optdesc *d = &OPTIONS[index];
  out->path = d->path;
  out->type = d->type;
  out->reserved0 = 0;
  out->default_json = d->default_json;
  out->min_value = d->min_value;
  out->max_value = d->max_value;
  out->doc = d->doc;
  return SPI_OK;
}
