"""Plain-Python results of libspotinfer calls (frozen dataclasses).

Each has a ``_from(struct)`` constructor that copies the ctypes struct, so a
result never points into memory the library or the binding may reuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from . import _native as _n
from .enums import (BreakerState, Class, ModelTier, OptionType, Pool,
                    Pressure, Reason, ReplicaState, ServiceTier, TicketStatus,
                    coerce, maybe_enum, signed, unsigned)

__all__ = [
    "Classification", "Verdict", "DegradeLevels", "CacheKeyValue", "Price",
    "SpotCost", "OptionInfo", "Load", "ReplicaInfo", "ReplicaStatus", "LedgerRow",
    "Signals", "TicketResult",
]


def _text(b: bytes) -> str:
    # surrogateescape: a tenant or model that is not UTF-8 reads back as the
    # str that encodes to the same bytes, as Request's own fields do.
    return b.decode("utf-8", "surrogateescape")


def utf8_cut(s: str, limit: int, errors: str = "strict") -> bytes:
    """s as UTF-8 in at most ``limit`` bytes, cut before a character rather
    than inside one, so a fixed-size text field never ends in half of one.
    ``errors`` is str.encode's, for text that may hold lone surrogates."""
    b = s.encode("utf-8", errors)
    if len(b) <= limit:
        return b
    end = limit
    while end > 0 and (b[end] & 0xC0) == 0x80:  # b[end] continues a character
        end -= 1
    return b[:end]


# value -> member maps for the hot paths (unknown values stay plain ints)
_CLASS = Class._value2member_map_
_TIER = ModelTier._value2member_map_
_STIER = ServiceTier._value2member_map_
_PRESSURE = Pressure._value2member_map_


@dataclass(frozen=True)
class Classification:
    """The classifier's verdict on a request (``spi_classification``)."""

    klass: Class
    replayable: bool
    model_tier: ModelTier
    rule_index: int          # -1 for explicit class / priority / default
    complexity: float
    max_output_tokens: int   # degrade plan: cap to apply, 0 = none
    tools_allowed: bool
    defer: bool              # queue instead of serving now
    vllm_priority: int
    llmd_priority: int
    service_tier: ServiceTier
    pressure: Pressure
    reason: str

    @property
    def class_name(self) -> str:
        return self.klass.name.lower()

    _FIELDS = ("klass", "replayable", "model_tier", "rule_index", "complexity",
               "max_output_tokens", "tools_allowed", "defer", "vllm_priority",
               "llmd_priority", "service_tier", "pressure", "reason")

    @classmethod
    def _from(cls, c: _n.Classification) -> "Classification":
        # The hot path of classify(): fill the frozen instance's __dict__ in
        # one step instead of thirteen guarded setattr calls.
        obj = object.__new__(cls)
        obj.__dict__.update(zip(cls._FIELDS, (
            _CLASS.get(c.klass, c.klass), c.replayable != 0,
            _TIER.get(c.model_tier, c.model_tier), c.rule_index, c.complexity,
            c.max_output_tokens, c.tools_allowed != 0, c.defer != 0,
            c.vllm_priority, c.llmd_priority,
            _STIER.get(c.service_tier, c.service_tier),
            _PRESSURE.get(c.pressure, c.pressure),
            c.reason.decode("utf-8", "replace"))))
        return obj


@dataclass(frozen=True)
class Verdict:
    """What a classifier module written in Python returns.

    Only ``klass`` is required. The library checks every field (class 1..3,
    tier SMALL or LARGE, 0/1 flags, a finite complexity, a cap >= 0) and
    fills the priority and service-tier mappings itself.
    """

    klass: Class
    replayable: bool = False
    model_tier: ModelTier = ModelTier.LARGE
    rule_index: int = -1
    complexity: float = 0.0
    max_output_tokens: int = 0
    tools_allowed: bool = True
    defer: bool = False
    reason: str = ""

    def _fill(self, out: _n.Classification) -> None:
        out.klass = coerce(Class, self.klass)
        out.replayable = int(bool(self.replayable))
        out.model_tier = coerce(ModelTier, self.model_tier)
        out.rule_index = signed(self.rule_index, 32, "rule_index")
        out.complexity = float(self.complexity)
        out.max_output_tokens = signed(self.max_output_tokens, 64,
                                       "max_output_tokens")
        out.tools_allowed = int(bool(self.tools_allowed))
        out.defer = int(bool(self.defer))
        out.reason = utf8_cut(self.reason, 119)


