/*
 * spotinfer.h - the stable public API of libspotinfer.
 *
 * libspotinfer decides, for every LLM request and before any GPU work starts,
 * its class (gold / silver / bronze), its versioned KV-cache key, which pool
 * and replica serve it, what happens to it when a spot machine is reclaimed
 * (drain, or replay from a durable queue), and what it costs.
 *
 * Conventions that hold for every function in this header:
 *
 *  - Every exported symbol starts with spi_ and every macro with SPI_.
 *  - Functions that can fail return an int status: SPI_OK (0) or a negative
 *    value of enum spi_status. spi_strerror() names any integer.
 *  - Error detail (a message naming what was wrong) belongs to the call that
 *    failed. It is kept for the handle the call was made on, per calling
 *    thread: spi_engine_errmsg() and spi_replay_errmsg() return the message
 *    of the calling thread's last failed call on that engine or queue, so
 *    threads sharing a handle never read each other's. Read it on the
 *    thread that made the call (bindings whose threads migrate pin the call
 *    and the read to one OS thread). The thread keeps its messages (no other
 *    thread can change one) for the last 8 handles it failed on (a handle
 *    it frees gives its place back; one freed by another thread keeps it
 *    until it is the oldest). A handle whose message was let go reads a
 *    note saying so, never another handle's or thread's text, while it is
 *    among the last 64 the thread let go; after that, "". A spi_request is
 *    used by one thread at a time and keeps its own message
 *    (spi_request_errmsg()).
 *  - Text arrives as pointer + length and is never assumed NUL-terminated.
 *    A NULL pointer with length 0 is the empty string.
 *  - The library copies everything it is given before the call returns.
 *  - Constructors hand the object out through a pointer; free functions
 *    accept NULL. A freed or foreign handle is detected by a magic number
 *    where possible and yields SPI_EMISUSE instead of a crash.
 *  - Structs passed in or out start with a size_t struct_size field that the
 *    caller sets to sizeof(the struct); structs only ever grow at the end.
 *  - No global mutable state, no threads started, nothing written to
 *    stdout or stderr. Memory, time and logging go through per-engine hooks.
 *
 * Thread safety: distinct engines are independent. On one engine, any number
 * of threads may classify, key and price concurrently, each with its own
 * spi_request; spi_engine_configure() may run at the same time (it swaps a
 * new immutable configuration snapshot in; calls already running finish on
 * the old one). spi_engine_register_module() and spi_engine_free() must not
 * run concurrently with any other call on that engine. A spi_request is used
 * by one thread at a time.
 *
 * This header holds what a proxy needs: the engine, requests, routing,
 * tickets, replicas, notices, the replay queue and modules
 * (spotinfer_module.h). Cost calculators, class maps, the option listing and
 * the ledger read-back are in spotinfer_extras.h, still exported and bound.
 *
 * Since: 0.1.0 for everything in this header unless noted.
 */
#ifndef SPOTINFER_H
#define SPOTINFER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- export */

#if defined(SPI_STATIC)
#define SPI_API
#elif defined(SPI_BUILDING) && defined(__GNUC__)
#define SPI_API __attribute__((visibility("default")))
#else
#define SPI_API
#endif

/* --------------------------------------------------------------- version */

#define SPI_VERSION_MAJOR 0
#define SPI_VERSION_MINOR 2
#define SPI_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH */
#define SPI_VERSION_NUMBER \
  (SPI_VERSION_MAJOR * 10000 + SPI_VERSION_MINOR * 100 + SPI_VERSION_PATCH)
#define SPI_VERSION_STRING "0.2.0"

/* The version of the library actually loaded, as SPI_VERSION_NUMBER. */
SPI_API uint32_t spi_version_number(void);
/* The version of the library actually loaded, e.g. "0.2.0". Static storage. */
SPI_API const char *spi_version_string(void);

/* ---------------------------------------------------------------- status */

/*
 * Status codes. Grouped by kind with room between groups; a value is never
 * renumbered or reused once released.
 */
enum spi_status {
  SPI_OK = 0,

  /* The caller's arguments or call order. */
  SPI_EINVAL = -1,   /* an argument is invalid (NULL, bad enum, ...) */
  SPI_EMISUSE = -2,  /* freed or foreign handle, call from a callback */
  SPI_ERANGE = -3,   /* a number is out of its documented range */
  SPI_EBUFSIZE = -4, /* the caller's output buffer is too small */

  /* Input that came from outside (config, request bodies). */
  SPI_EPARSE = -20,   /* malformed JSON or text */
  SPI_ETYPE = -21,    /* a value has the wrong type */
  SPI_EUNKNOWN = -22, /* an unknown key or enum name */
  SPI_EMISSING = -23, /* a required field is missing */
  SPI_ETOOBIG = -24,  /* input exceeds a configured limit */

  /* Resources and lookups. */
  SPI_ENOMEM = -40,    /* the allocator hook returned NULL */
  SPI_EIO = -41,       /* a file could not be read */
  SPI_ENOTFOUND = -42, /* no such module, option or item */
  SPI_EEXIST = -43,    /* a module of that kind and name already exists */
  SPI_ESTALE = -44,    /* the ticket or replica is gone (finished, removed) */
  SPI_EFULL = -45,     /* a bounded table (replicas, tickets) is full */

  /* Modules. */
  SPI_EMODULE = -60,  /* a module failed and its policy is to fail the call */
  SPI_EABI = -61,     /* a module struct has an unsupported abi_version/size */
  SPI_ENOTSUP = -62,  /* not supported by this version or module */

  /* Routing outcomes that are not a decision to serve. */
  SPI_ESHED = -80,      /* shed under KV pressure: retry later (HTTP 429) */
  SPI_ENOCAPACITY = -81 /* no replica can serve it now (HTTP 503) */
};

/*
 * A short English description of any status integer, including values this
 * version does not know ("unknown status"). Never NULL; static storage;
 * thread-safe.
 */
SPI_API const char *spi_strerror(int status);

/* ----------------------------------------------------------------- hooks */

/* Log levels passed to the log hook. */
enum spi_log_level {
  SPI_LOG_ERROR = 0,
  SPI_LOG_WARN = 1,
  SPI_LOG_INFO = 2,
  SPI_LOG_DEBUG = 3
};

typedef void *(*spi_alloc_fn)(void *user_data, size_t size);
typedef void (*spi_free_fn)(void *user_data, void *ptr);
/* Wall-clock time in nanoseconds since the Unix epoch (deadlines are wall
 * clock). A fake clock makes every time-dependent decision deterministic. */
typedef int64_t (*spi_clock_fn)(void *user_data);
/* A log line, not NUL-terminated, without a trailing newline. */
typedef void (*spi_log_fn)(void *user_data, int32_t level, const char *msg,
                           size_t msg_len);

/*
 * Per-engine hooks. Zero-initialise, set struct_size = sizeof(spi_hooks), and
 * fill what you need. alloc and free are set together or not at all (then
 * malloc/free are used). clock NULL means CLOCK_REALTIME. log NULL means no
 * logging. Hooks are copied; they are called from the thread making the
 * library call, so on an engine shared by threads they run concurrently and
 * must be thread-safe; they must not call back into the same engine.
 */
typedef struct spi_hooks {
  size_t struct_size;
  spi_alloc_fn alloc;
  spi_free_fn free;
  void *alloc_user_data;
  spi_clock_fn clock;
  void *clock_user_data;
  spi_log_fn log;
  void *log_user_data;
  int32_t log_level; /* highest level passed to log; default SPI_LOG_WARN */
  int32_t reserved0;
} spi_hooks;

/* ---------------------------------------------------------------- engine */

typedef struct spi_engine spi_engine;

