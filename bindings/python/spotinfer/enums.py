"""The enums of spotinfer.h and spotinfer_module.h as IntEnums.

Every function of the binding accepts either the enum member or the plain
integer (or, where the library has names for them, the name as text).
"""

from __future__ import annotations

import enum
from typing import Any, Type, TypeVar

__all__ = [
    "Status", "LogLevel", "OptionType", "Class", "ModelTier",
    "PriorityScheme", "ServiceTier", "ReqStr", "ReqInt", "OpenAIKind",
    "Pressure", "Pool", "ReplicaState", "BreakerState", "Reason",
    "TicketStatus", "ModuleKind", "OnFailure", "NoticeKind", "NoticeFormat",
    "NodeState", "TicketAction", "ReplayRecordType", "PolicyFlags",
]


class Status(enum.IntEnum):
    OK = 0
    EINVAL = -1
    EMISUSE = -2
    ERANGE = -3
    EBUFSIZE = -4
    EPARSE = -20
    ETYPE = -21
    EUNKNOWN = -22
    EMISSING = -23
    ETOOBIG = -24
    ENOMEM = -40
    EIO = -41
    ENOTFOUND = -42
    EEXIST = -43
    ESTALE = -44
    EFULL = -45
    EMODULE = -60
    EABI = -61
    ENOTSUP = -62
    ESHED = -80
    ENOCAPACITY = -81


class LogLevel(enum.IntEnum):
    ERROR = 0
    WARN = 1
    INFO = 2
    DEBUG = 3


class OptionType(enum.IntEnum):
    BOOL = 1
    INT = 2
    DOUBLE = 3
    STRING = 4
    ENUM = 5
    LIST = 6
    OBJECT = 7


class Class(enum.IntEnum):
    UNSET = 0
    GOLD = 1
    SILVER = 2
    BRONZE = 3


class ModelTier(enum.IntEnum):
    UNSET = 0
    SMALL = 1
    LARGE = 2


class PriorityScheme(enum.IntEnum):
    VLLM = 1
    LLMD = 2


class ServiceTier(enum.IntEnum):
    UNSET = 0
    AUTO = 1
    DEFAULT = 2
    FLEX = 3
    PRIORITY = 4
    SCALE = 5


class ReqStr(enum.IntEnum):
    """String attributes of a request (``enum spi_request_str``)."""
    MODEL = 1
    TOKENIZER_VERSION = 2
    SYSTEM_PROMPT = 3
    TOOLS_JSON = 4
    RETRIEVAL_TEMPLATE = 5
    TENANT = 6
    TENANT_TIER = 7
    TENANT_SALT = 8
    DECODE_PROFILE = 9
    SERVICE_TIER = 10
    USER = 11
    CLASS = 12
    PROMPT = 13
    REQUEST_ID = 14


class ReqInt(enum.IntEnum):
    """Integer attributes of a request (``enum spi_request_int``)."""
    PRIORITY = 1
    SLA_MS = 2
    STREAM = 3
    REPLAYABLE = 4
    MAX_OUTPUT_TOKENS = 5
    EXPECTED_OUTPUT_TOKENS = 6
    PROMPT_TOKENS = 7
    MODEL_TIER = 8
    REPLAY_SINCE_NS = 9


class OpenAIKind(enum.IntEnum):
    AUTO = 0
    CHAT = 1
    COMPLETIONS = 2


class Pressure(enum.IntEnum):
    NORMAL = 0
    ELEVATED = 1
    HIGH = 2
    CRITICAL = 3


class Pool(enum.IntEnum):
    NONE = 0
    SPOT = 1
    ON_DEMAND = 2
    QUEUE = 3


class ReplicaState(enum.IntEnum):
    ACTIVE = 1
    DRAINING = 2
    NOTICED = 3


