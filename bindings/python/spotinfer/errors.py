"""Exceptions raised for libspotinfer status codes.

Every negative ``enum spi_status`` becomes an exception carrying the code,
the library's name for it (``spi_strerror``) and the message from the handle
the call was made on (``spi_engine_errmsg`` / ``spi_request_errmsg``).

The classes follow the status groups of the C header, so a caller can catch
a whole group (``InputError`` for anything wrong in a body or configuration)
or one code (``ParseError``)::

    SpotinferError
    +-- UsageError        -1..-19  InvalidArgumentError, MisuseError,
    |                              RangeError, BufferSizeError
    +-- InputError       -20..-39  ParseError, TypeMismatchError,
    |                              UnknownNameError, MissingFieldError,
    |                              TooBigError
    +-- ResourceError    -40..-59  NoMemoryError, ReadError, NotFoundError,
    |                              ExistsError, StaleError, FullError
    +-- ModuleError      -60..-79  ModuleFailedError, ABIError,
    |                              NotSupportedError
    +-- RoutingError     -80..-99  ShedError, NoCapacityError

Codes this version does not know map to the group's class (or to
``SpotinferError`` outside every group), so newer libraries never break
``except`` clauses written against older ones.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

__all__ = [
    "SpotinferError",
    "LibraryNotFoundError",
    "UsageError",
    "InvalidArgumentError",
    "MisuseError",
    "RangeError",
    "BufferSizeError",
    "InputError",
    "ParseError",
    "TypeMismatchError",
    "UnknownNameError",
    "MissingFieldError",
    "TooBigError",
    "ResourceError",
    "NoMemoryError",
    "ReadError",
    "NotFoundError",
    "ExistsError",
    "StaleError",
    "FullError",
    "ModuleError",
    "ModuleFailedError",
    "ABIError",
    "NotSupportedError",
    "RoutingError",
    "ShedError",
    "NoCapacityError",
    "error_for_status",
]


class SpotinferError(Exception):
    """A libspotinfer call returned a negative status.

    Attributes:
        code: the status integer (``enum spi_status``), always negative.
        message: the detail from the handle ("" when the call had none).
        status_name: ``spi_strerror(code)``, e.g. ``"parse error"``.
        function: the C function that failed, e.g. ``"spi_engine_configure"``.
    """

    #: The status this class stands for (None for group classes).
    CODE: Optional[int] = None

    def __init__(self, code: int, message: str = "", *, status_name: str = "",
                 function: str = "") -> None:
        self.code = int(code)
        self.message = message
        self.status_name = status_name
        self.function = function
        super().__init__(self._text())

    def _text(self) -> str:
        head = f"{self.function}: " if self.function else ""
        name = self.status_name or f"status {self.code}"
        if self.message:
            return f"{head}{name}: {self.message} ({self.code})"
        return f"{head}{name} ({self.code})"

    def __reduce__(self) -> Any:  # keeps pickling (multiprocessing) working
        return (_rebuild, (type(self), self.code, self.message,
                           self.status_name, self.function))


def _rebuild(cls: Type[SpotinferError], code: int, message: str,
             status_name: str, function: str) -> SpotinferError:
    return cls(code, message, status_name=status_name, function=function)


class LibraryNotFoundError(ImportError):
    """libspotinfer could not be loaded; the message lists what was tried."""


# ------------------------------------------------------------------ groups

class UsageError(SpotinferError):
    """The caller's arguments or call order (-1 .. -19)."""


class InputError(SpotinferError, ValueError):
    """Input that came from outside: configuration, request bodies (-20 .. -39)."""


class ResourceError(SpotinferError):
    """Resources and lookups (-40 .. -59)."""


class ModuleError(SpotinferError):
    """A module failed or is not usable (-60 .. -79)."""


class RoutingError(SpotinferError):
    """A routing outcome that is not a decision to serve (-80 .. -99).

    ``decision`` holds what spi_route() still filled in (class, reason, key)
    when the error came from :meth:`spotinfer.Request.route`, else None.
    """

    decision: Any = None


