"""The LiteLLM routing strategy with the real LiteLLM Router (the version
the package's `litellm` extra pins) against fakellm backends on loopback."""

import asyncio
import gc
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import litellm
import pytest
from litellm import Router
from litellm.types.router import Deployment
from prometheus_client.parser import text_string_to_metric_families

import spotinfer
from spotinfer import Pool, ReplicaState, TicketResult, TicketStatus
from spotinfer.litellm import (LITELLM_VERSION, ROUTING_KEY, TICKET_KEY, TICKETS_KEY,
                               SpotinferRouting, request_body)

from spotinfer.litellm_deployments import DeploymentError, replica_id

from conftest import MODEL, ROOT, deployment

# Six system prompts of about 2.8 KB, as a chat product's would be.
SYSTEMS = [
    "You are a support agent for a bicycle shop. Answer in short sentences. " * 40,
    "You translate technical English into plain words for new engineers. " * 40,
    "You are a travel planner who always lists three options with prices. " * 40,
    "You review SQL queries for mistakes and explain each fix briefly. " * 40,
]

FAST = ("-token-rate", "2000", "-answer-tokens", "12", "-ttft", "20ms",
        "-cached-ttft", "2ms")

# Stickiness as the gateway drill configures it: a prompt's warm replica
# keeps it while its share of the load is under twice the fair share.
CONFIG = {"policy": {"load_share_cap": 2}}


def messages(system, user):
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# One event loop for every test, as an application has: LiteLLM binds its
# logging worker (which runs the callbacks) to the loop it first sees.
LOOP = asyncio.new_event_loop()


def run(coro):
    """Await coro in the test's one caller task, as an application's main
    task awaits call after call: a strategy ends an async route's unsent
    tickets when the task that routed is done."""
    return LOOP.run_until_complete(_caller().call(coro))


class _Caller:
    """A task on LOOP that awaits the coroutines handed to it, one at a
    time, and lives as long as the loop."""

    def __init__(self):
        self.queue = asyncio.Queue()
        self.task = LOOP.create_task(self._serve())

    async def _serve(self):
        while True:
            coro, fut = await self.queue.get()
            try:
                fut.set_result(await coro)
            except BaseException as e:  # noqa: BLE001 - handed back to run()
                fut.set_exception(e)

    async def call(self, coro):
        fut = LOOP.create_future()
        await self.queue.put((coro, fut))
        return await fut


_CALLERS = []


def _caller():
    if not _CALLERS:
        _CALLERS.append(_Caller())
    return _CALLERS[0]


@pytest.fixture(scope="module", autouse=True)
def close_the_loop():
    """The loop ends as an application's does: LiteLLM's pending tasks (its
    logging worker) cancelled and awaited, then the loop closed."""
    yield
    pending = [t for t in asyncio.all_tasks(LOOP) if not t.done()]
    for t in pending:
        t.cancel()

    async def drain():
        await asyncio.gather(*pending, return_exceptions=True)
    LOOP.run_until_complete(drain())
    LOOP.run_until_complete(LOOP.shutdown_asyncgens())
    LOOP.close()


@pytest.fixture
def closing():
    made = []
    yield made.append
    for r in made:
        r.close()


