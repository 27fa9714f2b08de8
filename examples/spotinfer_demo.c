/*
 * spotinfer_demo.c - what libspotinfer decides for a handful of real
 * OpenAI-style requests, using nothing but the public API.
 *
 * For each request body it prints the class and why, the degrade plan at
 * normal and high pressure, the versioned KV-cache key and prefix blocks,
 * and what the request costs on spot and on on-demand GPUs. It ends with
 * the cost model's worked figures and one malformed body being refused.
 *
 * The output is deterministic: the engine runs on a fixed clock and nothing
 * printed depends on the time or the machine.
 *
 * Build: part of the project build (examples/), or
 *   cc spotinfer_demo.c $(pkg-config --cflags --libs spotinfer)
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_extras.h"

/* The cost figures the engine is configured with; the summary reuses them. */
#define SPOT_USD_PER_GPU_HOUR 1.80
#define ON_DEMAND_USD_PER_GPU_HOUR 4.50
#define DECODE_TOKENS_PER_S 1000.0
#define INTERRUPTION_RATE 0.05
#define RESTART_OVERHEAD_S 600.0

#define STR_(x) #x
#define STR(x) STR_(x)

static const char CONFIG[] =
    "{"
    "\"cache_key\": {\"block_bytes\": 64},"
    "\"classifier\": {\"cascade\": {\"enabled\": true}},"
    "\"cost\": {"
    "\"spot_usd_per_gpu_hour\": " STR(SPOT_USD_PER_GPU_HOUR) ","
    "\"on_demand_usd_per_gpu_hour\": " STR(ON_DEMAND_USD_PER_GPU_HOUR) ","
    "\"gpus_per_replica\": 1,"
    "\"prefill_tokens_per_s\": 10000,"
    "\"decode_tokens_per_s\": " STR(DECODE_TOKENS_PER_S) ","
    "\"spot_interruption_rate\": " STR(INTERRUPTION_RATE) ","
    "\"restart_overhead_s\": " STR(RESTART_OVERHEAD_S) ","
    "\"default_output_tokens\": 256"
    "}"
    "}";

/* --------------------------------------------------------- the requests */

#define SUPPORT_SYSTEM                                                        \
  "{\"role\":\"system\",\"content\":\"You are Ava, the support assistant "   \
  "for Acme Cloud. Answer briefly, cite the documentation, and use the "     \
  "tools to look up account state instead of guessing.\"}"

#define SUPPORT_TOOLS                                                         \
  "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":"                \
  "\"get_deployment_status\",\"description\":\"Current status and recent "   \
  "events of a deployment\",\"parameters\":{\"type\":\"object\","            \
  "\"properties\":{\"region\":{\"type\":\"string\"},\"deployment_id\":"      \
  "{\"type\":\"string\"}},\"required\":[\"region\"]}}},"                     \
  "{\"type\":\"function\",\"function\":{\"name\":\"rollback_deployment\","   \
  "\"description\":\"Roll a deployment back to its previous release\","      \
  "\"parameters\":{\"type\":\"object\",\"properties\":{\"deployment_id\":"   \
  "{\"type\":\"string\"}},\"required\":[\"deployment_id\"]}}}]"

#define SUPPORT_FIRST_TURN                                                    \
  "{\"role\":\"user\",\"content\":\"My deployment web-frontend in "          \
  "eu-west-2 keeps restarting since this morning. Can you check what is "    \
  "wrong?\"}"

#define SHARED_QUESTION                                                       \
  "\"messages\":[{\"role\":\"system\",\"content\":\"You are a contracts "    \
  "analyst. Quote the clause you rely on.\"},{\"role\":\"user\",\"content\":" \
  "\"Summarise the termination rights in the attached master services "      \
  "agreement, section 14, and flag anything unusual.\"}]"

typedef struct demo_request {
  const char *name;
  const char *what;
  int32_t kind; /* enum spi_openai_kind */
  const char *body;
} demo_request;