/*
 * Create an engine with the default configuration and the built-in modules
 * registered. hooks may be NULL. On success *out owns a new engine, free it
 * with spi_engine_free(). On failure *out is NULL.
 * Errors: SPI_EINVAL (out NULL, hooks with a bad struct_size or only one of
 * alloc/free), SPI_ENOMEM.
 */
SPI_API int spi_engine_new(spi_engine **out, const spi_hooks *hooks);

/* Free an engine and everything it owns. NULL is harmless. Requests created
 * from the engine must be freed first. */
SPI_API void spi_engine_free(spi_engine *engine);

/*
 * The message of the calling thread's last failed call on this engine (""
 * if it has none; see the error detail convention at the top). Borrowed:
 * valid until this thread's next call on the engine, or until it fails
 * calls on 8 other handles. Never NULL.
 */
SPI_API const char *spi_engine_errmsg(const spi_engine *engine);

/*
 * Replace the engine's configuration with the JSON object in json[0..len).
 * The whole object is validated first; on any error nothing changes and the
 * message names the key's path (e.g. "classifier.rules[2].when.sla_ms_max").
 * Keys not given take their defaults ("{}" restores all defaults).
 * Errors: SPI_EPARSE, SPI_ETYPE, SPI_EUNKNOWN, SPI_ERANGE, SPI_ETOOBIG,
 * SPI_ENOTFOUND (unknown module name), SPI_EMODULE, SPI_ENOMEM.
 */
SPI_API int spi_engine_configure(spi_engine *engine, const char *json,
                                 size_t len);

/* As spi_engine_configure() with the contents of a file (NUL-terminated
 * path). Adds SPI_EIO when the file cannot be read. */
SPI_API int spi_engine_configure_file(spi_engine *engine, const char *path);

/*
 * The effective configuration as canonical JSON (all keys, defaults filled
 * in), copied into buf[0..cap) with a terminating NUL. *needed (may be NULL)
 * receives the length without the NUL. Returns SPI_EBUFSIZE when cap is too
 * small (pass cap 0 to ask for the size).
 */
SPI_API int spi_engine_config_json(spi_engine *engine, char *buf, size_t cap,
                                   size_t *needed);

/* --------------------------------------------------------------- classes */

enum spi_class {
  SPI_CLASS_UNSET = 0,
  SPI_CLASS_GOLD = 1,   /* on-demand first, latency-critical */
  SPI_CLASS_SILVER = 2, /* spot first, on-demand fallback, retry tolerant */
  SPI_CLASS_BRONZE = 3  /* spot only, batch / background */
};

/* "gold", "silver", "bronze", "unset", or "invalid". Never NULL. */
SPI_API const char *spi_class_name(int32_t klass);

enum spi_model_tier {
  SPI_TIER_SMALL = 1,
  SPI_TIER_LARGE = 2
};

/* Priority schemes for spi_engine_class_to_priority() and back. */
enum spi_priority_scheme {
  SPI_PRIO_VLLM = 1, /* vLLM: lower value is more urgent */
  SPI_PRIO_LLMD = 2  /* llm-d: higher is more urgent, negative sheddable */
};

/* OpenAI service_tier values, as an enum. */
enum spi_service_tier {
  SPI_SERVICE_TIER_UNSET = 0,
  SPI_SERVICE_TIER_AUTO = 1,
  SPI_SERVICE_TIER_DEFAULT = 2,
  SPI_SERVICE_TIER_FLEX = 3,
  SPI_SERVICE_TIER_PRIORITY = 4,
  SPI_SERVICE_TIER_SCALE = 5
};

/* "auto", "default", "flex", "priority", "scale", "" for unset, or
 * "invalid". Never NULL. */
SPI_API const char *spi_service_tier_name(int32_t tier);

/* --------------------------------------------------------------- request */

typedef struct spi_request spi_request;

/*
 * String attributes of a request, set with spi_request_set_str().
 * Setting a string replaces the previous value.
 */
enum spi_request_str {
  SPI_REQ_MODEL = 1,
  SPI_REQ_TOKENIZER_VERSION = 2,
  SPI_REQ_SYSTEM_PROMPT = 3,     /* overrides system messages for the key */
  SPI_REQ_TOOLS_JSON = 4,        /* a JSON array of tool definitions */
  SPI_REQ_RETRIEVAL_TEMPLATE = 5,
  SPI_REQ_TENANT = 6,
  SPI_REQ_TENANT_TIER = 7,       /* e.g. "enterprise", "free" */
  SPI_REQ_TENANT_SALT = 8,       /* isolates one tenant's cache keys */
  SPI_REQ_DECODE_PROFILE = 9,    /* e.g. "streaming-balanced" */
  SPI_REQ_SERVICE_TIER = 10,     /* OpenAI service_tier text */
  SPI_REQ_USER = 11,
  SPI_REQ_CLASS = 12,            /* explicit class: gold, silver, bronze */
  SPI_REQ_PROMPT = 13,           /* completions prompt text */
  SPI_REQ_REQUEST_ID = 14
};

/*
 * Integer attributes, set with spi_request_set_int(). Unset attributes are
 * distinct from any value; spi_request_unset_int() clears one.
 */
enum spi_request_int {
  SPI_REQ_PRIORITY = 1,          /* vLLM convention: lower is more urgent */
  SPI_REQ_SLA_MS = 2,            /* latency budget, > 0 */
  SPI_REQ_STREAM = 3,            /* 0 or 1 */
  SPI_REQ_REPLAYABLE = 4,        /* 0 or 1 */
  SPI_REQ_MAX_OUTPUT_TOKENS = 5, /* max_tokens / max_completion_tokens */
  SPI_REQ_EXPECTED_OUTPUT_TOKENS = 6,
  SPI_REQ_PROMPT_TOKENS = 7,     /* known prompt length in tokens */
  SPI_REQ_MODEL_TIER = 8,        /* force a model tier (enum spi_model_tier),
                                    e.g. the target after a draft failed */
  SPI_REQ_REPLAY_SINCE_NS = 9    /* this request replays one interrupted at
                                    this time (envelope first_enqueued_ns):
                                    the ledger counts its replay latency */
};

/* Which OpenAI body spi_request_parse_openai() reads. */
enum spi_openai_kind {
  SPI_OPENAI_AUTO = 0,        /* chat if "messages" is present */
  SPI_OPENAI_CHAT = 1,        /* /v1/chat/completions */
  SPI_OPENAI_COMPLETIONS = 2  /* /v1/completions */
};

/*
 * Create an empty request bound to engine (which must outlive it).
 * Errors: SPI_EINVAL, SPI_EMISUSE, SPI_ENOMEM (detail on the engine).
 */
SPI_API int spi_request_new(spi_engine *engine, spi_request **out);
/* Free a request. NULL is harmless. */
SPI_API void spi_request_free(spi_request *req);
/* Clear every attribute; keeps the memory for reuse. */
SPI_API int spi_request_reset(spi_request *req);
/* The message of the last failed call on this request ("" if none).
 * Borrowed until the next call on the request. Never NULL. */
SPI_API const char *spi_request_errmsg(const spi_request *req);

/* Set a string attribute (copied). Errors: SPI_EINVAL (unknown field),
 * SPI_ETOOBIG (over limits.max_field_bytes), SPI_EPARSE (TOOLS_JSON that is
 * not a JSON array), SPI_EUNKNOWN (CLASS or SERVICE_TIER not a known name),
 * SPI_ENOMEM. */
SPI_API int spi_request_set_str(spi_request *req, int32_t field,
                                const char *value, size_t len);
/* Set an integer attribute. Errors: SPI_EINVAL, SPI_ERANGE. */
SPI_API int spi_request_set_int(spi_request *req, int32_t field, int64_t value);
/* Clear an integer attribute back to unset. Errors: SPI_EINVAL. */
SPI_API int spi_request_unset_int(spi_request *req, int32_t field);

