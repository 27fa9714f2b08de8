"""Replicas, routing, tickets, ledger, signals and metrics."""

from __future__ import annotations

import dataclasses
import threading

import pytest

import spotinfer
from spotinfer import (BreakerState, Class, Engine, Load, ModelTier, Pool,
                       PolicyChoice, Reason, ReplicaInfo, ReplicaState,
                       TicketStatus, _native)

from conftest import needs_routing

pytestmark = needs_routing

SEC = 1_000_000_000
SYSTEM = "".join("abcdefgh "[i % 9] for i in range(4095))


def named_top(usable: int) -> int:
    """How many of a cell's best TTFTs the library names: every usable one
    when they fit in the summary, else a primary and its fallbacks."""
    if usable <= spotinfer.SUMMARY_TOP:
        return usable
    return 1 + _native.MAX_FALLBACKS


VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama"} 3.0
vllm:num_requests_waiting{model_name="llama"} 1.0
vllm:gpu_cache_usage_perc{model_name="llama"} 0.42
"""


class Clock:
    def __init__(self):
        self.now = 1_700_000_000 * SEC

    def __call__(self):
        return self.now


@pytest.fixture
def world():
    clock = Clock()
    with Engine(clock=clock) as e:
        for rid, pool in (("spot-a", Pool.SPOT), ("spot-b", Pool.SPOT),
                          ("od-a", Pool.ON_DEMAND), ("od-b", Pool.ON_DEMAND)):
            e.upsert_replica(id=rid, pool=pool, max_inflight=16,
                             usd_per_hour=1.8 if pool is Pool.SPOT else 4.5,
                             zone="z1", instance_type="g5.xlarge")
            e.report_load(rid, running=1, waiting=0, kv_usage=0.2)
        e.clock = clock
        yield e


def chat(engine, user="hi", *, stream=False, sla_ms=None, tier=None,
         replayable=None, tenant=None):
    r = engine.request(model="llama", stream=stream,
                       messages=[("system", SYSTEM), ("user", user)])
    if sla_ms:
        r.sla_ms = sla_ms
    if tier:
        r.service_tier = tier
    if replayable is not None:
        r.replayable = replayable
    if tenant:
        r.tenant = tenant
    return r


def test_replica_management(engine):
    engine.upsert_replica(ReplicaInfo("r1", Pool.SPOT, 1.8, max_inflight=8,
                                      models=("llama", "qwen"), zone="us-1a"))
    engine.upsert_replica("r2", pool="on_demand", usd_per_hour=4.5, max_inflight=4)
    assert engine.replica_count() == 2
    s = engine.replica_status("r1")
    assert (s.id, s.pool, s.state, s.breaker) == ("r1", Pool.SPOT,
                                                  ReplicaState.ACTIVE,
                                                  BreakerState.CLOSED)
    assert s.max_inflight == 8 and s.usd_per_hour == 1.8
    assert s.load_at_ns == 0 and not s.load_fresh
    assert [x.id for x in engine.replicas()] == ["r1", "r2"]
    assert engine.replica_status_at(1).id == "r2"
    engine.report_load("r1", Load(running=2, waiting=1, kv_usage=0.5))
    s = engine.replica_status("r1")
    assert (s.running, s.waiting, s.kv_usage, s.load_fresh) == (2, 1, 0.5, True)
    engine.set_replica_state("r1", ReplicaState.DRAINING)
    assert engine.replica_status("r1").state is ReplicaState.DRAINING
    engine.remove_replica("r1")
    assert engine.replica_count() == 1
    with pytest.raises(spotinfer.NotFoundError):
        engine.replica_status("r1")
    with pytest.raises(spotinfer.NotFoundError):
        engine.remove_replica("r1")
    with pytest.raises(spotinfer.NotFoundError):
        engine.replica_status_at(5)
    with pytest.raises(spotinfer.InvalidArgumentError) as ei:
        engine.upsert_replica("r3", pool=Pool.SPOT, usd_per_hour=0)
    assert "usd_per_hour" in ei.value.message
    with pytest.raises(spotinfer.RangeError):
        engine.report_load("r2", kv_usage=1.5)


def test_out_of_range_integers_do_not_wrap(engine):
    """Integers bound for C int64_t / int32_t raise RangeError where ctypes
    would wrap them into other, valid-looking values."""
    engine.upsert_replica("r1", pool=Pool.SPOT, usd_per_hour=1.8)
    with pytest.raises(spotinfer.RangeError):
        engine.report_load("r1", running=1, at_ns=2**64 + 5)  # was 5 ns
    with pytest.raises(spotinfer.RangeError):
        engine.report_load("r1", Load(running=1, at_ns=-2**63 - 1))
    with pytest.raises(spotinfer.RangeError):
        engine.upsert_replica("r2", pool=2**32 + int(Pool.SPOT),
                              usd_per_hour=1.8)  # was Pool.SPOT
    assert engine.replica_count() == 1
    with pytest.raises(spotinfer.RangeError):
        engine.class_from_priority("vllm", 2**32 - 1)  # was -1
    with pytest.raises(spotinfer.RangeError):
        engine.ledger_row(-1)
    with pytest.raises(spotinfer.RangeError):
        engine.ticket(-1)


def test_metrics_parse_and_report(engine):
    load = spotinfer.parse_metrics(VLLM_METRICS)
    assert (load.running, load.waiting, load.kv_usage, load.at_ns) == (3, 1, 0.42, 0)
    sg = spotinfer.parse_metrics("sglang:num_running_reqs 2\nsglang:num_queue_reqs 5\n"
                                 "sglang:token_usage 0.1\n")
    assert (sg.running, sg.waiting) == (2, 5)
    with pytest.raises(spotinfer.MissingFieldError):
        spotinfer.parse_metrics("# nothing here\nother_metric 1\n")
    with pytest.raises(spotinfer.ParseError) as ei:
        spotinfer.parse_metrics("vllm:num_requests_running{ 1\n")
    assert "line 1" in ei.value.message  # the library's reason, kept
    engine.upsert_replica("r1", pool=Pool.SPOT, usd_per_hour=1.8, max_inflight=8)
    engine.report_metrics("r1", VLLM_METRICS)
    s = engine.replica_status("r1")
    assert (s.running, s.waiting, s.kv_usage) == (3, 1, 0.42)
    with pytest.raises(spotinfer.ParseError) as ei:
        engine.report_metrics("r1", "vllm:num_requests_running{ 1\n")
    assert "line 1" in ei.value.message or "1" in ei.value.message


@pytest.mark.skipif(not spotinfer.lib.has("spi_metrics_parse_v2"),
                    reason="the loaded libspotinfer predates it")
def test_metrics_parse_report_skips_newer_syntax():
    page = ("{\"vllm:num_requests_running\",engine=\"0\"} 3\n"
            "vllm:ttft_seconds {count:2,sum:0.5,schema:0}\n"
            "vllm:request_success_total 9 st@1731602000\n"
            "vllm:num_requests_waiting 1\n")
    load, rep = spotinfer.parse_metrics_report(page)
    assert (load.running, load.waiting) == (3, 1)
    assert (rep.found, rep.skipped, rep.first_skipped) == (2, 2, 2)
    assert "native-histogram" in rep.message
    assert spotinfer.parse_metrics(page) == load
    with pytest.raises(spotinfer.ParseError) as ei:
        spotinfer.parse_metrics_report("vllm:num_requests_running{ 1\n")
    assert "line 1" in ei.value.message


def test_route_gold_and_ticket_life(world):
    e = world
    r = chat(e, stream=True, sla_ms=800, tenant="acme")
    d = r.route()
    assert d.klass is Class.GOLD and d.pool is Pool.ON_DEMAND
    assert d.replica_id.startswith("od-") and d.serving
    assert len(d.fallback_ids) >= 1 and d.replica_id not in d.fallback_ids
    assert d.est_usd > 0 and d.total_blocks >= 3
    assert d.key.hex == r.cache_key()
    assert isinstance(d.reason_code, Reason) and d.reason
    assert spotinfer.reason_name(d.reason_code) == d.reason_code.name.lower()
    sig = e.signals()
    assert sig.queue_depth[Class.GOLD] == 1
    assert e.replica_status(d.replica_id).inflight == 1
    e.clock.now += 300_000_000
    d.ticket.first_token()
    d.ticket.progress(10)
    with pytest.raises(spotinfer.RangeError):
        d.ticket.progress(5)
    sig = e.signals()
    assert sig.queue_depth[Class.GOLD] == 0
    assert 200 < sig.p95_ttft_ms[Class.GOLD] <= 500
    d.ticket.finish(TicketStatus.OK, prompt_tokens=1000, output_tokens=100)
    assert e.replica_status(d.replica_id).inflight == 0
    with pytest.raises(spotinfer.StaleError):
        d.ticket.finish()
    with pytest.raises(spotinfer.StaleError):
        e.ticket(0xDEADBEEFCAFE).first_token()
    rows = [row for row in e.ledger() if row.tenant == "acme"]
    assert len(rows) == 1 and e.ledger_count() >= 1
    row = rows[0]
    assert (row.model, row.pool, row.klass, row.completed) == ("llama",
                                                              Pool.ON_DEMAND,
                                                              Class.GOLD, 1)
    assert row.usd > 0 and row.usd_per_completed > 0
    assert e.ledger_row(0) == e.ledger()[0]
    text = e.metrics()
    assert "spotinfer_" in text and "gold" in text


def test_affinity(world):
    d1 = chat(world, "first", sla_ms=5000, replayable=True).route()
    assert d1.matched_blocks == 0 and d1.reason_code is Reason.RENDEZVOUS
    d1.ticket.finish()
    d2 = chat(world, "second", sla_ms=5000, replayable=True).route()
    assert d2.replica_id == d1.replica_id and d2.reason_code is Reason.AFFINITY
    assert d2.matched_blocks >= 3
    d2.ticket.finish()


def test_exclude_replica_routes_around_it(world):
    d1 = chat(world, "first", sla_ms=5000, replayable=True).route()
    d1.ticket.finish()
    # The warm replica excluded (a retry after it failed): the route goes
    # to one that holds none of the prompt, never back to it.
    r = chat(world, "second", sla_ms=5000, replayable=True)
    r.exclude_replica(d1.replica_id)
    d2 = r.route()
    assert d2.replica_id != d1.replica_id and d2.matched_blocks == 0
    assert d2.reason_code is not Reason.AFFINITY
    assert d1.replica_id not in d2.fallback_ids
    d2.ticket.finish()
    # The exclusions stay with the request until reset.
    d3 = r.route()
    assert d3.replica_id != d1.replica_id
    d3.ticket.finish()
    # Only some replicas offered: the others excluded, and a gone one.
    offered = {"od-b"}
    r = chat(world, "third", sla_ms=5000, replayable=True)
    r.exclude_replicas([i for i in ("spot-a", "spot-b", "od-a", "gone")
                        if i not in offered])
    d4 = r.route()
    assert d4.replica_id == "od-b" and not d4.fallback_ids
    d4.ticket.finish()
    r.exclude_replica("od-b")
    with pytest.raises(spotinfer.NoCapacityError) as ei:
        r.route()
    assert ei.value.decision.reason_code is Reason.NO_CAPACITY
    r.reset()
    r.model = "llama"
    r.add_message("user", "hi")
    d5 = r.route()
    assert d5.serving
    d5.ticket.finish()
    r2 = world.request(model="llama", messages=[("user", "x")],
                       exclude=["spot-a", "spot-b", "od-a", "od-b"])
    with pytest.raises(spotinfer.NoCapacityError):
        r2.route()


def test_exclude_replica_checks_ids(world):
    r = chat(world)
    with pytest.raises(spotinfer.InvalidArgumentError, match="0 bytes"):
        r.exclude_replica("")
    with pytest.raises(spotinfer.InvalidArgumentError, match="64 bytes"):
        r.exclude_replica("x" * 64)
    r.exclude_replica("x" * 63)
    r.exclude_replica(b"raw-bytes")
    for i in range(spotinfer.MAX_EXCLUDED - 2):
        r.exclude_replica(f"r{i}")
    r.exclude_replica("r0")  # again: counted once
    with pytest.raises(spotinfer.FullError, match="at most 32"):
        r.exclude_replica("one-more")
    assert spotinfer.MAX_EXCLUDED == 32
    # One id where a collection is due: refused, not split into characters.
    for one in ("od-a", b"od-a"):
        with pytest.raises(TypeError, match="not one id"):
            chat(world).exclude_replicas(one)


def test_queue_when_no_spot(world):
    world.set_replica_state("spot-a", ReplicaState.DRAINING)
    world.set_replica_state("spot-b", "noticed")
    d = chat(world, "summarise", tier="flex").route()
    assert d.pool is Pool.QUEUE and d.reason_code is Reason.QUEUE_NO_SPOT
    assert d.ticket is None and not d.serving


def test_no_capacity_error_carries_decision(engine):
    r = engine.request(model="llama", stream=True, sla_ms=800,
                       messages=[("user", "hi")])
    with pytest.raises(spotinfer.NoCapacityError) as ei:
        r.route()
    err = ei.value
    assert err.code == -81 and "no eligible" in err.message
    assert isinstance(err, spotinfer.RoutingError)
    assert err.decision.klass is Class.GOLD
    assert err.decision.reason_code is Reason.NO_CAPACITY
    assert err.decision.key.hex == r.cache_key()


def test_shed_error(world):
    world.report_load("spot-a", running=1, kv_usage=0.9)
    world.report_load("spot-b", running=1, kv_usage=0.9)
    with pytest.raises(spotinfer.ShedError) as ei:
        chat(world, "batch", tier="flex").route()
    assert ei.value.decision.klass is Class.BRONZE
    assert ei.value.decision.reason_code is Reason.SHED


def test_error_breaker_and_ticket_context_manager():
    clock = Clock()
    with Engine({"router": {"error_threshold": 3, "error_cooldown_ms": 5000}},
                clock=clock) as e:
        e.upsert_replica("od-a", pool=Pool.ON_DEMAND, usd_per_hour=4.5, max_inflight=16)
        e.upsert_replica("od-b", pool=Pool.ON_DEMAND, usd_per_hour=4.5, max_inflight=16)
        e.report_load("od-a", running=0, kv_usage=0.1)
        # Piled on: never the first choice, even once od-a has served more
        # than its share (the spread of near-ties by share would take a
        # merely busier od-b).
        e.report_load("od-b", running=14, waiting=6, kv_usage=0.1)
        r = chat(e, stream=True, sla_ms=800)
        r.system_prompt = "x"
        first = None
        for _ in range(3):
            d = r.route()
            first = first or d.replica_id
            assert d.replica_id == first
            with pytest.raises(RuntimeError):
                with d.ticket:
                    raise RuntimeError("replica failed")  # finishes as ERROR
        assert e.replica_status(first).breaker is BreakerState.OPEN
        assert e.replica_status(first).consecutive_errors >= 3
        other = r.route()
        assert other.replica_id != first
        other.ticket.finish()
        with r.route().ticket as t:  # finishes OK
            assert t.id
        rows = e.ledger()
        assert sum(row.failed for row in rows) == 3
        assert sum(row.completed for row in rows) == 2
        # After the cool-down the open breaker lets one probe through.
        clock.now += 6 * SEC
        e.report_load(first, running=0, kv_usage=0.1)
        e.report_load(other.replica_id, running=12, waiting=8, kv_usage=0.1)
        probe = r.route()
        assert probe.replica_id == first
        assert probe.reason_code is Reason.HALF_OPEN_PROBE
        probe.ticket.finish()
        assert e.replica_status(first).breaker is BreakerState.CLOSED


def test_ticket_table_full():
    with Engine({"router": {"max_tickets": 16}}) as e:
        e.upsert_replica("s", pool=Pool.SPOT, usd_per_hour=1.8, max_inflight=64)
        e.report_load("s", running=0, kv_usage=0.1)
        r = e.request(model="llama", sla_ms=5000, replayable=True,
                      messages=[("user", "hi")])
        tickets = [r.route().ticket for _ in range(16)]
        with pytest.raises(spotinfer.FullError):
            r.route()
        for t in tickets:
            t.finish()
        r.route().ticket.finish(spotinfer.TicketResult(TicketStatus.CANCELLED))


def test_removed_replica_ticket_is_stale(world):
    d = chat(world, stream=True, sla_ms=800).route()
    world.remove_replica(d.replica_id)
    with pytest.raises(spotinfer.StaleError):
        d.ticket.finish()
    assert d.ticket.finished


@pytest.mark.parametrize("refused", [
    dict(prompt_tokens=1, cached_tokens=5),  # more cached than prompt
    dict(ttft_ms=-3.0),                      # a clock stepped back
    dict(output_tokens=2_000_000_000),       # RangeError: above 1e9
])
def test_refused_finish_in_with_block_still_closes_the_ticket(world, refused):
    d = chat(world, stream=True, sla_ms=800).route()
    with pytest.raises((spotinfer.InvalidArgumentError,
                        spotinfer.RangeError)):
        with d.ticket as t:
            t.finish(**refused)
    # The library refused it (still open); the exit closed it as ERROR.
    assert d.ticket.finished
    assert world.replica_status(d.replica_id).inflight == 0
    assert sum(row.failed for row in world.ledger()) == 1


def test_refused_finish_leaves_the_ticket_open_to_finish_again(world):
    d = chat(world, stream=True, sla_ms=800).route()
    with pytest.raises(spotinfer.InvalidArgumentError):
        d.ticket.finish(prompt_tokens=1, cached_tokens=5)
    assert not d.ticket.finished
    d.ticket.finish(prompt_tokens=5, cached_tokens=1)
    assert d.ticket.finished
    assert sum(row.completed for row in world.ledger()) == 1


def test_with_block_after_the_replica_was_removed_is_not_an_error(world):
    d = chat(world, stream=True, sla_ms=800).route()
    with d.ticket:
        world.remove_replica(d.replica_id)  # a spot reclaim, an autoscaler
    # The library closed the ticket and priced it as completed.
    assert sum(row.completed for row in world.ledger()) == 1


def test_ticket_exit_never_replaces_the_block_exception(world):
    d = chat(world, stream=True, sla_ms=800).route()
    with pytest.raises(KeyError):
        with d.ticket:
            world.remove_replica(d.replica_id)
            raise KeyError("the block's own")
    d1 = chat(world, stream=True, sla_ms=800).route()
    d2 = chat(world, stream=True, sla_ms=800).route()
    with pytest.raises(KeyError):
        with d1.ticket:
            world.close()  # the exit's finish cannot reach the engine
            raise KeyError("the block's own")
    # With nothing in flight, the exit's error is raised.
    with pytest.raises(spotinfer.MisuseError):
        with d2.ticket:
            pass


def test_shadow_policy():
    with Engine({"router": {"shadow_policy": "least-loaded"}}) as e:
        e.upsert_replica("s", pool=Pool.SPOT, usd_per_hour=1.8, max_inflight=16)
        e.report_load("s", running=1, kv_usage=0.1)
        d = e.request(model="m", sla_ms=5000, replayable=True,
                      messages=[("user", "x")]).route()
        assert d.shadow_pool is Pool.SPOT and d.shadow_replica_id == "s"
        d.ticket.finish()


class LeastLoaded(spotinfer.PolicyModule):
    """Pick the eligible candidate with the least running + waiting."""

    def __init__(self):
        self.contexts = []

    def choose(self, instance, ctx):
        self.contexts.append((ctx.req.model, ctx.cls.klass if ctx.cls else None,
                              len(ctx.candidates), ctx.max_fallbacks))
        ok = [c for c in ctx.candidates if c.eligible or c.probe]
        if not ok:
            return PolicyChoice(Pool.NONE, reason_code=Reason.NO_CAPACITY,
                                reason="nothing eligible")
        ok.sort(key=lambda c: (c.running + c.waiting, c.index))
        first = ok[0]
        same = [c.index for c in ok if c.pool == first.pool]
        return PolicyChoice(first.pool, same[:1 + ctx.max_fallbacks],
                            Reason.LEAST_LOADED, "python least loaded")


def test_python_policy_sees_the_ttft_model(world):
    """A Python policy reads the TTFT model's parts: the wait behind queued
    prefill, tokens served, the prefill rate, and the pools' means."""
    pol = LeastLoaded()
    seen = []
    inner = pol.choose

    def choose(instance, ctx):
        seen.append(ctx)
        return inner(instance, ctx)

    pol.choose = choose
    world.register_policy("py-model", pol)
    world.configure({"modules": {"policy": "py-model"}})
    d1 = chat(world, sla_ms=5000, replayable=True).route()  # stays open
    d2 = chat(world, sla_ms=5000, replayable=True).route()
    first, second = seen
    assert first.prompt_tokens > 0 and first.mean_served_tokens == (0, 0, 0, 0)
    for c in first.candidates:
        assert c.served_tokens == 0 and c.est_wait_ms == 0
        assert c.prefill_tokens_per_s == 10000  # router.prefill_tokens_per_s
    on = next(c for c in second.candidates if c.id == d1.replica_id)
    # Tokens served: the prompt and the expected output (256 when the
    # request says nothing of it), until the ticket's finish says.
    assert on.served_tokens == first.prompt_tokens + 256
    assert on.est_wait_ms == pytest.approx(first.prompt_tokens * 1000 / 10000)
    assert second.mean_served_tokens[int(on.pool)] == (first.prompt_tokens + 256) / 2
    # Every replica of the world takes 16 at once.
    assert second.mean_max_inflight[int(on.pool)] == 16
    # The prefill backlog: that wait, over the replicas of its summary.
    assert first.mean_prefill_wait_ms == (0, 0, 0, 0)
    backlog = sum(w * s.usable for w, s in
                  zip(second.mean_prefill_wait_ms, second.summaries))
    assert backlog == pytest.approx(on.est_wait_ms, abs=1e-3)  # microseconds
    # The world's fleet has spot replicas: the engine says since when.
    assert first.spot_seen_ns > 0 and second.spot_seen_ns == first.spot_seen_ns
    d1.ticket.finish()
    d2.ticket.finish()


