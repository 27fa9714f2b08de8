"""The replay queue: requests to replay elsewhere after an interruption,
with what was already streamed, in durable per-class lanes."""

from __future__ import annotations

import json
from ctypes import (byref, c_char, c_int32, c_size_t, c_uint32, c_uint64,
                    c_void_p, cast, create_string_buffer, string_at, POINTER)
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple, Union

from . import _native as _n
from .enums import Class, OpenAIKind, coerce, maybe_enum, signed, unsigned
from ._engine import _Owned, _fixed_text

_lib = _n.lib

__all__ = ["Envelope", "Claim", "ReplayStats", "ReplayQueue", "continuation",
           "ENVELOPE_FROM_SCRATCH"]

#: The partial output cannot be continued (guided / JSON-schema decoding).
ENVELOPE_FROM_SCRATCH = _n.ENVELOPE_FROM_SCRATCH


def _b(v: Union[str, bytes]) -> bytes:
    return v.encode("utf-8", "surrogateescape") if isinstance(v, str) else bytes(v)


@dataclass(frozen=True)
class Envelope:
    """A request to replay elsewhere, with what was already streamed."""

    key: str                       # idempotency key, 1..128 bytes
    body: Union[str, bytes]        # the original OpenAI body
    klass: Class = Class.SILVER    # the lane it waits in
    openai_kind: OpenAIKind = OpenAIKind.AUTO
    partial_text: Union[str, bytes] = ""
    partial_tokens: Sequence[int] = ()
    stream_offset: int = 0         # tokens the client already has
    attempts: int = 0
    flags: int = 0
    first_enqueued_ns: int = 0     # 0 = now at enqueue
    deadline_ns: int = 0           # 0 = none
    tenant: str = ""

    def _struct(self) -> Tuple[_n.Envelope, Tuple[Any, ...]]:
        """The C struct, and the buffers it points to (keep them alive)."""
        key, body, part = _b(self.key), _b(self.body), _b(self.partial_text)
        toks = (c_uint32 * len(self.partial_tokens))(
            *(unsigned(t, 32, "partial_tokens") for t in self.partial_tokens))
        kb, bb, pb = (create_string_buffer(x, len(x) or 1) for x in (key, body, part))
        e = _n.Envelope(
            key=cast(kb, c_void_p), key_len=len(key),
            body=cast(bb, c_void_p), body_len=len(body),
            openai_kind=coerce(OpenAIKind, self.openai_kind),
            klass=coerce(Class, self.klass),
            partial_text=cast(pb, c_void_p) if part else None,
            partial_text_len=len(part),
            partial_tokens=cast(toks, POINTER(c_uint32)) if len(toks) else None,
            partial_token_count=len(toks),
            stream_offset=unsigned(self.stream_offset, 64, "stream_offset"),
            attempts=unsigned(self.attempts, 32, "attempts"),
            flags=unsigned(self.flags, 32, "flags"),
            first_enqueued_ns=signed(self.first_enqueued_ns, 64,
                                     "first_enqueued_ns"),
            deadline_ns=signed(self.deadline_ns, 64, "deadline_ns"),
            tenant=_fixed_text(_b(self.tenant), _n.ID_MAX, "tenant"))
        return e, (kb, bb, pb, toks)

    @classmethod
    def _from(cls, e: _n.Envelope) -> "Envelope":
        def raw(p: Optional[int], n: int) -> bytes:
            return string_at(p, n) if p and n else b""
        toks = list(e.partial_tokens[:e.partial_token_count]) if e.partial_token_count else []
        return cls(
            key=raw(e.key, e.key_len).decode("utf-8", "surrogateescape"),
            body=raw(e.body, e.body_len),
            klass=maybe_enum(Class, e.klass),
            openai_kind=maybe_enum(OpenAIKind, e.openai_kind),
            partial_text=raw(e.partial_text, e.partial_text_len).decode("utf-8", "surrogateescape"),
            partial_tokens=tuple(toks), stream_offset=e.stream_offset,
            attempts=e.attempts, flags=e.flags,
            first_enqueued_ns=e.first_enqueued_ns, deadline_ns=e.deadline_ns,
            tenant=e.tenant.decode("utf-8", "surrogateescape"))


