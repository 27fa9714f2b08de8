/*
 * fences.c - asymmetric fences: the routing threads' side of a handshake
 * runs without a fence, and the rare side (a writer waiting for pins, a
 * notice waiting for the routes opening tickets) fences every thread of
 * the process at once with membarrier(2).
 *
 * A handshake of two threads (one stores its count, then loads the other's
 * flag; the other stores its flag, then loads the count) needs a full fence
 * on each side, or each load may pass its own store and both miss. On x86
 * that fence is a locked instruction, which also waits for the thread's
 * earlier stores to drain: a route made several, and they cost about a
 * tenth of a short route. With MEMBARRIER_CMD_PRIVATE_EXPEDITED the rare
 * side's call puts a full fence into every running thread of the process
 * (and a thread switched out passed one when it stopped), so a routing
 * thread's store and load need only stay in program order for the compiler.
 *
 * Where membarrier is missing (kernels before 4.14, other systems, a
 * seccomp filter that refuses it) spi__fences_cheap says 0 and every reader
 * keeps its locked instruction. A child of fork() is not registered
 * (registration is per address space); it registers again, and if it
 * cannot, its readers keep their locked instructions from then on.
 */
#define _DEFAULT_SOURCE /* syscall */
#include <pthread.h>

#include "spi_internal.h"

#if defined(__linux__) && defined(__has_include)
#if __has_include(<linux/membarrier.h>)
#define SPI_HAVE_MEMBARRIER 1
#endif
#endif

#ifdef SPI_HAVE_MEMBARRIER
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

static int membarrier(int cmd) { return (int)syscall(SYS_membarrier, cmd, 0, 0); }

int spi__fences_flag; /* read and written with __atomic builtins */
static pthread_once_t once = PTHREAD_ONCE_INIT;

static int registered(void) {
  int can = membarrier(MEMBARRIER_CMD_QUERY);
  return can > 0 && (can & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
         membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
}

/* Only the forking thread runs in the child: no reader is between its
 * store and its load. */
static void child_after_fork(void) {
  __atomic_store_n(&spi__fences_flag, registered(), __ATOMIC_RELAXED);
}

static void set_up(void) {
  int ok = registered();
  if (ok && pthread_atfork(NULL, NULL, child_after_fork) != 0) ok = 0;
  __atomic_store_n(&spi__fences_flag, ok, __ATOMIC_RELAXED);
}

void spi__fences_init(void) { pthread_once(&once, set_up); }

void spi__fence_all(void) {
  if (!spi__fences_cheap()) return;
  /* Its errors are an unknown command and a process not registered;
   * the flag is set only in a process registered for this command. */
  (void)membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
}

#else

int spi__fences_flag; /* never set: no membarrier here */
void spi__fences_init(void) {}
void spi__fence_all(void) {}

#endif
