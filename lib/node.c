/*
 * node.c - machines (cloud instances), their interruption state machine, and
 * what a notice does to the work on them.
 *
 * A notice is handed in once (spi_engine_notice) and acts at once: the
 * machine's replicas stop taking requests before the call returns, the spot
 * pool it belonged to (instance type and zone) cools down, and every ticket
 * open on it gets a plan - drain it where it is or replay it elsewhere -
 * computed against the real deadline.
 *
 * Node events are rare, so the table is guarded by one mutex (lock order:
 * nodes, then the registry). Routing never takes it: it reads the effects
 * from the replica slots (state, advice and cooldown deadlines) atomically.
 *
 * With a fleet bus (notice_bus.c), a notice accepted here is queued for
 * the bus, with the spot pools it cooled, while the lock is still held,
 * so the bus gets notices in the order they acted here, and sent once the
 * locks are released; what other engines published comes back through
 * tick and acts
 * here the same way, but is neither published again nor planned (the
 * host asks spi_engine_node_plans), and is dropped if this engine applied
 * it already (a second ring, by machine, kind, deadline and event).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "engine.h"
#include "node_table.h"

/* Bounded memory: at most this many machines are tracked. Entries carry
 * information only while a machine is advised, noticed, draining, or
 * terminated with replicas still registered on it; the rest are dropped
 * (see expire and make_room), so a flood of notices for machines that run
 * nothing can never crowd out one that runs replicas.
 *
 * Bounded work: a machine is found through a hash index by id, its
 * replicas through the registry's chains by machine (replica.c), and the
 * entries due to change with time (advice lapsing, deadlines passing,
 * entries that say nothing) through a heap ordered by when: a notice reads
 * what it acts on, never the whole table or the whole replica set. The
 * table is made whole at its first entry and never allocates again. */
#define NODES_MAX SPI_REPLICA_SLOTS
/* When the table is full, this many of the oldest entries for machines that
 * run no replica are dropped at once, so the walk that finds them is paid
 * once per EVICT_BATCH new machines, not once per machine. */
#define EVICT_BATCH 64
#define SEEN_MAX 1024  /* dedup keys remembered (a ring, by machine) */
#define SEEN_CAP 160   /* = sizeof spi_notice.dedup_key */
#define COOL_MAX 64    /* spot pools cooling down at once */
/* Transitions wait in a queue (a ring) for the callback, which runs with no
 * lock held. None is ever dropped: a call makes room before it records
 * (make_room_for), by reporting the oldest a chunk at a time; expire, which
 * may move every tracked machine at once, makes room between entries, and
 * what a call records after its expire (a notice's own moves, and
 * make_room's batch of machines forgotten) is reserved in advance. */
#define EV_QUEUE 256
#define EV_CHUNK 32    /* reported at once, from a copy on the stack */
#define EV_RESERVE (EVICT_BATCH + 8)
_Static_assert(EV_QUEUE >= EV_RESERVE + EV_CHUNK, "a call's moves fit");
/* Notices from the fleet bus already applied here, by machine, kind,
 * deadline, event id and dedup key (a ring): own echoes and repeats act
 * once. A key holds all of them whole (bus_key). */
#define BUS_SEEN_MAX 512
#define BUS_KEY_CAP 360
/* Distinct spot pools one notice's cooldown is published for. */
#define COOL_PUBLISH_MAX 4
#define NIL SPI_NT_NIL

_Static_assert(NODES_MAX < SPI_NT_NIL, "entries are named in 16 bits");

/* An event that holds a machine out of ACTIVE. A withdrawal takes back
 * only the event it names: AWS lists canceled maintenance next to a live
 * spot interruption of the same instance, and that must not put it back
 * to work. Event ids are kept as 64-bit hashes: two events of one machine
 * would have to collide. */
typedef struct held {
  uint64_t id;    /* XXH3 of the cloud's event id when named */
  int64_t until;  /* interruption: its deadline; advice: when it lapses */
  int32_t kind;
  uint8_t named;  /* it had an event id, so a withdrawal can name it */
  uint8_t advice;
} held;
#define HELD_MAX 4

typedef struct node {
  char id[SPI_ID_MAX];
  size_t len;
  int32_t state;
  int64_t deadline_ns;    /* NOTICED: when the machine goes */
  int64_t advised_until;  /* ADVISED: when the advice lapses */
  uint16_t older, newer;  /* the order entries were made; free: newer */
  uint16_t lprev, lnext;  /* the lingering list (see expire) */
  int lingering;
  held held[HELD_MAX];    /* what holds it ADVISED, NOTICED or DRAINING */
  uint8_t nheld;
  /* A state set by hand holds it: no withdrawal puts it back to work or
   * moves its deadline later. */
  uint8_t unlisted;
  /* TERMINATED by maintenance alone (paused): a reboot, freeze or
   * redeploy ends, so the events that held it stay listed and their
   * withdrawal puts the machine back to work (resume). */
  uint8_t paused;
  /* Events past HELD_MAX are let go (hold), and what they may still
   * demand is kept: the earliest deadline of the interruptions let go,
   * the latest lapse of the advice let go (0: none). A withdrawal cannot
   * tell whether it names one of them, so they hold the machine until
   * then. */
  int64_t lost_deadline, lost_advised;
} node;

typedef struct cool {
  char type[SPI_ID_MAX];
  char zone[SPI_ID_MAX];
  int64_t until;
} cool;

typedef struct event {
  char id[SPI_ID_MAX];
  size_t len;
  int32_t from, to;
} event;

struct spi_nodes {
  pthread_mutex_t lock;
  /* The table: NODES_MAX entries, made at the first one (table_ready). */
  node *v;
  uint64_t *vhash;        /* by entry: XXH3 of its id */
  spi_hix ix;             /* id -> entry */
  spi_wheap wake;         /* entries by when they next need a look */
  size_t n, used;         /* live entries; entries ever handed out */
  uint16_t free, oldest, newest, linger;
  /* Lingering entries were last looked at with this replica set. */
  uint64_t linger_version;
  /* make_room found nothing to drop with this set version (+1; 0: no). */
  uint64_t full_version;
  spi_keyring seen;       /* dedup keys handed in */
  spi_keyring bus_seen;   /* bus keys applied */
  struct spi_fleet *fleet; /* its own lock; see notice_bus.c */
  cool cool[COOL_MAX];
  size_t ncool;
  spi_node_fn cb;
  void *cb_ud;
  /* Transitions made under the lock, reported after it is released:
   * nev of them from ev[evhead] on (a ring). */
  event ev[EV_QUEUE];
  size_t evhead, nev;
  uint64_t probes;        /* entries looked at (spi__nodes_probes) */
};

/* ------------------------------------------------------- the state table */

/* ALLOWED[from][to]: the only transitions there are. A withdrawn notice or
 * lapsed advice returns a machine to ACTIVE, or to ADVISED when the
 * withdrawn notice leaves only advice holding it; a machine can be
 * forgotten (REMOVED) from any state; only a machine terminated by
 * maintenance alone comes back from TERMINATED, to ACTIVE, when that
 * maintenance is withdrawn (resume). */
static const uint8_t ALLOWED[7][7] = {
    /*            -  ACT ADV NOT DRN TRM REM */
    /* -   */ {0, 0, 0, 0, 0, 0, 0},
    /* ACT */ {0, 0, 1, 1, 1, 1, 1},
    /* ADV */ {0, 1, 0, 1, 1, 1, 1},
    /* NOT */ {0, 1, 1, 0, 1, 1, 1},
    /* DRN */ {0, 0, 0, 0, 0, 1, 1},
    /* TRM */ {0, 1, 0, 0, 0, 0, 1},
    /* REM */ {0, 0, 0, 0, 0, 0, 0},
};

/* BY_HAND[from][to]: what spi_node_set_state accepts. The same, but for
 * NOTICED -> ADVISED and TERMINATED -> ACTIVE: those are a withdrawal's
 * moves. The first is made when advice
 * handed in still holds the machine and says until when. By hand, the
 * interruption that noticed it would still hold it, unlisted, while the
 * advice lapsed and put it back to work. */