static const demo_request REQUESTS[] = {
    {"live-chat", "streaming support chat with a system prompt and tools",
     SPI_OPENAI_CHAT,
     "{\"model\":\"llama-3-8b-instruct\",\"stream\":true,"
     "\"messages\":[" SUPPORT_SYSTEM "," SUPPORT_FIRST_TURN "],"
     SUPPORT_TOOLS ",\"max_completion_tokens\":512,\"user\":\"user-4821\","
     "\"metadata\":{\"tenant\":\"acme\",\"tenant_tier\":\"enterprise\"}}"},

    {"follow-up", "the next turn of the same conversation", SPI_OPENAI_CHAT,
     "{\"model\":\"llama-3-8b-instruct\",\"stream\":true,"
     "\"messages\":[" SUPPORT_SYSTEM "," SUPPORT_FIRST_TURN ","
     "{\"role\":\"assistant\",\"content\":\"web-frontend is crash-looping: "
     "release r142 fails its readiness probe (HTTP 503 on /healthz) and the "
     "previous release r141 was healthy. Shall I roll back to r141?\"},"
     "{\"role\":\"user\",\"content\":\"Yes, please roll it back.\"}],"
     SUPPORT_TOOLS ",\"max_completion_tokens\":512,\"user\":\"user-4821\","
     "\"metadata\":{\"tenant\":\"acme\",\"tenant_tier\":\"enterprise\"}}"},

    {"nightly-digest", "background summarisation on the flex tier",
     SPI_OPENAI_CHAT,
     "{\"model\":\"llama-3-70b-instruct\",\"service_tier\":\"flex\","
     "\"max_tokens\":400,\"messages\":[{\"role\":\"system\",\"content\":"
     "\"Summarise the support tickets of the day for the on-call lead: "
     "themes, counts, anything that needs a follow-up.\"},{\"role\":\"user\","
     "\"content\":\"#8812 login loop on SSO (3 reports, fixed by IdP cert "
     "rotation). #8815 invoice PDF missing VAT id. #8817 eu-west-2 deploy "
     "crash-loop, rolled back r142. #8820 rate limit 429s from a single API "
     "key, customer notified. #8821 request to export audit logs to S3.\"}],"
     "\"metadata\":{\"tenant\":\"acme-internal\",\"expected_output_tokens\":"
     "\"250\"}}"},

    {"invoice-extract", "batch extraction on /v1/completions, class bronze",
     SPI_OPENAI_COMPLETIONS,
     "{\"model\":\"llama-3-8b-instruct\",\"max_tokens\":200,"
     "\"temperature\":0,\"prompt\":\"Extract invoice_number, issue_date, "
     "total and currency as JSON.\\n\\nINVOICE INV-2024-0193\\nIssued: "
     "2024-03-28\\nBill to: Globex GmbH, Berlin\\n3 x GPU node-hours "
     "(H100) ..... EUR 13.50\\nSupport plan (March) ..... EUR 200.00\\n"
     "Total due: EUR 213.50\\n\\nJSON:\","
     "\"metadata\":{\"class\":\"bronze\",\"tenant\":\"globex\"}}"},

    {"exec-briefing", "a priority-tier request", SPI_OPENAI_CHAT,
     "{\"model\":\"llama-3-70b-instruct\",\"service_tier\":\"priority\","
     "\"max_tokens\":300,\"messages\":[{\"role\":\"user\",\"content\":"
     "\"Compare our Q1 and Q2 GPU spend and explain why the spot share "
     "dropped, step by step.\"}]}"},

    {"ticket-triage", "an SLA and a replayable flag in metadata",
     SPI_OPENAI_CHAT,
     "{\"model\":\"llama-3-8b-instruct\",\"max_tokens\":64,\"messages\":["
     "{\"role\":\"system\",\"content\":\"Label the ticket with one of: "
     "billing, outage, account, feature-request.\"},{\"role\":\"user\","
     "\"content\":\"Ticket #8815: the invoice PDF is missing our VAT id.\"}],"
     "\"metadata\":{\"sla_ms\":\"8000\",\"replayable\":\"true\"}}"},

    {"tenant-a", "same prompt as tenant-b, its own cache salt",
     SPI_OPENAI_CHAT,
     "{\"model\":\"llama-3-70b-instruct\",\"max_tokens\":600," SHARED_QUESTION
     ",\"metadata\":{\"tenant\":\"initech\","
     "\"tenant_salt\":\"initech-7f3a\"}}"},

    {"tenant-b", "same prompt as tenant-a, its own cache salt",
     SPI_OPENAI_CHAT,
     "{\"model\":\"llama-3-70b-instruct\",\"max_tokens\":600," SHARED_QUESTION
     ",\"metadata\":{\"tenant\":\"umbrella\","
     "\"tenant_salt\":\"umbrella-91c2\"}}"},
};
#define N_REQUESTS (sizeof REQUESTS / sizeof REQUESTS[0])

