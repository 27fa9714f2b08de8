/*
 * redis_conn.c - a blocking Redis client with a deadline on every command
 * (redis_conn.h). hiredis does the protocol (formatting commands, parsing
 * replies); the transport is ours: a non-blocking socket driven by poll(),
 * with OpenSSL on top when TLS is configured, so connect, TLS handshake,
 * AUTH and every command are bounded by a deadline: the caller's, one for
 * the whole of its call (spr_conn_deadline), connecting within
 * connect_timeout_ms of it. The handshake (AUTH, SELECT, PING) is one
 * round trip, and the commands that set a connection up may go in it
 * (spr_conn_setup).
 */
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifdef SPR_HAVE_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif

#include "spotinfer/spotinfer.h"
#include "redis_conn.h"

struct spr_conn {
  spr_config cfg;
  char addr[SPR_HOST_MAX + 24];
  int fd;                 /* -1 when not connected */
  redisReader *reader;
  int64_t retry_at_ms;    /* no reconnect before this (monotonic) */
  int64_t backoff_ms;
  int hello_accepted;     /* the server accepted our AUTH and SELECT once */
  char last_err[256];
  uint64_t failures, connects;
#ifdef SPR_HAVE_TLS
  SSL_CTX *ctx;
  SSL *ssl;
#endif
};

static int efail(char *err, size_t cap, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int efail(char *err, size_t cap, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (cap) vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  return rc;
}

int64_t spr_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t spr_conn_failures(const spr_conn *c) { return c->failures; }
uint64_t spr_conn_connects(const spr_conn *c) { return c->connects; }
int spr_conn_up(const spr_conn *c) { return c->fd >= 0; }

/* ------------------------------------------------------------- transport */

/* Wait until fd is readable (want_read) or writable, up to deadline. */
static int wait_fd(int fd, int want_read, int64_t deadline) {
  for (;;) {
    int64_t left = deadline - spr_now_ms();
    if (left <= 0) return ETIMEDOUT;
    struct pollfd p = {.fd = fd, .events = want_read ? POLLIN : POLLOUT};
    int n = poll(&p, 1, (int)left);
    if (n > 0) return 0;
    if (n == 0) return ETIMEDOUT;
    if (errno != EINTR) return errno;
  }
}

#ifdef SPR_HAVE_TLS
static const char *tls_error(char *buf, size_t cap) {
  unsigned long e = ERR_get_error();
  if (!e) {
    snprintf(buf, cap, "TLS error");
  } else {
    ERR_error_string_n(e, buf, cap);
  }
  ERR_clear_error();
  return buf;
}

/* Drive an SSL call that wants I/O: 0 to retry, else an errno. */
static int tls_wait(spr_conn *c, int r, int64_t deadline) {
  int e = SSL_get_error(c->ssl, r);
  if (e == SSL_ERROR_WANT_READ) return wait_fd(c->fd, 1, deadline);
  if (e == SSL_ERROR_WANT_WRITE) return wait_fd(c->fd, 0, deadline);
  if (e == SSL_ERROR_ZERO_RETURN) return ECONNRESET;
  if (e == SSL_ERROR_SYSCALL && errno) return errno;
  return EPROTO;
}
#endif

static int send_all(spr_conn *c, const char *p, size_t n, int64_t deadline) {
  while (n > 0) {
#ifdef SPR_HAVE_TLS
    if (c->ssl) {
      ERR_clear_error();
      int w = SSL_write(c->ssl, p, n > 1 << 30 ? 1 << 30 : (int)n);
      if (w > 0) {
        p += w;
        n -= (size_t)w;
        continue;
      }
      int e = tls_wait(c, w, deadline);
      if (e) return e;
      continue;
    }
#endif
    ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
    } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      int e = wait_fd(c->fd, 0, deadline);
      if (e) return e;
    } else if (w < 0 && errno != EINTR) {
      return errno;
    }
  }
  return 0;
}