static const uint8_t BY_HAND[7][7] = {
    /*            -  ACT ADV NOT DRN TRM REM */
    /* -   */ {0, 0, 0, 0, 0, 0, 0},
    /* ACT */ {0, 0, 1, 1, 1, 1, 1},
    /* ADV */ {0, 1, 0, 1, 1, 1, 1},
    /* NOT */ {0, 1, 0, 0, 1, 1, 1},
    /* DRN */ {0, 0, 0, 0, 0, 1, 1},
    /* TRM */ {0, 0, 0, 0, 0, 0, 1},
    /* REM */ {0, 0, 0, 0, 0, 0, 0},
};

/* -------------------------------------------------------------- the table */

int spi__nodes_new(spi_engine *e) {
  struct spi_nodes *t = spi__calloc(&e->mem, 1, sizeof *t);
  if (!t) return SPI_ENOMEM;
  int ok = spi__keyring_init(&t->seen, &e->mem, SEEN_MAX, SEEN_CAP,
                             &t->probes) == SPI_OK;
  ok = spi__keyring_init(&t->bus_seen, &e->mem, BUS_SEEN_MAX, BUS_KEY_CAP,
                         &t->probes) == SPI_OK && ok;
  t->fleet = spi__fleet_new(&e->mem);
  if (!ok || !t->fleet || pthread_mutex_init(&t->lock, NULL) != 0) {
    spi__fleet_free(t->fleet, &e->mem);
    spi__keyring_free(&t->bus_seen, &e->mem);
    spi__keyring_free(&t->seen, &e->mem);
    spi__free(&e->mem, t);
    return SPI_ENOMEM;
  }
  t->free = t->oldest = t->newest = t->linger = NIL;
  e->nodes = t;
  return SPI_OK;
}

static void table_free(struct spi_nodes *t, const spi_mem *m) {
  spi__hix_free(&t->ix, m);
  spi__wheap_free(&t->wake, m);
  spi__free(m, t->vhash);
  spi__free(m, t->v);
  t->v = NULL;
  t->vhash = NULL;
}

void spi__nodes_free(spi_engine *e) {
  struct spi_nodes *t = e->nodes;
  if (!t) return;
  pthread_mutex_destroy(&t->lock);
  table_free(t, &e->mem);
  spi__keyring_free(&t->seen, &e->mem);
  spi__keyring_free(&t->bus_seen, &e->mem);
  spi__fleet_free(t->fleet, &e->mem);
  spi__free(&e->mem, t);
  e->nodes = NULL;
}

struct spi_fleet *spi__nodes_fleet(spi_engine *e) { return e->nodes->fleet; }

static int ev_room_locks(spi_engine *e, size_t k, int both);

/* For adding a replica (replica.c): room for what spi__nodes_initial may
 * record, which waits in the queue for the next call to report. */
void spi__nodes_lock(spi_engine *e) {
  pthread_mutex_lock(&e->nodes->lock);
  ev_room_locks(e, 4, 0);
}
void spi__nodes_unlock(spi_engine *e) { pthread_mutex_unlock(&e->nodes->lock); }

uint64_t spi__nodes_probes(spi_engine *e) {
  pthread_mutex_lock(&e->nodes->lock);
  pthread_mutex_lock(&e->registry.lock);
  uint64_t p = e->nodes->probes + e->registry.link_steps;
  pthread_mutex_unlock(&e->registry.lock);
  pthread_mutex_unlock(&e->nodes->lock);
  return p;
}

/* Make the table at its first entry: SPI_OK or SPI_ENOMEM. */
static int table_ready(spi_engine *e) {
  struct spi_nodes *t = e->nodes;
  if (t->v) return SPI_OK;
  t->v = spi__alloc(&e->mem, NODES_MAX * sizeof *t->v);
  t->vhash = spi__alloc(&e->mem, NODES_MAX * sizeof *t->vhash);
  if (!t->v || !t->vhash ||
      spi__hix_init(&t->ix, &e->mem, NODES_MAX, t->vhash, &t->probes) !=
          SPI_OK ||
      spi__wheap_init(&t->wake, &e->mem, NODES_MAX, &t->probes) != SPI_OK) {
    table_free(t, &e->mem);
    return SPI_ENOMEM;
  }
  t->n = t->used = 0;
  t->free = t->oldest = t->newest = t->linger = NIL;
  return SPI_OK;
}

static uint32_t at_of(const struct spi_nodes *t, const node *n) {
  return (uint32_t)(n - t->v);
}

static node *find(struct spi_nodes *t, const char *id, size_t len) {
  if (!t->v) return NULL;
  uint64_t hv = XXH3_64bits(id, len);
  size_t cur = 0;
  for (uint32_t i; (i = spi__hix_next(&t->ix, hv, &cur)) != NIL;)
    if (t->v[i].len == len && memcmp(t->v[i].id, id, len) == 0)
      return &t->v[i];
  return NULL;
}

/* When n next needs a look: lapsing advice, a passing deadline, or at
 * once for an entry that says nothing (ACTIVE); a lingering entry waits
 * for its replicas to go (expire). */
static int64_t wake_of(const node *n) {
  switch (n->state) {
  case SPI_NODE_ADVISED:
    return n->advised_until;
  case SPI_NODE_NOTICED:
  case SPI_NODE_DRAINING:
    return n->deadline_ns ? n->deadline_ns : INT64_MAX;
  case SPI_NODE_TERMINATED:
    return n->lingering ? INT64_MAX : n->deadline_ns;
  default:
    return INT64_MIN;
  }
}

/* n's state or times changed: file it again by when. */
static void requeue(struct spi_nodes *t, node *n) {
  spi__wheap_set(&t->wake, at_of(t, n), wake_of(n));
}

static void linger_link(struct spi_nodes *t, node *n) {
  uint16_t i = (uint16_t)at_of(t, n);
  n->lingering = 1;
  n->lprev = NIL;
  n->lnext = t->linger;
  if (t->linger != NIL) t->v[t->linger].lprev = i;
  t->linger = i;
}

static void linger_unlink(struct spi_nodes *t, node *n) {
  if (!n->lingering) return;
  n->lingering = 0;
  if (n->lprev != NIL) t->v[n->lprev].lnext = n->lnext;
  else t->linger = n->lnext;
  if (n->lnext != NIL) t->v[n->lnext].lprev = n->lprev;
}

static int make_room(spi_engine *e);
static void drop(spi_engine *e, node *n);
static int move(spi_engine *e, node *n, int32_t to);
static void expire(spi_engine *e, int64_t now);
static void due(spi_engine *e, node *n, int64_t now);
static int ev_room(spi_engine *e, size_t k);
static int maintenance_only(const node *n);

/* The node, created ACTIVE if new; NULL when the table is full of machines
 * that run replicas or memory runs out (callers report SPI_EFULL /
 * SPI_ENOMEM). Entries keep the order they were made, oldest first.
 * Both locks held. */
static node *get(spi_engine *e, const char *id, size_t len, int *rc) {
  struct spi_nodes *t = e->nodes;
  node *n = find(t, id, len);
  if (n) return n;
  if ((*rc = table_ready(e)) != SPI_OK) return NULL;
  if (t->n == NODES_MAX && !make_room(e)) {
    *rc = SPI_EFULL;
    return NULL;
  }
  uint16_t i = t->free != NIL ? t->free : (uint16_t)t->used++;
  n = &t->v[i];
  if (t->free == i) t->free = n->newer;
  memset(n, 0, sizeof *n);
  memcpy(n->id, id, len);
  n->len = len;
  n->state = SPI_NODE_ACTIVE;
  n->older = t->newest;
  n->newer = n->lprev = n->lnext = NIL;
  if (t->newest != NIL) t->v[t->newest].newer = i;
  else t->oldest = i;
  t->newest = i;
  t->vhash[i] = XXH3_64bits(id, len);
  spi__hix_insert(&t->ix, i);
  t->n++;
  t->full_version = 0;
  requeue(t, n);
  return n;
}

