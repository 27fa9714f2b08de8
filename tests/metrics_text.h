/*
 * metrics_text.h - one sample's value from an engine's Prometheus text
 * (spi_engine_metrics), for tests and benchmarks that check a counter.
 */
#ifndef SPI_TEST_METRICS_TEXT_H
#define SPI_TEST_METRICS_TEXT_H

#include <stdlib.h>
#include <string.h>

#include "spotinfer/spotinfer.h"

/* The value of the sample named sample (its name and labels, as the text
 * writes them), or -1 when the text has no such line or cannot be read. */
static inline long long spi_test_metric(spi_engine *e, const char *sample) {
  size_t need = 0;
  if (spi_engine_metrics(e, NULL, 0, &need) != SPI_EBUFSIZE) return -1;
  char *text = malloc(need + 1);
  if (!text || spi_engine_metrics(e, text, need + 1, NULL) != SPI_OK) {
    free(text);
    return -1;
  }
  long long v = -1;
  size_t n = strlen(sample);
  for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : l)
    if (!strncmp(l, sample, n) && l[n] == ' ') v = atoll(l + n + 1);
  free(text);
  return v;
}

#endif /* SPI_TEST_METRICS_TEXT_H */
