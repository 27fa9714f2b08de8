"""Engine, Request, Decision and Ticket: the Pythonic face of libspotinfer."""

from __future__ import annotations

import array
import itertools
import json
import os
import re
import threading
import weakref
from ctypes import (byref, c_char, c_int32, c_int64, c_size_t, c_uint32, c_uint64,
                    c_void_p, create_string_buffer, sizeof, string_at)
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List,
                    Mapping, Optional, Sequence, Tuple, TypeVar, Union, cast)

from . import _native as _n
from .enums import (Class, LogLevel, ModelTier, ModuleKind, OnFailure,
                    OpenAIKind, PolicyFlags, Pool, PriorityScheme, Pressure,
                    Reason, ReplicaState, ReqInt, ReqStr, ServiceTier,
                    TicketStatus, coerce, maybe_enum, signed, unsigned)
from .errors import (InvalidArgumentError, MisuseError, ModuleError,
                     RangeError, RoutingError, SpotinferError, StaleError)
from .modules import guarded, in_callback
from .types import (CacheKeyValue, Classification, LedgerRow, Load, Price,
                    ReplicaInfo, ReplicaStatus, Signals, TicketResult)

if TYPE_CHECKING:  # imported where used, at run time
    from .enums import NodeState
    from .notices import Notice, TicketPlan
    from .replay import ReplayQueue

_lib = _n.lib

Text = Union[str, bytes]
Config = Union[str, bytes, Mapping[str, Any], "os.PathLike[str]", None]
Body = Union[str, bytes, bytearray, memoryview, Mapping[str, Any]]

# Bits of a C size_t (an index the library takes).
_SIZE_BITS = 8 * sizeof(c_size_t)

__all__ = ["Engine", "Request", "Decision", "Ticket"]


