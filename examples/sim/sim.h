/*
 * sim.h - shared declarations of spotinfer_sim, the discrete-event simulator
 * that replays request traces and spot-capacity traces through libspotinfer
 * using only its public API.
 */
#ifndef SPOTINFER_SIM_H
#define SPOTINFER_SIM_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_module.h"
#include "spotinfer/spotinfer_extras.h"

/* One trace block is this many prompt tokens (Mooncake's hash_ids unit). */
#define SIM_BLOCK_TOKENS 512

/* Bounds of the generator's options: --requests at most SIM_MAX_REQUESTS,
 * --rate from SIM_MIN_RATE to SIM_MAX_RATE a second (its arrivals then
 * stay far inside int64 nanoseconds), and a run (the trace's arrivals and
 * the horizon after them) at most SIM_MAX_RUN_S simulated seconds, about
 * 231 days: the spot capacity is kept tick by tick over all of it. */
#define SIM_MAX_REQUESTS 10000000u
#define SIM_MIN_RATE 0.01
#define SIM_MAX_RATE 1e6
#define SIM_MAX_RUN_S 2e7
/* A trace block is handed to the library as this many synthesized token
 * ids, and cache_key.block_tokens is set to the same number, so one trace
 * block is exactly one library block. */
#define SIM_IDS_PER_BLOCK 4

/* ---------------------------------------------------------------- PRNG */

typedef struct sim_rng {
  uint64_t s[4];
} sim_rng;

void sim_rng_seed(sim_rng *r, uint64_t seed);
uint64_t sim_rng_next(sim_rng *r);
double sim_rng_unit(sim_rng *r); /* [0, 1) */
uint64_t sim_mix64(uint64_t x);  /* splitmix64 finaliser */

/* -------------------------------------------------------------- traces */

typedef struct sim_trace_req {
  int64_t arrival_ns;   /* from the start of the run */
  uint32_t in_tokens;
  uint32_t out_tokens;
  uint32_t nblocks;     /* prompt blocks (hash ids) */
  uint32_t klass;       /* enum spi_class, drawn per session */
  uint64_t session;     /* conversation (or tenant) it belongs to */
  size_t block_off;     /* into sim_trace.blocks / chain */
} sim_trace_req;

typedef struct sim_trace {
  sim_trace_req *reqs;
  size_t n, cap;
  uint64_t *blocks;     /* trace block ids, per request in order */
  uint64_t *chain;      /* chained prefix hashes of the same blocks */
  uint32_t *ids;        /* SIM_IDS_PER_BLOCK synthesized token ids a block */
  size_t nb, bcap;
  size_t bad_lines;     /* lines that could not be read, skipped */
  char first_bad[160];  /* what was wrong with the first of them */
  const char *source;   /* "generator", or the file name */
  const char *format;   /* what it was read as: "generator", "Mooncake JSONL", ... */
  uint32_t file_block_tokens; /* tokens a hash id of the file stands for */
} sim_trace;

/* The generator's traffic families (see trace.c). */
enum {
  SIM_FAMILY_MIXED,
  SIM_FAMILY_GLOBAL_PROMPT,
  SIM_FAMILY_TENANTS,
  SIM_FAMILY_LONG_SESSIONS,
  SIM_FAMILY_AGENTS,
  SIM_FAMILY_BURSTS,
  SIM_FAMILY_LONG_GEN,
  SIM_FAMILY_DOCUMENTS,
  SIM_FAMILIES
};

typedef struct sim_gen_opts {
  size_t requests;
  double rate_per_s;
  uint64_t seed;
  double mix[4]; /* by class: gold, silver, bronze shares */
  int family;    /* SIM_FAMILY_* */
} sim_gen_opts;

const char *sim_family_name(int family);
int sim_family_parse(const char *name, int *family); /* 0, or -1 unknown */

void sim_trace_free(sim_trace *t);
int sim_trace_generate(sim_trace *t, const sim_gen_opts *o);
/* A request trace, its format told by content (trace_read.c): JSONL with
 * Mooncake's fields (timestamps in ms) or the Qwen/Bailian fields (chat_id,
 * parent_chat_id; timestamps in s), or CSV (Azure's TIMESTAMP,
 * ContextTokens,GeneratedTokens, BurstGPT's columns, or any header that
 * names a time, an input and an output column). limit 0 = all. Classes come
 * from mix with seed. Returns 0, or -1 with msg when the file is unusable. */
int sim_trace_read(sim_trace *t, const char *path, size_t limit,
                   const double mix[4], uint64_t seed, char *msg,
                   size_t msgcap);
/* The same from an open stream; name is what messages call it. On failure
 * *t is freed. */
int sim_trace_parse(sim_trace *t, FILE *f, const char *name, size_t limit,
                    const double mix[4], uint64_t seed, char *msg,
                    size_t msgcap);
/* Every arrival f times as early (f > 0; 0 and 1 leave them), to replay
 * a trace at another load: --speedup. */
void sim_trace_speedup(sim_trace *t, double f);
/* Fill chain[] from blocks[] (call after the requests are read). */
void sim_trace_chain(sim_trace *t);
/* What the generator and the readers share (trace.c): a new request at the
 * end (its block_off set), a block id appended, a bad line counted (the
 * first one's reason kept), a session's class, the order of arrivals. */
