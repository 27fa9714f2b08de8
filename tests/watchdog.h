/*
 * watchdog.h - fail a test program that hangs instead of letting it block.
 *
 * A deadlock in a concurrency test must turn into a failure with a message,
 * not into a ctest timeout minutes later (or a CI job that never ends).
 * spi_test_watchdog(s) arms SIGALRM; if it fires, the program writes which
 * test hung and exits with status 3. Call it again to re-arm for the next
 * test; 0 disarms.
 */
#ifndef SPI_TEST_WATCHDOG_H
#define SPI_TEST_WATCHDOG_H

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *spi_watchdog_what = "test";

static void spi_watchdog_fire(int sig) {
  (void)sig;
  static const char head[] = "watchdog: hung in ";
  ssize_t rc = write(2, head, sizeof head - 1);
  rc = write(2, spi_watchdog_what, strlen(spi_watchdog_what));
  rc = write(2, "\n", 1);
  (void)rc;
  _exit(3);
}

/* SPI_WATCHDOG_SCALE (1..100) stretches every limit for slow runners such
 * as valgrind, which runs a program's threads one at a time. */
static void spi_test_watchdog(const char *what, unsigned seconds) {
  const char *scale = getenv("SPI_WATCHDOG_SCALE");
  int k = scale ? atoi(scale) : 1;
  if (k > 1 && k <= 100) seconds *= (unsigned)k;
  spi_watchdog_what = what;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = spi_watchdog_fire;
  sigaction(SIGALRM, &sa, NULL);
  alarm(seconds);
}

#endif /* SPI_TEST_WATCHDOG_H */