def _b(value: Text) -> bytes:
    """Text as bytes. str is UTF-8, with lone surrogates (from bytes read
    back through surrogateescape) turned back into the bytes they were."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected str or bytes, got {type(value).__name__}")


def _s(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _fixed_text(data: bytes, size: int, what: str) -> bytes:
    """data for a C char[size] field: ValueError when it does not fit with
    its terminating NUL or holds a NUL (C would read it cut short)."""
    if len(data) >= size:
        raise ValueError(f"{what}: {len(data)} bytes, at most {size - 1} fit")
    if b"\0" in data:
        raise ValueError(f"{what}: contains a NUL byte")
    return data


def _closed(what: str) -> MisuseError:
    return MisuseError(-2, f"the {what} is closed", status_name="misuse")


def _refuse_close_in_callback(st: "_EngineState", what: str,
                              handle: Optional[c_void_p] = None) -> None:
    """MisuseError when this thread is inside one of the engine's callbacks
    (a module, a hook, the node transition callback) and the C call under
    it still uses what would be freed: the engine, or (handle) a request or
    replay queue that call was made on. Other requests may be closed there."""
    errors = st.callback_error
    if st.ptr is None or not in_callback(errors):
        return
    if handle is not None and handle.value not in \
            [h.value for h in getattr(errors, "busy", ())]:
        return
    raise MisuseError(-2, f"the {what} cannot be closed from inside a "
                      "callback of a call that uses it", status_name="misuse")


_O = TypeVar("_O", bound="_Owned")


class _Owned:
    """The life cycle of a handle an engine owns (a request, a replay
    queue): freed by close(), at the end of a with block, or with its
    engine, whichever comes first."""

    _what = "handle"               # its name in the closed error
    _engine: "Engine"              # the engine that owns it
    _ptr: Optional[c_void_p]
    _fin: Callable[[], None]       # frees it once; from engine._st.adopt

    def close(self) -> None:
        """Free it (a replay queue flushes first). Idempotent. MisuseError
        inside a callback of its engine."""
        if self._ptr is not None:
            _refuse_close_in_callback(self._engine._st, self._what, self._ptr)
        self._fin()
        self._ptr = None

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def __enter__(self: _O) -> _O:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _p(self) -> c_void_p:
        p = self._ptr
        if p is None:
            raise _closed(self._what)
        return p


# ------------------------------------------------------------------ engine


class _EngineState:
    """What must outlive the Engine object until the C engine is freed.

    It never refers to the Engine itself, so weakref.finalize can hold it.
    """

    def __init__(self) -> None:
        self.ptr: Optional[c_void_p] = None
        # ctypes callback objects and module adapters C may call; dropped
        # only after spi_engine_free() returned.
        self.keep: List[Any] = []
        self.node_cb: Any = None  # the node transition callback C holds
        # Live requests and replay queues: key -> (finalizer, weakref to
        # the object); the engine frees them before itself.
        self.requests: Dict[int, Tuple[weakref.finalize, "weakref.ref[Any]"]] = {}
        # Reentrant: the garbage collector may run a request's finalizer
        # (_free_child, which takes it) at any allocation, including one
        # made while this thread holds it.
        self.lock = threading.RLock()
        self.seq = itertools.count(1)
        # The exceptions raised inside Python module callbacks during the
        # current call, per thread and by module kind (by_kind, filled by
        # modules.remember_error), so a failed call can chain its module's
        # as the cause.
        self.callback_error = threading.local()
        self.has_py_modules = False

    def adopt(self, obj: Any, free_fn: Callable[[Any], None],
              ptr: c_void_p) -> weakref.finalize:
        """Track a C object owned by this engine; the returned finalizer
        frees it (at most once, and never after the engine)."""
        key = next(self.seq)
        fin = weakref.finalize(obj, _free_child, free_fn, ptr, self, key)
        fin.atexit = False  # the engine's finalizer frees what is left
        with self.lock:
            self.requests[key] = (fin, weakref.ref(obj))
        return fin

    def free(self) -> None:
        # All under the lock, which a child's free holds while it runs (on
        # another thread, or the collector's): the engine is freed only
        # after it, and a child freed later finds ptr None and leaves what
        # the engine's free released alone. The table is swapped out, so a
        # finalizer the collector runs on this thread meanwhile (the lock
        # is reentrant) pops from the new, empty one.
        with self.lock:
            taken, self.requests = self.requests, {}
            # Children must be freed before their engine (a finalizer that
            # already ran makes fin() do nothing).
            for fin, ref in list(taken.values()):
                fin()
                r = ref()
                if r is not None:
                    r._ptr = None
            ptr, self.ptr = self.ptr, None
            if ptr is not None:
                _lib.spi_engine_free(ptr)
        self.keep.clear()


def _json_text(config: Union[str, bytes, Mapping[str, Any]]) -> bytes:
    if isinstance(config, Mapping):
        return json.dumps(config, separators=(",", ":")).encode("utf-8")
    return _b(config)


class Engine:
    """A libspotinfer engine: configuration, modules, replicas, routing.

    ``config`` is JSON text (str/bytes), a dict, or a path (``pathlib.Path``
    or any ``os.PathLike``) to a JSON file; None keeps the defaults.

    Hooks: ``clock`` returns wall-clock nanoseconds since the Unix epoch (a
    fake clock makes every time-dependent decision deterministic); ``log``
    receives ``(LogLevel, message)`` for lines up to ``log_level``. Hooks
    are called on the thread making the library call and must not call back
    into this engine. An exception in a hook is swallowed (the clock then
    reads the real time), because C cannot receive it.

    Thread safety is the library's: many threads may classify, key, price
    and route on one engine at once, each with its own Request; ``configure``
    may run concurrently with them; ``register_*`` and ``close`` must not.

    Use it as a context manager or call ``close()``; a finalizer frees the
    engine if neither happened. Closing frees the engine's requests first.
    """

    def __init__(self, config: Config = None, *,
                 clock: Optional[Callable[[], int]] = None,
                 log: Optional[Callable[[LogLevel, str], None]] = None,
                 log_level: Union[LogLevel, int] = LogLevel.WARN) -> None:
        st = _EngineState()
        self._st = st
        hooks = None
        if clock is not None or log is not None:
            hooks = _n.Hooks()
            if clock is not None:
                hooks.clock = _n.CLOCK_FN(
                    guarded(st.callback_error, _clock_trampoline(clock)))
                st.keep.append(hooks.clock)
            if log is not None:
                hooks.log = _n.LOG_FN(
                    guarded(st.callback_error, _log_trampoline(log)))
                hooks.log_level = coerce(LogLevel, log_level)
                st.keep.append(hooks.log)
        ptr = c_void_p()
        _lib.spi_engine_new(byref(ptr), byref(hooks) if hooks is not None else None)
        st.ptr = ptr
        self._finalizer = weakref.finalize(self, st.free)
        if config is not None:
            try:
                self.configure(config)
            except BaseException:
                self.close()
                raise

    # -- life cycle

    def close(self) -> None:
        """Free the engine (and any request still open on it). Idempotent.
        MisuseError inside one of the engine's callbacks (a module, a hook,
        the node transition callback): the call under it still uses it."""
        _refuse_close_in_callback(self._st, "engine")
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._st.ptr is None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<spotinfer.Engine {state} at {id(self):#x}>"

    def _p(self) -> c_void_p:
        p = self._st.ptr
        if p is None:
            raise _closed("engine")
        return p

    @property
    def errmsg(self) -> str:
        """The message of the last failed call on this engine ("" if none)."""
        return _s(_lib.spi_engine_errmsg(self._p()) or b"")

    # -- configuration

    def configure(self, config: Config) -> None:
        """Replace the configuration (all-or-nothing; errors name the key path)."""
        if config is None:
            config = "{}"
        if isinstance(config, os.PathLike):
            self.configure_file(config)
            return
        text = _json_text(config)
        self._call_modules(_lib.spi_engine_configure, self._p(), text, len(text))

    def configure_file(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Replace the configuration with the contents of a JSON file."""
        self._call_modules(_lib.spi_engine_configure_file, self._p(),
                           os.fsencode(path))

    def config_json(self) -> str:
        """The effective configuration as canonical JSON, defaults filled in."""
        return _s(_sized_text(_lib.spi_engine_config_json, self._p()))

    @property
    def config(self) -> Dict[str, Any]:
        """The effective configuration, parsed."""
        return json.loads(self.config_json())  # type: ignore[no-any-return]

    # -- vocabularies

    def class_to_priority(self, scheme: Union[PriorityScheme, int, str],
                          klass: Union[Class, int, str]) -> int:
        out = c_int32()
        _lib.spi_engine_class_to_priority(self._p(), coerce(PriorityScheme, scheme),
                                          coerce(Class, klass), byref(out))
        return out.value

    def class_from_priority(self, scheme: Union[PriorityScheme, int, str],
                            priority: int) -> Class:
        out = c_int32()
        _lib.spi_engine_class_from_priority(self._p(), coerce(PriorityScheme, scheme),
                                            signed(priority, 32, "priority"),
                                            byref(out))
        return maybe_enum(Class, out.value)

    def class_to_service_tier(self, klass: Union[Class, int, str]) -> ServiceTier:
        out = c_int32()
        _lib.spi_engine_class_to_service_tier(self._p(), coerce(Class, klass),
                                              byref(out))
        return maybe_enum(ServiceTier, out.value)

    def class_from_service_tier(self, tier: Union[ServiceTier, int, str]) -> Class:
        out = c_int32()
        _lib.spi_engine_class_from_service_tier(self._p(), coerce(ServiceTier, tier),
                                                byref(out))
        return maybe_enum(Class, out.value)

    # -- requests

    def request(self, **attrs: Any) -> "Request":
        """A new empty request on this engine; keyword arguments set attributes."""
        return Request(self, **attrs)

    def parse_openai(self, body: Body,
                     kind: Union[OpenAIKind, int, str] = OpenAIKind.AUTO) -> "Request":
        """A new request read from an OpenAI chat or completions body."""
        return Request.from_openai(self, body, kind)

    # -- modules

    def register_module(self, kind: Union[ModuleKind, int, str], name: str,
                        module: Any, *,
                        on_failure: Union[OnFailure, int, str, None] = None,
                        flags: Union[PolicyFlags, int, None] = None,
                        summaries_only: Optional[bool] = None) -> None:
        """Register a module implemented in Python under name.

        ``module`` is an object with the kind's methods (see
        :mod:`spotinfer.modules`). ``on_failure`` defaults to the object's
        ``on_failure`` attribute, else ``OnFailure.ERROR``. Select it with
        ``{"modules": {"<kind>": name}}``; its section of ``module_config``
        is passed to ``configure``. Must not run concurrently with other
        calls on the engine. A fleet bus cannot be written in Python
        (NotSupportedError): it is a C module.

        Policies only: ``flags`` (PolicyFlags) go to the module struct as
        given (the library refuses bits it does not know with
        InvalidArgumentError); ``summaries_only`` adds
        ``PolicyFlags.SUMMARIES_ONLY`` and defaults to the object's
        ``summaries_only`` attribute, else False.
        """
        from .modules import build_module, policy_flags
        kind_i = coerce(ModuleKind, kind)
        if on_failure is None:
            on_failure = getattr(module, "on_failure", OnFailure.ERROR)
        if kind_i == ModuleKind.POLICY:
            raw = None if flags is None else coerce(PolicyFlags, flags)
            mflags = policy_flags(module, raw, summaries_only)
        elif flags is not None or summaries_only is not None:
            raise TypeError("flags and summaries_only apply to policy modules only")
        else:
            mflags = 0
        adapter = build_module(kind_i, name, module, coerce(OnFailure, on_failure),
                               self._st.callback_error, mflags)
        nb = _b(name)
        # Keep the adapter alive before C can call it; drop it again if
        # registration fails (then destroy is never called).
        self._st.keep.append(adapter)
        try:
            _lib.spi_engine_register_module(self._p(), kind_i, nb, len(nb),
                                            byref(adapter.struct), None,
                                            adapter.destroy_fn)
        except BaseException:
            self._st.keep.remove(adapter)
            raise
        self._st.has_py_modules = True

    def register_classifier(self, name: str, module: Any, **kw: Any) -> None:
        """Register a classifier module written in Python."""
        self.register_module(ModuleKind.CLASSIFIER, name, module, **kw)

    def register_key_builder(self, name: str, module: Any, **kw: Any) -> None:
        """Register a key-builder module written in Python."""
        self.register_module(ModuleKind.KEY_BUILDER, name, module, **kw)

    def register_cost_model(self, name: str, module: Any, **kw: Any) -> None:
        """Register a cost-model module written in Python."""
        self.register_module(ModuleKind.COST_MODEL, name, module, **kw)

    def register_policy(self, name: str, module: Any, **kw: Any) -> None:
        """Register a routing policy module written in Python
        (``summaries_only=True``: it reads only the summaries and the
        candidates they name, see :class:`spotinfer.RouteContext`)."""
        self.register_module(ModuleKind.POLICY, name, module, **kw)

    def register_replay_store(self, name: str, module: Any, **kw: Any) -> None:
        """Register a replay store written in Python; select it with
        ``{"store": name}`` in the replay queue's configuration."""
        self.register_module(ModuleKind.REPLAY_STORE, name, module, **kw)

    def module_names(self, kind: Union[ModuleKind, int, str]) -> List[str]:
        """Names of the registered modules of a kind, in registration order."""
        kind_i = coerce(ModuleKind, kind)
        names: List[str] = []
        out = c_void_p()
        for i in itertools.count():
            if _lib.spi_engine_module_name(self._p(), kind_i, i, byref(out)) < 0:
                break
            names.append(_s(string_at(cast(int, out.value))))
        return names

    # -- replicas

    def upsert_replica(self, info: Union[ReplicaInfo, str, None] = None,
                       **fields: Any) -> None:
        """Add or update a replica: a ReplicaInfo, or its fields as keywords
        (``engine.upsert_replica(id="r1", pool=Pool.SPOT, usd_per_hour=1.8)``)."""
        if info is None or isinstance(info, str):
            if isinstance(info, str):
                fields["id"] = info
            info = ReplicaInfo(**fields)
        elif fields:
            raise TypeError("pass a ReplicaInfo or keyword fields, not both")
        rid, zone, itype = _b(info.id), _b(info.zone), _b(info.instance_type)
        node = _b(info.node)
        models = info.models
        mtext = _b(models if isinstance(models, (str, bytes)) else ",".join(models))
        s = _n.ReplicaInfo(
            id=rid, id_len=len(rid), pool=coerce(Pool, info.pool),
            model_tier=coerce(ModelTier, info.model_tier), zone=zone,
            zone_len=len(zone), instance_type=itype, instance_type_len=len(itype),
            models=mtext, models_len=len(mtext),
            usd_per_hour=float(info.usd_per_hour),
            max_inflight=unsigned(info.max_inflight, 32, "max_inflight"),
            node=node, node_len=len(node),
            decode_tokens_per_s=float(info.decode_tokens_per_s))
        _lib.spi_replica_upsert(self._p(), byref(s))

    def remove_replica(self, replica_id: Text) -> None:
        rid = _b(replica_id)
        _lib.spi_replica_remove(self._p(), rid, len(rid))

    def set_replica_state(self, replica_id: Text,
                          state: Union[ReplicaState, int, str]) -> None:
        rid = _b(replica_id)
        _lib.spi_replica_set_state(self._p(), rid, len(rid),
                                   coerce(ReplicaState, state))

    def report_load(self, replica_id: Text, load: Optional[Load] = None, *,
                    running: float = 0.0, waiting: float = 0.0,
                    kv_usage: float = 0.0, at_ns: int = 0) -> None:
        """Report a replica's load (a Load, or its fields as keywords)."""
        if load is None:
            load = Load(running, waiting, kv_usage, at_ns)
        rid = _b(replica_id)
        s = load._struct()
        _lib.spi_replica_report_load(self._p(), rid, len(rid), byref(s))

    def report_metrics(self, replica_id: Text, text: Text) -> None:
        """Parse a vLLM/SGLang /metrics page and report it as the replica's load."""
        rid, t = _b(replica_id), _b(text)
        _lib.spi_replica_report_metrics(self._p(), rid, len(rid), t, len(t))

    def replica_count(self) -> int:
        return int(_lib.spi_replica_count(self._p()))

    def replica_status(self, replica_id: Text) -> ReplicaStatus:
        rid = _b(replica_id)
        out = _n.ReplicaStatus()
        _lib.spi_replica_status_of(self._p(), rid, len(rid), byref(out))
        return ReplicaStatus._from(out)

    def replica_status_at(self, index: int) -> ReplicaStatus:
        out = _n.ReplicaStatus()
        _lib.spi_replica_status_at(self._p(), unsigned(index, _SIZE_BITS, "index"),
                                   byref(out))
        return ReplicaStatus._from(out)

    def replicas(self) -> List[ReplicaStatus]:
        """The status of every replica, in order of addition."""
        out: List[ReplicaStatus] = []
        for i in range(self.replica_count()):
            try:
                out.append(self.replica_status_at(i))
            except SpotinferError:  # removed meanwhile
                break
        return out

    # -- notices and nodes

    def notice(self, notice: "Notice") -> List["TicketPlan"]:
        """Hand in an interruption notice; returns the plan (DRAIN or
        REPLAY) for every ticket open on the machine.

        The library plans once per notice (a repeat is a no-op), so the
        buffer is sized up front from the tickets open on the whole engine.
        Should more tickets open meanwhile than it holds, BufferSizeError is
        raised with the plans that fitted in its ``plans`` attribute.
        """
        from .notices import TicketPlan
        c_notice = notice._struct()
        open_now = sum(s.inflight for s in self.replicas()) if \
            _lib.has("spi_replica_count") else 0
        cap = 2 * open_now + 64
        plans = (_n.TicketPlan * cap)()
        plans[0].struct_size = sizeof(_n.TicketPlan)  # the element size
        n = c_size_t()
        try:
            _lib.spi_engine_notice(self._p(), byref(c_notice), plans, cap, byref(n))
        except SpotinferError as e:
            if e.code == -4:
                e.plans = [TicketPlan._from(p) for p in plans]  # type: ignore[attr-defined]
            raise
        return [TicketPlan._from(plans[i]) for i in range(n.value)]

    def set_node_state(self, node: Text, state: Union["NodeState", int, str]) -> None:
        """Move a machine to a state by hand (DRAINING, TERMINATED, REMOVED...)."""
        from .enums import NodeState
        nb = _b(node)
        _lib.spi_node_set_state(self._p(), nb, len(nb), coerce(NodeState, state))

    def node_state(self, node: Text) -> "NodeState":
        """A machine's state (ACTIVE for one the engine never heard of)."""
        from .enums import NodeState
        nb = _b(node)
        out = c_int32()
        _lib.spi_node_get_state(self._p(), nb, len(nb), byref(out))
        return maybe_enum(NodeState, out.value)

    def on_node_transition(self, fn: Optional[Callable[[str, "NodeState", "NodeState"], None]]) -> None:
        """Call fn(node, from_state, to_state) on every node transition
        (None clears it). from_state == to_state (NOTICED or DRAINING) says
        the machine's deadline moved: ask node_plans() again. fn runs on the
        thread whose call caused the transition (or another thread's call
        that reported the waiting transitions first), with no engine lock
        held: it may call back into the engine (add or remove replicas,
        node_plans, hand in a notice), but not on_node_transition or close;
        exceptions in it are swallowed. Not concurrent with other calls on
        the engine."""
        from .enums import NodeState
        if fn is None:
            _lib.spi_engine_on_node_transition(self._p(), _n.NODE_FN(), None)
            self._drop_node_callback(None)
            return

        def tramp(_ud: Any, node: Optional[int], n: int, a: int, b: int) -> None:
            try:
                name = _s(string_at(node, n)) if node and n else ""
                fn(name, maybe_enum(NodeState, a), maybe_enum(NodeState, b))
            except BaseException:
                pass
        cb = _n.NODE_FN(guarded(self._st.callback_error, tramp))
        self._st.keep.append(cb)  # C may call it until it is replaced
        _lib.spi_engine_on_node_transition(self._p(), cb, None)
        self._drop_node_callback(cb)

    def _drop_node_callback(self, new: Any) -> None:
        """Let the callback C called until now go, new taking its place;
        kept when set from inside a callback, where it may be running."""
        st = self._st
        old, st.node_cb = st.node_cb, new
        if old is not None and not in_callback(st.callback_error):
            st.keep.remove(old)

    def tick(self) -> None:
        """Periodic node work: expired rebalance advice, deadlines passed,
        and, with a fleet bus, what other engines published (ModuleError
        when the bus failed in it; local state is kept either way)."""
        _lib.spi_engine_tick(self._p())

    def node_plans(self, node: Text) -> List["TicketPlan"]:
        """The plan for every ticket open on a noticed or draining machine,
        computed now: for a machine a fleet bus noticed inside tick() (the
        node transition callback says so). Any other machine has none."""
        from .notices import TicketPlan
        nb = _b(node)
        cap = 64
        while True:
            plans = (_n.TicketPlan * cap)()
            plans[0].struct_size = sizeof(_n.TicketPlan)  # the element size
            n = c_size_t()
            try:
                _lib.spi_engine_node_plans(self._p(), nb, len(nb), plans, cap,
                                           byref(n))
            except SpotinferError as e:
                if e.code == -4 and n.value > cap:
                    cap = n.value + 64  # tickets opened meanwhile
                    continue
                raise
            return [TicketPlan._from(plans[i]) for i in range(n.value)]

    def fleet_stats(self) -> Dict[str, Any]:
        """What the fleet bus ({"modules": {"fleet_bus": name}}) did since
        the engine was made: the spi_fleet_stats fields by name."""
        out = _n.FleetStats()
        _lib.spi_engine_fleet_stats(self._p(), byref(out))
        stats: Dict[str, Any] = {f[0]: getattr(out, f[0]) for f in out._fields_
                                 if f[0] not in ("struct_size", "reserved0")}
        stats["configured"] = bool(stats["configured"])
        stats["last_error"] = _s(out.last_error)
        return stats

    def replay_queue(self, config: Union[str, bytes, Mapping[str, Any]] = '{"store":"memory"}') -> "ReplayQueue":
        """Open a replay queue on this engine (see :class:`ReplayQueue`)."""
        from .replay import ReplayQueue
        return ReplayQueue(self, config)

    # -- tickets

    def ticket(self, ticket_id: int) -> "Ticket":
        """A Ticket object for a ticket id (e.g. one stored elsewhere)."""
        return Ticket(self, unsigned(ticket_id, 64, "ticket_id"))

    # -- ledger, signals, metrics

    def ledger(self) -> List[LedgerRow]:
        """The cost ledger's rows."""
        rows: List[LedgerRow] = []
        n = int(_lib.spi_ledger_count(self._p()))
        out = _n.LedgerRow()
        for i in range(n):
            _lib.spi_ledger_row_at(self._p(), i, byref(out))
            rows.append(LedgerRow._from(out))
        return rows

    def ledger_row(self, index: int) -> LedgerRow:
        out = _n.LedgerRow()
        _lib.spi_ledger_row_at(self._p(), unsigned(index, _SIZE_BITS, "index"),
                               byref(out))
        return LedgerRow._from(out)

    def ledger_count(self) -> int:
        return int(_lib.spi_ledger_count(self._p()))

    def signals(self) -> Signals:
        out = _n.Signals()
        _lib.spi_engine_signals(self._p(), byref(out))
        return Signals._from(out)

    def metrics(self) -> str:
        """The engine's metrics in Prometheus text exposition format."""
        return _s(_sized_text(_lib.spi_engine_metrics, self._p()))

    # -- internals

    def _call_modules(self, fn: Callable[..., int], *args: Any) -> int:
        """Call fn; if it fails because a Python module failed, chain the
        exception that module's callback raised as the cause. Nothing
        raised inside a callback stays referenced after the call."""
        st = self._st
        errors = st.callback_error
        # The handle this call is made on (a request, a replay queue), which
        # a callback under it must not close.
        busy = errors.__dict__.setdefault("busy", [])
        busy.append(args[0])
        try:
            if not st.has_py_modules:
                return fn(*args)
            errors.by_kind = {}
            try:
                return fn(*args)
            except SpotinferError as e:
                cause = _cause_of(e, errors.by_kind)
                if cause is not None:
                    raise e from cause
                raise
            finally:
                errors.by_kind = {}
        finally:
            busy.pop()