@dataclass(frozen=True)
class Claim:
    """A claimed envelope: ack() or nack() it before its lease ends."""

    id: int
    envelope: Envelope
    queue: "ReplayQueue" = field(repr=False, compare=False)

    def ack(self) -> None:
        self.queue.ack(self.id)

    def nack(self) -> None:
        self.queue.nack(self.id)


@dataclass(frozen=True)
class ReplayStats:
    ready: Tuple[int, int, int, int]  # by class lane
    leased: int
    delayed: int
    dead: int
    enqueued: int
    duplicates: int
    acked: int
    nacked: int
    expired_leases: int
    journal_bytes: int
    # The store's own counts since the queue opened (since 0.2.0).
    recovered: int = 0        # records read back when it opened
    torn: int = 0             # damaged ranges met then (cut off or skipped)
    truncated_bytes: int = 0  # their bytes
    syncs: int = 0            # flushes to stable storage
    compactions: int = 0
    # Since 0.3.0: damaged ranges skipped with every good record after them
    # kept, their bytes, and the files of damaged bytes kept in the journal
    # directory (*.corrupt) for an operator to inspect and remove.
    skipped: int = 0
    skipped_bytes: int = 0
    aside_files: int = 0
    # Since 0.3.0: the fallback journal of a queue store ("fallback":
    # "journal"): envelopes it holds now, not yet in the store; enqueues it
    # took since the queue opened (the store did not answer); envelopes
    # moved from it into the store since then.
    fallback_held: int = 0
    fallback_enqueued: int = 0
    fallback_moved: int = 0
    # A queue store (Redis) that could not be reached (SPI_EIO): the counts
    # this process keeps itself (enqueued, duplicates, acked, nacked and
    # the fallback_ ones) are still filled, the queue's own (ready, leased,
    # delayed, dead, ...) are 0; store_error says why. Always False and ""
    # for the memory and journal stores.
    store_unreachable: bool = False
    store_error: str = ""
    # Since 0.3.0: records read back whole when the queue opened although
    # their length field was damaged (nothing lost, so in no count above):
    # bit rot the storage let through.
    repaired: int = 0

    @classmethod
    def _from(cls, s: _n.ReplayStats, store_error: str = "") -> "ReplayStats":
        return cls(tuple(s.ready), s.leased, s.delayed, s.dead, s.enqueued,
                   s.duplicates, s.acked, s.nacked, s.expired_leases,
                   s.journal_bytes, s.recovered, s.torn, s.truncated_bytes,
                   s.syncs, s.compactions, s.skipped, s.skipped_bytes,
                   s.aside_files, s.fallback_held, s.fallback_enqueued,
                   s.fallback_moved, bool(store_error), store_error,
                   repaired=s.repaired)


