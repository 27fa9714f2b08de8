/*
 * test_classifier.c - the built-in "reference" classifier and the class
 * vocabularies (priority_map).
 *
 * The default rules are the reference architecture: interactive traffic
 * within a 2.5 s SLA, or streaming without one, or on the priority / scale
 * service tier is gold; flex-tier and long-SLA batch traffic is bronze;
 * retry-tolerant traffic and everything else is silver. Precedence is an
 * explicit class, then a priority, then the rules, then default_class.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine.h"
#include "fake_world.h"

#define LIT(s) (s), (sizeof(s) - 1)

/* ------------------------------------------------------------- fixtures */

/* Each test gets a world (fake_world.h) as its cmocka state. */

static void configure_(spi_engine *e, const char *json, int line) {
  int rc = spi_engine_configure(e, json, strlen(json));
  if (rc != SPI_OK)
    fail_msg("line %d: configure %s: %d %s", line, json, rc,
             spi_engine_errmsg(e));
}
#define configure(e, json) configure_((e), (json), __LINE__)

static spi_classification classify_(spi_request *r, int32_t pressure,
                                    int line) {
  spi_classification c;
  memset(&c, 0x5a, sizeof c); /* the library must fill every field */
  c.struct_size = sizeof c;
  int rc = spi_classify(r, pressure, &c);
  if (rc != SPI_OK)
    fail_msg("line %d: classify: %d %s", line, rc, spi_request_errmsg(r));
  return c;
}
#define classify(r) classify_((r), SPI_PRESSURE_NORMAL, __LINE__)
#define classify_at(r, p) classify_((r), (p), __LINE__)

/* Class, rule index and reason in one check. */
static void expect_(spi_request *r, int32_t klass, int32_t rule,
                    const char *reason, int line) {
  spi_classification c = classify_(r, SPI_PRESSURE_NORMAL, line);
  if (c.klass != klass || c.rule_index != rule || strcmp(c.reason, reason))
    fail_msg("line %d: got %s rule %d \"%s\", want %s rule %d \"%s\"", line,
             spi_class_name(c.klass), (int)c.rule_index, c.reason,
             spi_class_name(klass), (int)rule, reason);
}
#define expect(r, k, rule, reason) expect_((r), (k), (rule), (reason), __LINE__)

static void set_str(spi_request *r, int32_t field, const char *v) {
  assert_int_equal(spi_request_set_str(r, field, v, strlen(v)), SPI_OK);
}

static void set_int(spi_request *r, int32_t field, int64_t v) {
  assert_int_equal(spi_request_set_int(r, field, v), SPI_OK);
}

static void user_says(spi_request *r, const char *text) {
  assert_int_equal(spi_request_add_message(r, LIT("user"), text, strlen(text)),
                   SPI_OK);
}

/* A configuration must fail with status and exactly message. */
static void config_error_(spi_engine *e, const char *json, int status,
                          const char *message, int line) {
  int rc = spi_engine_configure(e, json, strlen(json));
  if (rc != status)
    fail_msg("line %d: configure %s: status %d (%s), want %d", line, json, rc,
             spi_engine_errmsg(e), status);
  if (strcmp(spi_engine_errmsg(e), message) != 0)
    fail_msg("line %d: configure %s:\n  message \"%s\"\n  want    \"%s\"", line,
             json, spi_engine_errmsg(e), message);
}
#define config_error(e, json, status, message) \
  config_error_((e), (json), (status), (message), __LINE__)

/* ------------------------------------------------------- default rules */

static void test_default_rules(void **state) {
  world *f = *state;
  spi_request *r = f->r;

  /* Nothing said: the default class. */
  expect(r, SPI_CLASS_SILVER, -1, "default class silver");

  /* priority / scale service tier. */
  set_str(r, SPI_REQ_SERVICE_TIER, "priority");
  expect(r, SPI_CLASS_GOLD, 0, "rule priority-tier");
  set_str(r, SPI_REQ_SERVICE_TIER, "scale");
  expect(r, SPI_CLASS_GOLD, 0, "rule priority-tier");
  set_str(r, SPI_REQ_SERVICE_TIER, "default");
  expect(r, SPI_CLASS_SILVER, -1, "default class silver");
  set_str(r, SPI_REQ_SERVICE_TIER, "auto");
  expect(r, SPI_CLASS_SILVER, -1, "default class silver");

  /* Streaming within 2.5 s. */
  spi_request_reset(r);
  set_int(r, SPI_REQ_STREAM, 1);
  set_int(r, SPI_REQ_SLA_MS, 2500);
  expect(r, SPI_CLASS_GOLD, 1, "rule interactive-sla");
  set_int(r, SPI_REQ_SLA_MS, 1);
  expect(r, SPI_CLASS_GOLD, 1, "rule interactive-sla");
  /* Just over: no gold rule applies. */
  set_int(r, SPI_REQ_SLA_MS, 2501);
  expect(r, SPI_CLASS_SILVER, -1, "default class silver");
  set_int(r, SPI_REQ_SLA_MS, 5000);
  expect(r, SPI_CLASS_SILVER, -1, "default class silver");
  /* Streaming without an SLA. */
  assert_int_equal(spi_request_unset_int(r, SPI_REQ_SLA_MS), SPI_OK);
  expect(r, SPI_CLASS_GOLD, 2, "rule interactive");
  /* Not streaming within 2.5 s is not interactive. */
  set_int(r, SPI_REQ_STREAM, 0);
  set_int(r, SPI_REQ_SLA_MS, 2000);
  expect(r, SPI_CLASS_SILVER, -1, "default class silver");

  /* flex tier. */
  spi_request_reset(r);
  set_str(r, SPI_REQ_SERVICE_TIER, "flex");
  expect(r, SPI_CLASS_BRONZE, 3, "rule background");
  /* Rules are ordered: streaming without an SLA comes first. */
  set_int(r, SPI_REQ_STREAM, 1);
  expect(r, SPI_CLASS_GOLD, 2, "rule interactive");

  /* Batch: not streaming, SLA of a minute or more. */
  spi_request_reset(r);
  set_int(r, SPI_REQ_SLA_MS, 60000);
  expect(r, SPI_CLASS_BRONZE, 4, "rule batch");
  set_int(r, SPI_REQ_STREAM, 0);
  set_int(r, SPI_REQ_SLA_MS, 86400000);
  expect(r, SPI_CLASS_BRONZE, 4, "rule batch");
  set_int(r, SPI_REQ_SLA_MS, 59999);
  expect(r, SPI_CLASS_SILVER, -1, "default class silver");
  set_int(r, SPI_REQ_STREAM, 1);
  set_int(r, SPI_REQ_SLA_MS, 60000);
  expect(r, SPI_CLASS_SILVER, -1, "default class silver");

  /* Retry tolerant. */
  spi_request_reset(r);
  set_int(r, SPI_REQ_REPLAYABLE, 1);
  expect(r, SPI_CLASS_SILVER, 5, "rule retry-tolerant");
  set_int(r, SPI_REQ_REPLAYABLE, 0);
  expect(r, SPI_CLASS_SILVER, -1, "default class silver");

  /* Replayable defaults per class: gold no, silver and bronze yes. */
  spi_request_reset(r);
  set_str(r, SPI_REQ_SERVICE_TIER, "priority");
  assert_int_equal(classify(r).replayable, 0);
  set_str(r, SPI_REQ_SERVICE_TIER, "flex");
  assert_int_equal(classify(r).replayable, 1);
  set_str(r, SPI_REQ_SERVICE_TIER, "default");
  assert_int_equal(classify(r).replayable, 1);

  /* The same rules from an OpenAI body. */
  assert_int_equal(
      spi_request_parse_openai(
          r,
          LIT("{\"model\":\"m\",\"stream\":true,\"messages\":[{\"role\":\"user\","
              "\"content\":\"hi\"}],\"metadata\":{\"sla_ms\":\"800\"}}"),
          SPI_OPENAI_AUTO),
      SPI_OK);
  expect(r, SPI_CLASS_GOLD, 1, "rule interactive-sla");
  assert_int_equal(
      spi_request_parse_openai(
          r, LIT("{\"model\":\"m\",\"prompt\":\"x\",\"service_tier\":\"flex\"}"),
          SPI_OPENAI_AUTO),
      SPI_OK);
  expect(r, SPI_CLASS_BRONZE, 3, "rule background");
}

/* ------------------------------------------------------------ precedence */

static void test_explicit_class_precedence(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  /* Every rule says gold; the explicit class wins. */
  set_int(r, SPI_REQ_STREAM, 1);
  set_str(r, SPI_REQ_SERVICE_TIER, "priority");
  set_str(r, SPI_REQ_CLASS, "bronze");
  expect(r, SPI_CLASS_BRONZE, -1, "explicit class bronze");
  /* Over a priority too. */
  set_int(r, SPI_REQ_PRIORITY, -5);
  expect(r, SPI_CLASS_BRONZE, -1, "explicit class bronze");
  set_str(r, SPI_REQ_CLASS, "gold");
  set_int(r, SPI_REQ_PRIORITY, 7);
  expect(r, SPI_CLASS_GOLD, -1, "explicit class gold");
  set_str(r, SPI_REQ_CLASS, "silver");
  expect(r, SPI_CLASS_SILVER, -1, "explicit class silver");
  /* Cleared: the priority decides again. */
  set_str(r, SPI_REQ_CLASS, "");
  expect(r, SPI_CLASS_BRONZE, -1, "priority 7 maps to bronze");

  /* honor_explicit_class off: the class is ignored. */
  configure(f->e, "{\"classifier\":{\"honor_explicit_class\":false}}");
  spi_request_reset(r);
  set_str(r, SPI_REQ_CLASS, "bronze");
  set_int(r, SPI_REQ_STREAM, 1);
  expect(r, SPI_CLASS_GOLD, 2, "rule interactive");
  set_int(r, SPI_REQ_PRIORITY, 1);
  expect(r, SPI_CLASS_BRONZE, -1, "priority 1 maps to bronze");
}