/*
 * Append a chat message (role: system, developer, user, assistant, tool).
 * Messages are the conversation, in order; system/developer messages also
 * form the system prompt for the cache key unless SPI_REQ_SYSTEM_PROMPT is
 * set. Errors: SPI_EINVAL, SPI_EUNKNOWN (role), SPI_ETOOBIG, SPI_ENOMEM.
 */
SPI_API int spi_request_add_message(spi_request *req, const char *role,
                                    size_t role_len, const char *content,
                                    size_t content_len);

/* Add a metadata pair (copied); a known key also sets its attribute:
 * class, priority, sla_ms, replayable, expected_output_tokens, tenant,
 * tenant_tier, tenant_salt, decode_profile, tokenizer_version,
 * retrieval_template. Every pair is kept, in order, for classifier rules
 * (classifier.rules[].when.metadata) and modules (spi_request_view's
 * metadata). As OpenAI's, keys are 1..64 characters and values at most
 * 512, counted as UTF-8 code points (every byte but a continuation byte
 * 0x80-0xBF starts one; the text is not checked to be UTF-8), and at most
 * 4 bytes a character (256 and 2048 bytes), else SPI_ETOOBIG. Errors as
 * the setters it forwards to. */
SPI_API int spi_request_set_metadata(spi_request *req, const char *key,
                                     size_t key_len, const char *value,
                                     size_t value_len);

/* How many replicas one request may exclude (spi_request_exclude_replica). */
#define SPI_MAX_EXCLUDED 32

/*
 * Keep this request off a replica: spi_route() treats the replica with this
 * id (1..SPI_ID_MAX-1 bytes, copied) as not usable for this request. It is
 * never chosen, never a fallback, and never an eligible candidate for the
 * policy, and its prefix index entries do not count (the match is the
 * deepest a usable replica holds); everything else (classification, pool
 * rules, pressure, tickets) is as usual, and if no usable replica is left
 * the outcome is the usual SPI_ENOCAPACITY or queue. For a retry after a
 * replica failed, or a proxy that offers only some replicas. Each call adds
 * one id, up to SPI_MAX_EXCLUDED distinct ids; an id already excluded is
 * not counted again. Ids are matched at each spi_route() against the
 * replicas of that moment: one no replica has (removed since) excludes
 * nothing. They stay with the request, route after route, until
 * spi_request_reset() or spi_request_parse_openai() clears them.
 * A route with exclusions ranks the replicas through their pool index like
 * any other, the excluded ones set aside for it (about 1.6 times a route
 * without them over 512 replicas); a request without exclusions routes as
 * before, with a test of its count and one per replica a pass asks about.
 * Errors: SPI_EMISUSE, SPI_EINVAL (id NULL, empty or too long),
 * SPI_EFULL (SPI_MAX_EXCLUDED ids already excluded).
 */
SPI_API int spi_request_exclude_replica(spi_request *req, const char *id,
                                        size_t id_len);

/*
 * Give the prompt as token ids (copied). When set, prefix blocks are counted
 * in tokens (cache_key.block_tokens) instead of bytes of canonical text.
 * n == 0 clears them. Errors: SPI_EINVAL, SPI_ETOOBIG, SPI_ENOMEM.
 */
SPI_API int spi_request_set_token_ids(spi_request *req, const uint32_t *ids,
                                      size_t n);

/*
 * Reset the request, then fill it from an OpenAI chat-completions or
 * completions JSON body: model, messages, prompt, tools, stream,
 * max_tokens / max_completion_tokens, service_tier, user, metadata, and the
 * vLLM extension "priority". All-or-nothing: on error the request is left
 * empty (reset), never half-filled, and the message names the field path
 * and, for malformed JSON, the byte offset.
 * Errors: SPI_EPARSE (also a member name given twice in one object, or a
 * NUL inside a string), SPI_ETYPE, SPI_EMISSING, SPI_EUNKNOWN, SPI_ERANGE,
 * SPI_ETOOBIG, SPI_ENOMEM, SPI_ENOTSUP (a batch of prompts), SPI_EINVAL
 * (kind).
 */
SPI_API int spi_request_parse_openai(spi_request *req, const char *json,
                                     size_t len, int32_t kind);

/*
 * Read back a string attribute. *out points into the request (borrowed until
 * the request is changed or freed); *out_len gets its length. An unset
 * string reads as "" with length 0. Errors: SPI_EINVAL.
 */
SPI_API int spi_request_get_str(const spi_request *req, int32_t field,
                                const char **out, size_t *out_len);
/* Read back an integer attribute; *is_set (may be NULL) tells whether it was
 * set (unset reads 0). Errors: SPI_EINVAL. */
SPI_API int spi_request_get_int(const spi_request *req, int32_t field,
                                int64_t *out, int32_t *is_set);
/* Number of chat messages. */
SPI_API size_t spi_request_message_count(const spi_request *req);

/* ------------------------------------------------------------ classifier */

/* Pressure levels for the degrade plan. */
enum spi_pressure {
  SPI_PRESSURE_NORMAL = 0,
  SPI_PRESSURE_ELEVATED = 1,
  SPI_PRESSURE_HIGH = 2,
  SPI_PRESSURE_CRITICAL = 3
};

/* The classifier's verdict on a request. */
typedef struct spi_classification {
  size_t struct_size;
  int32_t klass;             /* enum spi_class */
  int32_t replayable;        /* 1 if the request may be replayed elsewhere */
  int32_t model_tier;        /* enum spi_model_tier, for cascade routing */
  int32_t rule_index;        /* matched rule, -1 for explicit/priority/default */
  double complexity;         /* the cascade complexity score */
  /* The degrade plan at the given pressure. */
  int64_t max_output_tokens; /* cap to apply; 0 = no cap */
  int32_t tools_allowed;     /* 0 = strip tools / multi-step modes */
  int32_t defer;             /* 1 = queue instead of serving now */
  /* The same class in the other vocabularies (engine's priority_map). */
  int32_t vllm_priority;
  int32_t llmd_priority;
  int32_t service_tier;      /* enum spi_service_tier */
  int32_t pressure;          /* the pressure the plan is for */
  char reason[120];          /* NUL-terminated, e.g. "rule interactive-sla" */
} spi_classification;

/*
 * Classify a request with the engine's classifier module at a pressure
 * level. out->struct_size must be set. Errors: SPI_EINVAL, SPI_EMISUSE,
 * SPI_EMODULE (the module failed and its policy is to fail).
 */
SPI_API int spi_classify(spi_request *req, int32_t pressure,
                         spi_classification *out);

/* ------------------------------------------------------------- cache key */

/* A 128-bit versioned KV-cache key (XXH3-128 in the built-in builder). */
typedef struct spi_cache_key {
  uint64_t high64;
  uint64_t low64;
} spi_cache_key;

/* The key as 32 lowercase hex digits + NUL (canonical big-endian order).
 * out must hold 33 bytes. Errors: SPI_EINVAL. */
SPI_API int spi_cache_key_hex(const spi_cache_key *key, char *out, size_t cap);

/*
 * The request's versioned cache key from the engine's key builder: schema
 * version, model, tokenizer version, system-prompt hash, tools hash,
 * retrieval-template hash, tenant tier, tenant salt, decode profile.
 * Errors: SPI_EINVAL, SPI_EMODULE, SPI_ENOMEM.
 */
SPI_API int spi_request_cache_key(spi_request *req, spi_cache_key *out);