def test_the_pinned_version_runs():
    """The tests run the LiteLLM the extra pins (pyproject.toml)."""
    from importlib.metadata import version
    import tomllib
    assert version("litellm") == LITELLM_VERSION
    with open(ROOT / "bindings" / "python" / "pyproject.toml", "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["litellm"]
    assert extra == [f"litellm=={LITELLM_VERSION}"]


def test_prefix_affinity_streams_and_tickets(backends, closing):
    for rid in ("spot-a", "spot-b", "spot-c"):
        backends.start(rid, *FAST)
    router = Router(model_list=[deployment(backends, r) for r in ("spot-a", "spot-b", "spot-c")],
                    num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG)
    closing(routing)

    async def one(n, system, stream):
        kw = {"metadata": {"class": "silver"}}
        if stream:
            resp = await router.acompletion(model=MODEL, messages=messages(system, f"q{n}"),
                                            stream=True, stream_options={"include_usage": True}, **kw)
            text, fp, chunks = [], None, 0
            async for c in resp:
                chunks += 1
                fp = c.system_fingerprint or fp
                if c.choices and c.choices[0].delta.content:
                    text.append(c.choices[0].delta.content)
            return fp, "".join(text), chunks
        r = await router.acompletion(model=MODEL, messages=messages(system, f"q{n}"), **kw)
        return r.system_fingerprint, r.choices[0].message.content, 1

    async def waves():
        out = []
        for w in range(4):
            out += await asyncio.gather(*[one(w * 10 + i, s, stream=(w % 2 == 1))
                                          for i, s in enumerate(SYSTEMS)])
            await asyncio.sleep(0.05)   # let the success callbacks run
        return out

    results = run(waves())
    # Affinity: every request with one system prompt went to one backend.
    by_prompt = {}
    for i, (fp, text, chunks) in enumerate(results):
        assert fp in ("spot-a", "spot-b", "spot-c"), fp
        assert text
        by_prompt.setdefault(i % len(SYSTEMS), set()).add(fp)
    assert all(len(s) == 1 for s in by_prompt.values()), by_prompt
    # Streams were passed through chunk by chunk, with the backend's text:
    # the same as the backend answers the same request straight.
    streamed = [r for i, r in enumerate(results) if (i // len(SYSTEMS)) % 2 == 1]
    assert all(chunks > 5 for _, _, chunks in streamed)
    fp, text, _ = streamed[0]
    body = {"model": MODEL, "messages": messages(SYSTEMS[0], "q10")}
    req = urllib.request.Request(backends.url(fp) + "/chat/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        direct = json.load(resp)["choices"][0]["message"]["content"]
    assert text == direct
    # Tickets: each finished once, as completed work with its tokens.
    wait_for(lambda: sum(r.completed for r in routing.engine.ledger()) == len(results))
    rows = routing.engine.ledger()
    assert sum(r.failed for r in rows) == 0
    assert sum(r.output_tokens for r in rows) == 12 * len(results)
    assert sum(r.prompt_tokens for r in rows) > 0
    assert all(r.pool is Pool.SPOT for r in rows)
    assert all(s.inflight == 0 for s in routing.engine.replicas())
    assert not routing._open
    # The metrics text parses; it counts the affinity decisions, the
    # matched prefix blocks and one TTFT sample per stream.
    samples = metric_samples(routing.metrics())
    assert total(samples, "spotinfer_decisions_total", reason="affinity") > 0
    assert total(samples, "spotinfer_prefix_blocks_matched_total") > 0
    assert total(samples, "spotinfer_ttft_seconds_count") == len(streamed)


def metric_samples(text):
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def total(samples, name, **labels):
    return sum(s.value for s in samples if s.name == name and
               all(s.labels.get(k) == v for k, v in labels.items()))


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_shed_is_429_and_no_capacity_503(backends, closing):
    """Load reported by hand (the strategy not started): KV pressure on the
    spot pool sheds a bronze request; with every replica drained nothing
    is eligible."""
    for rid in ("spot-a", "spot-b"):
        backends.start(rid, *FAST)
    router = Router(model_list=[deployment(backends, r) for r in ("spot-a", "spot-b")],
                    num_retries=0)
    # Readings by hand stay fresh for the test, however slow the machine.
    routing = SpotinferRouting(router, {**CONFIG, "router": {"load_max_age_ms": 600000}},
                               retry_after_s=3)
    closing(routing)
    router.register_plugin(routing)
    routing.add_callback()
    for rid in ("spot-a", "spot-b"):
        routing.engine.report_load(rid, running=1, kv_usage=0.9)

    async def ask(cls):
        return await router.acompletion(model=MODEL, messages=messages(SYSTEMS[0], "x"),
                                        metadata={"class": cls})
    with pytest.raises(litellm.RateLimitError) as ei:
        run(ask("bronze"))
    assert ei.value.status_code == 429
    assert "shed" in str(ei.value)
    assert ei.value.headers == {"retry-after": "3"}
    assert ei.value.response.headers.get("retry-after") == "3"
    # Silver still goes through at 0.9 (its threshold is 0.95).
    r = run(ask("silver"))
    assert r.system_fingerprint in ("spot-a", "spot-b")
    for rid in ("spot-a", "spot-b"):
        routing.engine.set_replica_state(rid, ReplicaState.DRAINING)
    with pytest.raises(litellm.ServiceUnavailableError) as ei:
        run(ask("silver"))
    assert ei.value.status_code == 503
    assert "no capacity" in str(ei.value)
    samples = metric_samples(routing.metrics())
    assert total(samples, "spotinfer_shed_total") == 1
    assert total(samples, "spotinfer_decisions_total", reason="no_capacity") == 1


def test_an_async_streams_ttft_is_its_first_chunks_time(backends, closing):
    """LiteLLM runs the streaming deployment hook on a stream's last chunk:
    the time to first token the library records for an async stream is
    the one its success event gives (the first chunk's), not the whole
    stream's."""
    backends.start("spot-a", "-ttft", "50ms", "-token-rate", "20", "-answer-tokens", "24")
    router = Router(model_list=[deployment(backends, "spot-a")], num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG)
    closing(routing)

    async def go():
        firsts = []
        for i in range(3):
            start, first = time.monotonic(), None
            resp = await router.acompletion(model=MODEL, messages=messages("s", f"q{i}"),
                                            metadata={"class": "silver"}, stream=True)
            async for _ in resp:
                first = first or time.monotonic() - start
            firsts.append(first)
            assert time.monotonic() - start > 1.0       # a stream of over a second
        await settle(routing, 3)
        return firsts
    firsts = run(go())
    samples = metric_samples(routing.metrics())
    n = total(samples, "spotinfer_ttft_seconds_count")
    mean = total(samples, "spotinfer_ttft_seconds_sum") / n
    assert n == 3
    assert mean < max(firsts) + 0.2, (mean, firsts)


def aws_notice(seconds_ahead=120):
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds_ahead))
    return json.dumps({"action": "terminate", "time": at})


def test_a_notice_stops_routing_there_at_once(backends, closing):
    for rid in ("spot-a", "spot-b"):
        backends.start(rid, *FAST)
    router = Router(model_list=[deployment(backends, "spot-a", node="i-aaa", zone="us-east-1a"),
                                deployment(backends, "spot-b", node="i-bbb", zone="us-east-1b")],
                    num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG)
    closing(routing)

    async def ask(n):
        r = await router.acompletion(model=MODEL, messages=messages(SYSTEMS[1], f"n{n}"),
                                     metadata={"class": "silver"})
        await settle(routing, n + 1)
        return r.system_fingerprint

    async def scenario():
        first = await ask(0)
        assert await ask(1) == first          # warm: it stays
        node = "i-aaa" if first == "spot-a" else "i-bbb"
        routing.notice(spotinfer.NoticeFormat.AWS_INSTANCE_ACTION, aws_notice(), node=node)
        return first, [await ask(n) for n in range(2, 8)]

    first, after = run(scenario())
    other = "spot-b" if first == "spot-a" else "spot-a"
    assert after == [other] * 6
    assert routing.engine.replica_status(first).state is not ReplicaState.ACTIVE


async def settle(routing, completed, timeout=5.0):
    """Wait (in the event loop, where LiteLLM runs its callbacks) until the
    ledger counts that many completed requests."""
    deadline = time.monotonic() + timeout
    while sum(r.completed for r in routing.engine.ledger()) < completed:
        assert time.monotonic() < deadline, "tickets not finished in time"
        await asyncio.sleep(0.01)


def test_a_failed_call_finishes_its_ticket_as_failed(backends, closing):
    backends.start("spot-a", *FAST)
    router = Router(model_list=[deployment(backends, "spot-a")], num_retries=1,
                    retry_after=0)
    # A long load age: the dead backend's last reading stays usable, so the
    # library routes to it and the call fails, and so does LiteLLM's retry:
    # each try's ticket ends as a failure.
    routing = SpotinferRouting.install(router, {"router": {"load_max_age_ms": 60000}})
    closing(routing)
    backends.stop("spot-a")
    with pytest.raises((litellm.InternalServerError, litellm.APIConnectionError)):
        run(router.acompletion(model=MODEL, messages=messages("s", "u"),
                               metadata={"class": "silver"}))
    wait_for(lambda: sum(r.failed for r in routing.engine.ledger()) == 2)
    assert sum(r.completed for r in routing.engine.ledger()) == 0
    assert not routing._open


def test_a_retry_is_decided_among_the_deployments_not_cooling_down(backends, closing):
    """A try that fails on a dead backend cools its deployment down
    (allowed_fails=0); LiteLLM's retry, and every request after it, is
    offered the other deployment only, and the library decides among that
    one, the dead one excluded: each answer is a ticket it completed, and
    only the failed try is a failure."""
    for rid in ("spot-a", "spot-b"):
        backends.start(rid, *FAST)
    router = Router(model_list=[deployment(backends, r) for r in ("spot-a", "spot-b")],
                    num_retries=1, retry_after=0, allowed_fails=0)
    # A long load age: the dead backend's last reading stays usable, so the
    # library routes to it until LiteLLM stops offering it.
    routing = SpotinferRouting.install(router, {"router": {"load_max_age_ms": 60000}})
    closing(routing)
    backends.stop("spot-a")
    for i, system in enumerate(SYSTEMS):
        r = run(router.acompletion(model=MODEL, messages=messages(system, f"u{i}"),
                                   metadata={"class": "silver"}))
        assert r.system_fingerprint == "spot-b"
    wait_for(lambda: sum(r.completed for r in routing.engine.ledger()) == len(SYSTEMS))
    assert sum(r.failed for r in routing.engine.ledger()) == 1
    assert all(s.inflight == 0 for s in routing.engine.replicas())
    assert not routing._open


def test_the_sync_api_routes_and_finishes_too(backends, closing):
    for rid in ("spot-a", "spot-b"):
        backends.start(rid, *FAST)
    router = Router(model_list=[deployment(backends, r) for r in ("spot-a", "spot-b")],
                    num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG)
    closing(routing)
    fps = []
    for n in range(3):
        r = router.completion(model=MODEL, messages=messages(SYSTEMS[2], f"s{n}"),
                              metadata={"class": "silver"})
        fps.append(r.system_fingerprint)
        wait_for(lambda: sum(x.completed for x in routing.engine.ledger()) == n + 1)
    assert fps[0] in ("spot-a", "spot-b") and fps == [fps[0]] * 3
    assert not routing._open


def test_deployments_added_later_are_routed_to(backends, closing):
    backends.start("spot-a", *FAST)
    router = Router(model_list=[deployment(backends, "spot-a")], num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG)
    closing(routing)
    routing.engine.set_replica_state("spot-a", ReplicaState.DRAINING)
    backends.start("spot-b", *FAST)
    router.add_deployment(Deployment(**deployment(backends, "spot-b")))
    # No sync_deployments call: the route sees the router's deployments
    # changed (LiteLLM's registry version) and reads them again.
    r = run(router.acompletion(model=MODEL, messages=messages("s", "u"),
                               metadata={"class": "silver"}))
    assert "spot-b" in routing._replicas
    wait_for(routing._fresh["spot-b"].is_set)   # its first load reading
    r = run(router.acompletion(model=MODEL, messages=messages("s", "u"),
                               metadata={"class": "silver"}))
    assert r.system_fingerprint == "spot-b"


def test_a_bad_deployment_added_at_run_time_is_logged_and_left_out(closing, caplog):
    """Deployments added or changed at run time (the proxy's database or
    admin API) that cannot be read, or that the library refuses, do not
    fail the next route of an unrelated request: each is logged, naming
    it, and left as it was (not added, or with the settings last applied),
    and the others, added then or later, are applied."""
    router, routing = hand_fed(["spot-a"])
    closing(routing)
    plain = unreachable("plain")
    del plain["model_info"]["spotinfer"]            # no price: cannot be read
    router.add_deployment(Deployment(**plain))
    far = unreachable("far")
    far["model_info"]["spotinfer"]["zone"] = "z" * 200   # the library refuses it
    router.add_deployment(Deployment(**far))
    changed = unreachable("spot-a")
    changed["model_info"]["spotinfer"]["usd_per_hour"] = "cheap"
    router.upsert_deployment(Deployment(**changed))
    kw = dict(messages=messages("s", "u"), request_kwargs={"metadata": {"class": "silver"}})
    with caplog.at_level("WARNING", logger="spotinfer.litellm"):
        dep = run(routing.async_get_available_deployment(MODEL, **kw))
    assert dep["model_info"]["id"] == "spot-a"
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'plain'" in warned and "usd_per_hour is missing" in warned
    assert "'far'" in warned and "zone" in warned
    assert "'spot-a'" in warned and "cheap" in warned
    assert sorted(routing._replicas) == ["spot-a"]
    assert routing.engine.replica_status("spot-a").usd_per_hour == 1.8     # as it was
    # A change after those is read at the next route.
    router.add_deployment(Deployment(**unreachable("spot-c")))
    run(routing.async_get_available_deployment(MODEL, **kw))
    assert sorted(routing._replicas) == ["spot-a", "spot-c"]
    assert sorted(s.id for s in routing.engine.replicas()) == ["spot-a", "spot-c"]


def test_a_deployment_the_library_refuses_at_install_is_named():
    """At install a deployment that cannot be read is an error, and so is
    one the library refuses: a DeploymentError naming it."""
    far = unreachable("far")
    far["model_info"]["spotinfer"]["zone"] = "z" * 200
    router = Router(model_list=[unreachable("spot-a"), far], num_retries=0)
    with pytest.raises(DeploymentError) as ei:
        SpotinferRouting(router, {"router": {"load_max_age_ms": 600000}})
    assert "'far'" in str(ei.value) and "zone" in str(ei.value)


def test_syncs_at_once_keep_every_deployment(closing, monkeypatch):
    """Two threads' routes see the deployments change and sync at once: the
    one that read the older model list does not apply it over the newer
    one (which would remove a deployment just added, with the version
    saying nothing is left to read); syncs run one at a time."""
    router, routing = hand_fed(["spot-a"])
    closing(routing)
    real = routing._model_list
    read, go = threading.Event(), threading.Event()

    def slow_list():
        out = real()
        if threading.current_thread().name == "A":
            read.set()
            go.wait(5)                  # A held up after reading the list
        return out
    monkeypatch.setattr(routing, "_model_list", slow_list)
    router.add_deployment(Deployment(**unreachable("spot-b")))
    a = threading.Thread(target=routing.sync_if_changed, name="A")
    a.start()
    assert read.wait(5)
    router.add_deployment(Deployment(**unreachable("spot-c")))
    b = threading.Thread(target=routing.sync_if_changed, name="B")
    b.start()
    b.join(0.3)
    go.set()
    a.join(5)
    b.join(5)
    routing.sync_if_changed()           # any later route
    assert sorted(routing._replicas) == ["spot-a", "spot-b", "spot-c"]
    assert sorted(s.id for s in routing.engine.replicas()) == ["spot-a", "spot-b", "spot-c"]


def test_a_try_litellm_refuses_before_the_call_ends_after_late_event_wait_s(backends, closing):
    """A deployment at its max_parallel_requests (LiteLLM derives one from
    rpm and tpm too): LiteLLM answers 429 after the route, before its call
    wrapper, with no failure hook and no event. That try was never sent
    to the deployment, so its ticket ends as CANCELLED once
    late_event_wait_s has passed since its route (not after
    ticket_timeout_s, counted on the replica meanwhile, when it is full)."""
    backends.start("spot-a", "-token-rate", "2000", "-answer-tokens", "12", "-ttft", "1s")
    dep = deployment(backends, "spot-a")
    dep["litellm_params"]["max_parallel_requests"] = 1
    router = Router(model_list=[dep], num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG, late_event_wait_s=0.5)
    closing(routing)

    async def go():
        calls = [router.acompletion(model=MODEL, messages=messages("s", q),
                                    metadata={"class": "silver"}) for q in ("one", "two")]
        res = await asyncio.gather(*calls, return_exceptions=True)
        await settle(routing, 1)
        return res
    res = run(go())
    assert sum(isinstance(r, litellm.RateLimitError) for r in res) == 1, res
    wait_for(lambda: not routing._open)
    assert routing.engine.replica_status("spot-a").inflight == 0
    assert routing.engine.replica_status("spot-a").consecutive_errors == 0     # CANCELLED
    rows = routing.engine.ledger()
    assert (sum(r.completed for r in rows), sum(r.failed for r in rows)) == (1, 1)


class RefusingCheck(litellm.integrations.custom_logger.CustomLogger):
    """Another callback's pre-call check that refuses every call (as
    LiteLLM's model rate limit check does past a deployment's limits)."""

    def pre_call_check(self, deployment):
        raise litellm.RateLimitError("over the limit", "openai", MODEL)


def test_a_sync_try_refused_by_a_pre_call_check_ends_with_its_call(backends, closing):
    """The sync API: a callback's pre_call_check that raises after the route
    leaves no event, and the try was never sent (no log_pre_api_call); its
    ticket ends as CANCELLED when the call raises, long before
    late_event_wait_s."""
    backends.start("spot-a", *FAST)
    router = Router(model_list=[deployment(backends, "spot-a")], num_retries=0)
    refusing = RefusingCheck()
    litellm.logging_callback_manager.add_litellm_callback(refusing)
    try:
        routing = SpotinferRouting.install(router, CONFIG, late_event_wait_s=60)
        closing(routing)
        with pytest.raises(litellm.RateLimitError):
            router.completion(model=MODEL, messages=messages("s", "u"),
                              metadata={"class": "silver"})
    finally:
        litellm.logging_callback_manager.remove_callback_from_all_lists(
            refusing, require_self=False)
    assert not routing._open
    assert routing.engine.replica_status("spot-a").inflight == 0
    assert routing.engine.replica_status("spot-a").consecutive_errors == 0     # CANCELLED
    assert sum(r.failed for r in routing.engine.ledger()) == 1


def test_a_sent_try_outlasting_late_event_wait_s_stays_open(backends, closing):
    """A try LiteLLM sent (the async call wrapper's deployment hook, the
    sync Router's pre-call check and the provider's pre-call log) stays
    open however long it is served, and its events finish it."""
    backends.start("spot-a", "-token-rate", "2000", "-answer-tokens", "12", "-ttft", "1500ms")
    router = Router(model_list=[deployment(backends, "spot-a")], num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG, late_event_wait_s=0.75)
    closing(routing)
    kw = dict(model=MODEL, messages=messages("s", "u"), metadata={"class": "silver"})
    run(router.acompletion(**kw))
    router.completion(**kw)
    run(router.atext_completion(model=MODEL, prompt="p", metadata={"class": "silver"}))

    async def stream():
        resp = await router.acompletion(stream=True, **kw)
        return [c async for c in resp]
    run(stream())
    wait_for(lambda: sum(r.completed for r in routing.engine.ledger()) == 4)
    assert sum(r.failed for r in routing.engine.ledger()) == 0
    assert not routing._open


def test_a_cancelled_call_ends_its_ticket(backends, closing):
    """A call cancelled in flight gets no failure hook or event (LiteLLM
    catches Exception only): a caller's asyncio.wait_for that times out,
    LiteLLM's abatch_completion_fastest_response cancelling the slower
    calls. Its ticket ends as CANCELLED when its task ends so, at once
    (not after ticket_timeout_s, or late_event_wait_s: it was sent)."""
    backends.start("slow", "-token-rate", "2000", "-answer-tokens", "12", "-ttft", "3s")
    backends.start("fast", *FAST)
    deps = [deployment(backends, "slow"), deployment(backends, "fast")]
    deps[1]["model_name"] = "fast-model"
    router = Router(model_list=deps, num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG, late_event_wait_s=60)
    closing(routing)

    async def go():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(router.acompletion(
                model=MODEL, messages=messages("s", "u"), metadata={"class": "silver"}), 0.5)
        await asyncio.sleep(0.1)
        assert not routing._open
        # asyncio.timeout() cancels the call inside the caller's task and
        # the task goes on: the call in a task of its own ends cancelled.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await asyncio.create_task(router.acompletion(
                    model=MODEL, messages=messages("s", "w"), metadata={"class": "silver"}))
        await asyncio.sleep(0.1)
        assert not routing._open
        r = await router.abatch_completion_fastest_response(
            model=f"{MODEL},fast-model", messages=messages("s", "v"),
            metadata={"class": "silver"})
        assert r.system_fingerprint == "fast"
        await settle(routing, 1)
        await asyncio.sleep(0.1)
    run(go())
    assert not routing._open
    assert all(s.inflight == 0 and s.consecutive_errors == 0
               for s in routing.engine.replicas())                     # CANCELLED
    rows = {r.model: (r.completed, r.failed) for r in routing.engine.ledger()}
    assert rows == {MODEL: (0, 3), "fast-model": (1, 0)}, rows


