/*
 * test_redis_bus.c - the "redis" fleet bus against a real redis-server (the
 * `redis` stage of scripts/test.sh starts one and sets SPI_REDIS_PORT;
 * without it these tests skip).
 *
 *  - Two processes: A (this one, the module registered by hand) gets a
 *    notice; B (a child process configured by its JSON alone, so the engine
 *    loads libspotinfer_redis itself, as the bindings do) stops routing to
 *    that machine after one tick, and cools the spot pool A's other notice
 *    cooled, where B runs nothing on the noticed machine.
 *  - The stream survives a dropped connection: messages published while
 *    B's connection is gone arrive after it reconnects, once each.
 *  - A refused login is an error at configure, with the server's words.
 *  - A poll has one bound, through a proxy that holds replies back: its
 *    steps (connecting, the server's time, the read) end within timeout_ms
 *    of its start, or connect_timeout_ms + timeout_ms when it connects.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "redis_conn.h"
#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_redis.h"
#include "redis_proxy.h"
#include "unit/fake_bus.h"

#define SEC FB_SEC

static int server_port(void) {
  const char *p = getenv("SPI_REDIS_PORT");
  return p && *p ? atoi(p) : 0;
}

/* The bus's configuration: this server, a key prefix of this run. */
static void bus_config(char *buf, size_t cap, int port, const char *prefix,
                       const char *extra) {
  snprintf(buf, cap,
           "{\"modules\":{\"fleet_bus\":\"redis\"},\"module_config\":{"
           "\"redis\":{\"address\":\"127.0.0.1:%d\",\"key_prefix\":\"%s\","
           "\"lookback_ms\":0%s%s}}}",
           port, prefix, extra ? "," : "", extra ? extra : "");
}

static spi_engine *engine_new(void) {
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  return e;
}

/* Register libspotinfer_redis's bus by hand (what the engine otherwise
 * loads by itself). */
static void register_bus(spi_engine *e) {
  spi_fleet_bus_module m;
  void *state = NULL;
  spi_module_destroy_fn destroy = NULL;
  assert_int_equal(spi_redis_get_module(SPI_MODULE_FLEET_BUS, "redis", &m,
                                        sizeof m, &state, &destroy),
                   SPI_OK);
  int rc = spi_engine_register_module(e, SPI_MODULE_FLEET_BUS, "redis", 5, &m,
                                      state, destroy);
  if (rc != SPI_OK) destroy(state);
  assert_int_equal(rc, SPI_OK);
}

static void configure(spi_engine *e, const char *json) {
  int rc = spi_engine_configure(e, json, strlen(json));
  if (rc != SPI_OK) print_error("configure: %s\n", spi_engine_errmsg(e));
  assert_int_equal(rc, SPI_OK);
}

/* An engine with the bus registered by hand and configured by cfg. */
static spi_engine *bus_engine(const char *cfg) {
  spi_engine *e = engine_new();
  register_bus(e);
  configure(e, cfg);
  return e;
}

static void add(spi_engine *e, const char *id, const char *node, int32_t pool,
                const char *type, const char *zone) {
  spi_replica_info ri = fb_replica(id, node, pool, type, zone);
  fb_add_loaded(e, &ri);
}

/* A terminate notice for node, due in two minutes of the real clock. */
static spi_notice notice(const char *node, const char *key) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return fb_notice(node, (int64_t)ts.tv_sec * SEC + ts.tv_nsec + 120 * SEC,
                   key);
}

/* The replica a silver request with prompt p goes to ("" if none). */
static void route_to(spi_engine *e, const char *p, char *id, size_t cap) {
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  spi_request_set_str(r, SPI_REQ_MODEL, "m", 1);
  spi_request_set_str(r, SPI_REQ_PROMPT, p, strlen(p));
  spi_request_set_str(r, SPI_REQ_SYSTEM_PROMPT, p, strlen(p));
  spi_request_set_str(r, SPI_REQ_CLASS, "silver", 6);
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  id[0] = '\0';
  if (spi_route(r, &d) == SPI_OK) {
    snprintf(id, cap, "%s", d.replica_id);
    spi_ticket_result res;
    memset(&res, 0, sizeof res);
    res.struct_size = sizeof res;
    if (d.ticket) spi_ticket_finish(e, d.ticket, &res);
  }
  spi_request_free(r);
}

