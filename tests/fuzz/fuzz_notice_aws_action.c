/*
 * fuzz_notice_aws_action.c - spi_notice_parse on arbitrary AWS IMDS
 * spot/instance-action bodies.
 * The invariants it checks are in notice_check.h.
 */
#include <stddef.h>
#include <stdint.h>

#include "notice_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  run(SPI_NOTICE_AWS_INSTANCE_ACTION, "aws spot/instance-action",
      "aws:action:", (const char *)data, size);
  return 0;
}