/* Drop n from the table. The dedup keys of its notices stay (the ring
 * ages them out): clouds go on serving an event past its deadline, and a
 * machine dropped once it terminated, or to make room, must not be
 * noticed again at every poll. They go when the machine is started
 * again (spi__nodes_initial, advice keys excepted), put back to work (back_to_work) or removed
 * by hand (set_by_hand). */
static void forget(struct spi_nodes *t, node *n) {
  uint16_t i = (uint16_t)at_of(t, n);
  spi__hix_remove(&t->ix, i);
  spi__wheap_remove(&t->wake, i);
  linger_unlink(t, n);
  if (n->older != NIL) t->v[n->older].newer = n->newer;
  else t->oldest = n->newer;
  if (n->newer != NIL) t->v[n->newer].older = n->older;
  else t->newest = n->older;
  n->newer = t->free;
  t->free = i;
  t->n--;
  t->full_version = 0;
}

/* ----------------------------------------------- effects on the replicas */

/* n's replicas in the current set, one at a time (*cur from
 * SPI_CHAIN_START). Registry lock held. */
static const spi_replica_ident *next_on(spi_engine *e,
                                        const spi_replica_set *set,
                                        const node *n, uint32_t *cur) {
  return spi__registry_next_on_node(&e->registry, set, n->id, n->len, cur);
}

/* Whether any registered replica runs on n. Registry lock held. */
static int runs_replicas(spi_engine *e, const node *n) {
  const spi_replica_set *set = atomic_load(&e->registry.set);
  uint32_t cur = SPI_CHAIN_START;
  return set && next_on(e, set, n, &cur) != NULL;
}

/* The state a machine's replicas are in while it is in node_state. A
 * machine forgotten (REMOVED) is what one never heard of is: ACTIVE. */
static int32_t replica_state_for(int32_t node_state) {
  return node_state == SPI_NODE_ACTIVE || node_state == SPI_NODE_ADVISED ||
                 node_state == SPI_NODE_REMOVED
             ? SPI_REPLICA_ACTIVE
         : node_state == SPI_NODE_DRAINING ? SPI_REPLICA_DRAINING
                                           : SPI_REPLICA_NOTICED;
}

/* Make the replicas of n match its state. Registry lock held. */
static void apply_to_replicas(spi_engine *e, const node *n) {
  const spi_replica_set *set = atomic_load(&e->registry.set);
  uint32_t cur = SPI_CHAIN_START;
  for (const spi_replica_ident *r; set && (r = next_on(e, set, n, &cur));) {
    spi_replica_slot *s = &e->registry.slots[r->slot];
    spi__replica_slot_set_state(s, replica_state_for(n->state));
    atomic_store(&s->advised_until_ns,
                 n->state == SPI_NODE_ADVISED ? n->advised_until : 0);
    spi__replica_touch(&e->registry, r->slot);
  }
}

/* Cool the spot pool (type, zone) down until `until` (a later end wins)
 * and stamp its replicas. Returns 1 if that moved its end. Both locks
 * held. */
static int cool_one(spi_engine *e, const char *type, const char *zone,
                    int64_t until) {
  struct spi_nodes *t = e->nodes;
  cool *c = NULL;
  for (size_t k = 0; k < t->ncool && !c; k++)
    if (!strcmp(t->cool[k].type, type) && !strcmp(t->cool[k].zone, zone))
      c = &t->cool[k];
  if (!c) {
    /* Full: reuse the entry that lapses first. */
    size_t at = t->ncool < COOL_MAX ? t->ncool++ : 0;
    for (size_t k = 0; t->ncool == COOL_MAX && k < COOL_MAX; k++)
      if (t->cool[k].until < t->cool[at].until) at = k;
    c = &t->cool[at];
    snprintf(c->type, sizeof c->type, "%s", type);
    snprintf(c->zone, sizeof c->zone, "%s", zone);
    c->until = 0;
  }
  if (until <= c->until) return 0;
  c->until = until;
  const spi_replica_set *set = atomic_load(&e->registry.set);
  uint32_t cur = SPI_CHAIN_START;
  for (const spi_replica_ident *o;
       set && (o = spi__registry_next_in_pool(&e->registry, set, c->type,
                                              c->zone, &cur));) {
    atomic_store(&e->registry.slots[o->slot].cooldown_until_ns, c->until);
    spi__replica_touch(&e->registry, o->slot);
  }
  return 1;
}

/* Cool down the spot pools (type, zone) of n's replicas; the distinct
 * pools go to out[0..*nout) (at most COOL_PUBLISH_MAX) for the bus. Both
 * locks held. */
static void cool_pools(spi_engine *e, const node *n, int64_t until,
                       spi_fleet_cool *out, size_t *nout) {
  const spi_replica_set *set = atomic_load(&e->registry.set);
  uint32_t cur = SPI_CHAIN_START;
  for (const spi_replica_ident *r; set && (r = next_on(e, set, n, &cur));) {
    if (r->pool != SPI_POOL_SPOT) continue;
    cool_one(e, r->instance_type, r->zone, until);
    size_t k = 0;
    while (k < *nout && (strcmp(out[k].type, r->instance_type) ||
                         strcmp(out[k].zone, r->zone)))
      k++;
    if (k < *nout || *nout == COOL_PUBLISH_MAX) continue;
    snprintf(out[k].type, sizeof out[k].type, "%s", r->instance_type);
    snprintf(out[k].zone, sizeof out[k].zone, "%s", r->zone);
    out[k].until = until;
    (*nout)++;
  }
}

int64_t spi__nodes_cooldown(spi_engine *e, const spi_replica_ident *r,
                            int64_t now) {
  const struct spi_nodes *t = e->nodes;
  int64_t until = 0;
  for (size_t k = 0; r->pool == SPI_POOL_SPOT && k < t->ncool; k++)
    if (t->cool[k].until > now && !strcmp(t->cool[k].type, r->instance_type) &&
        !strcmp(t->cool[k].zone, r->zone))
      until = t->cool[k].until;
  return until;
}

int32_t spi__nodes_holds(spi_engine *e, const char *id, size_t len) {
  const node *n = find(e->nodes, id, len);
  return n ? replica_state_for(n->state) : SPI_REPLICA_ACTIVE;
}

int32_t spi__nodes_initial(spi_engine *e, const spi_replica_ident *r,
                           int64_t now, int64_t *advised_until,
                           int64_t *cooldown_until) {
  struct spi_nodes *t = e->nodes;
  *advised_until = 0;
  *cooldown_until = spi__nodes_cooldown(e, r, now);
  node *n = find(t, r->node, r->node_len);
  /* A deadline passed with no tick since: the machine is TERMINATED now,
   * so a replica added there is its restart, not a replica noticed. Only
   * this machine is brought up to date (at most two transitions, room for
   * which spi__nodes_lock made); the rest wait for the next call. */
  if (n && wake_of(n) <= now) {
    due(e, n, now);
    n = find(t, r->node, r->node_len);
  }
  /* A replica added on a machine the table does not hold, or holds as
   * terminated past its deadline: the machine was started again (an
   * instance stopped and started, a VM restarted after a preemption,
   * under the same id), and its next interruption may have a key seen
   * before. The keys of advice stay, as in back_to_work: advice the cloud
   * goes on serving does not advise the machine again. A terminated entry
   * is forgotten (REMOVED, reported when the next notice or tick releases
   * the locks), so the machine starts ACTIVE and its notices act again.
   * That is a new life of the machine for every replica registered there,
   * as when the host forgets it by hand: those from before take requests
   * again, instead of staying NOTICED on a machine that reads ACTIVE. */
  if (n && n->state == SPI_NODE_TERMINATED && n->deadline_ns <= now) {
    move(e, n, SPI_NODE_REMOVED);
    n = NULL;
  }
  if (r->node_len && !n)
    spi__keyring_forget(&t->seen, XXH3_64bits(r->node, r->node_len), 1);
  if (!n) return SPI_REPLICA_ACTIVE;
  if (n->state == SPI_NODE_ADVISED) *advised_until = n->advised_until;
  return replica_state_for(n->state);
}

