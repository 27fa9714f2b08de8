/*
 * thread_no.c - a small number for the calling thread, for spreading the
 * threads that share an engine over stripes of what each would otherwise
 * write in turn (the RCU pins, the ticket table's free stacks, the cost
 * ledger's sums, the per-decision counters), for giving the first few a
 * line of their own in each engine (the RCU domain's, routing.h) and for
 * keeping a thread on the same lane of the pool index.
 *
 * Numbers are given in the order threads first ask, from 1, so that N
 * threads that first ask one after another get N different stripes of N
 * (threads that come and go are numbered on, and may share one). A mix
 * of a stack address needs no thread-local state but puts two threads of
 * two on one stripe once in N runs, and a benchmark of two threads then
 * measures the one-stripe case.
 * The number is one word of thread-local storage, in the default model:
 * the library may be loaded with dlopen (Python's ctypes), where the
 * initial-exec model can fail to load.
 */
#include <stdatomic.h>
#include <stdint.h>

#include "spi_internal.h"

static _Thread_local uint32_t mine;
static atomic_uint last_given;

uint32_t spi__thread_no(void) {
  uint32_t n = mine;
  while (__builtin_expect(n == 0, 0)) /* 0 only after 2^32 threads asked */
    n = mine = atomic_fetch_add_explicit(&last_given, 1u,
                                         memory_order_relaxed) + 1u;
  return n;
}