class OnePlace:
    """A policy that sends everything to one replica and keeps what it saw."""

    def __init__(self, rid):
        self.rid, self.contexts = rid, []

    def choose(self, instance, ctx):
        self.contexts.append(ctx)
        c = next(c for c in ctx.candidates if c.id == self.rid)
        return PolicyChoice(c.pool, [c.index], Reason.AFFINITY, "one place")


def test_python_policy_sees_a_branch_point(world):
    """Requests that share the system prompt and differ after it: the
    second matches the first's prompt and goes on from it, so the third
    finds the shared part marked (match_flags has MATCH_CONTINUED); the
    first two do not."""
    pol = OnePlace("od-a")
    world.register_policy("py-one", pol)
    world.configure({"modules": {"policy": "py-one"}})
    for i in range(3):  # each question fills blocks of its own
        question = f"question {i}: " + "and what of it? " * 200
        chat(world, question, sla_ms=5000, replayable=True).route().ticket.finish()
    flags = [next(c for c in ctx.candidates if c.id == "od-a").match_flags
             for ctx in pol.contexts]
    matched = [next(c for c in ctx.candidates if c.id == "od-a").matched_blocks
               for ctx in pol.contexts]
    assert matched[0] == 0 and matched[1] >= 1 and matched[2] == matched[1]
    assert flags[0] == 0 and flags[1] == 0
    assert flags[2] & spotinfer.MATCH_CONTINUED
    # The other replicas hold nothing of it.
    other = [c for c in pol.contexts[2].candidates if c.id != "od-a"]
    assert all(c.matched_blocks == 0 and c.match_flags == 0 for c in other)


