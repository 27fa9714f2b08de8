/*
 * redis_conn.h - the connection of libspotinfer_redis to one Redis server:
 * its configuration (parsed from JSON and checked), a blocking client with a
 * deadline on every command, TLS and AUTH, and reconnection by itself.
 *
 * Every module of libspotinfer_redis opens its own spr_conn from the same
 * configuration object (spr_config_parse), so "address", "key_prefix",
 * "timeout_ms", TLS and AUTH mean the same thing everywhere. Nothing here is
 * exported from the library.
 *
 * Errors: a command that cannot be written or answered in time (refused,
 * reset, timed out, TLS failure, a server that refuses for now:
 * spr_reply_transient) returns SPI_EIO, and one whose AUTH or SELECT the
 * server refuses returns SPI_EINVAL, with a message
 * naming the server and what failed, and closes the connection; the next
 * command reconnects, but not before a backoff (reconnect_min_ms doubling
 * up to reconnect_max_ms) has passed since the last failure: until then
 * commands fail at once with the last error, so an unreachable server costs
 * a caller one timeout per backoff period, not one per call. An error reply
 * from a healthy server is returned as the reply (type REDIS_REPLY_ERROR).
 *
 * An spr_conn is not thread-safe; its owner serialises calls.
 */
#ifndef SPI_REDIS_CONN_H
#define SPI_REDIS_CONN_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#define SPR_HOST_MAX 255
#define SPR_PATH_MAX 1023
#define SPR_NAME_MAX 127
#define SPR_SECRET_MAX 511

typedef struct spr_config {
  char host[SPR_HOST_MAX + 1];   /* "address" host part, or "" for a socket */
  int port;                      /* "address" port part (default 6379) */
  char unix_path[108];           /* "address" "unix:/path" */
  char key_prefix[SPR_NAME_MAX + 1];
  char consumer[SPR_NAME_MAX + 1];
  char group[SPR_NAME_MAX + 1];
  int consumer_idle_ms;          /* other consumers idle longer: removed */
  int db;
  int connect_timeout_ms;
  int timeout_ms;
  int reconnect_min_ms;
  int reconnect_max_ms;
  char username[SPR_NAME_MAX + 1];
  char password[SPR_SECRET_MAX + 1];
  int tls;                       /* 0/1 */
  int tls_verify;                /* 0/1: check the server's certificate */
  char tls_ca_file[SPR_PATH_MAX + 1];
  char tls_cert_file[SPR_PATH_MAX + 1];
  char tls_key_file[SPR_PATH_MAX + 1];
  char tls_server_name[SPR_HOST_MAX + 1];
} spr_config;

/* Parse and check a configuration object (JSON text, len bytes): every key
 * is known, of its type and in its range; absent keys take their defaults
 * (address 127.0.0.1:6379, key_prefix "spotinfer:", consumer from the host
 * name and process id, group "spotinfer", consumer_idle_ms 3600000,
 * timeout_ms 1000, ...). Keys that
 * only one module reads are passed in extra_keys (NULL-terminated list of
 * names) so the check accepts them; that module reads them itself. err gets
 * "<path>.<key>: what is wrong" under the prefix path.
 * Errors: SPI_EPARSE, SPI_ETYPE, SPI_EUNKNOWN, SPI_ERANGE, SPI_EINVAL. */
int spr_config_parse(const char *json, size_t len, const char *path,
                     const char *const *extra_keys, spr_config *out,
                     char *err, size_t cap);

/* "host:port" or "unix:/path", for messages. */
const char *spr_config_address(const spr_config *c, char *buf, size_t cap);

typedef struct spr_conn spr_conn;

/* A connection (not yet connected: the first command connects).
 * Errors: SPI_ENOMEM, SPI_EINVAL (TLS files unusable), SPI_ENOTSUP (TLS
 * asked for in a build without it); err says which. */
int spr_conn_new(const spr_config *c, spr_conn **out, char *err, size_t cap);
void spr_conn_free(spr_conn *c);