/* What the demo computed for one request, kept for the comparisons. */
#define MAX_BLOCKS 64
typedef struct outcome {
  spi_classification normal;
  spi_classification high;
  char key_hex[33];
  uint64_t blocks[MAX_BLOCKS];
  size_t n_blocks;  /* blocks the prompt has */
  size_t n_written; /* of them in blocks[] */
  spi_price spot;
  spi_price on_demand;
} outcome;

/* ---------------------------------------------------------------- helpers */

static int64_t fixed_clock(void *user_data) {
  (void)user_data;
  return INT64_C(1711584000) * 1000000000; /* 2024-03-28T00:00:00Z */
}

static int failed(int rc, const char *call, const char *detail) {
  if (rc == SPI_OK) return 0;
  fprintf(stderr, "spotinfer_demo: %s failed: %s (%d)%s%s\n", call,
          spi_strerror(rc), rc, detail && detail[0] ? ": " : "",
          detail ? detail : "");
  return 1;
}

/* Where the class says a request goes first (the header's class contract). */
static const char *pool_plan(int32_t klass) {
  switch (klass) {
    case SPI_CLASS_GOLD: return "on-demand first";
    case SPI_CLASS_SILVER: return "spot first, on-demand fallback";
    case SPI_CLASS_BRONZE: return "spot only, queue when none";
    default: return "?";
  }
}

static const char *plan_text(const spi_classification *c, char *buf,
                             size_t cap) {
  char capbuf[32];
  if (c->max_output_tokens > 0)
    snprintf(capbuf, sizeof capbuf, "cap %" PRId64 " tokens",
             c->max_output_tokens);
  else
    snprintf(capbuf, sizeof capbuf, "no cap");
  snprintf(buf, cap, "%s, %s, %s", capbuf,
           c->tools_allowed ? "tools kept" : "tools stripped",
           c->defer ? "defer to queue" : "serve now");
  return buf;
}

static size_t shared_prefix_blocks(const outcome *a, const outcome *b) {
  size_t n = a->n_written < b->n_written ? a->n_written : b->n_written;
  size_t i = 0;
  while (i < n && a->blocks[i] == b->blocks[i]) i++;
  return i;
}

/* ------------------------------------------------------- one request */

static int decide(spi_request *req, const demo_request *d, outcome *o) {
  int rc = spi_request_parse_openai(req, d->body, strlen(d->body), d->kind);
  if (failed(rc, "spi_request_parse_openai", spi_request_errmsg(req))) return 1;

  memset(o, 0, sizeof *o);
  o->normal.struct_size = sizeof o->normal;
  o->high.struct_size = sizeof o->high;
  rc = spi_classify(req, SPI_PRESSURE_NORMAL, &o->normal);
  if (failed(rc, "spi_classify(normal)", spi_request_errmsg(req))) return 1;
  rc = spi_classify(req, SPI_PRESSURE_HIGH, &o->high);
  if (failed(rc, "spi_classify(high)", spi_request_errmsg(req))) return 1;

  spi_cache_key key;
  rc = spi_request_cache_key(req, &key);
  if (failed(rc, "spi_request_cache_key", spi_request_errmsg(req))) return 1;
  rc = spi_cache_key_hex(&key, o->key_hex, sizeof o->key_hex);
  if (failed(rc, "spi_cache_key_hex", NULL)) return 1;

  rc = spi_request_block_hashes(req, o->blocks, MAX_BLOCKS, &o->n_blocks);
  if (rc == SPI_EBUFSIZE) rc = SPI_OK; /* more than we keep; first 64 are in */
  if (failed(rc, "spi_request_block_hashes", spi_request_errmsg(req))) return 1;
  o->n_written = o->n_blocks < MAX_BLOCKS ? o->n_blocks : MAX_BLOCKS;

  o->spot.struct_size = sizeof o->spot;
  o->on_demand.struct_size = sizeof o->on_demand;
  rc = spi_request_price(req, SPI_POOL_SPOT, &o->spot);
  if (failed(rc, "spi_request_price(spot)", spi_request_errmsg(req))) return 1;
  rc = spi_request_price(req, SPI_POOL_ON_DEMAND, &o->on_demand);
  if (failed(rc, "spi_request_price(on-demand)", spi_request_errmsg(req)))
    return 1;
  return 0;
}