static void test_priority_precedence(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  static const struct {
    int64_t prio;
    int32_t klass;
    const char *reason;
  } rows[] = {
      {-1000000, SPI_CLASS_GOLD, "priority -1000000 maps to gold"},
      {-5, SPI_CLASS_GOLD, "priority -5 maps to gold"},
      {-1, SPI_CLASS_GOLD, "priority -1 maps to gold"},
      {0, SPI_CLASS_SILVER, "priority 0 maps to silver"},
      {1, SPI_CLASS_BRONZE, "priority 1 maps to bronze"},
      {7, SPI_CLASS_BRONZE, "priority 7 maps to bronze"},
      {1000000, SPI_CLASS_BRONZE, "priority 1000000 maps to bronze"},
  };
  /* The priority beats every rule: the request also looks interactive. */
  set_int(r, SPI_REQ_STREAM, 1);
  set_str(r, SPI_REQ_SERVICE_TIER, "priority");
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    set_int(r, SPI_REQ_PRIORITY, rows[i].prio);
    expect(r, rows[i].klass, -1, rows[i].reason);
  }
  /* The vLLM field of a body is the same priority. */
  assert_int_equal(
      spi_request_parse_openai(
          r, LIT("{\"model\":\"m\",\"prompt\":\"p\",\"priority\":-3}"),
          SPI_OPENAI_AUTO),
      SPI_OK);
  expect(r, SPI_CLASS_GOLD, -1, "priority -3 maps to gold");

  /* honor_priority off: the rules decide. */
  configure(f->e, "{\"classifier\":{\"honor_priority\":false}}");
  spi_request_reset(r);
  set_int(r, SPI_REQ_PRIORITY, 7);
  set_int(r, SPI_REQ_STREAM, 1);
  expect(r, SPI_CLASS_GOLD, 2, "rule interactive");
  set_int(r, SPI_REQ_PRIORITY, -5);
  set_int(r, SPI_REQ_STREAM, 0);
  expect(r, SPI_CLASS_SILVER, -1, "default class silver");

  /* A custom vLLM map moves the thresholds. */
  configure(f->e, "{\"priority_map\":{\"vllm\":{\"gold\":-10,\"silver\":5,"
                  "\"bronze\":20}}}");
  static const struct {
    int64_t prio;
    int32_t klass;
  } custom[] = {{-11, SPI_CLASS_GOLD},   {-10, SPI_CLASS_GOLD},
                {-9, SPI_CLASS_SILVER},  {5, SPI_CLASS_SILVER},
                {6, SPI_CLASS_BRONZE},   {20, SPI_CLASS_BRONZE},
                {500, SPI_CLASS_BRONZE}};
  for (size_t i = 0; i < sizeof custom / sizeof custom[0]; i++) {
    set_int(r, SPI_REQ_PRIORITY, custom[i].prio);
    spi_classification c = classify(r);
    if (c.klass != custom[i].klass)
      fail_msg("priority %lld: %s, want %s", (long long)custom[i].prio,
               spi_class_name(c.klass), spi_class_name(custom[i].klass));
    assert_int_equal(c.rule_index, -1);
  }
}

/* ----------------------------------------------------------- replayable */

static void test_replayable(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  configure(f->e,
            "{\"classifier\":{\"rules\":["
            "{\"name\":\"live\",\"when\":{\"stream\":true},\"class\":\"gold\","
            "\"replayable\":true},"
            "{\"name\":\"bulk\",\"when\":{\"sla_ms_min\":1000},\"class\":"
            "\"bronze\",\"replayable\":false},"
            "{\"name\":\"plain-gold\",\"when\":{\"has_tools\":true},\"class\":"
            "\"gold\"}]}}");
  /* The rule's word beats the class default (gold is not replayable). */
  set_int(r, SPI_REQ_STREAM, 1);
  spi_classification c = classify(r);
  assert_int_equal(c.klass, SPI_CLASS_GOLD);
  assert_int_equal(c.replayable, 1);
  /* The request's own word beats the rule. */
  set_int(r, SPI_REQ_REPLAYABLE, 0);
  assert_int_equal(classify(r).replayable, 0);
  set_int(r, SPI_REQ_REPLAYABLE, 1);
  assert_int_equal(classify(r).replayable, 1);
  /* A rule that says false (bronze defaults to true). */
  spi_request_reset(r);
  set_int(r, SPI_REQ_SLA_MS, 5000);
  c = classify(r);
  assert_int_equal(c.klass, SPI_CLASS_BRONZE);
  assert_int_equal(c.replayable, 0);
  set_int(r, SPI_REQ_REPLAYABLE, 1);
  assert_int_equal(classify(r).replayable, 1);
  /* A rule that says nothing: the class default. */
  spi_request_reset(r);
  set_str(r, SPI_REQ_TOOLS_JSON, "[]");
  c = classify(r);
  assert_int_equal(c.klass, SPI_CLASS_GOLD);
  assert_int_equal(c.replayable, 0);
  /* No rule at all: the default class (silver) default. */
  spi_request_reset(r);
  c = classify(r);
  assert_int_equal(c.klass, SPI_CLASS_SILVER);
  assert_int_equal(c.replayable, 1);

  /* Class defaults from replayable_default, explicit classes. */
  configure(f->e, "{\"classifier\":{\"replayable_default\":{\"gold\":true,"
                  "\"silver\":false,\"bronze\":false}}}");
  static const char *const names[] = {"gold", "silver", "bronze"};
  static const int32_t want[] = {1, 0, 0};
  for (int i = 0; i < 3; i++) {
    spi_request_reset(r);
    set_str(r, SPI_REQ_CLASS, names[i]);
    assert_int_equal(classify(r).replayable, want[i]);
    set_int(r, SPI_REQ_REPLAYABLE, !want[i]);
    assert_int_equal(classify(r).replayable, !want[i]);
  }
  /* Defaults restored. */
  configure(f->e, "{}");
  for (int i = 0; i < 3; i++) {
    spi_request_reset(r);
    set_str(r, SPI_REQ_CLASS, names[i]);
    assert_int_equal(classify(r).replayable, i == 0 ? 0 : 1);
  }
}

/* -------------------------------------------------------- degrade plans */

static void test_degrade_defaults(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  static const struct {
    const char *klass;
    int64_t cap[4];
    int32_t tools[4], defer[4];
  } plans[] = {
      {"gold", {0, 0, 0, 2048}, {1, 1, 1, 1}, {0, 0, 0, 0}},
      {"silver", {0, 1024, 512, 256}, {1, 1, 0, 0}, {0, 0, 0, 0}},
      {"bronze", {0, 512, 256, 256}, {1, 1, 0, 0}, {0, 0, 0, 1}},
  };
  for (int k = 0; k < 3; k++) {
    spi_request_reset(r);
    set_str(r, SPI_REQ_CLASS, plans[k].klass);
    for (int32_t p = SPI_PRESSURE_NORMAL; p <= SPI_PRESSURE_CRITICAL; p++) {
      spi_classification c = classify_at(r, p);
      assert_int_equal(c.klass, SPI_CLASS_GOLD + k);
      assert_int_equal(c.pressure, p);
      if (c.max_output_tokens != plans[k].cap[p] ||
          c.tools_allowed != plans[k].tools[p] ||
          c.defer != plans[k].defer[p])
        fail_msg("%s at pressure %d: cap %lld tools %d defer %d", plans[k].klass,
                 (int)p, (long long)c.max_output_tokens, (int)c.tools_allowed,
                 (int)c.defer);
    }
  }
  /* Pressure outside 0..3, and bad output structs. */
  spi_classification c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  assert_int_equal(spi_classify(r, -1, &c), SPI_EINVAL);
  assert_string_equal(spi_request_errmsg(r), "pressure -1 is not 0..3");
  assert_int_equal(spi_classify(r, 4, &c), SPI_EINVAL);
  assert_int_equal(spi_classify(r, INT32_MAX, &c), SPI_EINVAL);
  assert_int_equal(spi_classify(r, 0, NULL), SPI_EINVAL);
  c.struct_size = sizeof c - 1;
  assert_int_equal(spi_classify(r, 0, &c), SPI_EINVAL);
  c.struct_size = 0;
  assert_int_equal(spi_classify(r, 0, &c), SPI_EINVAL);
}

