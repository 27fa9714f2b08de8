/*
 * notice_azure.c - Azure IMDS Scheduled Events documents.
 *
 * One notice per entry of Resources (each names a machine the event
 * affects, not always the one polled); the caller's node when Resources is
 * absent or empty.
 *
 * A backend of the notice dispatch (curl's vtls pattern): no code but
 * notice.c should ever call the functions this file exports.
 */
#include <string.h>

#include "notice.h"

static const char *const AZ_TYPES[] = {"Reboot", "Redeploy", "Freeze",
                                       "Preempt", "Terminate"};
static const int32_t AZ_TYPE_KINDS[] = {
    SPI_NOTICE_MAINTENANCE, SPI_NOTICE_MAINTENANCE, SPI_NOTICE_MAINTENANCE,
    SPI_NOTICE_PREEMPT, SPI_NOTICE_TERMINATE};
/* Azure removes an event once it is over; there is no completed state. */
static const char *const AZ_STATUSES[] = {"Scheduled", "Started"};

static int azure_event(nctx *c, const cJSON *ev, size_t i) {
  char at[PATH_CAP], path[PATH_CAP];
  spi__errf(at, sizeof at, "Events[%zu]", i);
  if (!cJSON_IsObject(ev))
    return spi__notice_fail(c, SPI_ETYPE, "%s: must be an object, not %s", at,
                            spi__notice_type_name(ev));
  const char *id, *type, *status, *not_before;
  const cJSON *resources;
  int rc;
  if ((rc = spi__notice_get_string(c, ev, at, "EventId", &id)) != SPI_OK ||
      (rc = spi__notice_get_string(c, ev, at, "EventType", &type)) != SPI_OK ||
      (rc = spi__notice_get_string(c, ev, at, "EventStatus", &status)) !=
          SPI_OK ||
      (rc = spi__notice_get_string(c, ev, at, "NotBefore", &not_before)) !=
          SPI_OK ||
      (rc = spi__notice_get_typed(c, ev, at, "Resources", cJSON_Array,
                                  &resources)) != 0)
    return rc;
  size_t j = 0;
  for (const cJSON *r = resources ? resources->child : NULL; r;
       r = r->next, j++) {
    if (!cJSON_IsString(r) || !r->valuestring)
      return spi__notice_fail(c, SPI_ETYPE,
                              "%s.Resources[%zu]: must be a string, not %s", at,
                              j, spi__notice_type_name(r));
  }
  size_t k = 0, s = 0;
  int64_t deadline = 0;
  /* Azure adds event types (and may add states): such an event is skipped
   * and counted, and the document's other events are still read. */
  if (type && !spi__notice_known(type, AZ_TYPES, 5, &k)) {
    spi__notice_field_path(path, at, "EventType");
    return spi__notice_skip(c, i, path, type);
  }
  if (status && !spi__notice_known(status, AZ_STATUSES, 2, &s)) {
    spi__notice_field_path(path, at, "EventStatus");
    return spi__notice_skip(c, i, path, status);
  }
  if (not_before && not_before[0]) {
    spi__notice_field_path(path, at, "NotBefore");
    if ((rc = spi__notice_parse_time(
             c, path, not_before, spi__notice_time_azure, &deadline)) != SPI_OK)
      return rc;
  }
  if (id) {
    spi__notice_field_path(path, at, "EventId");
    if ((rc = spi__notice_check_id(c, path, id)) != SPI_OK) return rc;
  }
  j = 0;
  for (const cJSON *r = resources ? resources->child : NULL; r;
       r = r->next, j++) {
    spi__errf(path, sizeof path, "%s.Resources[%zu]", at, j);
    if ((rc = spi__notice_check_id(c, path, r->valuestring)) != SPI_OK)
      return rc;
  }
  if (!id) return spi__notice_missing(c, at, "EventId");
  if (!type) return spi__notice_missing(c, at, "EventType");
  if (!status) return spi__notice_missing(c, at, "EventStatus");
  if (!not_before || !not_before[0]) {
    /* Empty once started: it is happening now. Before that an empty time
     * would be a guessed deadline. */
    if (s != 1)
      return spi__notice_fail(c, SPI_EMISSING,
                              "%s.NotBefore: %s for a Scheduled event", at,
                              not_before ? "empty" : "required");
    deadline = c->now_ns;
  }
  draft d = {AZ_TYPE_KINDS[k], c->node, deadline, 1, id};
  if (!resources || !resources->child) {
    if ((rc = spi__notice_need_node(c)) != SPI_OK) return rc;
    return spi__notice_emit(c, &d, "azure:%s:%s", id, c->node);
  }
  for (const cJSON *r = resources->child; r; r = r->next) {
    d.node = r->valuestring;
    if ((rc = spi__notice_emit(c, &d, "azure:%s:%s", id, r->valuestring)) !=
        SPI_OK)
      return rc;
  }
  return SPI_OK;
}

/* {"DocumentIncarnation": n, "Events": [...]}. */
int spi__notice_azure_scheduled(nctx *c, const cJSON *root) {
  const cJSON *inc, *events;
  int rc;
  if ((rc = spi__notice_member(c, root, "", "DocumentIncarnation", &inc)) !=
      SPI_OK)
    return rc;
  /* 2^53: above it a double no longer holds every integer. */
  if (inc && (!cJSON_IsNumber(inc) || inc->valuedouble < 0 ||
              inc->valuedouble > 9007199254740992.0 ||
              inc->valuedouble != (double)(int64_t)inc->valuedouble))
    return spi__notice_fail(
        c, SPI_ETYPE,
        "DocumentIncarnation: must be a non-negative integer, not %s",
        cJSON_IsNumber(inc) ? "this number" : spi__notice_type_name(inc));
  if ((rc = spi__notice_get_typed(c, root, "", "Events", cJSON_Array,
                                  &events)) != 0)
    return rc;
  if (!inc) return spi__notice_missing(c, "", "DocumentIncarnation");
  if (!events) return spi__notice_missing(c, "", "Events");
  size_t i = 0;
  for (const cJSON *ev = events->child; ev; ev = ev->next, i++)
    if ((rc = azure_event(c, ev, i)) != SPI_OK) return rc;
  return SPI_OK;
}