def test_a_stream_outlives_the_task_that_routed_it(backends, closing):
    """A stream is served after its route's task returned (the stream is
    handed back): that task ending leaves its ticket to the stream's
    success event. A task cancelled while it reads a stream abandons it
    (no event comes): its ticket ends as CANCELLED."""
    backends.start("spot-a", "-token-rate", "20", "-answer-tokens", "12", "-ttft", "20ms")
    router = Router(model_list=[deployment(backends, "spot-a")], num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG, late_event_wait_s=60)
    closing(routing)
    kw = dict(model=MODEL, messages=messages("s", "u"), metadata={"class": "silver"},
              stream=True, stream_options={"include_usage": True})

    async def whole():
        resp = await asyncio.create_task(router.acompletion(**kw))
        await asyncio.sleep(0.1)                    # its task is done
        assert len(routing._open) == 1
        return [c async for c in resp]

    async def cut():
        resp = await router.acompletion(**kw)
        async for _ in resp:
            await asyncio.sleep(10)

    async def go():
        assert len(await whole()) > 5
        await settle(routing, 1)
        t = asyncio.create_task(cut())
        await asyncio.sleep(0.3)
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        await asyncio.sleep(0.05)
        assert not routing._open
    run(go())
    rows = routing.engine.ledger()
    assert (sum(r.completed for r in rows), sum(r.failed for r in rows)) == (1, 1)
    assert routing.engine.replica_status("spot-a").consecutive_errors == 0


def test_a_cancelled_task_ends_only_its_calls_open_tries(closing):
    """A task cancelled with tickets of its routes open: the try still its
    call's ends as CANCELLED, once; the earlier try a retry took the place
    of is left to its own event or the sweep; a ticket an event finished
    is not finished again; one whose success event is on its way (an
    answer the events finish, such as an embedding's) waits for it. A task
    that routes call after call keeps only its calls still open."""
    router, routing = hand_fed(["spot-a", "spot-b"], late_event_wait_s=60)
    closing(routing)
    meta = {"class": "silver"}
    ids = []

    async def route(trace, user):
        dep = await routing.async_get_available_deployment(
            MODEL, messages=messages(SYSTEMS[0], user),
            request_kwargs={"metadata": meta, "litellm_trace_id": trace})
        await routing.async_pre_call_deployment_hook({"model_info": dep["model_info"]}, None)
        return dep

    async def call():
        for n in range(20):                         # calls answered one after another
            dep = await route(f"done-{n}", "x")
            await routing.async_post_call_success_deployment_hook(
                {"model_info": dep["model_info"]}, litellm.ModelResponse(), None)
        assert len(routing._tasks[asyncio.current_task()]) == 1
        embedded = await route("embedding", "e")
        await routing.async_post_call_success_deployment_hook(
            {"model_info": embedded["model_info"]}, litellm.EmbeddingResponse(), None)
        ids.append(embedded)
        ids.append((await route("call", "q"))["model_info"][TICKET_KEY])
        ids.append((await route("call", "q"))["model_info"][TICKET_KEY])     # its retry
        await asyncio.sleep(30)

    async def go():
        t = asyncio.create_task(call())
        while len(ids) < 3 and not t.done():
            await asyncio.sleep(0.01)
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
    run(go())
    assert len(ids) == 3, ids
    embedded, first, retry = ids
    waiting = embedded["model_info"][TICKET_KEY]
    assert sorted(routing._open) == sorted([waiting, first])
    assert routing._open[first].until and routing._open[waiting].until
    assert not routing._tasks
    rows = routing.engine.ledger()
    assert (sum(r.completed for r in rows), sum(r.failed for r in rows)) == (20, 1)
    run(routing.async_log_success_event(
        {"litellm_params": {"model_info": embedded["model_info"]}}, None, None, None))
    assert sum(r.completed for r in routing.engine.ledger()) == 21


def test_a_body_the_library_refuses_is_400_with_its_message(backends, closing):
    backends.start("spot-a", *FAST)
    router = Router(model_list=[deployment(backends, "spot-a")], num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG)
    closing(routing)
    with pytest.raises(litellm.BadRequestError) as ei:
        run(router.acompletion(model=MODEL, messages=[{"role": "user", "content": 5}]))
    assert ei.value.status_code == 400
    assert "messages[0].content" in str(ei.value)
    assert sum(r.completed + r.failed for r in routing.engine.ledger()) == 0


def test_integer_and_boolean_metadata_hints_are_read_as_text(closing):
    """Hints given as numbers or booleans (metadata={"sla_ms": 500},
    {"replayable": True}) reach the library as the text its OpenAI parser
    takes for metadata values, as Request.set_metadata sends them: the
    request is routed, not refused with a 400."""
    router, routing = hand_fed(["spot-a"])
    closing(routing)
    for meta in ({"sla_ms": 500}, {"priority": 5}, {"replayable": True},
                 {"replayable": False}, {"expected_output_tokens": 100}):
        dep = run(routing.async_get_available_deployment(
            MODEL, messages=messages("s", "u"), request_kwargs={"metadata": dict(meta)}))
        assert dep["model_info"]["id"] == "spot-a", meta
    body, _ = request_body(MODEL, messages("s", "u"), None, {"metadata": {
        "sla_ms": 500, "replayable": True, "class": "gold", "tenant": 7}})
    assert json.loads(body)["metadata"] == {"class": "gold", "sla_ms": "500",
                                            "replayable": "true", "tenant": "7"}


def fingerprints(router, model, system, n, sync=False):
    """The backends n requests with one system prompt went to, in order,
    and what LiteLLM called each with (litellm_params.model)."""
    out = []
    for i in range(n):
        kw = dict(model=model, messages=messages(system, f"{model} {i}"),
                  metadata={"class": "silver"})
        r = router.completion(**kw) if sync else run(router.acompletion(**kw))
        out.append((r.system_fingerprint, r._hidden_params.get("litellm_model_name")))
    return out


def test_an_alias_is_routed_in_its_target_group(backends, closing):
    """model_group_alias, in both its forms: the library routes the request
    among the target group's replicas, keyed as the group (one prompt asked
    by the alias and by the group's own name stays on one replica)."""
    for rid in ("spot-a", "spot-b", "other"):
        backends.start(rid, *FAST)
    other = {**deployment(backends, "other"), "model_name": "other-model"}
    router = Router(model_list=[deployment(backends, "spot-a"), deployment(backends, "spot-b"),
                                other],
                    model_group_alias={"fast": MODEL,
                                       "quiet": {"model": MODEL, "hidden": True}},
                    num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG)
    closing(routing)
    seen = fingerprints(router, "fast", SYSTEMS[0], 2)
    seen += fingerprints(router, "quiet", SYSTEMS[0], 2)
    seen += fingerprints(router, MODEL, SYSTEMS[0], 1)
    seen += fingerprints(router, "quiet", SYSTEMS[0], 2, sync=True)
    fps = [fp for fp, _ in seen]
    assert fps[0] in ("spot-a", "spot-b") and fps == [fps[0]] * len(fps), fps
    assert {m for _, m in seen} == {f"openai/{MODEL}"}
    wait_for(lambda: sum(r.completed for r in routing.engine.ledger()) == len(seen))
    assert {r.model for r in routing.engine.ledger()} == {MODEL}
    assert not routing._open


def test_a_wildcard_group_routes_the_names_it_matches(backends, closing):
    """A name no group has goes to the wildcard group that matches it, as
    LiteLLM resolves it: the library picks among that group's replicas and
    LiteLLM calls the one picked with the requested model."""
    for rid in ("named", "wild-a", "wild-b"):
        backends.start(rid, *FAST)

    def wild(rid):
        d = deployment(backends, rid)
        d["model_name"] = "fake-*"
        d["litellm_params"]["model"] = "openai/fake-*"
        return d
    router = Router(model_list=[deployment(backends, "named"), wild("wild-a"), wild("wild-b")],
                    model_group_alias={"big": "fake-large"}, num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG)
    closing(routing)
    seen = fingerprints(router, "fake-large", SYSTEMS[1], 3)
    seen += fingerprints(router, "big", SYSTEMS[1], 1)          # alias, then wildcard
    seen += fingerprints(router, "fake-large", SYSTEMS[1], 2, sync=True)
    fps = [fp for fp, _ in seen]
    assert fps[0] in ("wild-a", "wild-b") and fps == [fps[0]] * len(fps), fps
    assert {m for _, m in seen} == {"openai/fake-large"}
    small = fingerprints(router, "fake-small", SYSTEMS[2], 2)
    assert {fp for fp, _ in small} <= {"wild-a", "wild-b"}
    assert {m for _, m in small} == {"openai/fake-small"}
    # The group's own name still has its own deployment.
    assert fingerprints(router, MODEL, SYSTEMS[1], 1) == [("named", f"openai/{MODEL}")]
    n = len(seen) + len(small) + 1
    wait_for(lambda: sum(r.completed for r in routing.engine.ledger()) == n)
    assert {r.model for r in routing.engine.ledger()} == {"fake-*", MODEL}
    assert not routing._open


