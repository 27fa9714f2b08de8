/*
 * breaker.c - the pool KV-pressure breaker and the replica error breaker.
 *
 * Both are explicit state machines: an enum of named states, the inputs
 * reduced to a small set of events, and a transition table from (state,
 * event) to the next state. The code around each table only computes the
 * event and performs the table's transition with the atomics that make it
 * safe under concurrent callers.
 */
#include <math.h>

#include "routing.h"

/* ------------------------------------------------- pool KV-pressure breaker */

/*
 * Level 0 sheds nothing, 1 sheds bronze, 2 sheds silver and bronze. Each
 * class has an open threshold (shed at or above it) and a lower close
 * threshold (serve again only below it), so a pool hovering around one
 * threshold does not flap.
 */
enum kv_level { KV_CLOSED = 0, KV_SHED_BRONZE = 1, KV_SHED_SILVER = 2 };

static const char *const KV_LEVEL_NAMES[3] = {"closed", "shed_bronze",
                                              "shed_silver"};

/* Where the pressure sits relative to one class's pair of thresholds. */
enum kv_band {
  BAND_BELOW = 0, /* < close: that class may be served again */
  BAND_HOLD = 1,  /* close <= p < open: keep what the level says */
  BAND_ABOVE = 2  /* >= open: shed that class */
};

/* KV_NEXT[level][bronze band][silver band]. */
static const signed char KV_NEXT[3][3][3] = {
    [KV_CLOSED] =
        {
            /* bronze below */ {KV_CLOSED, KV_CLOSED, KV_SHED_SILVER},
            /* bronze hold */ {KV_CLOSED, KV_CLOSED, KV_SHED_SILVER},
            /* bronze above */ {KV_SHED_BRONZE, KV_SHED_BRONZE, KV_SHED_SILVER},
        },
    [KV_SHED_BRONZE] =
        {
            {KV_CLOSED, KV_CLOSED, KV_SHED_SILVER},
            {KV_SHED_BRONZE, KV_SHED_BRONZE, KV_SHED_SILVER},
            {KV_SHED_BRONZE, KV_SHED_BRONZE, KV_SHED_SILVER},
        },
    /* Silver stays shed until its own close threshold; while it is shed,
     * bronze is too, whatever the bronze band says. */
    [KV_SHED_SILVER] =
        {
            {KV_CLOSED, KV_SHED_SILVER, KV_SHED_SILVER},
            {KV_SHED_BRONZE, KV_SHED_SILVER, KV_SHED_SILVER},
            {KV_SHED_BRONZE, KV_SHED_SILVER, KV_SHED_SILVER},
        },
};

/* NaN pressure (no usable signal) counts as above every threshold: an
 * unknown pool is treated as full, as stale replica loads are. */
static int kv_band(double p, double open, double close) {
  if (!(p < open)) return BAND_ABOVE;
  if (p < close) return BAND_BELOW;
  return BAND_HOLD;
}

int spi__kv_breaker_step(int level, double pressure, const spi_router_cfg *c) {
  if (level < KV_CLOSED || level > KV_SHED_SILVER) level = KV_SHED_SILVER;
  int b = kv_band(pressure, c->kv_open, c->kv_close);
  int s = kv_band(pressure, c->kv_silver_open, c->kv_silver_close);
  return KV_NEXT[level][b][s];
}

const char *spi__kv_level_name(int level) {
  if (level < KV_CLOSED || level > KV_SHED_SILVER) return "invalid";
  return KV_LEVEL_NAMES[level];
}

static inline int32_t pressure_level(double pressure, const spi_router_cfg *c) {
  if (pressure < c->kv_close) return SPI_PRESSURE_NORMAL;
  if (pressure < c->kv_open) return SPI_PRESSURE_ELEVATED;
  if (pressure < c->kv_silver_open) return SPI_PRESSURE_HIGH;
  return SPI_PRESSURE_CRITICAL; /* also NaN */
}

int32_t spi__pressure_level(double pressure, const spi_router_cfg *c) {
  return pressure_level(pressure, c);
}