/*
 * The chained hashes of the request's prompt-prefix blocks (full blocks
 * only), written to out[0..cap). *n_out receives the number of blocks the
 * prompt has (capped by cache_key.max_blocks); when it exceeds cap, the first
 * cap are written and SPI_EBUFSIZE is returned. out may be NULL when cap is
 * 0. Errors: SPI_EINVAL, SPI_EBUFSIZE, SPI_EMODULE, SPI_ENOMEM.
 */
SPI_API int spi_request_block_hashes(spi_request *req, uint64_t *out,
                                     size_t cap, size_t *n_out);

/*
 * The request's canonical prompt text (the bytes the blocks are cut from):
 * for chat, each message as role, 0x1F, content, 0x1E; for completions the
 * prompt. In text, each byte 0x1B-0x1F is written as 0x1B, byte ^ 0x40;
 * non-text parts, tool calls and tool call ids are framed by 0x1D
 * (docs/cache-key.md). Borrowed until the request changes. Errors:
 * SPI_EINVAL, SPI_ENOMEM.
 */
SPI_API int spi_request_canonical_prompt(spi_request *req, const uint8_t **out,
                                         size_t *out_len);

/* ------------------------------------------------------------ pricing */

/* Pools a request can be priced on. */
enum spi_pool {
  SPI_POOL_SPOT = 1,
  SPI_POOL_ON_DEMAND = 2,
  SPI_POOL_QUEUE = 3 /* hold the request and route it again later */
};

/* What serving one request costs on a pool (engine's cost config). */
typedef struct spi_price {
  size_t struct_size;
  int32_t pool;           /* enum spi_pool */
  int32_t reserved0;
  double prompt_tokens;   /* as estimated or given */
  double output_tokens;   /* expected, else the cap, else the default */
  double gpu_seconds;     /* prefill + decode time on the pool's GPUs */
  double usd;             /* the price, spot adjusted for interruptions */
  double usd_per_million; /* the pool's effective $/M output tokens */
} spi_price;

/*
 * Price a request on a pool with the engine's cost model module.
 * Errors: SPI_EINVAL, SPI_EMODULE.
 */
SPI_API int spi_request_price(spi_request *req, int32_t pool, spi_price *out);


/* --------------------------------------------------------------- replicas */

#define SPI_ID_MAX 64 /* replica ids are 1..63 bytes */

enum spi_replica_state {
  SPI_REPLICA_ACTIVE = 1,   /* takes new requests */
  SPI_REPLICA_DRAINING = 2, /* finishes what it has, takes nothing new */
  SPI_REPLICA_NOTICED = 3   /* an interruption notice arrived: nothing new */
};

/* A serving replica: one inference server (vLLM, SGLang, ...) endpoint. */
typedef struct spi_replica_info {
  size_t struct_size;
  const char *id;            size_t id_len;   /* unique, 1..63 bytes */
  int32_t pool;              /* SPI_POOL_SPOT or SPI_POOL_ON_DEMAND */
  int32_t model_tier;        /* SPI_TIER_LARGE (target) or SPI_TIER_SMALL
                                (small / draft model pool); 0 = large */
  const char *zone;          size_t zone_len;
  const char *instance_type; size_t instance_type_len;
  const char *models;        size_t models_len; /* comma-separated model
                                names served; empty serves any model */
  double usd_per_hour;       /* > 0 */
  uint32_t max_inflight;     /* concurrent sequences it is sized for, >= 1 */
  uint32_t reserved0;
  const char *node;          size_t node_len; /* the machine (cloud
                                instance id) it runs on, which interruption
                                notices name; empty = the replica id */
  double decode_tokens_per_s; /* one stream's decode rate, for drain
                                 estimates; 0 = router.decode_tokens_per_s */
} spi_replica_info;

/*
 * Add a replica, or update every field of an existing one (same id). An
 * update keeps its load, breaker and prefix-index entries unless its pool or
 * models change, which purges its index entries. New replicas start ACTIVE
 * with no load signal, which counts as saturated until the first report.
 * What notices did belongs to machines and spot pools: a replica added on
 * a noticed or advised machine, or in a cooling spot pool, starts so, and
 * an update that moves it to another machine (node) gives it that
 * machine's state and advice, one into another spot pool (pool, instance
 * type, zone) that pool's cooldown, as if it were added there. DRAINING
 * set with spi_replica_set_state is the host's and stays through a move,
 * unless the new machine is noticed or draining; NOTICED stays with the
 * machine it was set on.
 * Errors: SPI_EINVAL (bad field, message names it), SPI_EFULL
 * (router.max_replicas), SPI_ENOMEM, SPI_EMISUSE.
 */
SPI_API int spi_replica_upsert(spi_engine *engine, const spi_replica_info *info);

/* Remove a replica: it is never chosen again, its prefix-index entries are
 * purged at once, and its open tickets can still be finished (they return
 * SPI_ESTALE). Errors: SPI_ENOTFOUND, SPI_EINVAL, SPI_ENOMEM. */
SPI_API int spi_replica_remove(spi_engine *engine, const char *id,
                               size_t id_len);

/* Set a replica's state (enum spi_replica_state). DRAINING and NOTICED
 * replicas are never chosen and their index entries are purged; ACTIVE
 * makes one eligible again. A transition of its machine sets it again, and
 * so does an update onto another machine (spi_replica_upsert), which keeps
 * DRAINING. Errors: SPI_ENOTFOUND, SPI_EINVAL. */
SPI_API int spi_replica_set_state(spi_engine *engine, const char *id,
                                  size_t id_len, int32_t state);

/* A load signal. */
typedef struct spi_load {
  size_t struct_size;
  double running;  /* requests running, >= 0 */
  double waiting;  /* requests queued, >= 0 */
  double kv_usage; /* KV-cache usage, 0..1 */
  int64_t at_ns;   /* when measured, engine clock; 0 = now */
} spi_load;

/* Report a replica's load. A signal older than router.load_max_age_ms
 * counts as saturated, not idle. Errors: SPI_ENOTFOUND, SPI_ERANGE (NaN,
 * negative, kv_usage > 1), SPI_EINVAL. */
SPI_API int spi_replica_report_load(spi_engine *engine, const char *id,
                                    size_t id_len, const spi_load *load);

/*
 * Parse the text of a vLLM or SGLang Prometheus /metrics page into a load
 * signal: vllm:num_requests_running, vllm:num_requests_waiting,
 * vllm:gpu_cache_usage_perc or vllm:kv_cache_usage_perc; sglang:num_running_reqs,
 * sglang:num_queue_reqs, sglang:token_usage. Samples of one metric with
 * several label sets are summed (usage: the maximum), except a series with
 * a non-empty priority label: SGLang with priority scheduling writes the
 * total under priority="" and a breakdown by priority beside it, which is
 * left out. out->at_ns is set to 0.
 * Pure and thread-safe. Errors: SPI_EINVAL, SPI_EPARSE (malformed line),
 * SPI_EMISSING (no known metric), SPI_ERANGE (NaN, negative, usage > 1).
 */
SPI_API int spi_metrics_parse(const char *text, size_t len, spi_load *out);

/*
 * What a parser of outside text read and what it left out. Clouds add event
 * types and servers add exposition syntax without warning, so an entry of a
 * type or state this version does not know (a notice document's event) or a
 * line in newer syntax (a metrics page's native-histogram value or start
 * timestamp) is skipped and counted rather than failing the whole body; a
 * body that is malformed still fails. A metrics page's lines after
 * OpenMetrics' "# EOF" are skipped and counted too, never read.
 */
typedef struct spi_parse_report {
  size_t struct_size;
  size_t found;         /* notices found, or load samples read */
  size_t skipped;       /* entries or lines skipped as unknown */
  size_t first_skipped; /* the first of them: 1-based entry index in the
                           document or line number on the page; 0 = none */
} spi_parse_report;

