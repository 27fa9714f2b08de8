"""Python binding of libspotinfer (ctypes, no dependencies).

libspotinfer decides, for every LLM request and before any GPU work
starts, its class (gold / silver / bronze), its versioned KV-cache key,
what it costs, and which pool and replica serve it::

    import spotinfer

    with spotinfer.Engine({"cost": {"spot_usd_per_gpu_hour": 1.8}}) as engine:
        req = engine.parse_openai({"model": "llama-3.1-70b", "stream": True,
                                   "messages": [{"role": "user", "content": "Hi"}]})
        c = req.classify()
        print(c.klass.name, c.reason, req.cache_key(), req.price("spot").usd)

The C library is loaded on first use, not on import: from
$SPOTINFER_LIBRARY if set, else the copy the wheel carries, else its SONAME
(libspotinfer.so.0) on the loader path. When it cannot be loaded, the first
call raises ``LibraryNotFoundError`` saying what is missing and how to
install it. ``spotinfer.lib`` is the raw ctypes layer: every C function,
declared once in ``spotinfer._native.FUNCTIONS``.
"""

from __future__ import annotations

from ctypes import byref, c_size_t, create_string_buffer
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple, Union

from . import _native
from ._engine import Decision, Engine, Request, Ticket
from ._native import lib
from .cost import CostModel
from .enums import (BreakerState, Class, LogLevel, ModelTier, ModuleKind,
                    OnFailure, OpenAIKind, OptionType, Pool, PriorityScheme,
                    Pressure, Reason, ReplicaState, ReqInt, ReqStr,
                    ServiceTier, Status, TicketStatus, NoticeKind,
                    NoticeFormat, NodeState, TicketAction, ReplayRecordType,
                    PolicyFlags)
from .enums import (coerce as _coerce, signed as _signed,
                    unsigned as _unsigned)
from .errors import *  # noqa: F401,F403 - the exception classes
from .errors import __all__ as _errors_all
from .notices import (Notice, TicketPlan, node_state_name, notice_kind_name,
                      parse_notice, parse_notice_report)
from .replay import (ENVELOPE_FROM_SCRATCH, Claim, Envelope, ReplayQueue,
                     ReplayStats, continuation)
from .modules import (Candidate, ClassifierModule, CostModelModule,
                      KeyBuilderModule, PolicyChoice, PolicyModule,
                      PoolSummary, ReplayRecord, ReplayStoreModule,
                      ReplayStoreStats, RequestView, RouteContext)
from .types import (CacheKeyValue, Classification, DegradeLevels, LedgerRow,
                    Load, ParseReport, OptionInfo, Price, ReplicaInfo,
                    ReplicaStatus, Signals, SpotCost, TicketResult, Verdict)

__version__ = "0.2.0"

#: Room for entries of PoolSummary.top (SPI_SUMMARY_TOP; the library names
#: every usable replica when they fit, else 1 + SPI_MAX_FALLBACKS, a primary
#: and its fallbacks), and summaries in a RouteContext (SPI_SUMMARY_CELLS:
#: (spot, on-demand) x (small, large)).
SUMMARY_TOP: int = _native.SUMMARY_TOP
SUMMARY_CELLS: int = _native.SUMMARY_CELLS
#: Candidate.match_flags (SPI_MATCH_CONTINUED, since 0.3.0): a request
#: routed to the replica earlier matched as deep and went on with blocks of
#: its own, so this one branches off a shared prefix there.
MATCH_CONTINUED: int = _native.MATCH_CONTINUED
#: How many replicas one request may exclude (SPI_MAX_EXCLUDED, since
#: 0.3.0): Request.exclude_replica.
MAX_EXCLUDED: int = _native.MAX_EXCLUDED


def summary_index(pool: Union[Pool, int, str],
                  model_tier: Union[ModelTier, int, str]) -> int:
    """SPI_SUMMARY_INDEX: the position of a pool and model tier's summary in
    RouteContext.summaries, or -1 when either is out of range."""
    return _native.summary_index(_coerce(Pool, pool), _coerce(ModelTier, model_tier))

#: The loaded library's version, e.g. "0.2.0", and as MAJOR*10000+MINOR*100+PATCH.
#: Reading either loads the library (see ``lib``); they are module attributes
#: computed on first use, declared here for type checkers.
if TYPE_CHECKING:
    library_version: str
    library_version_number: int
else:
    def __getattr__(name: str) -> object:
        if name == "library_version":
            return lib.version
        if name == "library_version_number":
            return lib.version_number
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _name(fn: Callable[[int], Optional[bytes]], value: int) -> str:
    return (fn(_signed(value, 32, "value")) or b"").decode("utf-8", "replace")