/* A prompt that e routes to replica id. */
static int prompt_for(spi_engine *e, const char *id, char *p, size_t cap) {
  char got[SPI_ID_MAX];
  for (int i = 0; i < 2000; i++) {
    snprintf(p, cap, "prefix %d", i);
    route_to(e, p, got, sizeof got);
    if (!strcmp(got, id)) return 1;
  }
  return 0;
}

/* ------------------------------------------------------------ process B */

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "B: %s:%d: %s\n", __FILE__, __LINE__, #cond);        \
      return 1;                                                            \
    }                                                                      \
  } while (0)

static int child_checks(spi_engine *e, const char *pa, const char *pd) {
  char got[SPI_ID_MAX];
  int32_t st = 0;
  CHECK(spi_node_get_state(e, "i-aaa", 5, &st) == SPI_OK &&
        st == SPI_NODE_NOTICED);
  for (int i = 0; i < 20; i++) {
    route_to(e, pa, got, sizeof got);
    CHECK(got[0] && strcmp(got, "spot-a") != 0);
  }
  /* The pool (g6, z3) cools because A said so: B runs nothing on i-xxx. */
  const spi_replica_set *set = atomic_load(&e->registry.set);
  int64_t until = 0;
  for (size_t i = 0; set && i < set->n; i++)
    if (!strcmp(set->r[i].id, "spot-d"))
      until = atomic_load(&e->registry.slots[set->r[i].slot].cooldown_until_ns);
  CHECK(until > spi__engine_now(e) + 100 * SEC);
  route_to(e, pd, got, sizeof got);
  CHECK(strcmp(got, "spot-d") != 0);
  spi_fleet_stats s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  CHECK(spi_engine_fleet_stats(e, &s) == SPI_OK);
  CHECK(s.configured && s.published == 0 && s.applied >= 3 &&
        s.malformed == 0);
  return 0;
}

/* B: configured by JSON alone; says "ready" once it reads the stream,
 * then after "go" ticks once and checks. Exit status 0 when all held. */
static int child(int port, const char *prefix, int rfd, int wfd) {
  spi_engine *e = NULL;
  if (spi_engine_new(&e, NULL) != SPI_OK) return 2;
  char cfg[512];
  bus_config(cfg, sizeof cfg, port, prefix, NULL);
  if (spi_engine_configure(e, cfg, strlen(cfg)) != SPI_OK) {
    fprintf(stderr, "B: configure: %s\n", spi_engine_errmsg(e));
    return 2;
  }
  add(e, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "z1");
  add(e, "spot-b", "i-bbb", SPI_POOL_SPOT, "g5.xlarge", "z2");
  add(e, "spot-d", "i-ddd", SPI_POOL_SPOT, "g6.xlarge", "z3");
  char pa[32], pd[32];
  CHECK(prompt_for(e, "spot-a", pa, sizeof pa));
  CHECK(prompt_for(e, "spot-d", pd, sizeof pd));
  CHECK(spi_engine_tick(e) == SPI_OK); /* polls once: nothing yet */
  char buf[8];
  CHECK(write(wfd, "ready\n", 6) == 6);
  CHECK(read(rfd, buf, 3) == 3 && !memcmp(buf, "go\n", 3));
  int rc = spi_engine_tick(e); /* one tick */
  if (rc != SPI_OK) fprintf(stderr, "B: tick: %s\n", spi_engine_errmsg(e));
  CHECK(rc == SPI_OK);
  rc = child_checks(e, pa, pd);
  spi_engine_free(e);
  return rc;
}

/* ------------------------------------------------------------ process A */

/* Start B: this program again, with the library's directory on the loader
 * path so its engine can load libspotinfer_redis by itself. */
static pid_t spawn(const char *self, int port, const char *prefix, int rfd,
                   int wfd) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  const char *lib = getenv("SPI_REDIS_LIBRARY");
  if (lib) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", lib);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    setenv("LD_LIBRARY_PATH", dir, 1);
  }
  char p[16], r[16], w[16];
  snprintf(p, sizeof p, "%d", port);
  snprintf(r, sizeof r, "%d", rfd);
  snprintf(w, sizeof w, "%d", wfd);
  execl(self, self, "--child", p, prefix, r, w, (char *)NULL);
  _exit(3);
}

