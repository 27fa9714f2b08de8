/*
 * rcu.c - the read-copy-update domain every engine pins its snapshot, replica
 * set and prefix index through. Readers pin a snapshot with a two-slot epoch
 * counter (two atomic adds, no lock); a writer swaps the pointer, flips the
 * epoch and waits for the old slot's readers to drain before freeing. Who
 * may wait, and holding what: the LOCK ORDER block in engine.h.
 */
#include <sched.h>

#include "routing.h"

int spi__rcu_init(spi_rcu *r) {
  atomic_init(&r->epoch, 0u);
  for (int e = 0; e < 2; e++)
    for (int i = 0; i < SPI_RCU_STRIPES; i++)
      atomic_init(&r->readers[e][i].n, 0ul);
  return pthread_mutex_init(&r->sync_lock, NULL) == 0 ? SPI_OK : SPI_ENOMEM;
}

void spi__rcu_destroy(spi_rcu *r) { pthread_mutex_destroy(&r->sync_lock); }

/* The stripe of the thread whose stack holds stack_addr: threads have
 * separate stacks, so an address on each one's stack (its page and above)
 * tells them apart without thread-local state, which the pin, taken by
 * every call, would reach through __tls_get_addr in the shared library. */
static unsigned rcu_stripe(const void *stack_addr) {
  uint64_t x = (uint64_t)(uintptr_t)stack_addr >> 12;
  x ^= x >> 17;
  x *= 0xed5ad4bbu;
  x ^= x >> 11;
  return (unsigned)(x & (SPI_RCU_STRIPES - 1));
}

/* The pin holds the epoch parity in bit 0 and the stripe above it. */
unsigned spi__rcu_enter(spi_rcu *r) {
  char here = 0;
  unsigned stripe = rcu_stripe(&here);
  for (;;) {
    unsigned ep = atomic_load(&r->epoch) & 1u;
    atomic_fetch_add(&r->readers[ep][stripe].n, 1);
    if ((atomic_load(&r->epoch) & 1u) == ep) return stripe << 1 | ep;
    atomic_fetch_sub(&r->readers[ep][stripe].n, 1);
  }
}

void spi__rcu_exit(spi_rcu *r, unsigned pin) {
  atomic_fetch_sub(&r->readers[pin & 1u][pin >> 1].n, 1);
}

/* A reader that entered before the flip counted itself in the old epoch;
 * one that enters after it sees the new epoch and, having loaded the
 * published pointer after the writer stored it, the new object. */
void spi__rcu_synchronize(spi_rcu *r) {
  pthread_mutex_lock(&r->sync_lock);
  unsigned ep = atomic_fetch_add(&r->epoch, 1u) & 1u;
  for (int i = 0; i < SPI_RCU_STRIPES; i++)
    while (atomic_load(&r->readers[ep][i].n) != 0) sched_yield();
  pthread_mutex_unlock(&r->sync_lock);
}
