/*
 * spotinfer_module.h - the module (plugin) API of libspotinfer.
 *
 * Every pluggable piece of the engine is a module: a versioned struct of
 * function pointers plus an opaque state pointer. The built-in modules are
 * registered through spi_engine_register_module() exactly like a user's, and
 * the configuration picks one module of each kind by name
 * ("modules": {"classifier": "reference", ...}).
 *
 * Life cycle of a module:
 *   register  - the struct is copied and checked; state is owned by the
 *               engine from then on and passed to destroy() when the engine
 *               is freed. A failed registration never calls destroy: the
 *               caller keeps its state.
 *   configure - on every spi_engine_configure() that selects the module, it
 *               receives its configuration section as JSON text ("{}" when
 *               absent) and returns an immutable instance for that snapshot.
 *   calls     - receive that instance; they may run concurrently from
 *               several threads, so an instance must be read-only or
 *               synchronise itself.
 *   release   - when the snapshot that owns the instance retires.
 *
 * A module declares what happens when one of its calls fails: fall back to
 * the built-in module of the same kind, or fail the library call with
 * SPI_EMODULE. The library checks what a module returns before using it.
 *
 * Structs only grow at the end; abi_version stays SPI_MODULE_ABI_VERSION for
 * as long as old structs remain valid, and struct_size tells which fields a
 * caller knows about. Registration accepts a module struct larger than this
 * version's (a module built against a newer header): the fields this version
 * knows are used and the rest ignored; a smaller one than this version's
 * first is SPI_EABI.
 *
 * Since: 0.1.0.
 */
#ifndef SPOTINFER_MODULE_H
#define SPOTINFER_MODULE_H

#include "spotinfer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SPI_MODULE_ABI_VERSION 1

/* Module kinds. */
enum spi_module_kind {
  SPI_MODULE_CLASSIFIER = 1,
  SPI_MODULE_KEY_BUILDER = 2,
  SPI_MODULE_POLICY = 3,        /* pool and replica choice */
  SPI_MODULE_COST_MODEL = 4,
  SPI_MODULE_NOTICE_SOURCE = 5, /* reserved: interruption notices */
  SPI_MODULE_REPLAY_STORE = 6,  /* where a replay queue keeps its records */
  SPI_MODULE_FLEET_BUS = 7      /* notices and cooldowns shared between
                                   engines (since 0.3.0) */
};

/* "classifier", "key_builder", "policy", "cost_model", "notice_source",
 * "replay_store", "fleet_bus", or "invalid". Never NULL. */
SPI_API const char *spi_module_kind_name(int32_t kind);

/* What the library does when a module call returns an error. */
enum spi_module_on_failure {
  SPI_ON_FAILURE_ERROR = 0,   /* fail the library call with SPI_EMODULE */
  SPI_ON_FAILURE_FALLBACK = 1 /* use the built-in module of the same kind */
};

/*
 * Common callbacks of every module. errbuf (capacity errcap, > 0) takes a
 * NUL-terminated message when a callback fails; the library prefixes it with
 * the module and configuration path, and cuts the whole to its message size
 * before a UTF-8 character, never inside one.
 */
typedef int (*spi_module_configure_fn)(void *state, const char *config_json,
                                       size_t config_len, void **out_instance,
                                       char *errbuf, size_t errcap);
typedef void (*spi_module_release_fn)(void *state, void *instance);
typedef void (*spi_module_destroy_fn)(void *state);

/*
 * The view of a request a module gets. Pointers are borrowed for the call
 * only. An unset integer is flagged in *_set (0/1).
 */