static char self_path[4096];

static void test_two_processes(void **st) {
  (void)st;
  int port = server_port();
  if (!port) skip();
  char prefix[64];
  snprintf(prefix, sizeof prefix, "spi:test:bus:%d:", (int)getpid());
  int to_b[2], from_b[2];
  assert_int_equal(pipe(to_b), 0);
  assert_int_equal(pipe(from_b), 0);
  pid_t pid = spawn(self_path, port, prefix, to_b[0], from_b[1]);
  assert_true(pid > 0);
  char cfg[512];
  bus_config(cfg, sizeof cfg, port, prefix, NULL);
  spi_engine *a = bus_engine(cfg);
  add(a, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "z1");
  add(a, "spot-x", "i-xxx", SPI_POOL_SPOT, "g6.xlarge", "z3");
  char buf[8] = "";
  assert_int_equal(read(from_b[0], buf, 6), 6);
  assert_memory_equal(buf, "ready\n", 6);
  spi_notice n1 = notice("i-aaa", "aws:i-aaa"), n2 = notice("i-xxx", "aws:i-xxx");
  size_t np = 0;
  assert_int_equal(spi_engine_notice(a, &n1, NULL, 0, &np), SPI_OK);
  assert_int_equal(spi_engine_notice(a, &n2, NULL, 0, &np), SPI_OK);
  spi_fleet_stats s = fb_stats(a);
  assert_int_equal(s.published, 4); /* two notices, two cooldowns */
  assert_int_equal(s.publish_failed, 0);
  assert_int_equal(write(to_b[1], "go\n", 3), 3);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  /* A reads its own messages back and applies none of them again. */
  assert_int_equal(spi_engine_tick(a), SPI_OK);
  s = fb_stats(a);
  assert_int_equal(s.received, 4);
  assert_int_equal(s.applied, 0);
  spi_engine_free(a);
  close(to_b[0]), close(to_b[1]), close(from_b[0]), close(from_b[1]);
}

/* An engine reads from where it was configured, not from its first poll:
 * with lookback_ms 0, what another engine publishes in between reaches it
 * even when that first poll comes in a later second of the server's clock
 * (the start once fell back to the whole second, and messages of the
 * second before were missed). */
static void test_reads_from_configure(void **st) {
  (void)st;
  int port = server_port();
  if (!port) skip();
  char prefix[64], cfg[512];
  snprintf(prefix, sizeof prefix, "spi:test:bus-start:%d:", (int)getpid());
  bus_config(cfg, sizeof cfg, port, prefix, NULL);
  spi_engine *a = bus_engine(cfg), *b = bus_engine(cfg);
  add(a, "spot-s", "i-sss", SPI_POOL_SPOT, "g5.xlarge", "z1");
  add(b, "spot-s", "i-sss", SPI_POOL_SPOT, "g5.xlarge", "z1");
  spi_notice n = notice("i-sss", "start");
  size_t np = 0;
  assert_int_equal(spi_engine_notice(b, &n, NULL, 0, &np), SPI_OK);
  assert_int_equal(fb_stats(b).published, 2); /* the notice, a cooldown */
  usleep(1100 * 1000);
  assert_int_equal(spi_engine_tick(a), SPI_OK);
  spi_fleet_stats s = fb_stats(a);
  assert_int_equal(s.received, 2);
  assert_int_equal(s.applied + s.duplicates, 2); /* the notice cools too */
  assert_int_equal(s.malformed, 0);
  assert_int_equal(fb_state(a, "i-sss"), SPI_NODE_NOTICED);
  spi_engine_free(a);
  spi_engine_free(b);
}

/* Drop every client connection of the server (from a connection of our
 * own, which goes too). */
static void kill_clients(int port) {
  char json[64], err[256] = "";
  snprintf(json, sizeof json, "{\"address\":\"127.0.0.1:%d\"}", port);
  spr_config c;
  assert_int_equal(spr_config_parse(json, strlen(json), "t", NULL, &c, err,
                                    sizeof err),
                   SPI_OK);
  spr_conn *k = NULL;
  assert_int_equal(spr_conn_new(&c, &k, err, sizeof err), SPI_OK);
  const char *argv[] = {"CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"};
  size_t lens[6];
  for (int i = 0; i < 6; i++) lens[i] = strlen(argv[i]);
  redisReply *r = NULL;
  assert_int_equal(spr_conn_command(k, 6, argv, lens, &r, err, sizeof err),
                   SPI_OK);
  assert_int_equal(r->type, REDIS_REPLY_INTEGER);
  assert_true(r->integer >= 2);
  freeReplyObject(r);
  spr_conn_free(k);
}

