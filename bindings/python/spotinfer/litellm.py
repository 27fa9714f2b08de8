"""A LiteLLM routing strategy that asks libspotinfer where each request goes.

Install with the extra, which pins the LiteLLM version this is tested with::

    pip install 'spotinfer[litellm]'

Then, on a Router whose deployments say their pool and price in
``model_info.spotinfer`` (see :mod:`spotinfer.litellm_deployments`)::

    from litellm import Router
    from spotinfer.litellm import SpotinferRouting

    router = Router(model_list=model_list)
    routing = SpotinferRouting.install(router, config={"cost": {...}})
    ...
    await router.acompletion(model="llama-70b", messages=[...])
    routing.close()

The strategy is one object with two faces: LiteLLM's custom routing
strategy (``async_get_available_deployment`` / ``get_available_deployment``:
the library classifies the request, keys its prefix, picks pool and replica
and opens a ticket) and a LiteLLM callback (``CustomLogger``: the success
and failure events finish the ticket with the status, token counts and time
to first token). Background threads keep each replica's load fresh (its
/metrics page, or the strategy's own count where there is none) and call
the engine's periodic tick. A shed request raises LiteLLM's RateLimitError
(HTTP 429, ``retry-after`` header), no capacity its ServiceUnavailableError
(503), a body the library refuses its BadRequestError (400, the library's
message naming the field).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import inspect
import itertools
import json
import logging
import secrets
import threading
import time
import urllib.request
import weakref
from datetime import datetime
from typing import (Any, Deque, Dict, Iterator, List, Mapping, Optional, Sequence, Set,
                    Tuple, Union)

try:
    import httpx
    import litellm
    from litellm.integrations.custom_logger import CustomLogger
    from litellm.types.router import CustomRoutingStrategyBase
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(f"spotinfer.litellm needs LiteLLM ({e}): "
                      "pip install 'spotinfer[litellm]'") from e

try:
    from litellm.litellm_core_utils import logging_callback_manager as _lcm
    _lists_lock: Any = getattr(_lcm, "_callback_lists_lock", None)
except ImportError:  # pragma: no cover - a LiteLLM without the manager
    _lists_lock = None
if not isinstance(_lists_lock, type(threading.RLock())):
    _lists_lock = None                  # add_litellm_callback takes it again

from . import MAX_EXCLUDED, Engine, NoCapacityError, ShedError
from .enums import BreakerState, ModelTier, OpenAIKind, Pool, ReplicaState, TicketStatus
from ._engine import _closed as _engine_closed_error
from .errors import (FullError, InputError, NoMemoryError, NotFoundError, ResourceError,
                     SpotinferError)
from .litellm_deployments import (DeploymentError, Replica, deployment_id, model_group,
                                  read_replicas, replicas_of)
from .notices import TicketPlan, parse_notice
from .types import TicketResult

#: The LiteLLM version the ``litellm`` extra pins and the tests run against.
LITELLM_VERSION = "1.109.3"

#: Metadata keys passed on to the library (it reads them as request
#: attributes: docs/requests.md); LiteLLM's own metadata stays out.
METADATA_KEYS = ("class", "priority", "sla_ms", "replayable",
                 "expected_output_tokens", "tenant", "tenant_tier",
                 "tenant_salt", "decode_profile", "tokenizer_version",
                 "retrieval_template")

#: Body keys of a chat request that the library reads.
BODY_KEYS = ("stream", "max_tokens", "max_completion_tokens", "service_tier",
             "user", "priority", "tools")

#: Where the ticket id rides in a request's metadata, from the route to the
#: callbacks, for a call that has no LiteLLM trace id. Also the key of a
#: try's own ticket id in the model_info of the deployment the route
#: returns (0: a try without a ticket), which LiteLLM copies into that
#: try's kwargs and its events' litellm_params: _marked.
TICKET_KEY = "spotinfer_ticket"

#: Which strategy routed: beside TICKET_KEY in a try's model_info, and in
#: the metadata where a strategy keeps tickets, a token of the strategy's
#: own (each engine numbers its tickets from the same first id, and every
#: strategy in a process gets every event: _try_ticket).
ROUTING_KEY = "spotinfer_routing"

#: Where a silent_model mirror of a call keeps its ticket id in its own
#: metadata (LiteLLM copies the call's metadata, TICKETS_KEY and the trace
#: id with it, for the mirror: _is_mirror).
MIRROR_TICKET_KEY = "spotinfer_mirror_ticket"

#: Where a call with a LiteLLM trace id (``litellm_trace_id``, one per
#: Router call, kept across its retries and fallbacks) keeps its ticket id in
#: the request's metadata: a dict by trace id, so calls in flight at once
#: that share one metadata dict each find their own ticket.
TICKETS_KEY = "spotinfer_tickets"

#: How long a request the library queues waits before it is decided again.
_QUEUE_POLL_S = 0.05

#: The tick thread's period, and the least time between two sweeps of a
#: strategy without one (_sweep_if_due).
_TICK_S = 0.1

#: The Router's sync calls that route, run the pre-call checks and send
#: their try without its retry and fallback loop
#: (async_function_with_fallbacks): its generic calls (responses,
#: generate_content, ocr, search). The strategy wraps them too
#: (_wrap_calls), so that their end ends a try they never sent.
_SYNC_CALLS = ("_generic_api_call_with_fallbacks",)

#: How often the routes read again a list of deployments whose sync the
#: library refused in part for room (its replica table full, no memory).
_SYNC_RETRY_S = 1.0

#: The replica ids serving each model name, those serving any, and every
#: one (_serving_map).
_Serving = Tuple[Dict[str, Tuple[str, ...]], Tuple[str, ...], Tuple[str, ...]]


def _jsonable(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump()
    return str(obj)


def request_body(model: str, messages: Optional[List[Any]], input: Any,
                 kwargs: Mapping[str, Any]) -> Tuple[bytes, OpenAIKind]:
    """The OpenAI body the library reads, from what LiteLLM passes a
    routing strategy (the request's keyword arguments)."""
    body: Dict[str, Any] = {"model": model}
    if messages is not None:
        body["messages"] = messages
        kind = OpenAIKind.CHAT
    else:
        prompt = input if isinstance(input, str) else " ".join(
            str(x) for x in (input or ()))
        body["prompt"] = prompt
        kind = OpenAIKind.COMPLETIONS
    for k in BODY_KEYS:
        v = kwargs.get(k)
        if v is not None:
            body[k] = v
    meta = kwargs.get(_metadata_name(kwargs)) or {}
    hints = {k: _hint(meta[k]) for k in METADATA_KEYS
             if isinstance(meta.get(k), (str, int, bool))}
    if "tenant" not in hints and isinstance(meta.get("user_api_key_team_id"), str):
        hints["tenant"] = meta["user_api_key_team_id"]   # the proxy's team
    if hints:
        body["metadata"] = hints
    text = json.dumps(body, separators=(",", ":"), default=_jsonable)
    return text.encode("utf-8"), kind


def _hint(v: Any) -> str:
    """A metadata value as the library reads it (OpenAI metadata values are
    strings): a bool as true/false, an int as its digits."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else str(v)


def _ms(later: Any, earlier: Any) -> float:
    """Milliseconds between two LiteLLM timestamps (datetimes or seconds)."""
    if later is None or earlier is None:
        return 0.0
    if isinstance(later, datetime) and isinstance(earlier, datetime):
        return max(0.0, (later - earlier).total_seconds() * 1000.0)
    if isinstance(later, (int, float)) and isinstance(earlier, (int, float)):
        return max(0.0, (later - earlier) * 1000.0)
    return 0.0


def ticket_result(status: TicketStatus, kwargs: Mapping[str, Any],
                  response_obj: Any, start_time: Any, end_time: Any) -> TicketResult:
    """A ticket's result from a LiteLLM success or failure event."""
    usage = getattr(response_obj, "usage", None)
    if usage is None and isinstance(response_obj, Mapping):
        usage = response_obj.get("usage")
    prompt = output = cached = 0
    if usage is not None:
        get = usage.get if isinstance(usage, Mapping) else (
            lambda k, d=None: getattr(usage, k, d))
        prompt = int(get("prompt_tokens", 0) or 0)
        output = int(get("completion_tokens", 0) or 0)
        details = get("prompt_tokens_details", None)
        if details is not None:
            c = details.get("cached_tokens") if isinstance(details, Mapping) \
                else getattr(details, "cached_tokens", None)
            cached = int(c or 0)
    # The time to first token as the backend gave it: from the call to the
    # first chunk of a stream (a whole answer has no first token of its own).
    ttft = 0.0
    if kwargs.get("stream") and kwargs.get("completion_start_time") is not None:
        sent = kwargs.get("api_call_start_time") or start_time
        ttft = _ms(kwargs.get("completion_start_time"), sent)
    return TicketResult(status=status, prompt_tokens=prompt, output_tokens=output,
                        cached_tokens=cached, ttft_ms=ttft,
                        duration_ms=_ms(end_time, start_time))


_instances = itertools.count(1)

_log = logging.getLogger(__name__)


class _Closed(Exception):
    """A call into the library the strategy no longer makes: it is closing
    (no new route) or has closed its engine (no call at all)."""


class _Open:
    """A ticket between its route and its callback. ``owner`` is what
    routed it: its asyncio task, by id (_watch_task), else its thread, by
    ident. ``sent`` is set once LiteLLM hands its try to the deployment
    (_mark_sent): a try it never sends has no event. ``streamed`` once the streaming deployment hook
    ran for it (LiteLLM runs it on a stream's last chunk), ``answered``
    once the call handed back an answer that its success event finishes
    (an embedding, say): either way its event may be on its way
    (_task_done). ``until`` is set once a later route of its call took its
    place in the metadata (_leave_earlier_try), or its task was cancelled
    with its event on its way: its own event may still come until then."""

    __slots__ = ("replica", "owner", "opened", "sent", "streamed", "answered", "until")

    def __init__(self, replica: str, owner: Tuple[str, int]) -> None:
        self.replica = replica
        self.owner = owner
        self.opened = time.monotonic()
        self.sent = False
        self.streamed = False
        self.answered = False
        self.until = 0.0


class _Offer:
    """A request as the strategy routes it: the deployments LiteLLM offers
    for it (by replica id), the body the library reads, and the replicas
    serving the request's model that LiteLLM left out (cooling down,
    filtered by tags), which the library's decision excludes."""

    __slots__ = ("candidates", "body", "kind", "excluded")

    def __init__(self, candidates: Dict[str, Any], body: bytes, kind: OpenAIKind,
                 excluded: Sequence[str]) -> None:
        self.candidates = candidates
        self.body = body
        self.kind = kind
        self.excluded = tuple(excluded)


class _NoneOffered(Exception):
    """The library found no capacity among the offered deployments (the
    rest excluded); carries its decision."""

    def __init__(self, decision: Any) -> None:
        super().__init__()
        self.decision = decision


class SpotinferRouting(CustomLogger, CustomRoutingStrategyBase):  # type: ignore[misc]
    """libspotinfer as a LiteLLM Router's routing strategy and callback.

    ``config`` is the library's configuration (JSON text, dict or path);
    ``engine`` an engine to use instead (the strategy then does not close
    it). Options: ``scrape_interval_s`` (load scrape period, under the
    library's ``router.load_max_age_ms``), ``scrape_timeout_s``,
    ``queue_wait_s`` (how long a request the library queues is routed
    again before it is a 503), ``retry_after_s`` (the shed answer's
    retry-after), ``ticket_timeout_s`` (a ticket no callback finished by
    then is finished as CANCELLED), ``late_event_wait_s`` (how long the
    try a later route of its call took the place of waits for its own
    event before it is finished as CANCELLED: _leave_earlier_try; and how
    long after its route a sync route's try outside a Router call (the
    strategy called directly) that LiteLLM has not sent is: _mark_sent; a
    Router call's unsent try ends with the call, an async route's with
    its task: _call_ended, _task_done),
    ``respect_litellm_health`` (take only
    deployments LiteLLM's own checks call healthy: cooldowns, allowed
    fails), ``ready_wait_s`` (start() waits this long for a first load
    reading of every replica), ``close_wait_s`` (close() waits at most this
    long; the rest of the close goes on in a thread of its own),
    ``close_timeout_s`` (that thread waits at most this long for the
    strategy's threads and its calls into the library; see close()),
    ``strict_deployments`` (True: a deployment that cannot be read or that
    the library refuses raises DeploymentError from the constructor;
    False: it is logged and left out, as sync_deployments does).
    """

    def __init__(self, router: Any, config: Any = None, *,
                 engine: Optional[Engine] = None,
                 scrape_interval_s: float = 0.25, scrape_timeout_s: float = 1.0,
                 queue_wait_s: float = 5.0, retry_after_s: int = 1,
                 ticket_timeout_s: float = 600.0,
                 late_event_wait_s: float = 5.0,
                 respect_litellm_health: bool = True,
                 ready_wait_s: float = 5.0, close_wait_s: float = 0.1,
                 close_timeout_s: float = 10.0, strict_deployments: bool = True) -> None:
        CustomLogger.__init__(self)
        # LiteLLM keeps one callback per class and public scalar attributes:
        # a number of its own keeps two strategies (two routers) apart.
        self.instance = next(_instances)
        # What marks the tickets of this strategy's routes, where they ride
        # (ROUTING_KEY): random, so a copy or a pickle of a model_info names
        # it and no other strategy, in this process or another.
        self._token = secrets.token_hex(8)
        self._router = router
        self._own_engine = engine is None
        self.engine = engine if engine is not None else Engine(config)
        self.scrape_interval_s = float(scrape_interval_s)
        self.scrape_timeout_s = float(scrape_timeout_s)
        self.queue_wait_s = float(queue_wait_s)
        self.retry_after_s = int(retry_after_s)
        self._ticket_timeout_s = float(ticket_timeout_s)
        self._late_event_wait_s = float(late_event_wait_s)
        self.respect_litellm_health = bool(respect_litellm_health)
        self.ready_wait_s = float(ready_wait_s)
        self.close_wait_s = float(close_wait_s)
        self.close_timeout_s = float(close_timeout_s)
        # The one lock of the strategy. Nothing holds it across a call into
        # the library, and the closer waits on _idle (which gives it up).
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._calls = 0                     # its calls inside the library now
        self._inside: Dict[int, int] = {}   # those calls by thread id
        self._deferred = False              # the last call out ends the close
        self._shut = threading.Event()      # the close is done
        self._closing = False               # close() called: no new route
        self._engine_closed = False         # its own engine closed, or closing
        self._open: Dict[int, _Open] = {}
        # The earliest time an open ticket may be due for _expire_tickets
        # (written under _lock, always at or below every open ticket's due
        # time; read without it, where a stale value only moves a sweep by
        # a tick), and the last sweep of a strategy without a tick thread
        # (_sweep_if_due).
        self._due = float("inf")
        self._swept = 0.0
        # The open tickets routed off an event loop outside a Router call
        # (no call or task ends them: _call_ended, _task_done) with the
        # time of their route, in route order, for
        # _expire_unsent (due late_event_wait_s after it unless sent); a
        # ticket sent or finished since stays until it is at the front.
        # Written under _lock; _unsent_due, when the front is due, read as
        # _due is.
        self._unsent: Deque[Tuple[float, int]] = collections.deque()
        self._unsent_due = float("inf")
        # The asyncio tasks that routed, each with the tickets of its routes
        # still open (_watch_task); under _lock.
        self._tasks: "weakref.WeakKeyDictionary[asyncio.Task[Any], Set[int]]" = \
            weakref.WeakKeyDictionary()
        # The tickets of the Router call running here (_wrap_calls): the
        # call's end ends those LiteLLM never sent (_call_ended).
        self._call: "contextvars.ContextVar[Optional[List[int]]]" = \
            contextvars.ContextVar(f"spotinfer_call_{self.instance}", default=None)
        # The tickets of answers (streams) their caller dropped or closed,
        # appended by a finalizer, which may run in any thread at any
        # allocation and so takes no lock: the sweep takes them (_expire_tickets).
        self._dropped: Deque[Tuple[int, ...]] = collections.deque()
        self._ticking = False
        self._replicas: Dict[str, Replica] = {}
        # The replicas the library chooses among for each model name (one
        # object, swapped whole by a sync): _serving_map.
        self._serving: _Serving = ({}, (), ())
        self._synced_version: Optional[int] = None
        # A registry version a sync read but could not apply whole (the
        # library's table full: _apply), when a route may read it again
        # (_SYNC_RETRY_S), and the warnings already logged for it.
        self._unapplied_version: Optional[int] = None
        self._retry_at = 0.0
        self._unapplied_logged: Set[str] = set()
        self._fresh: Dict[str, threading.Event] = {}
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._closer: Optional[threading.Thread] = None
        self._reqs: List[Any] = []          # idle Request handles, reused
        # Held for a whole sync of the deployments (_sync), never with _lock
        # held, never by a call into the library but the sync's own.
        self._sync_lock = threading.Lock()
        self._sync(strict=bool(strict_deployments))

    # -- set-up

    @classmethod
    def install(cls, router: Any, config: Any = None, **options: Any) -> "SpotinferRouting":
        """Make a strategy, plug it into the router (its routing and the
        callbacks), start its load threads and wait for first readings."""
        self = cls(router, config, **options)
        register = getattr(router, "register_plugin", None)
        if register is None:                # LiteLLM before register_plugin
            register = router.set_custom_routing_strategy
        register(self)
        self._wrap_calls()
        self.add_callback()
        self.start()
        return self

    def _wrap_calls(self) -> None:
        """Put the strategy around the Router's retry and fallback loop
        (``async_function_with_fallbacks``: every async call goes through
        it, and the sync API's completion, embedding and image calls run
        it in a loop of their own) and around the sync calls that route
        and send without it (_SYNC_CALLS), so that a call's end tells what
        LiteLLM logs no event for: a try it never sent (refused between
        the route and the call: _call_ended) and an answer its caller
        dropped unread or closed (a stream left with ``break`` or
        ``aclose()``: _answer_dropped)."""
        inner = getattr(self._router, "async_function_with_fallbacks", None)
        if inspect.iscoroutinefunction(inner):
            self._wrap_call("async_function_with_fallbacks", self._async_call(inner))
        for name in _SYNC_CALLS:
            sync_inner = getattr(self._router, name, None)
            if callable(sync_inner) and not inspect.iscoroutinefunction(sync_inner):
                self._wrap_call(name, self._sync_call(sync_inner))

    def _wrap_call(self, name: str, calls: Any) -> None:
        calls.spotinfer_routing = self
        setattr(self._router, name, calls)

    def _async_call(self, inner: Any) -> Any:
        """An async Router call's wrapper: its routes' tickets in a list of
        its own (_call), ended with it (_call_ended)."""
        async def calls(*args: Any, **kwargs: Any) -> Any:
            mine: List[int] = []
            reset = self._call.set(mine)
            try:
                answer = await inner(*args, **kwargs)
            except BaseException as e:
                self._call_ended(mine, None, cancelled=isinstance(e, asyncio.CancelledError))
                raise
            finally:
                self._call.reset(reset)
            self._call_ended(mine, answer, cancelled=False)
            return answer

        calls.__wrapped__ = inner           # type: ignore[attr-defined]
        return calls

    def _sync_call(self, inner: Any) -> Any:
        """A sync Router call's wrapper, as _async_call's: the call routes
        and sends its tries in the caller's thread, in this context."""
        def calls(*args: Any, **kwargs: Any) -> Any:
            mine: List[int] = []
            reset = self._call.set(mine)
            try:
                answer = inner(*args, **kwargs)
            except BaseException:
                self._call_ended(mine, None, cancelled=False)
                raise
            finally:
                self._call.reset(reset)
            self._call_ended(mine, answer, cancelled=False)
            return answer

        calls.__wrapped__ = inner           # type: ignore[attr-defined]
        return calls

    def _unwrap_calls(self) -> None:
        """The Router's own calls back, where the strategy's wrappers are
        what it has."""
        for name in ("async_function_with_fallbacks", *_SYNC_CALLS):
            outer = self._router.__dict__.get(name) \
                if hasattr(self._router, "__dict__") else None
            if outer is None:
                outer = getattr(self._router, name, None)
            if getattr(outer, "spotinfer_routing", None) is self:
                with contextlib.suppress(AttributeError):
                    delattr(self._router, name)

    def _call_ended(self, tids: List[int], answer: Any, *, cancelled: bool) -> None:
        """A Router call ended: each ticket of its routes still open that
        LiteLLM never sent is finished as CANCELLED (no event comes for
        it); with ``cancelled``, a sent one too, as _task_done does. The
        sync API's tries as the async API's: LiteLLM marks a sync try sent
        (log_pre_api_call) inline, in the thread that routed it, just
        before it sends the request, so a try still unsent when its call
        ends was never sent, however long it was held up first. Those
        left open are the answer's (a stream being read, an answer whose
        success event is on its way): dropping the answer starts their
        late_event_wait_s (_answer_dropped)."""
        if not tids:
            return
        with self._lock:
            ended = self._end_tickets(tids, cancelled)
            left = tuple(t for t in tids if t in self._open)
        for tid in ended:
            self._finish(tid, TicketResult(status=TicketStatus.CANCELLED))
        if left and answer is not None:
            with contextlib.suppress(TypeError):    # not weakly referable
                weakref.finalize(answer, self._dropped.append, left)

    def add_callback(self) -> None:
        """Put the strategy first in litellm.callbacks, where LiteLLM (the
        Router and the proxy alike) finds its success and failure
        callbacks and its deployment hooks. First, so that its pre-call
        deployment hook marks a try sent before another callback's hook
        holds it up (a guardrail, an interception computing embeddings):
        whatever those hooks do then happens inside the call wrapper, whose
        events end the ticket. The strategy's hooks change no request and
        no answer, so running them first changes nothing for the others."""
        manager = getattr(litellm, "logging_callback_manager", None)
        with _lists_lock if _lists_lock is not None else contextlib.nullcontext():
            if manager is not None:
                manager.add_litellm_callback(self)
            elif self not in litellm.callbacks:
                litellm.callbacks.append(self)
            cbs = litellm.callbacks
            if self in cbs and cbs[0] is not self:
                # A new list, not the old one reordered in place: requests
                # going through the old one (awaiting in its hooks) would
                # run a callback twice or skip one.
                litellm.callbacks = [self, *(c for c in cbs if c is not self)]

    def remove_callback(self) -> None:
        """Take the strategy out of every callback list LiteLLM copied it
        into (a strategy left there would still be called after close)."""
        manager = getattr(litellm, "logging_callback_manager", None)
        if manager is not None and hasattr(manager, "remove_callback_from_all_lists"):
            manager.remove_callback_from_all_lists(self, require_self=False)
        for lst in (litellm.callbacks, litellm.success_callback, litellm.failure_callback,
                    litellm._async_success_callback, litellm._async_failure_callback):
            while self in lst:
                lst.remove(self)

    def _model_list(self) -> List[Any]:
        registry = getattr(self._router, "registry", None)
        if callable(registry):
            return list(registry().all())
        return list(self._router.model_list)

    def _registry_version(self) -> Optional[int]:
        """LiteLLM's count of changes to the router's deployments (every
        write path moves it), or None where the router has none."""
        registry = getattr(self._router, "registry", None)
        if not callable(registry):
            return None
        v = getattr(registry(), "version", None)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def sync_if_changed(self) -> None:
        """sync_deployments when the router's deployments changed since the
        last (the proxy adds, updates and removes them in place, from its
        database or its admin API), or when the last sync could not apply
        every deployment for lack of room in the library (again at most
        once a second until one does); one integer compare when they did
        not."""
        v = self._registry_version()
        if v is None or v == self._synced_version:
            return
        if v == self._unapplied_version and time.monotonic() < self._retry_at:
            return
        self._sync(strict=False, if_changed=True)

    def sync_deployments(self) -> None:
        """Read the router's deployments again: add or update their
        replicas, remove the replicas of deployments that are gone. Each
        deployment is read on its own: one that cannot be read (a bad
        setting, an id another one has) or that the library refuses is
        logged as a warning on the ``spotinfer.litellm`` logger and left
        as it was (not added, or kept with the settings last applied), and
        the others are applied. The replicas of deployments that are gone
        are removed first, so that a deployment replacing another finds
        its room in the library's replica table; one the library refuses
        for room all the same (the table full, no memory) is tried again by
        a later route's sync (sync_if_changed), and its warning is not
        repeated meanwhile. Once the strategy is closing, nothing."""
        self._sync(strict=False)

    def _sync(self, *, strict: bool, if_changed: bool = False) -> None:
        """sync_deployments; ``strict`` (the strategy being made) raises a
        DeploymentError naming the first deployment that cannot be read or
        that the library refuses, and ``if_changed`` reads nothing when
        another sync read the registry's current version meanwhile. One
        sync at a time (_sync_lock), the version read before the list: a
        sync that read an older list never applies it after a newer one,
        and a change made during a sync moves the version past the one it
        records."""
        with self._sync_lock:
            v = self._registry_version()
            if if_changed and (v is None or v == self._synced_version):
                return
            deps = self._model_list()
            if strict:
                reps, bad = replicas_of(deps), []
            else:
                read, errors = read_replicas(deps)
                reps, bad = list(read), list(errors)
            try:
                with self._library():
                    complete = self._apply(deps, reps, bad, strict)
            except _Closed:
                return
            again = v is not None and v == self._unapplied_version
            if complete:
                self._synced_version = v
                self._unapplied_version = None
                self._unapplied_logged = set()
            else:
                # Refused for room: a later route reads the same version again.
                self._unapplied_version = v
                self._retry_at = time.monotonic() + _SYNC_RETRY_S
                if not again:
                    self._unapplied_logged = set()
            for e in bad:
                text = str(e)
                if again and text in self._unapplied_logged:
                    continue                # said at the version's first sync
                if not complete:
                    self._unapplied_logged.add(text)
                _log.warning("spotinfer.litellm: %s; the deployment is left as it was "
                             "(not added, or with the settings last applied)", e)
            with self._lock:
                if self._threads and not self._closing:   # started: new replicas get theirs
                    running = {t.name for t in self._threads if t.is_alive()}
                    for rid in self._replicas:
                        if f"spotinfer-load-{rid}" not in running:
                            self._spawn(rid)

    def _apply(self, deps: Sequence[Any], reps: Sequence[Replica],
               bad: List[Exception], strict: bool) -> bool:
        """Remove from the engine the replicas of deployments that are gone,
        then put the replicas read into the engine and the strategy's maps,
        in model_list order (the room the gone ones held is free for the
        new ones). A deployment listed but not read (or refused: ``bad``
        gets why) keeps the replica it had. False when the library refused
        a replica for a reason that passes (its replica table full, no
        memory): the sync is then not complete, and a later one applies
        the same list again. Inside _library, under _sync_lock."""
        listed = {i for i in map(deployment_id, deps) if i is not None}
        with self._lock:
            gone = [i for i in self._replicas if i not in listed]
        for old in gone:
            try:
                self.engine.remove_replica(old)
            except NotFoundError:
                pass                        # removed by the engine's owner
            except SpotinferError as e:
                if strict:
                    raise
                _log.warning("spotinfer.litellm: replica %r of a deployment that is "
                             "gone: the library did not remove it: %s", old, e)
        complete = True
        applied: Dict[str, Replica] = {}
        for r in reps:
            try:
                self.engine.upsert_replica(r.info)
            except SpotinferError as e:
                err = DeploymentError(f"deployment {r.model_id!r}: the library refuses "
                                      f"it as a replica: {e}")
                if strict:
                    raise err from e
                if isinstance(e, (FullError, NoMemoryError)):
                    complete = False
                bad.append(err)
                continue
            applied[r.info.id] = r
        with self._lock:
            kept: Dict[str, Replica] = {}
            for dep in deps:
                rid = deployment_id(dep)
                rep = applied.get(rid) if rid is not None else None
                if rep is None and rid is not None:
                    rep = self._replicas.get(rid)
                if rep is not None:
                    kept.setdefault(rep.info.id, rep)
            self._replicas = kept
            self._serving = _serving_map(list(kept.values()))
            for rid in kept:
                self._fresh.setdefault(rid, threading.Event())
        return complete

    def _spawn(self, rid: str) -> None:
        """Start a replica's load thread and list it; under _lock, and only
        while the strategy is not closing. The closer joins the threads
        listed when it takes the list (under _lock, once closing), so each
        of them has started and none is listed after."""
        t = threading.Thread(target=self._load_loop, args=(rid,),
                             name=f"spotinfer-load-{rid}", daemon=True)
        t.start()
        self._threads.append(t)

    def start(self) -> None:
        """Start the load threads (one per replica, so a slow /metrics holds
        up no other) and the tick thread; wait up to ready_wait_s for a first
        reading of every replica (one without counts as saturated). Once
        the strategy is closing, nothing."""
        with self._lock:
            if self._threads or self._closing:
                return
            for rid in list(self._replicas):
                self._spawn(rid)
            tick = threading.Thread(target=self._tick_loop, name="spotinfer-tick",
                                    daemon=True)
            tick.start()
            self._threads.append(tick)
            self._ticking = True
        deadline = time.monotonic() + self.ready_wait_s
        for ev in list(self._fresh.values()):
            ev.wait(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop the strategy. At once: no new route (a request the strategy
        is routing fails with LiteLLM's ServiceUnavailableError, 503, and
        so does a route that comes later), out of litellm.callbacks, and
        the router's own routing back where the strategy was plugged in
        (the Router's ``_reset_custom_routing_strategy``, while no later
        strategy has taken its place). Then, in a thread of its own
        ("spotinfer-close"): finish the tickets still open (CANCELLED),
        join its threads, wait for its calls into the library to return
        (a route in a slow module, a ticket being finished) and close the
        engine if the strategy made it. close() waits for that thread at
        most close_wait_s, so a load thread in the middle of a scrape (up
        to scrape_timeout_s) or a slow tick holds up no caller, such as the
        proxy's install of the next strategy; wait_closed() waits for it.
        That thread waits at most close_timeout_s for the threads and the
        calls: a call still inside the library then (a module that does
        not return) is logged, with its thread, and the engine is left
        open rather than freed under it (at the interpreter's exit too);
        the last such call to return closes it. Idempotent."""
        with self._lock:
            self._closing = True
        self._stop.set()
        self.remove_callback()
        self._unplug()
        with self._lock:
            closer = self._closer
            if closer is None:
                # Not a daemon: an interpreter that exits waits for the
                # engine to be closed after the threads that use it, as
                # long as close_timeout_s.
                closer = threading.Thread(target=self._shut_down,
                                          name="spotinfer-close")
                self._closer = closer
                closer.start()
        closer.join(self.close_wait_s)

    def _unplug(self) -> None:
        """Give the router its own routing back if the strategy is still
        what it routes with (LiteLLM wraps the plugged-in method: its
        innermost is the strategy's bound method). A Router without
        _reset_custom_routing_strategy keeps the strategy, which then
        answers 503."""
        self._unwrap_calls()
        reset = getattr(self._router, "_reset_custom_routing_strategy", None)
        plugged = getattr(self._router, "get_available_deployment", None)
        if callable(reset) and callable(plugged) and \
                getattr(inspect.unwrap(plugged), "__self__", None) is self:
            reset()

    def wait_closed(self, timeout: Optional[float] = None) -> bool:
        """Wait up to timeout seconds (None: as long as the closing thread
        waits, at most close_timeout_s) for what close() started: True once
        the threads are joined, the tickets finished, no call of the
        strategy's is inside the library and the engine is closed (if the
        strategy made it); False before, or when close() was not called."""
        closer = self._closer
        if closer is None:
            return False
        until = None if timeout is None else time.monotonic() + timeout
        closer.join(timeout)
        if closer.is_alive() or until is None:
            return self._shut.is_set()
        # Past close_timeout_s, the last call out of the library closes.
        return self._shut.wait(max(0.0, until - time.monotonic()))

    def _shut_down(self) -> None:
        # _closing is set: no ticket is added to _open, no thread to
        # _threads, and no new route enters the library from here on.
        deadline = time.monotonic() + self.close_timeout_s
        with self._lock:
            left = list(self._open)
            self._open.clear()
            self._tasks.clear()
            self._unsent.clear()
            self._unsent_due = float("inf")
            threads, self._threads = self._threads, []
        # The engine serves other threads meanwhile: only its close must
        # wait for them.
        for tid in left:
            self._finish(tid, TicketResult(status=TicketStatus.CANCELLED))
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        reqs: List[Any] = []
        with self._lock:
            while self._calls and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
            deferred = self._deferred = self._calls > 0
            if deferred:
                stuck = self._stuck_threads()
                if self._own_engine:
                    # Not freed under the call at the interpreter's exit
                    # either (the process's end frees it).
                    self.engine._finalizer.atexit = False
            else:
                reqs = self._closing_engine()
        if not deferred:
            self._close_engine(reqs)
            return
        _log.warning("spotinfer.litellm: close: %s still inside the library after "
                     "close_timeout_s (%g s); the engine is left open, and the last of "
                     "them to return closes it", stuck, self.close_timeout_s)

    def _stuck_threads(self) -> str:
        """The threads with calls inside the library, for the log; under
        _lock."""
        names = {t.ident: t.name for t in threading.enumerate()}
        return ", ".join(f"{n} call{'s' if n > 1 else ''} in thread "
                         f"{names.get(tid, tid)!r}" for tid, n in self._inside.items())

    def _closing_engine(self) -> List[Any]:
        """No call of the strategy's enters the library from now on (its
        own engine) and its idle requests are taken; under _lock, with no
        call inside."""
        self._engine_closed = self._own_engine
        reqs, self._reqs = self._reqs, []
        return reqs

    def _close_engine(self, reqs: List[Any]) -> None:
        """The end of the close: the strategy's own engine closed (its
        requests with it), else its idle requests on the caller's."""
        try:
            if self.engine.closed:
                return
            if self._own_engine:
                self.engine.close()
                return
            for r in reqs:
                r.close()
        finally:
            self._shut.set()

    @contextlib.contextmanager
    def _library(self, *, new: bool = True) -> Iterator[None]:
        """Around the strategy's calls into the library: counted, so that
        the closer closes the engine only once none is inside. Raises
        _Closed instead once the strategy is closing for new work (``new``:
        a route, a replica sync), and for any call once its own engine is
        closed."""
        me = threading.get_ident()
        with self._lock:
            if self._engine_closed or (new and self._closing):
                raise _Closed()
            self._calls += 1
            self._inside[me] = self._inside.get(me, 0) + 1
        try:
            yield
        finally:
            last, reqs = False, []
            with self._lock:
                self._calls -= 1
                if self._inside[me] > 1:
                    self._inside[me] -= 1
                else:
                    del self._inside[me]
                if not self._calls:
                    self._idle.notify_all()
                    last, self._deferred = self._deferred, False
                    if last:
                        reqs = self._closing_engine()
            if last:
                _log.info("spotinfer.litellm: close: the last call inside the "
                          "library returned; the close is done")
                self._close_engine(reqs)

    def _closed_error(self, model: str) -> Exception:
        return litellm.ServiceUnavailableError(
            message="the spotinfer routing strategy is closed",
            llm_provider="spotinfer", model=model, response=self._answer(503))

    @property
    def router(self) -> Any:
        """The LiteLLM Router the strategy routes for."""
        return self._router

    def __enter__(self) -> "SpotinferRouting":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- load and ticks

    def _scrape(self, url: str) -> str:
        with urllib.request.urlopen(url, timeout=self.scrape_timeout_s) as resp:
            return resp.read().decode("utf-8", "replace")

    def _load_loop(self, rid: str) -> None:
        while not self._stop.is_set():
            rep = self._replicas.get(rid)
            if rep is None:
                return
            try:
                page = None if rep.metrics_url is None else self._scrape(rep.metrics_url)
                # New work: a scrape that outlasts close_timeout_s does not
                # report into an engine whose close is done.
                with self._library():
                    if page is not None:
                        self.engine.report_metrics(rid, page)
                    else:
                        # No /metrics: the reading stays fresh with no backend
                        # queue, and the library counts its own open tickets.
                        self.engine.report_load(rid, running=0.0)
                self._fresh[rid].set()
            except _Closed:
                return
            except Exception:  # noqa: BLE001 - unreachable: its load goes stale
                pass
            self._stop.wait(self.scrape_interval_s)

    def _tick_loop(self) -> None:
        while not self._stop.wait(_TICK_S):
            try:
                with self._library():
                    self.engine.tick()
            except _Closed:
                return
            except Exception:  # noqa: BLE001 - a fleet bus that failed once
                if self.engine.closed:
                    return
            try:
                self._expire_tickets()
            except Exception:  # noqa: BLE001 - the engine closed under us
                if self.engine.closed:
                    return

    @property
    def ticket_timeout_s(self) -> float:
        """How long a ticket no event finished stays open. Assignable at
        run time: the open tickets are then judged by the new value."""
        return self._ticket_timeout_s

    @ticket_timeout_s.setter
    def ticket_timeout_s(self, value: float) -> None:
        # Under the lock: a sweep computing _due from the old value then
        # writes it before this, not over it.
        with self._lock:
            self._ticket_timeout_s = float(value)
            # The open tickets' due times moved: the next sweep recomputes them.
            self._due = float("-inf")

    @property
    def late_event_wait_s(self) -> float:
        """How long a try a later route of its call took the place of waits
        for its own event, and a try routed off an event loop outside a
        Router call that LiteLLM has not sent stays open after its route.
        Assignable at run time: the tickets not sent are then judged by
        the new value (a try already left waits as it was told)."""
        return self._late_event_wait_s

    @late_event_wait_s.setter
    def late_event_wait_s(self, value: float) -> None:
        with self._lock:
            self._late_event_wait_s = float(value)
            self._unsent_due = float("-inf")    # the next sweep recomputes it

    def _expire_tickets(self) -> None:
        """Finish as CANCELLED the tickets open past ticket_timeout_s, those
        a later try took the place of whose own event did not come within
        late_event_wait_s, and those routed off an event loop outside a
        Router call that LiteLLM did not send within late_event_wait_s of
        their route. Two compares while none is due (_due, _unsent_due)."""
        now = time.monotonic()
        if self._dropped:
            with self._lock:
                self._answers_dropped(now)
        if now < self._due and now < self._unsent_due:
            return
        with self._lock:
            old = self._expire_unsent(now) if now >= self._unsent_due else []
            if now >= self._due:
                cutoff = now - self.ticket_timeout_s
                late = [tid for tid, o in self._open.items()
                        if o.opened < cutoff or 0.0 < o.until <= now]
                for tid in late:
                    del self._open[tid]
                old += late
                self._due = min((self._due_of(o) for o in self._open.values()),
                                default=float("inf"))
        for tid in old:
            self._finish(tid, TicketResult(status=TicketStatus.CANCELLED))

    def _expire_unsent(self, now: float) -> List[int]:
        """The tickets routed off an event loop outside a Router call that
        LiteLLM did not send within late_event_wait_s of their route, taken out of _open: a
        failure after the route and before the call (a deployment at its
        max_parallel_requests, a pre-call check of another callback) has
        no event. A Router call's ticket and an async route's are not
        here: another callback's hook or pre-call check may hold a try up
        for any time before it is sent, and the call's end (_call_ended)
        or its task's (_task_done) tells. Under _lock; the work
        is the entries taken off the front."""
        out: List[int] = []
        wait = self.late_event_wait_s
        while self._unsent:
            opened, tid = self._unsent[0]
            o = self._open.get(tid)
            if o is not None and not o.sent:
                if opened + wait > now:
                    break
                del self._open[tid]
                out.append(tid)
            self._unsent.popleft()
        self._unsent_due = self._unsent[0][0] + wait if self._unsent else float("inf")
        return out

    def _due_of(self, o: _Open) -> float:
        """When _expire_tickets finishes an open ticket, unless an event
        does first."""
        due = o.opened + self.ticket_timeout_s
        return min(due, o.until) if o.until else due

    def _sweep_if_due(self) -> None:
        """_expire_tickets, for a strategy that was not started (its load
        reported another way): it has no tick thread, so its routes and
        events sweep, at most once a _TICK_S and only once a ticket is due.
        A started strategy's tick thread sweeps; this is one compare."""
        if self._ticking:
            return
        now = time.monotonic()
        if (now < self._due and now < self._unsent_due and not self._dropped) or \
                now < self._swept + _TICK_S:
            return
        self._swept = now
        self._expire_tickets()

    # -- notices

    def notice(self, format: Any, body: Union[str, bytes], *, node: str = "",
               http_status: int = 200) -> List[TicketPlan]:
        """Hand in an interruption notice as the cloud serves it (any format
        of ``spotinfer.NoticeFormat``; ``node`` is the machine it came from,
        matched against each deployment's ``node``, else its id). From the
        call on, no new request goes to that machine's deployments. Returns
        the library's plan for each ticket open there (LiteLLM cannot move
        a stream that has started, so they run on where they are)."""
        plans: List[TicketPlan] = []
        notices = parse_notice(format, body, node=node, http_status=http_status)
        with self._engine_call():
            for n in notices:
                plans.extend(self.engine.notice(n))
        return plans

    def metrics(self) -> str:
        """The library's Prometheus text (serve it from the proxy's app or
        push it where the rest of the metrics go)."""
        with self._engine_call():
            return self.engine.metrics()

    @contextlib.contextmanager
    def _engine_call(self) -> Iterator[None]:
        """A call of the strategy's own API into the library (a notice, the
        metrics): after close() too while the engine is open; once the
        strategy closes its own engine, the binding's MisuseError, as the
        closed engine raises."""
        try:
            with self._library(new=False):
                yield
        except _Closed:
            raise _engine_closed_error("engine") from None

    # -- routing

    def _request(self) -> Any:
        with self._lock:
            if self._reqs:
                return self._reqs.pop()
        return self.engine.request()

    def _release(self, req: Any) -> None:
        with self._lock:
            if len(self._reqs) < 256:
                self._reqs.append(req)
                return
        req.close()

    def _retry_after(self) -> Dict[str, str]:
        return {"retry-after": str(self.retry_after_s)}

    def _answer(self, status: int) -> httpx.Response:
        """The HTTP answer an error carries: LiteLLM's retries and its proxy
        read retry-after from it."""
        return httpx.Response(status, headers=self._retry_after(),
                              request=httpx.Request("POST", "http://spotinfer.invalid/route"))

    def _decide(self, model: str, offer: _Offer) -> Any:
        """One spi_route: the decision, or a LiteLLM exception (503 once
        the strategy is closing); _NoneOffered when the library finds no
        capacity among the offered, the rest excluded."""
        try:
            with self._library():
                return self._route(model, offer)
        except _Closed:
            raise self._closed_error(model) from None

    def _route(self, model: str, offer: _Offer) -> Any:
        req = self._request()
        try:
            req.parse_openai(offer.body, offer.kind)
            if offer.excluded:              # parse_openai cleared any before
                req.exclude_replicas(offer.excluded)
            return req.route()
        except ShedError as e:
            d = e.decision
            raise litellm.RateLimitError(
                message=f"shed under KV-cache pressure: {d.reason if d else e.message}",
                llm_provider="spotinfer", model=model,
                response=self._answer(429), headers=self._retry_after()) from None
        except NoCapacityError as e:
            d = e.decision
            if offer.excluded and d is not None:
                raise _NoneOffered(d) from None
            raise litellm.ServiceUnavailableError(
                message=f"no capacity: {d.reason if d else e.message}",
                llm_provider="spotinfer", model=model,
                response=self._answer(503)) from None
        except InputError as e:
            raise litellm.BadRequestError(message=e.message or str(e), model=model,
                                          llm_provider="spotinfer") from None
        except ResourceError as e:
            # Every ticket open, or memory: the router is full, not broken.
            raise litellm.ServiceUnavailableError(
                message=f"router full: {e.message or e}", llm_provider="spotinfer",
                model=model, response=self._answer(503)) from None
        finally:
            self._release(req)

    def _place(self, model: str, d: Any, candidates: Mapping[str, Any],
               kwargs: Dict[str, Any], *, sync: bool) -> Any:
        """The deployment for a serving decision, as LiteLLM resolved it
        (candidates, by id): its replica, with the decision's ticket (the
        replicas LiteLLM left out were excluded from the decision:
        _left_out); else, where that leaves the choice open (_among_offered
        says when), the first fallback that is a candidate, served without
        a ticket. A ticket for a request that close() came to meanwhile is
        finished CANCELLED and the request fails (503): the closer has
        taken the open tickets already."""
        targets = (d.replica_id,) + tuple(d.fallback_ids)
        for i, rid in enumerate(targets):
            dep = candidates.get(rid)
            if dep is None:
                continue
            meta = self._leave_earlier_try(kwargs)
            if i == 0:
                moved_on: List[int] = []
                with self._lock:
                    closing = self._closing
                    if not closing:
                        # The sync API's route may run in a task of
                        # LiteLLM's (its sync Router runs its async code in
                        # a loop of its own) that returns before a stream
                        # is read: its tickets are its call's, else the
                        # timer's.
                        task, moved_on = (None, []) if sync else \
                            self._watch_task(d.ticket.id)
                        o = self._open[d.ticket.id] = _Open(rid, _owner(task))
                        self._due = min(self._due, self._due_of(o))
                        call = self._call.get()
                        if call is not None:    # the call's end ends it unsent
                            call.append(d.ticket.id)
                        elif task is None:  # no call or task to end with: the timer
                            self._unsent.append((o.opened, d.ticket.id))
                            self._unsent_due = min(self._unsent_due,
                                                   o.opened + self.late_event_wait_s)
                        self._keep_ticket(meta, kwargs, d.ticket.id)
                for tid in moved_on:
                    self._finish(tid, TicketResult(status=TicketStatus.CANCELLED))
                if closing:
                    self._finish(d.ticket.id, TicketResult(status=TicketStatus.CANCELLED))
                    raise self._closed_error(model)
                return self._marked(dep, d.ticket.id)
            self._finish(d.ticket.id, TicketResult(status=TicketStatus.CANCELLED))
            return self._marked(dep, 0)
        self._finish(d.ticket.id, TicketResult(status=TicketStatus.CANCELLED))
        return None

    def _watch_task(self, tid: int) -> "Tuple[Optional[asyncio.Task[Any]], List[int]]":
        """Keep a ticket being opened with the asyncio task routing it, and
        return that task (None off an event loop). LiteLLM routes a try and
        sends it in one task (the Router's call, its retries and fallbacks
        included), so a try still unsent when its task is done was never
        sent and never will be; and a task cancelled with the call in it
        (asyncio.wait_for's timeout, LiteLLM's
        abatch_completion_fastest_response cancelling the slower calls)
        gets no failure hook or event, as LiteLLM catches only Exception:
        _task_done finishes both. One done-callback a task; its set holds
        the tickets of its routes still open, so a task that routes call
        after call holds no more than its calls in flight. A task that
        routes again has moved on from its earlier tries: those it never
        sent are taken out of _open and returned, for the caller to finish
        as CANCELLED (an application's main task awaiting call after call
        may live on for hours). Under _lock."""
        task = _current_task()
        moved_on: List[int] = []
        if task is None:
            return None, moved_on
        tids = self._tasks.get(task)
        if tids is None:
            tids = self._tasks[task] = set()
            task.add_done_callback(self._task_done)
        else:
            # The task routes again: a try of its routes still unsent was
            # refused before its call (route and send run in one task).
            moved_on = self._end_tickets(tids, False)
            tids.intersection_update(self._open)
        tids.add(tid)
        return task, moved_on

    def _task_done(self, task: "asyncio.Task[Any]") -> None:
        """A task that routed is done. Each ticket it opened that is still
        open and still its call's (no later try took its place: that one's
        own event, or the sweep, ends it) is finished as CANCELLED, once,
        if LiteLLM never sent its try (refused between the route and the
        call: a deployment at its max_parallel_requests, another callback's
        pre-call check, with no event), or if the task was cancelled: the
        call (or the reading of its stream) was abandoned, with no event to
        come. One whose success event may be on its way (streamed,
        answered) waits for it late_event_wait_s, as a try a retry took the
        place of does. A sent try of a task that returned or raised is left
        to its events (a stream is served after its route's task
        returned)."""
        with self._lock:
            tids = self._tasks.pop(task, None)
            if not tids:
                return
            ended = self._end_tickets(tids, task.cancelled())
        for tid in ended:
            self._finish(tid, TicketResult(status=TicketStatus.CANCELLED))
        self._sweep_if_due()

    def _end_tickets(self, tids: Sequence[int], cancelled: bool) -> List[int]:
        """Of tickets whose task or call ended, those to finish as
        CANCELLED, taken out of _open: each still open and still its
        call's that LiteLLM never sent, or any with ``cancelled`` (no event
        comes); one whose success event may be on its way (streamed,
        answered) gets late_event_wait_s instead. Under _lock."""
        ended: List[int] = []
        now = time.monotonic()
        for tid in tids:
            o = self._open.get(tid)
            if o is None or o.until or (o.sent and not cancelled):
                continue
            if o.sent and (o.streamed or o.answered):
                o.until = now + self.late_event_wait_s
                self._due = min(self._due, o.until)
                continue
            del self._open[tid]
            ended.append(tid)
        return ended

    def _answers_dropped(self, now: float) -> None:
        """The tickets of answers their caller dropped (_call_ended's
        finalizers) wait late_event_wait_s for their event, then the sweep
        finishes them as CANCELLED: LiteLLM logs no event for a stream its
        reader stopped reading or closed. Under _lock."""
        while self._dropped:
            for tid in self._dropped.popleft():
                o = self._open.get(tid)
                if o is not None and not o.until:
                    o.until = now + self.late_event_wait_s
                    self._due = min(self._due, o.until)

    def _leave_earlier_try(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """The request's metadata, without an earlier try's ticket. LiteLLM
        keeps one metadata dict across a call's tries, and other calls may
        share it: a call's tries are told apart from theirs by its trace id
        (_tickets_by_trace); a call without one takes the dict's TICKET_KEY
        as its own; a silent_model mirror, whose metadata is a copy of the
        call's (its trace id and tickets included), MIRROR_TICKET_KEY: it
        is no retry of the call it mirrors (_is_mirror). A dict whose
        tickets another strategy keeps (ROUTING_KEY: one dict passed to two
        Routers' calls) is left as it is. A ticket still open there that
        LiteLLM never sent, routed by this task (or, off an event loop,
        this thread), is finished here as CANCELLED: LiteLLM routes and
        sends a try in one task, so the call moved on to this try with the
        earlier one refused before its call (a pre-call check, a
        deployment at its max_parallel_requests), with no event. One never
        sent of another task (another call in flight under the same trace
        id and dict) is left to that task (_task_done). Any other is not
        finished here. It is an earlier try of this call whose failure
        event comes later (a stream cut: LiteLLM logs it from a task or a
        thread of its own, and the event finishes that try's ticket, as
        ERROR, by its mark: _marked), or the try of another call in flight
        under the same trace id and dict, still served, which no route can
        tell apart. Its own event finishes it; without one within
        late_event_wait_s, the sweep does (_expire_tickets, from the tick
        thread or, without one, _sweep_if_due), as CANCELLED: never as
        ERROR for a failure that may not be its own."""
        meta = kwargs.setdefault(_metadata_name(kwargs), {})
        if meta.get(ROUTING_KEY) != self._token:
            return meta
        trace = _trace_of(kwargs)
        with self._lock:
            if _is_mirror(kwargs):
                earlier = _ticket_id(meta.pop(MIRROR_TICKET_KEY, None))
            elif trace is None:
                earlier = _ticket_id(meta.pop(TICKET_KEY, None))
            else:
                earlier = _ticket_id(self._tickets_by_trace(meta).pop(trace, None))
            o = None if earlier is None else self._open.get(earlier)
            gone = False
            if earlier is not None and o is not None and not o.until:
                if not o.sent and o.owner == _owner(_current_task()):
                    # Routed here and never sent (route and send run in one
                    # task or thread): the call moved on to this try.
                    del self._open[earlier]
                    gone = True
                elif o.sent or o.owner[0] == "thread":
                    o.until = time.monotonic() + self.late_event_wait_s
                    self._due = min(self._due, o.until)
                # else unsent, of another task: that task's end ends it.
        if gone and earlier is not None:
            self._finish(earlier, TicketResult(status=TicketStatus.CANCELLED))
        return meta

    def _tickets_by_trace(self, meta: Dict[str, Any]) -> Dict[str, Any]:
        """The metadata's tickets by trace id, holding only open ones: one
        dict reused call after call holds no more than its calls in flight.
        Called with the lock held (calls sharing the dict place at once)."""
        by_trace = meta.get(TICKETS_KEY)
        if not isinstance(by_trace, dict):
            by_trace = meta[TICKETS_KEY] = {}
        for trace in [t for t, tid in by_trace.items() if _ticket_id(tid) not in self._open]:
            del by_trace[trace]
        return by_trace

    def _keep_ticket(self, meta: Dict[str, Any], kwargs: Mapping[str, Any], tid: int) -> None:
        """Where the next try of the call and the callbacks find the placed
        ticket (_leave_earlier_try, _ticket_of). Called with the lock
        held."""
        meta[ROUTING_KEY] = self._token
        trace = _trace_of(kwargs)
        if _is_mirror(kwargs):
            meta[MIRROR_TICKET_KEY] = tid
        elif trace is None:
            meta[TICKET_KEY] = tid
        else:
            self._tickets_by_trace(meta)[trace] = tid

    def _among_offered(self, model: str, d: Any, candidates: Mapping[str, Any],
                       kwargs: Dict[str, Any]) -> Any:
        """The deployment for a serving decision none of whose replicas
        LiteLLM offers. The decision of a request LiteLLM offers a subset
        of its replicas for excluded the others (_offer_for), so this is
        for what that leaves open: more than MAX_EXCLUDED left out (the
        first MAX_EXCLUDED were excluded, and the library chose one of the
        rest), or offered deployments the library does not choose among
        (several model groups offered at once). Of the offered, those in
        the pool and model tier the library chose for the request, ACTIVE
        and with a breaker that is not open, the best as the library's
        readings rank them (a closed breaker, a fresh load, the least
        loaded for its size, the least KV usage), served without a ticket
        as a fallback is. None is usable: the request fails (503), naming
        why for each."""
        found = self._offered_status(model, candidates, kwargs)
        usable, why = [], []
        for i, (rid, st) in enumerate(found):
            bad = _unusable(st, d)
            if bad:
                why.append(f"{rid}: {bad}")
                continue
            load = (st.running + st.waiting + st.inflight) / max(1, st.max_inflight)
            usable.append(((st.breaker != BreakerState.CLOSED, not st.load_fresh,
                            load, st.kv_usage, i), rid))
        if not usable:
            raise self._none_usable(
                model, f"the library chose {d.replica_id} ({Pool(d.pool).name.lower()}), "
                       "and ", len(found), why)
        return self._marked(candidates[min(usable)[1]], 0)

    def _none_offered(self, model: str, d: Any, candidates: Mapping[str, Any],
                      kwargs: Dict[str, Any]) -> Exception:
        """The 503 of a request the library found no capacity for among the
        deployments LiteLLM offers (the rest excluded), naming why for each
        offered one and the library's reason."""
        found = self._offered_status(model, candidates, kwargs)
        why = [f"{rid}: {_unusable(st, d) or _state_of(st)}" for rid, st in found]
        return self._none_usable(model, "", len(found), why, d.reason)

    def _offered_status(self, model: str, candidates: Mapping[str, Any],
                        kwargs: Dict[str, Any]) -> List[Tuple[str, Any]]:
        """The engine's status of each offered deployment's replica, once
        the library did not place the request on one of them; the call's
        earlier try leaves its place (_leave_earlier_try), as it failed
        whatever this one gets (503 included)."""
        try:
            with self._library():
                found = [(rid, self._status(rid)) for rid in candidates]
        except _Closed:
            raise self._closed_error(model) from None
        self._leave_earlier_try(kwargs)
        return found

    def _none_usable(self, model: str, head: str, offered: int, why: List[str],
                     reason: str = "") -> Exception:
        tail = f" (the library: {reason})" if reason else ""
        return litellm.ServiceUnavailableError(
            message=f"no capacity: {head}of the {offered} deployments LiteLLM offers "
                    "for the request (the rest in cooldown or filtered out) none is "
                    f"usable: {'; '.join(why[:8])}{tail}",
            llm_provider="spotinfer", model=model, response=self._answer(503))

    def _status(self, rid: str) -> Any:
        """The engine's status of a replica; None for one it does not have
        (removed by a sync meanwhile)."""
        try:
            return self.engine.replica_status(rid)
        except NotFoundError:
            return None

    def _route_start(self, model: str,
                     request_kwargs: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """What each route does first, async or sync; returns the request's
        kwargs (a dict of its own when LiteLLM passes none). A try of this
        call still open failed (a retry is what asks again): it leaves the
        call's place here, whatever this one gets (a 429, a 503, a queue),
        and is finished by its own event or, without one, by the sweep
        (_leave_earlier_try); only a trace id tells this call's tries from
        those of other calls that share the metadata dict. Then: a 503
        once the strategy is closing, the sweep of a strategy without a
        tick thread, and the deployments read again if they changed."""
        kwargs = request_kwargs if request_kwargs is not None else {}
        if _trace_of(kwargs) is not None:
            self._leave_earlier_try(kwargs)
        if self._closing:
            raise self._closed_error(model)
        self._sweep_if_due()
        self.sync_if_changed()
        return kwargs

    async def async_get_available_deployment(
            self, model: str, messages: Optional[List[Dict[str, str]]] = None,
            input: Union[str, List[Any], None] = None,
            specific_deployment: Optional[bool] = False,
            request_kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = self._route_start(model, request_kwargs)
        if self.respect_litellm_health:
            found = await self._router.select(
                model, kwargs, kind="healthy", messages=messages, input=input,
                specific_deployment=specific_deployment)
        else:
            found = self._filtered(model, self._resolved(
                model, messages, input, specific_deployment, kwargs), health=False)
        if isinstance(found, dict):         # one named deployment: no choice
            return self._marked(found, 0)
        offer = self._offer_for(model, found, messages, input, kwargs)
        deadline = time.monotonic() + self.queue_wait_s
        d = self._decide_by(model, offer, deadline, kwargs)
        while d is None:
            await asyncio.sleep(_QUEUE_POLL_S)
            d = self._decide_by(model, offer, deadline, kwargs)
        return self._placed(model, d, offer.candidates, kwargs, sync=False)

    def get_available_deployment(
            self, model: str, messages: Optional[List[Dict[str, str]]] = None,
            input: Union[str, List[Any], None] = None,
            specific_deployment: Optional[bool] = False,
            request_kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = self._route_start(model, request_kwargs)
        found = self._filtered(model, self._resolved(
            model, messages, input, specific_deployment, kwargs),
            health=self.respect_litellm_health)
        if isinstance(found, dict):         # one named deployment: no choice
            return self._marked(found, 0)
        offer = self._offer_for(model, found, messages, input, kwargs)
        deadline = time.monotonic() + self.queue_wait_s
        d = self._decide_by(model, offer, deadline, kwargs)
        while d is None:
            time.sleep(_QUEUE_POLL_S)
            d = self._decide_by(model, offer, deadline, kwargs)
        return self._placed(model, d, offer.candidates, kwargs, sync=True)

    def _resolved(self, model: str, messages: Optional[List[Any]], input: Any,
                  specific_deployment: Optional[bool], kwargs: Dict[str, Any]) -> Any:
        """The deployments LiteLLM's Router resolves the requested model to,
        before its health checks, by its own resolution (the one its
        built-in strategies and its health checks start from): a
        model_group_alias to its target's deployments (either form), a name
        no group has to those of the wildcard group that matches it (each
        with the requested model in its litellm_params, as LiteLLM calls
        it), a team's public name to the team's; one deployment (a dict)
        where the call names one. A model the Router does not serve raises
        its BadRequestError."""
        _, found = self._router._common_checks_available_deployment(
            model=model, messages=messages, input=input,
            specific_deployment=specific_deployment, request_kwargs=kwargs)
        return found

    def _filtered(self, model: str, found: Any, *, health: bool) -> Any:
        """The resolved deployments LiteLLM's own selection keeps (the async
        route with respect_litellm_health asks the Router's select, which
        does this; the sync Router has no such call): none an admin paused
        (``model_info.blocked``), and with ``health`` none marked unhealthy
        by its background health checks or cooling down (unless its
        health-check routing drives the cooldowns and would leave none, as
        LiteLLM lets them all through then). None left: LiteLLM's 429
        (RouterRateLimitError), as its selection raises; a paused
        deployment the call names: its 503."""
        if isinstance(found, dict):
            if _paused(found):
                raise litellm.ServiceUnavailableError(
                    message=f"Model '{model}' is currently paused and cannot accept "
                            "requests.", llm_provider="", model=model)
            return found
        deps, cooling = list(found or ()), set()
        if health:
            deps, cooling = self._healthy(deps)
        kept = [d for d in deps if not _paused(d)]
        if not kept and found:
            raise _all_cooling_down(model, cooling)
        return kept

    def _healthy(self, deps: List[Any]) -> Tuple[List[Any], Set[str]]:
        """LiteLLM's health-check and cooldown filters, in its order, and
        the ids cooling down."""
        r = self._router
        check = getattr(r, "_filter_health_check_unhealthy_deployments", None)
        if callable(check):
            deps = check(healthy_deployments=deps, parent_otel_span=None)
        cooling = _cooling_down(r)
        kept = [d for d in deps if deployment_id(d) not in cooling]
        if not kept and getattr(r, "_core_enable_health_check_routing", False) and \
                getattr(r, "_core_allowed_fails_policy", None) is not None:
            kept = deps
        return kept, cooling

    def _offer_for(self, model: str, found: Any, messages: Optional[List[Any]],
                   input: Any, kwargs: Dict[str, Any]) -> _Offer:
        """The candidates LiteLLM resolved (by replica id), the body the
        library routes (its model is the group the candidates are served
        under, not the name asked for, so the library picks among them)
        and the replicas to exclude (_left_out)."""
        candidates: Dict[str, Any] = {}
        for dep in found or ():
            rid = deployment_id(dep)
            if rid is not None:
                candidates.setdefault(rid, dep)
        if not candidates:
            raise litellm.BadRequestError(
                message=f"no deployment of model={model} to route to",
                model=model, llm_provider="spotinfer")
        name = model_group(found)
        body, kind = request_body(name, messages, input, kwargs)
        return _Offer(candidates, body, kind, self._left_out(name, candidates))

    def _left_out(self, name: str, candidates: Mapping[str, Any]) -> List[str]:
        """The replicas the library would choose among for a request of
        model name (as the library is given it) that LiteLLM does not
        offer: none when it offers them all, as it does unless some are
        cooling down or filtered out (a route that excludes replicas costs
        the library more, which the common case does not pay). Also
        none when it offers a deployment the library would not choose for
        the name (several model groups at once): the offered are then no
        subset of the name's replicas, and _among_offered decides. At most
        MAX_EXCLUDED, the first in model_list order; should the library
        choose one of the rest, _place and _among_offered serve an offered
        one without a ticket, as before the library could exclude."""
        by_name, anyone, every = self._serving
        serving = anyone + by_name.get(name, ()) if name else every
        if len(serving) <= len(candidates):
            return []                       # all offered, or no subset
        inside = 0
        out: List[str] = []
        for rid in serving:
            if rid in candidates:
                inside += 1
            elif len(out) < MAX_EXCLUDED:
                out.append(rid)
        return out if inside == len(candidates) else []

    def _decide_by(self, model: str, offer: _Offer, deadline: float,
                   kwargs: Dict[str, Any]) -> Any:
        """A decision that places the request; None while the library queues
        it (ask again after _QUEUE_POLL_S); ServiceUnavailableError once it
        is still queued at deadline (time.monotonic()), or when the library
        finds no capacity among the offered (the rest excluded)."""
        try:
            d = self._decide(model, offer)
        except _NoneOffered as e:
            raise self._none_offered(model, e.decision, offer.candidates, kwargs) from None
        if d.pool != Pool.QUEUE:
            return d
        if time.monotonic() >= deadline:
            raise litellm.ServiceUnavailableError(
                message=f"no capacity: queued over {self.queue_wait_s:g} s ({d.reason})",
                llm_provider="spotinfer", model=model, response=self._answer(503))
        return None

    def _placed(self, model: str, d: Any, candidates: Mapping[str, Any],
                kwargs: Dict[str, Any], *, sync: bool) -> Any:
        dep = self._place(model, d, candidates, kwargs, sync=sync)
        if dep is None:
            dep = self._among_offered(model, d, candidates, kwargs)
        return dep

    # -- tickets, from LiteLLM's callbacks

    def _marked(self, dep: Any, tid: int) -> Any:
        """The deployment a route returns, with the try's ticket id (0:
        none) and the strategy's token (ROUTING_KEY) in a copy of its
        model_info. The Router copies a deployment's model_info into each
        try's kwargs (the deployment hooks' request_data) and from there
        into the try's logging events (their litellm_params), a copy per
        try, where the metadata's model_info is the last try's: each event
        names its own try's ticket, however late it comes, and the
        strategy that routed it."""
        info = dep.get("model_info") if isinstance(dep, dict) else None
        if not isinstance(info, dict):
            return dep
        return {**dep, "model_info": {**info, TICKET_KEY: tid, ROUTING_KEY: self._token}}

    def _ticket_of(self, data: Mapping[str, Any]) -> Optional[int]:
        """The ticket id of the try an event is about (0: a try without
        one, or routed by another strategy): its own (_try_ticket), else,
        for an event that does not say (a caller's own), the one kept in
        its metadata, or in the metadata of its litellm_params (where the
        logging events have it), by this strategy (ROUTING_KEY); a
        mirror's in MIRROR_TICKET_KEY, else under its trace id when it has
        one and was routed with it, else TICKET_KEY."""
        own = _try_ticket(data, self._token)
        if own is not None:
            return own
        trace = _trace_of(data)
        metas = [m for m in _metas(data) if m.get(ROUTING_KEY) == self._token]
        mirror = _is_mirror(data)
        if trace is not None and not mirror:
            for meta in metas:
                by_trace = meta.get(TICKETS_KEY)
                tid = _ticket_id(by_trace.get(trace)) if isinstance(by_trace, Mapping) else None
                if tid is not None:
                    return tid
        key = MIRROR_TICKET_KEY if mirror else TICKET_KEY
        for meta in metas:
            tid = _ticket_id(meta.get(key))
            if tid is not None:
                return tid
        return None

    def _finish(self, tid: int, result: TicketResult) -> None:
        try:
            with self._library(new=False):
                self.engine.ticket(tid).finish(result)
        except Exception:  # noqa: BLE001 - finished already, or engine closed
            pass

    def _done(self, status: TicketStatus, kwargs: Mapping[str, Any],
              response_obj: Any, start_time: Any, end_time: Any) -> None:
        try:
            self._finish_event(status, kwargs, response_obj, start_time, end_time)
        finally:
            # After the event's own ticket: an event that came once its
            # ticket was due still finishes it with what it says.
            self._sweep_if_due()

    def _finish_event(self, status: TicketStatus, kwargs: Mapping[str, Any],
                      response_obj: Any, start_time: Any, end_time: Any) -> None:
        tid = self._ticket_of(kwargs)
        if not tid:
            return                          # not routed here, or no ticket
        with self._lock:
            o = self._open.pop(tid, None)
        if o is None:
            return                          # another event finished it
        if status == TicketStatus.OK and (kwargs.get("cache_hit") or _disconnected(kwargs)):
            # Answered from LiteLLM's cache (the replica computed nothing),
            # or the client left mid-stream (the proxy still bills it).
            status = TicketStatus.CANCELLED
        res = ticket_result(status, kwargs, response_obj, start_time, end_time)
        if start_time is None:              # a hook: no LiteLLM timestamps
            res = TicketResult(status=res.status, prompt_tokens=res.prompt_tokens,
                               output_tokens=res.output_tokens,
                               cached_tokens=res.cached_tokens,
                               duration_ms=(time.monotonic() - o.opened) * 1000.0)
        self._finish(tid, res)

    def _mark_sent(self, data: Mapping[str, Any]) -> None:
        """The try's ticket is sent: LiteLLM hands the try to the deployment,
        and from here on a failure has its hook or its event."""
        tid = self._ticket_of(data)
        if not tid:
            return
        with self._lock:
            o = self._open.get(tid)
            if o is not None:
                o.sent = True

    # Where LiteLLM hands a try to the deployment, past its own checks
    # between the route and the call (a deployment's max_parallel_requests,
    # the pre-call checks of other callbacks), which raise with no event.
    # An async call runs the deployment hook in its call wrapper, for every
    # try; a sync call has no deployment hook: the provider logs the request
    # to the callbacks' log_pre_api_call just before sending it (every call,
    # async ones too: completion, streams, embedding, responses). Not the
    # Router's pre_call_check: it runs the callbacks' checks in their order,
    # and a check after the strategy's (LiteLLM's model rate limits) may
    # still refuse the try, with no event. An async route's ticket none of
    # them marked is finished as CANCELLED when its task is done (the
    # Router routes and sends a try in one task) or a retry of its call
    # routes in that task; a sync route's when its Router call ends
    # (log_pre_api_call runs inline in the thread that routed it, so the
    # call's end has seen it), or, outside a Router call, late_event_wait_s
    # after its route. The strategy's deployment hook runs first (add_callback puts
    # it first in litellm.callbacks), so another callback's hook that
    # raises does so inside the call wrapper, whose failure event ends the
    # ticket.

    async def async_pre_call_deployment_hook(
            self, kwargs: Dict[str, Any], call_type: Any) -> Optional[Dict[str, Any]]:
        self._mark_sent(kwargs)
        return None

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        if isinstance(kwargs, Mapping):
            self._mark_sent(kwargs)

    # The deployment hooks run inline, before LiteLLM hands the answer to
    # the caller; the logging events run later, from LiteLLM's logging
    # worker. A whole answer finishes its ticket in the hook, so the next
    # request of the conversation, sent as soon as this one returns, finds
    # the prefix where it went; a stream finishes in the success event,
    # which has its usage and the time of its first chunk.

    async def async_post_call_success_deployment_hook(
            self, request_data: Dict[str, Any], response: Any, call_type: Any) -> Any:
        if isinstance(response, litellm.ModelResponse):
            self._done(TicketStatus.OK, request_data, response, None, None)
            return None
        # Another answer (an embedding, a stream): its success event, from
        # the logging worker, finishes it.
        tid = self._ticket_of(request_data)
        if tid:
            with self._lock:
                o = self._open.get(tid)
                if o is not None:
                    o.answered = True
        return None

    async def async_post_call_failure_deployment_hook(
            self, request_data: Mapping[str, Any], exception: Exception,
            call_type: Any, fallback_depth: Optional[int] = None) -> None:
        # Inline, once per failed try, before LiteLLM retries: the try's
        # ticket ends before a retry's route puts another ticket in the
        # request's metadata (the failure event runs later, from LiteLLM's
        # logging worker, and finds it finished).
        self._done(_failure_status({"exception": exception}), request_data,
                   None, None, None)

    async def async_post_call_streaming_deployment_hook(
            self, request_data: Dict[str, Any], response_chunk: Any, call_type: Any) -> Any:
        # LiteLLM runs this hook on a stream's last chunk, not its first:
        # the time to first token comes with the success event
        # (completion_start_time: ticket_result). A first_token() here would
        # record the whole stream as the first token's wait, and the library
        # keeps the first one it is told. The stream's success event is on
        # its way: _task_done waits for it.
        tid = self._ticket_of(request_data)
        if not tid:
            return None
        with self._lock:
            o = self._open.get(tid)
            if o is not None:
                o.streamed = True
        return None

    async def async_log_success_event(self, kwargs: Any, response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        self._done(TicketStatus.OK, kwargs, response_obj, start_time, end_time)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        self._done(_failure_status(kwargs), kwargs, response_obj, start_time, end_time)

    def log_success_event(self, kwargs: Any, response_obj: Any,
                          start_time: Any, end_time: Any) -> None:
        self._done(TicketStatus.OK, kwargs, response_obj, start_time, end_time)

    def log_failure_event(self, kwargs: Any, response_obj: Any,
                          start_time: Any, end_time: Any) -> None:
        self._done(_failure_status(kwargs), kwargs, response_obj, start_time, end_time)


def _metadata_name(kwargs: Mapping[str, Any]) -> str:
    """Where LiteLLM keeps its own data for this call: its newer endpoints
    (Responses, /v1/messages, generic calls) use litellm_metadata, where
    metadata is the request's own field, sent to the provider."""
    return "litellm_metadata" if "litellm_metadata" in kwargs else "metadata"


def _unusable(st: Any, d: Any) -> str:
    """Why the library would not serve the decision's request on a replica
    of this status (None: one it does not have); "" when it would."""
    if st is None:
        return "not a replica of the library's"
    # A no-capacity decision has no pool; its model tier is the request's.
    serving = d.pool in (Pool.SPOT, Pool.ON_DEMAND)
    if (serving and st.pool != d.pool) or st.model_tier != d.model_tier:
        pool = f"{Pool(d.pool).name.lower()} " if serving else ""
        return (f"{Pool(st.pool).name.lower()} {ModelTier(st.model_tier).name.lower()}, "
                f"the request goes to {pool}{ModelTier(d.model_tier).name.lower()}")
    if st.state != ReplicaState.ACTIVE:
        return ReplicaState(st.state).name.lower()
    if st.breaker == BreakerState.OPEN:
        return "breaker open"
    return ""


def _state_of(st: Any) -> str:
    """A usable replica's state, for a 503 that names it: the library's
    reason says why it took none."""
    return f"active, {'fresh' if st.load_fresh else 'stale'} load " \
           f"{st.running + st.waiting + st.inflight:g}/{st.max_inflight}"


def _serving_map(reps: Sequence[Replica]) -> _Serving:
    """The replicas the library chooses among for a request's model name,
    by their ids in model_list order: those that list each name, those
    that serve any (no list) and every one (a request that names no
    model)."""
    by_name: Dict[str, List[str]] = {}
    anyone: List[str] = []
    for r in reps:
        if not r.info.models:
            anyone.append(r.info.id)
        for name in dict.fromkeys(r.info.models):
            by_name.setdefault(name, []).append(r.info.id)
    return ({n: tuple(ids) for n, ids in by_name.items()}, tuple(anyone),
            tuple(r.info.id for r in reps))


def _paused(dep: Any) -> bool:
    info = dep.get("model_info") if isinstance(dep, Mapping) else None
    return isinstance(info, Mapping) and info.get("blocked") is True


def _cooling_down(router: Any) -> Set[str]:
    """The ids of the deployments LiteLLM's Router is cooling down now."""
    try:
        from litellm.router_utils.cooldown_handlers import get_cooldown_deployments
        ctx = getattr(router, "_core_ctx", None)
        ids = get_cooldown_deployments(ctx=ctx, parent_otel_span=None) if ctx is not None \
            else get_cooldown_deployments(router, parent_otel_span=None)
    except Exception:  # noqa: BLE001 - a Router without cooldowns
        return set()
    return {i for i in ids or () if isinstance(i, str)}


def _all_cooling_down(model: str, cooling: Set[str]) -> Exception:
    """LiteLLM's answer when every deployment of a request is cooling
    down: its RouterRateLimitError (429, which its retries wait out)."""
    try:
        from litellm.types.router import RouterRateLimitError
        return RouterRateLimitError(model=model, cooldown_time=0.0,
                                    enable_pre_call_checks=False,
                                    cooldown_list=sorted(cooling))
    except Exception:  # noqa: BLE001 - another LiteLLM's signature
        return litellm.RateLimitError(message=f"every deployment of {model} is cooling "
                                      "down", llm_provider="spotinfer", model=model)


def _current_task() -> "Optional[asyncio.Task[Any]]":
    """The asyncio task running here; None off an event loop."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _owner(task: "Optional[asyncio.Task[Any]]") -> Tuple[str, int]:
    """What routes a ticket (_Open.owner): its task, else its thread."""
    if task is not None:
        return ("task", id(task))
    return ("thread", threading.get_ident())


def _ticket_id(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _trace_of(data: Mapping[str, Any]) -> Optional[str]:
    """A call's LiteLLM trace id: the Router gives each call one (unless the
    caller did) and keeps it across the call's retries and fallbacks; the
    deployment hooks and the logging events have it in their kwargs, and
    the logging events in their litellm_params too."""
    for where in (data, data.get("litellm_params")):
        if isinstance(where, Mapping):
            trace = where.get("litellm_trace_id")
            if isinstance(trace, str) and trace:
                return trace
    return None


def _metas(data: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    """The metadata dicts a route's kwargs or an event carry: the call's,
    the one in its litellm_params (the logging events), and LiteLLM's
    litellm_metadata (some call types)."""
    return [m for m in (data.get("metadata"), (data.get("litellm_params") or {}).get("metadata"),
                        data.get("litellm_metadata")) if isinstance(m, Mapping)]


def _is_mirror(data: Mapping[str, Any]) -> bool:
    """Whether a route or an event is of a silent_model mirror of a call:
    LiteLLM's Router runs the mirror with a copy of the call's kwargs (its
    trace id and metadata, the tickets the metadata keeps included) whose
    metadata it marks ``is_silent_experiment`` (Router.
    _get_silent_experiment_kwargs), kept across the mirror's own tries."""
    return any(meta.get("is_silent_experiment") is True for meta in _metas(data))


def _try_ticket(data: Mapping[str, Any], token: str) -> Optional[int]:
    """The ticket id (0: none) of the try an event is about, as _marked put
    it in the try's model_info: in litellm_params (the logging events) or
    at the top (the deployment hooks), never the metadata's, which the
    call's later tries overwrite. 0 for a try another strategy routed (its
    token is not ``token``: another Router's, whose engine numbers its
    tickets as this one does); None for an event with no try's mark."""
    for where in (data.get("litellm_params"), data):
        info = where.get("model_info") if isinstance(where, Mapping) else None
        if isinstance(info, Mapping) and TICKET_KEY in info:
            if info.get(ROUTING_KEY) != token:
                return 0
            return _ticket_id(info[TICKET_KEY]) or 0
    return None


def _disconnected(kwargs: Mapping[str, Any]) -> bool:
    """Whether LiteLLM's proxy marked the call's client as gone."""
    return any(meta.get("client_disconnected") for meta in _metas(kwargs))


def _failure_status(kwargs: Mapping[str, Any]) -> TicketStatus:
    """A client that went away, or an answer the request itself earned (a
    4xx other than 408 and 429: too long, bad input, refused), is
    CANCELLED: no fault of the replica's. A 5xx, a 408 or 429 (timed out,
    saturated), a timeout or a lost connection counts against it as ERROR
    (its error breaker)."""
    exc = kwargs.get("exception")
    if isinstance(exc, (asyncio.CancelledError,)) or \
            type(exc).__name__ in ("CancelledError", "ClientDisconnect") or \
            _disconnected(kwargs):
        return TicketStatus.CANCELLED
    code = getattr(exc, "status_code", None)
    if isinstance(code, int) and 400 <= code < 500 and code not in (408, 429):
        return TicketStatus.CANCELLED
    return TicketStatus.ERROR


__all__ = ["SpotinferRouting", "LITELLM_VERSION", "request_body",
           "ticket_result", "TICKET_KEY", "TICKETS_KEY", "ROUTING_KEY",
           "MIRROR_TICKET_KEY", "METADATA_KEYS"]
