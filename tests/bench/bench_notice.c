/*
 * bench_notice.c - from handing in an interruption notice to the machine
 * receiving no new routes, as JSON lines.
 *
 * The notice acts inside the call (replicas marked, index entries killed,
 * plans computed), so the time to "no new routes" is the call's duration;
 * the program checks that the very next routes avoid the machine. Measured
 * with 64 replicas on 64 machines and a given number of open tickets.
 *
 * Then what a flood costs as the fleet grows (64, 1,024 and 4,096
 * machines): one terminate notice for every machine that runs a replica,
 * then as many advisory notices for machines that run nothing (at 4,096
 * the table is full of machines with replicas: those are refused, and
 * counted as failed); and what
 * changing the replica set costs at that size (an add, a remove, and an
 * update of an existing replica's price).
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

static spi_replica_info replica(const char *id, const char *node, int i) {
  spi_replica_info ri;
  memset(&ri, 0, sizeof ri);
  ri.struct_size = sizeof ri;
  ri.id = id;
  ri.id_len = strlen(id);
  ri.node = node;
  ri.node_len = strlen(node);
  ri.pool = SPI_POOL_SPOT;
  static const char *zones[16] = {"z0", "z1", "z2", "z3", "z4", "z5",
                                  "z6", "z7", "z8", "z9", "za", "zb",
                                  "zc", "zd", "ze", "zf"};
  ri.zone = zones[i % 16];
  ri.zone_len = 2;
  ri.instance_type = "g5";
  ri.instance_type_len = 2;
  ri.usd_per_hour = 1.5;
  ri.max_inflight = 64;
  return ri;
}

/* The time one notice took; *failed counts those refused. */
static double notice_at(spi_engine *e, const char *node, int32_t kind,
                        int *failed) {
  spi_notice n;
  memset(&n, 0, sizeof n);
  n.struct_size = sizeof n;
  n.kind = kind;
  n.active = 1;
  n.deadline_ns = kind == SPI_NOTICE_REBALANCE ? 0 : fixed(NULL) + 120000000000LL;
  snprintf(n.node, sizeof n.node, "%s", node);
  snprintf(n.dedup_key, sizeof n.dedup_key, "aws:%d:%s", (int)kind, node);
  size_t np = 0;
  double t0 = now_ns();
  *failed += spi_engine_notice(e, &n, NULL, 0, &np) != SPI_OK;
  return now_ns() - t0;
}

static void summary(const char *bench, int machines, double *t, int n,
                    int failed) {
  double sum = 0;
  for (int i = 0; i < n; i++) sum += t[i];
  qsort(t, (size_t)n, sizeof t[0], cmp);
  printf("{\"bench\":\"%s\",\"machines\":%d,\"notices\":%d,"
         "\"mean_ns\":%.0f,\"p50_ns\":%.0f,\"max_ns\":%.0f,\"failed\":%d}\n",
         bench, machines, n, sum / n, t[n / 2], t[n - 1], failed);
}

/* One replica on each of `machines` machines; a terminate notice for each,
 * then advisory notices for as many machines that run nothing; then set
 * changes at that size. */
static void flood(int machines) {
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = fixed;
  spi_engine *e = NULL;
  spi_engine_new(&e, &h);
  const char *cfg = "{\"router\":{\"max_replicas\":4096}}";
  spi_engine_configure(e, cfg, strlen(cfg));
  char id[32], node[32];
  for (int i = 0; i < machines; i++) {
    snprintf(id, sizeof id, "replica-%05d", i);
    snprintf(node, sizeof node, "i-%08d", i);
    spi_replica_info ri = replica(id, node, i);
    spi_replica_upsert(e, &ri);
  }
  double *t = calloc((size_t)machines, sizeof *t);
  int failed = 0;
  for (int i = 0; i < machines; i++) {
    snprintf(node, sizeof node, "i-%08d", i);
    t[i] = notice_at(e, node, SPI_NOTICE_TERMINATE, &failed);
  }
  summary("notice_flood_busy", machines, t, machines, failed);
  failed = 0;
  for (int i = 0; i < machines; i++) {
    snprintf(node, sizeof node, "idle-%08d", i);
    t[i] = notice_at(e, node, SPI_NOTICE_REBALANCE, &failed);
  }
  summary("notice_flood_idle", machines, t, machines, failed);
  /* Set changes at this size: remove and add back, and a price update. */
  enum { K = 64 };
  double add = 0, rem = 0, upd = 0;
  for (int k = 0; k < K; k++) {
    int i = (k * 7919) % machines;
    snprintf(id, sizeof id, "replica-%05d", i);
    snprintf(node, sizeof node, "i-%08d", i);
    spi_replica_info ri = replica(id, node, i);
    double t0 = now_ns();
    spi_replica_remove(e, id, strlen(id));
    double t1 = now_ns();
    spi_replica_upsert(e, &ri);
    double t2 = now_ns();
    ri.usd_per_hour = 1.5 + (k + 1) * 0.01;
    spi_replica_upsert(e, &ri);
    double t3 = now_ns();
    rem += t1 - t0;
    add += t2 - t1;
    upd += t3 - t2;
  }
  printf("{\"bench\":\"replica_set_change\",\"replicas\":%d,"
         "\"remove_ns\":%.0f,\"add_ns\":%.0f,\"update_ns\":%.0f}\n",
         machines, rem / K, add / K, upd / K);
  free(t);
  spi_engine_free(e);
}

int main(void) {
  run(0);
  run(1000);
  run(16000);
  flood(64);
  flood(1024);
  flood(4096);
  return 0;
}
