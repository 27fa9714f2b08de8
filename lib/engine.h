/*
 * engine.h - the engine, its module registry and its configuration snapshot.
 * Internal; shared by engine.c, request.c and dispatch.c.
 *
 * LOCK ORDER - the one written order for every lock and wait in the library.
 *
 * Readers do not lock. They pin: an RCU pin (spi__snap_acquire) keeps the
 * snapshot, the replica set and the prefix index alive; a ticket pin
 * (spi__ticket_pin) keeps one ticket record from being reset. A route also
 * holds the pool index (pool_index.h) while it ranks through it: no lock is
 * taken and nothing is waited for while it is held, and a route that
 * finds it taken waits a bounded while, then reads every slot instead
 * (spi__pix_take), so the index is not in the order. Mutexes, outer first
 * (a thread holding one may take only those below it):
 *
 *   1. config_lock          spi_engine_configure, and spi_replay_open
 *                           while it loads its store (module_load.c)
 *   2. nodes->lock          node.c: notices, node states, ticks
 *   3. registry.lock        replica.c: replica set writers
 *   4. replay queue mu      replay.c, then the journal's mu, then its
 *                           process-wide open_lock (journal.c); a queue
 *                           store's report_mu (replay_shared.c) comes
 *                           before its fallback queue's mu
 *   5. leaves               the ledger's lock and its stripes' locks
 *                           (ledger.c, one at a time), the memory
 *                           store's mu, a queue store's mu
 *                           (replay_shared.c), the fleet state's mu
 *                           (notice_bus.c), the loader's process-wide
 *                           load_mu (module_load.c, taken under config_lock):
 *                           nothing is taken under them
 *
 * Two rules make pins and locks safe together:
 *   A. A pinned thread may take any lock, in the order above. So nobody may
 *      wait for pins to end (spi__rcu_synchronize; ticket release waiting for
 *      a record's pins) while holding a lock from 2-5: writers swap under
 *      their lock, release it, then wait and free (replica.c retire()).
 *      config_lock (1) may be held across the wait because no pinned thread
 *      takes it. Waiting for RCU pins while holding one waits for oneself;
 *      waiting for ticket pins while RCU-pinned (a finish) is fine, because a
 *      ticket pin's holder never waits for anything. A notice's plan scan
 *      (node.c, under 2 and 3) waits for the routes opening a ticket on the
 *      machine's replicas (routing.h, spi__slot_open_begin): fine for the
 *      same reason, such a route holds no lock and waits for nothing. The
 *      fence both waits start with (spi__fence_all, membarrier) waits for
 *      no lock and no pin either.
 *   B. Callbacks into the caller's code that may call back into the engine
 *      (node transitions) run with no lock and no pin held. Module callbacks
 *      run pinned: a module's configure calling spi_engine_configure gets
 *      SPI_EMISUSE, and modules must not change replicas or configuration.
 * What a pin protects never changes under the reader: a replica set's
 * entries r[0..n) are written before the set is published (atomic exchange,
 * which readers load) and never again. An add writes its entry at r[n] of
 * the newest set's block and publishes a set of n + 1 over the same block;
 * a reader of any older set on it reads below its own n, never there
 * (replica.c). The one thing an add writes that such a reader may read is
 * an empty slot of the block's index by id (atomic, filled once): a reader
 * that finds a position at or past its own n there skips it. The
 * registry's chains by machine and spot pool are written and read only
 * under registry.lock (replica.c, node.c).
 * tests/unit/test_lock_order.c and test_storm.c hold these rules to account.
 */
#ifndef SPI_ENGINE_H
#define SPI_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>

#include "routing.h"
#include "spi_internal.h"

#define SPI_ENGINE_MAGIC 0x53504945u  /* "SPIE" */
#define SPI_REQUEST_MAGIC 0x53504952u /* "SPIR" */
#define SPI_DEAD_MAGIC 0xdeadbeefu
#define SPI_KIND_MAX 8 /* kinds are 1..7 */
#define SPI_MODULE_NAME_MAX 63
#define SPI_CONFIG_MAX_BYTES (16u << 20)

/* One registered module: a checked copy of the caller's struct. */
typedef struct spi_modentry {
  int32_t kind;
  int32_t builtin;
  char name[SPI_MODULE_NAME_MAX + 1];
  const char *section; /* config section of a built-in, NULL for a user's */
  union {
    spi_classifier_module classifier;
    spi_key_builder_module key_builder;
    spi_cost_model_module cost_model;
    spi_policy_module policy;
    spi_replay_store_module replay_store;
    spi_fleet_bus_module fleet_bus;
  } m;
  spi_module_configure_fn configure;
  spi_module_release_fn release;
  int32_t on_failure;
  void *state;
  spi_module_destroy_fn destroy;
  struct spi_modentry *next;
} spi_modentry;

