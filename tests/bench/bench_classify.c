/*
 * bench_classify.c - classification cost per request, as JSON lines.
 *
 * Measures spi_classify on warm requests built field by field (the hot
 * path: no allocation), for a few request shapes, the cost of building such
 * a request with the setters (a gateway's per-request work before it can
 * classify or route), and the cost of reading an OpenAI body (which
 * allocates inside cJSON) for comparison.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "spotinfer/spotinfer.h"

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int check(int rc, const char *what) {
  if (rc != SPI_OK) {
    fprintf(stderr, "%s: %s\n", what, spi_strerror(rc));
    return 1;
  }
  return 0;
}

/* Best-of-5 ns per classify call. */
static double time_classify(spi_request *r, int iters) {
  spi_classification c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  double best = 1e30;
  for (int run = 0; run < 5; run++) {
    double t0 = now_ns();
    for (int i = 0; i < iters; i++) spi_classify(r, i & 3, &c);
    double dt = (now_ns() - t0) / iters;
    if (dt < best) best = dt;
  }
  return best;
}

/* A chat request filled field by field on a warm handle, as a gateway
 * does per request: best-of-5 ns per request and per setter call. */
static void bench_build(spi_request *r) {
  enum { SETTERS = 9, ITERS = 200000 };
  double best = 1e30;
  for (int run = 0; run < 5; run++) {
    double t0 = now_ns();
    for (int i = 0; i < ITERS; i++) {
      spi_request_reset(r);
      spi_request_set_str(r, SPI_REQ_MODEL, "llama-3.1-70b", 13);
      spi_request_set_str(r, SPI_REQ_TENANT, "acme", 4);
      spi_request_set_str(r, SPI_REQ_CLASS, "silver", 6);
      spi_request_add_message(r, "system", 6, "You are helpful.", 16);
      spi_request_add_message(r, "user", 4, "Compare the two plans.", 22);
      spi_request_set_metadata(r, "team", 4, "search", 6);
      spi_request_set_int(r, SPI_REQ_STREAM, 1);
      spi_request_set_int(r, SPI_REQ_MAX_OUTPUT_TOKENS, 512);
      spi_request_set_int(r, SPI_REQ_SLA_MS, 1500);
    }
    double dt = (now_ns() - t0) / ITERS;
    if (dt < best) best = dt;
  }
  printf("{\"bench\":\"request_build\",\"setters\":%d,\"ns_per_op\":%.1f,"
         "\"ns_per_setter\":%.1f}\n",
         SETTERS, best, best / SETTERS);
}

int main(void) {
  spi_engine *e = NULL;
  spi_request *r = NULL;
  if (check(spi_engine_new(&e, NULL), "engine") ||
      check(spi_request_new(e, &r), "request"))
    return 1;
  static char query[8192];
  for (size_t i = 0; i < sizeof query; i++) query[i] = "lorem ipsum dolor "[i % 18];
  memcpy(query + 4000, "explain why", 11);

  struct {
    const char *name;
    size_t query_len;
    int stream, sla, tier;
  } shapes[] = {
      {"stream-chat-64B", 64, 1, 0, 0},
      {"sla-chat-1KiB", 1024, 1, 800, 0},
      {"flex-8KiB", 8192, 0, 0, 1},
      {"default-8KiB", 8192, 0, 5000, 0},
  };
  static const char *const cascade_cfg[] = {
      "{}", "{\"classifier\":{\"cascade\":{\"enabled\":true}}}"};
  for (int cas = 0; cas < 2; cas++)
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    if (check(spi_engine_configure(e, cascade_cfg[cas], strlen(cascade_cfg[cas])),
              "configure"))
      return 1;
    spi_request_reset(r);
    spi_request_set_str(r, SPI_REQ_MODEL, "llama-3.1-70b", 13);
    spi_request_add_message(r, "system", 6, "You are helpful.", 16);
    spi_request_add_message(r, "user", 4, query, shapes[s].query_len);
    spi_request_set_int(r, SPI_REQ_STREAM, shapes[s].stream);
    if (shapes[s].sla) spi_request_set_int(r, SPI_REQ_SLA_MS, shapes[s].sla);
    if (shapes[s].tier) spi_request_set_str(r, SPI_REQ_SERVICE_TIER, "flex", 4);
    double ns = time_classify(r, 200000);
    printf("{\"bench\":\"classify\",\"shape\":\"%s\",\"cascade\":%s,"
           "\"query_bytes\":%zu,\"ns_per_op\":%.1f}\n",
           shapes[s].name, cas ? "true" : "false", shapes[s].query_len, ns);
  }

  bench_build(r);

  const char *body =
      "{\"model\":\"llama-3.1-70b\",\"stream\":true,\"messages\":["
      "{\"role\":\"system\",\"content\":\"You are helpful.\"},"
      "{\"role\":\"user\",\"content\":\"Compare the two plans step by step.\"}],"
      "\"max_tokens\":512,\"metadata\":{\"tenant\":\"acme\",\"sla_ms\":\"1500\"}}";
  size_t blen = strlen(body);
  int iters = 50000;
  double best = 1e30;
  spi_classification c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  for (int run = 0; run < 5; run++) {
    double t0 = now_ns();
    for (int i = 0; i < iters; i++) {
      spi_request_parse_openai(r, body, blen, SPI_OPENAI_AUTO);
      spi_classify(r, SPI_PRESSURE_NORMAL, &c);
    }
    double dt = (now_ns() - t0) / iters;
    if (dt < best) best = dt;
  }
  printf("{\"bench\":\"parse_openai+classify\",\"body_bytes\":%zu,"
         "\"ns_per_op\":%.1f}\n",
         blen, best);
  spi_request_free(r);
  spi_engine_free(e);
  return 0;
}