typedef struct spi_request_view {
  size_t struct_size;
  const char *model;              size_t model_len;
  const char *tokenizer_version;  size_t tokenizer_version_len;
  const char *system_prompt;      size_t system_prompt_len;
  const char *tools_canonical;    size_t tools_canonical_len; /* sorted keys, no spaces */
  const char *retrieval_template; size_t retrieval_template_len;
  const char *tenant;             size_t tenant_len;
  const char *tenant_tier;        size_t tenant_tier_len;
  const char *tenant_salt;        size_t tenant_salt_len;
  const char *decode_profile;     size_t decode_profile_len;
  /* The cascade's query: the last user message as the canonical prompt
   * holds it (a completions prompt as given). */
  const char *last_user_text;     size_t last_user_text_len;
  const uint8_t *prompt;          size_t prompt_len; /* canonical prompt text */
  const uint32_t *token_ids;      size_t token_count; /* 0 if none given */
  int32_t explicit_class;         /* enum spi_class, UNSET if none */
  int32_t service_tier;           /* enum spi_service_tier */
  int64_t priority;               int32_t priority_set;
  int32_t stream;                 /* 0/1 */
  int64_t sla_ms;                 int32_t sla_ms_set;
  int32_t replayable;             int32_t replayable_set;
  int64_t max_output_tokens;      int32_t max_output_tokens_set;
  int64_t expected_output_tokens; int32_t expected_output_tokens_set;
  int64_t prompt_tokens;          int32_t prompt_tokens_set;
  int32_t has_tools;              /* 1 if a tools array was given */
  size_t message_count;
  /* The class the priority maps to through priority_map.vllm; set for the
   * classifier only, SPI_CLASS_UNSET when no priority was given. */
  int32_t priority_class;
  /* SPI_REQ_MODEL_TIER if the caller forced one, else 0. */
  int32_t forced_model_tier;
  /* The metadata pairs (since 0.3.0), as spi_request_set_metadata or the
   * body's "metadata" object gave them, in order: metadata_count times a
   * key, a NUL, its value and a NUL, metadata_len bytes in all (an empty
   * string and 0 when there are none). A key given twice appears twice;
   * the later pair is the one that counts, as for the attributes. */
  const char *metadata;           size_t metadata_len;
  size_t metadata_count;
} spi_request_view;

/* ------------------------------------------------------------ classifier */

/* The degrade plan at every pressure level (index = enum spi_pressure), as
 * a classifier's classify_levels fills it: the fields of
 * spi_classification's plan, one per pressure. */
typedef struct spi_degrade_levels {
  size_t struct_size;           /* set by the library */
  int64_t max_output_tokens[4]; /* cap to apply; 0 = no cap */
  int32_t tools_allowed[4];     /* 0 = strip tools / multi-step modes */
  int32_t defer[4];             /* 1 = queue instead of serving now */
} spi_degrade_levels;

/*
 * A route classifies a request once, at the higher of the two pools'
 * pressures, and needs the plan at the pressure of the pool it chose.
 * A module with classify_levels answers for every pressure in that one
 * call. A module with classify only (such as one built against a header
 * older than classify_levels, whose struct_size ends before it) is asked
 * again, at the chosen pool's pressure, when the two pressures differ.
 */
typedef struct spi_classifier_module {
  uint32_t abi_version; /* SPI_MODULE_ABI_VERSION */
  uint32_t struct_size; /* sizeof(spi_classifier_module) */
  int32_t on_failure;   /* enum spi_module_on_failure */
  int32_t reserved0;
  spi_module_configure_fn configure; /* required */
  spi_module_release_fn release;     /* may be NULL */
  /* Fill out (struct_size already set by the library) for pressure. The
   * library validates klass, model_tier and the plan, and fills the
   * priority / service-tier mappings itself. Required unless
   * classify_levels is set; not called when it is. */
  int (*classify)(void *state, void *instance, const spi_request_view *req,
                  int32_t pressure, spi_classification *out);
  /* Optional (since 0.3.0; NULL = use classify). Fill out's class,
   * replayable, model_tier, rule_index, complexity and reason, which must
   * not depend on the pressure, and levels (struct_size already set by the
   * library, every field 0) with the plan at each pressure. The library
   * checks every level, then copies the one it needs into the
   * classification; out's own plan fields are ignored. */
  int (*classify_levels)(void *state, void *instance,
                         const spi_request_view *req, spi_classification *out,
                         spi_degrade_levels *levels);
} spi_classifier_module;

/* ----------------------------------------------------------- key builder */

typedef struct spi_key_builder_module {
  uint32_t abi_version;
  uint32_t struct_size;
  int32_t on_failure;
  int32_t reserved0;
  spi_module_configure_fn configure; /* required */
  spi_module_release_fn release;
  /* The versioned 128-bit key of a request. */
  int (*build_key)(void *state, void *instance, const spi_request_view *req,
                   spi_cache_key *out);
  /* The chained block hashes of req's prefix seeded by key: write up to
   * cap hashes to out and the total number of full blocks to *n_out. */
  int (*block_hashes)(void *state, void *instance, const spi_request_view *req,
                      const spi_cache_key *key, uint64_t *out, size_t cap,
                      size_t *n_out);
} spi_key_builder_module;

/* ------------------------------------------------------------ cost model */

