"""Tickets of tries LiteLLM holds up, refuses or never sends, and
deployment syncs that the library refuses or that a new Router repeats:
against a backend on loopback that answers after a delay."""

import asyncio
import time

import litellm
import pytest
from litellm import Router
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.router import Deployment

import spotinfer.litellm
from spotinfer import Engine, Pool, TicketStatus
from spotinfer.litellm import SpotinferRouting

from delayed_backend import serve

MODEL = "fake-model"
MSGS = [{"role": "user", "content": "hi"}]
META = {"class": "silver"}
LOOP = asyncio.new_event_loop()


def run(coro):
    return LOOP.run_until_complete(coro)


def dep(url, rid="spot-a", **settings):
    return {"model_name": MODEL,
            "litellm_params": {"model": f"openai/{MODEL}", "api_base": url, "api_key": "x"},
            "model_info": {"id": rid, "spotinfer": {"pool": "spot", "usd_per_hour": 1.8,
                                                    "metrics_url": False, **settings}}}


def ledger(routing):
    rows = routing.engine.ledger()
    return sum(r.completed for r in rows), sum(r.failed for r in rows)


def spy_cancelled(routing):
    out = []
    real = routing._finish

    def finish(tid, res):
        if res.status == TicketStatus.CANCELLED:
            out.append(tid)
        real(tid, res)
    routing._finish = finish
    return out


def wait_for_ledger(routing, timeout=10.0):
    """The ledger once a ticket's finish has reached the library. A ticket
    leaves the strategy's open set before its finish is in the library
    (the sync success event finishes it on LiteLLM's logging thread), so
    the ledger, not the open set, says when it is done."""
    deadline = time.monotonic() + timeout
    while sum(ledger(routing)) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)                     # a second finish would show by now
    return ledger(routing)


@pytest.fixture
def closing():
    made = []
    yield made.append
    for r in made:
        r.close()


class SlowDeploymentHook(CustomLogger):
    """Another callback's deployment-level pre-call hook that takes a while
    (a proxy guardrail on the deployment's `guardrails`, LiteLLM's
    compression interception computing embeddings), in litellm.callbacks
    before the strategy is installed (the proxy installs it at its first
    request, after every configured callback)."""

    def __init__(self, wait):
        super().__init__()
        self.wait = wait

    async def async_pre_call_deployment_hook(self, kwargs, call_type):
        await asyncio.sleep(self.wait)
        return None


@pytest.mark.parametrize("hook_first", [False, True])
def test_a_try_delayed_by_another_deployment_hook_is_not_cancelled(closing, hook_first):
    """A try LiteLLM does send, after another callback's deployment hook
    held it longer than late_event_wait_s, is not swept as CANCELLED on its
    way to the replica: its success finishes its ticket (OK)."""
    srv, url = serve(0.05)
    slow = SlowDeploymentHook(1.0)
    litellm.logging_callback_manager.add_litellm_callback(slow)
    try:
        router = Router(model_list=[dep(url)], num_retries=0)
        routing = SpotinferRouting.install(router, {"router": {"load_max_age_ms": 600000}},
                                           late_event_wait_s=0.4)
        closing(routing)
        assert litellm.callbacks[0] is routing     # ahead of the slow hook
        if hook_first:
            # Put ahead of the strategy all the same (a callback list
            # rebuilt after the install): the try's task still has it.
            litellm.callbacks.remove(slow)
            litellm.callbacks.insert(0, slow)
        cancelled = spy_cancelled(routing)
        r = run(router.acompletion(model=MODEL, messages=MSGS, metadata=dict(META)))
        assert r.choices[0].message.content == "hi"
        run(asyncio.sleep(0.5))
    finally:
        litellm.logging_callback_manager.remove_callback_from_all_lists(slow, require_self=False)
        srv.shutdown()
    assert not cancelled, "a try that was sent and answered was swept as CANCELLED"
    assert ledger(routing) == (1, 0)


def unreachable(rid, name=MODEL):
    return {"model_name": name,
            "litellm_params": {"model": f"openai/{MODEL}", "api_key": "x",
                               "api_base": f"http://127.0.0.1:9/{rid}/v1"},
            "model_info": {"id": rid, "spotinfer": {"pool": "spot", "usd_per_hour": 1.8,
                                                    "metrics_url": False}}}


def test_a_replacement_refused_for_room_is_applied_by_a_later_sync(closing):
    """A deployment replaced by another (the proxy's model list reloaded,
    or one deleted and one added before the next route) with the library's
    replica table full: the sync upserts the new one before it removes the
    old one, so the library refuses it (router.max_replicas), and the sync
    records the registry's version all the same. The old replica is then
    removed, and no later route reads the list again until some other
    change: the new deployment stays unroutable for good."""
    router = Router(model_list=[unreachable("old-a")], num_retries=0)
    routing = SpotinferRouting(router, {"router": {"load_max_age_ms": 600000,
                                                   "max_replicas": 1}})
    closing(routing)
    router.register_plugin(routing)
    router.set_model_list([unreachable("new-b")])
    routing.sync_if_changed()           # the next route
    routing.sync_if_changed()           # and any later one
    assert sorted(routing._replicas) == ["new-b"]
    assert [s.id for s in routing.engine.replicas()] == ["new-b"]