static void test_degrade_custom(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  configure(f->e,
            "{\"classifier\":{\"degrade\":{"
            "\"gold\":[{},{\"max_output_tokens\":4000},{\"tools\":false},"
            "{\"defer\":true,\"max_output_tokens\":1}],"
            "\"bronze\":[{\"defer\":true},{\"defer\":true},{\"defer\":true},"
            "{\"defer\":true}]}}}");
  set_str(r, SPI_REQ_CLASS, "gold");
  spi_classification c = classify_at(r, 1);
  assert_int_equal(c.max_output_tokens, 4000);
  assert_int_equal(c.tools_allowed, 1);
  c = classify_at(r, 2);
  assert_int_equal(c.max_output_tokens, 0);
  assert_int_equal(c.tools_allowed, 0);
  assert_int_equal(c.defer, 0);
  c = classify_at(r, 3);
  assert_int_equal(c.max_output_tokens, 1);
  assert_int_equal(c.defer, 1);
  /* silver was not given: its default plan stays. */
  set_str(r, SPI_REQ_CLASS, "silver");
  assert_int_equal(classify_at(r, 1).max_output_tokens, 1024);
  set_str(r, SPI_REQ_CLASS, "bronze");
  c = classify_at(r, 0);
  assert_int_equal(c.defer, 1);
  assert_int_equal(c.max_output_tokens, 0);
}

/* ------------------------------------------------- vocabularies in verdict */

/* A class's priorities and service tier in its verdict. */
typedef struct {
  const char *klass;
  int32_t vllm, llmd, tier;
} class_vocab;

static void assert_vocab(spi_request *r, const class_vocab want[3]) {
  for (int k = 0; k < 3; k++) {
    set_str(r, SPI_REQ_CLASS, want[k].klass);
    spi_classification c = classify(r);
    assert_int_equal(c.vllm_priority, want[k].vllm);
    assert_int_equal(c.llmd_priority, want[k].llmd);
    assert_int_equal(c.service_tier, want[k].tier);
  }
}

static void test_priority_map_in_verdict(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  static const class_vocab defaults[] = {
      {"gold", -1, 1, SPI_SERVICE_TIER_PRIORITY},
      {"silver", 0, 0, SPI_SERVICE_TIER_DEFAULT},
      {"bronze", 1, -1, SPI_SERVICE_TIER_FLEX},
  };
  assert_vocab(r, defaults);
  configure(f->e,
            "{\"priority_map\":{\"vllm\":{\"gold\":-10,\"silver\":5,\"bronze\":"
            "20},\"llmd\":{\"gold\":100,\"silver\":50,\"bronze\":-3},"
            "\"service_tier\":{\"gold\":\"scale\",\"silver\":\"auto\","
            "\"bronze\":\"default\"}}}");
  static const class_vocab custom[] = {
      {"gold", -10, 100, SPI_SERVICE_TIER_SCALE},
      {"silver", 5, 50, SPI_SERVICE_TIER_AUTO},
      {"bronze", 20, -3, SPI_SERVICE_TIER_DEFAULT},
  };
  assert_vocab(r, custom);
  /* A verdict reached through a rule carries them too. */
  spi_request_reset(r);
  set_int(r, SPI_REQ_STREAM, 1);
  spi_classification c = classify(r);
  assert_int_equal(c.klass, SPI_CLASS_GOLD);
  assert_int_equal(c.vllm_priority, -10);
  assert_int_equal(c.llmd_priority, 100);
  assert_int_equal(c.service_tier, SPI_SERVICE_TIER_SCALE);
}

/* -------------------------------------------------------------- cascade */

static double complexity_of(spi_request *r, const char *text, int32_t *tier) {
  spi_request_reset(r);
  user_says(r, text);
  spi_classification c = classify(r);
  if (tier) *tier = c.model_tier;
  return c.complexity;
}

static void test_cascade_off_by_default(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  /* Without cascade routing every request goes to the large model and
   * scores 0, however complex it looks. */
  static const char *const texts[] = {"hi", "Analyze and compare? why? how?",
                                      ""};
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    int32_t tier = 0;
    assert_true(complexity_of(r, texts[i], &tier) == 0.0);
    assert_int_equal(tier, SPI_TIER_LARGE);
  }
  /* Weights alone do not switch it on. */
  configure(f->e, "{\"classifier\":{\"cascade\":{\"large_threshold\":100}}}");
  int32_t tier = 0;
  assert_true(complexity_of(r, "analyze", &tier) == 0.0);
  assert_int_equal(tier, SPI_TIER_LARGE);
}

static void test_cascade_defaults(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  configure(f->e, "{\"classifier\":{\"cascade\":{\"enabled\":true}}}");
  int32_t tier = 0;
  assert_true(complexity_of(r, "hi", &tier) == 0.0);
  assert_int_equal(tier, SPI_TIER_SMALL);
  assert_true(complexity_of(r, "", &tier) == 0.0);

  /* Length: more than 300 bytes. */
  char text[400];
  memset(text, 'a', sizeof text);
  text[300] = '\0';
  assert_true(complexity_of(r, text, NULL) == 0.0);
  text[300] = 'a';
  text[301] = '\0';
  assert_true(complexity_of(r, text, &tier) == 1.0);
  assert_int_equal(tier, SPI_TIER_SMALL);

  /* Each keyword, in any case, once. */
  static const char *const hits[] = {
      "please analyze this",  "ANALYZE",          "Compare a and b",
      "cOmPaRe",              "explain why not",  "Explain Why",
      "go step by step",      "STEP BY STEP",     "write code for me",
      "Write Code",           "reanalyzed",       "analyze analyze analyze"};
  for (size_t i = 0; i < sizeof hits / sizeof hits[0]; i++) {
    double s = complexity_of(r, hits[i], &tier);
    if (s != 1.0) fail_msg("\"%s\": complexity %g, want 1", hits[i], s);
    assert_int_equal(tier, SPI_TIER_SMALL);
  }
  static const char *const misses[] = {"analyse", "comparison",
                                       "explain  why", "step-by-step",
                                       "writecode", "anal yze"};
  for (size_t i = 0; i < sizeof misses / sizeof misses[0]; i++) {
    double s = complexity_of(r, misses[i], NULL);
    if (s != 0.0) fail_msg("\"%s\": complexity %g, want 0", misses[i], s);
  }

  /* Question marks: more than 2. */
  assert_true(complexity_of(r, "a? b?", NULL) == 0.0);
  assert_true(complexity_of(r, "a? b? c?", NULL) == 1.0);
  assert_true(complexity_of(r, "???", NULL) == 1.0);

  /* The threshold (2) picks the large model. */
  assert_true(complexity_of(r, "Analyze and compare", &tier) == 2.0);
  assert_int_equal(tier, SPI_TIER_LARGE);
  assert_true(complexity_of(r, "analyze? compare? explain why? step by step, "
                               "write code",
                            &tier) == 6.0);
  assert_int_equal(tier, SPI_TIER_LARGE);

  /* Only the last user message counts. */
  spi_request_reset(r);
  user_says(r, "analyze and compare");
  assert_int_equal(spi_request_add_message(r, LIT("assistant"),
                                           LIT("explain why step by step")),
                   SPI_OK);
  user_says(r, "thanks");
  assert_int_equal(spi_request_add_message(r, LIT("assistant"),
                                           LIT("analyze compare")),
                   SPI_OK);
  spi_classification c = classify(r);
  assert_true(c.complexity == 0.0);
  assert_int_equal(c.model_tier, SPI_TIER_SMALL);
  /* A completions prompt is the query. */
  spi_request_reset(r);
  set_str(r, SPI_REQ_PROMPT, "Compare and analyze");
  c = classify(r);
  assert_true(c.complexity == 2.0);
  assert_int_equal(c.model_tier, SPI_TIER_LARGE);

  /* Keywords and question marks count within the first scan_bytes (2048
   * by default); length counts the whole query. */
  char *big = malloc(4096);
  assert_non_null(big);
  memset(big, 'x', 4096);
  memcpy(big + 2048 - 7, "analyze", 7);
  memcpy(big + 2048, "compare???", 10);
  big[2058] = '\0';
  spi_request_reset(r);
  user_says(r, big);
  c = classify(r);
  assert_true(c.complexity == 2.0); /* length + "analyze" */
  configure(f->e, "{\"classifier\":{\"cascade\":{\"enabled\":true,"
                  "\"scan_bytes\":2047}}}");
  c = classify(r);
  assert_true(c.complexity == 1.0); /* length only */
  configure(f->e, "{\"classifier\":{\"cascade\":{\"enabled\":true,"
                  "\"scan_bytes\":8192}}}");
  c = classify(r);
  assert_true(c.complexity == 4.0); /* length, two keywords, questions */
  free(big);
}

static void test_cascade_custom(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  configure(f->e, "{\"classifier\":{\"cascade\":{\"enabled\":true,"
                  "\"keywords\":[\"Prove\","
                  "\"LEMMA\"],\"keyword_weight\":0.5,\"long_query_bytes\":10,"
                  "\"length_weight\":3,\"question_marks\":0,"
                  "\"question_weight\":0.25,\"large_threshold\":1}}}");
  int32_t tier = 0;
  assert_true(complexity_of(r, "prove it", &tier) == 0.5);
  assert_int_equal(tier, SPI_TIER_SMALL);
  assert_true(complexity_of(r, "a lemma?", &tier) == 0.75);
  assert_int_equal(tier, SPI_TIER_SMALL);
  assert_true(complexity_of(r, "PROVE LEMMA", &tier) == 4.0);
  assert_int_equal(tier, SPI_TIER_LARGE);
  assert_true(complexity_of(r, "prove lemma", &tier) == 4.0);
  /* The default keywords are gone. */
  assert_true(complexity_of(r, "analyze", &tier) == 0.0);
  /* Exactly the threshold is large. */
  configure(f->e, "{\"classifier\":{\"cascade\":{\"enabled\":true,"
                  "\"keywords\":[\"x\"],"
                  "\"large_threshold\":1}}}");
  assert_true(complexity_of(r, "x", &tier) == 1.0);
  assert_int_equal(tier, SPI_TIER_LARGE);
  /* No keywords at all, threshold 0: everything is large. */
  configure(f->e, "{\"classifier\":{\"cascade\":{\"enabled\":true,"
                  "\"keywords\":[],"
                  "\"large_threshold\":0}}}");
  assert_true(complexity_of(r, "analyze", &tier) == 0.0);
  assert_int_equal(tier, SPI_TIER_LARGE);
  /* A 64-byte keyword is the longest. */
  char json[256], kw[65];
  memset(kw, 'k', 64);
  kw[64] = '\0';
  snprintf(json, sizeof json,
           "{\"classifier\":{\"cascade\":{\"enabled\":true,\"keywords\":"
           "[\"%s\"]}}}",
           kw);
  configure(f->e, json);
  assert_true(complexity_of(r, kw, NULL) == 1.0);
  kw[63] = '\0';
  assert_true(complexity_of(r, kw, NULL) == 0.0);
}