# The kinds of module a failure's message names: '<kind> module "name"'
# (a module's call or configure), 'replay store "name"' and 'replay
# recovery:' (a replay store's).
_FAILED_KIND = re.compile(
    r'\b(?:(?P<kind>' + "|".join(k.name.lower() for k in ModuleKind) +
    r')\s+module\s+"|(?P<store>replay\s+(?:store\s+"|recovery:)))')


def _cause_of(err: SpotinferError,
              by_kind: Dict[int, BaseException]) -> Optional[BaseException]:
    """The exception a Python module of the kind err's message names raised
    during the call, if any: one raised by a module of another kind (say a
    classifier that fell back to the built-in before a policy failed) is
    not the cause."""
    if not by_kind:
        return None
    m = _FAILED_KIND.search(err.message)
    if m is None:
        return None
    kind = (ModuleKind.REPLAY_STORE if m.group("store")
            else ModuleKind[m.group("kind").upper()])
    return by_kind.get(int(kind))


def _sized_text(fn: Callable[..., int], handle: c_void_p) -> bytes:
    """Call a (handle, buf, cap, needed) function that may say EBUFSIZE."""
    needed = c_size_t(0)
    cap = 4096
    for _ in range(8):  # the text may grow between calls (a reload)
        buf = create_string_buffer(cap)
        if fn(handle, buf, cap, byref(needed)) == 0:
            return buf.raw[:needed.value]
        cap = needed.value + 1
    raise RuntimeError(f"{fn.__name__}: text kept growing")