static void test_survives_a_dropped_connection(void **st) {
  (void)st;
  int port = server_port();
  if (!port) skip();
  char prefix[64], cfg[512];
  snprintf(prefix, sizeof prefix, "spi:test:bus-drop:%d:", (int)getpid());
  bus_config(cfg, sizeof cfg, port, prefix,
             "\"reconnect_min_ms\":1,\"reconnect_max_ms\":5");
  spi_engine *a = bus_engine(cfg), *b = bus_engine(cfg);
  assert_int_equal(spi_engine_tick(b), SPI_OK); /* B has polled: connected */
  kill_clients(port);
  /* A's publish meets the dead connection or reconnects; either way the
   * notice reaches the stream by A's next tick. */
  spi_notice n = notice("i-drop", "drop");
  size_t np = 0;
  assert_int_equal(spi_engine_notice(a, &n, NULL, 0, &np), SPI_OK);
  int a_ok = 0, b_seen = 0;
  for (int i = 0; i < 200 && !(a_ok && b_seen); i++) {
    usleep(10000);
    a_ok = spi_engine_tick(a) == SPI_OK && fb_stats(a).pending == 0;
    spi_engine_tick(b); /* the first may fail: the connection is gone */
    b_seen = fb_state(b, "i-drop") == SPI_NODE_NOTICED;
  }
  assert_true(a_ok);
  assert_true(b_seen);
  spi_fleet_stats s = fb_stats(b);
  assert_int_equal(s.applied, 1);
  assert_int_equal(s.malformed, 0);
  spi_engine_free(a);
  spi_engine_free(b);
}

static void test_refused_login(void **st) {
  (void)st;
  int port = server_port();
  if (!port) skip();
  char cfg[512];
  bus_config(cfg, sizeof cfg, port, "spi:test:auth:",
             "\"username\":\"nobody\",\"password\":\"wrong\"");
  spi_engine *e = engine_new();
  register_bus(e);
  int rc = spi_engine_configure(e, cfg, strlen(cfg));
  assert_int_not_equal(rc, SPI_OK);
  const char *msg = spi_engine_errmsg(e);
  if (!strstr(msg, "WRONGPASS") && !strstr(msg, "AUTH"))
    fail_msg("message: %s", msg);
  /* Bad options of the bus itself name their path. */
  bus_config(cfg, sizeof cfg, port, "p:", "\"max_len\":3");
  assert_int_equal(spi_engine_configure(e, cfg, strlen(cfg)), SPI_ERANGE);
  assert_non_null(strstr(spi_engine_errmsg(e), "module_config.redis.max_len"));
  spi_engine_free(e);
}

/* ------------------------------------------------ a poll's one bound */

/* The bus module itself, an instance of it through proxy p (a state of its
 * own: no cursor yet), 500 ms to connect and 500 for a call. */
typedef struct direct_bus {
  spi_fleet_bus_module m;
  void *state, *inst;
  spi_module_destroy_fn destroy;
} direct_bus;

static void direct_open(direct_bus *b, const rp_proxy *p) {
  memset(b, 0, sizeof *b);
  assert_int_equal(spi_redis_get_module(SPI_MODULE_FLEET_BUS, "redis", &b->m,
                                        sizeof b->m, &b->state, &b->destroy),
                   SPI_OK);
  char json[384], err[256] = "";
  snprintf(json, sizeof json,
           "{\"address\":\"127.0.0.1:%d\",\"key_prefix\":\"spi:test:bus-dl:"
           "%d:\",\"lookback_ms\":0,\"connect_timeout_ms\":500,"
           "\"timeout_ms\":500,\"reconnect_min_ms\":0,\"reconnect_max_ms\":0}",
           p->port, (int)getpid());
  int rc = b->m.configure(b->state, json, strlen(json), &b->inst, err,
                          sizeof err);
  if (rc != SPI_OK) print_error("configure: %s\n", err);
  assert_int_equal(rc, SPI_OK);
}