/* spi_metrics_parse() that also reports what it skipped (report required,
 * struct_size set) and gives the message: the error with its line number,
 * or on SPI_OK with lines skipped, which line was the first and why. errbuf
 * (may be NULL) gets "" otherwise. */
SPI_API int spi_metrics_parse_v2(const char *text, size_t len, spi_load *out,
                                 spi_parse_report *report, char *errbuf,
                                 size_t errcap);

/* spi_metrics_parse() then spi_replica_report_load() stamped now; the parse
 * error, with its line number, is the engine's message. */
SPI_API int spi_replica_report_metrics(spi_engine *engine, const char *id,
                                       size_t id_len, const char *text,
                                       size_t len);

enum spi_breaker_state {
  SPI_BREAKER_CLOSED = 0,
  SPI_BREAKER_OPEN = 1,      /* cooling down after consecutive errors */
  SPI_BREAKER_HALF_OPEN = 2  /* one probe request allowed */
};

/* What the engine knows of one replica. */
typedef struct spi_replica_status {
  size_t struct_size;
  char id[SPI_ID_MAX];
  int32_t pool;
  int32_t model_tier;
  int32_t state;            /* enum spi_replica_state */
  int32_t breaker;          /* enum spi_breaker_state */
  double running, waiting, kv_usage;
  int64_t load_at_ns;       /* 0 = never reported */
  int32_t load_fresh;       /* 1 if younger than router.load_max_age_ms */
  uint32_t inflight;        /* open tickets on it */
  double usd_per_hour;
  uint32_t max_inflight;
  uint32_t consecutive_errors;
} spi_replica_status;

/* Number of replicas, and the status of one by index (0..count-1, order of
 * addition; indices shift on removal) or by id. Errors: SPI_ENOTFOUND,
 * SPI_EINVAL. */
SPI_API size_t spi_replica_count(spi_engine *engine);
SPI_API int spi_replica_status_at(spi_engine *engine, size_t index,
                                  spi_replica_status *out);
SPI_API int spi_replica_status_of(spi_engine *engine, const char *id,
                                  size_t id_len, spi_replica_status *out);

/* ---------------------------------------------------------------- routing */

#define SPI_MAX_FALLBACKS 4

/* Why a replica was chosen (or none). */
enum spi_reason {
  SPI_REASON_NONE = 0,
  SPI_REASON_AFFINITY = 1,        /* its KV cache holds the prefix */
  SPI_REASON_AFFINITY_LEFT = 2,   /* left a warm replica whose wait (as the
                                   * class weighs it) costs more than the
                                   * prefill it saves */
  SPI_REASON_IMBALANCE = 3,       /* the warm/placed replica was piled on */
  SPI_REASON_RENDEZVOUS = 4,      /* cold prefix, placed by rendezvous hash */
  SPI_REASON_LEAST_LOADED = 5,    /* the policy chose by load alone (its
                                   * estimated cost, for a cold prefix no
                                   * rendezvous placement took) */
  SPI_REASON_WAIT_WARM = 6,       /* bronze waits for its busy warm replica */
  SPI_REASON_QUEUE_NO_SPOT = 7,   /* batch queued: no spot capacity is up */
  SPI_REASON_SHED = 8,            /* KV-pressure breaker shed it */
  SPI_REASON_NO_CAPACITY = 9,     /* nothing eligible */
  SPI_REASON_HALF_OPEN_PROBE = 10 /* a probe to a recovering replica */
};

/* "affinity", "affinity_left", ...; "invalid" otherwise. Never NULL. */
SPI_API const char *spi_reason_name(int32_t reason);

/* What spi_route() decided. */
typedef struct spi_decision {
  size_t struct_size;
  int32_t pool;              /* enum spi_pool; QUEUE: hold and retry */
  int32_t klass;             /* enum spi_class */
  int32_t replayable;
  int32_t model_tier;
  int32_t pressure;          /* enum spi_pressure of the chosen pool */
  int32_t tools_allowed;     /* degrade plan at that pressure */
  int64_t max_output_tokens; /* 0 = no cap */
  char replica_id[SPI_ID_MAX];                       /* "" unless serving */
  char fallback_ids[SPI_MAX_FALLBACKS][SPI_ID_MAX]; /* in order */
  uint32_t n_fallbacks;
  uint32_t matched_blocks;   /* prefix blocks the replica likely holds */
  uint32_t total_blocks;
  int32_t reason_code;       /* enum spi_reason */
  char reason[160];          /* NUL-terminated, for logs */
  uint64_t ticket;           /* report on it; 0 unless serving */
  spi_cache_key key;
  double est_ttft_ms;        /* the policy's estimate for the replica */
  double est_usd;            /* the request's price on the chosen pool */
  /* Shadow mode (router.shadow_policy): what the other policy chose. */
  int32_t shadow_pool;       /* 0 when shadow mode is off */
  uint32_t shadow_matched_blocks;
  char shadow_replica_id[SPI_ID_MAX];
} spi_decision;

/*
 * Route a request: classify, key, look up the prefix index, choose the pool
 * and the replica with the engine's policy module, open a ticket, and record
 * the placement in the prefix index. out->struct_size must be set.
 * On SPI_OK, pool is SPOT or ON_DEMAND with a replica and a ticket, or QUEUE
 * (no ticket). SPI_ESHED and SPI_ENOCAPACITY still fill class, reason and key.
 * A warm engine routes without allocating, locking or making a system call
 * (the clock hook aside). The ticket opens only on a replica still ACTIVE
 * at that moment: when the chosen one was noticed, drained or removed while
 * the call ran, it routes again (SPI_ENOCAPACITY after 4 such routes in one
 * call), so a notice's plans name every ticket its machine got. Errors:
 * SPI_EINVAL, SPI_EMISUSE, SPI_EMODULE, SPI_EFULL (router.max_tickets
 * open), SPI_ESHED, SPI_ENOCAPACITY.
 */
SPI_API int spi_route(spi_request *req, spi_decision *out);

/* ---------------------------------------------------------------- tickets */

enum spi_ticket_status {
  SPI_TICKET_OK = 0,             /* completed */
  SPI_TICKET_ERROR = 1,          /* the replica failed it (counts toward its
                                    error breaker) */
  SPI_TICKET_CANCELLED = 2,      /* the client went away */
  SPI_TICKET_DRAFT_REJECTED = 3, /* the small/draft model's answer was
                                    rejected; route again with
                                    SPI_REQ_MODEL_TIER = SPI_TIER_LARGE */
  SPI_TICKET_INTERRUPTED = 4     /* cut off by an interruption and replayed
                                    elsewhere: its output so far is wasted
                                    spot work in the ledger */
};

/* How a ticket ended. Zero token counts or times mean "unknown"; times
 * not given are measured with the engine clock. */
typedef struct spi_ticket_result {
  size_t struct_size;
  int32_t status;           /* enum spi_ticket_status */
  int32_t reserved0;
  uint64_t prompt_tokens;
  uint64_t output_tokens;
  uint64_t cached_tokens;   /* prompt tokens served from the KV cache */
  double ttft_ms;
  double duration_ms;
} spi_ticket_result;

/* The first token was streamed (records TTFT by class). Errors: SPI_ESTALE
 * (finished or unknown ticket, or its replica removed), SPI_EMISUSE. */
SPI_API int spi_ticket_first_token(spi_engine *engine, uint64_t ticket);
/* tokens_streamed so far (monotonic, at most 1e9). Errors: SPI_ESTALE,
 * SPI_ERANGE (below the last report, or above 1e9). */
SPI_API int spi_ticket_progress(spi_engine *engine, uint64_t ticket,
                                uint64_t tokens_streamed);