/* ------------------------------------------------------------ transitions */

/* Count a transition and queue it for the callback; from == to reports a
 * moved deadline (set_deadline), which the metric does not count. Nodes
 * lock held. */
static void record(spi_engine *e, const node *n, int32_t from, int32_t to) {
  struct spi_nodes *t = e->nodes;
  unsigned pin; /* configure may replace metrics nothing was written to */
  spi__snap_acquire(e, &pin);
  if (from != to)
    spi__metrics_node_transition(atomic_load(&e->metrics), from, to);
  spi__snap_release(e, pin);
  /* Room was made before (ev_room); were the queue full, this would be a
   * bug, and writing past it worse. */
  if (t->nev < EV_QUEUE) {
    event *ev = &t->ev[(t->evhead + t->nev++) % EV_QUEUE];
    memcpy(ev->id, n->id, n->len);
    ev->len = n->len;
    ev->from = from;
    ev->to = to;
  }
}

/* Move n to state if the table allows it; records the event. Nodes and
 * registry locks held. Returns 1 if it moved. */
static int move(spi_engine *e, node *n, int32_t to) {
  if (!ALLOWED[n->state][to]) return 0;
  int32_t from = n->state;
  n->state = to;
  if (to != SPI_NODE_ADVISED) n->advised_until = 0;
  if (to == SPI_NODE_ACTIVE || to == SPI_NODE_ADVISED) n->deadline_ns = 0;
  if (to == SPI_NODE_ACTIVE ||
      (to == SPI_NODE_TERMINATED && !n->paused)) {
    /* nothing holds it, or nothing comes back */
    n->nheld = n->unlisted = n->paused = 0;
    n->lost_deadline = n->lost_advised = 0;
  }
  apply_to_replicas(e, n);
  record(e, n, from, to);
  if (to == SPI_NODE_REMOVED)
    forget(e->nodes, n);
  else
    requeue(e->nodes, n);
  return 1;
}

/* Whether n says anything a lookup would not: an ACTIVE entry never does
 * (an unknown machine is ACTIVE), and a machine terminated past its
 * deadline matters only while replicas are still registered on it. */
static int worth_keeping(spi_engine *e, const node *n, int64_t now) {
  if (n->state == SPI_NODE_ACTIVE) return 0;
  if (n->state == SPI_NODE_TERMINATED && n->deadline_ns <= now)
    return runs_replicas(e, n);
  return 1;
}

/* Drop n, which says nothing any more (a terminated one as a move to
 * REMOVED). Both locks held. */
static void drop(spi_engine *e, node *n) {
  if (n->state != SPI_NODE_ACTIVE) record(e, n, n->state, SPI_NODE_REMOVED);
  forget(e->nodes, n);
}

/* What time does to n, which is due: its advice lapses or its deadline
 * passes, and an entry that says nothing any more is dropped; a machine
 * terminated with replicas still on it lingers, looked at again only when
 * the replica set has changed since (drop_lingering). Records at most two
 * transitions. Both locks held. */
static void due(spi_engine *e, node *n, int64_t now) {
  struct spi_nodes *t = e->nodes;
  t->probes++;
  if (n->state == SPI_NODE_ADVISED && n->advised_until <= now)
    move(e, n, SPI_NODE_ACTIVE);
  else if ((n->state == SPI_NODE_NOTICED || n->state == SPI_NODE_DRAINING) &&
           n->deadline_ns && n->deadline_ns <= now) {
    n->paused = (uint8_t)maintenance_only(n);
    move(e, n, SPI_NODE_TERMINATED);
  }
  if (!worth_keeping(e, n, now)) {
    drop(e, n);
    return;
  }
  if (n->state == SPI_NODE_TERMINATED && n->deadline_ns <= now)
    linger_link(t, n);
  requeue(t, n); /* due later now, or never while it lingers */
}

/* Drop the lingering machines whose replicas are gone, once per replica
 * set, so that look is paid by the set's writer, not by every notice.
 * When the queue fills, the locks are let go to report (ev_room) and the
 * walk starts again from the head, as the list may have changed. Both
 * locks held. */
static void drop_lingering(spi_engine *e) {
  struct spi_nodes *t = e->nodes;
  const spi_replica_set *set = atomic_load(&e->registry.set);
  if (t->linger == NIL || !set || set->version == t->linger_version) return;
  t->linger_version = set->version;
  for (uint16_t i = t->linger, next; i != NIL; i = next) {
    if (ev_room(e, 1) && (i = t->linger) == NIL) return;
    node *n = &t->v[i];
    next = n->lnext;
    t->probes++;
    if (!runs_replicas(e, n)) drop(e, n);
  }
}

/* The entries due by now, earliest first: lapsed advice and passed
 * deadlines; then entries that say nothing any more are dropped. Room is
 * made as it goes, and at the end for what the caller records next
 * (EV_RESERVE), so the locks may be let go and taken again here: callers
 * expire first, before they look at anything. Both locks held. */
static void expire(spi_engine *e, int64_t now) {
  struct spi_nodes *t = e->nodes;
  if (t->v) {
    for (;;) {
      ev_room(e, 2); /* may let the locks go: the heap is read after */
      uint32_t i = spi__wheap_due(&t->wake, now);
      if (i == NIL) break;
      due(e, &t->v[i], now);
    }
    drop_lingering(e);
  }
  ev_room(e, EV_RESERVE);
}

/* The table is full: forget the oldest EVICT_BATCH machines that run no
 * replica (their notices can change no routing now; a replica added there
 * later starts ACTIVE). Returns 1 if any were dropped; 0 when every entry
 * is a machine with replicas, which is remembered until the replica set
 * changes. Both locks held. */
static int make_room(spi_engine *e) {
  struct spi_nodes *t = e->nodes;
  const spi_replica_set *set = atomic_load(&e->registry.set);
  uint64_t version = set ? set->version + 1 : 1;
  if (t->full_version == version) return 0;
  size_t dropped = 0;
  for (uint16_t i = t->oldest, next; i != NIL && dropped < EVICT_BATCH;
       i = next) {
    node *n = &t->v[i];
    next = n->newer;
    t->probes++;
    if (runs_replicas(e, n)) continue;
    record(e, n, n->state, SPI_NODE_REMOVED);
    forget(t, n);
    dropped++;
  }
  if (!dropped) t->full_version = version;
  return dropped > 0;
}

static void lock_all(spi_engine *e) {
  pthread_mutex_lock(&e->nodes->lock);
  pthread_mutex_lock(&e->registry.lock);
}

/* Take up to EV_CHUNK of the oldest transitions waiting off the queue,
 * release the nodes lock (the registry's too if both) and report them: no
 * lock is held while the callback runs. Returns how many it reported. */
static size_t report_chunk(spi_engine *e, int both) {
  struct spi_nodes *t = e->nodes;
  event ev[EV_CHUNK];
  size_t nev = t->nev < EV_CHUNK ? t->nev : EV_CHUNK;
  for (size_t i = 0; i < nev; i++) ev[i] = t->ev[(t->evhead + i) % EV_QUEUE];
  t->evhead = (t->evhead + nev) % EV_QUEUE;
  t->nev -= nev;
  spi_node_fn cb = t->cb;
  void *ud = t->cb_ud;
  if (both) pthread_mutex_unlock(&e->registry.lock);
  pthread_mutex_unlock(&t->lock);
  for (size_t i = 0; cb && i < nev; i++)
    cb(ud, ev[i].id, ev[i].len, ev[i].from, ev[i].to);
  return nev;
}

/* Room in the queue for k more transitions. When there is not, the oldest
 * are reported until half the queue (or k) is free: the locks (nodes, and
 * the registry's if both) are let go meanwhile, so a caller makes room
 * only where nothing is half done. Returns 1 if the locks were let go. */
static int ev_room_locks(spi_engine *e, size_t k, int both) {
  struct spi_nodes *t = e->nodes;
  if (EV_QUEUE - t->nev >= k) return 0;
  size_t want = k > EV_QUEUE / 2 ? k : EV_QUEUE / 2;
  while (EV_QUEUE - t->nev < want) {
    report_chunk(e, both);
    pthread_mutex_lock(&t->lock);
    if (both) pthread_mutex_lock(&e->registry.lock);
  }
  return 1;
}