typedef struct spi_cost_model_module {
  uint32_t abi_version;
  uint32_t struct_size;
  int32_t on_failure;
  int32_t reserved0;
  spi_module_configure_fn configure; /* required */
  spi_module_release_fn release;
  /* Price req on pool; out->struct_size and out->pool are set by the
   * library. Every double must come back finite and >= 0. */
  int (*price)(void *state, void *instance, const spi_request_view *req,
               int32_t pool, spi_price *out);
} spi_cost_model_module;


/* ---------------------------------------------------------------- policy */

/* One replica the policy may choose, as the library sees it right now. */
/* spi_candidate.match_flags. CONTINUED: a request routed to this replica
 * earlier matched this one's prompt as deep as matched_blocks and went on
 * with blocks of its own, so this request branches off a prefix several
 * requests share there (a document, a tenant's prompt) rather than
 * continuing the one conversation that ended at it. Since 0.3.0. */
#define SPI_MATCH_CONTINUED 0x1u

typedef struct spi_candidate {
  const char *id;          size_t id_len;
  int32_t pool;            /* SPI_POOL_SPOT or SPI_POOL_ON_DEMAND */
  int32_t model_tier;
  int32_t eligible;        /* 1: active, breaker allows, serves the model,
                              right tier, pool not shedding this class */
  int32_t probe;           /* 1: a half-open breaker's single probe */
  int32_t fresh;           /* 1: load signal younger than the bound */
  int32_t advised;         /* 1: its machine has rebalance advice; the TTFT
                              estimate carries the penalty (since 0.2.0) */
  double running, waiting, kv_usage; /* stale signals read as saturated */
  uint32_t inflight;       /* the library's own open tickets on it */
  uint32_t max_inflight;
  uint32_t matched_blocks; /* prefix blocks it likely holds for this req */
  uint32_t match_flags;    /* SPI_MATCH_* (since 0.3.0; 0 before) */
  uint64_t rendezvous;     /* rendezvous-hash weight for this request's
                              prefix; the highest wins a cold placement */
  double est_ttft_ms;      /* the library's TTFT estimate on it */
  double usd_per_hour;
  /* Since 0.3.0 (candidate_size covers them). The parts of the TTFT model
   * (README, "Replica choice"): est_ttft_ms = router.ttft_base_ms +
   * est_wait_ms + its own prefill (+ the advice penalty). */
  double est_wait_ms;      /* behind the prefill queued there or, when its
                              batch is full, for a slot in it (once a
                              ticket there has finished), whichever is
                              longer, ms */
  double served_tokens;    /* work the library sent it since it joined, in
                              tokens: each request's prompt and output (the
                              expected output until its ticket finishes,
                              then the reported one; a replica joins at
                              its pool's mean) */
  double prefill_tokens_per_s; /* its prefill rate, learnt from first tokens
                              (router.prefill_tokens_per_s until then) */
} spi_candidate;

/*
 * The usable candidates (eligible, or a half-open probe) of one pool and
 * model tier, as the library summarised them in its one pass over the
 * replicas. Every index names an entry of ctx->candidates; -1 means none.
 * A pool that sheds the request's class has no usable candidate, so its
 * summaries are empty. "Busy" below means inflight >= max_inflight or
 * running + waiting >= max_inflight.
 *
 * Since: 0.2.0.
 */
#define SPI_SUMMARY_TOP (3 + SPI_MAX_FALLBACKS)
#define SPI_SUMMARY_CELLS 4 /* (spot, on-demand) x (small, large) */
typedef struct spi_pool_summary {
  int32_t pool;             /* SPI_POOL_SPOT or SPI_POOL_ON_DEMAND */
  int32_t model_tier;       /* SPI_TIER_SMALL or SPI_TIER_LARGE */
  uint32_t usable;          /* how many usable candidates there are */
  uint32_t n_top;           /* entries of top[] in use: every usable one
                               when they fit, else 1 + SPI_MAX_FALLBACKS
                               (a primary and its fallbacks; before 0.3.0
                               SPI_SUMMARY_TOP); the rest are -1 */
  int32_t top[SPI_SUMMARY_TOP]; /* lowest est_ttft_ms first; ties go to the
                                   lower index */
  int32_t warm;             /* most matched_blocks (> 0), then lowest
                               est_ttft_ms */
  int32_t least;            /* lowest (running + waiting + inflight) /
                               max_inflight; ties go to the fewer
                               served_tokens / max_inflight (since 0.3.0),
                               then to the lower index */
  int32_t rendezvous;       /* highest rendezvous weight among the not busy;
                               ties go to the lower index */
  int32_t reserved0;
} spi_pool_summary;