def _clock_trampoline(clock: Callable[[], int]) -> Callable[[Any], int]:
    import time

    def tramp(_ud: Any) -> int:
        try:
            # A fraction of a nanosecond (time.time() * 1e9) is dropped.
            t = clock()
            return signed(int(t) if isinstance(t, float) else t, 64, "clock")
        except BaseException:  # C cannot take an exception; use real time
            return time.time_ns()
    return tramp


def _log_trampoline(log: Callable[[LogLevel, str], None]) -> Callable[..., None]:
    def tramp(_ud: Any, level: int, msg: Optional[int], n: int) -> None:
        try:
            text = string_at(msg, n).decode("utf-8", "replace") if msg else ""
            log(maybe_enum(LogLevel, level), text)
        except BaseException:
            pass
    return tramp


# ----------------------------------------------------------------- request


class _StrAttr:
    """A string attribute of a request, read and written through the C API."""

    def __init__(self, field: ReqStr, doc: str = "") -> None:
        self.field = int(field)
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, req: Optional["Request"], owner: type) -> Any:
        if req is None:
            return self
        return _s(req.get_bytes(self.field))

    def __set__(self, req: "Request", value: Optional[Text]) -> None:
        req.set_str(self.field, b"" if value is None else value)


_INT_NAMES = {int(m): m.name.lower() for m in ReqInt}