/* The ticket ended: frees it and feeds the prefix index, load, error
 * breaker, cost ledger and metrics. Finishing twice returns SPI_ESTALE and
 * changes nothing. A ticket whose replica was removed is closed and still
 * priced, and returns SPI_ESTALE. Errors: SPI_EINVAL, SPI_ERANGE (more
 * than 1e9 output tokens, or more than 1e11 prompt or cached tokens: the
 * ticket stays open). */
SPI_API int spi_ticket_finish(spi_engine *engine, uint64_t ticket,
                              const spi_ticket_result *result);

/* --------------------------------------------------- signals and metrics */

/* The autoscaling signals of the reference architecture. */
typedef struct spi_signals {
  size_t struct_size;
  double queue_depth[4];     /* by class: open tickets without first token */
  double p95_ttft_ms[4];     /* by class, from the TTFT histogram */
  double cache_miss_rate;    /* 1 - matched / total prefix blocks routed */
  uint32_t warm_on_demand;   /* ACTIVE on-demand replicas, fresh, not open */
  uint32_t reserved0;
  double draft_acceptance;   /* draft tickets OK / (OK + rejected) */
} spi_signals;

/* Fill the signals (out->struct_size set by the caller). Thread-safe.
 * Errors: SPI_EMISUSE, SPI_EINVAL (NULL or struct_size too small). */
SPI_API int spi_engine_signals(spi_engine *engine, spi_signals *out);

/*
 * The engine's metrics in Prometheus text exposition format (counters,
 * gauges, histograms; all names start with "spotinfer_"; times are in
 * seconds, the base unit Prometheus expects), copied into
 * buf[0..cap) with a NUL; *needed (may be NULL) gets the length without it.
 * SPI_EBUFSIZE when cap is too small (cap 0 asks for the size).
 */
SPI_API int spi_engine_metrics(spi_engine *engine, char *buf, size_t cap,
                               size_t *needed);

/* ----------------------------------------------------------------- notices */

/* What a cloud says is about to happen to a machine. */
enum spi_notice_kind {
  SPI_NOTICE_NONE = 0,        /* no notice (404, empty, FALSE, NONE) */
  SPI_NOTICE_TERMINATE = 1,
  SPI_NOTICE_STOP = 2,
  SPI_NOTICE_HIBERNATE = 3,
  SPI_NOTICE_REBALANCE = 4,   /* advice: capacity at risk, no deadline */
  SPI_NOTICE_MAINTENANCE = 5,
  SPI_NOTICE_PREEMPT = 6
};

/* The body formats spi_notice_parse() reads. */
enum spi_notice_format {
  SPI_NOTICE_AWS_INSTANCE_ACTION = 1, /* IMDS spot/instance-action */
  SPI_NOTICE_AWS_REBALANCE = 2,       /* IMDS events/recommendations/rebalance */
  SPI_NOTICE_AWS_SCHEDULED = 3,       /* IMDS events/maintenance/scheduled */
  SPI_NOTICE_AWS_EVENTBRIDGE = 4,     /* an EventBridge event envelope */
  SPI_NOTICE_GCP_PREEMPTED = 5,       /* metadata instance/preempted */
  SPI_NOTICE_GCP_MAINTENANCE = 6,     /* metadata instance/maintenance-event */
  SPI_NOTICE_AZURE_SCHEDULED = 7      /* IMDS Scheduled Events document */
};

/* One notice, whatever cloud it came from. */
typedef struct spi_notice {
  size_t struct_size;
  int32_t kind;            /* enum spi_notice_kind */
  int32_t format;          /* enum spi_notice_format */
  char node[SPI_ID_MAX];   /* the machine: from the body when it names one
                              (EventBridge, Azure), else the caller's */
  int64_t deadline_ns;     /* when the machine goes (wall clock, ns since
                              the epoch); 0 for advice without a deadline */
  int64_t received_ns;     /* the now_ns given to the parser */
  int32_t active;          /* 0: a scheduled event that is completed or
                              canceled (withdraws the earlier notice with
                              the same event_id) */
  int32_t reserved0;
  char event_id[SPI_ID_MAX]; /* the cloud's event id, "" if none (such a
                                notice cannot be withdrawn) */
  char dedup_key[160];     /* stable across polls of the same event: built
                              from format, node, kind and event id, never
                              from times a poller may move */
} spi_notice;

/* "none", "terminate", "stop", "hibernate", "rebalance", "maintenance",
 * "preempt", or "invalid". Never NULL. */
SPI_API const char *spi_notice_kind_name(int32_t kind);

/*
 * Parse a notice body as the cloud serves it. http_status is the status of
 * the metadata request (404 means no notice; 0 is taken as 200). node names
 * the machine that was polled (used when the body does not say). now_ns is
 * the time of the poll: GCP gives no deadline, so a preemption's deadline is
 * now + 30 s (now_ns is 0..INT64_MAX - 30 s, SPI_EINVAL past it). Documents that carry several events (AWS scheduled, Azure)
 * give one notice each: up to cap are written to out and *n_out gets the
 * number found (0 = no notice); SPI_EBUFSIZE when cap is too small. Pure and
 * thread-safe. Errors: SPI_EINVAL (an argument, or a status neither 2xx
 * nor 404), SPI_EPARSE (malformed body, bad time), SPI_ETYPE (a field of the
 * wrong type), SPI_EUNKNOWN (an unknown action, instance state or GCP value:
 * an event of unknown type in a list is skipped, see spi_notice_parse_v2),
 * SPI_ENOMEM (out of memory while parsing), SPI_EMISSING (a
 * required field is absent), SPI_ETOOBIG (a body over 1 MiB, an id from the
 * body over 63 bytes), SPI_EBUFSIZE. errbuf (may be NULL) gets the message.
 */
SPI_API int spi_notice_parse(int32_t format, int32_t http_status,
                             const char *body, size_t len, const char *node,
                             size_t node_len, int64_t now_ns, spi_notice *out,
                             size_t cap, size_t *n_out, char *errbuf,
                             size_t errcap);

/* spi_notice_parse() that also reports the entries it skipped: an event
 * whose type or state this version does not know (Azure EventType or
 * EventStatus, AWS scheduled Code or State, EventBridge detail-type) is
 * skipped and counted, and the document's other events are still read.
 * report (required, struct_size set) replaces n_out: report->found is what
 * *n_out would be. On SPI_OK with entries skipped, errbuf gets a message
 * naming the first (spi_notice_parse() writes that message too). */
SPI_API int spi_notice_parse_v2(int32_t format, int32_t http_status,
                                const char *body, size_t len, const char *node,
                                size_t node_len, int64_t now_ns,
                                spi_notice *out, size_t cap,
                                spi_parse_report *report, char *errbuf,
                                size_t errcap);

/* -------------------------------------------------- nodes and their fate */

/* A machine's state. Transitions follow one table (see README): ACTIVE ->
 * ADVISED -> NOTICED -> DRAINING -> TERMINATED -> REMOVED, with ADVISED able
 * to expire back to ACTIVE and a withdrawn notice returning a NOTICED node
 * to ACTIVE before its deadline, or to ADVISED while advice handed in for
 * it has not lapsed. A withdrawal takes back only the event its event_id
 * names: the machine stays NOTICED while another interruption holds it,
 * one noticed by spi_node_set_state stays so, one advised by it stays
 * advised until that advice lapses, and one DRAINING stays DRAINING,
 * without a deadline once no interruption holds it. A machine
 * lists four events; past that the one due last is let go, and the
 * earliest deadline of those let go holds it whatever is withdrawn. A
 * machine TERMINATED while only maintenance with an event id held it (a
 * reboot, freeze or redeploy) comes back to ACTIVE when that maintenance
 * is withdrawn; nothing else leaves TERMINATED but REMOVED, by hand or
 * when a replica is added there past its deadline (the machine started
 * again: it and every replica registered there are ACTIVE). */
