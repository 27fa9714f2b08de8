/*
 * errtab.c - error detail that belongs to its call: one message per calling
 * thread on a shared handle (an engine, a replay queue).
 *
 * Many threads share one engine, and a single message slot made a thread
 * read another thread's failure. Each handle keeps a small fixed table of
 * slots keyed by thread id instead: a failing call writes its own thread's
 * slot, and the errmsg getter returns the calling thread's. The table is
 * touched only on failure and by the getter, never on the routing hot path;
 * it is part of the handle (no allocation, no thread-local storage, bounded
 * memory). When more threads than slots have failed, the slot set longest
 * ago is taken over; a thread whose slot was taken over reads
 * SPI_ERRTAB_LOST, never another thread's message.
 */
#include <string.h>

#include "spi_internal.h"

const char SPI_ERRTAB_LOST[] =
    "(this thread's error detail was replaced: more threads than the handle "
    "keeps failed since)";

int spi__errtab_init(spi_errtab *t) {
  memset(t->slot, 0, sizeof t->slot);
  memset(t->evicted_used, 0, sizeof t->evicted_used);
  t->evicted_next = 0;
  t->stamp = 0;
  return pthread_mutex_init(&t->lock, NULL) == 0 ? SPI_OK : SPI_ENOMEM;
}

void spi__errtab_destroy(spi_errtab *t) { pthread_mutex_destroy(&t->lock); }

/* The calling thread's slot, or NULL. Called with t->lock held. */
static spi_errslot *mine(spi_errtab *t, pthread_t self) {
  for (size_t i = 0; i < SPI_ERRTAB_SLOTS; i++)
    if (t->slot[i].used && pthread_equal(t->slot[i].owner, self))
      return &t->slot[i];
  return NULL;
}

/* Whether self's slot was taken over (and self has not failed since). */
static int was_evicted(const spi_errtab *t, pthread_t self, size_t *at) {
  for (size_t i = 0; i < SPI_ERRTAB_SLOTS; i++)
    if (t->evicted_used[i] && pthread_equal(t->evicted[i], self)) {
      if (at) *at = i;
      return 1;
    }
  return 0;
}

void spi__errtab_set(spi_errtab *t, const char *msg) {
  pthread_t self = pthread_self();
  pthread_mutex_lock(&t->lock);
  spi_errslot *s = mine(t, self);
  for (size_t i = 0; !s && i < SPI_ERRTAB_SLOTS; i++)
    if (!t->slot[i].used) s = &t->slot[i];
  if (!s) { /* all taken: the one set longest ago */
    s = &t->slot[0];
    for (size_t i = 1; i < SPI_ERRTAB_SLOTS; i++)
      if (t->slot[i].stamp < s->stamp) s = &t->slot[i];
    /* Remember whose it was, so that thread reads "lost", not ours. */
    size_t at = t->evicted_next;
    t->evicted_next = (at + 1) % SPI_ERRTAB_SLOTS;
    t->evicted[at] = s->owner;
    t->evicted_used[at] = 1;
  }
  size_t at;
  if (was_evicted(t, self, &at)) t->evicted_used[at] = 0;
  s->used = 1;
  s->owner = self;
  s->stamp = ++t->stamp;
  spi__errf(s->msg, sizeof s->msg, "%s", msg);
  pthread_mutex_unlock(&t->lock);
}

void spi__errtab_clear(spi_errtab *t) {
  pthread_t self = pthread_self();
  pthread_mutex_lock(&t->lock);
  spi_errslot *s = mine(t, self);
  if (s) s->msg[0] = '\0';
  size_t at;
  if (was_evicted(t, self, &at)) t->evicted_used[at] = 0;
  pthread_mutex_unlock(&t->lock);
}

const char *spi__errtab_get(spi_errtab *t) {
  pthread_t self = pthread_self();
  pthread_mutex_lock(&t->lock);
  const spi_errslot *s = mine(t, self);
  const char *msg = s ? s->msg : was_evicted(t, self, NULL) ? SPI_ERRTAB_LOST : "";
  pthread_mutex_unlock(&t->lock);
  return msg;
}