typedef struct spi_limits {
  int64_t max_body_bytes;
  int64_t max_field_bytes;
  int64_t max_messages;
  int64_t max_tools_bytes;
  int64_t max_metadata_pairs;
  int64_t max_token_ids;
} spi_limits;

/* The selected and built-in instance of one module kind in a snapshot. */
typedef struct spi_slot {
  spi_modentry *mod;
  void *inst;
  spi_modentry *builtin;
  void *builtin_inst;
} spi_slot;

/* An immutable configuration: built whole, swapped in, never changed. */
typedef struct spi_snapshot {
  uint64_t seq; /* 1, 2, ... in the order the engine installed them */
  spi_limits limits;
  int32_t vllm_prio[4]; /* indexed by enum spi_class */
  int32_t llmd_prio[4];
  int32_t service_tier[4];
  spi_slot slot[SPI_KIND_MAX];
  spi_router_cfg router;
  spi_slot shadow;           /* routing.shadow_policy's instance, if any */
  struct spi_fleet_ref *fleet; /* the fleet bus's instance, if any */
  char *json; /* effective configuration, canonical JSON */
  size_t json_len;
} spi_snapshot;

struct spi_engine {
  uint32_t magic;
  spi_mem mem;
  spi_clock_fn clock;
  void *clock_user_data;
  spi_log_fn log;
  void *log_user_data;
  int32_t log_level;
  spi_modentry *modules;
  /* Readers pin the snapshot, the replica set and the index through one RCU
   * domain instead of a lock; writers swap and wait for old readers. */
  spi_rcu rcu;
  _Atomic(spi_snapshot *) snap;
  /* The installed snapshot's seq, stored after the swap: a request whose
   * copy of the limits came from this seq has the current ones
   * (spi__req_limits) without pinning the snapshot. */
  _Atomic(uint64_t) snap_seq;
  pthread_mutex_t config_lock;
  /* Routing state that outlives configuration snapshots. */
  spi_registry registry;
  _Atomic(spi_prefix_index *) index;  /* swapped by configure (RCU) */
  size_t index_budget;
  /* Created at first use and fixed from then on (router.c). */
  _Atomic(spi_ticket_table *) tickets;
  _Atomic(spi_ledger *) ledger;
  _Atomic(spi_metrics *) metrics;
  /* (the ledger and the metrics know the sizes they were made with) */
  atomic_uint kv_level[4];   /* pool KV breaker level, by enum spi_pool */
  /* Which replicas ranked best in the last route, per summary cell: a hint
   * the next route evaluates first (route.c). Written only when it changes,
   * on a line of its own so routing threads do not share it with anything
   * they write more often. */
  char hint_pad0[64];
  atomic_ullong route_hint[SPI_SUMMARY_CELLS][2];
  char hint_pad1[64];
  struct spi_nodes *nodes;   /* machines and their fate (node.c) */
  atomic_int configuring; /* set while module configure callbacks run */
  /* Error detail, one message per calling thread (errtab.c). */
  spi_errtab err;
};

/* ------------------------------------------------------ floor (floor.c) */

/* Pin the current snapshot (and with it the replica set and the index);
 * pass *pin to spi__snap_release(). */
spi_snapshot *spi__snap_acquire(spi_engine *e, unsigned *pin);
void spi__snap_release(spi_engine *e, unsigned pin);

