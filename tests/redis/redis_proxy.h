/*
 * redis_proxy.h - a TCP proxy in front of the tests' Redis server, for the
 * failures a real server does not make on demand: every reply held back a
 * while (a slow link), or the connection dropped instead of the next reply
 * (the command ran on the server, its answer never came). One client at a
 * time; a new connection replaces the one before.
 *
 *   rp_proxy p;
 *   rp_start(&p, upstream_port);     listens on 127.0.0.1:p.port
 *   rp_set_delay(&p, 300);           each reply 300 ms late
 *   rp_drop_next_reply(&p);          the next reply closes the connection
 *   rp_stop(&p);
 *
 * rp_setup / rp_teardown: the same as a cmocka fixture, a proxy in front of
 * the server SPI_REDIS_PORT names as the test's state (NULL without one).
 *
 * Failures fail the test (cmocka): include after <cmocka.h>.
 */
#ifndef SPI_TEST_REDIS_PROXY_H
#define SPI_TEST_REDIS_PROXY_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct rp_proxy {
  int port, upstream;
  int lfd, cfd, sfd; /* listening, client side, server side */
  int stop, drop, delay_ms; /* read and written atomically */
  pthread_t th;
} rp_proxy;

static inline void rp_close_pair(rp_proxy *p) {
  if (p->cfd >= 0) close(p->cfd);
  if (p->sfd >= 0) close(p->sfd);
  p->cfd = p->sfd = -1;
}

static inline int rp_write_all(int fd, const char *b, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
    if (w <= 0) return -1;
    b += w;
    n -= (size_t)w;
  }
  return 0;
}

static inline void rp_accept(rp_proxy *p) {
  int fd = accept(p->lfd, NULL, NULL);
  if (fd < 0) return;
  rp_close_pair(p);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)p->upstream);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
    if (s >= 0) close(s);
    close(fd);
    return;
  }
  p->cfd = fd;
  p->sfd = s;
}

/* Bytes from one side to the other; replies (from the server) are held
 * back or dropped as asked. Replies that came while one was held back go
 * with it: the delay is a link's, once per round trip, however the server's
 * replies to a pipeline were cut into reads. */
static inline void rp_pass(rp_proxy *p, int from_server) {
  char buf[65536];
  ssize_t n = recv(from_server ? p->sfd : p->cfd, buf, sizeof buf, 0);
  if (n <= 0) {
    rp_close_pair(p);
    return;
  }
  if (from_server && __atomic_exchange_n(&p->drop, 0, __ATOMIC_SEQ_CST)) {
    rp_close_pair(p);
    return;
  }
  int delay = __atomic_load_n(&p->delay_ms, __ATOMIC_SEQ_CST);
  if (from_server && delay > 0) {
    struct timespec ts = {delay / 1000, (long)(delay % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    ssize_t more;
    while ((size_t)n < sizeof buf &&
           (more = recv(p->sfd, buf + n, sizeof buf - (size_t)n,
                        MSG_DONTWAIT)) > 0)
      n += more;
  }
  if (rp_write_all(from_server ? p->cfd : p->sfd, buf, (size_t)n) != 0)
    rp_close_pair(p);
}

static inline void *rp_run(void *arg) {
  rp_proxy *p = arg;
  while (!__atomic_load_n(&p->stop, __ATOMIC_SEQ_CST)) {
    struct pollfd f[3] = {{p->lfd, POLLIN, 0}, {p->cfd, POLLIN, 0},
                          {p->sfd, POLLIN, 0}};
    int nf = p->cfd >= 0 ? 3 : 1;
    if (poll(f, (nfds_t)nf, 20) <= 0) continue;
    if (f[0].revents) rp_accept(p);
    else if (nf == 3 && f[1].revents) rp_pass(p, 0);
    else if (nf == 3 && f[2].revents) rp_pass(p, 1);
  }
  rp_close_pair(p);
  return NULL;
}

static inline void rp_start(rp_proxy *p, int upstream) {
  memset(p, 0, sizeof *p);
  p->upstream = upstream;
  p->cfd = p->sfd = -1;
  p->lfd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(p->lfd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(p->lfd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(p->lfd, 8), 0);
  socklen_t al = sizeof a;
  assert_int_equal(getsockname(p->lfd, (struct sockaddr *)&a, &al), 0);
  p->port = ntohs(a.sin_port);
  assert_int_equal(pthread_create(&p->th, NULL, rp_run, p), 0);
}

static inline void rp_set_delay(rp_proxy *p, int ms) {
  __atomic_store_n(&p->delay_ms, ms, __ATOMIC_SEQ_CST);
}

static inline void rp_drop_next_reply(rp_proxy *p) {
  __atomic_store_n(&p->drop, 1, __ATOMIC_SEQ_CST);
}

static inline void rp_stop(rp_proxy *p) {
  __atomic_store_n(&p->stop, 1, __ATOMIC_SEQ_CST);
  pthread_join(p->th, NULL);
  close(p->lfd);
}

/* A proxy in front of the server for one test (its state), stopped by the
 * teardown, which runs when the test fails too. NULL without a server
 * (the test then skips). */
static inline int rp_setup(void **st) {
  *st = NULL;
  const char *port = getenv("SPI_REDIS_PORT");
  if (!port || !*port) return 0;
  rp_proxy *p = calloc(1, sizeof *p);
  if (!p) return -1;
  rp_start(p, atoi(port));
  *st = p;
  return 0;
}

static inline int rp_teardown(void **st) {
  rp_proxy *p = *st;
  if (p) rp_stop(p);
  free(p);
  return 0;
}

#endif /* SPI_TEST_REDIS_PROXY_H */