/* Where the summary of a pool and tier is in ctx->summaries: spot small,
 * spot large, on-demand small, on-demand large. -1 when out of range. */
#define SPI_SUMMARY_INDEX(pool, tier)                                      \
  (((pool) == SPI_POOL_SPOT || (pool) == SPI_POOL_ON_DEMAND) &&            \
           ((tier) == SPI_TIER_SMALL || (tier) == SPI_TIER_LARGE)          \
       ? ((pool) - SPI_POOL_SPOT) * 2 + ((tier) - SPI_TIER_SMALL)          \
       : -1)

/* Everything a policy decides from. Borrowed for the call. */
typedef struct spi_route_context {
  size_t struct_size;
  size_t candidate_size;   /* sizeof(spi_candidate) the library was built with */
  const spi_request_view *req;
  const spi_classification *cls; /* at the higher of the spot and
                                     on-demand pools' KV pressures */
  const spi_candidate *candidates;
  size_t n_candidates;
  uint32_t total_blocks;
  uint32_t max_fallbacks;  /* fill at most this many fallbacks */
  int32_t pressure[4];     /* enum spi_pressure by enum spi_pool (1, 2) */
  int32_t shed[4];         /* by pool: 1 = the pool sheds this class now */
  int64_t now_ns;
  /* Since 0.2.0 (struct_size covers them): SPI_SUMMARY_CELLS summaries in
   * SPI_SUMMARY_INDEX order, each summary_size bytes apart. */
  const spi_pool_summary *summaries;
  size_t summary_size;
  size_t n_summaries;
  /* Since 0.3.0: by pool, the mean served_tokens of its usable replicas
   * (0 when it has none), so a load guard can be relative to the fleet. */
  double mean_served_tokens[4];
  double prompt_tokens;    /* this request's prompt tokens (served_tokens
                              counts them and its expected output) */
  /* Since 0.3.0: by pool, the mean max_inflight of its usable replicas
   * (0 when it has none; the same replicas as mean_served_tokens), so a
   * share can be in proportion to a replica's size: a replica's share of
   * the pool's work is mean_served_tokens * max_inflight /
   * mean_max_inflight. */
  double mean_max_inflight[4];
  /* Since 0.3.0: by summary (SPI_SUMMARY_INDEX order), the mean of its
   * usable replicas' est_wait_ms, a replica whose batch is full (running
   * >= max_inflight) counted at 0, for its next request waits for a decode
   * to end, which prefill elsewhere does not lengthen: the prefill backlog
   * of the pool and tier (0 when it has no usable replica). A summary's
   * usable says how many replicas the mean is over. */
  double mean_prefill_wait_ms[SPI_SUMMARY_CELLS];
  /* Since 0.3.0: when the engine last registered a spot replica (its
   * clock, ns; 0 if it never has). Non-zero while the spot pool is empty
   * tells a fleet whose spot replicas are gone for now, whose on-demand
   * pool is sized for the classes kept there, from one that runs no spot,
   * whose on-demand pool serves every class. */
  int64_t spot_seen_ns;
} spi_route_context;

/* A policy's answer: indices into the candidates, best first. */
typedef struct spi_policy_choice {
  size_t struct_size;
  int32_t pool;            /* SPOT, ON_DEMAND, QUEUE; 0 = none (no capacity
                              or shed: see reason_code) */
  int32_t reason_code;     /* enum spi_reason */
  uint32_t n_order;        /* chosen replica then fallbacks, <= 1 + max */
  uint32_t order[1 + SPI_MAX_FALLBACKS];
  char reason[160];
} spi_policy_choice;

/* spi_policy_module.flags. */
enum spi_policy_flags {
  /* The policy reads nothing of the candidates but ctx->summaries and the
   * candidates they name. The library then builds only those: ctx->
   * candidates is compact (in replica order), and every index, in the
   * summaries and in the choice, refers to that compact array. This saves
   * building one spi_candidate per replica on every route; both built-in
   * policies set it. A policy without the flag gets every replica, and the
   * summaries index that full array. Since: 0.2.0. */
  SPI_POLICY_SUMMARIES_ONLY = 1
};

typedef struct spi_policy_module {
  uint32_t abi_version;
  uint32_t struct_size;
  int32_t on_failure;
  int32_t flags;           /* enum spi_policy_flags; 0 before 0.2.0 */
  spi_module_configure_fn configure; /* required */
  spi_module_release_fn release;
  /* Choose for ctx. out->struct_size is set by the library, which then checks
   * that every index is in range and eligible (or a probe), and that the
   * first one is in out->pool. */
  int (*choose)(void *state, void *instance, const spi_route_context *ctx,
                spi_policy_choice *out);
} spi_policy_module;