static void direct_close(direct_bus *b) {
  b->m.release(b->state, b->inst);
  b->destroy(b->state);
}

static int count_msg(void *ud, const char *msg, size_t len) {
  (void)msg;
  (void)len;
  ++*(int *)ud;
  return SPI_OK;
}

/* One poll; its status, and in *took how long it took (ms). */
static int timed_poll(direct_bus *b, int64_t *took, char *err, size_t cap) {
  int n = 0;
  int64_t t0 = spr_now_ms();
  int rc = b->m.poll(b->state, b->inst, 16, count_msg, &n, err, cap);
  *took = spr_now_ms() - t0;
  return rc;
}

static void expect_poll(direct_bus *b, int status, int64_t lo, int64_t hi,
                        const char *what) {
  char err[256] = "";
  int64_t took = 0;
  int rc = timed_poll(b, &took, err, sizeof err);
  if (rc != status || took < lo || took > hi)
    print_error("%s: %d in %lld ms (want %d in %lld..%lld): %s\n", what, rc,
                (long long)took, status, (long long)lo, (long long)hi, err);
  assert_int_equal(rc, status);
  assert_true(took >= lo && took <= hi);
}

/* A poll's steps share one deadline, taken at its start: connecting (at
 * most connect_timeout_ms), the server's time (TIME, once, when configure
 * could not ask), the read (XREAD); so a poll ends within timeout_ms, or
 * connect_timeout_ms + timeout_ms when it connects, whatever its steps,
 * and the time connecting did not use goes to the steps after it. */
static void test_poll_has_one_bound(void **st) {
  rp_proxy *p = *st;
  if (!p) skip();
  direct_bus b;
  /* Configure does not get through (700 ms a round trip): no cursor. */
  rp_set_delay(p, 700);
  direct_open(&b, p);
  usleep(300000); /* the proxy is done holding configure's reply back */
  /* 250 ms a round trip: connecting, TIME and XREAD (750 ms) within the
   * 1000 of a poll that connects. (Each upper bound below allows 150 ms
   * for a loaded machine; a poll bounded step by step instead would take
   * 1,400 ms in the late case.) */
  rp_set_delay(p, 250);
  expect_poll(&b, SPI_OK, 700, 1150, "connect, TIME, XREAD");
  /* Connected: one round trip within 500. */
  expect_poll(&b, SPI_OK, 200, 650, "XREAD");
  /* 700 ms: the read is late, the poll ends by its 500. */
  rp_set_delay(p, 700);
  expect_poll(&b, SPI_EIO, 450, 650 + 150, "late XREAD");
  usleep(300000); /* the proxy is done holding that reply back */
  /* 350 ms, reconnecting: the connect and the read (700) within 1000. */
  rp_set_delay(p, 350);
  expect_poll(&b, SPI_OK, 650, 1150, "reconnect, XREAD");
  direct_close(&b);
  /* No cursor again, 450 ms: connecting, TIME and XREAD would take 1350;
   * the poll ends by its 1000. */
  rp_set_delay(p, 700);
  direct_open(&b, p);
  usleep(300000); /* the proxy is done holding configure's reply back */
  rp_set_delay(p, 450);
  expect_poll(&b, SPI_EIO, 950, 1150 + 150, "connect, TIME, late XREAD");
  usleep(500000);
  /* The cursor was fixed by that TIME: the next poll connects and reads. */
  rp_set_delay(p, 350);
  expect_poll(&b, SPI_OK, 650, 1150, "reconnect, XREAD");
  rp_set_delay(p, 0);
  direct_close(&b);
}

int main(int argc, char **argv) {
  if (argc == 6 && !strcmp(argv[1], "--child"))
    return child(atoi(argv[2]), argv[3], atoi(argv[4]), atoi(argv[5]));
  /* This program's file (read now: under valgrind, /proc/self/exe itself
   * would name the tool). */
  ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
  if (n <= 0) snprintf(self_path, sizeof self_path, "%s", argv[0]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_two_processes),
      cmocka_unit_test(test_reads_from_configure),
      cmocka_unit_test(test_survives_a_dropped_connection),
      cmocka_unit_test(test_refused_login),
      cmocka_unit_test_setup_teardown(test_poll_has_one_bound, rp_setup,
                                      rp_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
