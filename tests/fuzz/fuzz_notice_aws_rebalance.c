/*
 * fuzz_notice_aws_rebalance.c - spi_notice_parse on arbitrary AWS IMDS
 * events/recommendations/rebalance bodies.
 * The invariants it checks are in notice_check.h.
 */
#include <stddef.h>
#include <stdint.h>

#include "notice_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  run(SPI_NOTICE_AWS_REBALANCE, "aws events/recommendations/rebalance",
      "aws:rebalance:", (const char *)data, size);
  return 0;
}