class _IntAttr:
    """An integer attribute; None reads as unset and unsets it."""

    def __init__(self, field: ReqInt, as_bool: bool = False, doc: str = "") -> None:
        self.field = int(field)
        self.as_bool = as_bool
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, req: Optional["Request"], owner: type) -> Any:
        if req is None:
            return self
        v = req.get_int(self.field)
        if v is None or not self.as_bool:
            return v
        return bool(v)

    def __set__(self, req: "Request", value: Optional[int]) -> None:
        if value is None:
            req.unset_int(self.field)
        else:
            req.set_int(self.field, value)


class Request(_Owned):
    """One LLM request, built field by field or read from an OpenAI body.

    A request belongs to its engine and is used by one thread at a time.
    Attributes read and write through the library (unset strings read as
    "", unset integers as None; assigning None unsets). Binary values round
    trip: bytes that are not UTF-8 read back as str with surrogate escapes
    and are written back unchanged.
    """

    model = _StrAttr(ReqStr.MODEL)
    tokenizer_version = _StrAttr(ReqStr.TOKENIZER_VERSION)
    system_prompt = _StrAttr(ReqStr.SYSTEM_PROMPT,
                             "Overrides system messages for the key.")
    tools_json = _StrAttr(ReqStr.TOOLS_JSON, "A JSON array of tool definitions.")
    retrieval_template = _StrAttr(ReqStr.RETRIEVAL_TEMPLATE)
    tenant = _StrAttr(ReqStr.TENANT)
    tenant_tier = _StrAttr(ReqStr.TENANT_TIER)
    tenant_salt = _StrAttr(ReqStr.TENANT_SALT)
    decode_profile = _StrAttr(ReqStr.DECODE_PROFILE)
    service_tier = _StrAttr(ReqStr.SERVICE_TIER, "OpenAI service_tier text.")
    user = _StrAttr(ReqStr.USER)
    prompt = _StrAttr(ReqStr.PROMPT, "Completions prompt text.")
    request_id = _StrAttr(ReqStr.REQUEST_ID)

    priority = _IntAttr(ReqInt.PRIORITY, doc="vLLM convention: lower is more urgent.")
    sla_ms = _IntAttr(ReqInt.SLA_MS)
    stream = _IntAttr(ReqInt.STREAM, as_bool=True)
    replayable = _IntAttr(ReqInt.REPLAYABLE, as_bool=True)
    max_output_tokens = _IntAttr(ReqInt.MAX_OUTPUT_TOKENS)
    expected_output_tokens = _IntAttr(ReqInt.EXPECTED_OUTPUT_TOKENS)
    prompt_tokens = _IntAttr(ReqInt.PROMPT_TOKENS)
    model_tier = _IntAttr(ReqInt.MODEL_TIER, doc="Force a ModelTier.")
    replay_since_ns = _IntAttr(ReqInt.REPLAY_SINCE_NS,
                               doc="This request replays one interrupted at this time.")

    def __init__(self, engine: Engine, **attrs: Any) -> None:
        st = engine._st
        ptr = c_void_p()
        _lib.spi_request_new(engine._p(), byref(ptr))
        self._engine = engine
        self._ptr: Optional[c_void_p] = ptr
        self._blocks = (c_uint64 * 64)()
        self._fin = st.adopt(self, _lib.spi_request_free, ptr)
        for k, v in attrs.items():
            if k == "messages":
                self.add_messages(v)
            elif k == "metadata":
                self.update_metadata(v)
            elif k == "token_ids":
                self.set_token_ids(v)
            elif k == "exclude":
                self.exclude_replicas(v)
            elif k == "tools":
                self.set_tools(v)
            elif k in ("klass", "explicit_class"):
                self.explicit_class = v
            elif isinstance(getattr(type(self), k, None), (_StrAttr, _IntAttr)):
                setattr(self, k, v)
            else:
                raise TypeError(f"Request has no attribute {k!r}")

    @classmethod
    def from_openai(cls, engine: Engine, body: Body,
                    kind: Union[OpenAIKind, int, str] = OpenAIKind.AUTO) -> "Request":
        """A new request read from an OpenAI body (str, bytes or dict)."""
        r = cls(engine)
        try:
            r.parse_openai(body, kind)
        except BaseException:
            r.close()
            raise
        return r

    # -- life cycle (close, closed, with: _Owned)

    _what = "request"

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def errmsg(self) -> str:
        """The message of the last failed call on this request ("" if none)."""
        return _s(_lib.spi_request_errmsg(self._p()) or b"")

    def reset(self) -> None:
        """Clear every attribute (keeps the memory for reuse)."""
        _lib.spi_request_reset(self._p())

    # -- fields

    def parse_openai(self, body: Body,
                     kind: Union[OpenAIKind, int, str] = OpenAIKind.AUTO) -> None:
        """Reset, then fill from an OpenAI body. All-or-nothing: on error the
        request is left empty and the exception names the field path."""
        if isinstance(body, Mapping):
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        else:
            data = _b(body)
        _lib.spi_request_parse_openai(self._p(), data, len(data),
                                      coerce(OpenAIKind, kind))

    def set_str(self, field: Union[ReqStr, int, str], value: Text) -> None:
        v = _b(value)
        _lib.spi_request_set_str(self._p(), coerce(ReqStr, field), v, len(v))

    def get_bytes(self, field: Union[ReqStr, int, str]) -> bytes:
        """A string attribute as the exact bytes the library holds."""
        p, n = c_void_p(), c_size_t()
        _lib.spi_request_get_str(self._p(), coerce(ReqStr, field), byref(p), byref(n))
        return string_at(cast(int, p.value), n.value) if n.value else b""

    def get_str(self, field: Union[ReqStr, int, str]) -> str:
        return _s(self.get_bytes(field))

    def set_int(self, field: Union[ReqInt, int, str], value: int) -> None:
        """Set an integer attribute (int64_t: RangeError outside it)."""
        f = coerce(ReqInt, field)
        v = signed(value, 64, _INT_NAMES.get(f) or f"field {f}")
        _lib.spi_request_set_int(self._p(), f, v)

    def unset_int(self, field: Union[ReqInt, int, str]) -> None:
        _lib.spi_request_unset_int(self._p(), coerce(ReqInt, field))

    def get_int(self, field: Union[ReqInt, int, str]) -> Optional[int]:
        """An integer attribute, or None when unset."""
        v, is_set = c_int64(), c_int32()
        _lib.spi_request_get_int(self._p(), coerce(ReqInt, field), byref(v),
                                 byref(is_set))
        return v.value if is_set.value else None

    @property
    def explicit_class(self) -> str:
        """The explicit class ("gold", "silver", "bronze", or "" if none).
        Accepts a Class or its name."""
        return self.get_str(ReqStr.CLASS)

    @explicit_class.setter
    def explicit_class(self, value: Union[Class, str, None]) -> None:
        """Class.UNSET, None or "" clears it."""
        if isinstance(value, Class):
            value = "" if value == Class.UNSET else value.name.lower()
        self.set_str(ReqStr.CLASS, value or b"")

    def set_tools(self, tools: Union[Sequence[Any], Text]) -> None:
        """Tools as a list of definitions (serialised) or JSON text."""
        if isinstance(tools, (str, bytes)):
            self.set_str(ReqStr.TOOLS_JSON, tools)
        else:
            self.set_str(ReqStr.TOOLS_JSON, json.dumps(list(tools)))

    def add_message(self, role: Text, content: Text) -> None:
        """Append a chat message (system, developer, user, assistant, tool)."""
        r, c = _b(role), _b(content)
        _lib.spi_request_add_message(self._p(), r, len(r), c, len(c))

    def add_messages(self, messages: Iterable[Any]) -> None:
        """Append messages given as {"role", "content"} dicts or (role, content)."""
        for m in messages:
            if isinstance(m, Mapping):
                self.add_message(m["role"], m.get("content") or "")
            else:
                role, content = m
                self.add_message(role, content)

    @property
    def message_count(self) -> int:
        return int(_lib.spi_request_message_count(self._p()))

    def set_metadata(self, key: Text, value: Union[Text, int, bool]) -> None:
        """Add a metadata pair; known keys (class, priority, sla_ms, ...) also
        set their attribute. Integers and booleans are sent as text."""
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int):
            value = str(value)
        k, v = _b(key), _b(value)
        _lib.spi_request_set_metadata(self._p(), k, len(k), v, len(v))

    def update_metadata(self, pairs: Mapping[str, Any]) -> None:
        for k, v in pairs.items():
            self.set_metadata(k, v)

    def exclude_replica(self, replica_id: Text) -> None:
        """Keep this request off a replica: route() treats it as not usable
        (never chosen, never a fallback), all else as usual; with nothing
        left, the usual no-capacity or queue outcome. For a retry after a
        replica failed, or a proxy that offers only some replicas. Up to
        MAX_EXCLUDED distinct ids (1..63 bytes); an id no replica has
        excludes nothing. They stay until reset() or parse_openai()."""
        i = _b(replica_id)
        _lib.spi_request_exclude_replica(self._p(), i, len(i))

    def exclude_replicas(self, replica_ids: Iterable[Text]) -> None:
        """exclude_replica for each id. A single id (a str or bytes) is
        refused with TypeError: iterated, it would exclude its characters."""
        if isinstance(replica_ids, (str, bytes, bytearray)):
            raise TypeError("exclude_replicas takes a collection of replica "
                            "ids, not one id: use exclude_replica")
        for i in replica_ids:
            self.exclude_replica(i)

    def set_token_ids(self, ids: Sequence[int]) -> None:
        """Give the prompt as token ids (uint32); an empty sequence clears them."""
        arr = ids if isinstance(ids, array.array) and ids.typecode == "I" \
            else _token_array(ids)
        if arr.itemsize != 4:  # pragma: no cover - exotic platforms
            arr = (c_uint32 * len(ids))(*ids)  # type: ignore[assignment]
            _lib.spi_request_set_token_ids(self._p(), arr, len(ids))
            return
        addr, n = arr.buffer_info()
        _lib.spi_request_set_token_ids(self._p(), addr if n else None, n)

    def canonical_prompt(self) -> bytes:
        """The canonical prompt text the prefix blocks are cut from."""
        p, n = c_void_p(), c_size_t()
        _lib.spi_request_canonical_prompt(self._p(), byref(p), byref(n))
        return string_at(cast(int, p.value), n.value) if n.value else b""

    # -- decisions

    def classify(self, pressure: Union[Pressure, int, str] = Pressure.NORMAL) -> Classification:
        """Classify with the engine's classifier at a pressure level."""
        out = _n.Classification()
        self._engine._call_modules(_lib.spi_classify, self._p(),
                                   coerce(Pressure, pressure), byref(out))
        return Classification._from(out)

    def cache_key(self) -> str:
        """The versioned KV-cache key as 32 lowercase hex digits."""
        return self.cache_key_value().hex

    def cache_key_value(self) -> CacheKeyValue:
        """The versioned KV-cache key as its two 64-bit halves."""
        k = _n.CacheKey()
        self._engine._call_modules(_lib.spi_request_cache_key, self._p(), byref(k))
        return CacheKeyValue(k.high64, k.low64)

    def block_hashes(self) -> List[int]:
        """The chained hashes of the prompt's full prefix blocks."""
        n = c_size_t()
        buf = self._blocks
        rc = self._engine._call_modules(_lib.spi_request_block_hashes, self._p(),
                                        buf, len(buf), byref(n))
        if rc != 0:  # EBUFSIZE: more blocks than the buffer holds
            buf = self._blocks = (c_uint64 * n.value)()
            self._engine._call_modules(_lib.spi_request_block_hashes, self._p(),
                                       buf, len(buf), byref(n))
        return buf[:n.value]

    def block_count(self) -> int:
        """How many full prefix blocks the prompt has (capped by max_blocks)."""
        n = c_size_t()
        self._engine._call_modules(_lib.spi_request_block_hashes, self._p(),
                                   None, 0, byref(n))
        return n.value

    def price(self, pool: Union[Pool, int, str] = Pool.SPOT) -> Price:
        """What serving this request costs on a pool."""
        out = _n.Price()
        self._engine._call_modules(_lib.spi_request_price, self._p(),
                                   coerce(Pool, pool), byref(out))
        return Price._from(out)

    def route(self) -> "Decision":
        """Route: classify, key, choose pool and replica, open a ticket.

        Raises ShedError (retry later, HTTP 429) or NoCapacityError (HTTP
        503), whose ``decision`` still carries the class, reason and key.
        """
        out = _n.Decision()
        try:
            self._engine._call_modules(_lib.spi_route, self._p(), byref(out))
        except RoutingError as e:
            e.decision = Decision._from(out, self._engine)
            raise
        return Decision._from(out, self._engine)

    def __repr__(self) -> str:
        if self.closed:
            return "<spotinfer.Request closed>"
        return f"<spotinfer.Request model={self.model!r} messages={self.message_count}>"


