/*
 * notice_aws.c - AWS: the IMDS paths spot/instance-action,
 * events/recommendations/rebalance and events/maintenance/scheduled, and
 * the EventBridge envelope of the EC2 events.
 *
 * Scheduled events: completed and canceled events give notices with active
 * 0 whose dedup key carries the state, so that handing in the withdrawal is
 * not mistaken for a repeat of the notice it withdraws.
 *
 * A backend of the notice dispatch (curl's vtls pattern): no code but
 * notice.c should ever call the functions this file exports.
 */
#include <string.h>

#include "notice.h"

static const char *const AWS_ACTIONS[] = {"terminate", "stop", "hibernate"};
static const int32_t AWS_ACTION_KINDS[] = {
    SPI_NOTICE_TERMINATE, SPI_NOTICE_STOP, SPI_NOTICE_HIBERNATE};

/* spot/instance-action: {"action": "terminate", "time": RFC 3339}. */
int spi__notice_aws_instance_action(nctx *c, const cJSON *root) {
  const char *action, *time;
  int rc;
  if ((rc = spi__notice_get_string(c, root, "", "action", &action)) != SPI_OK ||
      (rc = spi__notice_get_string(c, root, "", "time", &time)) != SPI_OK)
    return rc;
  size_t a = 0;
  int64_t deadline = 0;
  if (action &&
      (rc = spi__notice_one_of(c, "action", action, AWS_ACTIONS, 3, &a)) != 0)
    return rc;
  if (time && (rc = spi__notice_parse_time(
                   c, "time", time, spi__notice_time_rfc3339, &deadline)) != 0)
    return rc;
  if (!action) return spi__notice_missing(c, "", "action");
  if (!time) return spi__notice_missing(c, "", "time");
  if ((rc = spi__notice_need_node(c)) != SPI_OK) return rc;
  /* Not the time: some pollers move it on every poll. */
  draft d = {AWS_ACTION_KINDS[a], c->node, deadline, 1, ""};
  return spi__notice_emit(c, &d, "aws:action:%s:%s", c->node, AWS_ACTIONS[a]);
}

/* events/recommendations/rebalance: {"noticeTime": RFC 3339}. Advice: the
 * time is when it was given, not a deadline. */
int spi__notice_aws_rebalance(nctx *c, const cJSON *root) {
  const char *when;
  int64_t at;
  int rc = spi__notice_get_string(c, root, "", "noticeTime", &when);
  if (rc != SPI_OK) return rc;
  if (!when) return spi__notice_missing(c, "", "noticeTime");
  if ((rc = spi__notice_parse_time(c, "noticeTime", when,
                                   spi__notice_time_rfc3339, &at)) != 0)
    return rc;
  if ((rc = spi__notice_need_node(c)) != SPI_OK) return rc;
  draft d = {SPI_NOTICE_REBALANCE, c->node, 0, 1, ""};
  return spi__notice_emit(c, &d, "aws:rebalance:%s", c->node);
}

static const char *const AWS_STATES[] = {"active", "completed", "canceled"};
static const char *const AWS_CODES[] = {"instance-reboot", "system-reboot",
                                        "system-maintenance",
                                        "instance-retirement", "instance-stop"};
/* A retirement stops an EBS-backed instance and terminates the rest; for
 * the node either way the machine goes. */
static const int32_t AWS_CODE_KINDS[] = {
    SPI_NOTICE_MAINTENANCE, SPI_NOTICE_MAINTENANCE, SPI_NOTICE_MAINTENANCE,
    SPI_NOTICE_TERMINATE, SPI_NOTICE_STOP};

static int aws_scheduled_event(nctx *c, const cJSON *ev, size_t i) {
  char at[PATH_CAP], path[PATH_CAP];
  spi__errf(at, sizeof at, "[%zu]", i);
  if (!cJSON_IsObject(ev))
    return spi__notice_fail(c, SPI_ETYPE, "%s: must be an object, not %s", at,
                            spi__notice_type_name(ev));
  const char *code, *id, *state, *not_before;
  int rc;
  if ((rc = spi__notice_get_string(c, ev, at, "Code", &code)) != SPI_OK ||
      (rc = spi__notice_get_string(c, ev, at, "EventId", &id)) != SPI_OK ||
      (rc = spi__notice_get_string(c, ev, at, "State", &state)) != SPI_OK ||
      (rc = spi__notice_get_string(c, ev, at, "NotBefore", &not_before)) !=
          SPI_OK)
    return rc;
  size_t k = 0, s = 0;
  int64_t deadline = 0;
  /* A code or state this version does not know is a newer kind of event,
   * not a broken document: skipped and counted, the others still read. */
  if (code && !spi__notice_known(code, AWS_CODES, 5, &k)) {
    spi__notice_field_path(path, at, "Code");
    return spi__notice_skip(c, i, path, code);
  }
  if (state && !spi__notice_known(state, AWS_STATES, 3, &s)) {
    spi__notice_field_path(path, at, "State");
    return spi__notice_skip(c, i, path, state);
  }
  if (not_before) {
    spi__notice_field_path(path, at, "NotBefore");
    if ((rc = spi__notice_parse_time(c, path, not_before, spi__notice_time_aws,
                                     &deadline)) != SPI_OK)
      return rc;
  }
  if (id) {
    spi__notice_field_path(path, at, "EventId");
    if ((rc = spi__notice_check_id(c, path, id)) != SPI_OK) return rc;
  }
  if (!code) return spi__notice_missing(c, at, "Code");
  if (!id) return spi__notice_missing(c, at, "EventId");
  if (!state) return spi__notice_missing(c, at, "State");
  if (!not_before) return spi__notice_missing(c, at, "NotBefore");
  if ((rc = spi__notice_need_node(c)) != SPI_OK) return rc;
  draft d = {AWS_CODE_KINDS[k], c->node, s == 0 ? deadline : 0, s == 0, id};
  if (s == 0) return spi__notice_emit(c, &d, "aws:scheduled:%s", id);
  return spi__notice_emit(c, &d, "aws:scheduled:%s:%s", id, AWS_STATES[s]);
}