/* ---------------------------------------------------------- replay store */

/*
 * A replay store keeps the records of a replay queue (spi_replay_open). The
 * queue holds its state in memory and writes every change of it to the store
 * as one record, in the order the changes happen; on open it rebuilds itself
 * from the records the store hands back, in the same order. Leases are not
 * records: a claim still open when the process died is ready again after
 * recovery (at-least-once). Built-ins: "journal" (a directory of
 * append-only, checksummed segment files; the default) and "memory" (keeps
 * nothing: the queue lives and dies with the process). A store over another
 * backend implements the same calls. A queue store (since 0.3.0, the
 * optional fields at the end of spi_replay_store_module) keeps the queue
 * itself, shared by every process that opens it: libspotinfer_redis's
 * "redis" store is one (spotinfer_redis.h).
 */
enum spi_replay_record_type {
  SPI_REPLAY_REC_ENQUEUE = 1, /* the whole envelope: queued (or restated) */
  SPI_REPLAY_REC_ACK = 2,     /* key: done for good; the key is remembered */
  SPI_REPLAY_REC_NACK = 3,    /* key, attempts, visible_ns: retry later */
  SPI_REPLAY_REC_DEAD = 4     /* key, attempts: dead-lettered */
};

/* One record. Pointers are borrowed for the call. */
typedef struct spi_replay_record {
  size_t struct_size;
  int32_t type;                 /* enum spi_replay_record_type */
  uint32_t attempts;            /* NACK, DEAD: failed attempts so far */
  const char *key;  size_t key_len; /* every type: 1..128 bytes */
  int64_t visible_ns;           /* NACK: ready again at (wall clock) */
  const spi_envelope *envelope; /* ENQUEUE: the envelope (its key is key);
                                   NULL for the other types */
} spi_replay_record;

/* Receives each recovered record in order; a non-OK return stops recovery
 * and is returned by recover(). */
typedef int (*spi_replay_record_fn)(void *user_data,
                                    const spi_replay_record *rec);

/* What a store reports about itself (spi_replay_stats shows bytes). */
typedef struct spi_replay_store_stats {
  size_t struct_size;
  uint64_t bytes;           /* held now (on disk for the journal) */
  uint64_t appended;        /* records appended since open */
  uint64_t syncs;           /* flushes to stable storage since open */
  uint64_t recovered;       /* records handed back by recover() */
  uint64_t torn;            /* damaged ranges met at recovery */
  uint64_t truncated_bytes; /* their bytes */
  uint64_t compactions;
  /* Since 0.3.0 (see spi_replay_stats). */
  uint64_t skipped;         /* damaged ranges skipped, good records after */
  uint64_t skipped_bytes;
  uint64_t aside_files;     /* files of damaged bytes kept for inspection */
  uint64_t repaired;        /* records read whole despite a damaged length
                               field (see spi_replay_stats) */
} spi_replay_store_stats;

/*
 * What a queue store's calls get (since 0.3.0): the queue's settings as the
 * "replay" configuration has them, and the time.
 */
typedef struct spi_replay_ctx {
  size_t struct_size;
  int64_t now_ns;            /* the engine's clock (wall clock by default) */
  int64_t lease_ms;          /* claim: this claim's lease */
  uint32_t max_attempts;     /* replay.max_attempts: an expired lease that
                                reaches it dead-letters the envelope */
  uint32_t reserved0;
  int64_t max_bytes;         /* replay.max_bytes: SPI_EFULL beyond */
  int64_t max_acked_keys;    /* replay.max_acked_keys: keys remembered */
  int64_t max_dead;          /* replay.max_dead: dead letters kept */
} spi_replay_ctx;

/*
 * A queue store's claim hands the claimed envelope to this function, once,
 * borrowed for the call; its key, attempts (failed attempts so far) and
 * deadline_ns must be the ones the store will act on. A non-OK return is
 * the claim's answer: the store keeps the claim (it is returned by claim's
 * *claim_id as usual). When the library refused the envelope (no key, a
 * class out of range: it will never take it), it dead-letters the claim
 * at once with nack (dead set, attempts unchanged); while that nack returns
 * SPI_EIO, the library repeats it on later claims and ticks.
 */