int spi__engine_ok(const spi_engine *e);
int64_t spi__engine_now(const spi_engine *e);
void spi__engine_log(const spi_engine *e, int32_t level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Record an error on the engine and return status. */
int spi__engine_fail(spi_engine *e, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The clock an engine gets when its caller sets none (the default memory
 * hooks are in spi_internal.h). */
int64_t spi__default_clock(void *ud);

/* --------------------------------------------- module registry (modules.c) */

/* The registered module of this kind and name, or NULL. */
spi_modentry *spi__module_find(const spi_engine *e, int32_t kind,
                               const char *name, size_t len);
int spi__modules_register_builtins(spi_engine *e);
void spi__modules_free(spi_engine *e);

/* ---------------------------------------------------------------- request */

enum { SPI_REQ_STR_MAX = 15, SPI_REQ_INT_MAX = 10 };

typedef struct spi_msg {
  int32_t role; /* enum spi_role */
  size_t off;   /* into spi_request.msgbuf */
  size_t len;
} spi_msg;

enum spi_role {
  SPI_ROLE_SYSTEM = 0,
  SPI_ROLE_DEVELOPER = 1,
  SPI_ROLE_USER = 2,
  SPI_ROLE_ASSISTANT = 3,
  SPI_ROLE_TOOL = 4,
  SPI_ROLE_COUNT = 5
};

#define SPI_HASH_ROOM 16 /* 16 KiB of prompt at the default block_bytes */

struct spi_request {
  uint32_t magic;
  spi_engine *engine;
  spi_buf str[SPI_REQ_STR_MAX + 1]; /* indexed by enum spi_request_str */
  uint8_t str_set[SPI_REQ_STR_MAX + 1];
  int64_t ival[SPI_REQ_INT_MAX];    /* indexed by enum spi_request_int */
  uint8_t iset[SPI_REQ_INT_MAX];
  int32_t explicit_class;
  int32_t service_tier;
  spi_msg *msgs;
  size_t nmsgs, msgcap;
  spi_buf msgbuf;
  spi_buf metabuf; /* key \0 value \0 pairs */
  size_t nmeta;
  uint32_t *tokens;
  size_t ntokens, tokcap;
  /* Derived on demand, cached until the request changes. */
  int derived_ok;
  spi_buf prompt;        /* canonical prompt text */
  int prompt_escaped;    /* no messages: prompt holds the escaped str[PROMPT] */
  spi_buf sysprompt;     /* system/developer messages joined */
  size_t last_user_off, last_user_len; /* into msgbuf or str[PROMPT] */
  int last_user_in_prompt;
  /* The limits of snapshot lim_seq, for the setters; 0 (no snapshot has
   * it: spi_engine_new installs seq 1) until the first setter reads them. */
  uint64_t lim_seq;
  spi_limits lim;
  /* Routing scratch, grown on demand and kept warm across routes. The
   * hashes start in hash_room, so a first route of a prompt of up to
   * SPI_HASH_ROOM blocks allocates nothing for them. */
  uint64_t *hashes;
  size_t hashcap;
  uint64_t hash_room[SPI_HASH_ROOM];
  spi_candidate *cands;
  size_t candcap;
  /* Where the last classification's answer came from (enum spi_cls_from,
   * dispatch.c), and its plans when a module gave every pressure's. */
  int32_t cls_from;
  spi_degrade_levels cls_levels;
  /* Replicas the route must not use (spi_request_exclude_replica): ids,
   * distinct, resolved to slots when the route starts. */
  uint32_t nexcl;
  uint8_t excl_len[SPI_MAX_EXCLUDED];
  char excl[SPI_MAX_EXCLUDED][SPI_ID_MAX];
  uint64_t excl_slots[SPI_REPLICA_SLOTS / 64]; /* route scratch (route.c) */
  char errmsg[SPI_ERRMSG_CAP];
};

/* node.c */
struct spi_nodes;
int spi__nodes_new(spi_engine *e);
void spi__nodes_free(spi_engine *e);
/* Lock order: nodes, then the registry. Upserts take it to start a replica
 * on a noticed machine or a cooling pool in the right state. */
void spi__nodes_lock(spi_engine *e);
void spi__nodes_unlock(spi_engine *e);
/* How many entries the node table's lookups and scans have examined (node
 * entries, replicas, remembered notice keys): what a notice costs, counted
 * for the tests. */
uint64_t spi__nodes_probes(spi_engine *e);
/* With the nodes lock held: the state a new replica starts in, and its
 * advice and cooldown deadlines. A replica added on a machine untracked
 * or terminated says it was started again: its notices' dedup keys go. */
int32_t spi__nodes_initial(spi_engine *e, const spi_replica_ident *r,
                           int64_t now, int64_t *advised_until,
                           int64_t *cooldown_until);
/* With the nodes lock held: when r's spot pool stops cooling down (0: it
 * is not cooling, or r is not spot). */
int64_t spi__nodes_cooldown(spi_engine *e, const spi_replica_ident *r,
                            int64_t now);
/* With the nodes lock held: the state machine id[0..len) holds its
 * replicas in (ACTIVE for one untracked), as of its last transition. */
int32_t spi__nodes_holds(spi_engine *e, const char *id, size_t len);

struct cJSON;
/* Configure module m with its section sec (modules.c), as configure does
 * for every kind; messages name it as shown. */
int spi__module_configure(spi_engine *e, spi_modentry *m, const struct cJSON *sec,
                          const char *shown, void **out_inst, char *err,
                          size_t errcap);
/* Whether the calling thread is inside a module's configure callback that
 * e's configuration runs (where configuring e again would deadlock). */
int spi__in_module_configure(const spi_engine *e);

/* notice_bus.c: the fleet bus (spotinfer_module.h). The bus's instance is
 * held by the snapshot and by each call in flight (a reference count), so
 * module calls run with no pin held. */
struct spi_fleet_ref;
struct spi_fleet;
struct spi_fleet *spi__fleet_new(const spi_mem *m);
void spi__fleet_free(struct spi_fleet *f, const spi_mem *m);
/* Read modules.fleet_bus and the fleet section; configure the module. */
int spi__fleet_configure(spi_engine *e, const struct cJSON *root,
                         spi_snapshot *s, char *err, size_t errcap);
/* The snapshot's reference, dropped when the snapshot is freed. */
void spi__fleet_ref_drop(spi_engine *e, struct spi_fleet_ref *r);
/* module_load.c: a module of kind (a replay store or a fleet bus) the
 * engine can load by itself: name "redis" loads libspotinfer_redis.so.0
 * and registers its module of that kind. what names the option in
 * messages. The caller holds config_lock. SPI_OK when registered (or
 * already there); SPI_ENOTFOUND for a name that is not loadable (err
 * empty) or a missing library (err says); SPI_EMODULE, SPI_ENOMEM. */
int spi__module_autoload(spi_engine *e, int32_t kind, const char *name,
                         size_t len, const char *what, char *err, size_t cap);

/* node.c and notice_bus.c: what the bus hands back, applied as
 * spi_engine_notice would but not published again and not planned (the
 * caller holds no lock). Returns 1 if it was applied here, 0 if it was
 * a duplicate; a negative status when the engine cannot take it (a later
 * copy is then applied). */
int spi__nodes_apply_remote(spi_engine *e, const spi_notice *n);
int spi__nodes_apply_cooldown(spi_engine *e, const char *type,
                              const char *zone, int64_t until);
/* A notice this engine accepted and the cooldowns it started, for the
 * bus: spi__fleet_queue_notice, called with the nodes lock held (it takes
 * the fleet state's mu, a leaf), copies them into the fleet's ring in the
 * order notices act, when a bus is configured (nothing is allocated; a
 * message is encoded when it is sent, and one that cannot be for want of
 * memory is kept like one whose publish failed), and returns
 * the last one's seq (0: none); spi__fleet_send_queued, called once no
 * lock is held, sends from the ring's head up to that seq unless messages
 * kept for a tick come first (when another thread is sending, that thread
 * sends them before it stops, unless a publish of its fails or, for the
 * tick's flush, its 100 ms run out: then the next tick does). */
typedef struct spi_fleet_cool {
  char type[SPI_ID_MAX];
  char zone[SPI_ID_MAX];
  int64_t until;
} spi_fleet_cool;
uint64_t spi__fleet_queue_notice(spi_engine *e, const spi_notice *n,
                                 int64_t deadline, int64_t issued,
                                 const spi_fleet_cool *cool, size_t ncool);
void spi__fleet_send_queued(spi_engine *e, uint64_t upto);
/* Whether the bus can carry notice n, by the rules every engine's reader
 * applies: node 1..63 bytes, event_id up to 63 and dedup_key up to 159,
 * each NUL-terminated within its array and without control characters
 * (bytes below 0x20), deadline_ns not negative. SPI_OK, or SPI_EINVAL
 * with the field named in err. */
int spi__fleet_notice_check(const spi_notice *n, char *err, size_t errcap);
/* Inside spi_engine_tick: send what failed before, poll, apply. */
int spi__fleet_tick(spi_engine *e);
struct spi_fleet *spi__nodes_fleet(spi_engine *e);

/* router.c */
typedef struct spi_router_prep {
  spi_prefix_index *index;
  size_t index_budget;
  spi_ticket_table *tickets; /* new routing tables (router.c) */
  spi_ledger *ledger;
  spi_metrics *metrics;
} spi_router_prep;
struct cJSON;
int spi__router_read_cfg(const struct cJSON *root, spi_router_cfg *c,
                         char *err, size_t errcap);
int spi__router_prepare(spi_engine *e, const spi_router_cfg *c,
                        spi_router_prep *p, char *err, size_t errcap);
void spi__router_discard(spi_engine *e, spi_router_prep *p);
void spi__router_commit(spi_engine *e, spi_router_prep *p);
/* Before the snapshot is installed, when p replaces the routing tables:
 * seal the old ticket table, so that no route takes a ticket from it from
 * now on and none is lost, and swap the prepared tables in at once (a
 * route that found the old one sealed takes from the new one; only one
 * in the instant between the two answers SPI_EFULL, and a count made in
 * the old tables since spi__router_prepare looked is lost). p then holds
 * the old tables, for spi__router_commit to free. If a route took a ticket
 * since spi__router_prepare looked, the engine has routed and the sizes
 * are fixed: that error, nothing swapped, and the configuration fails as a
 * later one would. */
int spi__router_take_tables(spi_engine *e, const spi_router_cfg *c,
                            spi_router_prep *p, char *err, size_t errcap);
void spi__router_destroy(spi_engine *e);

/* Module calls on a pinned snapshot (dispatch.c); errors go to req. */
int spi__classify_in(spi_request *req, const spi_snapshot *s,
                     spi_request_view *v, int32_t pressure,
                     spi_classification *out);
/* The plan at another pressure for the classification spi__classify_in
 * just made on req: from the built-in's table or the module's levels when
 * the answer came from there, else by asking the module again. */
int spi__classify_plan_at(spi_request *req, const spi_snapshot *s,
                          spi_request_view *v, int32_t pressure,
                          spi_classification *out);
int spi__key_in(spi_request *req, const spi_snapshot *s,
                const spi_request_view *v, spi_cache_key *out);
/* SPI_EBUFSIZE (n_out = blocks needed) records no message: the route grows
 * its scratch and asks again, and formatting one costs more than the
 * hashing on a first route; callers that return it say why themselves. */
int spi__blocks_in(spi_request *req, const spi_snapshot *s,
                   const spi_request_view *v, const spi_cache_key *key,
                   uint64_t *out, size_t cap, size_t *n_out);
/* The built-in cost model's price of a view spi__request_view made with
 * an instance its configure made (cost.c): every field of out but
 * struct_size is written when it returns SPI_OK. */
int spi__cost_price_view(const void *instance, const spi_request_view *v,
                         int32_t pool, spi_price *out);
/* req may be NULL (pricing a finished ticket): errors are then bare. */
int spi__price_in(spi_request *req, const spi_snapshot *s,
                  const spi_request_view *v, int32_t pool, spi_price *out);
/* The key, then the block hashes as spi__blocks_in gives them, for a
 * route: with the built-in key builder in one call, and when they do not
 * fit in cap none is hashed (SPI_EBUFSIZE, *n_out the number), so a route
 * that makes room and asks spi__blocks_in again hashes them once. */
int spi__keys_in(spi_request *req, const spi_snapshot *s,
                 const spi_request_view *v, spi_cache_key *key, uint64_t *out,
                 size_t cap, size_t *n_out);

int spi__request_ok(const spi_request *r);
/* The same test inline (spi__request_ok is it out of line), for a call
 * made on every route. */
static inline int spi__request_ok_inline(const spi_request *r) {
  return r && r->magic == SPI_REQUEST_MAGIC && r->engine &&
         r->engine->magic == SPI_ENGINE_MAGIC;
}
/* Record an error on the request and return status. */
int spi__req_fail(spi_request *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Setters shared by the field-by-field API and the OpenAI body reader. */
spi_limits spi__req_limits(spi_request *r);
void spi__req_clear(spi_request *r);
int spi__req_set_str(spi_request *r, const spi_limits *l, int32_t field,
                     const char *v, size_t len);
int spi__req_set_int(spi_request *r, int32_t field, int64_t v);
/* content is text (escaped on the way in, spi__buf_append_text), at most
 * limits.max_field_bytes, or, with canonical set, a message's canonical
 * content already built (openai.c), whose text the caller has held to that
 * limit. */
int spi__req_add_message(spi_request *r, const spi_limits *l, int32_t role,
                         const char *content, size_t len, int canonical);
int spi__req_set_tokens(spi_request *r, const spi_limits *l,
                        const uint32_t *ids, size_t n);
int spi__req_set_metadata(spi_request *r, const spi_limits *l, const char *k,
                          size_t klen, const char *v, size_t vlen);
int spi__role_from_name(const char *s, size_t len);
const char *spi__role_name(int32_t role);

#endif /* SPI_ENGINE_H */