def test_a_team_and_the_global_group_of_one_name_are_routed_apart(backends, closing):
    """A team's deployments under its public name for them, beside a global
    group of that name: LiteLLM resolves the team's requests to the team's
    deployments and the rest to the global group's, and the library picks
    among the same ones (the team's are the cheaper, spot, so a choice
    among all of them would take a team's for a global request)."""
    for rid in ("global", "team-a", "team-b"):
        backends.start(rid, *FAST)

    def team(rid):
        d = deployment(backends, rid)
        d["model_name"] = f"{MODEL}_team1_{rid}"            # LiteLLM's internal name
        d["model_info"].update(team_id="team1", team_public_model_name=MODEL)
        return d
    router = Router(model_list=[deployment(backends, "global", pool="on_demand", usd=4.5),
                                team("team-a"), team("team-b")],
                    num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG)
    closing(routing)
    everyone = {"class": "silver"}
    team1 = {"class": "silver", "user_api_key_team_id": "team1"}

    async def ask(meta, system, n):
        r = await router.acompletion(model=MODEL, messages=messages(system, f"q{n}"),
                                     metadata=dict(meta))
        return r.system_fingerprint

    async def scenario():
        out = []
        for n in range(8):
            out.append((await ask(everyone, SYSTEMS[n % 4], n),
                        await ask(team1, SYSTEMS[0], n)))
            await settle(routing, 2 * (n + 1))
        return out

    seen = run(scenario())
    assert [g for g, _ in seen] == ["global"] * 8
    teams = [t for _, t in seen]
    assert teams[0] in ("team-a", "team-b") and teams == [teams[0]] * 8, teams
    # Every request had its ticket, finished where it ran, under the name
    # its replicas are chosen by.
    rows = {(r.model, r.pool, r.tenant): r.completed for r in routing.engine.ledger()}
    assert rows == {(MODEL, Pool.ON_DEMAND, ""): 8,
                    (f"team:team1/{MODEL}", Pool.SPOT, "team1"): 8}, rows
    assert all(s.inflight == 0 for s in routing.engine.replicas())
    assert not routing._open


def hand_fed(rids, config=None, name=MODEL, **options):
    """A strategy over deployments no test calls, plugged in but not
    started: their load is reported by hand, and stays fresh."""
    deps = []
    for rid in rids:
        d = unreachable(rid)
        d["model_name"] = name
        deps.append(d)
    router = Router(model_list=deps, num_retries=0)
    cfg = {"router": {"load_max_age_ms": 600000, **(config or {})}}
    routing = SpotinferRouting(router, cfg, **options)
    router.register_plugin(routing)
    routing.add_callback()
    for rid in rids:
        routing.engine.report_load(rid, running=0)
    return router, routing


def cool_down(router, rid):
    """LiteLLM's cooldown of a deployment, as after its failures."""
    router.cooldown_cache.add_deployment_to_cooldown(
        rid, Exception("failing"), 500, 60)


@pytest.mark.parametrize("respect", [True, False])
def test_the_sync_route_leaves_out_what_litellm_leaves_out(closing, respect):
    """The sync route (router.completion) is offered what LiteLLM's own
    sync selection offers: no deployment an admin paused
    (model_info.blocked), and with respect_litellm_health none cooling
    down; the async route the same (a paused one never, whatever
    respect_litellm_health says). Every deployment left out: LiteLLM's
    429."""
    router, routing = hand_fed(["spot-a", "spot-b", "spot-c"],
                               respect_litellm_health=respect)
    closing(routing)
    router.model_list[0]["model_info"]["blocked"] = True
    cool_down(router, "spot-b")
    served = set()
    for i, system in enumerate(SYSTEMS * 2):
        meta = {"class": "silver"}
        sync = routing.get_available_deployment(
            MODEL, messages=messages(system, f"s{i}"), request_kwargs={"metadata": meta})
        served.add(sync["model_info"]["id"])
        served.add(offered_route(routing, system, f"a{i}")[0])
    assert "spot-a" not in served
    assert ("spot-b" in served) is not respect
    if respect:
        cool_down(router, "spot-c")
        with pytest.raises(Exception) as e:
            routing.get_available_deployment(MODEL, messages=messages("s", "u"),
                                              request_kwargs={"metadata": {}})
        assert getattr(e.value, "status_code", None) == 429, e.value


def excluding(monkeypatch):
    """The replica ids each route of the strategy excludes, a list a route."""
    seen = []
    real = spotinfer.Request.exclude_replicas

    def spy(self, ids):
        ids = list(ids)
        seen.append(ids)
        return real(self, ids)
    monkeypatch.setattr(spotinfer.Request, "exclude_replicas", spy)
    return seen


def offered_route(routing, system, user, cls="silver"):
    """A route as LiteLLM asks for one, its try then sent (a task that
    routes again ends its unsent tries): the deployment's id and the
    request's metadata (where its ticket rides)."""
    meta = {"class": cls}
    dep = run(routing.async_get_available_deployment(
        MODEL, messages=messages(system, user), request_kwargs={"metadata": meta}))
    routing._mark_sent({"model_info": dep["model_info"]})
    return dep["model_info"]["id"], meta


def test_the_library_decides_among_the_deployments_litellm_offers(closing, monkeypatch):
    """LiteLLM offers a subset of the group (the rest in cooldown) that holds
    neither the library's choice nor its fallback: the library decides
    again with the rest excluded, so the request goes to one of the
    offered with a ticket that the library counts; only when none of the
    offered is usable is it a 503, which says why for each. With every
    deployment offered, nothing is excluded."""
    router, routing = hand_fed(["spot-a", "spot-b", "spot-c", "spot-z"],
                               {"max_fallbacks": 1})
    closing(routing)
    excluded = excluding(monkeypatch)
    # The one left offered is the busiest: never the library's first pick.
    routing.engine.report_load("spot-z", running=60, waiting=20)
    rid, meta = offered_route(routing, SYSTEMS[0], "q")
    assert rid != "spot-z" and TICKET_KEY in meta
    assert excluded == []
    run(routing.async_log_success_event({"metadata": meta}, None, None, None))
    for rid in ("spot-a", "spot-b", "spot-c"):
        cool_down(router, rid)
    for n in range(4):
        rid, meta = offered_route(routing, SYSTEMS[0], f"q{n}")
        assert rid == "spot-z"
        assert meta[TICKET_KEY] in routing._open
        assert routing.engine.replica_status("spot-z").inflight == n + 1
    assert excluded == [["spot-a", "spot-b", "spot-c"]] * 4
    assert {s.id: s.inflight for s in routing.engine.replicas()} == \
        {"spot-a": 0, "spot-b": 0, "spot-c": 0, "spot-z": 4}
    for tid in list(routing._open):
        mine = {TICKET_KEY: tid, ROUTING_KEY: routing._token}
        run(routing.async_log_success_event({"metadata": mine}, None, None, None))
    assert all(s.inflight == 0 for s in routing.engine.replicas())
    assert not routing._open
    # None of the offered usable: a 503 that names the one offered and why.
    routing.engine.set_replica_state("spot-z", ReplicaState.DRAINING)
    with pytest.raises(litellm.ServiceUnavailableError) as ei:
        offered_route(routing, SYSTEMS[0], "q")
    assert ei.value.status_code == 503
    assert "spot-z: draining" in str(ei.value)
    assert "of the 1 deployments LiteLLM offers" in str(ei.value)
    assert all(s.inflight == 0 for s in routing.engine.replicas())


def warm(routing, rid, system):
    """A finished ticket of system's prompt on rid (the prefix index holds
    it there), routed on the engine with every other replica excluded."""
    body, kind = request_body(MODEL, messages(system, "warm"), None,
                              {"metadata": {"class": "silver"}})
    req = routing.engine.request()
    req.parse_openai(body, kind)
    req.exclude_replicas([r.id for r in routing.engine.replicas() if r.id != rid])
    d = req.route()
    assert d.replica_id == rid
    d.ticket.finish(TicketResult(status=TicketStatus.OK, prompt_tokens=700,
                                 output_tokens=12, duration_ms=100))
    req.close()


def test_among_the_offered_the_prefix_stays_where_it_is(closing):
    """The offered subset holds a replica warm with the request's prefix
    and a cold, idle one, while the library's choice over the whole group
    (another warm one) cools down: the warm one offered serves it, with a
    ticket, though it is the busier of the two."""
    router, routing = hand_fed(["spot-y", "spot-w", "spot-x", "spot-v"],
                               {"max_fallbacks": 0})
    closing(routing)
    warm(routing, "spot-w", SYSTEMS[1])
    warm(routing, "spot-x", SYSTEMS[1])
    routing.engine.report_load("spot-w", running=4)
    rid, meta = offered_route(routing, SYSTEMS[1], "q0")
    assert rid == "spot-x"          # the idle warm one, over the group
    run(routing.async_log_success_event({"metadata": meta}, None, None, None))
    for rid in ("spot-x", "spot-v"):
        cool_down(router, rid)
    # Twice: more would be more than its share of the pool's work, which
    # the library then sends to the cold one (load_share_cap).
    for n in range(2):
        rid, meta = offered_route(routing, SYSTEMS[1], f"q{n + 1}")
        assert rid == "spot-w"
        assert meta[TICKET_KEY] in routing._open
        assert routing.engine.replica_status("spot-w").inflight == 1
        run(routing.async_log_success_event({"metadata": meta}, None, None, None))
    assert not routing._open
    samples = metric_samples(routing.metrics())
    assert total(samples, "spotinfer_prefix_blocks_matched_total") > 0


def test_more_left_out_than_the_library_excludes(closing, monkeypatch):
    """More deployments cooling down than a request may exclude: the first
    MAX_EXCLUDED are excluded, and the request is still served by one of
    the offered (with the ticket when the library chose it, else as a
    fallback is, without)."""
    rids = [f"spot-{i:02d}" for i in range(spotinfer.MAX_EXCLUDED + 8)]
    router, routing = hand_fed(rids, {"max_fallbacks": 0})
    closing(routing)
    excluded = excluding(monkeypatch)
    offered = rids[-4:]
    for rid in rids[:-4]:
        cool_down(router, rid)
    for n in range(8):
        rid, meta = offered_route(routing, SYSTEMS[n % 4], f"q{n}")
        assert rid in offered
        tid = meta.get(TICKET_KEY)
        counts = {s.id: s.inflight for s in routing.engine.replicas()}
        assert counts[rid] == (1 if tid is not None else 0)
        if tid is not None:
            run(routing.async_log_success_event({"metadata": meta}, None, None, None))
    assert excluded == [rids[:spotinfer.MAX_EXCLUDED]] * 8
    assert all(s.inflight == 0 for s in routing.engine.replicas())
    assert not routing._open


def test_a_503_among_the_offered_leaves_the_earlier_try_to_the_sweep(closing):
    """A retry that LiteLLM offers only unusable deployments for is a 503;
    the earlier try's ticket, still open, leaves the metadata there, and
    the sweep after late_event_wait_s (no event of its own came) finishes
    it as CANCELLED, not as the replica's error, rather than after
    ticket_timeout_s."""
    router, routing = hand_fed(["spot-a", "spot-b", "spot-z"], {"max_fallbacks": 0},
                               late_event_wait_s=0)
    closing(routing)
    meta = {"class": "silver"}
    kw = dict(messages=messages(SYSTEMS[0], "q"), request_kwargs={"metadata": meta})
    run(routing.async_get_available_deployment(MODEL, **kw))
    assert TICKET_KEY in meta and len(routing._open) == 1
    for rid in ("spot-a", "spot-b"):
        cool_down(router, rid)
    routing.engine.set_replica_state("spot-z", ReplicaState.DRAINING)
    with pytest.raises(litellm.ServiceUnavailableError):
        run(routing.async_get_available_deployment(MODEL, **kw))
    assert TICKET_KEY not in meta
    routing._expire_tickets()           # the sweep (the tick thread's, once started)
    assert not routing._open
    assert all(s.inflight == 0 for s in routing.engine.replicas())
    assert all(s.consecutive_errors == 0 for s in routing.engine.replicas())


