/*
 * test_redis_conn.c - libspotinfer_redis's connection layer: configuration
 * parsing and checks, then (when SPI_REDIS_PORT names a running server on
 * 127.0.0.1, as the `redis` stage of scripts/test.sh provides) commands,
 * AUTH with an ACL user and a wrong password, an unreachable server and the
 * reconnect backoff, and (through a proxy that holds replies back,
 * redis_proxy.h) AUTH, SELECT, the PING and the setup in one round trip;
 * TLS when tests/redis/tls.sh runs it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_redis.h"
#include "redis_conn.h"
#include "redis_proxy.h"

static int parse(const char *json, spr_config *c, char *err, size_t cap) {
  return spr_config_parse(json, strlen(json), "replay.store_config", NULL, c,
                          err, cap);
}

static void expect_error(const char *json, int status, const char *part) {
  spr_config c;
  char err[256] = "";
  int rc = parse(json, &c, err, sizeof err);
  if (rc != status || !strstr(err, part))
    print_error("%s: got %d \"%s\", want %d with \"%s\"\n", json, rc, err,
                status, part);
  assert_int_equal(rc, status);
  assert_non_null(strstr(err, part));
}

static void test_config_defaults(void **st) {
  (void)st;
  spr_config c;
  char err[256] = "";
  assert_int_equal(parse("{}", &c, err, sizeof err), SPI_OK);
  assert_string_equal(c.host, "127.0.0.1");
  assert_int_equal(c.port, 6379);
  assert_string_equal(c.key_prefix, "spotinfer:");
  assert_string_equal(c.group, "spotinfer");
  assert_true(strlen(c.consumer) > 0);
  assert_int_equal(c.timeout_ms, 1000);
  assert_int_equal(c.consumer_idle_ms, 3600000);
  assert_int_equal(c.tls, 0);
  assert_int_equal(parse("{\"address\":\"redis.local:7000\",\"key_prefix\":"
                         "\"p:\",\"consumer\":\"a\",\"timeout_ms\":50,"
                         "\"username\":\"u\",\"password\":\"pw\",\"db\":2,"
                         "\"tls\":{\"server_name\":\"r.example\"}}",
                         &c, err, sizeof err),
                   SPI_OK);
  assert_string_equal(c.host, "redis.local");
  assert_int_equal(c.port, 7000);
  assert_string_equal(c.consumer, "a");
  assert_int_equal(c.timeout_ms, 50);
  assert_int_equal(c.db, 2);
  assert_int_equal(c.tls, 1);
  assert_int_equal(c.tls_verify, 1);
  assert_string_equal(c.tls_server_name, "r.example");
  char buf[300];
  assert_string_equal(spr_config_address(&c, buf, sizeof buf),
                      "redis.local:7000");
  assert_int_equal(parse("{\"address\":\"[::1]:6380\"}", &c, err, sizeof err),
                   SPI_OK);
  assert_string_equal(spr_config_address(&c, buf, sizeof buf), "[::1]:6380");
  assert_int_equal(parse("{\"address\":\"unix:/tmp/r.sock\"}", &c, err,
                         sizeof err),
                   SPI_OK);
  assert_string_equal(c.unix_path, "/tmp/r.sock");
  /* A module's own keys pass when it names them. */
  const char *extra[] = {"lanes", NULL};
  assert_int_equal(spr_config_parse("{\"lanes\":3}", 11, "x", extra, &c, err,
                                    sizeof err),
                   SPI_OK);
}

