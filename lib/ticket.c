/*
 * ticket.c - the ticket table: a fixed number of ticket records, allocated
 * once, handed out and taken back without a lock.
 *
 * Records are made ready on first use, not when the table is made: a table
 * of the default 16,384 records is ~9.4 MB, and writing every record up
 * front cost each spi_engine_new that much memory in touched pages (and its
 * time), even when the configuration replaced the table right after. A
 * record never handed out is never written or read: takes hand out the
 * never-used records in index order (the counter fresh) once every free
 * stack is empty, and the taker initialises the record, then sets its
 * ready flag (release). Every reader that reaches a record by index or id (pins,
 * lookups) first reads the flag (acquire) and treats a record that is not
 * ready as free: a never-issued id is not found. Only the header and the
 * one-byte flags are zeroed at creation.
 *
 * Free tickets sit on Treiber stacks, one a stripe (TICKET_STRIPES). A
 * thread takes from its own stripe (spi__thread_no), and a ticket goes back
 * to the stripe of the thread that took it: threads that share an engine
 * then each take and give back on a head and records of their own, where
 * one stack had every route and finish of every thread write one line and
 * reuse records the other thread had just written. A thread whose stripe
 * is empty takes from another's, and only when every stripe is empty a
 * never-used record (so the records ever handed out stay as few as the
 * most ever open at once). Each head is one 64-bit atomic holding a 32-bit
 * tag in the high half and (index + 1) of the top ticket in the low half
 * (0 = empty); a free record's `below` is (index + 1) of the record below
 * it. Every successful push and pop bumps the head's tag, so a pop that
 * read head and top's below before another thread popped top, popped what
 * lay below it and pushed top back, on this stripe or another (the ABA
 * case), fails its CAS instead of installing a stale below. below is
 * atomic because a slow pop may still read it while the new owner of top
 * pushes it back and rewrites it; the value it reads is then thrown away
 * by the failed CAS.
 *
 * A ticket id is (generation << 24) | (index + 1). The generation is per
 * ticket record and is bumped at every publish, so an id is never issued
 * twice (until the 40-bit generation wraps, after 2^40 uses of one record)
 * and an id kept after its ticket finished never names the record's next
 * use. The low 24 bits are never 0 and the capacity is at most 2^22, so no
 * id is 0 and lookup can reject any 64-bit value by range and equality.
 *
 * Ownership of a record: the thread that took it fills and publishes it;
 * after publish, the record's plain fields are read-only until one finisher
 * wins spi__ticket_claim (CAS of id from the ticket's id to 0) and releases
 * it. Push (release order) and pop (acquire order) carry the record's
 * contents from one owner to the next; publish (release) and lookup
 * (acquire) carry them to readers of an open ticket.
 *
 * A reader that is not the finisher (a notice's plan scan) may still be
 * reading a record when its ticket finishes. It pins the record first
 * (readers + 1, then checks id); release clears id and then waits for the
 * record's pins to end before pushing it back. Both sides use sequentially
 * consistent order, so either the reader sees id 0 and skips the record, or
 * release sees its pin and waits: a record is never reset under a reader.
 * The wait is on the finish path, never on the route's take.
 */
#include <sched.h>
#include <stdalign.h>
#include <stddef.h>
#include <string.h>

#include "routing.h"

#define TICKET_INDEX_BITS 24
#define TICKET_INDEX_MASK ((UINT64_C(1) << TICKET_INDEX_BITS) - 1)
#define TICKET_GEN_MASK ((UINT64_C(1) << (64 - TICKET_INDEX_BITS)) - 1)
#define TICKET_MAX_CAPACITY (UINT64_C(1) << 22)
#define HEAD_INDEX_MASK UINT64_C(0xffffffff)
#define TICKET_STRIPES 8

/* One stripe's free stack. Each head has a cache line of its own: a head
 * is written by every take and release on its stripe, and 64 bytes apart
 * no two share a line whatever the allocation's alignment (padding, not
 * alignas: the allocator hook only promises malloc's alignment). */
typedef struct free_stack {
  _Atomic uint64_t head;
  char pad[64 - sizeof(uint64_t)];
} free_stack;

