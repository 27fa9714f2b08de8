"""Modules written in Python: classifier, key builder, cost model, policy,
replay store. A fleet bus is a C module only (``spi_fleet_bus_module``):
registering a Python object as one raises NotSupportedError.

A module is any object with the kind's methods; subclassing the base classes
here is optional but documents the protocol::

    class MyClassifier(spotinfer.ClassifierModule):
        on_failure = spotinfer.OnFailure.FALLBACK

        def configure(self, config: dict) -> object:
            return config.get("threshold", 3)        # the instance

        def classify(self, instance, req, pressure):
            if req.stream and (req.sla_ms or 0) < instance * 1000:
                return spotinfer.Verdict(spotinfer.Class.GOLD, reason="fast")
            return spotinfer.Class.SILVER

    engine.register_classifier("mine", MyClassifier())
    engine.configure({"modules": {"classifier": "mine"},
                      "module_config": {"mine": {"threshold": 2}}})

How the C contract maps to Python:

* ``configure(config: dict)`` runs on every configuration that selects the
  module and returns an *instance* (any object, immutable by convention)
  handed to the calls of that snapshot; ``release(instance)`` (optional)
  runs when the snapshot retires. Without ``configure`` the instance is the
  config dict itself.
* Calls may run concurrently on several threads (each holds the GIL only
  while in Python).
* ``req`` is a :class:`RequestView`, valid only during the call.
* A classifier may define ``classify_levels(instance, req)`` instead of (or
  besides) ``classify``: it returns the verdict and a
  :class:`DegradeLevels`, the plan at every pressure, in one call. A route
  classifies once, at the higher of the two pools' pressures, and needs the
  plan at the pressure of the pool it chose: such a classifier is asked
  once per route and ``classify`` is never called, where one with
  ``classify`` only is asked again when the two pressures differ. The
  verdict's plan fields (``max_output_tokens``, ``tools_allowed``,
  ``defer``) are then ignored, and the rest must not depend on pressure.
* Any exception inside a callback becomes an error status (the exception's
  ``code`` for a SpotinferError, else SPI_EMODULE) and never crosses into C;
  its text goes to the library's message where the callback has an error
  buffer (configure). The engine then falls back to the built-in or fails
  the call with ModuleFailedError according to ``on_failure``, and the
  binding chains the Python exception as that error's ``__cause__`` (when
  the failure the library reports is a module of the same kind: a
  classifier that raised and fell back is not the cause of a policy
  failing later in the route). Nothing raised in a callback is kept after
  the library call returns.
* The binding keeps the module object and its ctypes callbacks alive until
  the engine is freed, then calls the object's ``destroy()`` if it has one.

A policy's :class:`RouteContext` carries the library's per pool and tier
:class:`PoolSummary` entries (``ctx.summaries``, ``ctx.summary(pool,
tier)``). A policy that reads nothing but those and the candidates they name
sets ``summaries_only = True``: it then gets only the named candidates (fewer
than the replicas on a large fleet), and every index, in the summaries and
in its answer, refers to that compact tuple.
"""

from __future__ import annotations

import itertools
import json
import threading
from ctypes import (POINTER, byref, cast, c_uint32, c_uint64, memmove, sizeof,
                    string_at)
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, Iterable, List, Optional, Sequence,
                    Tuple, Union)

from . import _native as _n
from .enums import (Class, ModelTier, ModuleKind, OnFailure, PolicyFlags, Pool,
                    Pressure, Reason, ReplayRecordType, ServiceTier, coerce,
                    maybe_enum, signed, unsigned)
from .errors import NotSupportedError, SpotinferError
from .types import (CacheKeyValue, Classification, DegradeLevels, Price, Verdict,
                    utf8_cut)

__all__ = [
    "RequestView", "Candidate", "PoolSummary", "RouteContext", "PolicyChoice",
    "ClassifierModule", "KeyBuilderModule", "CostModelModule", "PolicyModule",
    "ReplayRecord", "ReplayStoreStats", "ReplayStoreModule",
]

_EMODULE = -60
_EBUFSIZE = -4


# -------------------------------------------------------------- the views


