"""Interruption notices: parsing cloud notice bodies, and the plans the
engine makes for the tickets on a noticed machine."""

from __future__ import annotations

import time
from ctypes import Array, byref, c_size_t, create_string_buffer
from dataclasses import dataclass
from typing import List, Tuple, Union

from . import _native as _n
from ._engine import _fixed_text
from .enums import (Class, NoticeFormat, NoticeKind, TicketAction, coerce,
                    maybe_enum, signed)
from .types import ParseReport

_lib = _n.lib

__all__ = ["Notice", "TicketPlan", "parse_notice", "parse_notice_report",
           "notice_kind_name",
           "node_state_name"]


def _t(b: bytes) -> str:
    # surrogateescape, as the engine's own fields: a node name that is not
    # UTF-8 reads back as the str that encodes to the same bytes again.
    return b.decode("utf-8", "surrogateescape")


def _enc(s: Union[str, bytes]) -> bytes:
    return s.encode("utf-8", "surrogateescape") if isinstance(s, str) else bytes(s)


@dataclass(frozen=True)
class Notice:
    """One interruption notice, whatever cloud it came from (``spi_notice``)."""

    kind: NoticeKind
    format: NoticeFormat
    node: str
    deadline_ns: int = 0     # 0 for advice without a deadline
    received_ns: int = 0
    active: bool = True      # False: a scheduled event withdrawn or done
    event_id: str = ""       # a withdrawal takes back the notice with it
    dedup_key: str = ""

    @classmethod
    def _from(cls, n: _n.Notice) -> "Notice":
        return cls(maybe_enum(NoticeKind, n.kind), maybe_enum(NoticeFormat, n.format),
                   _t(n.node), n.deadline_ns, n.received_ns, bool(n.active),
                   _t(n.event_id), _t(n.dedup_key))

    def _struct(self) -> _n.Notice:
        return _n.Notice(kind=coerce(NoticeKind, self.kind),
                         format=coerce(NoticeFormat, self.format),
                         node=_fixed_text(_enc(self.node), _n.ID_MAX, "node"),
                         deadline_ns=signed(self.deadline_ns, 64, "deadline_ns"),
                         received_ns=signed(self.received_ns, 64, "received_ns"),
                         active=int(bool(self.active)),
                         event_id=_fixed_text(_enc(self.event_id), _n.ID_MAX,
                                              "event_id"),
                         dedup_key=_fixed_text(_enc(self.dedup_key),
                                               _n.Notice.dedup_key.size,
                                               "dedup_key"))


@dataclass(frozen=True)
class TicketPlan:
    """What to do with one in-flight request on a noticed machine."""

    ticket: int
    action: TicketAction
    klass: Class
    remaining_s: float   # expected time to finish where it is
    deadline_s: float    # seconds left before the machine goes
    progress: float      # tokens streamed / expected, 0..1
    replica_id: str

    @classmethod
    def _from(cls, p: _n.TicketPlan) -> "TicketPlan":
        return cls(p.ticket, maybe_enum(TicketAction, p.action),
                   maybe_enum(Class, p.klass), p.remaining_s, p.deadline_s,
                   p.progress, _t(p.replica_id))


def _parse_args(body: Union[str, bytes], node: str,
                now_ns: Union[int, None]) -> Tuple[bytes, bytes, int]:
    """The body and node as bytes, and the poll time (default: now)."""
    now = time.time_ns() if now_ns is None else signed(now_ns, 64, "now_ns")
    return _enc(body), _enc(node), now


def _notices(cap: int) -> Array[_n.Notice]:
    """An array of cap spi_notice structs, their struct_size set."""
    out = (_n.Notice * cap)()
    for o in out:
        o.struct_size = _n.sizeof(_n.Notice)
    return out


def parse_notice(format: Union[NoticeFormat, int, str], body: Union[str, bytes], *,
                 http_status: int = 200, node: str = "",
                 now_ns: Union[int, None] = None) -> List[Notice]:
    """Parse a notice body as the cloud serves it; [] means no notice.

    http_status is the status of the metadata request (404: no notice);
    node names the polled machine; now_ns (default: now) is the poll time.
    """
    data, nb, now = _parse_args(body, node, now_ns)
    cap = 8
    while True:
        out = _notices(cap)
        n = c_size_t()
        err = create_string_buffer(256)
        rc = _lib.spi_notice_parse(coerce(NoticeFormat, format),
                                   signed(http_status, 32, "http_status"),
                                   data, len(data), nb, len(nb), now, out, cap,
                                   byref(n), err, len(err))
        if rc == 0:
            return [Notice._from(out[i]) for i in range(n.value)]
        cap = max(n.value, 2 * cap)


def parse_notice_report(format: Union[NoticeFormat, int, str],
                        body: Union[str, bytes], *, http_status: int = 200,
                        node: str = "", now_ns: Union[int, None] = None
                        ) -> Tuple[List[Notice], ParseReport]:
    """parse_notice() that also says which events it skipped: an event whose
    type or state this library does not know is counted and left out, and
    the document's other events are still read."""
    data, nb, now = _parse_args(body, node, now_ns)
    cap = 8
    while True:
        out = _notices(cap)
        rep = _n.ParseReport()
        err = create_string_buffer(256)
        rc = _lib.spi_notice_parse_v2(coerce(NoticeFormat, format),
                                      signed(http_status, 32, "http_status"),
                                      data, len(data), nb,
                                      len(nb), now, out, cap, byref(rep), err,
                                      len(err))
        if rc == 0:
            notices = [Notice._from(out[i]) for i in range(rep.found)]
            return notices, ParseReport._from(rep, err.value)
        cap = max(rep.found, 2 * cap)


def notice_kind_name(kind: Union[NoticeKind, int]) -> str:
    return _t(_lib.spi_notice_kind_name(signed(kind, 32, "kind")) or b"")


def node_state_name(state: int) -> str:
    return _t(_lib.spi_node_state_name(signed(state, 32, "state")) or b"")