@dataclass(frozen=True)
class DegradeLevels:
    """The degrade plan at every pressure, indexed by :class:`Pressure`
    (NORMAL .. CRITICAL), as a classifier's ``classify_levels`` returns it
    (``spi_degrade_levels``). Each field holds four values; the default is
    no cap, tools allowed, nothing deferred, at every pressure. The library
    checks every level (caps >= 0).
    """

    max_output_tokens: Tuple[int, int, int, int] = (0, 0, 0, 0)
    tools_allowed: Tuple[bool, bool, bool, bool] = (True, True, True, True)
    defer: Tuple[bool, bool, bool, bool] = (False, False, False, False)

    def __post_init__(self) -> None:
        for name in ("max_output_tokens", "tools_allowed", "defer"):
            if len(getattr(self, name)) != 4:
                raise ValueError(f"DegradeLevels.{name} needs one value per "
                                 f"pressure (4), got {len(getattr(self, name))}")

    def _fill(self, out: _n.DegradeLevels) -> None:
        for i in range(4):
            out.max_output_tokens[i] = signed(self.max_output_tokens[i], 64,
                                              "max_output_tokens")
            out.tools_allowed[i] = int(bool(self.tools_allowed[i]))
            out.defer[i] = int(bool(self.defer[i]))


@dataclass(frozen=True)
class CacheKeyValue:
    """A 128-bit cache key; ``hex`` is its canonical big-endian text."""

    high64: int
    low64: int

    @property
    def hex(self) -> str:
        return f"{self.high64:016x}{self.low64:016x}"

    def __int__(self) -> int:
        return (self.high64 << 64) | self.low64

    def __str__(self) -> str:
        return self.hex


@dataclass(frozen=True)
class Price:
    """What serving one request costs on a pool (``spi_price``)."""

    pool: Pool
    prompt_tokens: float
    output_tokens: float
    gpu_seconds: float
    usd: float
    usd_per_million: float

    @classmethod
    def _from(cls, p: _n.Price) -> "Price":
        return cls(maybe_enum(Pool, p.pool), p.prompt_tokens, p.output_tokens,
                   p.gpu_seconds, p.usd, p.usd_per_million)


@dataclass(frozen=True)
class SpotCost:
    """The spot-with-interruptions calculation (``spi_spot_cost``)."""

    effective_hours: float
    spot_cost: float
    cost_per_effective_hour: float
    on_demand_cost: float
    savings: float
    savings_fraction: float
    expected_interruptions: float

    @classmethod
    def _from(cls, s: _n.SpotCost) -> "SpotCost":
        return cls(s.effective_hours, s.spot_cost, s.cost_per_effective_hour,
                   s.on_demand_cost, s.savings, s.savings_fraction,
                   s.expected_interruptions)


@dataclass(frozen=True)
class OptionInfo:
    """One accepted configuration option (``spi_option_info``)."""

    path: str
    type: OptionType
    default_json: str
    min_value: float
    max_value: float
    doc: str

    @classmethod
    def _from(cls, o: _n.OptionInfo) -> "OptionInfo":
        return cls(_text(o.path or b""), maybe_enum(OptionType, o.type),
                   _text(o.default_json or b""), o.min_value, o.max_value,
                   _text(o.doc or b""))