def sent(routing, dep):
    """The try a route returned, handed to its deployment as LiteLLM's
    call wrapper does (its pre-call deployment hook, with the deployment's
    model_info in the try's kwargs). Returns the deployment."""
    run(routing.async_pre_call_deployment_hook({"model_info": dep["model_info"]}, None))
    return dep


def traced_route(routing, meta, trace, user):
    """A route as the Router asks for one, the try then sent: the call's
    trace id in its kwargs, its metadata dict the one given. Returns the
    deployment."""
    return sent(routing, run(routing.async_get_available_deployment(
        MODEL, messages=messages(SYSTEMS[0], user),
        request_kwargs={"metadata": meta, "litellm_trace_id": trace})))


def test_calls_sharing_a_metadata_dict_keep_their_own_tickets(closing):
    """Two calls in flight at once with one metadata dict (each with its
    own trace id, as the Router gives them): placing the second does not
    end the first's ticket, and each call's callback finishes its own."""
    router, routing = hand_fed(["spot-a", "spot-b"])
    closing(routing)
    meta = {"class": "silver"}
    traced_route(routing, meta, "call-a", "qa")
    (a,) = routing._open
    traced_route(routing, meta, "call-b", "qb")
    assert len(routing._open) == 2
    (b,) = set(routing._open) - {a}
    assert sum(r.failed for r in routing.engine.ledger()) == 0
    run(routing.async_post_call_success_deployment_hook(
        {"litellm_trace_id": "call-a", "metadata": meta}, litellm.ModelResponse(), None))
    assert set(routing._open) == {b}
    # The logging event's form: the trace id and metadata in litellm_params.
    run(routing.async_log_success_event(
        {"litellm_params": {"litellm_trace_id": "call-b", "metadata": meta}},
        None, None, None))
    assert not routing._open
    rows = routing.engine.ledger()
    assert sum(r.completed for r in rows) == 2 and sum(r.failed for r in rows) == 0
    assert all(s.inflight == 0 for s in routing.engine.replicas())


def test_a_retry_takes_the_place_of_only_its_own_calls_earlier_try(closing):
    """A retry of one call (its trace id kept) takes the place of that
    call's earlier try, still open, not of the try of another call in
    flight with the same metadata dict; the earlier try then ends by its
    own failure event, as ERROR, or by the sweep after late_event_wait_s
    as CANCELLED. A route without a trace id keeps the ticket in
    TICKET_KEY, and its retry takes its place as well."""
    router, routing = hand_fed(["spot-a", "spot-b"], late_event_wait_s=60)
    closing(routing)
    meta = {"class": "silver"}
    dep_a1 = traced_route(routing, meta, "call-a", "qa")
    (a1,) = routing._open
    traced_route(routing, meta, "call-b", "qb")
    (b,) = set(routing._open) - {a1}
    traced_route(routing, meta, "call-a", "qa")     # call-a's retry
    assert meta[TICKETS_KEY]["call-b"] == b and meta[TICKETS_KEY]["call-a"] not in (a1, b)
    assert len(routing._open) == 3 and routing._open[a1].until
    assert sum(r.failed for r in routing.engine.ledger()) == 0
    # The earlier try's own failure event, late (its try's model_info).
    run(routing.async_log_failure_event(
        {"litellm_params": {"litellm_trace_id": "call-a", "metadata": meta,
                            "model_info": dep_a1["model_info"]},
         "exception": litellm.InternalServerError("boom", "openai", MODEL)},
        None, None, None))
    assert a1 not in routing._open and b in routing._open
    assert sum(r.failed for r in routing.engine.ledger()) == 1
    assert sum(s.consecutive_errors for s in routing.engine.replicas()) == 1
    for trace in ("call-a", "call-b"):
        run(routing.async_log_success_event(
            {"litellm_trace_id": trace, "metadata": meta}, None, None, None))
    assert not routing._open
    assert sum(r.completed for r in routing.engine.ledger()) == 2
    # No trace id: the dict's TICKET_KEY is the call's.
    routing.late_event_wait_s = 0
    plain = {"class": "silver"}
    kw = dict(messages=messages(SYSTEMS[1], "q"), request_kwargs={"metadata": plain})
    sent(routing, run(routing.async_get_available_deployment(MODEL, **kw)))
    first = plain[TICKET_KEY]
    sent(routing, run(routing.async_get_available_deployment(MODEL, **kw)))
    assert plain[TICKET_KEY] != first and routing._open[first].until
    routing._expire_tickets()           # as CANCELLED: no error of a replica's
    assert list(routing._open) == [plain[TICKET_KEY]]
    assert sum(r.failed for r in routing.engine.ledger()) == 2
    run(routing.async_log_success_event({"metadata": plain}, None, None, None))
    assert not routing._open
    # The metadata dict holds no finished call's ticket once another routes.
    traced_route(routing, meta, "call-c", "qc")
    assert list(meta["spotinfer_tickets"]) == ["call-c"]


def test_a_batch_over_two_groups_keeps_each_calls_ticket(backends, closing):
    """The Router's abatch_completion (the proxy's comma-separated model)
    sends one request's kwargs, its metadata dict included, to two groups
    at once: each call's ticket is finished by its own answer, none as
    ERROR."""
    slow = ("-token-rate", "2000", "-answer-tokens", "12", "-ttft", "300ms")
    deps = []
    for rid, group in (("spot-a", "group-one"), ("spot-b", "group-two")):
        backends.start(rid, *slow)
        d = deployment(backends, rid)
        d["model_name"] = group
        deps.append(d)
    router = Router(model_list=deps, num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG)
    closing(routing)
    meta = {"class": "silver"}
    out = run(router.abatch_completion(models=["group-one", "group-two"],
                                       messages=messages("s", "u"), metadata=meta))
    assert sorted(r.system_fingerprint for r in out) == ["spot-a", "spot-b"]
    wait_for(lambda: sum(r.completed for r in routing.engine.ledger()) == 2)
    assert sum(r.failed for r in routing.engine.ledger()) == 0
    assert all(s.inflight == 0 for s in routing.engine.replicas())
    assert not routing._open


@pytest.mark.parametrize("sync", [False, True])
def test_a_retry_the_library_refuses_leaves_the_earlier_try_to_the_sweep(closing, sync):
    """A retry of a call (its trace id) that the library itself answers 503
    (no replica left, every one offered) takes that call's earlier try,
    still open, out of the metadata, and the sweep after
    late_event_wait_s finishes it (no event of its own came); another
    call's ticket in the same metadata dict stays open."""
    router, routing = hand_fed(["spot-a", "spot-b"], late_event_wait_s=0)
    closing(routing)
    meta = {"class": "silver"}

    def ask(trace):
        kw = dict(messages=messages(SYSTEMS[0], "q"),
                  request_kwargs={"metadata": meta, "litellm_trace_id": trace})
        return sent(routing, routing.get_available_deployment(MODEL, **kw) if sync else
                    run(routing.async_get_available_deployment(MODEL, **kw)))
    ask("call-1")
    ask("call-2")
    assert len(routing._open) == 2
    for rid in ("spot-a", "spot-b"):
        routing.engine.set_replica_state(rid, ReplicaState.DRAINING)
    with pytest.raises(litellm.ServiceUnavailableError):
        ask("call-1")
    assert list(meta[TICKETS_KEY]) == ["call-2"]
    routing._expire_tickets()
    assert len(routing._open) == 1
    assert sum(s.inflight for s in routing.engine.replicas()) == 1