static int ev_room(spi_engine *e, size_t k) { return ev_room_locks(e, k, 1); }

/* Release both locks and report every transition waiting: this call's,
 * and any a call that could not report them left (adding a replica). */
static void unlock_all_and_report(spi_engine *e) {
  pthread_mutex_unlock(&e->registry.lock);
  while (report_chunk(e, 0) == EV_CHUNK) pthread_mutex_lock(&e->nodes->lock);
}

/* ------------------------------------------------------------------ plans */

/* The plan for one pinned open ticket k (id) if it runs on one of n's
 * replicas (their slots are set in mine): writes it to *p unless p is NULL
 * (no room) and returns 1; else 0. */
static size_t plan_one(spi_engine *e, const spi_router_cfg *c,
                       const spi_ticket *k, uint64_t id, const uint64_t *mine,
                       const spi_replica_set *set, double deadline_s,
                       double margin_s, spi_ticket_plan *p) {
  uint32_t slot = k->slot;
  if (slot >= SPI_REPLICA_SLOTS ||
      !(mine[slot / 64] & (UINT64_C(1) << (slot % 64))))
    return 0;
  uint16_t pos = set->pos_of_slot[slot];
  if (pos >= set->n ||
      atomic_load(&e->registry.slots[slot].incarnation) != k->incarnation)
    return 0;
  const spi_replica_ident *r = &set->r[pos];
  uint64_t streamed = atomic_load(&k->tokens_streamed);
  uint64_t expected =
      k->expected_output > streamed ? k->expected_output : streamed + 1;
  double rate = spi__decode_rate(r, c);
  double remaining_s = (double)(expected - streamed) / rate;
  double progress = (double)streamed / (double)expected;
  int drain = remaining_s <= deadline_s - margin_s ||
              (k->klass == SPI_CLASS_GOLD && progress >= c->gold_drain_progress);
  /* Re-check: the ticket may have finished while we looked. */
  if (atomic_load(&k->id) != id) return 0;
  if (p) {
    size_t size = p->struct_size; /* the caller's element size, checked */
    memset(p, 0, size);
    p->struct_size = size;
    p->ticket = id;
    p->action = drain ? SPI_ACTION_DRAIN : SPI_ACTION_REPLAY;
    p->klass = k->klass;
    p->remaining_s = remaining_s;
    p->deadline_s = deadline_s;
    p->progress = progress;
    memcpy(p->replica_id, r->id, r->id_len + 1);
  }
  return 1;
}

/* Element i of the caller's plan array, whose element size is stride; it
 * gets that size in struct_size before plan_one fills it. */
static spi_ticket_plan *plan_at(spi_ticket_plan *plans, size_t stride,
                                size_t i) {
  spi_ticket_plan *p = (spi_ticket_plan *)(void *)((char *)plans + i * stride);
  p->struct_size = stride;
  return p;
}

/* For each open ticket on n's replicas: drain or replay. Both locks held.
 * Pinned: configure may replace a ticket table that never handed out a
 * ticket, and a remove retires the replica set, each once no pinned
 * reader is left. */
static size_t plan_pinned(spi_engine *e, const node *n,
                          const spi_router_cfg *c, int64_t now,
                          spi_ticket_plan *plans, size_t cap, size_t stride) {
  spi_ticket_table *tt = atomic_load(&e->tickets);
  const spi_replica_set *set = atomic_load(&e->registry.set);
  if (!tt || !set) return 0;
  /* A machine noticed or drained by hand has no deadline until a notice
   * gives it one: planned against the window a notice without a deadline
   * gets (act). */
  int64_t deadline =
      n->deadline_ns ? n->deadline_ns : now + c->default_window_ms * 1000000;
  double deadline_s = (double)(deadline - now) / 1e9;
  double margin_s = (double)c->drain_margin_ms / 1000.0;
  /* The machine's replicas' slots, once: each ticket is matched by its
   * slot, and only records ever handed out are scanned. */
  uint64_t mine[SPI_REPLICA_SLOTS / 64];
  memset(mine, 0, sizeof mine);
  size_t nmine = 0;
  uint32_t cur = SPI_CHAIN_START;
  for (const spi_replica_ident *r; (r = next_on(e, set, n, &cur)); nmine++)
    mine[r->slot / 64] |= UINT64_C(1) << (r->slot % 64);
  /* A route that read one of them ACTIVE before its state was stored and
   * has not published its ticket yet: the scan must see that ticket
   * (routing.h, spi__slot_open_begin). */
  if (nmine) spi__slot_opens_wait(&e->rcu, &e->registry, mine);
  size_t found = 0, total = spi__tickets_high(tt);
  for (size_t i = 0; nmine && i < total; i++) {
    /* Pinned: a route may otherwise reset the record while it is read. */
    uint64_t id = spi__ticket_pin(tt, i);
    if (!id) continue;
    spi_ticket *k = spi__ticket_at(tt, i);
    found += plan_one(e, c, k, id, mine, set, deadline_s, margin_s,
                      found < cap ? plan_at(plans, stride, found) : NULL);
    spi__ticket_unpin(tt, i);
  }
  return found;
}

static size_t plan(spi_engine *e, const node *n, const spi_router_cfg *c,
                   int64_t now, spi_ticket_plan *plans, size_t cap,
                   size_t stride) {
  unsigned pin;
  spi__snap_acquire(e, &pin);
  size_t found = plan_pinned(e, n, c, now, plans, cap, stride);
  spi__snap_release(e, pin);
  return found;
}


/* ------------------------------------------------------------- public API */

/* Whether notice is advice: rebalance, or maintenance without a
 * deadline (a live migration). */
static int is_advice(const spi_notice *notice) {
  return notice->kind == SPI_NOTICE_REBALANCE ||
         (notice->kind == SPI_NOTICE_MAINTENANCE && notice->deadline_ns == 0);
}

/* Whether the notice repeats one handed in for its machine (nlen bytes of
 * its id): its dedup key was (a key is a machine's, so one a host built
 * reused for another machine is another notice), and it does not bring
 * that key's deadline forward. Keys hold no time, since some pollers move
 * it on every poll, so the key remembers the deadline it last acted with:
 * an interruption served again with an earlier one (an AWS scheduled event
 * moved to an earlier NotBefore under its EventId) acts again and plans
 * against it, while that deadline is still to come. A later one is a
 * repeat (the earliest deadline holds, interrupt), and so is any once the
 * deadline remembered has passed: an event served past its deadline does
 * not notice a dropped machine again. Nodes lock held. */
static int seen_before(struct spi_nodes *t, const spi_notice *notice,
                       size_t nlen, int64_t now) {
  int64_t when = 0;
  if (!spi__keyring_has(&t->seen, notice->dedup_key,
                        XXH3_64bits(notice->node, nlen), &when))
    return 0;
  int earlier = notice->active && !is_advice(notice) && notice->deadline_ns &&
                notice->deadline_ns < when && now < when;
  return !earlier;
}

/* Remember a dedup key handed in for the machine id[0..len), with the
 * deadline an interruption acted with (0: none to bring forward); the
 * keys of advice are marked, as a machine put back to work keeps them. A
 * key remembered already (an interruption brought forward) keeps its
 * place in the ring. */
static void remember(struct spi_nodes *t, const spi_notice *notice,
                     size_t len, int64_t deadline) {
  uint64_t owner = XXH3_64bits(notice->node, len);
  int advice = is_advice(notice);
  int64_t when = notice->active && !advice ? deadline : 0;
  if (!spi__keyring_set_when(&t->seen, notice->dedup_key, owner, when))
    spi__keyring_add(&t->seen, notice->dedup_key, owner,
                     notice->active && advice, when);
}