typedef int (*spi_replay_envelope_fn)(void *fn_data, const spi_envelope *env);

/*
 * The queue store's claim, in full: claim the next ready envelope from the
 * lanes in class_mask (gold before silver before bronze, FIFO within a lane)
 * with a lease of ctx->lease_ms; first promote backoffs that are due and
 * put back, as a failed attempt, leases that expired (dead-lettering those
 * that reach ctx->max_attempts or their deadline); dead-letter ready
 * envelopes past their deadline instead of handing them out. *claim_id gets
 * a nonzero id unique within the instance, or 0 when nothing is ready.
 * ack: done for good, the key is remembered (a later enqueue of it is a
 * duplicate); SPI_ESTALE when the claim is not held (lease lost, unknown).
 * nack: the library decided: dead (dead-letter it) or ready again at
 * visible_ns with attempts; SPI_ESTALE as for ack.
 * An ack or nack that returns SPI_EIO leaves the claim held in the library,
 * and the caller may repeat it (until the library forgets the claim, its
 * lease length after its lease ended and at least 1 s after: then the
 * library answers SPI_ESTALE itself); the library repeats a nack with the
 * same attempts, visible_ns and dead. When the store had done the first (only
 * its answer was lost), the same call repeated should return SPI_OK, not
 * SPI_ESTALE (the "redis" store remembers finished claims for their lease
 * length).
 * queue_stats fills ready[], leased, delayed and dead (the shared queue's
 * counts), expired_leases (leases this instance's calls found expired and
 * put back) and journal_bytes (what the queue holds, or 0).
 */

/*
 * The replay-store module. configure opens the store for one queue: built-in
 * stores get the queue's whole "replay" configuration, a user's store gets
 * replay.store_config; the instance it returns is the open store, and
 * release closes it (flushing what is pending). on_failure is not consulted:
 * a store that fails always fails the queue call (a queue never changes
 * store behind the caller's back).
 *
 * Calling discipline: recover, append and compact are called one at a time,
 * under the queue's lock, in the order of the queue's state changes; sync
 * may be called from several threads at once and without that lock; stats
 * at any time. errbuf (errcap > 0) takes a message on failure.
 */
typedef struct spi_replay_store_module {
  uint32_t abi_version; /* SPI_MODULE_ABI_VERSION */
  uint32_t struct_size; /* sizeof(spi_replay_store_module) */
  int32_t on_failure;   /* ignored, see above */
  int32_t reserved0;
  spi_module_configure_fn configure; /* required: open */
  spi_module_release_fn release;     /* required: close */
  /* Hand every stored record to fn in order, once, right after open.
   * Damage is skipped (every good record after it is still handed over) and
   * recovery still succeeds: then errbuf holds a warning naming it. */
  int (*recover)(void *state, void *instance, spi_replay_record_fn fn,
                 void *user_data, char *errbuf, size_t errcap);
  /* Append one record. *out_seq gets a number that increases with every
   * append, to pass to sync. A failed append stores nothing. */
  int (*append)(void *state, void *instance, const spi_replay_record *rec,
                uint64_t *out_seq, char *errbuf, size_t errcap);
  /* Return once every record up to seq is as durable as the store's policy
   * promises. */
  int (*sync)(void *state, void *instance, uint64_t seq, char *errbuf,
              size_t errcap);
  /* Replace everything stored by recs[0..n), which restate the queue's
   * whole state; all or nothing. May be NULL (never compacts). */
  int (*compact)(void *state, void *instance, const spi_replay_record *recs,
                 size_t n, char *errbuf, size_t errcap);
  /* Fill out (struct_size set by the caller). */
  int (*stats)(void *state, void *instance, spi_replay_store_stats *out);

  /* ---- Since 0.3.0 (struct_size covers them): a queue store. ----
   *
   * A record store (above) keeps a log; the queue lives in the process that
   * opened it. A queue store keeps the queue itself, so several processes
   * (each with its own engine and spi_replay_queue) can share one: leases,
   * lanes, backoff and dead letters live in the store, and a lease another
   * process let expire is claimed by whoever claims next. A store is a
   * queue store when enqueue is set; then claim, ack, nack and queue_stats
   * must be set too, and recover, append, sync and compact may be NULL (they
   * are never called). The library keeps the rest of the contract: it
   * checks envelopes and arguments before calling, computes the backoff and
   * decides dead-lettering on nack (replay.max_attempts, the deadline), and,
   * with "replay.fallback": "journal", keeps enqueues in a local journal
   * while the store answers SPI_EIO and hands them to the store, once, when
   * it answers again (docs/redis.md).
   *
   * Every call gets the queue's settings and the engine's clock in ctx.
   * Calls may come from several threads at once; a queue store synchronises
   * itself. Return SPI_EIO when the backend cannot be reached or did not
   * answer in time (nothing was done, or the call is safe to repeat), any
   * other status for the rest; errbuf takes the message. */
  int (*enqueue)(void *state, void *instance, const spi_replay_ctx *ctx,
                 const spi_envelope *env, int32_t *duplicate, char *errbuf,
                 size_t errcap);
  int (*claim)(void *state, void *instance, const spi_replay_ctx *ctx,
               uint32_t class_mask, spi_replay_envelope_fn fn, void *fn_data,
               uint64_t *claim_id, char *errbuf, size_t errcap);
  int (*ack)(void *state, void *instance, const spi_replay_ctx *ctx,
             uint64_t claim_id, char *errbuf, size_t errcap);
  int (*nack)(void *state, void *instance, const spi_replay_ctx *ctx,
              uint64_t claim_id, uint32_t attempts, int64_t visible_ns,
              int32_t dead, char *errbuf, size_t errcap);
  int (*queue_stats)(void *state, void *instance,
                     const spi_replay_ctx *ctx, spi_replay_stats *out,
                     char *errbuf, size_t errcap);
  /* Periodic work (promote due backoffs, reclaim expired leases); may be
   * NULL. */
  int (*tick)(void *state, void *instance, const spi_replay_ctx *ctx,
              char *errbuf, size_t errcap);
  /* Any store, since 0.3.0; may be NULL. Check a configuration (what
   * configure would get) without opening anything: spi_engine_configure
   * calls it for the "replay" section's store, so a bad store_config is
   * refused there like every other option, not only at spi_replay_open. */
  int (*check)(void *state, const char *config_json, size_t config_len,
               char *errbuf, size_t errcap);
} spi_replay_store_module;