static void print_outcome(size_t i, const demo_request *d, const outcome *o) {
  const spi_classification *c = &o->normal;
  char plan[96];
  printf("[%zu] %s - %s\n", i + 1, d->name, d->what);
  printf("    class       %-6s  reason: %s\n", spi_class_name(c->klass),
         c->reason[0] ? c->reason : "(none given)");
  printf("    pool        %s\n", pool_plan(c->klass));
  printf("    traits      %s; %s model (complexity %.1f)\n",
         c->replayable ? "replayable" : "not replayable",
         c->model_tier == SPI_TIER_LARGE ? "large" : "small", c->complexity);
  printf("    as          vLLM priority %d, llm-d priority %d, "
         "service_tier \"%s\"\n",
         c->vllm_priority, c->llmd_priority,
         spi_service_tier_name(c->service_tier));
  printf("    plan        normal: %s\n",
         plan_text(&o->normal, plan, sizeof plan));
  printf("                high:   %s\n",
         plan_text(&o->high, plan, sizeof plan));
  printf("    cache key   %s\n", o->key_hex);
  if (o->n_blocks > 0)
    printf("    blocks      %zu, first %016" PRIx64 "\n", o->n_blocks,
           o->blocks[0]);
  else
    printf("    blocks      0 (prompt shorter than one block)\n");
  printf("    tokens      %.0f prompt, %.0f output; %.4f GPU-s\n",
         o->on_demand.prompt_tokens, o->on_demand.output_tokens,
         o->on_demand.gpu_seconds);
  printf("    price       spot $%.6f   on-demand $%.6f   "
         "(%.0f%% less on spot)\n",
         o->spot.usd, o->on_demand.usd,
         o->on_demand.usd > 0
             ? 100.0 * (1.0 - o->spot.usd / o->on_demand.usd)
             : 0.0);
  printf("\n");
}

/* ------------------------------------------------------------ summaries */

static size_t index_of(const char *name) {
  for (size_t i = 0; i < N_REQUESTS; i++)
    if (strcmp(REQUESTS[i].name, name) == 0) return i;
  return 0;
}

static void print_cache_story(const outcome *o) {
  size_t chat = index_of("live-chat"), next = index_of("follow-up");
  size_t ta = index_of("tenant-a"), tb = index_of("tenant-b");
  printf("Cache keys\n");
  printf("  follow-up vs live-chat: same key %s, %zu of %zu prefix blocks "
         "shared\n",
         strcmp(o[chat].key_hex, o[next].key_hex) == 0 ? "yes" : "no",
         shared_prefix_blocks(&o[chat], &o[next]), o[chat].n_blocks);
  printf("  tenant-a vs tenant-b:   same key %s, %zu of %zu prefix blocks "
         "shared (salted)\n",
         strcmp(o[ta].key_hex, o[tb].key_hex) == 0 ? "yes" : "no",
         shared_prefix_blocks(&o[ta], &o[tb]), o[ta].n_blocks);
  printf("\n");
}