/* ------------------------------------------------------- custom rules */

/* One rule, gold when it matches; everything else falls to bronze. */
static void one_rule(spi_engine *e, const char *when, const char *extra) {
  char json[1024];
  snprintf(json, sizeof json,
           "{\"classifier\":{\"default_class\":\"bronze\",%s\"rules\":[{"
           "\"name\":\"r\",\"class\":\"gold\",\"when\":%s}]}}",
           extra ? extra : "", when);
  configure(e, json);
}

static void match_(spi_request *r, int want, int line) {
  spi_classification c = classify_(r, SPI_PRESSURE_NORMAL, line);
  int got = c.klass == SPI_CLASS_GOLD;
  if (got != want)
    fail_msg("line %d: rule %s, want %s (%s, %s)", line,
             got ? "matched" : "did not match", want ? "a match" : "none",
             spi_class_name(c.klass), c.reason);
  if (got) {
    assert_int_equal(c.rule_index, 0);
    assert_string_equal(c.reason, "rule r");
  } else {
    assert_int_equal(c.rule_index, -1);
    assert_string_equal(c.reason, "default class bronze");
  }
}
#define MATCH(r) match_((r), 1, __LINE__)
#define NO_MATCH(r) match_((r), 0, __LINE__)

static void test_rule_conditions(void **state) {
  world *f = *state;
  spi_engine *e = f->e;
  spi_request *r = f->r;

  one_rule(e, "{}", NULL); /* {} matches everything */
  MATCH(r);

  one_rule(e, "{\"stream\":true}", NULL);
  NO_MATCH(r);
  set_int(r, SPI_REQ_STREAM, 1);
  MATCH(r);
  one_rule(e, "{\"stream\":false}", NULL);
  NO_MATCH(r);
  set_int(r, SPI_REQ_STREAM, 0);
  MATCH(r);
  spi_request_reset(r); /* unset is not streaming */
  MATCH(r);

  one_rule(e, "{\"replayable\":true}", NULL);
  NO_MATCH(r); /* unset never matches */
  set_int(r, SPI_REQ_REPLAYABLE, 1);
  MATCH(r);
  set_int(r, SPI_REQ_REPLAYABLE, 0);
  NO_MATCH(r);
  one_rule(e, "{\"replayable\":false}", NULL);
  MATCH(r);
  spi_request_reset(r);
  NO_MATCH(r);

  one_rule(e, "{\"has_sla\":true}", NULL);
  NO_MATCH(r);
  set_int(r, SPI_REQ_SLA_MS, 100);
  MATCH(r);
  one_rule(e, "{\"has_sla\":false}", NULL);
  NO_MATCH(r);
  spi_request_reset(r);
  MATCH(r);

  one_rule(e, "{\"has_tools\":true}", NULL);
  NO_MATCH(r);
  set_str(r, SPI_REQ_TOOLS_JSON, "[]");
  MATCH(r);
  one_rule(e, "{\"has_tools\":false}", NULL);
  NO_MATCH(r);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, NULL, 0), SPI_OK);
  MATCH(r);

  one_rule(e, "{\"sla_ms_min\":1000}", NULL);
  spi_request_reset(r);
  NO_MATCH(r);
  set_int(r, SPI_REQ_SLA_MS, 999);
  NO_MATCH(r);
  set_int(r, SPI_REQ_SLA_MS, 1000);
  MATCH(r);
  set_int(r, SPI_REQ_SLA_MS, 86400000);
  MATCH(r);
  one_rule(e, "{\"sla_ms_max\":1000}", NULL);
  NO_MATCH(r);
  set_int(r, SPI_REQ_SLA_MS, 1000);
  MATCH(r);
  set_int(r, SPI_REQ_SLA_MS, 1);
  MATCH(r);
  set_int(r, SPI_REQ_SLA_MS, 1001);
  NO_MATCH(r);
  spi_request_reset(r);
  NO_MATCH(r);
  one_rule(e, "{\"sla_ms_min\":200,\"sla_ms_max\":300}", NULL);
  set_int(r, SPI_REQ_SLA_MS, 199);
  NO_MATCH(r);
  set_int(r, SPI_REQ_SLA_MS, 250);
  MATCH(r);
  set_int(r, SPI_REQ_SLA_MS, 301);
  NO_MATCH(r);
  /* A bound on the SLA asks for one: with has_sla false no request
   * matches, with or without an SLA (the rules' yes/no facts are folded
   * into one test at configure time, and these two contradict). */
  one_rule(e, "{\"has_sla\":false,\"sla_ms_max\":1000}", NULL);
  set_int(r, SPI_REQ_SLA_MS, 500);
  NO_MATCH(r);
  spi_request_reset(r);
  NO_MATCH(r);
  /* Several facts at once: each must hold. */
  one_rule(e, "{\"stream\":false,\"replayable\":false,\"has_tools\":false}",
           NULL);
  NO_MATCH(r); /* replayable unset */
  set_int(r, SPI_REQ_REPLAYABLE, 0);
  MATCH(r);
  set_int(r, SPI_REQ_STREAM, 1);
  NO_MATCH(r);
  set_int(r, SPI_REQ_STREAM, 0);
  set_str(r, SPI_REQ_TOOLS_JSON, "[]");
  NO_MATCH(r);
  spi_request_reset(r);

  /* Priorities reach the rules only with honor_priority off. */
  const char *noprio = "\"honor_priority\":false,";
  one_rule(e, "{\"priority_min\":-5}", noprio);
  spi_request_reset(r);
  NO_MATCH(r);
  set_int(r, SPI_REQ_PRIORITY, -6);
  NO_MATCH(r);
  set_int(r, SPI_REQ_PRIORITY, -5);
  MATCH(r);
  set_int(r, SPI_REQ_PRIORITY, 1000000);
  MATCH(r);
  one_rule(e, "{\"priority_max\":3}", noprio);
  set_int(r, SPI_REQ_PRIORITY, 4);
  NO_MATCH(r);
  set_int(r, SPI_REQ_PRIORITY, 3);
  MATCH(r);
  set_int(r, SPI_REQ_PRIORITY, -1000000);
  MATCH(r);
  assert_int_equal(spi_request_unset_int(r, SPI_REQ_PRIORITY), SPI_OK);
  NO_MATCH(r);

  one_rule(e, "{\"expected_output_tokens_min\":100}", NULL);
  NO_MATCH(r);
  set_int(r, SPI_REQ_EXPECTED_OUTPUT_TOKENS, 99);
  NO_MATCH(r);
  set_int(r, SPI_REQ_EXPECTED_OUTPUT_TOKENS, 100);
  MATCH(r);
  one_rule(e, "{\"expected_output_tokens_max\":200}", NULL);
  set_int(r, SPI_REQ_EXPECTED_OUTPUT_TOKENS, 200);
  MATCH(r);
  set_int(r, SPI_REQ_EXPECTED_OUTPUT_TOKENS, 0);
  MATCH(r);
  set_int(r, SPI_REQ_EXPECTED_OUTPUT_TOKENS, 201);
  NO_MATCH(r);
  assert_int_equal(
      spi_request_unset_int(r, SPI_REQ_EXPECTED_OUTPUT_TOKENS), SPI_OK);
  NO_MATCH(r);
  /* max_output_tokens is not the expected count. */
  set_int(r, SPI_REQ_MAX_OUTPUT_TOKENS, 150);
  NO_MATCH(r);

  one_rule(e, "{\"service_tier\":[\"auto\",\"default\"]}", NULL);
  spi_request_reset(r);
  NO_MATCH(r);
  set_str(r, SPI_REQ_SERVICE_TIER, "auto");
  MATCH(r);
  set_str(r, SPI_REQ_SERVICE_TIER, "default");
  MATCH(r);
  set_str(r, SPI_REQ_SERVICE_TIER, "flex");
  NO_MATCH(r);
  set_str(r, SPI_REQ_SERVICE_TIER, "scale");
  NO_MATCH(r);
  one_rule(e, "{\"service_tier\":[]}", NULL); /* empty list: no condition */
  MATCH(r);

  one_rule(e, "{\"tenant_tier\":[\"enterprise\",\"pro\"]}", NULL);
  spi_request_reset(r);
  NO_MATCH(r);
  set_str(r, SPI_REQ_TENANT_TIER, "enterprise");
  MATCH(r);
  set_str(r, SPI_REQ_TENANT_TIER, "pro");
  MATCH(r);
  set_str(r, SPI_REQ_TENANT_TIER, "Enterprise");
  NO_MATCH(r);
  set_str(r, SPI_REQ_TENANT_TIER, "enterprise2");
  NO_MATCH(r);
  set_str(r, SPI_REQ_TENANT_TIER, "pr");
  NO_MATCH(r);
  set_str(r, SPI_REQ_TENANT_TIER, "free");
  NO_MATCH(r);

  /* All conditions together: each must hold. */
  one_rule(e,
           "{\"stream\":true,\"replayable\":false,\"has_sla\":true,"
           "\"has_tools\":true,\"sla_ms_min\":100,\"sla_ms_max\":200,"
           "\"priority_min\":-2,\"priority_max\":2,"
           "\"expected_output_tokens_min\":10,"
           "\"expected_output_tokens_max\":20,\"service_tier\":[\"flex\"],"
           "\"tenant_tier\":[\"gold-tenants\"]}",
           noprio);
  spi_request_reset(r);
  set_int(r, SPI_REQ_STREAM, 1);
  set_int(r, SPI_REQ_REPLAYABLE, 0);
  set_int(r, SPI_REQ_SLA_MS, 150);
  set_str(r, SPI_REQ_TOOLS_JSON, "[{\"type\":\"function\"}]");
  set_int(r, SPI_REQ_PRIORITY, 0);
  set_int(r, SPI_REQ_EXPECTED_OUTPUT_TOKENS, 15);
  set_str(r, SPI_REQ_SERVICE_TIER, "flex");
  set_str(r, SPI_REQ_TENANT_TIER, "gold-tenants");
  MATCH(r);
  /* Break one condition at a time. */
  set_int(r, SPI_REQ_STREAM, 0);
  NO_MATCH(r);
  set_int(r, SPI_REQ_STREAM, 1);
  set_int(r, SPI_REQ_REPLAYABLE, 1);
  NO_MATCH(r);
  set_int(r, SPI_REQ_REPLAYABLE, 0);
  set_int(r, SPI_REQ_SLA_MS, 201);
  NO_MATCH(r);
  set_int(r, SPI_REQ_SLA_MS, 150);
  set_int(r, SPI_REQ_PRIORITY, 3);
  NO_MATCH(r);
  set_int(r, SPI_REQ_PRIORITY, 0);
  set_int(r, SPI_REQ_EXPECTED_OUTPUT_TOKENS, 9);
  NO_MATCH(r);
  set_int(r, SPI_REQ_EXPECTED_OUTPUT_TOKENS, 15);
  set_str(r, SPI_REQ_SERVICE_TIER, "default");
  NO_MATCH(r);
  set_str(r, SPI_REQ_SERVICE_TIER, "flex");
  set_str(r, SPI_REQ_TENANT_TIER, "silver-tenants");
  NO_MATCH(r);
  set_str(r, SPI_REQ_TENANT_TIER, "gold-tenants");
  assert_int_equal(spi_request_set_str(r, SPI_REQ_TOOLS_JSON, NULL, 0), SPI_OK);
  NO_MATCH(r);
  set_str(r, SPI_REQ_TOOLS_JSON, "[]");
  MATCH(r);
}