struct spi_ticket_table {
  size_t capacity;
  spi_ticket *t;     /* capacity records; written only from first use */
  atomic_uchar *ready; /* per record: 1 once initialised (zeroed with the
                        * header) */
  /* The heads, each on a line of its own and off the lines of the
   * read-mostly fields above and of those below. There is no count of
   * open tickets to keep beside them: one more locked instruction on every
   * route and finish, for a figure only a check needs (spi__tickets_open
   * counts them). */
  char pad0[64];
  free_stack free[TICKET_STRIPES];
  /* One past the highest record ever handed out: never-used records are
   * handed out in index order (fresh) and only once every free stack is
   * empty, so scans stop here, not at the capacity. Written rarely (only
   * when a new high is reached). */
  atomic_size_t high;
  /* Records [fresh, capacity) have never been handed out (capacity once
   * the table is sealed). */
  atomic_size_t fresh;
};

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

int spi__tickets_new(const spi_mem *m, size_t capacity,
                     spi_ticket_table **out) {
  if (!m || !out) return SPI_EINVAL;
  *out = NULL;
  if (capacity == 0 || (uint64_t)capacity > TICKET_MAX_CAPACITY)
    return SPI_ERANGE;
  /* One allocation: header, ready flags, records. Only the header and the
   * flags are written here. Each record has lines of its own (spi_ticket
   * is a whole number of lines, and the records start on a line: the
   * allocation has room to move them there), and a record's generation,
   * stripe and free-stack link are in it, not in arrays beside it: a use
   * of a record then writes only lines no record of another thread's
   * stripe is on. */
  _Static_assert(sizeof(spi_ticket) % 64 == 0, "records a line apart");
  size_t off_ready = align_up(sizeof(spi_ticket_table), alignof(max_align_t));
  size_t off_t = off_ready + capacity;
  size_t total = off_t + 63 + capacity * sizeof(spi_ticket);
  unsigned char *p = spi__alloc(m, total);
  if (!p) return SPI_ENOMEM;
  spi_ticket_table *tt = (spi_ticket_table *)(void *)p;
  memset(p, 0, off_t);
  tt->capacity = capacity;
  tt->ready = (atomic_uchar *)(void *)(p + off_ready);
  uintptr_t at = (uintptr_t)(p + off_t); /* the first line boundary on */
  tt->t = (spi_ticket *)(void *)(p + off_t + (64 - at % 64) % 64);
  for (int s = 0; s < TICKET_STRIPES; s++)
    atomic_init(&tt->free[s].head, 0ull); /* tag 0, stack empty */
  atomic_init(&tt->high, (size_t)0);
  atomic_init(&tt->fresh, (size_t)0);
  *out = tt;
  return SPI_OK;
}

/* Whether record i was ever initialised: if so, its fields may be read. */
static int ready(const spi_ticket_table *t, size_t i) {
  return atomic_load_explicit(&t->ready[i], memory_order_acquire) != 0;
}

void spi__tickets_free(const spi_mem *m, spi_ticket_table *t) {
  if (t) spi__free(m, t);
}

size_t spi__tickets_capacity(const spi_ticket_table *t) {
  return t ? t->capacity : 0;
}

size_t spi__tickets_free_in(const spi_ticket_table *t, unsigned stripe) {
  if (!t || stripe >= TICKET_STRIPES) return 0;
  size_t high = atomic_load_explicit(&t->high, memory_order_acquire);
  size_t n = 0;
  uint64_t top = atomic_load_explicit(&t->free[stripe].head,
                                      memory_order_acquire) &
                 HEAD_INDEX_MASK;
  while (top != 0 && n < high) {
    n++;
    top = atomic_load_explicit(&t->t[top - 1].below, memory_order_relaxed);
  }
  return n;
}

/* The records ever handed out less those back on the free stacks. Exact
 * while no take or release runs meanwhile; a bounded walk otherwise. */
size_t spi__tickets_open(const spi_ticket_table *t) {
  if (!t) return 0;
  size_t high = atomic_load_explicit(&t->high, memory_order_acquire);
  size_t free_n = 0;
  for (unsigned s = 0; s < TICKET_STRIPES; s++)
    free_n += spi__tickets_free_in(t, s);
  return free_n < high ? high - free_n : 0;
}