@pytest.fixture
def cut_stream():
    """A backend whose first stream is cut: it answers the headers and
    closes the connection, so the stream fails before its first chunk
    (LiteLLM logs that from a task, async, or a thread, sync, of its own,
    and retries). Later streams wait 0.6 s, then answer. Yields its URL
    and the number of requests it got."""
    import socket
    got = []
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
             "system_fingerprint": "spot-cut"}
    body = "".join(f"data: {json.dumps({**chunk, 'choices': [c]})}\n\n" for c in (
        {"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None},
        {"index": 0, "delta": {}, "finish_reason": "stop"})) + "data: [DONE]\n\n"

    class Cut(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append(1)
            if len(got) > 1:            # the whole stream, then the close
                time.sleep(0.6)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(body.encode())
                return
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Cut)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", got
    srv.shutdown()
    srv.server_close()


class HeldFailure(litellm.integrations.custom_logger.CustomLogger):
    """A callback ahead of the strategy's whose failure event returns only
    once until() holds (another logger's slow write, say): the strategy's
    failure event of that try runs after it."""

    def __init__(self, until):
        super().__init__()
        self.until = until

    def log_failure_event(self, kwargs, response_obj, start_time, end_time):
        deadline = time.monotonic() + 10
        while not self.until() and time.monotonic() < deadline:
            time.sleep(0.01)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        deadline = time.monotonic() + 10
        while not self.until() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


class AfterFailure(litellm.integrations.custom_logger.CustomLogger):
    """A callback behind the strategy's: what the engine counts on each
    replica once the strategy's failure event has run."""

    def __init__(self, routing):
        super().__init__()
        self.routing, self.seen = routing, []

    def log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self.seen.append({s.id: s.inflight for s in self.routing.engine.replicas()})

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self.log_failure_event(kwargs, response_obj, start_time, end_time)


@pytest.mark.parametrize("sync", [False, True])
def test_a_late_failure_event_ends_only_its_own_try(cut_stream, closing, sync):
    """The first try of a stream is cut before its first chunk, and LiteLLM
    retries on the same deployment; LiteLLM's failure event of the first
    try comes only once the retry was sent (a callback ahead of the
    strategy's holds it). It finishes the first try's ticket, as ERROR,
    and leaves the retry's, still served, open and counted until the
    retry's own success finishes it."""
    url, got = cut_stream
    cut = {"model_name": MODEL,
           "litellm_params": {"model": f"openai/{MODEL}", "api_base": url, "api_key": "unused"},
           "model_info": {"id": "spot-cut", "spotinfer": {"pool": "spot", "usd_per_hour": 1.0,
                                                          "metrics_url": False}}}
    router = Router(model_list=[cut], num_retries=1, retry_after=0)
    held = HeldFailure(lambda: len(got) > 1)
    litellm.logging_callback_manager.add_litellm_callback(held)
    after = None
    try:
        routing = SpotinferRouting.install(router, {"router": {"load_max_age_ms": 60000}})
        closing(routing)
        after = AfterFailure(routing)
        litellm.logging_callback_manager.add_litellm_callback(after)
        kw = dict(model=MODEL, messages=messages("s", "u"), stream=True,
                  metadata={"class": "silver"})
        if sync:
            chunks = list(router.completion(**kw))
        else:
            async def consume():
                return [c async for c in await router.acompletion(**kw)]
            chunks = run(consume())
        assert chunks and chunks[0].system_fingerprint == "spot-cut"
        assert len(got) == 2
        # When the first try's failure event had run: its ticket finished
        # as ERROR, the retry's still counted.
        assert after.seen == [{"spot-cut": 1}]
        wait_for(lambda: sum(r.completed for r in routing.engine.ledger()) == 1)
        assert sum(r.failed for r in routing.engine.ledger()) == 1
        assert routing.engine.replica_status("spot-cut").inflight == 0
        assert not routing._open
    finally:
        for cb in (held, after):
            if cb is not None:
                litellm.logging_callback_manager.remove_callback_from_all_lists(
                    cb, require_self=False)


def test_calls_sharing_a_trace_id_and_a_dict_never_fail_each_other(backends, closing):
    """Two calls in flight at once with one trace id (the caller's) and one
    metadata dict: no route can tell the second from a retry of the first,
    so the second's route does not finish the first's ticket; each call's
    own events finish its own, OK, and neither counts as a failure."""
    for rid in ("spot-a", "spot-b"):
        backends.start(rid, "-token-rate", "2000", "-answer-tokens", "12", "-ttft", "800ms")
    router = Router(model_list=[deployment(backends, r) for r in ("spot-a", "spot-b")],
                    num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG)
    closing(routing)
    meta = {"class": "silver"}

    async def both():
        async def one(user, stream):
            kw = dict(model=MODEL, messages=messages(SYSTEMS[0], user), metadata=meta,
                      litellm_trace_id="one-trace")
            if not stream:
                return (await router.acompletion(**kw)).system_fingerprint
            return [c async for c in await router.acompletion(stream=True, **kw)][0] \
                .system_fingerprint
        first = asyncio.ensure_future(one("q1", False))
        await asyncio.sleep(0.1)        # the first is being served
        second = asyncio.ensure_future(one("q2", True))
        await asyncio.sleep(0.1)
        counted = sum(s.inflight for s in routing.engine.replicas())
        return counted, await first, await second
    counted, *fps = run(both())
    assert counted == 2
    assert all(fp in ("spot-a", "spot-b") for fp in fps)
    wait_for(lambda: sum(r.completed for r in routing.engine.ledger()) == 2)
    assert sum(r.failed for r in routing.engine.ledger()) == 0
    assert all(s.inflight == 0 for s in routing.engine.replicas())
    assert not routing._open


def test_an_event_of_a_try_finishes_that_trys_ticket(closing):
    """Each route returns the deployment with its try's ticket in a copy of
    its model_info (the router's own stays as it was), as LiteLLM copies
    it into the try's kwargs and its events' litellm_params: an event
    finishes the ticket of its own try, whatever the metadata holds by
    then, and an event of a try without a ticket finishes none."""
    router, routing = hand_fed(["spot-a", "spot-b"])
    closing(routing)
    meta = {"class": "silver"}
    kw = dict(messages=messages(SYSTEMS[0], "q"),
              request_kwargs={"metadata": meta, "litellm_trace_id": "call"})
    dep1 = routing.get_available_deployment(MODEL, **kw)
    t1 = dep1["model_info"][TICKET_KEY]
    assert t1 in routing._open
    assert all(TICKET_KEY not in d["model_info"] for d in router.get_model_list())
    dep2 = run(routing.async_get_available_deployment(MODEL, **kw))     # the retry
    t2 = dep2["model_info"][TICKET_KEY]
    assert meta[TICKETS_KEY] == {"call": t2}
    err = litellm.InternalServerError("boom", "openai", MODEL)
    # Try 1's late failure event (the sync one), then a repeat of it from
    # the async logging: try 2 stays open and counted.
    routing.log_failure_event({"litellm_params": {"litellm_trace_id": "call", "metadata": meta,
                                                  "model_info": dep1["model_info"]},
                               "exception": err}, None, None, None)
    run(routing.async_log_failure_event(
        {"litellm_params": {"litellm_trace_id": "call", "metadata": meta,
                            "model_info": dep1["model_info"]}, "exception": err},
        None, None, None))
    assert list(routing._open) == [t2]
    assert routing.engine.replica_status(dep2["model_info"]["id"]).inflight == 1
    assert sum(r.failed for r in routing.engine.ledger()) == 1
    # A try served without a ticket (0): its events finish nothing.
    routing.log_failure_event({"litellm_params": {"litellm_trace_id": "call", "metadata": meta,
                                                  "model_info": {"id": "spot-a", TICKET_KEY: 0,
                                                                 ROUTING_KEY: routing._token}},
                               "exception": err}, None, None, None)
    assert list(routing._open) == [t2]
    # Try 2's own hook (its request_data has the model_info at the top).
    run(routing.async_post_call_success_deployment_hook(
        {"litellm_trace_id": "call", "metadata": meta, "model_info": dep2["model_info"]},
        litellm.ModelResponse(), None))
    assert not routing._open
    rows = routing.engine.ledger()
    assert sum(r.completed for r in rows) == 1 and sum(r.failed for r in rows) == 1
    assert all(s.inflight == 0 for s in routing.engine.replicas())


def retried(routing, trace, user="q"):
    """A call's first try and its retry, routed as the Router asks (one
    trace id, one metadata dict); no event of the first comes (a failed
    pre-call check). Returns the first try's ticket id."""
    meta = {"class": "silver"}
    first = traced_route(routing, meta, trace, user)["model_info"][TICKET_KEY]
    traced_route(routing, meta, trace, user)
    return first


def test_a_strategy_not_started_sweeps_on_its_routes_and_events(closing):
    """A strategy that is not started (its load reported another way) has
    no tick thread: its routes and events sweep once a ticket is due, so a
    try a retry took the place of is finished as CANCELLED after
    late_event_wait_s, and a ticket no event finished after
    ticket_timeout_s, rather than holding its replica's count until
    close()."""
    router, routing = hand_fed(["spot-a", "spot-b"], late_event_wait_s=0.1)
    closing(routing)
    first = retried(routing, "call")
    assert first in routing._open
    time.sleep(0.3)
    dep = traced_route(routing, {}, "other", "x")       # another call's route sweeps
    assert first not in routing._open and len(routing._open) == 2
    run(routing.async_post_call_success_deployment_hook(
        {"model_info": dep["model_info"]}, litellm.ModelResponse(), None))
    assert sum(s.inflight for s in routing.engine.replicas()) == 1
    assert all(s.consecutive_errors == 0 for s in routing.engine.replicas())   # CANCELLED
    # ticket_timeout_s: an event that finishes nothing of its own (a call
    # this strategy did not route) sweeps too.
    router, routing = hand_fed(["spot-a"], ticket_timeout_s=0.2)
    closing(routing)
    traced_route(routing, {}, "lost", "q")
    traced_route(routing, {}, "also lost", "q")
    time.sleep(0.3)
    run(routing.async_log_success_event({}, None, None, None))
    assert not routing._open
    assert routing.engine.replica_status("spot-a").inflight == 0
    rows = routing.engine.ledger()
    assert sum(r.completed for r in rows) == 0 and sum(r.failed for r in rows) == 2


def test_tries_never_sent_end_after_late_event_wait_s(closing):
    """Of the tickets a strategy not started routed off an event loop (the
    sync API), those LiteLLM never sent (no pre-call hook or
    log_pre_api_call within late_event_wait_s of the route) are finished
    as CANCELLED by the next sweep; a sent one stays open for its events,
    and the queue of unsent tickets keeps none that is done."""
    router, routing = hand_fed(["spot-a"], late_event_wait_s=0.2)
    closing(routing)
    deps = [routing.get_available_deployment(
        MODEL, messages=messages("s", "u"), request_kwargs={"metadata": {"class": "silver"}})
        for _ in range(3)]
    sent(routing, deps[1])
    kept = deps[1]["model_info"][TICKET_KEY]
    time.sleep(0.3)
    routing._sweep_if_due()
    assert list(routing._open) == [kept] and not routing._unsent
    assert routing.engine.replica_status("spot-a").consecutive_errors == 0     # CANCELLED
    run(routing.async_post_call_success_deployment_hook(
        {"model_info": deps[1]["model_info"]}, litellm.ModelResponse(), None))
    rows = routing.engine.ledger()
    assert (sum(r.completed for r in rows), sum(r.failed for r in rows)) == (1, 2)
    # Lowered at run time, late_event_wait_s applies to the tickets open.
    routing.late_event_wait_s = 60
    routing.get_available_deployment(
        MODEL, messages=messages("s", "u"), request_kwargs={"metadata": {"class": "silver"}})
    routing._sweep_if_due()
    assert len(routing._open) == 1
    routing.late_event_wait_s = 0.1
    time.sleep(0.2)
    routing._sweep_if_due()
    assert not routing._open


def test_an_async_try_never_sent_ends_with_its_task_not_on_a_timer(closing):
    """An async route's ticket that LiteLLM never sends is not swept after
    late_event_wait_s (another callback's deployment hook may hold the
    try up for longer): it ends as CANCELLED once the task that routed it
    is done, or at once when a retry of its call routes in that task."""
    router, routing = hand_fed(["spot-a"], late_event_wait_s=0.1)
    closing(routing)
    kw = {"metadata": {"class": "silver"}, "litellm_trace_id": "call-1"}

    async def route():
        return await routing.async_get_available_deployment(
            MODEL, messages=messages("s", "u"), request_kwargs=kw)

    async def held():
        dep = await route()
        await asyncio.sleep(0.3)        # held up past late_event_wait_s
        routing._sweep_if_due()
        tid = dep["model_info"][TICKET_KEY]
        assert list(routing._open) == [tid]
        again = await route()           # the call's retry, in this task
        assert list(routing._open) == [again["model_info"][TICKET_KEY]]
        return again
    run(LOOP.create_task(held()))
    run(asyncio.sleep(0.05))            # the task's done-callback
    assert not routing._open
    rows = routing.engine.ledger()
    assert (sum(r.completed for r in rows), sum(r.failed for r in rows)) == (0, 2)
    assert routing.engine.replica_status("spot-a").consecutive_errors == 0     # CANCELLED


def test_an_event_after_its_ticket_was_due_still_finishes_it(closing):
    """A strategy not started sweeps after an event has finished its own
    ticket: an event that comes once its ticket was due (past
    ticket_timeout_s) still finishes it with what it says (OK), not as
    CANCELLED by the sweep it brought about."""
    router, routing = hand_fed(["spot-a"], ticket_timeout_s=0.2)
    closing(routing)
    dep = traced_route(routing, {}, "slow", "q")
    time.sleep(0.3)
    run(routing.async_post_call_success_deployment_hook(
        {"model_info": dep["model_info"]}, litellm.ModelResponse(), None))
    assert not routing._open
    assert sum(r.completed for r in routing.engine.ledger()) == 1


def test_ticket_timeout_s_changed_at_run_time_applies_to_open_tickets(closing):
    """Lowering ticket_timeout_s on a running strategy judges the tickets
    already open by the new value, as the tick thread's next sweep did
    before the sweeps were skipped while nothing is due."""
    router, routing = hand_fed(["spot-a"])          # ticket_timeout_s 600
    closing(routing)
    traced_route(routing, {"class": "silver"}, "t1", "q")
    routing._expire_tickets()                       # nothing due: _due is set
    routing.ticket_timeout_s = 0.1
    time.sleep(0.3)
    routing._expire_tickets()                       # what the tick thread does
    assert not routing._open
    assert routing.engine.replica_status("spot-a").inflight == 0


def test_ticket_timeout_s_set_during_a_sweep_is_not_lost(closing, monkeypatch):
    """ticket_timeout_s lowered while a sweep is computing the next due time
    from the old value: the sweep's due time does not overwrite the reset,
    so the next sweep judges the open tickets by the new value."""
    router, routing = hand_fed(["spot-a"])          # ticket_timeout_s 600
    closing(routing)
    traced_route(routing, {"class": "silver"}, "t1", "q")
    real = routing._due_of
    setter = threading.Thread(target=setattr, args=(routing, "ticket_timeout_s", 0.1))

    def due_of(o):
        due = real(o)                               # by the old value
        if setter.ident is None:
            setter.start()                          # set from another thread, mid-sweep
            setter.join(0.3)
        return due
    monkeypatch.setattr(routing, "_due_of", due_of)
    routing._due = float("-inf")
    routing._expire_tickets()
    setter.join(5)
    time.sleep(0.2)
    routing._expire_tickets()
    assert not routing._open
    assert routing.engine.replica_status("spot-a").inflight == 0


def test_the_tick_thread_honours_late_event_wait_s(closing):
    """A started strategy: the try a retry took the place of stays open,
    for its own event, until late_event_wait_s has passed, then the tick
    thread finishes it as CANCELLED."""
    router, routing = hand_fed(["spot-a", "spot-b"], late_event_wait_s=0.6)
    closing(routing)
    routing.start()
    before = time.monotonic()                       # before the retry left it
    first = retried(routing, "call")
    time.sleep(0.3)
    assert first in routing._open
    wait_for(lambda: first not in routing._open, timeout=3.0)
    assert time.monotonic() - before >= 0.6
    assert len(routing._open) == 1
    assert sum(s.inflight for s in routing.engine.replicas()) == 1
    assert all(s.consecutive_errors == 0 for s in routing.engine.replicas())   # CANCELLED


def test_two_routers_do_not_finish_each_others_tickets(closing):
    """Two Routers, each with its strategy, both in litellm.callbacks (every
    event reaches both) and each engine numbering its tickets from the same
    first id: an event of a try one strategy routed finishes nothing of the
    other's, by the try's mark or by its metadata."""
    router_a, a = hand_fed(["spot-a"])
    router_b, b = hand_fed(["spot-b"])
    closing(a)
    closing(b)
    meta_a, meta_b = {"class": "silver"}, {"class": "silver"}
    dep_a = traced_route(a, meta_a, "ta", "q")
    dep_b = traced_route(b, meta_b, "tb", "q")
    assert dep_a["model_info"][TICKET_KEY] == dep_b["model_info"][TICKET_KEY]
    assert dep_a["model_info"][ROUTING_KEY] != dep_b["model_info"][ROUTING_KEY]
    # A try without a mark (a caller's own event): by the metadata.
    for cb in (a, b):
        run(cb.async_log_failure_event(
            {"litellm_params": {"litellm_trace_id": "tb", "metadata": meta_b},
             "exception": litellm.InternalServerError("boom", "openai", MODEL)},
            None, None, None))
    assert a._open and not b._open
    dep_b = traced_route(b, meta_b, "tb2", "q")
    for cb in (a, b):
        run(cb.async_log_success_event(
            {"litellm_params": {"litellm_trace_id": "tb2", "metadata": meta_b,
                                "model_info": dep_b["model_info"]}},
            litellm.ModelResponse(), None, None))
    assert not b._open
    assert list(a._open) == [dep_a["model_info"][TICKET_KEY]]
    assert a.engine.replica_status("spot-a").inflight == 1
    assert sum(r.completed + r.failed for r in a.engine.ledger()) == 0


def test_a_silent_experiment_is_a_call_of_its_own(backends, closing):
    """A deployment with litellm_params.silent_model: LiteLLM mirrors each
    call to that group with a copy of the call's kwargs (its trace id, and
    its metadata with the call's tickets), marked is_silent_experiment.
    The mirror gets its own ticket and does not take the place of the
    primary's try, which its own success finishes OK, however long it is
    served past late_event_wait_s."""
    backends.start("spot-a", "-token-rate", "2000", "-answer-tokens", "12", "-ttft", "1000ms")
    backends.start("spot-b", "-token-rate", "2000", "-answer-tokens", "12", "-ttft", "20ms")
    a = deployment(backends, "spot-a")
    a["litellm_params"]["silent_model"] = "shadow"
    b = deployment(backends, "spot-b")
    b["model_name"] = "shadow"
    router = Router(model_list=[a, b], num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG, late_event_wait_s=0.3)
    closing(routing)
    cancelled = []
    real = routing._finish

    def finish(tid, res):
        if res.status == TicketStatus.CANCELLED:
            cancelled.append(tid)
        real(tid, res)
    routing._finish = finish
    for stream in (False, True):
        kw = dict(model=MODEL, messages=messages(SYSTEMS[0], f"q{stream}"),
                  metadata={"class": "silver"})
        if stream:
            async def consume():
                return [c async for c in await router.acompletion(stream=True, **kw)]
            fp = run(consume())[0].system_fingerprint
        else:
            fp = run(router.acompletion(**kw)).system_fingerprint
        assert fp == "spot-a"
    # The mirror is a task on the caller's loop (and so are its callbacks):
    # waited for with the loop running, or a mirror not done when the last
    # call returned stands still, its ticket open.
    run(settle(routing, 4))
    assert not cancelled
    rows = {r.model: (r.completed, r.failed) for r in routing.engine.ledger()}
    assert rows == {MODEL: (2, 0), "shadow": (2, 0)}, rows
    assert all(s.inflight == 0 for s in routing.engine.replicas())
    assert not routing._open
    # The mark is the mirror's copy's only: a LiteLLM that set it on the
    # call's own dict would make the call look like its mirror.
    assert "is_silent_experiment" not in kw["metadata"]


def test_a_model_name_with_a_comma_is_routed(closing):
    """A group named with a comma is served by its deployments (the
    library's models list of a replica is comma-separated)."""
    router, routing = hand_fed(["spot-a", "spot-b"], name="fake,model")
    closing(routing)
    for sync in (False, True):
        kw = dict(messages=messages("s", "u"), request_kwargs={"metadata": {}})
        dep = routing.get_available_deployment("fake,model", **kw) if sync else \
            run(routing.async_get_available_deployment("fake,model", **kw))
        assert dep["model_info"]["id"] in ("spot-a", "spot-b")


def test_deployments_without_an_id_are_replicas(backends, closing):
    """Deployments without model_info.id: LiteLLM gives each a hash of its
    parameters, 64 hex digits, one byte over the library's replica ids.
    The strategy installs, gives the library a short form of each id, finds
    the deployments LiteLLM offers among those replicas (all of them, or
    some with the rest excluded) and finishes each ticket from the call's
    events."""
    deps = []
    for rid in ("spot-a", "spot-b"):
        backends.start(rid, *FAST)
        d = deployment(backends, rid)
        del d["model_info"]["id"]
        deps.append(d)
    router = Router(model_list=deps, num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG)
    closing(routing)
    ids = [d["model_info"]["id"] for d in router.get_model_list()]
    assert all(len(i) == 64 for i in ids)
    assert sorted(s.id for s in routing.engine.replicas()) == \
        sorted(replica_id(i) for i in ids)
    r = run(router.acompletion(model=MODEL, messages=messages("s", "u"),
                               metadata={"class": "silver"}))
    assert r.system_fingerprint in ("spot-a", "spot-b")
    wait_for(lambda: sum(x.completed for x in routing.engine.ledger()) == 1)
    cool_down(router, ids[0])                       # offered: the other one
    dep = run(routing.async_get_available_deployment(
        MODEL, messages=messages("s", "v"), request_kwargs={"metadata": {}}))
    assert dep["model_info"]["id"] == ids[1] and dep["model_info"][TICKET_KEY]
    assert routing.engine.replica_status(replica_id(ids[1])).inflight == 1


@pytest.fixture
def held_metrics():
    """A /metrics page that answers its first read at once and holds every
    later one until released (a backend slow to answer its scrape)."""
    held, release, served = threading.Event(), threading.Event(), []

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            served.append(1)
            if len(served) > 1:
                held.set()
                release.wait(15)
            body = b"vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/metrics", held, release
    release.set()
    srv.shutdown()
    srv.server_close()


def test_close_waits_for_no_scrape(backends, held_metrics):
    """close() returns within its bound while a load thread is in the middle
    of a scrape: the open ticket is finished meanwhile, and the engine is
    closed only once that thread is done with it."""
    url, held, release = held_metrics
    backends.start("spot-a", *FAST)
    router = Router(model_list=[deployment(backends, "spot-a", metrics_url=url)],
                    num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG, scrape_interval_s=0.05,
                                       scrape_timeout_s=20)
    try:
        assert held.wait(10), "no second scrape"
        # A ticket open at close, as a request LiteLLM has not answered.
        run(router.select(MODEL, {"metadata": {"class": "silver"}},
                          messages=messages("s", "u")))
        assert len(routing._open) == 1
        began = time.monotonic()
        routing.close()
        assert time.monotonic() - began < 1.0           # close_wait_s is 0.1
        assert routing not in litellm.callbacks
        loader = [t for t in threading.enumerate() if t.name == "spotinfer-load-spot-a"]
        assert loader and loader[0].is_alive()          # still in its scrape
        assert not routing.wait_closed(0) and not routing.engine.closed
        wait_for(lambda: routing.engine.replicas()[0].inflight == 0)
        assert not routing._open
    finally:
        release.set()
    assert routing.wait_closed(25)
    assert routing.engine.closed
    assert not loader[0].is_alive()
    routing.close()                                     # again: nothing to do


def test_no_load_report_after_close_is_done(backends, held_metrics):
    """A scrape that outlasts close_timeout_s on the caller's engine: the
    close is done (wait_closed() True) while the load thread still waits
    for its page, and that page is not reported once it comes (the caller
    may have closed its engine by then)."""
    url, held, release = held_metrics
    backends.start("spot-a", *FAST)
    router = Router(model_list=[deployment(backends, "spot-a", metrics_url=url)],
                    num_retries=0)
    engine = spotinfer.Engine(CONFIG)
    reports = []
    real = engine.report_metrics
    engine.report_metrics = lambda *a, **k: (reports.append(time.monotonic()),
                                             real(*a, **k))[1]
    routing = SpotinferRouting.install(router, engine=engine, scrape_interval_s=0.05,
                                       scrape_timeout_s=20, close_timeout_s=0.3)
    try:
        assert held.wait(10), "no second scrape"
        routing.close()
        assert routing.wait_closed(5)
        done = time.monotonic()
        release.set()
        loader = [t for t in threading.enumerate() if t.name == "spotinfer-load-spot-a"]
        for t in loader:
            t.join(10)
        assert not any(t.is_alive() for t in loader)
        assert not [r for r in reports if r > done]
    finally:
        release.set()
        engine.close()


class Held:
    """A classifier that holds the route inside the library until let go:
    a module taking its time."""

    def __init__(self):
        self.inside, self.go = threading.Event(), threading.Event()

    def configure(self, config):
        return {}

    def classify(self, instance, req, pressure):
        self.inside.set()
        self.go.wait(20)
        return spotinfer.Class.SILVER


def unreachable(rid):
    """A deployment no test calls (the strategy only routes to it)."""
    return {"model_name": MODEL,
            "litellm_params": {"model": f"openai/{MODEL}", "api_key": "unused",
                               "api_base": f"http://127.0.0.1:9/{rid}/v1"},
            "model_info": {"id": rid, "spotinfer": {"pool": "spot", "usd_per_hour": 1.8,
                                                    "metrics_url": False}}}


HELD_ROUTE = """
import sys, threading
import litellm
from litellm import Router
import spotinfer
from spotinfer.litellm import SpotinferRouting
sys.path.insert(0, sys.argv[1])
from test_router import Held, MODEL, unreachable

held = Held()
router = Router(model_list=[unreachable("spot-a")], num_retries=0)
routing = SpotinferRouting(router, None)         # its own engine
routing.engine.register_classifier("held", held)
routing.engine.configure({"modules": {"classifier": "held"},
                          "router": {"load_max_age_ms": 600000}})
routing.engine.report_load("spot-a", running=0.0)
out = []

def route():
    try:
        out.append(routing.get_available_deployment(
            MODEL, messages=[{"role": "user", "content": "hi"}]))
    except Exception as e:
        out.append(e)
t = threading.Thread(target=route, daemon=True)
t.start()
assert held.inside.wait(20)
routing.close()
assert not routing.wait_closed(0.3), "the engine closed under a route"
assert not routing.engine.closed
held.go.set()
t.join(20)
assert routing.wait_closed(20) and routing.engine.closed
assert isinstance(out[0], litellm.ServiceUnavailableError), out
print("ok")
"""


def test_close_waits_for_a_route_inside_the_library(tmp_path):
    """A route in a slow module when close() comes: the strategy's own
    engine is closed only once the route is out of the library (it was
    freed under it: a crash), and the route fails as a 503. In a process
    of its own, for the crash."""
    script = tmp_path / "held_route.py"
    script.write_text(HELD_ROUTE)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bindings" / "python"),
               LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONWARNINGS="ignore")
    run = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", \
        (run.returncode, run.stdout, run.stderr[-3000:])