/* ------------------------------------------------------------- fleet bus */

/*
 * A fleet bus carries what one engine learns to the other engines of a
 * deployment (one engine per proxy process): the interruption notices
 * handed to spi_engine_notice() and the spot-pool cooldowns they start. The
 * library still starts no thread and does no I/O of its own: it publishes
 * from inside spi_engine_notice() (after the notice has acted locally, in
 * the order notices acted: each one's messages are queued as it acts) and
 * polls from inside spi_engine_tick(), so a notice handed to any engine
 * stops routing to its machine in every engine within one tick.
 *
 * The bus is a transport of opaque messages: the library writes and reads
 * them (compact JSON text, at most SPI_FLEET_MSG_MAX bytes, a versioned
 * format of its own); a module only moves bytes. Every engine hands back
 * every message, its own included; the library drops what it has already
 * applied (by machine, kind, deadline, event id and dedup key), applies
 * the rest as if they had been handed to spi_engine_notice() (without
 * plans: see spi_engine_node_plans) and never publishes them again.
 * Messages it cannot read are skipped and counted (spi_engine_fleet_stats).
 *
 * Selected by {"modules": {"fleet_bus": "<name>"}}; the module gets
 * module_config.<name> at configure ("{}" when absent). A failed configure
 * fails spi_engine_configure with the module's message (an unreachable
 * server, a refused password). on_failure is not consulted: a failed
 * publish or poll never fails or undoes the local notice. A failed publish
 * is kept (at most SPI_FLEET_PENDING_MAX messages, the oldest dropped and
 * counted beyond) and sent again from the next tick on, oldest first; a
 * tick sends kept messages for up to 100 ms of the engine's clock (the
 * publish under way ends first), so a bus that takes them slowly holds a
 * tick for about one publish, and the rest wait, in order, for the ticks
 * after it. spi_engine_tick returns SPI_EMODULE with the module's message
 * when the bus failed in it.
 *
 * Calling discipline: the library calls the module with no lock and no pin
 * held (a slow bus never stalls routing or replica updates); the instance
 * stays alive for the call even if a configure retires its snapshot
 * meanwhile. poll is called by one thread at a time; publish may run at the
 * same time as poll and as other publishes.
 */
#define SPI_FLEET_MSG_MAX 4096
#define SPI_FLEET_PENDING_MAX 256

/* Takes one message (borrowed for the call). SPI_OK: taken. Any other
 * status: not taken; the module stops and hands it again on the next
 * poll (the engine has taken as many as it wants this time). */