static void ticket_reset(spi_ticket *k) {
  k->slot = k->gen = 0;
  k->pool = k->klass = k->model_tier = k->probe = 0;
  k->start_ns = 0;
  atomic_store_explicit(&k->first_token_ns, 0ll, memory_order_relaxed);
  atomic_store_explicit(&k->tokens_streamed, 0ull, memory_order_relaxed);
  k->prompt_tokens_est = 0;
  k->n_hashes = k->weight = 0;
  k->prefill_tokens = k->ahead_tokens = 0;
  k->slowdown = 0;
  k->incarnation = 0;
  k->expected_output = 0;
  k->replay_since_ns = 0;
  /* The hashes are read only up to n_hashes and the texts to their NUL:
   * the texts are made empty, not cleared whole (route.c's ticket_fill
   * writes all three before it publishes the record). */
  k->tenant[0] = '\0';
  k->model[0] = '\0';
}

/* The record at index top - 1 was just handed out: raise the high mark. */
static void opened(spi_ticket_table *t, uint64_t top) {
  size_t hi = atomic_load_explicit(&t->high, memory_order_relaxed);
  while (hi < top && !atomic_compare_exchange_weak_explicit(
                         &t->high, &hi, (size_t)top, memory_order_relaxed,
                         memory_order_relaxed)) {
  }
}

/* Every free stack is empty: hand out the next never-used record, made
 * ready here (no reader touches it before its flag is set). NULL when none
 * is left. */
static spi_ticket *take_fresh(spi_ticket_table *t, unsigned stripe) {
  size_t f = atomic_load_explicit(&t->fresh, memory_order_relaxed);
  do {
    if (f >= t->capacity) return NULL;
  } while (!atomic_compare_exchange_weak_explicit(
      &t->fresh, &f, f + 1, memory_order_relaxed, memory_order_relaxed));
  spi_ticket *k = &t->t[f];
  memset(k, 0, sizeof *k);
  atomic_init(&k->id, 0ull);
  atomic_init(&k->readers, 0u);
  atomic_init(&k->first_token_ns, 0ll);
  atomic_init(&k->tokens_streamed, 0ull);
  atomic_init(&k->below, 0u);
  k->stripe = stripe; /* k->uses 0, from the memset */
  atomic_store_explicit(&t->ready[f], 1, memory_order_release);
  opened(t, (uint64_t)f + 1);
  return k;
}

/* Pop the top of stripe s's free stack: its (index + 1), or 0 when the
 * stack is empty. */
static uint64_t pop(spi_ticket_table *t, unsigned s) {
  _Atomic uint64_t *head = &t->free[s].head;
  uint64_t old = atomic_load_explicit(head, memory_order_acquire);
  for (;;) {
    uint64_t top = old & HEAD_INDEX_MASK;
    if (top == 0) return 0;
    uint64_t below =
        atomic_load_explicit(&t->t[top - 1].below, memory_order_relaxed);
    uint64_t want = (((old >> 32) + 1) << 32) | below;
    if (atomic_compare_exchange_weak_explicit(
            head, &old, want, memory_order_acquire, memory_order_acquire))
      return top;
  }
}

spi_ticket *spi__ticket_take(spi_ticket_table *t) {
  return spi__ticket_take_for(t, spi__thread_no());
}

spi_ticket *spi__ticket_take_for(spi_ticket_table *t, uint32_t thread_no) {
  if (!t) return NULL;
  unsigned mine = thread_no % TICKET_STRIPES;
  for (unsigned j = 0; j < TICKET_STRIPES; j++) {
    uint64_t top = pop(t, (mine + j) % TICKET_STRIPES);
    if (!top) continue;
    opened(t, top);
    spi_ticket *k = &t->t[top - 1];
    k->stripe = mine;
    ticket_reset(k);
    return k;
  }
  return take_fresh(t, mine);
}

uint64_t spi__ticket_publish(spi_ticket_table *t, spi_ticket *k) {
  size_t i = (size_t)(k - t->t);
  uint64_t g = (k->uses + 1) & TICKET_GEN_MASK;
  k->uses = g;
  uint64_t id = (g << TICKET_INDEX_BITS) | (uint64_t)(i + 1);
  atomic_store_explicit(&k->id, id, memory_order_release);
  return id;
}

