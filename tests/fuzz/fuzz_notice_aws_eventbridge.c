/*
 * fuzz_notice_aws_eventbridge.c - spi_notice_parse on arbitrary EventBridge
 * envelopes of EC2 events.
 * The invariants it checks are in notice_check.h.
 */
#include <stddef.h>
#include <stdint.h>

#include "notice_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  run(SPI_NOTICE_AWS_EVENTBRIDGE, "aws eventbridge",
      "aws:eb:", (const char *)data, size);
  return 0;
}