static void test_config_errors(void **st) {
  (void)st;
  expect_error("{\"adress\":\"x\"}", SPI_EUNKNOWN,
               "replay.store_config.adress: unknown key");
  expect_error("{\"address\":7}", SPI_ETYPE, "address: must be a string");
  expect_error("{\"address\":\"h:0\"}", SPI_ERANGE, "port must be 1..65535");
  expect_error("{\"address\":\"h:70000\"}", SPI_ERANGE, "port");
  expect_error("{\"address\":\"h:12x\"}", SPI_ERANGE, "port");
  expect_error("{\"address\":\"::1\"}", SPI_EINVAL, "[addr]:port");
  expect_error("{\"address\":\"\"}", SPI_ERANGE, "address: must not be empty");
  expect_error("{\"timeout_ms\":0}", SPI_ERANGE, "timeout_ms: 0 is not in");
  expect_error("{\"timeout_ms\":1.5}", SPI_ETYPE, "must be an integer");
  expect_error("{\"consumer_idle_ms\":999}", SPI_ERANGE,
               "consumer_idle_ms: 999 is not in [1000, 604800000]");
  expect_error("{\"reconnect_min_ms\":500,\"reconnect_max_ms\":100}",
               SPI_ERANGE, "reconnect_max_ms");
  expect_error("{\"username\":\"u\"}", SPI_EINVAL, "needs a password");
  expect_error("{\"tls\":true}", SPI_ETYPE, "tls: must be an object");
  expect_error("{\"tls\":{\"cafile\":\"x\"}}", SPI_EUNKNOWN,
               "tls.cafile: unknown key");
  expect_error("{\"tls\":{\"cert_file\":\"x\"}}", SPI_EINVAL,
               "cert_file and key_file go together");
  expect_error("{\"address\":\"unix:/x\",\"tls\":{}}", SPI_EINVAL,
               "not over a unix socket");
  expect_error("[1]", SPI_ETYPE, "must be an object");
  expect_error("{", SPI_EPARSE, "not valid JSON");
}

/* ------------------------------------------------------- with a server */

static int server_port(void) {
  const char *p = getenv("SPI_REDIS_PORT");
  return p && *p ? atoi(p) : 0;
}

static spr_conn *conn_to(const char *json) {
  spr_config c;
  char err[256] = "";
  assert_int_equal(parse(json, &c, err, sizeof err), SPI_OK);
  spr_conn *conn = NULL;
  int rc = spr_conn_new(&c, &conn, err, sizeof err);
  if (rc != SPI_OK) print_error("conn: %s\n", err);
  assert_int_equal(rc, SPI_OK);
  return conn;
}

static int cmd(spr_conn *c, redisReply **r, char *err, size_t cap, int argc,
               ...) {
  const char *argv[8];
  size_t lens[8];
  va_list ap;
  va_start(ap, argc);
  for (int i = 0; i < argc; i++) {
    argv[i] = va_arg(ap, const char *);
    lens[i] = strlen(argv[i]);
  }
  va_end(ap);
  return spr_conn_command(c, argc, argv, lens, r, err, cap);
}