/* Read what is there (at least one byte) into buf; *got its count. */
static int recv_some(spr_conn *c, char *buf, size_t cap, size_t *got,
                     int64_t deadline) {
  for (;;) {
#ifdef SPR_HAVE_TLS
    if (c->ssl) {
      ERR_clear_error();
      int r = SSL_read(c->ssl, buf, (int)cap);
      if (r > 0) {
        *got = (size_t)r;
        return 0;
      }
      int e = tls_wait(c, r, deadline);
      if (e) return e;
      continue;
    }
#endif
    ssize_t r = recv(c->fd, buf, cap, 0);
    if (r > 0) {
      *got = (size_t)r;
      return 0;
    }
    if (r == 0) return ECONNRESET;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      int e = wait_fd(c->fd, 1, deadline);
      if (e) return e;
    } else if (errno != EINTR) {
      return errno;
    }
  }
}

static void close_conn(spr_conn *c) {
#ifdef SPR_HAVE_TLS
  if (c->ssl) {
    SSL_free(c->ssl);
    c->ssl = NULL;
  }
#endif
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  if (c->reader) redisReaderFree(c->reader);
  c->reader = NULL;
}

/* A non-blocking socket connected to one address, or -1 with *e set. */
static int connect_addr(const struct sockaddr *sa, socklen_t salen, int family,
                        int64_t deadline, int *e) {
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    *e = errno;
    return -1;
  }
  if (connect(fd, sa, salen) != 0) {
    if (errno != EINPROGRESS) {
      *e = errno;
      close(fd);
      return -1;
    }
    int w = wait_fd(fd, 0, deadline);
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (!w && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
      soerr = errno;
    if (w || soerr) {
      *e = w ? w : soerr;
      close(fd);
      return -1;
    }
  }
  if (family != AF_UNIX) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  }
  return fd;
}

static int open_socket(spr_conn *c, int64_t deadline, char *err, size_t cap) {
  int e = 0;
  if (c->cfg.unix_path[0]) {
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, c->cfg.unix_path, strlen(c->cfg.unix_path) + 1);
    c->fd = connect_addr((struct sockaddr *)&sun, sizeof sun, AF_UNIX,
                         deadline, &e);
  } else {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    char port[16];
    snprintf(port, sizeof port, "%d", c->cfg.port);
    int g = getaddrinfo(c->cfg.host, port, &hints, &res);
    if (g != 0)
      return efail(err, cap, SPI_EIO, "redis %s: cannot resolve: %s", c->addr,
                   gai_strerror(g));
    for (struct addrinfo *a = res; a && c->fd < 0; a = a->ai_next)
      c->fd = connect_addr(a->ai_addr, a->ai_addrlen, a->ai_family, deadline,
                           &e);
    freeaddrinfo(res);
  }
  if (c->fd < 0)
    return efail(err, cap, SPI_EIO, "redis %s: connect: %s", c->addr,
                 e == ETIMEDOUT ? "timed out" : strerror(e));
  return SPI_OK;
}

#ifdef SPR_HAVE_TLS
static int tls_setup_ctx(spr_conn *c, char *err, size_t cap) {
  char tb[200];
  c->ctx = SSL_CTX_new(TLS_client_method());
  if (!c->ctx)
    return efail(err, cap, SPI_ENOMEM, "redis tls: %s", tls_error(tb, sizeof tb));
  SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
  const spr_config *f = &c->cfg;
  int ok = f->tls_ca_file[0]
               ? SSL_CTX_load_verify_locations(c->ctx, f->tls_ca_file, NULL)
               : SSL_CTX_set_default_verify_paths(c->ctx);
  if (ok != 1)
    return efail(err, cap, SPI_EINVAL, "store_config.tls.ca_file: %s",
                 tls_error(tb, sizeof tb));
  if (f->tls_cert_file[0] &&
      (SSL_CTX_use_certificate_chain_file(c->ctx, f->tls_cert_file) != 1 ||
       SSL_CTX_use_PrivateKey_file(c->ctx, f->tls_key_file, SSL_FILETYPE_PEM) !=
           1))
    return efail(err, cap, SPI_EINVAL, "store_config.tls.cert_file: %s",
                 tls_error(tb, sizeof tb));
  SSL_CTX_set_verify(c->ctx, f->tls_verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
                     NULL);
  return SPI_OK;
}