def strerror(status: int) -> str:
    """The library's short description of any status integer."""
    return _name(lib.spi_strerror, status)


def class_name(klass: Union[Class, int]) -> str:
    return _name(lib.spi_class_name, klass)


def service_tier_name(tier: Union[ServiceTier, int]) -> str:
    return _name(lib.spi_service_tier_name, tier)


def reason_name(reason: Union[Reason, int]) -> str:
    return _name(lib.spi_reason_name, reason)


def module_kind_name(kind: Union[ModuleKind, int]) -> str:
    return _name(lib.spi_module_kind_name, kind)


def options() -> List[OptionInfo]:
    """Every accepted configuration option: path, type, default, bounds, doc."""
    out = []
    info = _native.OptionInfo()
    for i in range(int(lib.spi_option_count())):
        lib.spi_option_get(i, byref(info))
        out.append(OptionInfo._from(info))
    return out


def parse_metrics(text: Union[str, bytes]) -> Load:
    """Parse a vLLM or SGLang Prometheus /metrics page into a load signal.
    A failure's ``message`` says why and where (the line number)."""
    if lib.has("spi_metrics_parse_v2"):
        return parse_metrics_report(text)[0]
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    out = _native.Load()
    lib.spi_metrics_parse(data, len(data), byref(out))  # an older library
    return Load._from(out)


def parse_metrics_report(text: Union[str, bytes]) -> Tuple[Load, ParseReport]:
    """parse_metrics() that also says which lines, in syntax newer than this
    library reads (a native-histogram value, an st@ start time), it skipped
    while still reading the load."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    out = _native.Load()
    rep = _native.ParseReport()
    err = create_string_buffer(256)
    lib.spi_metrics_parse_v2(data, len(data), byref(out), byref(rep), err,
                             len(err))
    return Load._from(out), ParseReport._from(rep, err.value)


def cache_key_hex(high64: int, low64: int) -> str:
    """A 128-bit key as 32 lowercase hex digits, formatted by the library."""
    key = _native.CacheKey(high64=_unsigned(high64, 64, "high64"),
                           low64=_unsigned(low64, 64, "low64"))
    buf = create_string_buffer(33)
    lib.spi_cache_key_hex(byref(key), buf, 33)
    return buf.value.decode("ascii")


__all__ = [
    "lib", "library_version", "library_version_number",
    "Engine", "Request", "Decision", "Ticket", "CostModel",
    "Classification", "Verdict", "DegradeLevels", "CacheKeyValue", "Price",
    "SpotCost", "OptionInfo", "Load", "ReplicaInfo", "ReplicaStatus", "LedgerRow",
    "Signals", "TicketResult",
    "RequestView", "Candidate", "RouteContext", "PolicyChoice",
    "ClassifierModule", "KeyBuilderModule", "CostModelModule", "PolicyModule",
    "PoolSummary", "PolicyFlags", "SUMMARY_TOP", "SUMMARY_CELLS",
    "MATCH_CONTINUED", "MAX_EXCLUDED",
    "summary_index",
    "Status", "LogLevel", "OptionType", "Class", "ModelTier", "PriorityScheme",
    "ServiceTier", "ReqStr", "ReqInt", "OpenAIKind", "Pressure", "Pool",
    "ReplicaState", "BreakerState", "Reason", "TicketStatus", "ModuleKind",
    "OnFailure", "NoticeKind", "NoticeFormat", "NodeState", "TicketAction",
    "Notice", "TicketPlan", "parse_notice", "parse_notice_report",
    "notice_kind_name", "ParseReport", "parse_metrics_report",
    "node_state_name", "Envelope", "Claim", "ReplayQueue", "ReplayStats",
    "continuation", "ENVELOPE_FROM_SCRATCH", "ReplayRecordType",
    "ReplayRecord", "ReplayStoreModule", "ReplayStoreStats",
    "strerror", "class_name", "service_tier_name", "reason_name",
    "module_kind_name", "options", "parse_metrics", "cache_key_hex",
    # The exception classes, listed here (not added from errors.__all__) so
    # that type checkers see them as exported.
    "SpotinferError", "LibraryNotFoundError", "UsageError",
    "InvalidArgumentError", "MisuseError", "RangeError", "BufferSizeError",
    "InputError", "ParseError", "TypeMismatchError", "UnknownNameError",
    "MissingFieldError", "TooBigError", "ResourceError", "NoMemoryError",
    "ReadError", "NotFoundError", "ExistsError", "StaleError", "FullError",
    "ModuleError", "ModuleFailedError", "ABIError", "NotSupportedError",
    "RoutingError", "ShedError", "NoCapacityError", "error_for_status",
]
assert set(_errors_all) <= set(__all__), "an exception class is not exported"
