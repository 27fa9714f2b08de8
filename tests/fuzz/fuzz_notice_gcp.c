/*
 * fuzz_notice_gcp.c - spi_notice_parse on arbitrary GCP metadata bodies.
 *
 * Both GCP formats in one target: the first input byte chooses (even:
 * instance/preempted, odd: instance/maintenance-event) and the rest is the
 * body, so seeds read "0TRUE", "1NONE".
 * The invariants it checks are in notice_check.h.
 */
#include <stddef.h>
#include <stdint.h>

#include "notice_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  if (data[0] & 1)
    run(SPI_NOTICE_GCP_MAINTENANCE, "gcp instance/maintenance-event",
        "gcp:maintenance:", (const char *)data + 1, size - 1);
  else
    run(SPI_NOTICE_GCP_PREEMPTED, "gcp instance/preempted",
        "gcp:preempted:", (const char *)data + 1, size - 1);
  return 0;
}