class ReplayQueue(_Owned):
    """A replay queue with its store, opened on an engine.

    ``config`` is ``{"store": "memory"}`` or ``{"store": "journal", "dir":
    ..., "fsync": "always" | "batch" | "none", ...}`` (dict or JSON text).
    The engine must outlive the queue; closing the engine closes it.
    Enqueue, claim, ack and nack are thread-safe.
    """

    def __init__(self, engine: Any, config: Union[str, bytes, Mapping[str, Any]] = '{"store":"memory"}') -> None:
        text = json.dumps(config).encode() if isinstance(config, Mapping) else _b(config)
        ptr = c_void_p()
        engine._call_modules(_lib.spi_replay_open, engine._p(), text, len(text),
                             byref(ptr))
        self._engine = engine
        self._ptr: Optional[c_void_p] = ptr
        self._fin = engine._st.adopt(self, _lib.spi_replay_close, ptr)
        # The size a claim's buffer starts at: the largest envelope seen.
        self._cap = 4096

    # close() flushes and closes; closed, with: _Owned.
    _what = "replay queue"

    @property
    def errmsg(self) -> str:
        return (_lib.spi_replay_errmsg(self._p()) or b"").decode("utf-8", "replace")

    def enqueue(self, envelope: Optional[Envelope] = None, **fields: Any) -> bool:
        """Add an envelope (or its fields as keywords). Returns False when an
        envelope with the same key is already queued or was acked."""
        env = envelope if envelope is not None else Envelope(**fields)
        s, keep = env._struct()
        dup = c_int32()
        self._call(_lib.spi_replay_enqueue, byref(s), byref(dup))
        del keep
        return not dup.value

    def claim(self, classes: Iterable[Union[Class, int, str]] = (Class.GOLD, Class.SILVER, Class.BRONZE),
              lease_ms: int = 0) -> Optional[Claim]:
        """Claim the next ready envelope of the given class lanes (gold
        first, FIFO within a lane) with a lease; None when nothing is ready."""
        mask = 0
        for c in classes:
            mask |= 1 << unsigned(coerce(Class, c), 5, "class")
        lease = signed(lease_ms, 64, "lease_ms")
        cid = c_uint64()
        out = _n.Envelope()
        needed = c_size_t()
        # A buffer of this call's own: the envelope points into it until
        # it is copied, and another thread's claim runs while ctypes has
        # let go of the GIL.
        buf = create_string_buffer(self._cap)
        while True:
            rc = self._call(_lib.spi_replay_claim, mask, lease, byref(cid),
                            byref(out), buf, len(buf), byref(needed))
            if rc == -4:   # EBUFSIZE: nothing was claimed; grow and retry
                self._cap = max(self._cap, needed.value + 1)
                buf = create_string_buffer(needed.value + 1)
                continue
            # Nothing ready is SPI_OK with claim id 0 (a library before
            # 0.3.0 said ENOTFOUND).
            if cid.value == 0 or rc == -42:
                return None
            return Claim(cid.value, Envelope._from(out), self)

    def ack(self, claim_id: int) -> None:
        """Done: the envelope leaves the queue for good."""
        self._call(_lib.spi_replay_ack, unsigned(claim_id, 64, "claim_id"))

    def nack(self, claim_id: int) -> None:
        """Failed: ready again after a backoff, or dead-lettered."""
        self._call(_lib.spi_replay_nack, unsigned(claim_id, 64, "claim_id"))

    def stats(self) -> ReplayStats:
        """The queue's counts. With its store unreachable they are partial
        and say so (store_unreachable, store_error) instead of raising."""
        out = _n.ReplayStats()
        rc = self._call(_lib.spi_replay_stats_get, byref(out))
        # SPI_EIO (-41): only the store failed; a message is always set.
        why = (self.errmsg or "unreachable") if rc == -41 else ""
        return ReplayStats._from(out, why)

    def tick(self) -> None:
        """Periodic work (lease expiry, group commit, compaction)."""
        self._call(_lib.spi_replay_tick)

    def _call(self, fn: Any, *args: Any) -> int:
        """fn(queue, *args) through the engine, so that an exception a
        Python store raised is chained as the failure's cause."""
        return int(self._engine._call_modules(fn, self._p(), *args))


def continuation(envelope: Envelope) -> Tuple[str, int]:
    """The continuation of an envelope as an OpenAI body, and its flags
    (ENVELOPE_FROM_SCRATCH when the partial output cannot be continued)."""
    s, keep = envelope._struct()
    needed = c_size_t()
    flags = c_uint32()
    cap = 4096
    while True:
        buf = create_string_buffer(cap)
        rc = _lib.spi_replay_continuation(byref(s), buf, cap, byref(needed), byref(flags))
        if rc == 0:
            del keep
            return buf.raw[:needed.value].decode("utf-8", "surrogateescape"), flags.value
        cap = needed.value + 1