/* A notice from the bus acted on a machine whose dedup key this engine's
 * poller handed in: it brought the key's deadline forward (seen_before),
 * so the key keeps the new deadline, or a later copy, and a copy past the
 * new deadline, would be judged against the old one and act again (a
 * dropped machine noticed again, a later deadline published). It keeps it
 * 1 ns later, so the poller's own copy of the same deadline still acts
 * once and gets its plans, as it does for a key it has not handed in; a
 * key not handed in here is not remembered. Nodes lock held. */
static void remember_remote(struct spi_nodes *t, const spi_notice *notice,
                            size_t nlen, int64_t deadline) {
  if (notice->dedup_key[0] && notice->active && !is_advice(notice) &&
      deadline > 0 && deadline < INT64_MAX)
    spi__keyring_set_when(&t->seen, notice->dedup_key,
                          XXH3_64bits(notice->node, nlen), deadline + 1);
}

/* The bus's dedup key of a notice: the machine, what, when and which
 * event. Two events of one machine may share kind and deadline, and an
 * empty dedup key is allowed, so the event id tells them apart. The
 * publication (issued_ns) is not in it: engines whose pollers hear the
 * same cloud event each publish it at their own time, and those copies
 * must be one notice, or a copy read after the event's withdrawal would
 * notice the machine again. The text fields are split by 0x1f, which none
 * of them may hold (spi__fleet_notice_check), so no two notices share a
 * key. */
_Static_assert(BUS_KEY_CAP >= 56 + 2 * SPI_ID_MAX +
                                  sizeof(((spi_notice *)0)->dedup_key),
               "a bus key is held whole: 3 numbers, 3 texts, 5 marks");
static void bus_key(char *buf, const spi_notice *n, int64_t deadline) {
  snprintf(buf, BUS_KEY_CAP, "%d|%d|%lld|%.63s\x1f%.63s\x1f%.159s",
           (int)n->kind, n->active ? 1 : 0, (long long)deadline, n->node,
           n->event_id, n->dedup_key);
}

/* Whether the bus key was applied here. Nodes lock held. */
static int bus_seen_before(struct spi_nodes *t, const char *key,
                           const spi_notice *notice, size_t nlen) {
  return spi__keyring_has(&t->bus_seen, key, XXH3_64bits(notice->node, nlen),
                          NULL);
}

static size_t bounded_len(const char *s, size_t cap) {
  const char *z = memchr(s, '\0', cap);
  return z ? (size_t)(z - s) : cap;
}

/* One notice acting here: its input and what it did. */
typedef struct notice_run {
  const spi_router_cfg *c;
  int64_t now;
  int plan;                /* 0: the bus's, plans are asked for later */
  spi_ticket_plan *plans;
  size_t cap, stride, found;
  int64_t deadline;        /* what the bus is told */
  spi_fleet_cool cool[COOL_PUBLISH_MAX];
  size_t ncool;
} notice_run;

/* ------------------------------------------------- what holds a machine */

/* Let go of event h, which n cannot list: what it may still demand is
 * kept as a bound (node.lost_deadline, node.lost_advised). */
static void let_go(node *n, const held *h) {
  if (h->advice) {
    if (h->until > n->lost_advised) n->lost_advised = h->until;
  } else if (!n->lost_deadline || h->until < n->lost_deadline) {
    n->lost_deadline = h->until;
  }
}

/* Note that the event of notice holds n, as advice lapsing at until or as
 * an interruption due then. The same event again (its id, or its kind when
 * it has none) keeps the earlier deadline or the later lapse. Beyond
 * HELD_MAX events, the one due last (of those listed and this one) is let
 * go: the machine's deadline is the earliest, so the events that decide
 * it stay listed, and a withdrawal of one of them can move the deadline
 * as far as the bound of those let go. */
static void hold(node *n, const spi_notice *notice, int advice, int64_t until) {
  uint8_t named = notice->event_id[0] != '\0';
  uint64_t id = named ? XXH3_64bits(notice->event_id, strlen(notice->event_id))
                      : 0;
  for (size_t i = 0; i < n->nheld; i++) {
    held *h = &n->held[i];
    if (h->named != named || h->advice != advice ||
        (named ? h->id != id : h->kind != notice->kind))
      continue;
    if (advice ? until > h->until : until < h->until) h->until = until;
    return;
  }
  held h = {id, until, notice->kind, named, (uint8_t)(advice != 0)};
  if (n->nheld < HELD_MAX) {
    n->held[n->nheld++] = h;
    return;
  }
  size_t last = HELD_MAX; /* h itself */
  for (size_t i = 0; i < HELD_MAX; i++)
    if (n->held[i].until > (last == HELD_MAX ? h.until : n->held[last].until))
      last = i;
  if (last == HELD_MAX) {
    let_go(n, &h);
  } else {
    let_go(n, &n->held[last]);
    n->held[last] = h;
  }
}

/* Take back what the event event_id holds n by. Returns 1 if it held it. */
static int release(node *n, const char *event_id) {
  uint64_t id = XXH3_64bits(event_id, strlen(event_id));
  size_t k = 0;
  for (size_t i = 0; i < n->nheld; i++)
    if (!n->held[i].named || n->held[i].id != id) n->held[k++] = n->held[i];
  int found = k < n->nheld;
  n->nheld = (uint8_t)k;
  return found;
}

/* n's deadline moves: it is filed again by when, and the host hears of it
 * as a NOTICED -> NOTICED (or DRAINING -> DRAINING) transition, because
 * the plans made against the old deadline may be wrong now and the
 * callback is how a host learns of notices from the bus. 0 takes the
 * deadline away (a draining machine no interruption holds any more): its
 * plans are then made against router.default_window_ms. Both locks
 * held. */
static void set_deadline(spi_engine *e, node *n, int64_t deadline) {
  if (deadline == n->deadline_ns ||
      (n->state != SPI_NODE_NOTICED && n->state != SPI_NODE_DRAINING))
    return;
  n->deadline_ns = deadline;
  requeue(e->nodes, n);
  record(e, n, n->state, n->state);
}

/* Back to work after a withdrawal or by hand: the keys of the notices
 * that held it go too, so the next interruption of this machine acts even
 * if its key is one seen before. The keys of advice stay, lapsed or not:
 * a rebalance recommendation the cloud goes on serving does not advise
 * the machine again. Both locks held. */
static void back_to_work(spi_engine *e, node *n) {
  struct spi_nodes *t = e->nodes;
  if (move(e, n, SPI_NODE_ACTIVE))
    spi__keyring_forget(&t->seen, t->vhash[at_of(t, n)], 1);
}

/* Whether only named maintenance holds n (advice aside): a reboot, freeze
 * or redeploy the cloud can say is over, and nothing set by hand or let
 * go, whose end no withdrawal can name. */
static int maintenance_only(const node *n) {
  if (n->unlisted || n->lost_deadline) return 0;
  size_t k = 0;
  for (size_t i = 0; i < n->nheld; i++) {
    const held *h = &n->held[i];
    if (h->advice) continue;
    if (!h->named || h->kind != SPI_NOTICE_MAINTENANCE) return 0;
    k++;
  }
  return k > 0;
}

/* A withdrawal let go of a maintenance that holds n, which it terminated:
 * once no interruption holds it any more the machine is back (TERMINATED
 * -> ACTIVE), its replicas with it. Both locks held. */
static void resume(spi_engine *e, node *n) {
  for (size_t i = 0; i < n->nheld; i++)
    if (!n->held[i].advice) return;
  linger_unlink(e->nodes, n);
  back_to_work(e, n);
}

/* After a withdrawal, what still holds n decides its state: the earliest
 * deadline of the interruptions left (those let go included); else the
 * advice left (NOTICED -> ADVISED); else back to work. A draining machine
 * stays draining (the host drained it, and only the host ends that), but
 * with no interruption left it has no deadline either: it must not be
 * terminated at a time the cloud took back. Both locks held. */