typedef int (*spi_fleet_msg_fn)(void *user_data, const char *msg, size_t len);

typedef struct spi_fleet_bus_module {
  uint32_t abi_version; /* SPI_MODULE_ABI_VERSION */
  uint32_t struct_size; /* sizeof(spi_fleet_bus_module) */
  int32_t on_failure;   /* ignored, see above */
  int32_t reserved0;
  spi_module_configure_fn configure; /* required: connect */
  spi_module_release_fn release;     /* required: disconnect */
  /* Send msg (len bytes, no NUL needed) to every engine on the bus. Must
   * return within the module's own timeout. */
  int (*publish)(void *state, void *instance, const char *msg, size_t len,
                 char *errbuf, size_t errcap);
  /* Hand fn the messages published since this instance's last poll, in
   * order, at most max of them, without waiting for more. */
  int (*poll)(void *state, void *instance, size_t max, spi_fleet_msg_fn fn,
              void *user_data, char *errbuf, size_t errcap);
} spi_fleet_bus_module;

/* What an engine's bus did since the engine was made. */
typedef struct spi_fleet_stats {
  size_t struct_size;
  int32_t configured;   /* 1: a fleet bus is selected */
  int32_t reserved0;
  uint64_t published;   /* messages the bus took */
  uint64_t publish_failed; /* publish calls that failed (retried later) */
  uint64_t pending;     /* failed messages waiting to be sent again */
  uint64_t dropped;     /* pending messages dropped, over the bound */
  uint64_t polls;       /* poll calls */
  uint64_t poll_failed;
  uint64_t received;    /* messages handed back by polls */
  uint64_t applied;     /* notices and cooldowns that acted here */
  uint64_t duplicates;  /* already applied here (own echoes included) */
  uint64_t malformed;   /* unreadable: skipped */
  uint64_t unknown;     /* a newer version's message, type or notice
                           kind: skipped */
  char last_error[256]; /* the last bus failure or skipped message, "" */
} spi_fleet_stats;

/* Fill *out (out->struct_size set, at least sizeof(spi_fleet_stats)).
 * Thread-safe. Errors: SPI_EMISUSE, SPI_EINVAL. Since: 0.3.0. */
SPI_API int spi_engine_fleet_stats(spi_engine *engine, spi_fleet_stats *out);

/*
 * The plans for the open tickets on a machine that is NOTICED or DRAINING,
 * computed now against its deadline, exactly as spi_engine_notice() writes
 * them (same array rules: plans[0].struct_size is the element size). For a
 * machine a fleet bus noticed inside spi_engine_tick(), whose transition
 * callback says so, or after SPI_EBUFSIZE. A machine noticed or drained
 * by hand has no deadline until a notice gives it one: its plans are
 * computed against router.default_window_ms from now, as for a notice that
 * gives none. Any other machine has none:
 * *n_out = 0. Errors: SPI_EMISUSE, SPI_EINVAL, SPI_EBUFSIZE. Since: 0.3.0.
 */
SPI_API int spi_engine_node_plans(spi_engine *engine, const char *node,
                                  size_t node_len, spi_ticket_plan *plans,
                                  size_t cap, size_t *n_out);

/*
 * Register a module of a kind under a name (1..63 bytes of [A-Za-z0-9_.-]).
 * module points to the kind's struct (spi_classifier_module, ...), which is
 * copied. state is handed to every callback and to destroy (may be NULL)
 * when the engine is freed; if registration fails, destroy is NOT called
 * and the caller keeps state.
 * Must not run concurrently with other calls on the engine.
 * Errors: SPI_EINVAL (bad name, NULL module or required callback),
 * SPI_EABI (abi_version unsupported, struct_size below the kind's struct),
 * SPI_EEXIST,
 * SPI_ENOTSUP (a reserved kind this version does not define yet:
 * notice_source),
 * SPI_ENOMEM.
 */
SPI_API int spi_engine_register_module(spi_engine *engine, int32_t kind,
                                       const char *name, size_t name_len,
                                       const void *module, void *state,
                                       spi_module_destroy_fn destroy);

/* Names of the registered modules of a kind, one per index, in registration
 * order. *out is static or owned by the engine (valid until it is freed).
 * Errors: SPI_EINVAL, SPI_ENOTFOUND (index past the end). */
SPI_API int spi_engine_module_name(spi_engine *engine, int32_t kind,
                                   size_t index, const char **out);

#ifdef __cplusplus
}
#endif

#endif /* SPOTINFER_MODULE_H */