static int tls_handshake(spr_conn *c, int64_t deadline, char *err, size_t cap) {
  char tb[200];
  const char *name = c->cfg.tls_server_name[0] ? c->cfg.tls_server_name
                                               : c->cfg.host;
  c->ssl = SSL_new(c->ctx);
  if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
    return efail(err, cap, SPI_EIO, "redis %s: tls: %s", c->addr,
                 tls_error(tb, sizeof tb));
  /* An address is checked against the certificate's IP names, and sends
   * no SNI (which names hosts only); a host name against its DNS names. */
  unsigned char ip[16];
  int is_ip = inet_pton(AF_INET, name, ip) == 1 ||
              inet_pton(AF_INET6, name, ip) == 1;
  if (!is_ip) SSL_set_tlsext_host_name(c->ssl, name);
  if (c->cfg.tls_verify) {
    X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
    X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if ((is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, name)
               : X509_VERIFY_PARAM_set1_host(vp, name, 0)) != 1)
      return efail(err, cap, SPI_EIO, "redis %s: tls: bad server name",
                   c->addr);
  }
  for (;;) {
    ERR_clear_error();
    int r = SSL_connect(c->ssl);
    if (r == 1) return SPI_OK;
    int e = SSL_get_error(c->ssl, r);
    int w = e == SSL_ERROR_WANT_READ    ? wait_fd(c->fd, 1, deadline)
            : e == SSL_ERROR_WANT_WRITE ? wait_fd(c->fd, 0, deadline)
                                        : -1;
    if (w == 0) continue;
    if (w == ETIMEDOUT)
      return efail(err, cap, SPI_EIO, "redis %s: tls handshake timed out",
                   c->addr);
    long v = SSL_get_verify_result(c->ssl);
    if (v != X509_V_OK)
      return efail(err, cap, SPI_EIO, "redis %s: tls: certificate: %s",
                   c->addr, X509_verify_cert_error_string(v));
    return efail(err, cap, SPI_EIO, "redis %s: tls handshake: %s", c->addr,
                 tls_error(tb, sizeof tb));
  }
}
#endif

/* ------------------------------------------------------------- commands */

/* Read one reply, before deadline. */
static int read_reply(spr_conn *c, redisReply **out, int64_t deadline,
                      char *err, size_t cap) {
  *out = NULL;
  for (;;) {
    void *reply = NULL;
    if (redisReaderGetReply(c->reader, &reply) != REDIS_OK)
      return efail(err, cap, SPI_EIO, "redis %s: protocol error: %s", c->addr,
                   c->reader->errstr);
    if (reply) {
      *out = reply;
      return SPI_OK;
    }
    char buf[16384];
    size_t got = 0;
    int e = recv_some(c, buf, sizeof buf, &got, deadline);
    if (e)
      return efail(err, cap, SPI_EIO, "redis %s: read: %s", c->addr,
                   e == ETIMEDOUT ? "timed out" : strerror(e));
    if (redisReaderFeed(c->reader, buf, got) != REDIS_OK)
      return efail(err, cap, SPI_ENOMEM, "redis %s: out of memory", c->addr);
  }
}

/* The n commands as one buffer of the protocol (free it); NULL when out of
 * memory. */
static char *format_all(int n, const spr_cmd *cmds, size_t *len) {
  char *all = NULL;
  *len = 0;
  for (int i = 0; i < n; i++) {
    char *one = NULL;
    int l = redisFormatCommandArgv(&one, cmds[i].argc, cmds[i].argv,
                                   cmds[i].lens);
    char *grown = l >= 0 && one ? realloc(all, *len + (size_t)l) : NULL;
    if (!grown) {
      if (one) redisFreeCommand(one);
      free(all);
      return NULL;
    }
    all = grown;
    memcpy(all + *len, one, (size_t)l);
    *len += (size_t)l;
    redisFreeCommand(one);
  }
  return all;
}