class RequestView:
    """The module's read-only view of a request (``spi_request_view``).

    Valid only during the callback it was passed to; reading it afterwards
    raises RuntimeError. Text fields are str (UTF-8, with surrogate escapes
    for bytes that are not), ``prompt`` is bytes; unset integers are None.
    """

    __slots__ = ("_v",)

    def __init__(self, view: _n.RequestView) -> None:
        self._v: Optional[_n.RequestView] = view

    def _view(self) -> _n.RequestView:
        v = self._v
        if v is None:
            raise RuntimeError("a RequestView is only valid during its callback")
        return v

    def _has(self, name: str) -> bool:
        f = getattr(_n.RequestView, name)
        return bool(self._view().struct_size >= f.offset + f.size)

    def _bytes(self, name: str) -> bytes:
        v = self._view()
        n = getattr(v, name + "_len")
        p = getattr(v, name)
        return string_at(p, n) if n and p else b""

    def _text(self, name: str) -> str:
        return self._bytes(name).decode("utf-8", "surrogateescape")

    def _opt(self, name: str) -> Optional[int]:
        v = self._view()
        return getattr(v, name) if getattr(v, name + "_set") else None

    @property
    def model(self) -> str: return self._text("model")
    @property
    def tokenizer_version(self) -> str: return self._text("tokenizer_version")
    @property
    def system_prompt(self) -> str: return self._text("system_prompt")
    @property
    def tools_canonical(self) -> str: return self._text("tools_canonical")
    @property
    def retrieval_template(self) -> str: return self._text("retrieval_template")
    @property
    def tenant(self) -> str: return self._text("tenant")
    @property
    def tenant_tier(self) -> str: return self._text("tenant_tier")
    @property
    def tenant_salt(self) -> str: return self._text("tenant_salt")
    @property
    def decode_profile(self) -> str: return self._text("decode_profile")
    @property
    def last_user_text(self) -> str: return self._text("last_user_text")

    @property
    def prompt(self) -> bytes:
        """The canonical prompt text."""
        return self._bytes("prompt")

    @property
    def token_ids(self) -> List[int]:
        v = self._view()
        return v.token_ids[:v.token_count] if v.token_count else []

    @property
    def explicit_class(self) -> Class:
        return maybe_enum(Class, self._view().explicit_class)

    @property
    def service_tier(self) -> ServiceTier:
        return maybe_enum(ServiceTier, self._view().service_tier)

    @property
    def priority(self) -> Optional[int]: return self._opt("priority")
    @property
    def sla_ms(self) -> Optional[int]: return self._opt("sla_ms")
    @property
    def max_output_tokens(self) -> Optional[int]: return self._opt("max_output_tokens")
    @property
    def expected_output_tokens(self) -> Optional[int]:
        return self._opt("expected_output_tokens")
    @property
    def prompt_tokens(self) -> Optional[int]: return self._opt("prompt_tokens")

    @property
    def replayable(self) -> Optional[bool]:
        r = self._opt("replayable")
        return None if r is None else bool(r)

    @property
    def stream(self) -> bool: return bool(self._view().stream)
    @property
    def has_tools(self) -> bool: return bool(self._view().has_tools)
    @property
    def message_count(self) -> int: return int(self._view().message_count)

    @property
    def priority_class(self) -> Class:
        """The class the priority maps to (classifier only; UNSET if none)."""
        if not self._has("priority_class"):
            return Class.UNSET
        return maybe_enum(Class, self._view().priority_class)

    @property
    def metadata(self) -> Dict[str, str]:
        """The metadata pairs as a dict; a key given twice keeps its later
        value, as the library does. Empty from a library before 0.3.0."""
        if not self._has("metadata_count"):
            return {}
        raw = self._bytes("metadata").split(b"\0")
        n = int(self._view().metadata_count)
        return {raw[2 * i].decode("utf-8", "surrogateescape"):
                raw[2 * i + 1].decode("utf-8", "surrogateescape")
                for i in range(min(n, len(raw) // 2))}

    @property
    def forced_model_tier(self) -> ModelTier:
        """SPI_REQ_MODEL_TIER if the caller forced one, else UNSET."""
        if not self._has("forced_model_tier"):
            return ModelTier.UNSET
        return maybe_enum(ModelTier, self._view().forced_model_tier)

    def __repr__(self) -> str:
        if self._v is None:
            return "<RequestView (expired)>"
        return f"<RequestView model={self.model!r} stream={self.stream}>"


@dataclass(frozen=True)
class Candidate:
    """One replica a policy may choose (``spi_candidate``)."""

    index: int
    id: str
    pool: Pool
    model_tier: ModelTier
    eligible: bool
    probe: bool
    fresh: bool
    running: float
    waiting: float
    kv_usage: float
    inflight: int
    max_inflight: int
    matched_blocks: int
    rendezvous: int
    est_ttft_ms: float
    usd_per_hour: float
    advised: bool = False  # rebalance advice on its machine (since 0.2.0)
    # The TTFT model's parts (since 0.3.0; 0 from an older library):
    # est_ttft_ms = router.ttft_base_ms + est_wait_ms + its own prefill.
    est_wait_ms: float = 0.0           # behind queued prefill, or for a slot
                                       # in a full batch
    served_tokens: float = 0.0         # prompt + output tokens sent since it joined
    prefill_tokens_per_s: float = 0.0  # learnt (or configured) prefill rate
    # MATCH_CONTINUED bits (since 0.3.0): a request routed here earlier
    # matched as deep and went on with blocks of its own, so this one
    # branches off a prefix requests share here.
    match_flags: int = 0


@dataclass(frozen=True)
class PoolSummary:
    """The usable candidates (eligible, or a half-open probe) of one pool and
    model tier, as the library summarised them (``spi_pool_summary``).

    Every index is into the context's ``candidates``; None where the C
    struct has -1 (none), so that a missing entry can never be mistaken for
    the last candidate. A pool that sheds the request's class has no usable
    candidate. "Busy" means inflight >= max_inflight or running + waiting >=
    max_inflight.
    """

    pool: Pool
    model_tier: ModelTier
    usable: int                # how many usable candidates there are
    top: Tuple[int, ...]       # lowest est_ttft_ms first; ties to the lower index
    warm: Optional[int]        # most matched_blocks (> 0), then lowest est_ttft_ms
    least: Optional[int]       # lowest (running + waiting + inflight) / max_inflight,
                               # ties to the fewer served_tokens / max_inflight
                               # (since 0.3.0), then to the lower index
    rendezvous: Optional[int]  # highest rendezvous weight among the not busy,
                               # ties to the lower index

    @property
    def best(self) -> Optional[int]:
        """The usable candidate with the lowest TTFT estimate (top[0])."""
        return self.top[0] if self.top else None

    @classmethod
    def _from(cls, s: _n.PoolSummary) -> "PoolSummary":
        n = min(int(s.n_top), _n.SUMMARY_TOP)
        return cls(
            pool=maybe_enum(Pool, s.pool),
            model_tier=maybe_enum(ModelTier, s.model_tier),
            usable=int(s.usable), top=tuple(s.top[:n]),
            warm=s.warm if s.warm >= 0 else None,
            least=s.least if s.least >= 0 else None,
            rendezvous=s.rendezvous if s.rendezvous >= 0 else None)


@dataclass(frozen=True)
class RouteContext:
    """Everything a policy decides from (``spi_route_context``).

    ``candidates`` holds every replica, or, for a ``summaries_only`` policy,
    only those the summaries name (in replica order); ``Candidate.index``
    and every summary index refer to this tuple either way.
    """

    req: RequestView
    cls: Optional[Classification]   # at the higher of the two pools' KV pressures
    candidates: Tuple[Candidate, ...]
    total_blocks: int
    max_fallbacks: int
    pressure: Tuple[int, int, int, int]  # by Pool
    shed: Tuple[bool, bool, bool, bool]  # by Pool: the pool sheds this class
    now_ns: int
    # In SPI_SUMMARY_INDEX order (see summary_index); empty from a library
    # older than 0.2.0.
    summaries: Tuple[PoolSummary, ...] = ()
    # By Pool, the mean served_tokens of its usable replicas, and this
    # request's prompt tokens (served_tokens counts them and the expected
    # output) (since 0.3.0;
    # zeros from an older library).
    mean_served_tokens: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    prompt_tokens: float = 0.0
    # By Pool, the mean max_inflight of its usable replicas (the same ones
    # as mean_served_tokens), so a share can be in proportion to a
    # replica's size: mean_served_tokens * max_inflight / mean_max_inflight
    # (since 0.3.0; zeros from an older library).
    mean_max_inflight: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    # In SPI_SUMMARY_INDEX order, the mean est_wait_ms of the summary's
    # usable replicas, a full batch (running >= max_inflight) counted at 0:
    # the pool and tier's prefill backlog (since 0.3.0; zeros from an older
    # library).
    mean_prefill_wait_ms: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    # When the engine last registered a spot replica (its clock, ns; 0 if
    # it never has): while the spot pool is empty, non-zero tells a fleet
    # whose spot is gone for now from one that runs none (since 0.3.0; 0
    # from an older library).
    spot_seen_ns: int = 0

    def summary(self, pool: Union[Pool, int, str],
                model_tier: Union[ModelTier, int, str]) -> Optional[PoolSummary]:
        """The summary of pool (SPOT or ON_DEMAND) and model tier (SMALL or
        LARGE); None for any other pool or tier, or when the library passed
        no summaries."""
        i = _n.summary_index(coerce(Pool, pool), coerce(ModelTier, model_tier))
        return self.summaries[i] if 0 <= i < len(self.summaries) else None


@dataclass(frozen=True)
class PolicyChoice:
    """A policy's answer: candidate indices, best first (``spi_policy_choice``).

    pool NONE (0) with reason NO_CAPACITY or SHED means "none".
    """

    pool: Pool
    order: Sequence[int] = ()
    reason_code: Reason = Reason.LEAST_LOADED
    reason: str = ""


@dataclass(frozen=True)
class ReplayRecord:
    """One record of a replay store (``spi_replay_record``)."""

    type: ReplayRecordType
    key: str
    attempts: int = 0          # NACK, DEAD
    visible_ns: int = 0        # NACK: ready again at
    envelope: Any = None       # ENQUEUE: a spotinfer.Envelope

    @classmethod
    def _from(cls, r: _n.ReplayRecord) -> "ReplayRecord":
        from .replay import Envelope
        env = Envelope._from(r.envelope.contents) if r.envelope else None
        return cls(maybe_enum(ReplayRecordType, r.type),
                   string_at(r.key, r.key_len).decode("utf-8", "surrogateescape")
                   if r.key and r.key_len else "",
                   r.attempts, r.visible_ns, env)

    def _struct(self) -> Tuple[_n.ReplayRecord, Tuple[Any, ...]]:
        from ctypes import byref as _byref, c_void_p as _vp, create_string_buffer, pointer
        key = self.key.encode("utf-8", "surrogateescape")
        kb = create_string_buffer(key, len(key) or 1)
        keep: Tuple[Any, ...] = (kb,)
        rec = _n.ReplayRecord(type=coerce(ReplayRecordType, self.type),
                              attempts=unsigned(self.attempts, 32, "attempts"),
                              key=cast(kb, _vp), key_len=len(key),
                              visible_ns=signed(self.visible_ns, 64, "visible_ns"))
        if self.envelope is not None:
            env, ekeep = self.envelope._struct()
            rec.envelope = pointer(env)
            keep += (env, ekeep)
        return rec, keep


@dataclass(frozen=True)
class ReplayStoreStats:
    """What a replay store reports about itself."""

    bytes: int = 0
    appended: int = 0
    syncs: int = 0
    recovered: int = 0
    torn: int = 0
    truncated_bytes: int = 0
    compactions: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    aside_files: int = 0
    repaired: int = 0  # records read whole despite a damaged length field


# ---------------------------------------------------------- base classes


class _ModuleBase:
    #: What the library does when a call of this module fails.
    on_failure: OnFailure = OnFailure.ERROR

    def configure(self, config: Dict[str, Any]) -> Any:
        """Return the instance for a configuration snapshot."""
        return config

    def release(self, instance: Any) -> None:
        """The snapshot that owned instance retired."""

    def destroy(self) -> None:
        """The engine was freed."""


VerdictLike = Union[Verdict, Classification, Class, int, Dict[str, Any]]


class ClassifierModule(_ModuleBase):
    def classify(self, instance: Any, req: RequestView,
                 pressure: Pressure) -> VerdictLike:
        raise NotImplementedError

    def classify_levels(
            self, instance: Any, req: RequestView
    ) -> Tuple[VerdictLike, Union[DegradeLevels, Dict[str, Any]]]:
        """Optional: the verdict and the plan at every pressure at once
        (see the module's documentation). Not used unless overridden."""
        raise NotImplementedError


class KeyBuilderModule(_ModuleBase):
    def build_key(self, instance: Any, req: RequestView) -> Union[CacheKeyValue, Tuple[int, int], int]:
        raise NotImplementedError

    def block_hashes(self, instance: Any, req: RequestView,
                     key: CacheKeyValue) -> Sequence[int]:
        raise NotImplementedError


class CostModelModule(_ModuleBase):
    def price(self, instance: Any, req: RequestView, pool: Pool) -> Union[Price, Dict[str, float]]:
        raise NotImplementedError


class PolicyModule(_ModuleBase):
    #: True: the policy reads only ``ctx.summaries`` and the candidates they
    #: name (PolicyFlags.SUMMARIES_ONLY), so the library passes only those.
    summaries_only: bool = False

    def choose(self, instance: Any, ctx: RouteContext) -> Union[PolicyChoice, Dict[str, Any]]:
        raise NotImplementedError


class ReplayStoreModule(_ModuleBase):
    """Where a replay queue keeps its records.

    ``configure(config)`` opens the store for one queue (it receives
    ``replay.store_config``) and returns the open store as the instance;
    ``release(instance)`` closes it. ``recover`` yields the stored records
    in order; ``append`` stores one and returns an increasing sequence
    number; ``sync(instance, seq)`` returns once records up to seq are
    durable; ``compact`` (optional) replaces everything by the records
    given. on_failure is not consulted: a failing store fails the queue call.
    """

    def recover(self, instance: Any) -> Iterable[ReplayRecord]:
        raise NotImplementedError

    def append(self, instance: Any, record: ReplayRecord) -> int:
        raise NotImplementedError

    def sync(self, instance: Any, seq: int) -> None:
        raise NotImplementedError

    def stats(self, instance: Any) -> ReplayStoreStats:
        return ReplayStoreStats()


# ---------------------------------------------------------------- adapters


def remember_error(errors: threading.local, kind: int,
                   exc: BaseException) -> None:
    """Keep exc, raised in a callback of a module of kind, for the library
    call running on this thread to chain as its failure's cause."""
    by_kind = getattr(errors, "by_kind", None)
    if by_kind is None:
        by_kind = errors.by_kind = {}
    by_kind[kind] = exc


def guarded(errors: threading.local, fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn, counting in errors.depth that this thread is inside one of the
    engine's callbacks while it runs: closing the engine or one of its
    handles there would free what the C call under it is using."""
    def call(*args: Any) -> Any:
        errors.depth = getattr(errors, "depth", 0) + 1
        try:
            return fn(*args)
        finally:
            errors.depth -= 1
    return call


def in_callback(errors: threading.local) -> bool:
    """Whether this thread is inside one of the engine's callbacks."""
    return getattr(errors, "depth", 0) > 0


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, SpotinferError) and exc.code < 0:
        return exc.code
    return _EMODULE


def _write_err(errbuf: Optional[int], errcap: int, text: str) -> None:
    if not errbuf or errcap <= 0:
        return
    # The library prefixes the message and shows it as UTF-8: half a
    # character at the end would read back as U+FFFD.
    data = utf8_cut(text, errcap - 1, "replace") + b"\0"
    memmove(errbuf, data, len(data))


def _verdict(result: Any) -> Verdict:
    if isinstance(result, Verdict):
        return result
    if isinstance(result, Classification):
        return Verdict(result.klass, result.replayable, result.model_tier,
                       result.rule_index, result.complexity,
                       result.max_output_tokens, result.tools_allowed,
                       result.defer, result.reason)
    if isinstance(result, dict):
        return Verdict(**result)
    if isinstance(result, int) and not isinstance(result, bool):
        return Verdict(result)  # type: ignore[arg-type]
    raise TypeError(f"classify returned {type(result).__name__}, expected "
                    "Verdict, Classification, Class or dict")


class _Adapter:
    """The C module struct for one Python module object, with the ctypes
    callbacks it points to. Lives until the engine is freed."""

    def __init__(self, kind: int, name: str, impl: Any, on_failure: int,
                 errors: threading.local, flags: int = 0) -> None:
        self.kind = kind
        self.flags = flags
        self.name = name
        self.impl = impl
        self.errors = errors
        self.instances: Dict[int, Any] = {}
        self.ids = itertools.count(1)
        self.configure_fn = self._cb(_n.CONFIGURE_FN, self._configure)
        self.release_fn = self._cb(_n.RELEASE_FN, self._release)
        self.destroy_fn = self._cb(_n.DESTROY_FN, self._destroy)
        self.struct: Any = None
        self.on_failure = on_failure

    def _cb(self, ftype: Any, method: Callable[..., Any]) -> Any:
        """The ctypes callback of ftype for method, marked as a callback."""
        return ftype(guarded(self.errors, method))

    def _failed(self, exc: BaseException) -> int:
        remember_error(self.errors, self.kind, exc)
        return _status_of(exc)

    def _configure(self, _state: Any, text: Optional[int], n: int,
                   out_inst: Any, errbuf: Optional[int], errcap: int) -> int:
        try:
            raw = string_at(text, n) if text and n else b"{}"
            config = json.loads(raw)
            conf = getattr(self.impl, "configure", None)
            inst = conf(config) if conf is not None else config
            key = next(self.ids)
            self.instances[key] = inst
            out_inst[0] = key
            return 0
        except BaseException as e:  # never let an exception reach C
            _write_err(errbuf, errcap, f"{type(e).__name__}: {e}")
            return self._failed(e)

    def _release(self, _state: Any, inst: Optional[int]) -> None:
        try:
            obj = self.instances.pop(inst or 0, None)
            rel = getattr(self.impl, "release", None)
            if rel is not None:
                rel(obj)
        except BaseException:
            pass  # C cannot take it, and no call fails for it

    def _destroy(self, _state: Any) -> None:
        try:
            self.instances.clear()
            d = getattr(self.impl, "destroy", None)
            if d is not None:
                d()
        except BaseException:
            pass  # C cannot take it, and no call fails for it

    def _instance(self, inst: Optional[int]) -> Any:
        return self.instances[inst or 0]


def _levels(result: Any) -> DegradeLevels:
    if isinstance(result, DegradeLevels):
        return result
    if isinstance(result, dict):
        return DegradeLevels(**{k: tuple(v) for k, v in result.items()})
    raise TypeError(f"classify_levels returned {type(result).__name__} for "
                    "the levels, expected DegradeLevels or dict")


def _has_levels(impl: Any) -> bool:
    """Whether impl answers classify_levels (not the base class's stub)."""
    fn = getattr(impl, "classify_levels", None)
    if not callable(fn):
        return False
    return getattr(fn, "__func__", None) is not ClassifierModule.classify_levels


class _ClassifierAdapter(_Adapter):
    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.classify_fn = self._cb(_n.CLASSIFY_FN, self._classify)
        self.struct = _n.ClassifierModule(
            on_failure=self.on_failure, configure=self.configure_fn,
            release=self.release_fn, classify=self.classify_fn)
        if _has_levels(self.impl):
            self.classify_levels_fn = self._cb(_n.CLASSIFY_LEVELS_FN,
                                               self._classify_levels)
            self.struct.classify_levels = self.classify_levels_fn

    def _classify_levels(self, _s: Any, inst: Optional[int], req: Any,
                         out: Any, levels: Any) -> int:
        view = RequestView(req.contents)
        try:
            verdict, lv = self.impl.classify_levels(self._instance(inst), view)
            _verdict(verdict)._fill(out.contents)
            _levels(lv)._fill(levels.contents)
            return 0
        except BaseException as e:
            return self._failed(e)
        finally:
            view._v = None

    def _classify(self, _s: Any, inst: Optional[int], req: Any, pressure: int,
                  out: Any) -> int:
        view = RequestView(req.contents)
        try:
            res = self.impl.classify(self._instance(inst), view,
                                     maybe_enum(Pressure, pressure))
            _verdict(res)._fill(out.contents)
            return 0
        except BaseException as e:
            return self._failed(e)
        finally:
            view._v = None


class _KeyBuilderAdapter(_Adapter):
    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.build_key_fn = self._cb(_n.BUILD_KEY_FN, self._build_key)
        self.block_hashes_fn = self._cb(_n.BLOCK_HASHES_FN, self._block_hashes)
        self.struct = _n.KeyBuilderModule(
            on_failure=self.on_failure, configure=self.configure_fn,
            release=self.release_fn, build_key=self.build_key_fn,
            block_hashes=self.block_hashes_fn)

    def _build_key(self, _s: Any, inst: Optional[int], req: Any, out: Any) -> int:
        view = RequestView(req.contents)
        try:
            k = self.impl.build_key(self._instance(inst), view)
            if isinstance(k, CacheKeyValue):
                hi, lo = k.high64, k.low64
            elif isinstance(k, tuple):
                hi, lo = k
            else:
                whole = unsigned(k, 128, "key")
                hi, lo = whole >> 64, whole & (2**64 - 1)
            out.contents.high64 = unsigned(hi, 64, "key high64")
            out.contents.low64 = unsigned(lo, 64, "key low64")
            return 0
        except BaseException as e:
            return self._failed(e)
        finally:
            view._v = None

    def _block_hashes(self, _s: Any, inst: Optional[int], req: Any, key: Any,
                      out: Any, cap: int, n_out: Any) -> int:
        view = RequestView(req.contents)
        try:
            k = key.contents
            hashes = list(self.impl.block_hashes(
                self._instance(inst), view, CacheKeyValue(k.high64, k.low64)))
            for i, h in enumerate(hashes[:cap]):
                out[i] = unsigned(h, 64, "block hash")
            n_out[0] = len(hashes)
            # More blocks than room: the first cap are written, and the
            # library asks again with a larger buffer.
            return 0 if len(hashes) <= cap else _EBUFSIZE
        except BaseException as e:
            return self._failed(e)
        finally:
            view._v = None


class _CostModelAdapter(_Adapter):
    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.price_fn = self._cb(_n.PRICE_FN, self._price)
        self.struct = _n.CostModelModule(
            on_failure=self.on_failure, configure=self.configure_fn,
            release=self.release_fn, price=self.price_fn)

    def _price(self, _s: Any, inst: Optional[int], req: Any, pool: int,
               out: Any) -> int:
        view = RequestView(req.contents)
        try:
            p = self.impl.price(self._instance(inst), view, maybe_enum(Pool, pool))
            d = p if isinstance(p, dict) else {
                k: getattr(p, k) for k in ("prompt_tokens", "output_tokens",
                                           "gpu_seconds", "usd", "usd_per_million")}
            o = out.contents
            for k in ("prompt_tokens", "output_tokens", "gpu_seconds", "usd",
                      "usd_per_million"):
                setattr(o, k, float(d.get(k, 0.0)))
            return 0
        except BaseException as e:
            return self._failed(e)
        finally:
            view._v = None


def _candidates(ctx: _n.RouteContext) -> Tuple[Candidate, ...]:
    out = []
    stride = ctx.candidate_size or sizeof(_n.Candidate)
    base = ctx.candidates or 0
    for i in range(ctx.n_candidates):
        if stride >= sizeof(_n.Candidate):
            c = cast(base + i * stride, POINTER(_n.Candidate)).contents
        else:  # an older library's shorter struct: the rest reads as 0
            c = _n.Candidate()
            memmove(byref(c), base + i * stride, stride)
        out.append(Candidate(
            index=i,
            id=string_at(c.id, c.id_len).decode("utf-8", "surrogateescape") if c.id else "",
            pool=maybe_enum(Pool, c.pool), model_tier=maybe_enum(ModelTier, c.model_tier),
            eligible=bool(c.eligible), probe=bool(c.probe), fresh=bool(c.fresh),
            running=c.running, waiting=c.waiting, kv_usage=c.kv_usage,
            inflight=c.inflight, max_inflight=c.max_inflight,
            matched_blocks=c.matched_blocks, rendezvous=c.rendezvous,
            est_ttft_ms=c.est_ttft_ms, usd_per_hour=c.usd_per_hour,
            advised=bool(c.advised), est_wait_ms=c.est_wait_ms,
            served_tokens=c.served_tokens,
            prefill_tokens_per_s=c.prefill_tokens_per_s,
            match_flags=c.match_flags))
    return tuple(out)


_MODEL_END = _n.RouteContext.prompt_tokens.offset + _n.RouteContext.prompt_tokens.size


_SIZES_END = (_n.RouteContext.mean_max_inflight.offset +
              _n.RouteContext.mean_max_inflight.size)
_BACKLOG_END = (_n.RouteContext.mean_prefill_wait_ms.offset +
                _n.RouteContext.mean_prefill_wait_ms.size)
_SPOT_SEEN_END = (_n.RouteContext.spot_seen_ns.offset +
                  _n.RouteContext.spot_seen_ns.size)


def _model_fields(ctx: _n.RouteContext) -> Dict[str, Any]:
    """mean_served_tokens, prompt_tokens, mean_max_inflight,
    mean_prefill_wait_ms and spot_seen_ns, each when struct_size covers
    it."""
    if ctx.struct_size < _MODEL_END:
        return {}
    out = {"mean_served_tokens": tuple(ctx.mean_served_tokens),
           "prompt_tokens": ctx.prompt_tokens}
    if ctx.struct_size >= _SIZES_END:
        out["mean_max_inflight"] = tuple(ctx.mean_max_inflight)
    if ctx.struct_size >= _BACKLOG_END:
        out["mean_prefill_wait_ms"] = tuple(ctx.mean_prefill_wait_ms)
    if ctx.struct_size >= _SPOT_SEEN_END:
        out["spot_seen_ns"] = ctx.spot_seen_ns
    return out


_SUMMARIES_END = _n.RouteContext.n_summaries.offset + _n.RouteContext.n_summaries.size


def _blank_summary() -> _n.PoolSummary:
    s = _n.PoolSummary(warm=-1, least=-1, rendezvous=-1)
    for j in range(_n.SUMMARY_TOP):
        s.top[j] = -1
    return s


def _summaries(ctx: _n.RouteContext) -> Tuple[PoolSummary, ...]:
    """The context's summaries, when its struct_size covers them; each is
    summary_size bytes after the previous one."""
    if ctx.struct_size < _SUMMARIES_END or not ctx.summaries or not ctx.n_summaries:
        return ()
    stride = ctx.summary_size or sizeof(_n.PoolSummary)
    base = ctx.summaries
    out = []
    for i in range(ctx.n_summaries):
        if stride >= sizeof(_n.PoolSummary):
            s = cast(base + i * stride, POINTER(_n.PoolSummary)).contents
        else:  # a shorter struct than this binding knows: the rest is "none"
            s = _blank_summary()
            memmove(byref(s), base + i * stride, stride)
        out.append(PoolSummary._from(s))
    return tuple(out)


def policy_flags(impl: Any, flags: Optional[int] = None,
                 summaries_only: Optional[bool] = None) -> int:
    """spi_policy_module.flags for a policy object: the flags given, plus
    SUMMARIES_ONLY from the argument, else from the object's
    ``summaries_only`` attribute."""
    out = 0 if flags is None else signed(flags, 32, "flags")
    if summaries_only is None:
        summaries_only = bool(getattr(impl, "summaries_only", False))
    if summaries_only:
        out |= int(PolicyFlags.SUMMARIES_ONLY)
    return out


class _PolicyAdapter(_Adapter):
    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.choose_fn = self._cb(_n.CHOOSE_FN, self._choose)
        self.struct = _n.PolicyModule(
            on_failure=self.on_failure, flags=self.flags,
            configure=self.configure_fn, release=self.release_fn,
            choose=self.choose_fn)

    def _choose(self, _s: Any, inst: Optional[int], ctx_p: Any, out: Any) -> int:
        c = ctx_p.contents
        view = RequestView(c.req.contents) if c.req else None
        try:
            ctx = RouteContext(
                req=view if view is not None else RequestView(_n.RequestView()),
                cls=Classification._from(c.cls.contents) if c.cls else None,
                candidates=_candidates(c),
                total_blocks=c.total_blocks, max_fallbacks=c.max_fallbacks,
                pressure=tuple(c.pressure),
                shed=tuple(bool(s) for s in c.shed),  # type: ignore[arg-type]
                now_ns=c.now_ns, summaries=_summaries(c), **_model_fields(c))
            ch = self.impl.choose(self._instance(inst), ctx)
            if isinstance(ch, dict):
                ch = PolicyChoice(**ch)
            o = out.contents
            order = list(ch.order)[:1 + _n.MAX_FALLBACKS]
            o.pool = coerce(Pool, ch.pool)
            o.reason_code = coerce(Reason, ch.reason_code)
            o.n_order = len(order)
            for i, idx in enumerate(order):
                o.order[i] = unsigned(idx, 32, "order")
            o.reason = utf8_cut(ch.reason, 159)
            return 0
        except BaseException as e:
            return self._failed(e)
        finally:
            if view is not None:
                view._v = None


class _ReplayStoreAdapter(_Adapter):
    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.recover_fn = self._cb(_n.RECOVER_FN, self._recover)
        self.append_fn = self._cb(_n.APPEND_FN, self._append)
        self.sync_fn = self._cb(_n.SYNC_FN, self._sync)
        self.compact_fn = self._cb(_n.COMPACT_FN, self._compact)
        self.stats_fn = self._cb(_n.STORE_STATS_FN, self._stats)
        self.struct = _n.ReplayStoreModule(
            on_failure=self.on_failure, configure=self.configure_fn,
            release=self.release_fn, recover=self.recover_fn,
            append=self.append_fn, sync=self.sync_fn,
            compact=self.compact_fn if callable(getattr(self.impl, "compact", None))
            else _n.COMPACT_FN(), stats=self.stats_fn)

    def _err(self, e: BaseException, errbuf: Optional[int], errcap: int) -> int:
        _write_err(errbuf, errcap, f"{type(e).__name__}: {e}")
        return self._failed(e)

    def _recover(self, _s: Any, inst: Optional[int], fn: Any, ud: Optional[int],
                 errbuf: Optional[int], errcap: int) -> int:
        try:
            for rec in self.impl.recover(self._instance(inst)):
                c, keep = rec._struct()
                rc = fn(ud, c)
                del keep
                if rc != 0:
                    return int(rc)
            return 0
        except BaseException as e:
            return self._err(e, errbuf, errcap)

    def _append(self, _s: Any, inst: Optional[int], rec: Any, out_seq: Any,
                errbuf: Optional[int], errcap: int) -> int:
        try:
            seq = self.impl.append(self._instance(inst), ReplayRecord._from(rec.contents))
            out_seq[0] = unsigned(seq, 64, "append's sequence number")
            return 0
        except BaseException as e:
            return self._err(e, errbuf, errcap)

    def _sync(self, _s: Any, inst: Optional[int], seq: int, errbuf: Optional[int],
              errcap: int) -> int:
        try:
            self.impl.sync(self._instance(inst), int(seq))
            return 0
        except BaseException as e:
            return self._err(e, errbuf, errcap)

    def _compact(self, _s: Any, inst: Optional[int], recs: Any, n: int,
                 errbuf: Optional[int], errcap: int) -> int:
        try:
            self.impl.compact(self._instance(inst),
                              [ReplayRecord._from(recs[i]) for i in range(n)])
            return 0
        except BaseException as e:
            return self._err(e, errbuf, errcap)

    def _stats(self, _s: Any, inst: Optional[int], out: Any) -> int:
        try:
            st = self.impl.stats(self._instance(inst))
            o = out.contents
            for k in ("bytes", "appended", "syncs", "recovered", "torn",
                      "truncated_bytes", "compactions", "skipped",
                      "skipped_bytes", "aside_files", "repaired"):
                f = getattr(_n.ReplayStoreStats, k)
                if o.struct_size < f.offset + f.size:
                    continue  # a library whose struct ends before it
                setattr(o, k, unsigned(getattr(st, k, 0) if not isinstance(st, dict)
                                       else st.get(k, 0), 64, k))
            return 0
        except BaseException as e:
            return self._failed(e)


_ADAPTERS = {
    int(ModuleKind.CLASSIFIER): _ClassifierAdapter,
    int(ModuleKind.KEY_BUILDER): _KeyBuilderAdapter,
    int(ModuleKind.COST_MODEL): _CostModelAdapter,
    int(ModuleKind.POLICY): _PolicyAdapter,
    int(ModuleKind.REPLAY_STORE): _ReplayStoreAdapter,
}

_REQUIRED = {
    int(ModuleKind.CLASSIFIER): ("classify",),
    int(ModuleKind.KEY_BUILDER): ("build_key", "block_hashes"),
    int(ModuleKind.COST_MODEL): ("price",),
    int(ModuleKind.POLICY): ("choose",),
    int(ModuleKind.REPLAY_STORE): ("recover", "append", "sync"),
}


def build_module(kind: int, name: str, impl: Any, on_failure: int,
                 errors: threading.local, flags: int = 0) -> _Adapter:
    """The adapter (C struct + callbacks) for a Python module object;
    flags go to a policy's spi_policy_module.flags."""
    if kind == ModuleKind.FLEET_BUS:
        raise NotSupportedError(
            NotSupportedError.CODE,
            f"fleet bus {name!r}: a fleet bus cannot be written in Python; it "
            "is a C module (spi_fleet_bus_module, spotinfer_module.h), such "
            'as the Redis one: {"modules": {"fleet_bus": "redis"}}',
            status_name="not supported")
    cls = _ADAPTERS.get(kind)
    if cls is None:
        # The library decides what it supports (reserved kinds give
        # NotSupportedError); hand it a bare classifier-shaped struct of the
        # common fields so the status comes from C.
        adapter = _Adapter(kind, name, impl, on_failure, errors)
        adapter.struct = _n.ClassifierModule(
            on_failure=on_failure, configure=adapter.configure_fn,
            release=adapter.release_fn)
        return adapter
    for meth in _REQUIRED[kind]:
        if kind == ModuleKind.CLASSIFIER and _has_levels(impl):
            break  # classify_levels answers every call
        if not callable(getattr(impl, meth, None)):
            raise TypeError(f"a {ModuleKind(kind).name.lower()} module needs a "
                            f"{meth}() method; {type(impl).__name__} has none")
    return cls(kind, name, impl, on_failure, errors, flags)