static void test_commands(void **st) {
  (void)st;
  int port = server_port();
  if (!port) skip();
  char json[256], err[256] = "";
  snprintf(json, sizeof json, "{\"address\":\"127.0.0.1:%d\"}", port);
  spr_conn *c = conn_to(json);
  redisReply *r = NULL;
  assert_int_equal(cmd(c, &r, err, sizeof err, 3, "SET", "spi:test:conn", "v"),
                   SPI_OK);
  freeReplyObject(r);
  assert_int_equal(cmd(c, &r, err, sizeof err, 2, "GET", "spi:test:conn"),
                   SPI_OK);
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  assert_string_equal(r->str, "v");
  freeReplyObject(r);
  /* An error reply is a reply, not a broken connection. */
  assert_int_equal(cmd(c, &r, err, sizeof err, 2, "NOSUCHCOMMAND", "x"),
                   SPI_OK);
  assert_int_equal(r->type, REDIS_REPLY_ERROR);
  freeReplyObject(r);
  assert_true(spr_conn_up(c));
  assert_int_equal(spr_conn_connects(c), 1);
  /* Several commands in one round trip: the replies in order, an error
   * reply among them. */
  const char *a0[] = {"SET", "spi:test:conn", "w"};
  const char *a1[] = {"NOSUCHCOMMAND"};
  const char *a2[] = {"GET", "spi:test:conn"};
  size_t l0[] = {3, 13, 1}, l1[] = {13}, l2[] = {3, 13};
  spr_cmd cmds[] = {{3, a0, l0}, {1, a1, l1}, {2, a2, l2}};
  redisReply *rs[3];
  assert_int_equal(spr_conn_pipeline(c, 3, cmds, rs, spr_conn_deadline(c),
                                     err, sizeof err),
                   SPI_OK);
  assert_int_equal(rs[0]->type, REDIS_REPLY_STATUS);
  assert_int_equal(rs[1]->type, REDIS_REPLY_ERROR);
  assert_int_equal(rs[2]->type, REDIS_REPLY_STRING);
  assert_string_equal(rs[2]->str, "w");
  for (int i = 0; i < 3; i++) freeReplyObject(rs[i]);
  /* A deadline already past fails the call before anything is written:
   * the connection stays up, nothing owed on it, and the next command's
   * reply is its own (it was closed for nothing, and reconnected). */
  assert_int_equal(spr_conn_command_by(c, 2, a2, l2, &r, spr_now_ms() - 1,
                                       err, sizeof err),
                   SPI_EIO);
  assert_null(r);
  assert_non_null(strstr(err, "timed out before the write"));
  assert_true(spr_conn_up(c));
  assert_int_equal(cmd(c, &r, err, sizeof err, 3, "SET", "spi:test:conn", "x"),
                   SPI_OK);
  assert_int_equal(r->type, REDIS_REPLY_STATUS);
  freeReplyObject(r);
  assert_int_equal(spr_conn_connects(c), 1);
  spr_conn_free(c);
  /* Commands that set a connection up go in the round trip of the
   * handshake's PING when they connect it, and are a pipeline on one that
   * is up. */
  c = conn_to(json);
  assert_int_equal(spr_conn_setup(c, 3, cmds, rs, spr_conn_deadline(c), err,
                                  sizeof err),
                   SPI_OK);
  assert_true(spr_conn_up(c));
  assert_int_equal(spr_conn_connects(c), 1);
  assert_int_equal(rs[0]->type, REDIS_REPLY_STATUS);
  assert_int_equal(rs[1]->type, REDIS_REPLY_ERROR);
  assert_string_equal(rs[2]->str, "w");
  for (int i = 0; i < 3; i++) freeReplyObject(rs[i]);
  assert_int_equal(spr_conn_setup(c, 1, cmds + 2, rs, spr_conn_deadline(c),
                                  err, sizeof err),
                   SPI_OK);
  assert_string_equal(rs[0]->str, "w");
  freeReplyObject(rs[0]);
  assert_int_equal(spr_conn_connects(c), 1);
  assert_int_equal(cmd(c, &r, err, sizeof err, 2, "DEL", "spi:test:conn"),
                   SPI_OK);
  freeReplyObject(r);
  spr_conn_free(c);
}

/* Error replies of a server that refuses for now are told from those of
 * one that refuses the command: the first are an outage (SPI_EIO). */