STUCK_ROUTE = """
import logging, sys, threading, time
import litellm
from litellm import Router
import spotinfer
from spotinfer.litellm import SpotinferRouting
sys.path.insert(0, sys.argv[1])
from test_router import Held, MODEL, unreachable

logged = []
handler = logging.Handler()
handler.emit = lambda rec: logged.append(rec.getMessage())
logging.getLogger("spotinfer.litellm").addHandler(handler)
logging.getLogger("spotinfer.litellm").setLevel(logging.INFO)


class Stuck(Held):
    def classify(self, instance, req, pressure):
        self.inside.set()
        self.go.wait(90)
        return spotinfer.Class.SILVER
held = Stuck()
router = Router(model_list=[unreachable("spot-a")], num_retries=0)
routing = SpotinferRouting(router, None, close_timeout_s=0.5)
routing.engine.register_classifier("held", held)
routing.engine.configure({"modules": {"classifier": "held"},
                          "router": {"load_max_age_ms": 600000}})
routing.engine.report_load("spot-a", running=0.0)
out = []

def route():
    try:
        out.append(routing.get_available_deployment(
            MODEL, messages=[{"role": "user", "content": "hi"}]))
    except Exception as e:
        out.append(e)
t = threading.Thread(target=route, name="stuck-route", daemon=True)
t.start()
assert held.inside.wait(20)
began = time.monotonic()
routing.close()
assert not routing.wait_closed(), "closed under a call"
assert time.monotonic() - began < 5, time.monotonic() - began
assert not routing.engine.closed
assert any("still inside the library" in m and "stuck-route" in m for m in logged), logged
if sys.argv[2] == "exit":            # held for 90 s: the process ends first
    print("ok")
    sys.exit(0)
held.go.set()
t.join(20)
assert routing.wait_closed(20) and routing.engine.closed
assert isinstance(out[0], litellm.ServiceUnavailableError), out
print("ok")
"""