/* Write n commands at once and read their n replies, before deadline: one
 * round trip. On failure no reply is kept. */
static int roundtrip(spr_conn *c, int n, const spr_cmd *cmds,
                     redisReply **out, int64_t deadline, char *err,
                     size_t cap) {
  for (int i = 0; i < n; i++) out[i] = NULL;
  size_t len = 0;
  char *buf = format_all(n, cmds, &len);
  if (!buf) return efail(err, cap, SPI_ENOMEM, "redis: out of memory");
  int e = send_all(c, buf, len, deadline);
  free(buf);
  if (e)
    return efail(err, cap, SPI_EIO, "redis %s: write: %s", c->addr,
                 e == ETIMEDOUT ? "timed out" : strerror(e));
  int rc = SPI_OK;
  for (int i = 0; i < n && rc == SPI_OK; i++)
    rc = read_reply(c, &out[i], deadline, err, cap);
  if (rc != SPI_OK)
    for (int i = 0; i < n; i++) {
      if (out[i]) freeReplyObject(out[i]);
      out[i] = NULL;
    }
  return rc;
}

/* A command of the handshake whose reply must be OK-ish. */
int spr_reply_transient(const redisReply *r) {
  static const char *const codes[] = {"LOADING",  "BUSY",       "MASTERDOWN",
                                      "TRYAGAIN", "READONLY",   "CLUSTERDOWN"};
  if (!r || r->type != REDIS_REPLY_ERROR || !r->str) return 0;
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    size_t n = strlen(codes[i]);
    if (strncmp(r->str, codes[i], n) == 0 && (r->str[n] == ' ' || !r->str[n]))
      return 1;
  }
  return 0;
}

/* The reply r of the handshake's command what. A server that answers and
 * refuses is a configuration error (wrong credentials, no such db), not an
 * outage: SPI_EINVAL; but one that only cannot answer yet (loading its
 * data) is an outage. */
static int hello_reply(spr_conn *c, const redisReply *r, const char *what,
                       char *err, size_t cap) {
  if (r->type != REDIS_REPLY_ERROR) return SPI_OK;
  return efail(err, cap, spr_reply_transient(r) ? SPI_EIO : SPI_EINVAL,
               "redis %s: %s refused: %.160s", c->addr, what, r->str);
}

/* The handshake's commands, at most three of three arguments each. */
typedef struct hello {
  const char *argv[3][3];
  size_t lens[3][3];
  char db[16];
} hello;

/* The commands of the handshake into all (their arguments in h): AUTH and
 * SELECT when set, then PING; what[i] names each for messages. Their
 * count. */
static int hello_cmds(spr_conn *c, hello *h, spr_cmd *all, const char **what) {
  int k = 0, argc = 0;
  if (c->cfg.password[0]) {
    h->argv[k][argc++] = "AUTH";
    if (c->cfg.username[0]) h->argv[k][argc++] = c->cfg.username;
    h->argv[k][argc++] = c->cfg.password;
    what[k++] = "AUTH";
  }
  if (c->cfg.db) {
    snprintf(h->db, sizeof h->db, "%d", c->cfg.db);
    h->argv[k][0] = "SELECT";
    h->argv[k][1] = h->db;
    what[k++] = "SELECT";
  }
  h->argv[k][0] = "PING";
  what[k++] = "PING";
  for (int i = 0; i < k; i++) {
    argc = 0;
    for (; argc < 3 && h->argv[i][argc]; argc++)
      h->lens[i][argc] = strlen(h->argv[i][argc]);
    all[i] = (spr_cmd){argc, h->argv[i], h->lens[i]};
  }
  return k;
}

/* The handshake's commands and the owner's n commands after them, in one
 * round trip, the owner's replies in out. The handshake's replies are
 * checked in order, and the first refused is the error: a refused AUTH is
 * a configuration error whatever the commands after it got, and so is a
 * refused SELECT; either way the connection is closed. (After a refused
 * AUTH a server whose default user is open would run the commands as that
 * user, and after a refused SELECT in db 0: handshake() sends none with
 * them until the server has accepted the AUTH and the SELECT once.) A
 * refused PING (NOAUTH with no password configured, loading) refused the
 * owner's commands as well, and ran none. */