static void print_bill(const outcome *o) {
  double as_decided = 0, all_on_demand = 0, all_spot = 0;
  printf("Bill for these requests\n");
  printf("  %-16s %-7s %-10s %12s\n", "request", "class", "pool", "usd");
  for (size_t i = 0; i < N_REQUESTS; i++) {
    int on_spot = o[i].normal.klass != SPI_CLASS_GOLD;
    double usd = on_spot ? o[i].spot.usd : o[i].on_demand.usd;
    printf("  %-16s %-7s %-10s %12.6f\n", REQUESTS[i].name,
           spi_class_name(o[i].normal.klass), on_spot ? "spot" : "on-demand",
           usd);
    as_decided += usd;
    all_on_demand += o[i].on_demand.usd;
    all_spot += o[i].spot.usd;
  }
  printf("  as decided     $%.6f\n", as_decided);
  printf("  all on-demand  $%.6f  (the decisions save %.1f%%)\n",
         all_on_demand, 100.0 * (1.0 - as_decided / all_on_demand));
  printf("  all spot       $%.6f  (the floor, if nothing minded "
         "interruptions)\n",
         all_spot);
  printf("  $/M output     spot %.4f, on-demand %.4f (engine's cost model)\n",
         o[0].spot.usd_per_million, o[0].on_demand.usd_per_million);
  printf("\n");
}

static int print_cost_model(void) {
  int rc;
  printf("Cost model\n");

  spi_spot_cost sc;
  memset(&sc, 0, sizeof sc);
  sc.struct_size = sizeof sc;
  rc = spi_cost_spot_effective(1000.0, SPOT_USD_PER_GPU_HOUR,
                               ON_DEMAND_USD_PER_GPU_HOUR, INTERRUPTION_RATE,
                               10.0 / 60.0, &sc);
  if (failed(rc, "spi_cost_spot_effective", NULL)) return 1;
  printf("  1000 spot GPU-h at $%.2f, %.0f%% interrupted, 10 min lost each:\n",
         SPOT_USD_PER_GPU_HOUR, INTERRUPTION_RATE * 100);
  printf("    %.0f interruptions, %.1f useful hours, $%.2f per useful hour\n",
         sc.expected_interruptions, sc.effective_hours,
         sc.cost_per_effective_hour);
  printf("    spot $%.2f vs on-demand $%.2f: $%.2f saved (%.2f%%)\n",
         sc.spot_cost, sc.on_demand_cost, sc.savings,
         sc.savings_fraction * 100);

  /* The engine's spot $/M uses the same per-useful-hour price. */
  memset(&sc, 0, sizeof sc);
  sc.struct_size = sizeof sc;
  rc = spi_cost_spot_effective(1.0, SPOT_USD_PER_GPU_HOUR,
                               ON_DEMAND_USD_PER_GPU_HOUR, INTERRUPTION_RATE,
                               RESTART_OVERHEAD_S / 3600.0, &sc);
  if (failed(rc, "spi_cost_spot_effective", NULL)) return 1;
  double spot_m = 0, od_m = 0, a100_m = 0;
  rc = spi_cost_per_million_tokens(sc.cost_per_effective_hour, 1,
                                   DECODE_TOKENS_PER_S, &spot_m);
  if (failed(rc, "spi_cost_per_million_tokens", NULL)) return 1;
  rc = spi_cost_per_million_tokens(ON_DEMAND_USD_PER_GPU_HOUR, 1,
                                   DECODE_TOKENS_PER_S, &od_m);
  if (failed(rc, "spi_cost_per_million_tokens", NULL)) return 1;
  printf("  $/M at %.0f tok/s: spot %.4f (at $%.4f per useful hour), "
         "on-demand %.4f\n",
         DECODE_TOKENS_PER_S, spot_m, sc.cost_per_effective_hour, od_m);

  rc = spi_cost_per_million_tokens(3.50, 1, 1000.0, &a100_m);
  if (failed(rc, "spi_cost_per_million_tokens", NULL)) return 1;
  double tps = 0;
  rc = spi_cost_break_even_tps(3.50, 1, 0.50, &tps);
  if (failed(rc, "spi_cost_break_even_tps", NULL)) return 1;
  printf("  A100 at $3.50/h: %.4f $/M at 1000 tok/s; "
         "$0.50/M needs %.0f tok/s\n",
         a100_m, tps);

  double tokens = 0;
  rc = spi_cost_self_host_break_even(3.50, 1, 720.0, 0.90, &tokens);
  if (failed(rc, "spi_cost_self_host_break_even", NULL)) return 1;
  printf("  self-host, 1 GPU x 720 h/month at $3.50/h, beats an API at "
         "$0.90/M\n    above %.3g tokens/month\n",
         tokens);

  double kv = 0;
  uint64_t seqs = 0;
  rc = spi_cost_kv_bytes_per_sequence(32, 8, 128, 4096, 2.0, &kv);
  if (failed(rc, "spi_cost_kv_bytes_per_sequence", NULL)) return 1;
  const double gib = 1024.0 * 1024.0 * 1024.0;
  rc = spi_cost_max_sequences(80 * gib, 16 * gib, 0.9, kv, &seqs);
  if (failed(rc, "spi_cost_max_sequences", NULL)) return 1;
  printf("  Llama-3-8B KV cache at 4096 tokens: %.0f bytes per sequence;\n"
         "    80 GiB GPU, 16 GiB model, 90%% usable: %" PRIu64
         " sequences\n",
         kv, seqs);
  printf("\n");
  return 0;
}