static void set_meta(spi_request *r, const char *k, const char *v) {
  assert_int_equal(spi_request_set_metadata(r, k, strlen(k), v, strlen(v)),
                   SPI_OK);
}

/* when.metadata: every key given must be there (its last pair) with one
 * of its values; keys the rule does not name do not matter. */
static void test_rule_metadata(void **state) {
  world *f = *state;
  spi_engine *e = f->e;
  spi_request *r = f->r;
  one_rule(e, "{\"metadata\":{\"team\":[\"search\",\"ads\"],\"env\":[\"prod\"]}}",
           NULL);
  NO_MATCH(r);
  set_meta(r, "team", "search");
  NO_MATCH(r); /* env missing */
  set_meta(r, "env", "prod");
  MATCH(r);
  set_meta(r, "other", "x");
  MATCH(r);
  set_meta(r, "team", "billing"); /* a later pair overrides */
  NO_MATCH(r);
  set_meta(r, "team", "ads");
  MATCH(r);
  spi_request_reset(r);
  set_meta(r, "team", "Search"); /* exact bytes */
  set_meta(r, "env", "prod");
  NO_MATCH(r);
  spi_request_reset(r);
  set_meta(r, "teams", "search"); /* a key is matched whole */
  set_meta(r, "env", "prod");
  NO_MATCH(r);
  spi_request_reset(r);
  set_meta(r, "env", "prod");
  set_meta(r, "team", "searc");
  NO_MATCH(r);
  /* An empty value is a value; a known key is matched too, and still sets
   * its attribute. */
  one_rule(e, "{\"metadata\":{\"note\":[\"\"],\"tenant\":[\"acme\"]}}", NULL);
  spi_request_reset(r);
  set_meta(r, "tenant", "acme");
  NO_MATCH(r);
  set_meta(r, "note", "");
  MATCH(r);
  /* From an OpenAI body's metadata object. */
  one_rule(e, "{\"metadata\":{\"team\":[\"search\"]}}", NULL);
  const char *body = "{\"model\":\"m\",\"metadata\":{\"team\":\"search\"},"
                     "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
  assert_int_equal(spi_request_parse_openai(r, body, strlen(body), SPI_OPENAI_AUTO),
                   SPI_OK);
  MATCH(r);
  /* Rules keep their own keys and values. */
  configure(e, "{\"classifier\":{\"default_class\":\"gold\",\"rules\":["
               "{\"name\":\"a\",\"when\":{\"metadata\":{\"k\":[\"1\"]}},"
               "\"class\":\"bronze\"},"
               "{\"name\":\"b\",\"when\":{\"metadata\":{\"k\":[\"2\"],"
               "\"j\":[\"3\"]}},\"class\":\"silver\"}]}}");
  spi_request_reset(r);
  set_meta(r, "k", "2");
  expect(r, SPI_CLASS_GOLD, -1, "default class gold");
  set_meta(r, "j", "3");
  expect(r, SPI_CLASS_SILVER, 1, "rule b");
  set_meta(r, "k", "1");
  expect(r, SPI_CLASS_BRONZE, 0, "rule a");
}

