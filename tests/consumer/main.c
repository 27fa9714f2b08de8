/*
 * A program that uses libspotinfer the way a gateway would, built against the
 * installed package only (see scripts/consumer-test.sh). It prints the
 * version so the test can tell the build and the loaded library agree.
 */
#include <stdio.h>
#include <string.h>

#include <spotinfer/spotinfer.h>

int main(void) {
  spi_engine *engine = NULL;
  int rc = spi_engine_new(&engine, NULL);
  if (rc != SPI_OK) {
    fprintf(stderr, "spi_engine_new: %s\n", spi_strerror(rc));
    return 1;
  }
  rc = spi_engine_configure(engine, "{}", 2);
  if (rc != SPI_OK) {
    fprintf(stderr, "spi_engine_configure: %s: %s\n", spi_strerror(rc),
            spi_engine_errmsg(engine));
    spi_engine_free(engine);
    return 1;
  }
  const char *loaded = spi_version_string();
  if (strcmp(loaded, SPI_VERSION_STRING) != 0) {
    fprintf(stderr, "built against %s but loaded %s\n", SPI_VERSION_STRING,
            loaded);
    spi_engine_free(engine);
    return 1;
  }
  printf("spotinfer %s ok\n", loaded);
  spi_engine_free(engine);
  return 0;
}
