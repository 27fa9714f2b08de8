/*
 * fuzz_notice_aws_scheduled.c - spi_notice_parse on arbitrary AWS IMDS
 * events/maintenance/scheduled bodies (JSON arrays of events, each one
 * notice).
 * The invariants it checks are in notice_check.h.
 */
#include <stddef.h>
#include <stdint.h>

#include "notice_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  run(SPI_NOTICE_AWS_SCHEDULED, "aws events/maintenance/scheduled",
      "aws:scheduled:", (const char *)data, size);
  return 0;
}