def test_python_policy(world):
    pol = LeastLoaded()
    world.register_policy("py-ll", pol)
    assert "py-ll" in world.module_names("policy")
    world.configure({"modules": {"policy": "py-ll"}})
    world.report_load("spot-b", running=0, kv_usage=0.1)
    d = chat(world, sla_ms=5000, replayable=True).route()
    assert d.replica_id == "spot-b" and d.reason.startswith("python least loaded")
    assert d.reason_code is Reason.LEAST_LOADED
    assert pol.contexts[-1][0] == "llama" and pol.contexts[-1][2] == 4
    d.ticket.finish()


def test_python_policy_exception(world):
    class Broken(spotinfer.PolicyModule):
        def choose(self, instance, ctx):
            raise ZeroDivisionError("bad policy")

    world.register_policy("broken", Broken())
    world.configure({"modules": {"policy": "broken"}})
    with pytest.raises(spotinfer.ModuleFailedError) as ei:
        chat(world, sla_ms=5000).route()
    assert isinstance(ei.value.__cause__, ZeroDivisionError)
    world.register_policy("broken-fb", Broken(), on_failure="fallback")
    world.configure({"modules": {"policy": "broken-fb"}})
    d = chat(world, sla_ms=5000, replayable=True).route()
    assert d.serving
    d.ticket.finish()