static void settle(spi_engine *e, node *n, int64_t now) {
  if (n->lost_advised <= now) n->lost_advised = 0; /* lapsed */
  int64_t deadline = n->lost_deadline ? n->lost_deadline : INT64_MAX;
  int64_t advised = n->lost_advised;
  size_t k = 0;
  for (size_t i = 0; i < n->nheld; i++) {
    held h = n->held[i];
    if (h.advice && h.until <= now) continue; /* lapsed */
    if (h.advice && h.until > advised) advised = h.until;
    if (!h.advice && h.until < deadline) deadline = h.until;
    n->held[k++] = h;
  }
  n->nheld = (uint8_t)k;
  if (n->unlisted) return;
  if (deadline != INT64_MAX) {
    set_deadline(e, n, deadline);
  } else if (n->state == SPI_NODE_DRAINING) {
    set_deadline(e, n, 0);
  } else if (advised) {
    n->advised_until = advised;
    if (n->state == SPI_NODE_ADVISED) {
      apply_to_replicas(e, n);
      requeue(e->nodes, n);
    } else {
      move(e, n, SPI_NODE_ADVISED);
    }
  } else {
    back_to_work(e, n);
  }
}

/* ------------------------------------------------------------- a notice */

/* Advice: no new long requests until it lapses. Held by a noticed machine
 * too, for when its notice is withdrawn. Both locks held. */
static void advise(spi_engine *e, node *n, const spi_notice *notice,
                   const notice_run *run) {
  int64_t until = run->now + run->c->advised_ttl_ms * 1000000;
  if (n->state != SPI_NODE_ACTIVE && n->state != SPI_NODE_ADVISED &&
      n->state != SPI_NODE_NOTICED)
    return;
  hold(n, notice, 1, until);
  if (n->state == SPI_NODE_NOTICED) return;
  n->advised_until = until;
  if (n->state == SPI_NODE_ADVISED) {
    apply_to_replicas(e, n); /* extend the advice */
    requeue(e->nodes, n);
  } else {
    move(e, n, SPI_NODE_ADVISED);
  }
}

/* An interruption: NOTICED, or an earlier deadline for a machine that is
 * already going. Both locks held. */
static void interrupt(spi_engine *e, node *n, const spi_notice *notice,
                      int64_t deadline) {
  if (n->state == SPI_NODE_TERMINATED) {
    /* Paused: another maintenance holds it too; anything else ends it for
     * good, as a termination does. */
    if (!n->paused) return;
    hold(n, notice, 0, deadline);
    if (!(n->paused = (uint8_t)maintenance_only(n))) {
      n->nheld = 0;
      n->lost_deadline = n->lost_advised = 0;
    }
    return;
  }
  hold(n, notice, 0, deadline);
  if (n->state == SPI_NODE_ACTIVE || n->state == SPI_NODE_ADVISED) {
    n->deadline_ns = deadline;
    move(e, n, SPI_NODE_NOTICED);
  } else if (!n->deadline_ns || deadline < n->deadline_ns) {
    set_deadline(e, n, deadline); /* never later: the earliest one holds */
  }
}

/* What a notice does to n. Both locks held. */
static int act(spi_engine *e, node *n, const spi_notice *notice,
               notice_run *run) {
  run->deadline = notice->deadline_ns;
  if (!notice->active) {
    /* A withdrawn event (completed, canceled) lets go of the machine only
     * if it is the one that holds it; one without an id names none. */
    if (!notice->event_id[0] || n->state == SPI_NODE_ACTIVE) return SPI_OK;
    if (n->state != SPI_NODE_TERMINATED) {
      if (release(n, notice->event_id)) settle(e, n, run->now);
    } else if (n->paused && release(n, notice->event_id)) {
      resume(e, n);
    }
    return SPI_OK;
  }
  if (is_advice(notice)) {
    advise(e, n, notice, run);
    return SPI_OK;
  }
  run->deadline = notice->deadline_ns
                      ? notice->deadline_ns
                      : run->now + run->c->default_window_ms * 1000000;
  interrupt(e, n, notice, run->deadline);
  if (n->state != SPI_NODE_NOTICED && n->state != SPI_NODE_DRAINING)
    return SPI_OK;
  cool_pools(e, n, run->now + run->c->pool_cooldown_ms * 1000000, run->cool,
             &run->ncool);
  if (!run->plan) return SPI_OK;
  run->found = plan(e, n, run->c, run->now, run->plans, run->cap, run->stride);
  if (run->found > run->cap)
    return spi__engine_fail(e, SPI_EBUFSIZE,
                            "notice: %zu open tickets, room for %zu plans",
                            run->found, run->cap);
  return SPI_OK;
}

/* What a new notice does to its machine; its dedup key is remembered
 * once the machine is tracked, if remember_key. Both locks held. */
static int notice_act(spi_engine *e, const spi_notice *notice, size_t nlen,
                      int remember_key, notice_run *run) {
  int rc = SPI_OK;
  node *n = get(e, notice->node, nlen, &rc);
  if (!n)
    return spi__engine_fail(e, rc, "notice: %s tracking machine %.*s",
                            rc == SPI_EFULL ? "too many machines"
                                            : "out of memory",
                            SPI_CUT(notice->node, 63));
  rc = act(e, n, notice, run);
  /* After acting: a withdrawal that puts the machine back to work forgets
   * the keys of what held it, but polling the withdrawal again must still
   * do nothing. */
  if (remember_key) remember(e->nodes, notice, nlen, run->deadline);
  return rc;
}

/* The element size of a caller's plan array (plans[0].struct_size), or 0
 * when it is not acceptable. */
static size_t plan_stride(const spi_ticket_plan *plans, size_t cap) {
  size_t stride = cap ? plans[0].struct_size : sizeof *plans;
  if (stride < sizeof *plans || stride % _Alignof(spi_ticket_plan) != 0 ||
      (cap && stride > SIZE_MAX / cap))
    return 0;
  return stride;
}

/* A copy of the settings, not a pin: the transition callback runs with
 * no lock and no pin held (at the end, and while expire makes room in the
 * queue) and may call back into the engine: upsert or remove replicas,
 * which wait for pins to end, hand in notices, ask for plans. */
static spi_router_cfg router_cfg(spi_engine *e) {
  unsigned pin;
  spi_router_cfg cfg = spi__snap_acquire(e, &pin)->router;
  spi__snap_release(e, pin);
  return cfg;
}

int spi_engine_notice(spi_engine *engine, const spi_notice *notice,
                      spi_ticket_plan *plans, size_t cap, size_t *n_out) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!notice || notice->struct_size < sizeof *notice || !n_out ||
      (!plans && cap) || notice->kind < SPI_NOTICE_NONE ||
      notice->kind > SPI_NOTICE_PREEMPT)
    return spi__engine_fail(engine, SPI_EINVAL,
                            "notice: NULL, bad struct_size or unknown kind");
  /* The array's element size: this version's struct or a newer, larger
   * one (its tail is zeroed), aligned as the struct is. */
  size_t stride = plan_stride(plans, cap);
  if (!stride)
    return spi__engine_fail(engine, SPI_EINVAL,
                            "notice: plans[0].struct_size %zu is below "
                            "sizeof(spi_ticket_plan) %zu or misaligned",
                            plans[0].struct_size, sizeof *plans);
  /* What every other engine would refuse from the bus is refused here
   * too: a notice acts on all of them or on none. */
  char why[SPI_ERRMSG_CAP];
  if (spi__fleet_notice_check(notice, why, sizeof why) != SPI_OK)
    return spi__engine_fail(engine, SPI_EINVAL, "notice: %s", why);
  size_t nlen = strlen(notice->node), klen = strlen(notice->dedup_key);
  *n_out = 0;
  if (notice->kind == SPI_NOTICE_NONE) return SPI_OK;
  spi_router_cfg cfg = router_cfg(engine);
  notice_run run;
  memset(&run, 0, sizeof run);
  run.c = &cfg;
  run.now = spi__engine_now(engine);
  run.plan = 1;
  run.plans = plans;
  run.cap = cap;
  run.stride = stride;
  struct spi_nodes *t = engine->nodes;
  int rc = SPI_OK;
  uint64_t queued = 0;
  lock_all(engine);
  expire(engine, run.now);
  if (!klen || !seen_before(t, notice, nlen, run.now)) {
    rc = notice_act(engine, notice, nlen, klen > 0, &run);
    *n_out = run.found;
    if (rc == SPI_OK || rc == SPI_EBUFSIZE) {
      char key[BUS_KEY_CAP];
      bus_key(key, notice, run.deadline);
      /* its own echo skipped */
      spi__keyring_add(&t->bus_seen, key, XXH3_64bits(notice->node, nlen), 0,
                       0);
      /* Queued under the lock: a withdrawal acting once it is free (on
       * another thread, while this one runs the callback) goes on the bus
       * after this notice. */
      queued = spi__fleet_queue_notice(engine, notice, run.deadline,
                                       run.now, run.cool, run.ncool);
    }
  }
  unlock_all_and_report(engine);
  /* Local first, then the fleet: a bus that fails loses nothing here. */
  spi__fleet_send_queued(engine, queued);
  return rc;
}