@pytest.mark.parametrize("then", ["returns", "exit"])
def test_close_waits_for_a_stuck_call_at_most_close_timeout_s(tmp_path, then):
    """A route in a module that does not return when close() comes: the
    closing thread gives up after close_timeout_s and logs the call's
    thread, wait_closed() says the close is not done, and the engine is
    left open under the call; the call's return closes it, and a process
    that ends before is not held up by the close. In a process of its
    own, for the crash and the exit."""
    script = tmp_path / "stuck_route.py"
    script.write_text(STUCK_ROUTE)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bindings" / "python"),
               LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONWARNINGS="ignore")
    began = time.monotonic()
    run = subprocess.run([sys.executable, str(script), str(Path(__file__).parent), then],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", \
        (run.returncode, run.stdout, run.stderr[-3000:])
    if then == "exit":
        assert time.monotonic() - began < 45     # not the module's 90 s


def test_a_ticket_routed_while_closing_is_finished(closing):
    """A route that comes out of the library after close() took the open
    tickets: its ticket is finished (CANCELLED) and the request fails as a
    503, so an engine the caller made keeps no ticket open."""
    held = Held()
    eng = spotinfer.Engine()
    eng.register_classifier("held", held)
    eng.configure({"modules": {"classifier": "held"}, "router": {"load_max_age_ms": 600000}})
    router = Router(model_list=[unreachable("spot-a")], num_retries=0)
    routing = SpotinferRouting(router, engine=eng)
    closing(routing)
    eng.report_load("spot-a", running=0.0)
    out = []

    def route():
        try:
            out.append(routing.get_available_deployment(
                MODEL, messages=messages("s", "u"), request_kwargs={"metadata": {}}))
        except Exception as e:  # noqa: BLE001
            out.append(e)
    t = threading.Thread(target=route)
    t.start()
    try:
        assert held.inside.wait(20)
        routing.close()
    finally:
        held.go.set()
    t.join(20)
    assert isinstance(out[0], litellm.ServiceUnavailableError), out
    assert routing.wait_closed(20)
    assert not eng.closed
    assert eng.replicas()[0].inflight == 0
    assert not routing._open
    eng.close()


def test_after_close_the_router_routes_by_itself(backends):
    """After close() the Router has its own strategy back (a request is
    served, with no ticket), while a later strategy on that Router keeps
    its place; a call into the closed strategy is a 503."""
    for rid in ("spot-a", "spot-b"):
        backends.start(rid, *FAST)
    router = Router(model_list=[deployment(backends, r) for r in ("spot-a", "spot-b")],
                    num_retries=0)
    first = SpotinferRouting.install(router, CONFIG)
    second = SpotinferRouting.install(router, CONFIG)
    first.close()
    assert first.wait_closed(20)
    r = run(router.acompletion(model=MODEL, messages=messages("s", "u"),
                               metadata={"class": "silver"}))
    wait_for(lambda: sum(x.completed for x in second.engine.ledger()) == 1)
    second.close()
    assert second.wait_closed(20)
    r = run(router.acompletion(model=MODEL, messages=messages("s", "u"),
                               metadata={"class": "silver"}))
    assert r.system_fingerprint in ("spot-a", "spot-b")
    assert r.choices[0].message.content
    for routing in (first, second):
        with pytest.raises(litellm.ServiceUnavailableError) as ei:
            routing.get_available_deployment(MODEL, messages=messages("s", "u"))
        assert ei.value.status_code == 503
        with pytest.raises(litellm.ServiceUnavailableError):
            run(routing.async_get_available_deployment(MODEL, messages=messages("s", "u")))
        with pytest.raises(spotinfer.MisuseError):
            routing.metrics()


def test_close_during_a_sync_that_starts_a_load_thread(closing):
    """close() while sync_deployments starts the load thread of a replica
    added since start(): the closer joins only threads that have started
    (joining one that had not killed it, and the engine stayed open)."""
    router = Router(model_list=[unreachable("spot-a")], num_retries=0)
    routing = SpotinferRouting.install(router, None, ready_wait_s=0)
    closing(routing)
    router.add_deployment(Deployment(**unreachable("spot-b")))
    spawn, closers = routing._spawn, []

    def spawn_then_close(rid):
        out = spawn(rid)
        c = threading.Thread(target=routing.close)
        c.start()
        c.join(0.5)                 # close() now, while the thread is new
        closers.append(c)
        return out
    routing._spawn = spawn_then_close
    routing.sync_deployments()
    assert closers
    for c in closers:
        c.join(20)
    assert routing.wait_closed(20)
    assert routing.engine.closed
    assert not [t for t in threading.enumerate() if t.name.startswith("spotinfer-load-")]


@pytest.mark.parametrize("reader", ["break", "aclose", "task-returns"])
def test_a_stream_its_reader_stops_reading_ends(backends, closing, reader):
    """LiteLLM logs no event for a stream its reader stops reading (a
    `break`, `aclose()`, a task that returns with the stream dropped): its
    ticket ends as CANCELLED late_event_wait_s after the stream is
    dropped, not after ticket_timeout_s."""
    backends.start("spot-a", "-ttft", "20ms", "-token-rate", "20", "-answer-tokens", "200")
    router = Router(model_list=[deployment(backends, "spot-a")], num_retries=0)
    routing = SpotinferRouting.install(router, CONFIG, late_event_wait_s=0.5)
    closing(routing)

    async def read_two():
        resp = await router.acompletion(model=MODEL, messages=messages("s", "a story"),
                                        metadata={"class": "silver"}, stream=True)
        n = 0
        async for _ in resp:
            n += 1
            if n == 2:
                break
        if reader == "aclose":
            await resp.aclose()
        return n

    async def go():
        if reader == "task-returns":
            await asyncio.create_task(read_two())
        else:
            await read_two()
        gc.collect()
        assert len(routing._open) == 1      # its late_event_wait_s runs
        await asyncio.sleep(1.5)            # the backend streams on for 10 s
        assert not routing._open
    run(go())
    assert routing.engine.replica_status("spot-a").inflight == 0
    assert routing.engine.replica_status("spot-a").consecutive_errors == 0    # CANCELLED


@pytest.mark.parametrize("retries", [0, 2])
def test_a_refused_try_in_a_task_that_lives_on_ends(backends, closing, retries):
    """A try LiteLLM refuses after the route and before the call (a
    deployment at its max_parallel_requests: 429, no hook, no event) in a
    task that goes on awaiting other calls, as an application's main task
    does: its ticket ends as CANCELLED when the call raises, its retries'
    too, not when the task ends or after ticket_timeout_s."""
    # The slot is held longer than LiteLLM's retries wait.
    backends.start("spot-a", "-token-rate", "2000", "-answer-tokens", "4", "-ttft", "6s")
    dep = deployment(backends, "spot-a")
    dep["litellm_params"]["max_parallel_requests"] = 1
    router = Router(model_list=[dep], num_retries=retries, retry_after=0)
    routing = SpotinferRouting.install(router, CONFIG, late_event_wait_s=0.5)
    closing(routing)
    kw = dict(model=MODEL, metadata={"class": "silver"})

    async def go():
        holder = asyncio.create_task(router.acompletion(messages=messages("s", "hold"), **kw))
        await asyncio.sleep(0.3)                    # the one slot is taken
        with pytest.raises(litellm.RateLimitError):
            await router.acompletion(messages=messages("s", "refused"), **kw)
        assert len(routing._open) == 1              # the holder's
        await holder
        await settle(routing, 1, timeout=10)
        assert not routing._open
    run(go())
    assert routing.engine.replica_status("spot-a").inflight == 0
    assert routing.engine.replica_status("spot-a").consecutive_errors == 0    # CANCELLED


def test_a_task_that_routes_again_ends_its_unsent_tries(closing):
    """A task that routes again has moved on from its earlier tries (LiteLLM
    routes and sends a try in one task): one it never sent, of another
    call, ends as CANCELLED at that route; a sent one is left to its
    events."""
    router, routing = hand_fed(["spot-a", "spot-b"])
    closing(routing)

    async def go():
        first = await routing.async_get_available_deployment(
            MODEL, messages=messages("s", "one"), request_kwargs={"metadata": {}})
        sent = await routing.async_get_available_deployment(
            MODEL, messages=messages("s", "two"), request_kwargs={"metadata": {}})
        routing._mark_sent({"model_info": sent["model_info"]})
        ids = {d["model_info"][TICKET_KEY] for d in (first, sent)}
        assert set(routing._open) == {sent["model_info"][TICKET_KEY]}
        await routing.async_get_available_deployment(
            MODEL, messages=messages("s", "three"), request_kwargs={"metadata": {}})
        assert len(routing._open) == 2 and ids & set(routing._open) == ids - {
            first["model_info"][TICKET_KEY]}
    run(go())
    assert sum(r.failed for r in routing.engine.ledger()) == 1
