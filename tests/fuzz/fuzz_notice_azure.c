/*
 * fuzz_notice_azure.c - spi_notice_parse on arbitrary Azure Scheduled
 * Events documents (one notice per event and resource).
 * The invariants it checks are in notice_check.h.
 */
#include <stddef.h>
#include <stdint.h>

#include "notice_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  run(SPI_NOTICE_AZURE_SCHEDULED, "azure scheduled events",
      "azure:", (const char *)data, size);
  return 0;
}