def test_python_policy_bad_index_is_checked(world):
    class OutOfRange(spotinfer.PolicyModule):
        def choose(self, instance, ctx):
            return PolicyChoice(Pool.SPOT, [99])

    world.register_policy("oor", OutOfRange())
    world.configure({"modules": {"policy": "oor"}})
    with pytest.raises(spotinfer.ModuleFailedError):
        chat(world, sla_ms=5000).route()


def test_threads_route_on_one_engine(world):
    errors = []
    counts = []

    def worker(i):
        try:
            n = 0
            with chat(world, f"user {i}", sla_ms=5000, replayable=True) as r:
                for _ in range(100):
                    d = r.route()
                    if d.ticket is not None:
                        d.ticket.first_token()
                        d.ticket.finish(output_tokens=10)
                        n += 1
            counts.append(n)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert sum(counts) == 800
    assert sum(r.completed for r in world.ledger()) == 800
    assert all(s.inflight == 0 for s in world.replicas())


# ------------------------------------------------- pool summaries (0.2.0)

SUMMARY_FLEET = (  # (id prefix, pool, tier, how many)
    ("spot-l", Pool.SPOT, ModelTier.LARGE, 16),
    ("spot-s", Pool.SPOT, ModelTier.SMALL, 4),
    ("od-l", Pool.ON_DEMAND, ModelTier.LARGE, 6),
    ("od-s", Pool.ON_DEMAND, ModelTier.SMALL, 2),
)
FLEET_SIZE = sum(n for *_, n in SUMMARY_FLEET)