sim_trace_req *sim_trace_add_req(sim_trace *t);
int sim_trace_add_block(sim_trace *t, uint64_t id);
void sim_trace_note_bad(sim_trace *t, size_t line, const char *why);
/* Out of memory for what: says so on standard error and exits 1. */
#if defined(__GNUC__)
__attribute__((noreturn))
#endif
void sim_oom(const char *what);
uint32_t sim_session_class(const sim_rng *r, const double mix[4], uint64_t session);
int sim_trace_cmp_arrival(const void *a, const void *b);

/* A spot-capacity trace: one value per tick, the instances available. A
 * trace whose values are only 0 and 1 is availability of the whole zone;
 * one with larger values counts nodes, and the zone then runs that many of
 * its replicas. */
typedef struct sim_spot_trace {
  double gap_s;
  int32_t *v;
  size_t n;
  int32_t vmax;  /* largest value */
  char zone[48];
  char cloud[8]; /* "aws", "gcp" or "azure" */
  double lead_s; /* notice lead time of the cloud */
} sim_spot_trace;

/* arg: [aws:|gcp:|azure:]FILE; the prefix chooses the cloud. */
int sim_spot_read(sim_spot_trace *s, const char *arg, char *msg,
                  size_t msgcap);
/* The same from an open stream of a cloud's ("aws", "gcp", "azure");
 * path names the zone (its file name up to the first '_' or '.'). */
int sim_spot_parse(sim_spot_trace *s, FILE *f, const char *path, const char *cloud,
                   char *msg, size_t msgcap);
void sim_spot_generate(sim_spot_trace *s, const char *zone, const char *cloud,
                       double horizon_s, uint64_t seed);
void sim_spot_free(sim_spot_trace *s);

/* ------------------------------------------------------------ policies */

/* What a gateway knows of its fleet without the library, kept current by
 * the simulator: the work it sent each replica and has not seen finish, each
 * replica's KV capacity, and a counter bumped when a replica comes back
 * with an empty cache. Indexed by replica. */
typedef struct sim_gw_view {
  uint32_t nrep;
  double *tokens;      /* outstanding: prompt + output still to come */
  uint32_t *kv_blocks;
  uint32_t *epoch;
  uint64_t refs;       /* block references in the trace (bounds tables) */
  uint64_t seed;       /* for the policies that break ties at random */
} sim_gw_view;

/* Register the simulator's comparison policies on an engine:
 * "sim-round-robin", "sim-least-loaded", "sim-consistent-hash",
 * "sim-greedy", "sim-sglang", "sim-epp"; with only set, just the one of
 * that name (a run needs only its own: the others' tables cost time to
 * build). The view must outlive the engine. Returns a status. */
int sim_register_policies(spi_engine *engine, const sim_gw_view *view, const char *only);

/* ----------------------------------------------------------------- LRU */

/* A hash slot, holding a key and its links in the recency list; defined
 * in lru.c. */
struct sim_lru_slot;

typedef struct sim_lru {
  struct sim_lru_slot *slots; /* mask + 1 of them */
  uint32_t mask;
  uint32_t cap, size, head, tail; /* head, tail: slot indices */
} sim_lru;

/* The most keys an LRU holds: its slots are 32-bit indices, at most 2^31. */
#define SIM_LRU_MAX_CAP (1u << 30)
/* The most KV blocks of a whole cluster (--replicas times --kv-blocks, or
 * a cluster file's groups): the pooled ceiling's cache holds all of them,
 * and its table is 32 bytes a block (512 MiB at this bound). */
#define SIM_MAX_CLUSTER_KV 16777216u

/* 0, or -1 when capacity is above SIM_LRU_MAX_CAP or memory runs out. */
int sim_lru_init(sim_lru *l, uint32_t capacity);
void sim_lru_free(sim_lru *l);
void sim_lru_clear(sim_lru *l);
/* 1 if present (and made most recent). */
int sim_lru_touch(sim_lru *l, uint64_t key);
int sim_lru_contains(const sim_lru *l, uint64_t key);
void sim_lru_insert(sim_lru *l, uint64_t key);
/* Change the capacity (at most the one it was made with), evicting the
 * least recently used keys down to it; 0 empties it, and nothing enters
 * until the capacity is raised again. */
void sim_lru_set_cap(sim_lru *l, uint32_t capacity);
uint32_t sim_lru_prefix_fill(sim_lru *l, const uint64_t *chain, uint32_t n);

/* The data directory (trace.c). Names in dir (not starting with '.') that
 * end in one of exts ("" for any), as dir/name, sorted; at most max. */
#define SIM_LIST_MAX 16
size_t sim_list_dir(const char *dir, const char *const *exts, size_t next,
                    char out[][512], size_t max);
/* DATA_DIR/spot/<set>/<zone>.json, each prefixed with its cloud ("gcp:" for
 * a set whose name says gcp, "azure:" azure, "aws:" otherwise); a file the
 * spot reader cannot use is left out, its reason on standard error. */
size_t sim_list_spot(const char *data, char out[][512], size_t max);

#endif