int spi__nodes_apply_remote(spi_engine *e, const spi_notice *notice) {
  size_t nlen = bounded_len(notice->node, sizeof notice->node);
  spi_router_cfg cfg = router_cfg(e);
  notice_run run;
  memset(&run, 0, sizeof run);
  run.c = &cfg;
  run.now = spi__engine_now(e);
  struct spi_nodes *t = e->nodes;
  char key[BUS_KEY_CAP];
  bus_key(key, notice, notice->deadline_ns);
  int rc = 0;
  lock_all(e);
  expire(e, run.now);
  /* Handed in here already (the same event from this engine's own
   * poller) or applied from the bus before: nothing new. The dedup key is
   * not remembered, so this engine's own poller still gets its plans (one
   * it remembers keeps the deadline brought forward: remember_remote); the
   * bus key only once the notice has acted, so a copy from another engine
   * is applied after one that could not be. */
  if (!bus_seen_before(t, key, notice, nlen) &&
      !(notice->dedup_key[0] && seen_before(t, notice, nlen, run.now))) {
    rc = notice_act(e, notice, nlen, 0, &run);
    if (rc == SPI_OK) {
      remember_remote(t, notice, nlen, run.deadline);
      spi__keyring_add(&t->bus_seen, key, XXH3_64bits(notice->node, nlen), 0,
                       0);
      rc = 1;
    }
  }
  unlock_all_and_report(e);
  return rc;
}

int spi__nodes_apply_cooldown(spi_engine *e, const char *type,
                              const char *zone, int64_t until) {
  int64_t now = spi__engine_now(e);
  lock_all(e);
  expire(e, now);
  int moved = until > now && cool_one(e, type, zone, until);
  unlock_all_and_report(e);
  return moved;
}

int spi_engine_node_plans(spi_engine *engine, const char *id, size_t len,
                          spi_ticket_plan *plans, size_t cap, size_t *n_out) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!id || len == 0 || len >= SPI_ID_MAX || !n_out || (!plans && cap))
    return spi__engine_fail(engine, SPI_EINVAL,
                            "node plans: id must be 1..63 bytes, n_out not "
                            "NULL, plans not NULL with a cap");
  size_t stride = plan_stride(plans, cap);
  if (!stride)
    return spi__engine_fail(engine, SPI_EINVAL,
                            "node plans: plans[0].struct_size %zu is below "
                            "sizeof(spi_ticket_plan) %zu or misaligned",
                            plans[0].struct_size, sizeof *plans);
  *n_out = 0;
  spi_router_cfg cfg = router_cfg(engine);
  int64_t now = spi__engine_now(engine);
  int rc = SPI_OK;
  lock_all(engine);
  expire(engine, now);
  const node *n = find(engine->nodes, id, len);
  if (n && (n->state == SPI_NODE_NOTICED || n->state == SPI_NODE_DRAINING)) {
    *n_out = plan(engine, n, &cfg, now, plans, cap, stride);
    if (*n_out > cap)
      rc = spi__engine_fail(engine, SPI_EBUFSIZE,
                            "node plans: %zu open tickets, room for %zu",
                            *n_out, cap);
  }
  unlock_all_and_report(engine);
  return rc;
}

/* The host moves n to state (in BY_HAND). Its reason is its own: no
 * withdrawal undoes a machine noticed or advised by hand. Advice by hand
 * lapses as advice handed in does, advised_ttl_ms from now, and holds the
 * machine ADVISED until then whatever is withdrawn. Both locks held. */
static void set_by_hand(spi_engine *e, node *n, int32_t state,
                        int64_t advised_until) {
  if (state == SPI_NODE_ACTIVE) {
    back_to_work(e, n);
    return;
  }
  if (state == SPI_NODE_ADVISED) n->advised_until = advised_until;
  if (state == SPI_NODE_REMOVED) /* forgotten, with what it was told */
    spi__keyring_forget(&e->nodes->seen, e->nodes->vhash[at_of(e->nodes, n)],
                        0);
  move(e, n, state);
  /* Noticed by hand: no withdrawal puts it back. Advised by hand: advice
   * no withdrawal can name, held until it lapses as one let go is
   * (settle), so a notice withdrawn later leaves it ADVISED, not NOTICED. */
  if (state == SPI_NODE_NOTICED) n->unlisted = 1;
  if (state == SPI_NODE_ADVISED && advised_until > n->lost_advised)
    n->lost_advised = advised_until;
}

int spi_node_set_state(spi_engine *engine, const char *id, size_t len,
                       int32_t state) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!id || len == 0 || len >= SPI_ID_MAX)
    return spi__engine_fail(engine, SPI_EINVAL, "node: id must be 1..63 bytes");
  /* As a replica's node and a notice's: no machine could have this one. */
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)id[i] < 0x20 || id[i] == 0x7f)
      return spi__engine_fail(engine, SPI_EINVAL,
                              "node: control character at byte %zu", i);
  if (state < SPI_NODE_ACTIVE || state > SPI_NODE_REMOVED)
    return spi__engine_fail(engine, SPI_EINVAL, "node: state %d is not valid",
                            (int)state);
  int rc = SPI_OK;
  spi_router_cfg cfg = router_cfg(engine);
  int64_t now = spi__engine_now(engine);
  lock_all(engine);
  expire(engine, now);
  node *n = find(engine->nodes, id, len);
  if (!n && state == SPI_NODE_ACTIVE) goto out; /* unknown is ACTIVE */
  if (!n) n = get(engine, id, len, &rc);
  if (!n) {
    rc = spi__engine_fail(engine, rc, "node %.*s: cannot track it", (int)len, id);
  } else if (n->state != state && !BY_HAND[n->state][state]) {
    rc = spi__engine_fail(engine, SPI_EINVAL,
                          "node %.*s: %s -> %s is not a legal transition",
                          (int)len, id, spi_node_state_name(n->state),
                          spi_node_state_name(state));
  } else if (n->state != state) {
    set_by_hand(engine, n, state, now + cfg.advised_ttl_ms * 1000000);
  }
out:
  unlock_all_and_report(engine);
  return rc;
}

int spi_node_get_state(spi_engine *engine, const char *id, size_t len,
                       int32_t *out_state) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!id || len == 0 || len >= SPI_ID_MAX || !out_state)
    return spi__engine_fail(engine, SPI_EINVAL,
                            "node: id must be 1..63 bytes, out not NULL");
  int64_t now = spi__engine_now(engine);
  lock_all(engine);
  expire(engine, now);
  const node *n = find(engine->nodes, id, len);
  *out_state = n ? n->state : SPI_NODE_ACTIVE;
  unlock_all_and_report(engine);
  return SPI_OK;
}

int spi_engine_tick(spi_engine *engine) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  int64_t now = spi__engine_now(engine);
  lock_all(engine);
  expire(engine, now);
  unlock_all_and_report(engine);
  /* Then what the other engines learnt (no lock held: see notice_bus.c). */
  return spi__fleet_tick(engine);
}

int spi_engine_on_node_transition(spi_engine *engine, spi_node_fn fn,
                                  void *user_data) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  pthread_mutex_lock(&engine->nodes->lock);
  engine->nodes->cb = fn;
  engine->nodes->cb_ud = fn ? user_data : NULL;
  pthread_mutex_unlock(&engine->nodes->lock);
  return SPI_OK;
}