# ------------------------------------------------------------------- codes

class InvalidArgumentError(UsageError, ValueError):
    """SPI_EINVAL: an argument is invalid (NULL, bad enum, ...)."""
    CODE = -1


class MisuseError(UsageError):
    """SPI_EMISUSE: a freed or foreign handle, or a call from a callback."""
    CODE = -2


class RangeError(UsageError, ValueError):
    """SPI_ERANGE: a number is out of its documented range."""
    CODE = -3


class BufferSizeError(UsageError):
    """SPI_EBUFSIZE: an output buffer is too small."""
    CODE = -4


class ParseError(InputError):
    """SPI_EPARSE: malformed JSON or text."""
    CODE = -20


class TypeMismatchError(InputError):
    """SPI_ETYPE: a value has the wrong type."""
    CODE = -21


class UnknownNameError(InputError):
    """SPI_EUNKNOWN: an unknown key or enum name."""
    CODE = -22


class MissingFieldError(InputError):
    """SPI_EMISSING: a required field is missing."""
    CODE = -23


class TooBigError(InputError):
    """SPI_ETOOBIG: input exceeds a configured limit."""
    CODE = -24


class NoMemoryError(ResourceError):
    """SPI_ENOMEM: the allocator hook returned NULL."""
    CODE = -40


class ReadError(ResourceError):
    """SPI_EIO: a file could not be read."""
    CODE = -41


class NotFoundError(ResourceError, LookupError):
    """SPI_ENOTFOUND: no such module, option or item."""
    CODE = -42


class ExistsError(ResourceError):
    """SPI_EEXIST: a module of that kind and name already exists."""
    CODE = -43


class StaleError(ResourceError):
    """SPI_ESTALE: the ticket or replica is gone (finished, removed)."""
    CODE = -44


class FullError(ResourceError):
    """SPI_EFULL: a bounded table (replicas, tickets) is full."""
    CODE = -45


class ModuleFailedError(ModuleError):
    """SPI_EMODULE: a module failed and its policy is to fail the call."""
    CODE = -60


class ABIError(ModuleError):
    """SPI_EABI: a module struct has an unsupported abi_version or size."""
    CODE = -61


class NotSupportedError(ModuleError):
    """SPI_ENOTSUP: not supported by this version or module.

    Also raised by the binding for a function the loaded library does not
    export (an older libspotinfer than the header the binding mirrors).
    """
    CODE = -62


class ShedError(RoutingError):
    """SPI_ESHED: shed under KV pressure; retry later (HTTP 429)."""
    CODE = -80


class NoCapacityError(RoutingError):
    """SPI_ENOCAPACITY: no replica can serve the request now (HTTP 503)."""
    CODE = -81


_BY_CODE: Dict[int, Type[SpotinferError]] = {
    c.CODE: c
    for c in (InvalidArgumentError, MisuseError, RangeError, BufferSizeError,
              ParseError, TypeMismatchError, UnknownNameError,
              MissingFieldError, TooBigError, NoMemoryError, ReadError,
              NotFoundError, ExistsError, StaleError, FullError,
              ModuleFailedError, ABIError, NotSupportedError, ShedError,
              NoCapacityError)
    if c.CODE is not None
}

# Groups are 20 codes wide: -1..-19, -20..-39, ...
_BY_GROUP: Dict[int, Type[SpotinferError]] = {
    0: UsageError, 1: InputError, 2: ResourceError, 3: ModuleError,
    4: RoutingError,
}


def error_class(code: int) -> Type[SpotinferError]:
    """The exception class for a status code."""
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls
    if code < 0:
        return _BY_GROUP.get((-code) // 20, SpotinferError)
    return SpotinferError


def error_for_status(code: int, message: str = "", *, status_name: str = "",
                     function: str = "") -> SpotinferError:
    """Build (not raise) the exception for a status code."""
    return error_class(code)(code, message, status_name=status_name,
                             function=function)