def _token_array(ids: Sequence[int]) -> "array.array[int]":
    """ids as an array of uint32; RangeError for one outside it (array
    raises OverflowError, which is not the ValueError every other integer
    the binding checks gives)."""
    try:
        return array.array("I", ids)
    except OverflowError:
        for v in ids:
            unsigned(v, 32, "token id")
        raise


def _free_child(free_fn: Callable[[Any], None], ptr: c_void_p,
                st: _EngineState, key: int) -> None:
    # Under the lock, so that the engine is not freed while free_fn runs
    # (spi_request_free and spi_replay_close use their engine).
    with st.lock:
        st.requests.pop(key, None)
        if st.ptr is not None:  # else the engine's own free released it
            free_fn(ptr)


# ------------------------------------------------------- decisions, tickets


class Ticket:
    """An open ticket of a routed request: report on it, then finish it.

    As a context manager it finishes with OK on a normal exit and ERROR when
    the block raises, unless it was finished inside the block. A finish the
    library refused inside the block (InvalidArgumentError, RangeError)
    leaves the ticket open, so the exit finishes it, as ERROR when the
    refusal propagates. A ticket the library already closed because its
    replica was removed (StaleError) is not an error at the exit, and an
    error at the exit never replaces the exception the block raised.
    """

    __slots__ = ("engine", "id", "finished")

    def __init__(self, engine: Engine, ticket_id: int) -> None:
        self.engine = engine
        self.id = ticket_id
        self.finished = False

    def first_token(self) -> None:
        """The first token was streamed (records TTFT by class)."""
        _lib.spi_ticket_first_token(self.engine._p(), self.id)

    def progress(self, tokens_streamed: int) -> None:
        """Tokens streamed so far (monotonic)."""
        _lib.spi_ticket_progress(self.engine._p(), self.id,
                                 unsigned(tokens_streamed, 64, "tokens_streamed"))

    def finish(self, status: Union[TicketStatus, int, str, TicketResult] = TicketStatus.OK, *,
               prompt_tokens: int = 0, output_tokens: int = 0,
               cached_tokens: int = 0, ttft_ms: float = 0.0,
               duration_ms: float = 0.0) -> None:
        """The ticket ended; feeds the prefix index, load, breaker, ledger
        and metrics.

        StaleError when it was finished already (nothing changes), or when
        its replica was removed meanwhile: the library then closed it and
        still priced it. InvalidArgumentError (more cached than prompt
        tokens, a negative or non-finite time, an unknown status) and
        RangeError (more than 1e9 output tokens) leave it open: finish it
        again. ``finished`` is True once the library closed it."""
        if isinstance(status, TicketResult):
            res = status._struct()
        else:
            res = TicketResult(coerce(TicketStatus, status), prompt_tokens,  # type: ignore[arg-type]
                               output_tokens, cached_tokens, ttft_ms,
                               duration_ms)._struct()
        engine = self.engine
        try:
            # Through the engine: a Python cost model prices the work.
            engine._call_modules(_lib.spi_ticket_finish, engine._p(), self.id,
                                 byref(res))
        except StaleError:
            self.finished = True
            raise
        self.finished = True

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.finished:
            return
        try:
            self.finish(TicketStatus.ERROR if exc_type else TicketStatus.OK)
        except StaleError:
            pass  # closed by the library (its replica was removed)
        except (InvalidArgumentError, RangeError):
            # Refused, so still open: close it as failed all the same.
            try:
                self.finish(TicketStatus.ERROR)
            except SpotinferError:
                pass
            if exc_type is None:
                raise
        except SpotinferError:
            if exc_type is None:
                raise

    def __int__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Ticket):
            return self.id == other.id and self.engine is other.engine
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<spotinfer.Ticket {self.id}>"