@dataclass(frozen=True)
class Load:
    """A replica's load signal (``spi_load``); at_ns 0 means now."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    at_ns: int = 0

    @classmethod
    def _from(cls, l: _n.Load) -> "Load":
        return cls(l.running, l.waiting, l.kv_usage, l.at_ns)

    def _struct(self) -> _n.Load:
        return _n.Load(running=float(self.running), waiting=float(self.waiting),
                       kv_usage=float(self.kv_usage),
                       at_ns=signed(self.at_ns, 64, "at_ns"))


@dataclass(frozen=True)
class ParseReport:
    """What a parser of outside text read and skipped (``spi_parse_report``).

    found: notices found or load samples read; skipped: event entries or
    metrics lines of a kind this version does not read, left out rather than
    failing the whole body; first_skipped: the 1-based entry index or line
    number of the first (0: none); message names it ("" when none).
    """

    found: int = 0
    skipped: int = 0
    first_skipped: int = 0
    message: str = ""

    @classmethod
    def _from(cls, r: _n.ParseReport, message: bytes) -> "ParseReport":
        return cls(r.found, r.skipped, r.first_skipped,
                   message.decode("utf-8", "replace"))


@dataclass(frozen=True)
class ReplicaInfo:
    """A serving replica to add or update (``spi_replica_info``)."""

    id: str
    pool: Pool
    usd_per_hour: float
    max_inflight: int = 1
    model_tier: ModelTier = ModelTier.UNSET  # 0 = large
    zone: str = ""
    instance_type: str = ""
    models: Tuple[str, ...] = ()             # empty serves any model
    node: str = ""                           # the machine; "" = the id
    decode_tokens_per_s: float = 0.0         # 0 = router.decode_tokens_per_s


@dataclass(frozen=True)
class ReplicaStatus:
    """What the engine knows of one replica (``spi_replica_status``)."""

    id: str
    pool: Pool
    model_tier: ModelTier
    state: ReplicaState
    breaker: BreakerState
    running: float
    waiting: float
    kv_usage: float
    load_at_ns: int
    load_fresh: bool
    inflight: int
    usd_per_hour: float
    max_inflight: int
    consecutive_errors: int

    @classmethod
    def _from(cls, s: _n.ReplicaStatus) -> "ReplicaStatus":
        return cls(_text(s.id), maybe_enum(Pool, s.pool),
                   maybe_enum(ModelTier, s.model_tier),
                   maybe_enum(ReplicaState, s.state),
                   maybe_enum(BreakerState, s.breaker), s.running, s.waiting,
                   s.kv_usage, s.load_at_ns, bool(s.load_fresh), s.inflight,
                   s.usd_per_hour, s.max_inflight, s.consecutive_errors)


@dataclass(frozen=True)
class LedgerRow:
    """Completed work by tenant, model, pool and class (``spi_ledger_row``)."""

    tenant: str
    model: str
    pool: Pool
    klass: Class
    completed: int
    failed: int
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    gpu_seconds: float
    usd: float
    usd_per_completed: float
    tokens_per_gpu_second: float
    # Interruptions: spot work lost, and the replays that recovered it.
    interrupted: int = 0
    wasted_output_tokens: int = 0
    reprefilled_tokens: int = 0
    wasted_usd: float = 0.0
    replays: int = 0
    replay_latency_ms: float = 0.0     # sum over replays
    fallback_on_demand_seconds: float = 0.0

    @classmethod
    def _from(cls, r: _n.LedgerRow) -> "LedgerRow":
        return cls(_text(r.tenant), _text(r.model), maybe_enum(Pool, r.pool),
                   maybe_enum(Class, r.klass), r.completed, r.failed,
                   r.prompt_tokens, r.output_tokens, r.cached_tokens,
                   r.gpu_seconds, r.usd, r.usd_per_completed,
                   r.tokens_per_gpu_second, r.interrupted,
                   r.wasted_output_tokens, r.reprefilled_tokens, r.wasted_usd,
                   r.replays, r.replay_latency_ms, r.fallback_on_demand_seconds)


@dataclass(frozen=True)
class Signals:
    """The autoscaling signals (``spi_signals``); lists are indexed by Class."""

    queue_depth: Tuple[float, float, float, float]
    p95_ttft_ms: Tuple[float, float, float, float]
    cache_miss_rate: float
    warm_on_demand: int
    draft_acceptance: float

    @classmethod
    def _from(cls, s: _n.Signals) -> "Signals":
        return cls(tuple(s.queue_depth), tuple(s.p95_ttft_ms),
                   s.cache_miss_rate, s.warm_on_demand, s.draft_acceptance)


@dataclass(frozen=True)
class TicketResult:
    """How a ticket ended (``spi_ticket_result``); zeros mean unknown."""

    status: TicketStatus = TicketStatus.OK
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    ttft_ms: float = 0.0
    duration_ms: float = 0.0

    def _struct(self) -> _n.TicketResult:
        return _n.TicketResult(
            status=coerce(TicketStatus, self.status),
            prompt_tokens=unsigned(self.prompt_tokens, 64, "prompt_tokens"),
            output_tokens=unsigned(self.output_tokens, 64, "output_tokens"),
            cached_tokens=unsigned(self.cached_tokens, 64, "cached_tokens"),
            ttft_ms=float(self.ttft_ms), duration_ms=float(self.duration_ms))