enum spi_node_state {
  SPI_NODE_ACTIVE = 1,
  SPI_NODE_ADVISED = 2,    /* rebalance advice: no new long requests */
  SPI_NODE_NOTICED = 3,    /* interruption notice: no new requests at all */
  SPI_NODE_DRAINING = 4,   /* in-flight work finishing or moving */
  SPI_NODE_TERMINATED = 5, /* the machine is gone */
  SPI_NODE_REMOVED = 6     /* forgotten */
};

/* "active", "advised", ...; "invalid" otherwise. Never NULL. */
SPI_API const char *spi_node_state_name(int32_t state);

/* What to do with one in-flight request on a noticed machine. */
enum spi_ticket_action {
  SPI_ACTION_DRAIN = 1,  /* let it finish where it is */
  SPI_ACTION_REPLAY = 2  /* checkpoint its partial output and replay it on
                            on-demand capacity */
};

/* The plan for one open ticket. An array element: the caller sets
 * plans[0].struct_size, which is the array's element size; every plan
 * written carries it (since 0.3.0; 0.2.0's struct had no struct_size). */
typedef struct spi_ticket_plan {
  size_t struct_size;
  uint64_t ticket;
  int32_t action;          /* enum spi_ticket_action */
  int32_t klass;
  double remaining_s;      /* expected time to finish where it is */
  double deadline_s;       /* seconds left before the machine goes */
  double progress;         /* tokens streamed / expected, 0..1 */
  char replica_id[SPI_ID_MAX];
} spi_ticket_plan;

/*
 * Hand in a notice. From this call on the machine's replicas get no new
 * request (NOTICED) or no new long request (ADVISED): a spi_route running
 * meanwhile either opens its ticket before the plans are made, and the
 * plans name it, or routes elsewhere; an interruption also
 * cools down its spot pool (instance type and zone) for
 * router.pool_cooldown_ms. For each open ticket on the machine, a plan is
 * written to plans[0..cap), elements plans[0].struct_size bytes apart (at
 * least sizeof(spi_ticket_plan); a newer caller's larger struct gets its
 * unknown tail zeroed) (*n_out gets the count; SPI_EBUFSIZE if cap is too
 * small, the transition still happens): DRAIN when the tokens left at the
 * replica's decode rate fit before the deadline minus router.drain_margin_ms,
 * or when it is gold and past router.gold_drain_progress; otherwise REPLAY.
 * A notice whose dedup_key was already handed in for its machine changes
 * nothing and plans nothing, unless it is an interruption that brings
 * forward the deadline that key last acted with, still to come (an event
 * moved earlier): then it acts, the machine's deadline moves earlier and
 * the plans are made against it. The keys go when the machine is started
 * again (a replica added on a machine untracked or TERMINATED), removed by
 * hand, or put back to work (a withdrawal, or ACTIVE by hand; advice keeps
 * its key then), so an instance started again under the same id is
 * noticed again; a machine dropped after its termination keeps them, so
 * an event served past its deadline is a repeat. A notice for a machine
 * no replica runs on is remembered until its deadline (advice: until it
 * lapses), so a replica added there meanwhile starts NOTICED. At most
 * 4,096 machines are tracked; when full,
 * the oldest machines that run no replica are forgotten to make room, so
 * SPI_EFULL means every tracked machine runs replicas.
 * The notice must be one the fleet bus can carry (SPI_EINVAL naming the
 * field otherwise, bus or not): node 1..63 bytes, event_id up to 63 and
 * dedup_key up to 159, each NUL-terminated within its array and without
 * bytes below 0x20, deadline_ns not negative.
 * Errors: SPI_EINVAL, SPI_EMISUSE, SPI_EBUFSIZE, SPI_EFULL.
 */
SPI_API int spi_engine_notice(spi_engine *engine, const spi_notice *notice,
                              spi_ticket_plan *plans, size_t cap,
                              size_t *n_out);

/* Move a machine to a state by hand (e.g. DRAINING when the proxy starts
 * moving work, TERMINATED when it is gone, REMOVED to forget it: it is then
 * a machine never heard of, ACTIVE with its replicas still registered, the
 * way back for a machine TERMINATED and started again). Illegal
 * transitions fail with SPI_EINVAL and a message naming both states;
 * NOTICED -> ADVISED is one by hand (only a withdrawal makes it, when
 * advice handed in still holds the machine). ADVISED by hand lasts
 * router.advised_ttl_ms, as advice handed in does.
 * Errors: SPI_EINVAL, SPI_ENOTFOUND, SPI_EMISUSE. */
SPI_API int spi_node_set_state(spi_engine *engine, const char *node,
                               size_t node_len, int32_t state);
/* A machine's state (ACTIVE for one the engine never heard of).
 * Errors: SPI_EINVAL, SPI_EMISUSE. */
SPI_API int spi_node_get_state(spi_engine *engine, const char *node,
                               size_t node_len, int32_t *out_state);

/* Periodic node work: rebalance advice that expired (ADVISED -> ACTIVE) and
 * noticed machines past their deadline (-> TERMINATED). Also done inside
 * spi_engine_notice() and spi_node_get_state(). With a fleet bus configured
 * (modules.fleet_bus) it also polls the bus and applies what other
 * instances published, and resends what failed to publish.
 * Errors: SPI_EMISUSE, SPI_EMODULE (the bus failed; local state is kept and
 * the message says why; see spi_engine_fleet_stats()). */
SPI_API int spi_engine_tick(spi_engine *engine);

/* Called on every node transition, none dropped however many one call
 * makes, with no engine lock and no pin held, so it may call back into
 * the engine (upsert or remove replicas, ask for plans, hand in a notice);
 * only spi_engine_on_node_transition() and spi_engine_free() are not for
 * it. Transitions are queued in the order they are made and handed out
 * in that order, a few at a time: by the call that made them before it
 * returns, or by a call on another thread that took the waiting ones
 * first, so calls on several threads may run the callback at once. One
 * made by adding a replica (a terminated machine started again, reported
 * as REMOVED) waits for the next notice, tick or machine state call.
 * from_state == to_state (NOTICED or DRAINING) says the machine's
 * deadline moved: a later notice, from this engine or the fleet bus,
 * brought it forward, a machine noticed by hand got one, or a withdrawal
 * moved it later (the interruption withdrawn was the earliest, and
 * another still holds the machine). Plans made before may be wrong, so
 * ask spi_engine_node_plans() again. */
typedef void (*spi_node_fn)(void *user_data, const char *node, size_t node_len,
                            int32_t from_state, int32_t to_state);
/* Set (or clear, with fn NULL) the transition callback. Not concurrent with
 * other calls on the engine. Errors: SPI_EMISUSE. */
SPI_API int spi_engine_on_node_transition(spi_engine *engine, spi_node_fn fn,
                                          void *user_data);

/* ------------------------------------------------------------ replay queue */

typedef struct spi_replay_queue spi_replay_queue;

/* A request to replay elsewhere, with what was already streamed. */
typedef struct spi_envelope {
  size_t struct_size;
  const char *key;           size_t key_len;  /* idempotency key, 1..128 */
  const char *body;          size_t body_len; /* the original OpenAI body */
  int32_t openai_kind;       /* enum spi_openai_kind of body */
  int32_t klass;             /* its class: the lane it waits in */
  const char *partial_text;  size_t partial_text_len; /* streamed so far */
  const uint32_t *partial_tokens; size_t partial_token_count;
  uint64_t stream_offset;    /* tokens the client already has */
  uint32_t attempts;         /* replays tried so far */
  uint32_t flags;            /* SPI_ENVELOPE_* */
  int64_t first_enqueued_ns; /* 0 = now at enqueue */
  int64_t deadline_ns;       /* give up (dead-letter) after; 0 = none */
  char tenant[SPI_ID_MAX];
} spi_envelope;