@dataclass(frozen=True)
class Decision:
    """What spi_route() decided (``spi_decision``)."""

    pool: Pool                    # QUEUE: hold the request and route it later
    klass: Class
    replayable: bool
    model_tier: ModelTier
    pressure: Pressure
    tools_allowed: bool
    max_output_tokens: int        # 0 = no cap
    replica_id: str               # "" unless serving
    fallback_ids: Tuple[str, ...]
    matched_blocks: int
    total_blocks: int
    reason_code: Reason
    reason: str
    ticket: Optional[Ticket]      # None unless serving
    key: CacheKeyValue
    est_ttft_ms: float
    est_usd: float
    shadow_pool: Pool             # NONE when shadow mode is off
    shadow_matched_blocks: int
    shadow_replica_id: str

    @property
    def serving(self) -> bool:
        return self.ticket is not None

    @classmethod
    def _from(cls, d: _n.Decision, engine: Engine) -> "Decision":
        n = min(int(d.n_fallbacks), _n.MAX_FALLBACKS)
        return cls(
            pool=maybe_enum(Pool, d.pool),
            klass=maybe_enum(Class, d.klass),
            replayable=bool(d.replayable),
            model_tier=maybe_enum(ModelTier, d.model_tier),
            pressure=maybe_enum(Pressure, d.pressure),
            tools_allowed=bool(d.tools_allowed),
            max_output_tokens=d.max_output_tokens,
            replica_id=_s(d.replica_id),
            fallback_ids=tuple(_s(d.fallback_ids[i].value) for i in range(n)),
            matched_blocks=d.matched_blocks,
            total_blocks=d.total_blocks,
            reason_code=maybe_enum(Reason, d.reason_code),
            reason=_s(d.reason),
            ticket=Ticket(engine, d.ticket) if d.ticket else None,
            key=CacheKeyValue(d.key.high64, d.key.low64),
            est_ttft_ms=d.est_ttft_ms,
            est_usd=d.est_usd,
            shadow_pool=maybe_enum(Pool, d.shadow_pool),
            shadow_matched_blocks=d.shadow_matched_blocks,
            shadow_replica_id=_s(d.shadow_replica_id),
        )