class BreakerState(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class Reason(enum.IntEnum):
    NONE = 0
    AFFINITY = 1
    AFFINITY_LEFT = 2
    IMBALANCE = 3
    RENDEZVOUS = 4
    LEAST_LOADED = 5
    WAIT_WARM = 6
    QUEUE_NO_SPOT = 7
    SHED = 8
    NO_CAPACITY = 9
    HALF_OPEN_PROBE = 10


class TicketStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    CANCELLED = 2
    DRAFT_REJECTED = 3
    INTERRUPTED = 4


class NoticeKind(enum.IntEnum):
    NONE = 0
    TERMINATE = 1
    STOP = 2
    HIBERNATE = 3
    REBALANCE = 4
    MAINTENANCE = 5
    PREEMPT = 6


class NoticeFormat(enum.IntEnum):
    AWS_INSTANCE_ACTION = 1
    AWS_REBALANCE = 2
    AWS_SCHEDULED = 3
    AWS_EVENTBRIDGE = 4
    GCP_PREEMPTED = 5
    GCP_MAINTENANCE = 6
    AZURE_SCHEDULED = 7


class NodeState(enum.IntEnum):
    ACTIVE = 1
    ADVISED = 2
    NOTICED = 3
    DRAINING = 4
    TERMINATED = 5
    REMOVED = 6


class TicketAction(enum.IntEnum):
    DRAIN = 1
    REPLAY = 2


class ReplayRecordType(enum.IntEnum):
    ENQUEUE = 1  # the whole envelope: queued (or restated)
    ACK = 2      # done for good; the key is remembered
    NACK = 3     # retry later (attempts, visible_ns)
    DEAD = 4     # dead-lettered


class ModuleKind(enum.IntEnum):
    CLASSIFIER = 1
    KEY_BUILDER = 2
    POLICY = 3
    COST_MODEL = 4
    NOTICE_SOURCE = 5
    REPLAY_STORE = 6
    FLEET_BUS = 7


class OnFailure(enum.IntEnum):
    """What the library does when a module call fails."""
    ERROR = 0     # fail the library call with SPI_EMODULE
    FALLBACK = 1  # use the built-in module of the same kind


class PolicyFlags(enum.IntFlag):
    """``spi_policy_module.flags`` (since 0.2.0)."""
    # The policy reads only the context's summaries and the candidates they
    # name; the library then passes only those candidates (compact, in
    # replica order) and every index refers to that compact array.
    SUMMARIES_ONLY = 1


def coerce(enum_cls: type, value: object) -> int:
    """An enum member, its integer, or its name (any case) as an int.

    Integers are checked only to fit the C int32_t they go to (RangeError
    otherwise, where ctypes would wrap them into another value without a
    word); whether one is valid is the library's job, and it knows values
    this binding may not.
    """
    if isinstance(value, bool):
        raise TypeError(f"{enum_cls.__name__}: expected an enum, got bool")
    if isinstance(value, int):
        return signed(value, 32, enum_cls.__name__)
    if isinstance(value, str):
        key = value.strip().upper().replace("-", "_")
        try:
            return int(enum_cls[key])  # type: ignore[index]
        except KeyError:
            raise ValueError(f"unknown {enum_cls.__name__} {value!r}") from None
    raise TypeError(f"{enum_cls.__name__}: expected an enum, int or name, "
                    f"got {type(value).__name__}")


_E = TypeVar("_E", bound=enum.IntEnum)


def maybe_enum(enum_cls: Type[_E], value: int) -> _E:
    """value as a member of enum_cls when it is one, else the plain int
    (a value from a newer library). A dict lookup: this is on hot paths.

    Typed as the enum, as the fields it fills are declared: a plain int is
    an int like the members, and only a newer library produces one."""
    return enum_cls._value2member_map_.get(value, value)  # type: ignore[arg-type,return-value]


def _whole(value: Any, what: str) -> int:
    """value as an int; a float must be a whole number (int() would cut
    1500.5 to 1500 without a word), and an infinite one is out of range."""
    if isinstance(value, float):
        if value != value or not value.is_integer():
            if value in (float("inf"), float("-inf")):
                from .errors import RangeError
                raise RangeError(RangeError.CODE, f"{what}: {value} is out of range")
            raise ValueError(f"{what}: {value} is not a whole number")
    return int(value)


def signed(value: Any, bits: int, what: str) -> int:
    """value as an int from -2**(bits-1) to 2**(bits-1) - 1, for a C signed
    parameter or field (ctypes would wrap one outside that range into a
    valid-looking value without a word); RangeError (a ValueError)
    otherwise."""
    v = _whole(value, what)
    half = 1 << (bits - 1)
    if not -half <= v < half:
        from .errors import RangeError
        raise RangeError(RangeError.CODE,
                         f"{what}: {v} is not between {-half} and {half - 1}")
    return v


def unsigned(value: Any, bits: int, what: str) -> int:
    """value as an int from 0 to 2**bits - 1, for a C unsigned parameter or
    field (ctypes would wrap a negative one into a huge valid-looking value
    without a word); RangeError (a ValueError) otherwise."""
    v = _whole(value, what)
    if not 0 <= v < 1 << bits:
        from .errors import RangeError
        raise RangeError(RangeError.CODE,
                         f"{what}: {v} is not between 0 and {(1 << bits) - 1}")
    return v