#define SPI_ENVELOPE_FROM_SCRATCH 1u /* guided / JSON-schema decoding: the
                                        partial output cannot be continued */

/*
 * Open a replay queue with its store: {"store":"memory"} or
 * {"store":"journal","dir":"/var/lib/spotinfer/replay","fsync":"always"|
 * "batch"|"none", ...} (the accepted keys are listed by spi_option_get()
 * under "replay."). The engine provides the allocator and the clock and must
 * outlive the queue. A journal is recovered on open: every enqueue that
 * returned SPI_OK is back unless it was acked or dead-lettered.
 * A NULL or empty config uses the engine's "replay" section as is.
 * Errors: SPI_EINVAL, SPI_EPARSE, SPI_ETYPE, SPI_EUNKNOWN, SPI_ENOTFOUND
 * (unknown store), SPI_ERANGE, SPI_EIO, SPI_ENOMEM.
 * On failure *out is NULL and the message is the engine's.
 */
SPI_API int spi_replay_open(spi_engine *engine, const char *config_json,
                            size_t len, spi_replay_queue **out);
/* Flush and close. NULL is harmless. */
SPI_API void spi_replay_close(spi_replay_queue *queue);
/* The message of the calling thread's last failed call on this queue (""
 * if none), as for spi_engine_errmsg(). Never NULL. */
SPI_API const char *spi_replay_errmsg(const spi_replay_queue *queue);

/* Add an envelope (copied). When this returns SPI_OK the envelope is as
 * durable as the fsync policy says. An envelope whose key is already in the
 * queue (or was acked) is not added again: *duplicate (may be NULL) is set to
 * 1 and SPI_OK returned. Thread-safe. Errors: SPI_EINVAL, SPI_ETOOBIG,
 * SPI_EFULL (replay.max_bytes), SPI_EIO, SPI_ENOMEM. */
SPI_API int spi_replay_enqueue(spi_replay_queue *queue,
                               const spi_envelope *env, int32_t *duplicate);

/*
 * Claim the next ready envelope from the lanes in class_mask (bit 1 << class;
 * gold before silver before bronze; FIFO within a lane) with a lease of
 * lease_ms (0 = replay.lease_ms). Its contents are copied into buf[0..cap)
 * and *out points into buf; *needed (may be NULL) gets the bytes needed
 * (SPI_EBUFSIZE when cap is too small: nothing is claimed). A claim not acked
 * or nacked before its lease ends becomes ready again. Nothing ready is not
 * an error: SPI_OK with *claim_id 0 (never a claim), *needed 0 and *out
 * untouched. (Before 0.3.0 that was SPI_ENOTFOUND.) An envelope is handed
 * out only once its enqueue is durable: the call may wait for its fsync.
 * Errors: SPI_EBUFSIZE, SPI_EINVAL, SPI_EIO (a sync failed, or dead-lettering
 * an expired envelope could not be written).
 */
SPI_API int spi_replay_claim(spi_replay_queue *queue, uint32_t class_mask,
                             int64_t lease_ms, uint64_t *claim_id,
                             spi_envelope *out, void *buf, size_t cap,
                             size_t *needed);
/* Done: the envelope leaves the queue for good. Errors: SPI_ESTALE (lease
 * lost or unknown claim), SPI_EIO. */
SPI_API int spi_replay_ack(spi_replay_queue *queue, uint64_t claim_id);
/* Failed: ready again after an exponential backoff with jitter, or
 * dead-lettered after replay.max_attempts or past its deadline.
 * Errors: SPI_ESTALE, SPI_EIO. */
SPI_API int spi_replay_nack(spi_replay_queue *queue, uint64_t claim_id);

/* Counts of the queue. */
typedef struct spi_replay_stats {
  size_t struct_size;
  uint64_t ready[4];      /* by class lane */
  uint64_t leased;
  uint64_t delayed;       /* waiting out a backoff */
  uint64_t dead;          /* dead-lettered */
  uint64_t enqueued, duplicates, acked, nacked, expired_leases;
  uint64_t journal_bytes; /* on disk, 0 for memory */
  /* Since 0.2.0 (filled when struct_size covers them): the store's own
   * counts since the queue opened. */
  uint64_t recovered;       /* records read back when it opened */
  uint64_t torn;            /* damaged ranges met then (cut off or skipped) */
  uint64_t truncated_bytes; /* their bytes */
  uint64_t syncs;           /* flushes to stable storage */
  uint64_t compactions;
  /* Since 0.3.0: damage recovery skipped over. A damaged range inside the
   * journal is skipped and every good record after it is read; aside_files
   * counts the files of damaged bytes kept in the directory (*.corrupt),
   * from this open or earlier ones, until an operator removes them. */
  uint64_t skipped;         /* damaged ranges skipped, good records after */
  uint64_t skipped_bytes;
  uint64_t aside_files;
  /* Since 0.3.0: the fallback journal of a queue store ("replay.fallback":
   * "journal"; 0 without one). held counts what it holds now, waiting for
   * the store; the two counters count since the queue opened. */
  uint64_t fallback_held;     /* envelopes in it, not yet in the store */
  uint64_t fallback_enqueued; /* enqueues it took: the store did not answer */
  uint64_t fallback_moved;    /* envelopes moved from it into the store */
  /* Since 0.3.0: records recovery read back whole although their length
   * field was damaged (read by the length their payload gives, kept when
   * their checksum holds for it). Nothing was lost, so no count above has
   * them; a nonzero count is bit rot that the storage let through. */
  uint64_t repaired;
} spi_replay_stats;

/* Fills as much of *out as out->struct_size covers; it must reach at least
 * journal_bytes (the struct of 0.1.0). Errors: SPI_EINVAL. On a queue
 * store that cannot be reached: SPI_EIO, and still the fields this process
 * keeps itself are filled (enqueued, duplicates, acked, nacked and the
 * fallback_ ones; the queue's counts are 0). The engine's metrics text
 * has the fallback counts too (spotinfer_replay_fallback_*). */
SPI_API int spi_replay_stats_get(spi_replay_queue *queue,
                                 spi_replay_stats *out);

/* Periodic work (lease expiry, group commit, compaction) also runs inside
 * the other calls; call this when the queue is otherwise idle. */
SPI_API int spi_replay_tick(spi_replay_queue *queue);

/*
 * The continuation of an envelope as an OpenAI body, so the client's stream
 * resumes where it stopped: chat gets the streamed text as a final assistant
 * message with "continue_final_message": true and "add_generation_prompt":
 * false (vLLM and compatible servers); completions get it appended to the
 * prompt; max_tokens / max_completion_tokens are reduced by what was
 * streamed. Every other number is kept as the body spells it (an integer
 * beyond 2^53 keeps its digits, so tools key as they did). A body with
 * guided or JSON-schema decoding (response_format, guided_json,
 * guided_regex, guided_grammar, guided_choice) is replayed from scratch
 * and *flags gets SPI_ENVELOPE_FROM_SCRATCH. Written to buf[0..cap) with a
 * NUL; *needed (may be NULL) gets the length. Pure and thread-safe.
 * Errors: SPI_EINVAL, SPI_EPARSE (body: not one JSON object, a key given
 * twice, or \u0000 inside a string, which the continuation could not keep),
 * SPI_ERANGE (nothing left to generate), SPI_EBUFSIZE, SPI_ENOMEM.
 */
SPI_API int spi_replay_continuation(const spi_envelope *env, char *buf,
                                    size_t cap, size_t *needed,
                                    uint32_t *flags);

#ifdef __cplusplus
}
#endif

#endif /* SPOTINFER_H */