static int hello_with(spr_conn *c, int n, const spr_cmd *cmds,
                      redisReply **out, int64_t deadline, char *err,
                      size_t cap) {
  hello h;
  memset(&h, 0, sizeof h);
  spr_cmd all[3 + SPR_SETUP_MAX];
  const char *what[3];
  redisReply *r[3 + SPR_SETUP_MAX];
  int k = hello_cmds(c, &h, all, what);
  for (int i = 0; i < n; i++) all[k + i] = cmds[i];
  int rc = roundtrip(c, k + n, all, r, deadline, err, cap);
  if (rc != SPI_OK) return rc;
  for (int i = 0; i < k && rc == SPI_OK; i++)
    rc = hello_reply(c, r[i], what[i], err, cap);
  for (int i = 0; i < k + n; i++) {
    if (i >= k && rc == SPI_OK)
      out[i - k] = r[i];
    else
      freeReplyObject(r[i]);
  }
  return rc;
}

/* AUTH, SELECT, PING and the owner's commands: one round trip after the
 * TCP connect (and TLS handshake). Except until the server has accepted
 * this connection's AUTH and SELECT once: the owner's commands then wait
 * for their replies (a second round trip), so a wrong password or a db
 * the server does not have fails the connect before they run as the
 * default user or in db 0. */
static int handshake(spr_conn *c, int64_t deadline, int n,
                     const spr_cmd *cmds, redisReply **out, char *err,
                     size_t cap) {
  int vouch = c->cfg.db || c->cfg.password[0];
  int hold = vouch && !c->hello_accepted && n > 0;
  int rc = hello_with(c, hold ? 0 : n, cmds, out, deadline, err, cap);
  if (rc == SPI_OK && vouch) c->hello_accepted = 1;
  if (rc == SPI_OK && hold)
    rc = roundtrip(c, n, cmds, out, deadline, err, cap);
  return rc;
}

/* Connect, set up TLS and say hello (with the owner's n commands, their
 * replies in out): within connect_timeout_ms, and before deadline. */
static int do_connect(spr_conn *c, int64_t deadline, int n,
                      const spr_cmd *cmds, redisReply **out, char *err,
                      size_t cap) {
  int64_t by = spr_now_ms() + c->cfg.connect_timeout_ms;
  if (by < deadline) deadline = by;
  c->reader = redisReaderCreate();
  if (!c->reader) return efail(err, cap, SPI_ENOMEM, "redis: out of memory");
  int rc = open_socket(c, deadline, err, cap);
#ifdef SPR_HAVE_TLS
  if (rc == SPI_OK && c->cfg.tls) rc = tls_handshake(c, deadline, err, cap);
#endif
  if (rc == SPI_OK) rc = handshake(c, deadline, n, cmds, out, err, cap);
  return rc;
}

/* A failure: close, remember it, and hold reconnects back for a while. */
static int failed(spr_conn *c, int rc, const char *err) {
  close_conn(c);
  c->failures++;
  snprintf(c->last_err, sizeof c->last_err, "%s", err);
  int64_t b = c->backoff_ms ? c->backoff_ms * 2 : c->cfg.reconnect_min_ms;
  if (b > c->cfg.reconnect_max_ms) b = c->cfg.reconnect_max_ms;
  c->backoff_ms = b;
  c->retry_at_ms = spr_now_ms() + b;
  return rc;
}

int64_t spr_conn_deadline(const spr_conn *c) {
  int64_t d = spr_now_ms() + c->cfg.timeout_ms;
  return c->fd >= 0 ? d : d + c->cfg.connect_timeout_ms;
}

/* Connect (not connected), the n commands in the PING's round trip. */
static int open_with(spr_conn *c, int64_t deadline, int n,
                     const spr_cmd *cmds, redisReply **out, char *err,
                     size_t cap) {
  int64_t now = spr_now_ms();
  if (now < c->retry_at_ms)
    return efail(err, cap, SPI_EIO, "%s (retrying in %lld ms)", c->last_err,
                 (long long)(c->retry_at_ms - now));
  int rc = do_connect(c, deadline, n, cmds, out, err, cap);
  if (rc != SPI_OK) return failed(c, rc, err);
  c->connects++;
  c->backoff_ms = 0;
  return SPI_OK;
}