/* events/maintenance/scheduled: a JSON array of events; [] = none. */
int spi__notice_aws_scheduled(nctx *c, const cJSON *root) {
  size_t i = 0;
  for (const cJSON *ev = root->child; ev; ev = ev->next, i++) {
    int rc = aws_scheduled_event(c, ev, i);
    if (rc != SPI_OK) return rc;
  }
  return SPI_OK;
}

static const char *const EB_TYPES[] = {
    "EC2 Spot Instance Interruption Warning",
    "EC2 Instance Rebalance Recommendation",
    "EC2 Instance State-change Notification"};
static const char *const EC2_STATES[] = {
    "pending", "running", "shutting-down", "terminated", "stopping", "stopped"};
static const int32_t EC2_STATE_KINDS[] = {
    SPI_NOTICE_NONE,      SPI_NOTICE_NONE, SPI_NOTICE_TERMINATE,
    SPI_NOTICE_TERMINATE, SPI_NOTICE_STOP, SPI_NOTICE_STOP};

/* The EventBridge envelope of the three EC2 events above. detail-type
 * decides what else is read, so it is checked first. */
int spi__notice_aws_eventbridge(nctx *c, const cJSON *root) {
  const char *type, *time, *id, *instance = NULL, *arg = NULL;
  const cJSON *detail;
  size_t t = 0, k = 0;
  int rc;
  if ((rc = spi__notice_get_string(c, root, "", "detail-type", &type)) !=
      SPI_OK)
    return rc;
  if (!type) return spi__notice_missing(c, "", "detail-type");
  /* An EventBridge rule may well forward EC2 events this version does not
   * read: skipped and counted, not an error. */
  if (!spi__notice_known(type, EB_TYPES, 3, &t))
    return spi__notice_skip(c, 0, "detail-type", type);
  /* What detail says happens: the action, or the new state. */
  const char *arg_key = t == 0 ? "instance-action" : "state";
  if ((rc = spi__notice_get_string(c, root, "", "time", &time)) != SPI_OK ||
      (rc = spi__notice_get_string(c, root, "", "id", &id)) != SPI_OK ||
      (rc = spi__notice_get_typed(c, root, "", "detail", cJSON_Object,
                                  &detail)) != 0)
    return rc;
  if (detail && ((rc = spi__notice_get_string(c, detail, "detail",
                                              "instance-id", &instance)) != 0 ||
                 (t != 1 && (rc = spi__notice_get_string(c, detail, "detail",
                                                         arg_key, &arg)) != 0)))
    return rc;
  int64_t at = 0;
  if (time && (rc = spi__notice_parse_time(c, "time", time,
                                           spi__notice_time_rfc3339, &at)) != 0)
    return rc;
  if (id && (rc = spi__notice_check_id(c, "id", id)) != SPI_OK) return rc;
  if (instance &&
      (rc = spi__notice_check_id(c, "detail.instance-id", instance)) != 0)
    return rc;
  if (arg && t == 0 &&
      (rc = spi__notice_one_of(c, "detail.instance-action", arg, AWS_ACTIONS, 3,
                               &k)) != 0)
    return rc;
  if (arg && t == 2 &&
      (rc = spi__notice_one_of(c, "detail.state", arg, EC2_STATES, 6, &k)) != 0)
    return rc;
  if (!time) return spi__notice_missing(c, "", "time");
  if (!detail) return spi__notice_missing(c, "", "detail");
  if (!instance) return spi__notice_missing(c, "detail", "instance-id");
  if (t != 1 && !arg) return spi__notice_missing(c, "detail", arg_key);

  draft d = {SPI_NOTICE_NONE, instance, 0, 1, id ? id : ""};
  if (t == 0) {
    d.kind = AWS_ACTION_KINDS[k];
    d.deadline_ns = at + AWS_WARNING_NS; /* at is before 2262: no overflow */
  } else if (t == 1) {
    d.kind = SPI_NOTICE_REBALANCE;
  } else {
    d.kind = EC2_STATE_KINDS[k];
    if (d.kind == SPI_NOTICE_NONE) return SPI_OK; /* pending, running */
    d.deadline_ns = at; /* the machine is going, or gone, now */
  }
  return spi__notice_emit(c, &d, "aws:eb:%s:%s", instance,
                          spi_notice_kind_name(d.kind));
}