def summary_world(clock):
    """An engine with a fleet of FLEET_SIZE replicas over the four cells:
    loads that tie (same load, same TTFT), busy ones, one never reported
    (stale: saturated, but usable), a draining one and one that does not
    serve the model (neither is usable)."""
    e = Engine(clock=clock)
    e.clock = clock
    for prefix, pool, tier, n in SUMMARY_FLEET:
        for i in range(n):
            rid = f"{prefix}{i}"
            e.upsert_replica(id=rid, pool=pool, model_tier=tier, max_inflight=16,
                             usd_per_hour=1.8 if pool is Pool.SPOT else 4.5,
                             models=("other",) if rid == "spot-l3" else ())
            if rid == "spot-l13":
                continue
            busy = i % 5 == 4  # running + waiting >= max_inflight
            # Replicas i and i + 9 carry the same load.
            e.report_load(rid, running=12 if busy else i % 3,
                          waiting=4 if busy else (i // 3) % 3, kv_usage=0.2)
    e.set_replica_state("spot-l7", ReplicaState.DRAINING)
    return e


def busy(c):
    return c.inflight >= c.max_inflight or c.running + c.waiting >= c.max_inflight


def check_summaries(ctx, compact):
    """The summaries against a brute-force pass over the candidates, by the
    header's definitions. A compact candidate tuple holds every candidate a
    summary names (so the best of each kind is among them) but not every
    usable one, so only the full tuple can be counted."""
    assert len(ctx.summaries) == spotinfer.SUMMARY_CELLS
    for k, s in enumerate(ctx.summaries):
        assert spotinfer.summary_index(s.pool, s.model_tier) == k
        assert ctx.summary(s.pool, s.model_tier) is s
        us = [c for c in ctx.candidates if (c.eligible or c.probe)
              and c.pool == s.pool and c.model_tier == s.model_tier]
        if compact:
            assert s.usable >= len(us)
        else:
            assert s.usable == len(us)
        top = sorted(us, key=lambda c: (c.est_ttft_ms, c.index))
        assert s.top == tuple(c.index for c in top[:named_top(s.usable)])
        assert len(s.top) == named_top(s.usable)
        assert s.best == (s.top[0] if s.top else None)
        least = min(us, default=None, key=lambda c: (
            (c.running + c.waiting + c.inflight) / c.max_inflight,
            c.served_tokens / c.max_inflight, c.index))
        assert s.least == (least.index if least else None)
        rdv = min((c for c in us if not busy(c)), default=None,
                  key=lambda c: (-c.rendezvous, c.index))
        assert s.rendezvous == (rdv.index if rdv else None)
        warm = min((c for c in us if c.matched_blocks > 0), default=None,
                   key=lambda c: (-c.matched_blocks, c.est_ttft_ms, c.index))
        assert s.warm == (warm.index if warm else None)


def named(ctx):
    """The candidate indices the summaries name."""
    out = set()
    for s in ctx.summaries:
        out.update(s.top)
        out.update(i for i in (s.warm, s.least, s.rendezvous) if i is not None)
    return out


class SummaryPolicy(spotinfer.PolicyModule):
    """Route from the summaries only: the spot large cell's pick (best,
    least or rendezvous) first, then its top as fallbacks; on-demand large
    when spot has nothing usable."""

    def __init__(self, pick="best", summaries_only=False):
        self.pick = pick
        self.summaries_only = summaries_only
        self.contexts = []

    def choose(self, instance, ctx):
        self.contexts.append(ctx)
        for pool in (Pool.SPOT, Pool.ON_DEMAND):
            s = ctx.summary(pool, ModelTier.LARGE)
            first = getattr(s, self.pick)
            if first is None:
                continue
            order = [first] + [i for i in s.top if i != first]
            return PolicyChoice(pool, order[:1 + ctx.max_fallbacks],
                                Reason.LEAST_LOADED, f"summary {self.pick}")
        return PolicyChoice(Pool.NONE, reason_code=Reason.NO_CAPACITY,
                            reason="no usable large replica")


def test_summaries_index_every_replica_without_the_flag():
    clock = Clock()
    pol = SummaryPolicy()
    with summary_world(clock) as e:
        e.register_policy("py-sum", pol)
        e.configure({"modules": {"policy": "py-sum"}})
        decisions = []
        # Open tickets raise inflight, which the least loaded counts.
        for i in range(3):
            decisions.append(chat(e, f"question {i}", sla_ms=5000,
                                  replayable=True).route())
        for ctx, d in zip(pol.contexts, decisions):
            assert len(ctx.candidates) == FLEET_SIZE
            assert [c.index for c in ctx.candidates] == list(range(FLEET_SIZE))
            assert [c.id for c in ctx.candidates] == [r.id for r in e.replicas()]
            check_summaries(ctx, compact=False)
            s = ctx.summary(Pool.SPOT, ModelTier.LARGE)
            assert s.usable == 14  # 16 less the draining and the other model's
            assert len(s.top) == named_top(s.usable)
            assert d.replica_id == ctx.candidates[s.best].id
            assert d.reason.startswith("summary best")
        assert sum(c.inflight for c in pol.contexts[-1].candidates) == 2
        ids = {c.id: c for c in pol.contexts[-1].candidates}
        assert not ids["spot-l3"].eligible and not ids["spot-l7"].eligible
        assert ids["spot-l13"].eligible and not ids["spot-l13"].fresh
        assert busy(ids["spot-l13"])
        # No cell is out of range, and nothing else has a summary.
        assert pol.contexts[0].summary(Pool.QUEUE, ModelTier.LARGE) is None
        assert pol.contexts[0].summary(Pool.SPOT, ModelTier.UNSET) is None
        for d in decisions:
            d.ticket.finish()

        # The same prefix again: the replica that served it is warm.
        d = chat(e, "question 9", sla_ms=5000, replayable=True).route()
        ctx = pol.contexts[-1]
        check_summaries(ctx, compact=False)
        warm = ctx.summary(Pool.SPOT, ModelTier.LARGE).warm
        assert warm is not None and ctx.candidates[warm].matched_blocks >= 3
        assert ctx.candidates[warm].id in {x.replica_id for x in decisions}
        d.ticket.finish()

        # All spot large replicas busy but one: that one is the rendezvous
        # pick whatever its weight; all busy: none.
        live = [c for c in ctx.candidates if c.eligible
                and c.pool is Pool.SPOT and c.model_tier is ModelTier.LARGE]
        for c in live[1:]:
            e.report_load(c.id, running=10, waiting=6, kv_usage=0.2)
        d = chat(e, "question 10", sla_ms=5000, replayable=True).route()
        check_summaries(pol.contexts[-1], compact=False)
        assert pol.contexts[-1].summary(Pool.SPOT, ModelTier.LARGE).rendezvous == live[0].index
        d.ticket.finish()
        e.report_load(live[0].id, running=16, kv_usage=0.2)
        d = chat(e, "question 11", sla_ms=5000, replayable=True).route()
        check_summaries(pol.contexts[-1], compact=False)
        assert pol.contexts[-1].summary(Pool.SPOT, ModelTier.LARGE).rendezvous is None
        d.ticket.finish()


def test_summaries_of_a_shed_pool_are_empty(world):
    pol = SummaryPolicy()
    world.register_policy("py-sum", pol)
    world.configure({"modules": {"policy": "py-sum"}})
    world.report_load("spot-a", running=1, kv_usage=0.9)
    world.report_load("spot-b", running=1, kv_usage=0.9)
    d = chat(world, "batch", tier="flex").route()  # bronze: spot sheds it
    ctx = pol.contexts[-1]
    assert ctx.shed[Pool.SPOT] and not ctx.shed[Pool.ON_DEMAND]
    check_summaries(ctx, compact=False)
    for tier in (ModelTier.SMALL, ModelTier.LARGE):
        s = ctx.summary(Pool.SPOT, tier)
        assert (s.usable, s.top, s.least, s.rendezvous, s.warm) == (0, (), None, None, None)
    assert ctx.summary(Pool.ON_DEMAND, ModelTier.LARGE).usable == 2
    assert d.pool is Pool.ON_DEMAND
    d.ticket.finish()


@pytest.mark.parametrize("pick", ["best", "least", "rendezvous"])
def test_summaries_only_policy_gets_compact_candidates(pick):
    clock = Clock()
    full, compact = SummaryPolicy(pick), SummaryPolicy(pick, summaries_only=True)
    with summary_world(clock) as ef, summary_world(clock) as ec:
        ef.register_policy("py-sum", full)
        ec.register_policy("py-sum", compact)
        for e in (ef, ec):
            e.configure({"modules": {"policy": "py-sum"}})
        for i in range(3):
            df = chat(ef, f"q{i}", sla_ms=5000, replayable=True).route()
            dc = chat(ec, f"q{i}", sla_ms=5000, replayable=True).route()
            f, c = full.contexts[-1], compact.contexts[-1]
            # Only the candidates the summaries name, in replica order.
            assert len(c.candidates) < FLEET_SIZE == len(f.candidates)
            assert named(c) == set(range(len(c.candidates)))
            assert [x.index for x in c.candidates] == list(range(len(c.candidates)))
            ids = {f.candidates[j].id for j in named(f)}
            assert [x.id for x in c.candidates] == [x.id for x in f.candidates
                                                    if x.id in ids]
            check_summaries(c, compact=True)
            # The same summaries as the full array's, by replica.
            for sf, sc in zip(f.summaries, c.summaries):
                assert sf.usable == sc.usable and len(sf.top) == len(sc.top)
                fid = lambda j: f.candidates[j].id if j is not None else None
                cid = lambda j: c.candidates[j].id if j is not None else None
                assert [fid(j) for j in sf.top] == [cid(j) for j in sc.top]
                for attr in ("warm", "least", "rendezvous"):
                    assert fid(getattr(sf, attr)) == cid(getattr(sc, attr)), attr
            for x in c.candidates:
                y = next(y for y in f.candidates if y.id == x.id)
                assert dataclasses.replace(y, index=x.index) == x
            # The policy routed by the summaries alone.
            s = c.summary(Pool.SPOT, ModelTier.LARGE)
            assert dc.replica_id == c.candidates[getattr(s, pick)].id
            assert dc.replica_id == df.replica_id
            assert dc.fallback_ids == df.fallback_ids
            assert dc.reason.startswith(f"summary {pick}")


def test_policy_flags_at_registration(world):
    class Plain:  # no summaries_only attribute
        def __init__(self):
            self.n = []

        def choose(self, instance, ctx):
            self.n.append(len(ctx.candidates))
            s = ctx.summary(Pool.ON_DEMAND, ModelTier.LARGE)
            return PolicyChoice(Pool.ON_DEMAND, [s.best])

    world.upsert_replica(id="od-off", pool=Pool.ON_DEMAND, max_inflight=16,
                         usd_per_hour=4.5)
    world.set_replica_state("od-off", ReplicaState.DRAINING)  # not usable
    by_flag, by_kw, overridden = Plain(), Plain(), SummaryPolicy(summaries_only=True)
    world.register_policy("by-flag", by_flag, flags=spotinfer.PolicyFlags.SUMMARIES_ONLY)
    world.register_policy("by-kw", by_kw, summaries_only=True)
    world.register_policy("overridden", overridden, summaries_only=False)
    for name in ("by-flag", "by-kw", "overridden"):
        world.configure({"modules": {"policy": name}})
        chat(world, sla_ms=5000, replayable=True).route().ticket.finish()
    # Five replicas; the summaries name at most the four usable ones.
    assert by_flag.n[-1] < 5 and by_kw.n[-1] < 5
    assert len(overridden.contexts[-1].candidates) == 5

    # Bits the library does not know are refused, and nothing is registered.
    with pytest.raises(spotinfer.InvalidArgumentError) as ei:
        world.register_policy("unknown-bit", Plain(), flags=2)
    assert "flags" in ei.value.message
    with pytest.raises(spotinfer.InvalidArgumentError):
        world.register_policy("unknown-bit",
                              SummaryPolicy(summaries_only=True), flags=1 << 30)
    assert "unknown-bit" not in world.module_names("policy")
    # Flags are a policy's only.
    with pytest.raises(TypeError):
        world.register_classifier("cls", spotinfer.ClassifierModule(), flags=1)
    with pytest.raises(TypeError):
        world.register_classifier("cls", spotinfer.ClassifierModule(),
                                  summaries_only=True)


def test_metrics_text_parses_in_base_units(world):
    """The metrics text parses with the Prometheus client library's parser,
    and the TTFT histogram is in seconds with bounds in seconds."""
    parser = pytest.importorskip("prometheus_client.parser")
    d = chat(world, "first", stream=True, sla_ms=800).route()
    d.ticket.finish(output_tokens=5, ttft_ms=250.0, duration_ms=900.0)
    families = {f.name: f for f in
                parser.text_string_to_metric_families(world.metrics())}
    assert not [name for name in families if "millisecond" in name]
    ttft = families["spotinfer_ttft_seconds"]
    assert ttft.type == "histogram"
    bounds = sorted({float(s.labels["le"]) for s in ttft.samples
                     if s.name == "spotinfer_ttft_seconds_bucket"})
    assert bounds[0] == 0.025 and bounds[-2] == 30.0
    assert bounds[-1] == float("inf")
    total = sum(s.value for s in ttft.samples
                if s.name == "spotinfer_ttft_seconds_sum")
    count = sum(s.value for s in ttft.samples
                if s.name == "spotinfer_ttft_seconds_count")
    assert count == 1 and total == pytest.approx(0.25)
    assert families["spotinfer_ttft_p95_seconds"].type == "gauge"
    assert families["spotinfer_decisions"].type == "counter"
