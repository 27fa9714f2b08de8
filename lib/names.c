/*
 * names.c - the text of every public enum: status codes (spi_strerror),
 * module kinds, classes, service tiers, route reasons, notice kinds and node
 * states. One table per enum, indexed from the enum's first value, so a new
 * value is one line here and every name function answers any integer
 * (never NULL) the same way.
 */
#include "spi_internal.h"

typedef struct name_table {
  int first;                /* the enum value names[0] stands for */
  size_t n;
  const char *const *names; /* NULL entries are gaps in the enum */
  const char *other;        /* for any value outside the table */
} name_table;

#define TABLE(first, arr, other) \
  {(first), sizeof(arr) / sizeof((arr)[0]), (arr), (other)}

static const char *lookup(const name_table *t, long long v) {
  if (v < t->first || v - t->first >= (long long)t->n) return t->other;
  const char *s = t->names[v - t->first];
  return s ? s : t->other;
}

/* Statuses are negative and grouped with gaps: indexed by -status. */
static const char *const STATUS[] = {
    [0] = "ok",
    [-SPI_EINVAL] = "invalid argument",
    [-SPI_EMISUSE] = "library misuse (bad handle or reentrant call)",
    [-SPI_ERANGE] = "value out of range",
    [-SPI_EBUFSIZE] = "output buffer too small",
    [-SPI_EPARSE] = "malformed input",
    [-SPI_ETYPE] = "wrong type",
    [-SPI_EUNKNOWN] = "unknown key or name",
    [-SPI_EMISSING] = "required field missing",
    [-SPI_ETOOBIG] = "input exceeds a configured limit",
    [-SPI_ENOMEM] = "out of memory",
    [-SPI_EIO] = "i/o error",
    [-SPI_ENOTFOUND] = "not found",
    [-SPI_EEXIST] = "already exists",
    [-SPI_ESTALE] = "stale ticket or replica",
    [-SPI_EFULL] = "table full",
    [-SPI_EMODULE] = "module failed",
    [-SPI_EABI] = "unsupported module ABI",
    [-SPI_ENOTSUP] = "not supported",
    [-SPI_ESHED] = "shed under pressure, retry later",
    [-SPI_ENOCAPACITY] = "no capacity",
};

const char *spi_strerror(int status) {
  static const name_table t = TABLE(0, STATUS, "unknown status");
  return status > 0 ? t.other : lookup(&t, -(long long)status);
}

static const char *const MODULE_KINDS[] = {
    [SPI_MODULE_CLASSIFIER] = "classifier",
    [SPI_MODULE_KEY_BUILDER] = "key_builder",
    [SPI_MODULE_POLICY] = "policy",
    [SPI_MODULE_COST_MODEL] = "cost_model",
    [SPI_MODULE_NOTICE_SOURCE] = "notice_source",
    [SPI_MODULE_REPLAY_STORE] = "replay_store",
    [SPI_MODULE_FLEET_BUS] = "fleet_bus",
};

const char *spi_module_kind_name(int32_t kind) {
  static const name_table t = TABLE(0, MODULE_KINDS, "invalid");
  return lookup(&t, kind);
}

static const char *const CLASSES[] = {
    [SPI_CLASS_UNSET] = "unset",
    [SPI_CLASS_GOLD] = "gold",
    [SPI_CLASS_SILVER] = "silver",
    [SPI_CLASS_BRONZE] = "bronze",
};

const char *spi_class_name(int32_t klass) {
  static const name_table t = TABLE(0, CLASSES, "invalid");
  return lookup(&t, klass);
}

static const char *const SERVICE_TIERS[] = {
    [SPI_SERVICE_TIER_UNSET] = "",
    [SPI_SERVICE_TIER_AUTO] = "auto",
    [SPI_SERVICE_TIER_DEFAULT] = "default",
    [SPI_SERVICE_TIER_FLEX] = "flex",
    [SPI_SERVICE_TIER_PRIORITY] = "priority",
    [SPI_SERVICE_TIER_SCALE] = "scale",
};

const char *spi_service_tier_name(int32_t tier) {
  static const name_table t = TABLE(0, SERVICE_TIERS, "invalid");
  return lookup(&t, tier);
}

static const char *const REASONS[] = {
    [SPI_REASON_NONE] = "none",
    [SPI_REASON_AFFINITY] = "affinity",
    [SPI_REASON_AFFINITY_LEFT] = "affinity_left",
    [SPI_REASON_IMBALANCE] = "imbalance",
    [SPI_REASON_RENDEZVOUS] = "rendezvous",
    [SPI_REASON_LEAST_LOADED] = "least_loaded",
    [SPI_REASON_WAIT_WARM] = "wait_warm",
    [SPI_REASON_QUEUE_NO_SPOT] = "queue_no_spot",
    [SPI_REASON_SHED] = "shed",
    [SPI_REASON_NO_CAPACITY] = "no_capacity",
    [SPI_REASON_HALF_OPEN_PROBE] = "half_open_probe",
};

const char *spi_reason_name(int32_t reason) {
  static const name_table t = TABLE(0, REASONS, "invalid");
  return lookup(&t, reason);
}

static const char *const NOTICE_KINDS[] = {
    [SPI_NOTICE_NONE] = "none",
    [SPI_NOTICE_TERMINATE] = "terminate",
    [SPI_NOTICE_STOP] = "stop",
    [SPI_NOTICE_HIBERNATE] = "hibernate",
    [SPI_NOTICE_REBALANCE] = "rebalance",
    [SPI_NOTICE_MAINTENANCE] = "maintenance",
    [SPI_NOTICE_PREEMPT] = "preempt",
};

const char *spi_notice_kind_name(int32_t kind) {
  static const name_table t = TABLE(0, NOTICE_KINDS, "invalid");
  return lookup(&t, kind);
}

static const char *const NODE_STATES[] = {
    [SPI_NODE_ACTIVE] = "active",
    [SPI_NODE_ADVISED] = "advised",
    [SPI_NODE_NOTICED] = "noticed",
    [SPI_NODE_DRAINING] = "draining",
    [SPI_NODE_TERMINATED] = "terminated",
    [SPI_NODE_REMOVED] = "removed",
};

const char *spi_node_state_name(int32_t state) {
  static const name_table t = TABLE(0, NODE_STATES, "invalid");
  return lookup(&t, state);
}