int spi__tickets_seal(spi_ticket_table *t) {
  /* No record was ever handed out only if fresh is still 0 (and then none
   * was ever released either, so the stack is empty): moving it to the
   * capacity leaves nothing to take. */
  size_t none = 0;
  return t && atomic_compare_exchange_strong(&t->fresh, &none, t->capacity);
}

size_t spi__tickets_high(spi_ticket_table *t) {
  return t ? atomic_load(&t->high) : 0;
}

uint64_t spi__ticket_pin(spi_ticket_table *t, size_t i) {
  if (!t || i >= t->capacity || !ready(t, i)) return 0;
  spi_ticket *k = &t->t[i];
  atomic_fetch_add_explicit(&k->readers, 1u, memory_order_seq_cst);
  uint64_t id = atomic_load_explicit(&k->id, memory_order_seq_cst);
  if (!id) atomic_fetch_sub_explicit(&k->readers, 1u, memory_order_release);
  return id;
}

void spi__ticket_unpin(spi_ticket_table *t, size_t i) {
  if (t && i < t->capacity)
    atomic_fetch_sub_explicit(&t->t[i].readers, 1u, memory_order_release);
}

spi_ticket *spi__ticket_pin_id(spi_ticket_table *t, uint64_t id) {
  if (!t || id == 0) return NULL;
  uint64_t low = id & TICKET_INDEX_MASK;
  if (low == 0 || low > t->capacity) return NULL;
  /* The id is checked after the pin is taken: a record reused since names
   * another id, so a matching id means these are this ticket's fields. */
  uint64_t got = spi__ticket_pin(t, (size_t)(low - 1));
  if (got == id) return &t->t[low - 1];
  if (got) spi__ticket_unpin(t, (size_t)(low - 1)); /* 0: nothing pinned */
  return NULL;
}

void spi__ticket_unpin_record(spi_ticket_table *t, spi_ticket *k) {
  if (t && k) spi__ticket_unpin(t, (size_t)(k - t->t));
}

spi_ticket *spi__ticket_at(spi_ticket_table *t, size_t i) {
  return t && i < t->capacity && ready(t, i) ? &t->t[i] : NULL;
}

spi_ticket *spi__ticket_lookup(spi_ticket_table *t, uint64_t id) {
  if (!t || id == 0) return NULL;
  uint64_t low = id & TICKET_INDEX_MASK;
  if (low == 0 || low > t->capacity || !ready(t, (size_t)(low - 1)))
    return NULL;
  spi_ticket *k = &t->t[low - 1];
  if (atomic_load_explicit(&k->id, memory_order_acquire) != id) return NULL;
  return k;
}

/* t is unused: the claim is on the record alone, but callers name the
 * table as for every other record operation. */
int spi__ticket_claim(spi_ticket_table *t, spi_ticket *k, uint64_t id) {
  (void)t;
  if (!k || id == 0) return 0;
  unsigned long long expect = id;
  return atomic_compare_exchange_strong_explicit(
      &k->id, &expect, 0ull, memory_order_seq_cst, memory_order_relaxed);
}

void spi__ticket_release(spi_ticket_table *t, spi_ticket *k) {
  if (!t || !k) return;
  size_t i = (size_t)(k - t->t);
  /* A record released without being claimed (taken, never published) must
   * not stay findable. A claimed one's id is 0 already, set by the claim's
   * sequentially consistent exchange, which orders it before the load of
   * the pins below as this store would (a locked instruction a finish no
   * longer makes twice). */
  if (atomic_load_explicit(&k->id, memory_order_relaxed) != 0)
    atomic_store_explicit(&k->id, 0ull, memory_order_seq_cst);
  /* A scan that pinned it before id went to 0 is still reading it. */
  while (atomic_load_explicit(&k->readers, memory_order_seq_cst) != 0)
    sched_yield();
  _Atomic uint64_t *head = &t->free[k->stripe % TICKET_STRIPES].head;
  uint64_t old = atomic_load_explicit(head, memory_order_relaxed);
  for (;;) {
    atomic_store_explicit(&k->below, (unsigned)(old & HEAD_INDEX_MASK),
                          memory_order_relaxed);
    uint64_t want = (((old >> 32) + 1) << 32) | (uint64_t)(i + 1);
    if (atomic_compare_exchange_weak_explicit(
            head, &old, want, memory_order_release, memory_order_relaxed))
      break;
  }
}
