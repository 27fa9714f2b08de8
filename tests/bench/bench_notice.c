/*
 * bench_notice.c - from handing in an interruption notice to the machine
 * receiving no new routes, as JSON lines.
 *
 * The notice acts inside the call (replicas marked, index entries killed,
 * plans computed), so the time to "no new routes" is the call's duration;
 * the program checks that the very next routes avoid the machine. Measured
 * with 64 replicas on 64 machines and a given number of open tickets.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spotinfer/spotinfer.h"

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int64_t fixed(void *ud) {
  (void)ud;
  return 1700000000LL * 1000000000LL;
}

static void run(int open_tickets) {
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = fixed;
  spi_engine *e = NULL;
  spi_engine_new(&e, &h);
  const char *cfg = "{\"router\":{\"max_tickets\":65536}}";
  spi_engine_configure(e, cfg, strlen(cfg));
  enum { R = 64 };
  for (int i = 0; i < R; i++) {
    char id[32], node[32];
    snprintf(id, sizeof id, "replica-%02d", i);
    snprintf(node, sizeof node, "i-%08d", i);
    spi_replica_info ri;
    memset(&ri, 0, sizeof ri);
    ri.struct_size = sizeof ri;
    ri.id = id;
    ri.id_len = strlen(id);
    ri.node = node;
    ri.node_len = strlen(node);
    ri.pool = SPI_POOL_SPOT;
    ri.zone = i % 2 ? "z1" : "z2";
    ri.zone_len = 2;
    ri.instance_type = "g5";
    ri.instance_type_len = 2;
    ri.usd_per_hour = 1.5;
    ri.max_inflight = 4096;
    spi_replica_upsert(e, &ri);
    spi_load l;
    memset(&l, 0, sizeof l);
    l.struct_size = sizeof l;
    l.kv_usage = 0.2;
    spi_replica_report_load(e, id, strlen(id), &l);
  }
  spi_request *r = NULL;
  spi_request_new(e, &r);
  for (int i = 0; i < open_tickets; i++) {
    char p[32];
    snprintf(p, sizeof p, "request %d", i);
    spi_request_reset(r);
    spi_request_set_str(r, SPI_REQ_MODEL, "m", 1);
    spi_request_set_str(r, SPI_REQ_PROMPT, p, strlen(p));
    spi_request_set_str(r, SPI_REQ_CLASS, "silver", 6);
    spi_decision d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    spi_route(r, &d);
  }
  static spi_ticket_plan plans[65536];
  plans[0].struct_size = sizeof plans[0];
  double t[R];
  int leaked = 0;
  for (int i = 0; i < R; i++) {
    spi_notice n;
    memset(&n, 0, sizeof n);
    n.struct_size = sizeof n;
    n.kind = SPI_NOTICE_TERMINATE;
    n.active = 1;
    n.deadline_ns = fixed(NULL) + 120000000000LL;
    snprintf(n.node, sizeof n.node, "i-%08d", i);
    snprintf(n.dedup_key, sizeof n.dedup_key, "aws:action:%s:terminate", n.node);
    size_t np = 0;
    double t0 = now_ns();
    spi_engine_notice(e, &n, plans, 65536, &np);
    t[i] = now_ns() - t0;
    /* The next routes must avoid the machine. */
    char avoid[32];
    snprintf(avoid, sizeof avoid, "replica-%02d", i);
    for (int k = 0; k < 8 && i + 1 < R; k++) {
      char p[32];
      snprintf(p, sizeof p, "after %d %d", i, k);
      spi_request_reset(r);
      spi_request_set_str(r, SPI_REQ_MODEL, "m", 1);
      spi_request_set_str(r, SPI_REQ_PROMPT, p, strlen(p));
      spi_request_set_str(r, SPI_REQ_CLASS, "silver", 6);
      spi_decision d;
      memset(&d, 0, sizeof d);
      d.struct_size = sizeof d;
      if (spi_route(r, &d) == SPI_OK && !strcmp(d.replica_id, avoid)) leaked++;
    }
    if (i + 1 == R) break;
  }
  qsort(t, R, sizeof t[0], cmp);
  printf("{\"bench\":\"notice_to_no_new_routes\",\"replicas\":%d,"
         "\"open_tickets\":%d,\"p50_ns\":%.0f,\"max_ns\":%.0f,"
         "\"routes_to_noticed_after_return\":%d}\n",
         R, open_tickets, t[R / 2], t[R - 1], leaked);
  spi_request_free(r);
  spi_engine_free(e);
}

int main(void) {
  run(0);
  run(1000);
  run(16000);
  return 0;
}