int spi__kv_breaker_step_level(int level, double pressure,
                               const spi_router_cfg *c, int32_t *plevel) {
  /* Below all four thresholds, as a pool mostly is: both bands are
   * BAND_BELOW, whose row closes the breaker from every level, and the
   * pressure is normal. Four compares instead of the clamp, both bands and
   * the table (a NaN fails them and takes the full step). */
  if (pressure < c->kv_close && pressure < c->kv_open &&
      pressure < c->kv_silver_close && pressure < c->kv_silver_open) {
    *plevel = SPI_PRESSURE_NORMAL;
    return KV_CLOSED;
  }
  *plevel = pressure_level(pressure, c);
  return spi__kv_breaker_step(level, pressure, c);
}

/* ------------------------------------------------- replica error breaker */

/*
 *   CLOSED ──error_threshold consecutive errors──► OPEN (until now + cooldown)
 *   OPEN ──a caller sees now >= open_until──► HALF_OPEN (one probe allowed)
 *   HALF_OPEN ──probe ok──► CLOSED
 *   HALF_OPEN ──probe error──► OPEN (until now + cooldown)
 *
 * Any success resets consecutive_errors. Results of requests that are not
 * the probe never move an OPEN or HALF_OPEN breaker: they were sent before
 * it opened and say nothing about recovery.
 *
 * Fields of the slot and who writes them:
 *   breaker         changed only by compare-and-swap along the table;
 *   open_until_ns   raised (never lowered) before the CAS that enters OPEN,
 *                   so a caller that sees OPEN also sees its deadline, and
 *                   one that read CLOSED long ago and then lost the CAS
 *                   cannot put an older deadline over a newer round's;
 *   probe_taken     1 in CLOSED and OPEN; set to 0 by the caller whose CAS
 *                   moved OPEN to HALF_OPEN (or by the probe's holder
 *                   giving it back), and back to 1 by the one caller whose
 *                   claim succeeds. So each half-open round has exactly one
 *                   probe out at a time.
 */
static const char *const BREAKER_NAMES[3] = {"closed", "open", "half_open"};

enum breaker_event {
  EV_SUCCESS = 0,     /* a request that was not the probe succeeded */
  EV_ERROR = 1,       /* ... failed, below the threshold */
  EV_TRIP = 2,        /* ... failed and reached error_threshold */
  EV_COOLED = 3,      /* a caller saw now >= open_until */
  EV_PROBE_OK = 4,    /* the half-open probe succeeded */
  EV_PROBE_ERROR = 5, /* the half-open probe failed */
  EV_COUNT = 6
};

#define STAY (-1)
static const signed char BREAKER_NEXT[3][EV_COUNT] = {
    [SPI_BREAKER_CLOSED] = {STAY, STAY, SPI_BREAKER_OPEN, STAY, STAY, STAY},
    [SPI_BREAKER_OPEN] = {STAY, STAY, STAY, SPI_BREAKER_HALF_OPEN, STAY, STAY},
    [SPI_BREAKER_HALF_OPEN] = {STAY, STAY, STAY, STAY, SPI_BREAKER_CLOSED,
                               SPI_BREAKER_OPEN},
};

/* Used only when the configuration leaves them 0 (never, once validated). */
#define DEFAULT_ERROR_THRESHOLD 5
#define DEFAULT_COOLDOWN_NS (10 * (int64_t)1000000000)

const char *spi__breaker_state_name(int32_t state) {
  if (state < SPI_BREAKER_CLOSED || state > SPI_BREAKER_HALF_OPEN)
    return "invalid";
  return BREAKER_NAMES[state];
}

static int64_t cooldown_ns(const spi_router_cfg *c) {
  if (!c || c->error_cooldown_ms <= 0) return DEFAULT_COOLDOWN_NS;
  if (c->error_cooldown_ms > INT64_MAX / 1000000) return INT64_MAX;
  return c->error_cooldown_ms * 1000000;
}

static int64_t sat_add(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) return b > 0 ? INT64_MAX : INT64_MIN;
  return r;
}

/*
 * Take the transition the table gives for (from, ev) if the breaker is still
 * in from. enter_open_until is the deadline stored before entering OPEN.
 * Returns 1 if this caller made the transition.
 */