static void test_rule_metadata_errors(void **state) {
  world *f = *state;
  spi_engine *e = f->e;
#define META_RULE(m) \
  "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":{\"metadata\":" m "}}]}}"
  config_error(e, META_RULE("[]"), SPI_ETYPE,
               "classifier.rules[0].when.metadata: must be an object");
  config_error(e, META_RULE("{\"team\":\"search\"}"), SPI_ETYPE,
               "classifier.rules[0].when.metadata.team: must be a list of "
               "1..32 strings");
  config_error(e, META_RULE("{\"team\":[]}"), SPI_ERANGE,
               "classifier.rules[0].when.metadata.team: must be a list of "
               "1..32 strings");
  config_error(e, META_RULE("{\"team\":[\"a\",2]}"), SPI_ETYPE,
               "classifier.rules[0].when.metadata.team[1]: must be a string of "
               "at most 128 bytes");
  config_error(e, META_RULE("{\"\":[\"a\"]}"), SPI_ERANGE,
               "classifier.rules[0].when.metadata.: a key is 1..64 bytes");
  config_error(e, META_RULE("{\"a\":[\"1\"],\"a\":[\"2\"]}"), SPI_EPARSE,
               "classifier.rules[0].when.metadata.a: duplicate key");
  config_error(e, META_RULE("{\"a\":[\"1\"],\"b\":[\"1\"],\"c\":[\"1\"],"
                            "\"d\":[\"1\"],\"e\":[\"1\"],\"f\":[\"1\"],"
                            "\"g\":[\"1\"],\"h\":[\"1\"],\"i\":[\"1\"]}"),
               SPI_ERANGE, "classifier.rules[0].when.metadata: at most 8 keys");
#undef META_RULE
  char big[600];
  snprintf(big, sizeof big,
           "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
           "{\"metadata\":{\"k\":[\"%0129d\"]}}}]}}", 0);
  config_error(e, big, SPI_ERANGE,
               "classifier.rules[0].when.metadata.k[0]: must be a string of at "
               "most 128 bytes");
  /* 256 values in all, across rules: the 257th is refused. */
  size_t cap = 64 * 400 + 128;
  char *json = malloc(cap);
  assert_non_null(json);
  for (int extra = 0; extra < 2; extra++) {
    size_t n = (size_t)snprintf(json, cap, "{\"classifier\":{\"rules\":[");
    for (int i = 0; i < 8 + extra; i++) {
      n += (size_t)snprintf(json + n, cap - n, "%s{\"class\":\"gold\",\"when\":"
                            "{\"metadata\":{\"k\":[", i ? "," : "");
      for (int j = 0; j < (i < 8 ? 32 : 1); j++)
        n += (size_t)snprintf(json + n, cap - n, "%s\"%d\"", j ? "," : "", j);
      n += (size_t)snprintf(json + n, cap - n, "]}}}");
    }
    snprintf(json + n, cap - n, "]}}");
    if (!extra)
      configure(e, json);
    else
      config_error(e, json, SPI_ERANGE,
                   "classifier.rules[8].when.metadata.k[0]: more than 256 "
                   "metadata values across all rules");
  }
  free(json);
}

static void test_rule_sets(void **state) {
  world *f = *state;
  spi_request *r = f->r;
  /* First match wins; unnamed rules are shown by index; tenant tiers of
   * several rules do not mix. */
  configure(f->e,
            "{\"classifier\":{\"default_class\":\"gold\",\"rules\":["
            "{\"when\":{\"tenant_tier\":[\"a\",\"b\"]},\"class\":\"bronze\"},"
            "{\"name\":\"second\",\"when\":{\"tenant_tier\":[\"c\"]},"
            "\"class\":\"silver\"},"
            "{\"name\":\"also-c\",\"when\":{\"tenant_tier\":[\"c\",\"d\"]},"
            "\"class\":\"bronze\"}]}}");
  expect(r, SPI_CLASS_GOLD, -1, "default class gold");
  set_str(r, SPI_REQ_TENANT_TIER, "b");
  expect(r, SPI_CLASS_BRONZE, 0, "rule #0");
  set_str(r, SPI_REQ_TENANT_TIER, "c");
  expect(r, SPI_CLASS_SILVER, 1, "rule second");
  set_str(r, SPI_REQ_TENANT_TIER, "d");
  expect(r, SPI_CLASS_BRONZE, 2, "rule also-c");
  /* An empty rule list: only the default class. */
  configure(f->e, "{\"classifier\":{\"rules\":[],\"default_class\":\"bronze\"}}");
  set_int(r, SPI_REQ_STREAM, 1);
  set_str(r, SPI_REQ_SERVICE_TIER, "priority");
  expect(r, SPI_CLASS_BRONZE, -1, "default class bronze");
  /* 64 rules is the most; the last one is reachable. */
  char *json = malloc(64 * 80 + 128);
  assert_non_null(json);
  size_t n = (size_t)sprintf(json, "{\"classifier\":{\"rules\":[");
  for (int i = 0; i < 64; i++)
    n += (size_t)sprintf(json + n,
                         "%s{\"name\":\"r%d\",\"class\":\"%s\",\"when\":{"
                         "\"sla_ms_min\":%d,\"sla_ms_max\":%d}}",
                         i ? "," : "", i, i == 63 ? "gold" : "bronze", i + 1,
                         i + 1);
  sprintf(json + n, "]}}");
  configure(f->e, json);
  spi_request_reset(r);
  set_int(r, SPI_REQ_SLA_MS, 64);
  expect(r, SPI_CLASS_GOLD, 63, "rule r63");
  set_int(r, SPI_REQ_SLA_MS, 65);
  expect(r, SPI_CLASS_SILVER, -1, "default class silver");
  free(json);
  /* "{}" restores the reference rules. */
  configure(f->e, "{}");
  spi_request_reset(r);
  set_str(r, SPI_REQ_SERVICE_TIER, "flex");
  expect(r, SPI_CLASS_BRONZE, 3, "rule background");
}

/* ------------------------------------------------------- config errors */

static void test_config_errors(void **state) {
  world *f = *state;
  spi_engine *e = f->e;
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\"},{\"when\":{}}]}}",
               SPI_EMISSING, "classifier.rules[1].class: missing");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "{\"bogus\":1}}]}}",
               SPI_EUNKNOWN, "classifier.rules[0].when.bogus: unknown key");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"x\":1}]}}",
               SPI_EUNKNOWN, "classifier.rules[0].x: unknown key");
  config_error(e, "{\"classifier\":{\"bogus\":true}}", SPI_EUNKNOWN,
               "classifier.bogus: unknown key");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "{\"stream\":true,\"stream\":false}}]}}",
               SPI_EPARSE, "classifier.rules[0].when.stream: duplicate key");
  /* Wrong types. */
  config_error(e, "{\"classifier\":[]}", SPI_ETYPE,
               "classifier: top level must be a JSON object");
  config_error(e, "{\"classifier\":{\"cascade\":{\"enabled\":1}}}", SPI_ETYPE,
               "classifier.cascade.enabled: must be true or false");
  config_error(e, "{\"classifier\":{\"cascade\":{\"scan_bytes\":63}}}",
               SPI_ERANGE,
               "classifier.cascade.scan_bytes: must be an integer in [64, "
               "8192], got 63");
  config_error(e, "{\"classifier\":{\"rules\":{}}}", SPI_ETYPE,
               "classifier.rules: must be an array");
  config_error(e, "{\"classifier\":{\"rules\":[\"gold\"]}}", SPI_ETYPE,
               "classifier.rules[0]: must be an object");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":1}]}}", SPI_ETYPE,
               "classifier.rules[0].class: must be a string");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "[]}]}}",
               SPI_ETYPE, "classifier.rules[0].when: must be an object");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "{\"stream\":\"yes\"}}]}}",
               SPI_ETYPE, "classifier.rules[0].when.stream: must be true or false");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "{\"has_tools\":1}}]}}",
               SPI_ETYPE,
               "classifier.rules[0].when.has_tools: must be true or false");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "{\"sla_ms_max\":\"5\"}}]}}",
               SPI_ETYPE, "classifier.rules[0].when.sla_ms_max: must be an integer");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "{\"priority_min\":1.5}}]}}",
               SPI_ETYPE,
               "classifier.rules[0].when.priority_min: must be an integer, "
               "got 1.5");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "{\"service_tier\":\"flex\"}}]}}",
               SPI_ETYPE,
               "classifier.rules[0].when.service_tier: must be an array");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "{\"service_tier\":[3]}}]}}",
               SPI_ETYPE,
               "classifier.rules[0].when.service_tier[0]: must be a string");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "{\"tenant_tier\":[\"a\",\"\"]}}]}}",
               SPI_ETYPE,
               "classifier.rules[0].when.tenant_tier[1]: must be a string of "
               "1..63 bytes");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\","
                  "\"replayable\":\"no\"}]}}",
               SPI_ETYPE, "classifier.rules[0].replayable: must be true or false");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"name\":"
                  "7}]}}",
               SPI_ETYPE, "classifier.rules[0].name: must be a string");
  config_error(e, "{\"classifier\":{\"honor_priority\":\"yes\"}}", SPI_ETYPE,
               "classifier.honor_priority: must be true or false");
  config_error(e, "{\"classifier\":{\"cascade\":{\"keyword_weight\":\"1\"}}}",
               SPI_ETYPE, "classifier.cascade.keyword_weight: must be a number");
  config_error(e, "{\"classifier\":{\"cascade\":{\"keywords\":[1]}}}", SPI_ETYPE,
               "classifier.cascade.keywords[0]: must be a string of 1..64 "
               "bytes");
  config_error(e, "{\"classifier\":{\"degrade\":{\"gold\":[{},{},{},7]}}}",
               SPI_ETYPE, "classifier.degrade.gold[3]: must be an object");
  /* Unknown names. */
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"platinum\"}]}}",
               SPI_EUNKNOWN,
               "classifier.rules[0].class: unknown value \"platinum\" "
               "(expected gold|silver|bronze)");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "{\"service_tier\":[\"flex\",\"turbo\"]}}]}}",
               SPI_EUNKNOWN,
               "classifier.rules[0].when.service_tier[1]: unknown value "
               "\"turbo\" (expected auto|default|flex|priority|scale)");
  config_error(e, "{\"classifier\":{\"default_class\":\"unset\"}}",
               SPI_EUNKNOWN,
               "classifier.default_class: unknown value \"unset\" (expected "
               "gold|silver|bronze)");
  config_error(e, "{\"classifier\":{\"replayable_default\":{\"platinum\":true}}}",
               SPI_EUNKNOWN, "classifier.replayable_default.platinum: unknown key");
  config_error(e, "{\"classifier\":{\"degrade\":{\"platinum\":[]}}}",
               SPI_EUNKNOWN, "classifier.degrade.platinum: unknown key");
  config_error(e, "{\"classifier\":{\"degrade\":{\"gold\":[{},{},{\"cap\":1},"
                  "{}]}}}",
               SPI_EUNKNOWN, "classifier.degrade.gold[2].cap: unknown key");
  config_error(e, "{\"classifier\":{\"cascade\":{\"weights\":1}}}", SPI_EUNKNOWN,
               "classifier.cascade.weights: unknown key");
  /* Ranges. */
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "{\"sla_ms_max\":0}}]}}",
               SPI_ERANGE,
               "classifier.rules[0].when.sla_ms_max: must be an integer in "
               "[1, 86400000], got 0");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\"},{\"class\":"
                  "\"gold\",\"when\":{\"sla_ms_min\":86400001}}]}}",
               SPI_ERANGE,
               "classifier.rules[1].when.sla_ms_min: must be an integer in "
               "[1, 86400000], got 86400001");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "{\"expected_output_tokens_min\":-1}}]}}",
               SPI_ERANGE,
               "classifier.rules[0].when.expected_output_tokens_min: must be "
               "an integer in [0, 1000000000], got -1");
  config_error(e, "{\"classifier\":{\"degrade\":{\"silver\":[{},{},{}]}}}",
               SPI_ERANGE,
               "classifier.degrade.silver: must have 4..4 entries, got 3");
  config_error(e, "{\"classifier\":{\"degrade\":{\"bronze\":[{},{},{},{},{}]}}}",
               SPI_ERANGE,
               "classifier.degrade.bronze: must have 4..4 entries, got 5");
  config_error(e, "{\"classifier\":{\"degrade\":{\"gold\":[{},{},{},"
                  "{\"max_output_tokens\":-1}]}}}",
               SPI_ERANGE,
               "classifier.degrade.gold[3].max_output_tokens: must be an "
               "integer in [0, 1000000000], got -1");
  config_error(e, "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"when\":"
                  "{\"service_tier\":[\"auto\",\"auto\",\"auto\",\"auto\","
                  "\"auto\",\"auto\"]}}]}}",
               SPI_ERANGE,
               "classifier.rules[0].when.service_tier: must have 0..5 entries, "
               "got 6");
  config_error(e, "{\"classifier\":{\"cascade\":{\"large_threshold\":-1}}}",
               SPI_ERANGE,
               "classifier.cascade.large_threshold: must be a number in [0, "
               "1e+06], got -1");
  config_error(e, "{\"classifier\":{\"cascade\":{\"long_query_bytes\":0}}}",
               SPI_ERANGE,
               "classifier.cascade.long_query_bytes: must be an integer in "
               "[1, 1073741824], got 0");

  /* A keyword of 65 bytes, a rule name of 40. */
  char json[512], big[80];
  memset(big, 'k', 65);
  big[65] = '\0';
  snprintf(json, sizeof json,
           "{\"classifier\":{\"cascade\":{\"keywords\":[\"ok\",\"%s\"]}}}", big);
  config_error(e, json, SPI_ETYPE,
               "classifier.cascade.keywords[1]: must be a string of 1..64 "
               "bytes");
  config_error(e, "{\"classifier\":{\"cascade\":{\"keywords\":[\"\"]}}}",
               SPI_ETYPE,
               "classifier.cascade.keywords[0]: must be a string of 1..64 "
               "bytes");
  big[40] = '\0';
  snprintf(json, sizeof json,
           "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"name\":\"%s\"}]}}",
           big);
  config_error(e, json, SPI_ERANGE, "classifier.rules[0].name: at most 39 bytes");
  big[39] = '\0';
  snprintf(json, sizeof json,
           "{\"classifier\":{\"rules\":[{\"class\":\"gold\",\"name\":\"%s\"}]}}",
           big);
  configure(e, json);

  /* 65 rules. */
  char *many = malloc(65 * 24 + 64);
  assert_non_null(many);
  size_t n = (size_t)sprintf(many, "{\"classifier\":{\"rules\":[");
  for (int i = 0; i < 65; i++)
    n += (size_t)sprintf(many + n, "%s{\"class\":\"gold\"}", i ? "," : "");
  sprintf(many + n, "]}}");
  config_error(e, many, SPI_ERANGE,
               "classifier.rules: must have 0..64 entries, got 65");
  free(many);

  /* The priority map must stay ordered. */
  config_error(e, "{\"priority_map\":{\"vllm\":{\"gold\":0}}}", SPI_ERANGE,
               "priority_map.vllm: must satisfy gold < silver < bronze");
  config_error(e, "{\"priority_map\":{\"llmd\":{\"bronze\":5}}}", SPI_ERANGE,
               "priority_map.llmd: must satisfy gold > silver > bronze");
  config_error(e, "{\"priority_map\":{\"service_tier\":{\"gold\":\"vip\"}}}",
               SPI_EUNKNOWN,
               "priority_map.service_tier.gold: unknown value \"vip\" "
               "(expected auto|default|flex|priority|scale)");
}