int spr_conn_open_by(spr_conn *c, int64_t deadline, char *err, size_t cap) {
  if (c->fd >= 0) return SPI_OK;
  return open_with(c, deadline, 0, NULL, NULL, err, cap);
}

int spr_conn_open(spr_conn *c, char *err, size_t cap) {
  return spr_conn_open_by(c, spr_now_ms() + c->cfg.connect_timeout_ms, err,
                          cap);
}

int spr_conn_pipeline(spr_conn *c, int n, const spr_cmd *cmds,
                      redisReply **out, int64_t deadline, char *err,
                      size_t cap) {
  for (int i = 0; i < n; i++) out[i] = NULL;
  int rc = spr_conn_open_by(c, deadline, err, cap);
  if (rc != SPI_OK) return rc;
  /* Nothing is sent once the call's time is up (its earlier steps took
   * it): no reply could be waited for. The connection is as clean as it
   * was, so it stays, with no backoff. */
  if (spr_now_ms() >= deadline) {
    c->failures++;
    return efail(err, cap, SPI_EIO, "redis %s: timed out before the write",
                 c->addr);
  }
  rc = roundtrip(c, n, cmds, out, deadline, err, cap);
  if (rc != SPI_OK) return failed(c, rc, err);
  return SPI_OK;
}

int spr_conn_setup(spr_conn *c, int n, const spr_cmd *cmds, redisReply **out,
                   int64_t deadline, char *err, size_t cap) {
  for (int i = 0; i < n; i++) out[i] = NULL;
  if (n > SPR_SETUP_MAX)
    return efail(err, cap, SPI_EINVAL, "redis: %d setup commands, at most %d",
                 n, SPR_SETUP_MAX);
  if (c->fd >= 0) return spr_conn_pipeline(c, n, cmds, out, deadline, err, cap);
  return open_with(c, deadline, n, cmds, out, err, cap);
}

int spr_conn_command_by(spr_conn *c, int argc, const char **argv,
                        const size_t *lens, redisReply **out,
                        int64_t deadline, char *err, size_t cap) {
  spr_cmd one = {argc, argv, lens};
  return spr_conn_pipeline(c, 1, &one, out, deadline, err, cap);
}

int spr_conn_command(spr_conn *c, int argc, const char **argv,
                     const size_t *lens, redisReply **out, char *err,
                     size_t cap) {
  return spr_conn_command_by(c, argc, argv, lens, out, spr_conn_deadline(c),
                             err, cap);
}

int spr_conn_new(const spr_config *cfg, spr_conn **out, char *err,
                 size_t cap) {
  *out = NULL;
  spr_conn *c = calloc(1, sizeof *c);
  if (!c) return efail(err, cap, SPI_ENOMEM, "redis: out of memory");
  c->cfg = *cfg;
  c->fd = -1;
  spr_config_address(cfg, c->addr, sizeof c->addr);
  if (cfg->tls) {
#ifdef SPR_HAVE_TLS
    int rc = tls_setup_ctx(c, err, cap);
    if (rc != SPI_OK) {
      spr_conn_free(c);
      return rc;
    }
#else
    free(c);
    return efail(err, cap, SPI_ENOTSUP,
                 "store_config.tls: this libspotinfer_redis was built "
                 "without TLS");
#endif
  }
  *out = c;
  return SPI_OK;
}

void spr_conn_free(spr_conn *c) {
  if (!c) return;
  close_conn(c);
#ifdef SPR_HAVE_TLS
  if (c->ctx) SSL_CTX_free(c->ctx);
#endif
  /* The password leaves no copy behind in freed memory. */
  volatile char *p = c->cfg.password;
  for (size_t i = 0; i < sizeof c->cfg.password; i++) p[i] = 0;
  free(c);
}
