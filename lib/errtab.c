/*
 * errtab.c - error detail that belongs to its call: one message per calling
 * thread on a shared handle (an engine, a replay queue).
 *
 * Many threads share one engine, and a single message slot made a thread
 * read another thread's failure. A table of slots on the handle, keyed by
 * thread, was not enough either: once more threads had failed than it had
 * slots, a slot was given to another thread while its owner could still be
 * reading the message its getter had returned, so a thread read half of
 * another's. So the messages live with the thread instead, in a few entries
 * of thread-local storage, each naming its handle by an id no other handle
 * is ever given (an address can be reused after a free; an id cannot). No
 * other thread reads or writes them: no lock, no allocation, and a message
 * stays as the getter returned it until the thread's own next call. Nothing
 * here is on the routing hot path: a failing call writes, the getter reads.
 *
 * A thread that fails calls on more live handles than it keeps entries for
 * lets the entry set longest ago go (an empty one first); that handle's
 * getter then reads SPI_ERRTAB_LOST on that thread, never another handle's
 * message. A handle freed on the thread gives its entry back at once, so a
 * thread that makes, fails on and frees handles in turn (a configuration
 * checker) lets nothing go.
 */
#include <stdatomic.h>
#include <string.h>

#include "spi_internal.h"

const char SPI_ERRTAB_LOST[] =
    "(this thread's error detail was replaced: it failed calls on more "
    "handles than it keeps messages for since)";

/* Handles whose messages one thread keeps, and whose loss it remembers. */
#define KEEP 8
#define LOST 64

typedef struct kept_msg {
  uint64_t handle; /* spi_errtab.id; 0: unused */
  uint64_t stamp;  /* when it was last set: the oldest is let go */
  char msg[SPI_ERRMSG_CAP];
} kept_msg;

static _Thread_local struct {
  kept_msg kept[KEEP];
  uint64_t lost[LOST]; /* handles whose entry was let go (0: unused) */
  unsigned lost_next;
  uint64_t stamp;
} here;

static atomic_uint_fast64_t last_id;

int spi__errtab_init(spi_errtab *t) {
  t->id = (uint64_t)atomic_fetch_add(&last_id, 1) + 1;
  return SPI_OK;
}

/* Whether id's entry was let go (and the thread has not set it since);
 * with forget, it no longer counts as lost. */
static int was_lost(uint64_t id, int forget) {
  for (int i = 0; i < LOST; i++)
    if (here.lost[i] == id) {
      if (forget) here.lost[i] = 0;
      return 1;
    }
  return 0;
}

/* This thread's entry for handle id, or NULL. */
static kept_msg *entry_of(uint64_t id) {
  for (int i = 0; i < KEEP; i++)
    if (here.kept[i].handle == id) return &here.kept[i];
  return NULL;
}

void spi__errtab_destroy(spi_errtab *t) {
  kept_msg *k = entry_of(t->id);
  if (k) {
    k->handle = 0;
    k->msg[0] = '\0';
  }
  was_lost(t->id, 1);
  t->id = 0;
}

/* The entry a new handle takes: a free one, else one with no message, else
 * the one set longest ago. */
static kept_msg *entry_to_take(void) {
  kept_msg *k = &here.kept[0];
  for (int i = 1; i < KEEP; i++) {
    const kept_msg *c = &here.kept[i];
    int better = !k->handle ? 0
                 : !c->handle ? 1
                 : !k->msg[0] ? 0
                 : !c->msg[0] ? 1
                              : c->stamp < k->stamp;
    if (better) k = &here.kept[i];
  }
  return k;
}

void spi__errtab_set(spi_errtab *t, const char *msg) {
  kept_msg *k = entry_of(t->id);
  if (!k) {
    k = entry_to_take();
    if (k->handle && k->msg[0]) { /* its handle reads "lost", not ours */
      here.lost[here.lost_next] = k->handle;
      here.lost_next = (here.lost_next + 1) % LOST;
    }
    k->handle = t->id;
  }
  was_lost(t->id, 1);
  k->stamp = ++here.stamp;
  spi__errf(k->msg, sizeof k->msg, "%s", msg);
}

void spi__errtab_clear(spi_errtab *t) {
  kept_msg *k = entry_of(t->id);
  if (k) k->msg[0] = '\0';
  was_lost(t->id, 1);
}

const char *spi__errtab_get(const spi_errtab *t) {
  const kept_msg *k = entry_of(t->id);
  return k ? k->msg : was_lost(t->id, 0) ? SPI_ERRTAB_LOST : "";
}