/* A body the library must refuse, and how it says so. */
static int show_rejection(spi_request *req) {
  static const char *const bad[] = {
      "{\"model\":\"llama-3-8b-instruct\",\"messages\":[{\"role\":\"user\","
      "\"content\":\"hello\"}",
      "{\"model\":\"llama-3-8b-instruct\",\"max_tokens\":\"lots\","
      "\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}",
  };
  printf("Rejected bodies\n");
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = spi_request_parse_openai(req, bad[i], strlen(bad[i]),
                                      SPI_OPENAI_AUTO);
    if (rc == SPI_OK) {
      fprintf(stderr, "spotinfer_demo: malformed body %zu was accepted\n", i);
      return 1;
    }
    printf("  %s (%d): %s\n", spi_strerror(rc), rc, spi_request_errmsg(req));
  }
  return 0;
}

int main(void) {
  spi_hooks hooks;
  memset(&hooks, 0, sizeof hooks);
  hooks.struct_size = sizeof hooks;
  hooks.clock = fixed_clock;

  spi_engine *engine = NULL;
  spi_request *req = NULL;
  outcome *outcomes = NULL;
  int status = EXIT_FAILURE;

  int rc = spi_engine_new(&engine, &hooks);
  if (failed(rc, "spi_engine_new", NULL)) return EXIT_FAILURE;
  rc = spi_engine_configure(engine, CONFIG, strlen(CONFIG));
  if (failed(rc, "spi_engine_configure", spi_engine_errmsg(engine))) goto out;
  rc = spi_request_new(engine, &req);
  if (failed(rc, "spi_request_new", spi_engine_errmsg(engine))) goto out;

  outcomes = calloc(N_REQUESTS, sizeof *outcomes);
  if (!outcomes) {
    fprintf(stderr, "spotinfer_demo: out of memory\n");
    goto out;
  }

  printf("libspotinfer %s demo: %zu requests\n\n", spi_version_string(),
         N_REQUESTS);
  for (size_t i = 0; i < N_REQUESTS; i++) {
    if (decide(req, &REQUESTS[i], &outcomes[i])) {
      fprintf(stderr, "spotinfer_demo: request %s\n", REQUESTS[i].name);
      goto out;
    }
    print_outcome(i, &REQUESTS[i], &outcomes[i]);
  }
  print_cache_story(outcomes);
  print_bill(outcomes);
  if (print_cost_model()) goto out;
  if (show_rejection(req)) goto out;
  status = EXIT_SUCCESS;

out:
  free(outcomes);
  spi_request_free(req);
  spi_engine_free(engine);
  return status;
}