static int breaker_take(spi_replica_slot *s, int from, int ev,
                        int64_t enter_open_until) {
  int to = BREAKER_NEXT[from][ev];
  if (to == STAY) return 0;
  if (to == SPI_BREAKER_OPEN) {
    long long was = atomic_load(&s->open_until_ns); /* the atomic's type */
    while (was < enter_open_until &&
           !atomic_compare_exchange_weak(&s->open_until_ns, &was,
                                         enter_open_until)) {
    }
  }
  int expect = from;
  if (!atomic_compare_exchange_strong(&s->breaker, &expect, to)) return 0;
  if (to == SPI_BREAKER_HALF_OPEN) atomic_store(&s->probe_taken, 0);
  if (to == SPI_BREAKER_CLOSED) atomic_store(&s->consecutive_errors, 0u);
  return 1;
}

int spi__breaker_allows(spi_replica_slot *s, int64_t now_ns, int *probe) {
  int dummy;
  if (!probe) probe = &dummy;
  *probe = 0;
  int st = atomic_load(&s->breaker);
  if (st == SPI_BREAKER_OPEN) {
    if (now_ns < atomic_load(&s->open_until_ns)) return 0;
    breaker_take(s, SPI_BREAKER_OPEN, EV_COOLED, 0);
    st = atomic_load(&s->breaker);
  }
  switch (st) {
  case SPI_BREAKER_CLOSED: return 1;
  case SPI_BREAKER_HALF_OPEN:
    if (atomic_load(&s->probe_taken) != 0) return 0;
    *probe = 1;
    return 1;
  default: return 0;
  }
}

int spi__breaker_claim_probe(spi_replica_slot *s) {
  if (atomic_load(&s->breaker) != SPI_BREAKER_HALF_OPEN) return 0;
  int expect = 0;
  return atomic_compare_exchange_strong(&s->probe_taken, &expect, 1);
}

void spi__breaker_release_probe(spi_replica_slot *s) {
  /* Only the holder calls this, and the breaker cannot leave HALF_OPEN
   * while the probe is out, so the store cannot reopen a later round. */
  if (atomic_load(&s->breaker) == SPI_BREAKER_HALF_OPEN)
    atomic_store(&s->probe_taken, 0);
}

/* A success: no errors in a row. Stored only when there were: a store
 * in sequential consistency is a locked instruction, and almost every
 * finish is a success after a success. An error counted meanwhile by
 * another finish is the same either way: as if it came just after. */
static void errors_reset(spi_replica_slot *s) {
  if (atomic_load_explicit(&s->consecutive_errors, memory_order_relaxed))
    atomic_store(&s->consecutive_errors, 0u);
}

int spi__breaker_record(spi_replica_slot *s, int ok, int was_probe,
                        int64_t now_ns, const spi_router_cfg *c) {
  int64_t until = sat_add(now_ns, cooldown_ns(c));
  int st = atomic_load(&s->breaker);
  if (was_probe && st == SPI_BREAKER_HALF_OPEN) {
    if (ok) {
      atomic_store(&s->consecutive_errors, 0u);
      breaker_take(s, st, EV_PROBE_OK, 0);
      return 0;
    }
    atomic_fetch_add(&s->consecutive_errors, 1u);
    return breaker_take(s, st, EV_PROBE_ERROR, until);
  }
  if (ok) {
    errors_reset(s);
    breaker_take(s, st, EV_SUCCESS, 0);
    return 0;
  }
  unsigned n = atomic_fetch_add(&s->consecutive_errors, 1u) + 1u;
  int64_t threshold = c && c->error_threshold > 0 ? c->error_threshold
                                                  : DEFAULT_ERROR_THRESHOLD;
  int ev = (int64_t)n >= threshold ? EV_TRIP : EV_ERROR;
  /* Re-read: another caller may have opened it meanwhile, and a deadline
   * must only be written on the way into OPEN. */
  st = atomic_load(&s->breaker);
  if (st != SPI_BREAKER_CLOSED) return 0;
  return breaker_take(s, st, ev, until);
}