def test_a_deployment_refused_for_room_is_added_by_a_later_route(closing, monkeypatch, caplog):
    """A deployment added while the library's replica table is full (here
    with a replica of the engine's owner): the sync that reads it records
    no registry version, so a later route reads the list again, once
    _SYNC_RETRY_S has passed, and adds it once there is room; its warning
    is logged once."""
    monkeypatch.setattr(spotinfer.litellm, "_SYNC_RETRY_S", 0.2, raising=False)
    engine = Engine({"router": {"load_max_age_ms": 600000, "max_replicas": 2}})
    engine.upsert_replica(id="owners", pool=Pool.SPOT, usd_per_hour=1.0)
    router = Router(model_list=[unreachable("spot-a")], num_retries=0)
    routing = SpotinferRouting(router, engine=engine)
    closing(routing)
    router.register_plugin(routing)
    router.add_deployment(Deployment(**unreachable("spot-b")))
    routing.sync_if_changed()
    assert sorted(routing._replicas) == ["spot-a"]
    engine.remove_replica("owners")
    routing.sync_if_changed()           # before _SYNC_RETRY_S: nothing read
    assert sorted(routing._replicas) == ["spot-a"]
    time.sleep(0.25)
    routing.sync_if_changed()
    assert sorted(routing._replicas) == ["spot-a", "spot-b"]
    assert sorted(s.id for s in engine.replicas()) == ["spot-a", "spot-b"]
    refused = [r for r in caplog.records if "spot-b" in r.getMessage()]
    assert len(refused) == 1
    routing.close()
    routing.wait_closed(5)
    engine.close()


def test_the_proxy_keeps_routing_when_a_new_router_has_a_bad_deployment(monkeypatch):
    """A deployment added at run time with a bad spotinfer setting (the
    proxy's admin API or database) is logged and left out by the running
    strategy, and the proxy serves on. Once the proxy builds a new Router
    over the same deployments (a config reload), ProxyRouting installs a
    strategy on it, whose __init__ is strict: the DeploymentError is raised
    from the proxy's pre-call hook for every request, the same deployment
    now refusing all traffic instead of being left out."""
    from litellm.proxy import proxy_server
    from spotinfer.litellm_proxy import ProxyRouting
    good = unreachable("spot-a")
    bad = unreachable("spot-bad")
    bad["model_info"]["spotinfer"]["usd_per_hr"] = 2.0       # misspelt key
    first = Router(model_list=[good], num_retries=0)
    monkeypatch.setattr(proxy_server, "llm_router", first)
    proxy = ProxyRouting()
    try:
        assert proxy.ensure() is not None
        first.add_deployment(Deployment(**bad))
        proxy.strategy.sync_if_changed()                   # the next route: logged, left out
        assert sorted(proxy.strategy._replicas) == ["spot-a"]
        reloaded = Router(model_list=[good, bad], num_retries=0)
        monkeypatch.setattr(proxy_server, "llm_router", reloaded)
        data = {"model": MODEL, "messages": MSGS}
        run(proxy.async_pre_call_hook(None, None, data, "acompletion"))
        assert proxy.strategy is not None and proxy.strategy.router is reloaded
        assert sorted(proxy.strategy._replicas) == ["spot-a"]
    finally:
        if proxy.strategy is not None:
            proxy.strategy.close()


def test_a_strategy_made_lenient_leaves_a_bad_deployment_out(closing, caplog):
    """strict_deployments=False: a deployment with a bad setting is logged
    and left out of a new strategy, as a later sync does; by default the
    constructor raises DeploymentError naming it."""
    from spotinfer.litellm_deployments import DeploymentError
    bad = unreachable("spot-bad")
    bad["model_info"]["spotinfer"]["usd_per_hr"] = 2.0
    router = Router(model_list=[unreachable("spot-a"), bad], num_retries=0)
    with pytest.raises(DeploymentError, match="spot-bad"):
        SpotinferRouting(router)
    routing = SpotinferRouting(router, strict_deployments=False)
    closing(routing)
    assert sorted(routing._replicas) == ["spot-a"]
    assert [s.id for s in routing.engine.replicas()] == ["spot-a"]
    assert any("spot-bad" in r.getMessage() for r in caplog.records)


def test_a_sync_try_refused_by_a_check_after_the_strategys_ends(closing):
    """The sync API: the Router runs the callbacks' pre_call_check in
    litellm.callbacks order. LiteLLM's model rate limit check, turned on
    after the strategy was installed (router settings updated at run time,
    as the proxy does from its database), comes after the strategy's and
    refuses the call with no event: the try was never sent, and its
    ticket ends after late_event_wait_s, not ticket_timeout_s (the
    strategy marks a try sent from the provider's log_pre_api_call, not
    from a pre_call_check)."""
    srv, url = serve(0.05)
    d = dep(url)
    d["litellm_params"]["rpm"] = 1
    router = Router(model_list=[d], num_retries=0)
    routing = SpotinferRouting.install(router, {"router": {"load_max_age_ms": 600000}},
                                       late_event_wait_s=0.3)
    closing(routing)
    router.set_optional_pre_call_checks(["enforce_model_rate_limits"])
    try:
        router.completion(model=MODEL, messages=MSGS, metadata=dict(META))
        with pytest.raises(litellm.RateLimitError):
            router.completion(model=MODEL, messages=MSGS, metadata=dict(META))
        time.sleep(1.0)                 # past late_event_wait_s, and the first's event
    finally:
        srv.shutdown()
    assert not routing._open, "a refused sync try stays open for ticket_timeout_s"
    assert routing.engine.replica_status("spot-a").inflight == 0