/* The deadline (spr_now_ms() clock) of a call that starts now: timeout_ms
 * from now, and connect_timeout_ms more when it has to connect first. A
 * call of several steps (connecting, setting the connection up, its own
 * commands) computes it once, at its start: the call as a whole ends by
 * it. Each step gets what remains of it, or less: connecting takes at
 * most connect_timeout_ms, and an owner may bound its other steps too
 * (the replay store gives its setup connect_timeout_ms from the start and
 * its script timeout_ms from when it is sent). */
int64_t spr_conn_deadline(const spr_conn *c);

/* Connect now; SPI_OK when connected already. After the TCP connect (and
 * TLS handshake), AUTH and SELECT when set and a PING go in one round trip,
 * their replies checked in that order. Connecting takes at most
 * connect_timeout_ms, and ends by deadline.
 * SPI_EINVAL when the server answered and refused (AUTH, SELECT), SPI_EIO
 * when it could not be reached or refused for now (spr_reply_transient).
 * spr_conn_open: the deadline is connect_timeout_ms from now. */
int spr_conn_open_by(spr_conn *c, int64_t deadline, char *err, size_t cap);
int spr_conn_open(spr_conn *c, char *err, size_t cap);

/* One command: its arguments (argv[0..argc)) and their lengths. */
typedef struct spr_cmd {
  int argc;
  const char **argv;
  const size_t *lens;
} spr_cmd;

/* Connect if needed, then write the n commands at once and read their n
 * replies (one round trip), all by deadline. out[i] gets the reply of
 * cmds[i] (free each with freeReplyObject), which may be an error reply.
 * On failure out holds no reply. Errors: SPI_EIO (not connected, timed
 * out, connection lost: err says which), SPI_ENOMEM, and spr_conn_open's.
 * Nothing is written when deadline has passed already (SPI_EIO, and the
 * connection stays: nothing is owed on it). */
int spr_conn_pipeline(spr_conn *c, int n, const spr_cmd *cmds,
                      redisReply **out, int64_t deadline, char *err,
                      size_t cap);

/* spr_conn_pipeline for the n commands (at most SPR_SETUP_MAX) that set a
 * connection up: when it has to connect, they go in the handshake's round
 * trip, after AUTH, SELECT and the PING (checked first, in that order: a
 * refused AUTH or SELECT is SPI_EINVAL naming it, whatever the commands
 * after it got), so connecting and setting up take one round trip. Until
 * the server has accepted this connection's AUTH and SELECT once, they
 * wait for those replies (one round trip more), so a wrong password or a
 * db the server does not have does not have them run as the default user
 * or in db 0; every reconnect after that takes one round trip (a password
 * changed on the server since, or a server that lost the db, is then
 * found only after they ran). Connecting and the setup end within
 * connect_timeout_ms, and everything by deadline. */
#define SPR_SETUP_MAX 16
int spr_conn_setup(spr_conn *c, int n, const spr_cmd *cmds, redisReply **out,
                   int64_t deadline, char *err, size_t cap);

/* One command (spr_conn_pipeline with n = 1). spr_conn_command: the
 * deadline is spr_conn_deadline(c), taken when it is called. */
int spr_conn_command_by(spr_conn *c, int argc, const char **argv,
                        const size_t *lens, redisReply **out,
                        int64_t deadline, char *err, size_t cap);
int spr_conn_command(spr_conn *c, int argc, const char **argv,
                     const size_t *lens, redisReply **out, char *err,
                     size_t cap);

/* 1 when r is an error reply of a server that refuses for now and will
 * take the same command later (loading its data after a restart, busy in
 * a script, a replica or cluster between primaries): it refused before
 * running anything, so the caller reports SPI_EIO, which may be repeated,
 * and a queue falls back to its journal. */
int spr_reply_transient(const redisReply *r);

/* Commands that have failed with SPI_EIO, and connections made, since the
 * spr_conn was created. */
uint64_t spr_conn_failures(const spr_conn *c);
uint64_t spr_conn_connects(const spr_conn *c);
/* 1 while connected. */
int spr_conn_up(const spr_conn *c);

/* Milliseconds on a monotonic clock. */
int64_t spr_now_ms(void);

#endif /* SPI_REDIS_CONN_H */