/* A failed configure leaves the previous classifier, and its dump, alone. */
static void test_failed_configure_keeps_previous(void **state) {
  world *f = *state;
  spi_engine *e = f->e;
  spi_request *r = f->r;
  configure(e, "{\"classifier\":{\"default_class\":\"bronze\",\"rules\":["
               "{\"name\":\"mine\",\"when\":{\"tenant_tier\":[\"t\"]},"
               "\"class\":\"gold\"}]},\"priority_map\":{\"vllm\":{\"gold\":"
               "-10,\"silver\":0,\"bronze\":10}}}");
  size_t need = 0;
  assert_int_equal(spi_engine_config_json(e, NULL, 0, &need), SPI_EBUFSIZE);
  char *before = malloc(need + 1);
  char *after = malloc(need + 1);
  assert_non_null(before);
  assert_non_null(after);
  assert_int_equal(spi_engine_config_json(e, before, need + 1, NULL), SPI_OK);

  static const char *const bad[] = {
      "{\"classifier\":{\"rules\":[{\"class\":\"gold\"},{\"when\":{}}]}}",
      ("{\"classifier\":{\"default_class\":\"gold\",\"rules\":[{\"class\":"
       "\"gold\",\"when\":{\"bogus\":1}}]}}"),
      "{\"classifier\":{\"rules\":[],\"degrade\":{\"gold\":[]}}}",
      "{\"classifier\":{\"rules\":[]},\"limits\":{\"max_messages\":0}}",
      "{\"classifier\":{\"rules\":[]},\"bogus\":1}",
      "{\"classifier\":{\"rules\":[]}",
      "",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = spi_engine_configure(e, bad[i], strlen(bad[i]));
    assert_true(rc < 0);
    assert_string_not_equal(spi_engine_errmsg(e), "");
    spi_request_reset(r);
    expect(r, SPI_CLASS_BRONZE, -1, "default class bronze");
    set_str(r, SPI_REQ_TENANT_TIER, "t");
    expect(r, SPI_CLASS_GOLD, 0, "rule mine");
    set_int(r, SPI_REQ_PRIORITY, -10);
    spi_classification c = classify(r);
    assert_int_equal(c.klass, SPI_CLASS_GOLD);
    assert_int_equal(c.vllm_priority, -10);
    set_int(r, SPI_REQ_PRIORITY, -9);
    assert_int_equal(classify(r).klass, SPI_CLASS_SILVER);
    size_t n2 = 0;
    assert_int_equal(spi_engine_config_json(e, after, need + 1, &n2), SPI_OK);
    assert_int_equal(n2, need);
    assert_string_equal(after, before);
  }
  free(before);
  free(after);
}

/* ----------------------------------------------------------- mapping API */

static void test_mapping_api_defaults(void **state) {
  world *f = *state;
  spi_engine *e = f->e;
  int32_t v = 12345;
  static const int32_t vllm[4] = {0, -1, 0, 1}, llmd[4] = {0, 1, 0, -1};
  static const int32_t tier[4] = {0, SPI_SERVICE_TIER_PRIORITY,
                                  SPI_SERVICE_TIER_DEFAULT,
                                  SPI_SERVICE_TIER_FLEX};
  for (int32_t k = SPI_CLASS_GOLD; k <= SPI_CLASS_BRONZE; k++) {
    assert_int_equal(spi_engine_class_to_priority(e, SPI_PRIO_VLLM, k, &v),
                     SPI_OK);
    assert_int_equal(v, vllm[k]);
    assert_int_equal(spi_engine_class_to_priority(e, SPI_PRIO_LLMD, k, &v),
                     SPI_OK);
    assert_int_equal(v, llmd[k]);
    assert_int_equal(spi_engine_class_to_service_tier(e, k, &v), SPI_OK);
    assert_int_equal(v, tier[k]);
    /* And back again. */
    int32_t back = 0;
    assert_int_equal(
        spi_engine_class_from_priority(e, SPI_PRIO_VLLM, vllm[k], &back),
        SPI_OK);
    assert_int_equal(back, k);
    assert_int_equal(
        spi_engine_class_from_priority(e, SPI_PRIO_LLMD, llmd[k], &back),
        SPI_OK);
    assert_int_equal(back, k);
    assert_int_equal(spi_engine_class_from_service_tier(e, tier[k], &back),
                     SPI_OK);
    assert_int_equal(back, k);
  }
  /* Values between and beyond the mapped ones. */
  static const struct {
    int32_t scheme, prio, klass;
  } from[] = {
      {SPI_PRIO_VLLM, INT32_MIN, SPI_CLASS_GOLD},
      {SPI_PRIO_VLLM, -5, SPI_CLASS_GOLD},
      {SPI_PRIO_VLLM, 7, SPI_CLASS_BRONZE},
      {SPI_PRIO_VLLM, INT32_MAX, SPI_CLASS_BRONZE},
      {SPI_PRIO_LLMD, INT32_MAX, SPI_CLASS_GOLD},
      {SPI_PRIO_LLMD, 5, SPI_CLASS_GOLD},
      {SPI_PRIO_LLMD, -7, SPI_CLASS_BRONZE},
      {SPI_PRIO_LLMD, INT32_MIN, SPI_CLASS_BRONZE},
  };
  for (size_t i = 0; i < sizeof from / sizeof from[0]; i++) {
    assert_int_equal(spi_engine_class_from_priority(e, from[i].scheme,
                                                    from[i].prio, &v),
                     SPI_OK);
    assert_int_equal(v, from[i].klass);
  }
  /* Tiers no class maps to. */
  assert_int_equal(
      spi_engine_class_from_service_tier(e, SPI_SERVICE_TIER_SCALE, &v), SPI_OK);
  assert_int_equal(v, SPI_CLASS_GOLD);
  assert_int_equal(
      spi_engine_class_from_service_tier(e, SPI_SERVICE_TIER_AUTO, &v), SPI_OK);
  assert_int_equal(v, SPI_CLASS_SILVER);
  assert_int_equal(
      spi_engine_class_from_service_tier(e, SPI_SERVICE_TIER_UNSET, &v), SPI_OK);
  assert_int_equal(v, SPI_CLASS_UNSET);

  /* Invalid input. */
  v = 777;
  static const int32_t bad_classes[] = {SPI_CLASS_UNSET, 4, -1, INT32_MAX};
  for (size_t i = 0; i < 4; i++) {
    assert_int_equal(
        spi_engine_class_to_priority(e, SPI_PRIO_VLLM, bad_classes[i], &v),
        SPI_EINVAL);
    assert_int_equal(spi_engine_class_to_service_tier(e, bad_classes[i], &v),
                     SPI_EINVAL);
  }
  static const int32_t bad_schemes[] = {0, 3, -1};
  for (size_t i = 0; i < 3; i++) {
    assert_int_equal(spi_engine_class_to_priority(e, bad_schemes[i],
                                                  SPI_CLASS_GOLD, &v),
                     SPI_EINVAL);
    assert_int_equal(spi_engine_class_from_priority(e, bad_schemes[i], 0, &v),
                     SPI_EINVAL);
  }
  assert_int_equal(spi_engine_class_from_service_tier(e, 6, &v), SPI_EINVAL);
  assert_int_equal(spi_engine_class_from_service_tier(e, -1, &v), SPI_EINVAL);
  assert_int_equal(v, 777); /* untouched by failures */
  assert_int_equal(
      spi_engine_class_to_priority(e, SPI_PRIO_VLLM, SPI_CLASS_GOLD, NULL),
      SPI_EINVAL);
  assert_int_equal(spi_engine_class_from_priority(e, SPI_PRIO_VLLM, 0, NULL),
                   SPI_EINVAL);
  assert_int_equal(spi_engine_class_to_service_tier(e, SPI_CLASS_GOLD, NULL),
                   SPI_EINVAL);
  assert_int_equal(
      spi_engine_class_from_service_tier(e, SPI_SERVICE_TIER_FLEX, NULL),
      SPI_EINVAL);
  /* Not an engine. */
  spi_engine fake;
  memset(&fake, 0, sizeof fake);
  assert_int_equal(
      spi_engine_class_to_priority(&fake, SPI_PRIO_VLLM, SPI_CLASS_GOLD, &v),
      SPI_EMISUSE);
  assert_int_equal(spi_engine_class_from_priority(NULL, SPI_PRIO_VLLM, 0, &v),
                   SPI_EMISUSE);
  assert_int_equal(spi_engine_class_to_service_tier(&fake, SPI_CLASS_GOLD, &v),
                   SPI_EMISUSE);
  assert_int_equal(
      spi_engine_class_from_service_tier(NULL, SPI_SERVICE_TIER_FLEX, &v),
      SPI_EMISUSE);
  /* Names. */
  assert_string_equal(spi_class_name(SPI_CLASS_GOLD), "gold");
  assert_string_equal(spi_class_name(SPI_CLASS_SILVER), "silver");
  assert_string_equal(spi_class_name(SPI_CLASS_BRONZE), "bronze");
  assert_string_equal(spi_class_name(SPI_CLASS_UNSET), "unset");
  assert_string_equal(spi_class_name(4), "invalid");
  assert_string_equal(spi_class_name(-1), "invalid");
  assert_string_equal(spi_service_tier_name(SPI_SERVICE_TIER_UNSET), "");
  assert_string_equal(spi_service_tier_name(SPI_SERVICE_TIER_SCALE), "scale");
  assert_string_equal(spi_service_tier_name(6), "invalid");
}