static void test_transient_replies(void **st) {
  (void)st;
  static const struct {
    const char *text;
    int transient;
  } cases[] = {
      {"LOADING Redis is loading the dataset in memory", 1},
      {"BUSY Redis is busy running a script.", 1},
      {"MASTERDOWN Link with MASTER is down", 1},
      {"TRYAGAIN Multiple keys request during rehashing", 1},
      {"READONLY You can't write against a read only replica.", 1},
      {"CLUSTERDOWN The cluster is down", 1},
      {"LOADINGX not a code", 0},
      {"WRONGPASS invalid username-password pair", 0},
      {"NOSCRIPT No matching script", 0},
      {"ERR unknown command", 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    redisReply r;
    memset(&r, 0, sizeof r);
    r.type = REDIS_REPLY_ERROR;
    r.str = (char *)cases[i].text;
    r.len = strlen(cases[i].text);
    assert_int_equal(spr_reply_transient(&r), cases[i].transient);
  }
  redisReply s;
  memset(&s, 0, sizeof s);
  s.type = REDIS_REPLY_STATUS;
  s.str = (char *)"LOADING";
  assert_int_equal(spr_reply_transient(&s), 0);
}

static void test_auth(void **st) {
  (void)st;
  int port = server_port();
  if (!port) skip();
  char json[256], err[256] = "";
  snprintf(json, sizeof json, "{\"address\":\"127.0.0.1:%d\"}", port);
  spr_conn *admin = conn_to(json);
  redisReply *r = NULL;
  assert_int_equal(cmd(admin, &r, err, sizeof err, 7, "ACL", "SETUSER",
                       "spitest", "on", ">right-pw", "~*", "+@all"),
                   SPI_OK);
  assert_int_equal(r->type, REDIS_REPLY_STATUS);
  freeReplyObject(r);
  snprintf(json, sizeof json,
           "{\"address\":\"127.0.0.1:%d\",\"username\":\"spitest\","
           "\"password\":\"wrong-pw\"}",
           port);
  spr_conn *bad = conn_to(json);
  int rc = spr_conn_open(bad, err, sizeof err);
  assert_int_equal(rc, SPI_EINVAL);
  assert_non_null(strstr(err, "AUTH refused"));
  assert_non_null(strstr(err, "WRONGPASS"));
  /* The secret is not in the message. */
  assert_null(strstr(err, "wrong-pw"));
  spr_conn_free(bad);
  snprintf(json, sizeof json,
           "{\"address\":\"127.0.0.1:%d\",\"username\":\"spitest\","
           "\"password\":\"right-pw\"}",
           port);
  spr_conn *good = conn_to(json);
  assert_int_equal(spr_conn_open(good, err, sizeof err), SPI_OK);
  spr_conn_free(good);
  assert_int_equal(
      cmd(admin, &r, err, sizeof err, 3, "ACL", "DELUSER", "spitest"), SPI_OK);
  freeReplyObject(r);
  spr_conn_free(admin);
}

/* A connection through proxy p with AUTH (user spislow, password pw) and
 * SELECT db, 500 ms to connect and 500 for a command, no backoff. */
static spr_conn *slow_conn(const rp_proxy *p, const char *pw, int db) {
  char json[384];
  snprintf(json, sizeof json,
           "{\"address\":\"127.0.0.1:%d\",\"username\":\"spislow\","
           "\"password\":\"%s\",\"db\":%d,\"connect_timeout_ms\":500,"
           "\"timeout_ms\":500,\"reconnect_min_ms\":0,"
           "\"reconnect_max_ms\":0}",
           p->port, pw, db);
  return conn_to(json);
}

/* spr_conn_setup on c with SET spi:test:slow in the setup; its status, the
 * reply in *out, and in *took how long it took. */
static int slow_setup(spr_conn *c, redisReply **out, int64_t *took,
                      char *err, size_t cap) {
  const char *a[] = {"SET", "spi:test:slow", "v"};
  size_t l[] = {3, 13, 1};
  spr_cmd set = {3, a, l};
  int64_t t0 = spr_now_ms();
  int rc = spr_conn_setup(c, 1, &set, out, spr_conn_deadline(c), err, cap);
  *took = spr_now_ms() - t0;
  if (rc != SPI_OK) {
    assert_null(*out);
    assert_false(spr_conn_up(c));
  }
  return rc;
}

/* 1 when spi:test:slow exists in db, asked through admin. */
static int slow_key_in(spr_conn *admin, const char *db) {
  const char *sel[] = {"SELECT", db}, *ex[] = {"EXISTS", "spi:test:slow"};
  size_t lsel[] = {6, strlen(db)}, lex[] = {6, 13};
  spr_cmd cmds[] = {{2, sel, lsel}, {2, ex, lex}};
  redisReply *rs[2];
  char err[256] = "";
  assert_int_equal(spr_conn_pipeline(admin, 2, cmds, rs,
                                     spr_conn_deadline(admin), err,
                                     sizeof err),
                   SPI_OK);
  int n = (int)rs[1]->integer;
  for (int i = 0; i < 2; i++) freeReplyObject(rs[i]);
  return n;
}

/* Connecting with AUTH and SELECT takes one round trip after the TCP
 * connect: AUTH, SELECT, the PING and the owner's setup go together (the
 * first time a db is selected, the setup waits for the SELECT's reply: two
 * round trips), and the handshake's replies are checked in order, so a
 * refused AUTH or SELECT is reported as what it is, not as the errors of
 * the commands after it. AUTH and SELECT each took a round trip of their
 * own, all within connect_timeout_ms: a server slower than a third of it
 * could not be connected to at all. */
static void test_one_round_trip_to_connect(void **st) {
  rp_proxy *p = *st;
  if (!p) skip();
  char json[128], err[256] = "";
  snprintf(json, sizeof json, "{\"address\":\"127.0.0.1:%d\"}", server_port());
  spr_conn *admin = conn_to(json);
  redisReply *r = NULL;
  assert_int_equal(cmd(admin, &r, err, sizeof err, 7, "ACL", "SETUSER",
                       "spislow", "on", ">slow-pw", "~*", "+@all"),
                   SPI_OK);
  assert_int_equal(r->type, REDIS_REPLY_STATUS);
  freeReplyObject(r);
  /* 150 ms a round trip, 0.3 of connect_timeout_ms: the first connect (two
   * round trips) is in time, and the SET ran after the SELECT, in db 1. */
  spr_conn *c = slow_conn(p, "slow-pw", 1);
  rp_set_delay(p, 150);
  int64_t took = 0;
  int rc = slow_setup(c, &r, &took, err, sizeof err);
  if (rc != SPI_OK || took >= 500)
    print_error("first connect: %d in %lld ms: %s\n", rc, (long long)took,
                err);
  assert_int_equal(rc, SPI_OK);
  assert_int_equal(r->type, REDIS_REPLY_STATUS);
  freeReplyObject(r);
  assert_true(took < 500);
  assert_int_equal(slow_key_in(admin, "1"), 1);
  assert_int_equal(slow_key_in(admin, "0"), 0);
  /* 300 ms a round trip, 0.6 of it: a reconnect is one round trip. */
  rp_set_delay(p, 0);
  rp_drop_next_reply(p);
  assert_int_equal(cmd(c, &r, err, sizeof err, 1, "PING"), SPI_EIO);
  rp_set_delay(p, 300);
  rc = slow_setup(c, &r, &took, err, sizeof err);
  if (rc != SPI_OK || took >= 500)
    print_error("reconnect: %d in %lld ms: %s\n", rc, (long long)took, err);
  assert_int_equal(rc, SPI_OK);
  freeReplyObject(r);
  assert_true(took < 500);
  assert_int_equal(spr_conn_connects(c), 2);
  spr_conn_free(c);
  /* spr_conn_open alone: AUTH, SELECT and the PING, one round trip. */
  c = slow_conn(p, "slow-pw", 1);
  took = spr_now_ms();
  rc = spr_conn_open(c, err, sizeof err);
  took = spr_now_ms() - took;
  if (rc != SPI_OK) print_error("open: %s\n", err);
  assert_int_equal(rc, SPI_OK);
  assert_true(took < 500);
  spr_conn_free(c);
  rp_set_delay(p, 0);
  /* A db the server does not have: SELECT refused, and the setup did not
   * run in db 0. */
  c = slow_conn(p, "slow-pw", 1 << 20);
  assert_int_equal(slow_setup(c, &r, &took, err, sizeof err), SPI_EINVAL);
  assert_non_null(strstr(err, "SELECT refused"));
  spr_conn_free(c);
  assert_int_equal(slow_key_in(admin, "0"), 0);
  /* A wrong password: AUTH refused, a configuration error, and the setup
   * did not run (the server's default user is open here: it would have
   * run it in db 0). */
  c = slow_conn(p, "wrong-pw", 0);
  assert_int_equal(slow_setup(c, &r, &took, err, sizeof err), SPI_EINVAL);
  assert_non_null(strstr(err, "AUTH refused: WRONGPASS"));
  assert_null(strstr(err, "wrong-pw"));
  spr_conn_free(c);
  assert_int_equal(slow_key_in(admin, "0"), 0);
  assert_int_equal(slow_key_in(admin, "1"), 1);
  assert_int_equal(cmd(admin, &r, err, sizeof err, 2, "DEL", "spi:test:slow"),
                   SPI_OK);
  freeReplyObject(r);
  assert_int_equal(
      cmd(admin, &r, err, sizeof err, 3, "ACL", "DELUSER", "spislow"), SPI_OK);
  freeReplyObject(r);
  spr_conn_free(admin);
}

static void test_unreachable_backoff(void **st) {
  (void)st;
  /* Port 1 on loopback refuses at once. */
  spr_conn *c = conn_to("{\"address\":\"127.0.0.1:1\",\"reconnect_min_ms\":"
                        "200,\"reconnect_max_ms\":400,\"timeout_ms\":100}");
  char err[256] = "";
  redisReply *r = NULL;
  assert_int_equal(cmd(c, &r, err, sizeof err, 1, "PING"), SPI_EIO);
  assert_null(r);
  assert_non_null(strstr(err, "redis 127.0.0.1:1: connect:"));
  /* Within the backoff: fails at once with the last error. */
  int64_t t0 = spr_now_ms();
  assert_int_equal(cmd(c, &r, err, sizeof err, 1, "PING"), SPI_EIO);
  assert_true(spr_now_ms() - t0 < 100);
  assert_non_null(strstr(err, "retrying in"));
  assert_int_equal(spr_conn_failures(c), 1);
  assert_int_equal(spr_conn_connects(c), 0);
  assert_false(spr_conn_up(c));
  spr_conn_free(c);
}

/* TLS, against the TLS-only server tests/redis/tls.sh starts
 * (SPI_REDIS_TLS_PORT, its CA in SPI_REDIS_TLS_CA, a certificate for
 * "localhost"). */
static void test_tls(void **st) {
  (void)st;
  const char *port = getenv("SPI_REDIS_TLS_PORT");
  const char *ca = getenv("SPI_REDIS_TLS_CA");
  if (!port || !ca) skip();
  char json[1024], err[256] = "";
  snprintf(json, sizeof json,
           "{\"address\":\"127.0.0.1:%s\",\"tls\":{\"ca_file\":\"%s\","
           "\"server_name\":\"localhost\"}}",
           port, ca);
  spr_conn *c = conn_to(json);
  redisReply *r = NULL;
  int rc = cmd(c, &r, err, sizeof err, 3, "SET", "spi:test:tls", "v");
  if (rc != SPI_OK) print_error("tls: %s\n", err);
  assert_int_equal(rc, SPI_OK);
  freeReplyObject(r);
  assert_int_equal(cmd(c, &r, err, sizeof err, 2, "GET", "spi:test:tls"),
                   SPI_OK);
  assert_string_equal(r->str, "v");
  freeReplyObject(r);
  spr_conn_free(c);
  /* An address without server_name is checked against the certificate's
   * IP names (it holds IP:127.0.0.1). */
  snprintf(json, sizeof json,
           "{\"address\":\"127.0.0.1:%s\",\"tls\":{\"ca_file\":\"%s\"}}", port, ca);
  c = conn_to(json);
  rc = spr_conn_open(c, err, sizeof err);
  if (rc != SPI_OK) print_error("tls by address: %s\n", err);
  assert_int_equal(rc, SPI_OK);
  spr_conn_free(c);
  /* The certificate is checked: not for this name. */
  snprintf(json, sizeof json,
           "{\"address\":\"127.0.0.1:%s\",\"tls\":{\"ca_file\":\"%s\","
           "\"server_name\":\"redis.example\"}}",
           port, ca);
  c = conn_to(json);
  assert_int_equal(spr_conn_open(c, err, sizeof err), SPI_EIO);
  assert_non_null(strstr(err, "certificate"));
  spr_conn_free(c);
  /* Nor signed by a CA the system trusts. */
  snprintf(json, sizeof json,
           "{\"address\":\"127.0.0.1:%s\",\"tls\":{\"server_name\":"
           "\"localhost\"}}",
           port);
  c = conn_to(json);
  assert_int_equal(spr_conn_open(c, err, sizeof err), SPI_EIO);
  assert_non_null(strstr(err, "certificate"));
  spr_conn_free(c);
  /* Plain text to a TLS port: an error, not a hang. */
  snprintf(json, sizeof json,
           "{\"address\":\"127.0.0.1:%s\",\"connect_timeout_ms\":300}",
           port);
  c = conn_to(json);
  assert_int_equal(spr_conn_open(c, err, sizeof err), SPI_EIO);
  spr_conn_free(c);
  /* A CA file that does not exist fails at creation. */
  spr_config cfg;
  assert_int_equal(parse("{\"tls\":{\"ca_file\":\"/nonexistent/ca.pem\"}}",
                         &cfg, err, sizeof err),
                   SPI_OK);
  spr_conn *none = NULL;
  assert_int_equal(spr_conn_new(&cfg, &none, err, sizeof err), SPI_EINVAL);
  assert_null(none);
  assert_non_null(strstr(err, "ca_file"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_config_defaults),
      cmocka_unit_test(test_config_errors),
      cmocka_unit_test(test_unreachable_backoff),
      cmocka_unit_test(test_transient_replies),
      cmocka_unit_test(test_commands),
      cmocka_unit_test(test_auth),
      cmocka_unit_test_setup_teardown(test_one_round_trip_to_connect,
                                      rp_setup, rp_teardown),
      cmocka_unit_test(test_tls),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
