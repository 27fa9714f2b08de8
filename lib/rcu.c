/*
 * rcu.c - the read-copy-update domain every engine pins its snapshot, replica
 * set and prefix index through. Readers pin with a two-slot epoch counter,
 * no lock: a store to the thread's own line (routing.h, spi_rcu_line) when
 * asymmetric fences are cheap (fences.c), else an atomic add on a striped
 * counter. A writer swaps the pointer, flips the epoch, fences every thread
 * and waits for the old slot's readers to drain before freeing. Who may
 * wait, and holding what: the LOCK ORDER block in engine.h.
 */
#include <sched.h>

#include "routing.h"

int spi__rcu_init(spi_rcu *r) {
  spi__fences_init();
  atomic_init(&r->epoch, 0u);
  for (int e = 0; e < 2; e++) {
    for (int i = 0; i < SPI_RCU_STRIPES; i++)
      atomic_init(&r->readers[e][i].n, 0ul);
    for (int i = 0; i < SPI_RCU_OWN; i++) atomic_init(&r->own[i].n[e], 0ul);
  }
  for (int i = 0; i < SPI_RCU_OWN; i++) atomic_init(&r->own[i].opening, 0u);
  return pthread_mutex_init(&r->sync_lock, NULL) == 0 ? SPI_OK : SPI_ENOMEM;
}

void spi__rcu_destroy(spi_rcu *r) { pthread_mutex_destroy(&r->sync_lock); }

/* A pin holds the epoch's parity in bit 0, whether it is counted in the
 * thread's own line in bit 1, and the line's or stripe's index above. */
#define PIN_OWN 2u

/* The thread's own line: only it writes there, so load and store make the
 * add. Its store must not pass its load of the epoch for the compiler
 * (the signal fence); for the processor, the writer's fence of every
 * thread (spi__fence_all) after its flip does it: a reader fenced before
 * its store loads the flipped epoch and counts again in the new one; a
 * reader fenced after its store has the count seen by the writer's wait. */
static unsigned enter_own(spi_rcu *r, spi_rcu_line *l) {
  for (;;) {
    unsigned ep = atomic_load_explicit(&r->epoch, memory_order_relaxed) & 1u;
    unsigned long n = atomic_load_explicit(&l->n[ep], memory_order_relaxed);
    atomic_store_explicit(&l->n[ep], n + 1, memory_order_relaxed);
    atomic_signal_fence(memory_order_seq_cst);
    if ((atomic_load_explicit(&r->epoch, memory_order_acquire) & 1u) == ep)
      return (unsigned)(l - r->own) << 2 | PIN_OWN | ep;
    atomic_store_explicit(&l->n[ep], n, memory_order_relaxed);
  }
}

/* Threads numbered one after another take stripes one after another. */
static unsigned enter_striped(spi_rcu *r, uint32_t thread_no) {
  unsigned stripe = thread_no % SPI_RCU_STRIPES;
  for (;;) {
    unsigned ep = atomic_load(&r->epoch) & 1u;
    atomic_fetch_add(&r->readers[ep][stripe].n, 1);
    if ((atomic_load(&r->epoch) & 1u) == ep) return stripe << 2 | ep;
    atomic_fetch_sub(&r->readers[ep][stripe].n, 1);
  }
}

unsigned spi__rcu_enter(spi_rcu *r) {
  uint32_t me = spi__thread_no();
  spi_rcu_line *l = spi__rcu_line(r, me);
  return l ? enter_own(r, l) : enter_striped(r, me);
}

void spi__rcu_exit(spi_rcu *r, unsigned pin) {
  unsigned ep = pin & 1u, i = pin >> 2;
  if (pin & PIN_OWN) { /* release: the reads pinned come before the 0 */
    atomic_ulong *n = &r->own[i].n[ep];
    atomic_store_explicit(
        n, atomic_load_explicit(n, memory_order_relaxed) - 1,
        memory_order_release);
    return;
  }
  atomic_fetch_sub(&r->readers[ep][i].n, 1);
}

/* A reader that entered before the flip counted itself in the old epoch;
 * one that enters after it sees the new epoch and, having loaded the
 * published pointer after the writer stored it, the new object. */
void spi__rcu_synchronize(spi_rcu *r) {
  pthread_mutex_lock(&r->sync_lock);
  unsigned ep = atomic_fetch_add(&r->epoch, 1u) & 1u;
  spi__fence_all();
  for (int i = 0; i < SPI_RCU_STRIPES; i++)
    while (atomic_load(&r->readers[ep][i].n) != 0) sched_yield();
  for (int i = 0; i < SPI_RCU_OWN; i++)
    while (atomic_load_explicit(&r->own[i].n[ep], memory_order_acquire) != 0)
      sched_yield();
  pthread_mutex_unlock(&r->sync_lock);
}