def _sync_call(router, kind):
    if kind == "completion":
        return router.completion(model=MODEL, messages=MSGS, metadata=dict(META))
    if kind == "stream":
        out = router.completion(model=MODEL, messages=MSGS, metadata=dict(META), stream=True)
        return "".join(c.choices[0].delta.content or "" for c in out)
    if kind == "embedding":
        return router.embedding(model=MODEL, input=["hi"], metadata=dict(META))
    return router.responses(model=MODEL, input="hi", metadata=dict(META))


@pytest.mark.parametrize("kind", ["completion", "stream", "embedding", "responses"])
def test_a_sync_try_served_past_late_event_wait_s_is_not_cancelled(closing, kind):
    """The sync API: each call type that LiteLLM sends is marked sent
    (log_pre_api_call) before its backend answers, so a backend slower
    than late_event_wait_s does not have its try swept as CANCELLED."""
    srv, url = serve(0.6)
    router = Router(model_list=[dep(url)], num_retries=0)
    routing = SpotinferRouting.install(router, {"router": {"load_max_age_ms": 600000}},
                                       late_event_wait_s=0.2)
    closing(routing)
    cancelled = spy_cancelled(routing)
    try:
        assert _sync_call(router, kind)
        done = wait_for_ledger(routing)
    finally:
        srv.shutdown()
    assert not cancelled
    assert not routing._open
    assert done == (1, 0)


class HoldingCheck(CustomLogger):
    """Another callback's pre-call check that waits (for a slot, as a
    blocking rate limiter does) before it lets the try through, or, with
    ``refuse``, then refuses it (no event: the try was never sent)."""

    def __init__(self, wait, refuse=False):
        super().__init__()
        self.wait = wait
        self.refuse = refuse

    def pre_call_check(self, deployment):
        time.sleep(self.wait)
        if self.refuse:
            raise litellm.RateLimitError("over the limit", "openai", MODEL)


@pytest.mark.parametrize("kind", ["completion", "stream", "embedding", "responses"])
def test_a_sync_try_held_past_late_event_wait_s_is_served_and_finished(closing, kind):
    """The sync API: a try held between its route and its send for longer
    than late_event_wait_s (another callback's pre-call check waiting for a
    slot) is then sent and served; its success finishes its ticket (OK,
    counted in the ledger), not a timer that took it for refused."""
    srv, url = serve(0.05)
    holding = HoldingCheck(1.2)
    litellm.logging_callback_manager.add_litellm_callback(holding)
    try:
        router = Router(model_list=[dep(url)], num_retries=0)
        # A stream's success event comes from LiteLLM's logging thread
        # after the stream is read and dropped, within late_event_wait_s.
        routing = SpotinferRouting.install(router, {"router": {"load_max_age_ms": 600000}},
                                           late_event_wait_s=0.5)
        closing(routing)
        cancelled = spy_cancelled(routing)
        assert _sync_call(router, kind)
        done = wait_for_ledger(routing)
    finally:
        litellm.logging_callback_manager.remove_callback_from_all_lists(
            holding, require_self=False)
        srv.shutdown()
    assert not cancelled, "a sync try that was held, then sent and served, was CANCELLED"
    assert done == (1, 0)
    assert not routing._open


@pytest.mark.parametrize("kind", ["completion", "responses"])
def test_a_held_sync_try_never_sent_ends_with_its_call(closing, kind):
    """The sync API: a try held past late_event_wait_s and then refused
    before its send (no event comes for it) is finished as CANCELLED when
    its call raises, not left open: no timer took it meanwhile, and none
    is needed after."""
    srv, url = serve(0.05)
    refusing = HoldingCheck(0.4, refuse=True)
    litellm.logging_callback_manager.add_litellm_callback(refusing)
    try:
        router = Router(model_list=[dep(url)], num_retries=0)
        routing = SpotinferRouting.install(router, {"router": {"load_max_age_ms": 600000}},
                                           late_event_wait_s=0.1, ticket_timeout_s=600)
        closing(routing)
        with pytest.raises(litellm.RateLimitError):
            _sync_call(router, kind)
        # At once: the call's end finished it, in the caller's thread.
        assert not routing._open
        assert ledger(routing) == (0, 1)
    finally:
        litellm.logging_callback_manager.remove_callback_from_all_lists(
            refusing, require_self=False)
        srv.shutdown()
    assert routing.engine.replica_status("spot-a").inflight == 0