static void test_mapping_api_custom(void **state) {
  world *f = *state;
  spi_engine *e = f->e;
  configure(e, "{\"priority_map\":{\"vllm\":{\"gold\":-10,\"silver\":5,"
               "\"bronze\":20},\"llmd\":{\"gold\":100,\"silver\":50,"
               "\"bronze\":-3},\"service_tier\":{\"gold\":\"scale\","
               "\"silver\":\"auto\",\"bronze\":\"auto\"}}}");
  int32_t v = 0;
  static const int32_t vllm[4] = {0, -10, 5, 20}, llmd[4] = {0, 100, 50, -3};
  static const int32_t tier[4] = {0, SPI_SERVICE_TIER_SCALE,
                                  SPI_SERVICE_TIER_AUTO, SPI_SERVICE_TIER_AUTO};
  for (int32_t k = SPI_CLASS_GOLD; k <= SPI_CLASS_BRONZE; k++) {
    assert_int_equal(spi_engine_class_to_priority(e, SPI_PRIO_VLLM, k, &v),
                     SPI_OK);
    assert_int_equal(v, vllm[k]);
    assert_int_equal(spi_engine_class_to_priority(e, SPI_PRIO_LLMD, k, &v),
                     SPI_OK);
    assert_int_equal(v, llmd[k]);
    assert_int_equal(spi_engine_class_to_service_tier(e, k, &v), SPI_OK);
    assert_int_equal(v, tier[k]);
  }
  static const struct {
    int32_t scheme, prio, klass;
  } from[] = {
      {SPI_PRIO_VLLM, -10, SPI_CLASS_GOLD},  {SPI_PRIO_VLLM, -9, SPI_CLASS_SILVER},
      {SPI_PRIO_VLLM, 5, SPI_CLASS_SILVER},  {SPI_PRIO_VLLM, 6, SPI_CLASS_BRONZE},
      {SPI_PRIO_LLMD, 100, SPI_CLASS_GOLD},  {SPI_PRIO_LLMD, 99, SPI_CLASS_SILVER},
      {SPI_PRIO_LLMD, 50, SPI_CLASS_SILVER}, {SPI_PRIO_LLMD, 49, SPI_CLASS_BRONZE},
      {SPI_PRIO_LLMD, 0, SPI_CLASS_BRONZE},
  };
  for (size_t i = 0; i < sizeof from / sizeof from[0]; i++) {
    assert_int_equal(spi_engine_class_from_priority(e, from[i].scheme,
                                                    from[i].prio, &v),
                     SPI_OK);
    if (v != from[i].klass)
      fail_msg("scheme %d priority %d: %s, want %s", (int)from[i].scheme,
               (int)from[i].prio, spi_class_name(v),
               spi_class_name(from[i].klass));
  }
  /* Two classes share "auto": the first (silver) wins. "scale" is gold's. */
  assert_int_equal(
      spi_engine_class_from_service_tier(e, SPI_SERVICE_TIER_AUTO, &v), SPI_OK);
  assert_int_equal(v, SPI_CLASS_SILVER);
  assert_int_equal(
      spi_engine_class_from_service_tier(e, SPI_SERVICE_TIER_SCALE, &v), SPI_OK);
  assert_int_equal(v, SPI_CLASS_GOLD);
  /* No class maps to "priority", "default" or "flex", and none to
   * "default": silver is the fallback. */
  assert_int_equal(
      spi_engine_class_from_service_tier(e, SPI_SERVICE_TIER_FLEX, &v), SPI_OK);
  assert_int_equal(v, SPI_CLASS_SILVER);
  assert_int_equal(
      spi_engine_class_from_service_tier(e, SPI_SERVICE_TIER_PRIORITY, &v),
      SPI_OK);
  assert_int_equal(v, SPI_CLASS_SILVER);
  /* With bronze on "default", unmapped tiers go to bronze. */
  configure(e, "{\"priority_map\":{\"service_tier\":{\"gold\":\"priority\","
               "\"silver\":\"scale\",\"bronze\":\"default\"}}}");
  assert_int_equal(
      spi_engine_class_from_service_tier(e, SPI_SERVICE_TIER_FLEX, &v), SPI_OK);
  assert_int_equal(v, SPI_CLASS_BRONZE);
  assert_int_equal(
      spi_engine_class_from_service_tier(e, SPI_SERVICE_TIER_SCALE, &v), SPI_OK);
  assert_int_equal(v, SPI_CLASS_SILVER);
}

/* ---------------------------------------------------- config round trip */

static void test_config_dump_round_trip(void **state) {
  world *f = *state;
  spi_engine *e = f->e;
  configure(e, "{\"classifier\":{\"rules\":[{\"name\":\"x\",\"class\":"
               "\"bronze\",\"when\":{\"tenant_tier\":[\"free\"],"
               "\"service_tier\":[\"flex\"]}}],\"cascade\":{\"keywords\":"
               "[\"Zeta\"]}}}");
  size_t need = 0;
  assert_int_equal(spi_engine_config_json(e, NULL, 0, &need), SPI_EBUFSIZE);
  char *dump = malloc(need + 1);
  char *again = malloc(need + 1);
  assert_non_null(dump);
  assert_non_null(again);
  assert_int_equal(spi_engine_config_json(e, dump, need + 1, NULL), SPI_OK);
  assert_non_null(strstr(dump, "\"classifier\":{"));
  assert_non_null(strstr(dump, "\"keywords\":[\"Zeta\"]"));
  assert_non_null(strstr(dump, "\"default_class\":\"silver\""));
  /* The dump configures the same engine again. */
  configure(e, dump);
  size_t need2 = 0;
  assert_int_equal(spi_engine_config_json(e, again, need + 1, &need2), SPI_OK);
  assert_int_equal(need2, need);
  assert_string_equal(again, dump);
  spi_request_reset(f->r);
  set_str(f->r, SPI_REQ_TENANT_TIER, "free");
  set_str(f->r, SPI_REQ_SERVICE_TIER, "flex");
  expect(f->r, SPI_CLASS_BRONZE, 0, "rule x");
  free(dump);
  free(again);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_default_rules, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_explicit_class_precedence, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_priority_precedence, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_replayable, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_degrade_defaults, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_degrade_custom, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_priority_map_in_verdict, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_cascade_off_by_default, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_cascade_defaults, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_cascade_custom, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_rule_conditions, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_rule_sets, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_config_errors, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_rule_metadata, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_rule_metadata_errors, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_failed_configure_keeps_previous,
                                      world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_mapping_api_defaults, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_mapping_api_custom, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_config_dump_round_trip, world_setup,
                                      world_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
