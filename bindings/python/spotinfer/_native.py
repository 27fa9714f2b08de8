"""The C ABI of libspotinfer as ctypes declarations.

This module is the only place that knows the C signatures:

* ``lib``, the ``Library`` every module calls through, loads the shared
  library on first use, not on import (``find_library()``:
  ``SPOTINFER_LIBRARY``, then the copy a wheel carries beside this module,
  then the SONAME ``libspotinfer.so.0`` on the loader path).
* Structure mirrors of every public struct of spotinfer.h and
  spotinfer_module.h. Their ``struct_size`` field (where the C struct has
  one) is set by the constructor, so a fresh instance is ready to pass.
  ``_c_name_`` names the C type; the test suite compiles a C program that
  prints ``sizeof`` / ``offsetof`` of each and compares them field by field.
* ``FUNCTIONS``: one table with the restype, argtypes and error handling of
  every exported function. ctypes' default restype is a C int, which would
  truncate pointers and sizes, so every entry sets it explicitly.

Statuses are turned into exceptions by ``errcheck`` hooks built from the
table's ``check`` column: the message comes from the handle in the first
argument (engine or request), read right after the failed call on the same
thread, as the C API documents.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from ctypes import (CFUNCTYPE, POINTER, Structure, byref, c_char, c_char_p,
                    c_double, c_int, c_int32, c_int64, c_size_t, c_uint32,
                    c_uint64, c_void_p, sizeof)
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

from .errors import LibraryNotFoundError, NotSupportedError, error_for_status

SONAMES: Tuple[str, ...] = ("libspotinfer.so.0",)
if sys.platform == "darwin":  # the same library as CMake names it there
    SONAMES = ("libspotinfer.0.dylib",) + SONAMES

ENV_VAR = "SPOTINFER_LIBRARY"
ABI_MAJOR = 0  # the SONAME major this binding mirrors

ID_MAX = 64
MAX_FALLBACKS = 4
MAX_EXCLUDED = 32  # SPI_MAX_EXCLUDED: replicas one request may exclude (0.3.0)
MODULE_ABI_VERSION = 1

# The per pool and tier summaries of a route context (since 0.2.0).
SUMMARY_TOP = 3 + MAX_FALLBACKS  # SPI_SUMMARY_TOP: entries of top[]
SUMMARY_CELLS = 4                # SPI_SUMMARY_CELLS: (spot, on-demand) x (small, large)
POLICY_SUMMARIES_ONLY = 1        # spi_policy_module.flags
MATCH_CONTINUED = 0x1            # SPI_MATCH_CONTINUED: Candidate.match_flags
_POOL_SPOT, _POOL_ON_DEMAND = 1, 2
_TIER_SMALL, _TIER_LARGE = 1, 2


def summary_index(pool: int, tier: int) -> int:
    """SPI_SUMMARY_INDEX: where the summary of pool and model tier is in a
    route context's summaries (spot small, spot large, on-demand small,
    on-demand large); -1 when either is out of range."""
    if pool in (_POOL_SPOT, _POOL_ON_DEMAND) and tier in (_TIER_SMALL, _TIER_LARGE):
        return (pool - _POOL_SPOT) * 2 + (tier - _TIER_SMALL)
    return -1


# ----------------------------------------------------------------- structs

class _Struct(Structure):
    """A C struct whose size field (if any) is filled in on construction."""

    _c_name_ = ""
    _sized_: Optional[bool] = None

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        cls = type(self)
        sized = cls.__dict__.get("_sized_")
        if sized is None:  # computed once per class
            sized = any(f[0] == "struct_size" for f in cls._fields_)
            cls._sized_ = sized
        if sized and "struct_size" not in kw:
            self.struct_size = sizeof(cls)

    def as_dict(self) -> Dict[str, Any]:
        """Field name -> Python value (char arrays as text), for debugging."""
        out: Dict[str, Any] = {}
        for f in self._fields_:
            v = getattr(self, f[0])
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            out[f[0]] = v
        return out


# Callback types of spi_hooks.
ALLOC_FN = CFUNCTYPE(c_void_p, c_void_p, c_size_t)
FREE_FN = CFUNCTYPE(None, c_void_p, c_void_p)
CLOCK_FN = CFUNCTYPE(c_int64, c_void_p)
LOG_FN = CFUNCTYPE(None, c_void_p, c_int32, c_void_p, c_size_t)


class Hooks(_Struct):
    _c_name_ = "spi_hooks"
    _fields_ = [
        ("struct_size", c_size_t),
        ("alloc", ALLOC_FN),
        ("free", FREE_FN),
        ("alloc_user_data", c_void_p),
        ("clock", CLOCK_FN),
        ("clock_user_data", c_void_p),
        ("log", LOG_FN),
        ("log_user_data", c_void_p),
        ("log_level", c_int32),
        ("reserved0", c_int32),
    ]


class OptionInfo(_Struct):
    _c_name_ = "spi_option_info"
    _fields_ = [
        ("struct_size", c_size_t),
        ("path", c_char_p),
        ("type", c_int32),
        ("reserved0", c_int32),
        ("default_json", c_char_p),
        ("min_value", c_double),
        ("max_value", c_double),
        ("doc", c_char_p),
    ]


class Classification(_Struct):
    _c_name_ = "spi_classification"
    _fields_ = [
        ("struct_size", c_size_t),
        ("klass", c_int32),
        ("replayable", c_int32),
        ("model_tier", c_int32),
        ("rule_index", c_int32),
        ("complexity", c_double),
        ("max_output_tokens", c_int64),
        ("tools_allowed", c_int32),
        ("defer", c_int32),
        ("vllm_priority", c_int32),
        ("llmd_priority", c_int32),
        ("service_tier", c_int32),
        ("pressure", c_int32),
        ("reason", c_char * 120),
    ]


class CacheKey(_Struct):
    _c_name_ = "spi_cache_key"
    _fields_ = [
        ("high64", c_uint64),
        ("low64", c_uint64),
    ]


class SpotCost(_Struct):
    _c_name_ = "spi_spot_cost"
    _fields_ = [
        ("struct_size", c_size_t),
        ("effective_hours", c_double),
        ("spot_cost", c_double),
        ("cost_per_effective_hour", c_double),
        ("on_demand_cost", c_double),
        ("savings", c_double),
        ("savings_fraction", c_double),
        ("expected_interruptions", c_double),
    ]


class Price(_Struct):
    _c_name_ = "spi_price"
    _fields_ = [
        ("struct_size", c_size_t),
        ("pool", c_int32),
        ("reserved0", c_int32),
        ("prompt_tokens", c_double),
        ("output_tokens", c_double),
        ("gpu_seconds", c_double),
        ("usd", c_double),
        ("usd_per_million", c_double),
    ]


class ReplicaInfo(_Struct):
    _c_name_ = "spi_replica_info"
    _fields_ = [
        ("struct_size", c_size_t),
        ("id", c_char_p),
        ("id_len", c_size_t),
        ("pool", c_int32),
        ("model_tier", c_int32),
        ("zone", c_char_p),
        ("zone_len", c_size_t),
        ("instance_type", c_char_p),
        ("instance_type_len", c_size_t),
        ("models", c_char_p),
        ("models_len", c_size_t),
        ("usd_per_hour", c_double),
        ("max_inflight", c_uint32),
        ("reserved0", c_uint32),
        ("node", c_char_p),
        ("node_len", c_size_t),
        ("decode_tokens_per_s", c_double),
    ]


class Load(_Struct):
    _c_name_ = "spi_load"
    _fields_ = [
        ("struct_size", c_size_t),
        ("running", c_double),
        ("waiting", c_double),
        ("kv_usage", c_double),
        ("at_ns", c_int64),
    ]


class ReplicaStatus(_Struct):
    _c_name_ = "spi_replica_status"
    _fields_ = [
        ("struct_size", c_size_t),
        ("id", c_char * ID_MAX),
        ("pool", c_int32),
        ("model_tier", c_int32),
        ("state", c_int32),
        ("breaker", c_int32),
        ("running", c_double),
        ("waiting", c_double),
        ("kv_usage", c_double),
        ("load_at_ns", c_int64),
        ("load_fresh", c_int32),
        ("inflight", c_uint32),
        ("usd_per_hour", c_double),
        ("max_inflight", c_uint32),
        ("consecutive_errors", c_uint32),
    ]


class Decision(_Struct):
    _c_name_ = "spi_decision"
    _fields_ = [
        ("struct_size", c_size_t),
        ("pool", c_int32),
        ("klass", c_int32),
        ("replayable", c_int32),
        ("model_tier", c_int32),
        ("pressure", c_int32),
        ("tools_allowed", c_int32),
        ("max_output_tokens", c_int64),
        ("replica_id", c_char * ID_MAX),
        ("fallback_ids", (c_char * ID_MAX) * MAX_FALLBACKS),
        ("n_fallbacks", c_uint32),
        ("matched_blocks", c_uint32),
        ("total_blocks", c_uint32),
        ("reason_code", c_int32),
        ("reason", c_char * 160),
        ("ticket", c_uint64),
        ("key", CacheKey),
        ("est_ttft_ms", c_double),
        ("est_usd", c_double),
        ("shadow_pool", c_int32),
        ("shadow_matched_blocks", c_uint32),
        ("shadow_replica_id", c_char * ID_MAX),
    ]


class TicketResult(_Struct):
    _c_name_ = "spi_ticket_result"
    _fields_ = [
        ("struct_size", c_size_t),
        ("status", c_int32),
        ("reserved0", c_int32),
        ("prompt_tokens", c_uint64),
        ("output_tokens", c_uint64),
        ("cached_tokens", c_uint64),
        ("ttft_ms", c_double),
        ("duration_ms", c_double),
    ]


class LedgerRow(_Struct):
    _c_name_ = "spi_ledger_row"
    _fields_ = [
        ("struct_size", c_size_t),
        ("tenant", c_char * ID_MAX),
        ("model", c_char * ID_MAX),
        ("pool", c_int32),
        ("klass", c_int32),
        ("completed", c_uint64),
        ("failed", c_uint64),
        ("prompt_tokens", c_uint64),
        ("output_tokens", c_uint64),
        ("cached_tokens", c_uint64),
        ("gpu_seconds", c_double),
        ("usd", c_double),
        ("usd_per_completed", c_double),
        ("tokens_per_gpu_second", c_double),
        ("interrupted", c_uint64),
        ("wasted_output_tokens", c_uint64),
        ("reprefilled_tokens", c_uint64),
        ("wasted_usd", c_double),
        ("replays", c_uint64),
        ("replay_latency_ms", c_double),
        ("fallback_on_demand_seconds", c_double),
    ]


class Signals(_Struct):
    _c_name_ = "spi_signals"
    _fields_ = [
        ("struct_size", c_size_t),
        ("queue_depth", c_double * 4),
        ("p95_ttft_ms", c_double * 4),
        ("cache_miss_rate", c_double),
        ("warm_on_demand", c_uint32),
        ("reserved0", c_uint32),
        ("draft_acceptance", c_double),
    ]


class ParseReport(_Struct):
    _c_name_ = "spi_parse_report"
    _fields_ = [
        ("struct_size", c_size_t),
        ("found", c_size_t),
        ("skipped", c_size_t),
        ("first_skipped", c_size_t),
    ]


class Notice(_Struct):
    _c_name_ = "spi_notice"
    _fields_ = [
        ("struct_size", c_size_t),
        ("kind", c_int32),
        ("format", c_int32),
        ("node", c_char * ID_MAX),
        ("deadline_ns", c_int64),
        ("received_ns", c_int64),
        ("active", c_int32),
        ("reserved0", c_int32),
        ("event_id", c_char * ID_MAX),
        ("dedup_key", c_char * 160),
    ]


class TicketPlan(_Struct):
    """An output array element of spi_engine_notice(): plans[0].struct_size
    is the array's element size."""
    _c_name_ = "spi_ticket_plan"
    _fields_ = [
        ("struct_size", c_size_t),
        ("ticket", c_uint64),
        ("action", c_int32),
        ("klass", c_int32),
        ("remaining_s", c_double),
        ("deadline_s", c_double),
        ("progress", c_double),
        ("replica_id", c_char * ID_MAX),
    ]


class Envelope(_Struct):
    _c_name_ = "spi_envelope"
    _fields_ = [
        ("struct_size", c_size_t),
        ("key", c_void_p), ("key_len", c_size_t),
        ("body", c_void_p), ("body_len", c_size_t),
        ("openai_kind", c_int32),
        ("klass", c_int32),
        ("partial_text", c_void_p), ("partial_text_len", c_size_t),
        ("partial_tokens", POINTER(c_uint32)), ("partial_token_count", c_size_t),
        ("stream_offset", c_uint64),
        ("attempts", c_uint32),
        ("flags", c_uint32),
        ("first_enqueued_ns", c_int64),
        ("deadline_ns", c_int64),
        ("tenant", c_char * ID_MAX),
    ]


ENVELOPE_FROM_SCRATCH = 1


class ReplayStats(_Struct):
    _c_name_ = "spi_replay_stats"
    _fields_ = [
        ("struct_size", c_size_t),
        ("ready", c_uint64 * 4),
        ("leased", c_uint64),
        ("delayed", c_uint64),
        ("dead", c_uint64),
        ("enqueued", c_uint64),
        ("duplicates", c_uint64),
        ("acked", c_uint64),
        ("nacked", c_uint64),
        ("expired_leases", c_uint64),
        ("journal_bytes", c_uint64),
        # since 0.2.0
        ("recovered", c_uint64),
        ("torn", c_uint64),
        ("truncated_bytes", c_uint64),
        ("syncs", c_uint64),
        ("compactions", c_uint64),
        # since 0.3.0
        ("skipped", c_uint64),
        ("skipped_bytes", c_uint64),
        ("aside_files", c_uint64),
        ("fallback_held", c_uint64),
        ("fallback_enqueued", c_uint64),
        ("fallback_moved", c_uint64),
        ("repaired", c_uint64),
    ]


NODE_FN = CFUNCTYPE(None, c_void_p, c_void_p, c_size_t, c_int32, c_int32)


# ------------------------------------------------------- module structs

class RequestView(_Struct):
    _c_name_ = "spi_request_view"
    _fields_ = [
        ("struct_size", c_size_t),
        ("model", c_void_p), ("model_len", c_size_t),
        ("tokenizer_version", c_void_p), ("tokenizer_version_len", c_size_t),
        ("system_prompt", c_void_p), ("system_prompt_len", c_size_t),
        ("tools_canonical", c_void_p), ("tools_canonical_len", c_size_t),
        ("retrieval_template", c_void_p), ("retrieval_template_len", c_size_t),
        ("tenant", c_void_p), ("tenant_len", c_size_t),
        ("tenant_tier", c_void_p), ("tenant_tier_len", c_size_t),
        ("tenant_salt", c_void_p), ("tenant_salt_len", c_size_t),
        ("decode_profile", c_void_p), ("decode_profile_len", c_size_t),
        ("last_user_text", c_void_p), ("last_user_text_len", c_size_t),
        ("prompt", c_void_p), ("prompt_len", c_size_t),
        ("token_ids", POINTER(c_uint32)), ("token_count", c_size_t),
        ("explicit_class", c_int32),
        ("service_tier", c_int32),
        ("priority", c_int64), ("priority_set", c_int32),
        ("stream", c_int32),
        ("sla_ms", c_int64), ("sla_ms_set", c_int32),
        ("replayable", c_int32), ("replayable_set", c_int32),
        ("max_output_tokens", c_int64), ("max_output_tokens_set", c_int32),
        ("expected_output_tokens", c_int64),
        ("expected_output_tokens_set", c_int32),
        ("prompt_tokens", c_int64), ("prompt_tokens_set", c_int32),
        ("has_tools", c_int32),
        ("message_count", c_size_t),
        ("priority_class", c_int32),
        ("forced_model_tier", c_int32),
        ("metadata", c_void_p), ("metadata_len", c_size_t),
        ("metadata_count", c_size_t),
    ]


CONFIGURE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t,
                         POINTER(c_void_p), c_void_p, c_size_t)
RELEASE_FN = CFUNCTYPE(None, c_void_p, c_void_p)
DESTROY_FN = CFUNCTYPE(None, c_void_p)
CLASSIFY_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(RequestView),
                        c_int32, POINTER(Classification))


class DegradeLevels(_Struct):
    _c_name_ = "spi_degrade_levels"
    _fields_ = [
        ("struct_size", c_size_t),
        ("max_output_tokens", c_int64 * 4),
        ("tools_allowed", c_int32 * 4),
        ("defer", c_int32 * 4),
    ]


CLASSIFY_LEVELS_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(RequestView),
                               POINTER(Classification), POINTER(DegradeLevels))
BUILD_KEY_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(RequestView),
                         POINTER(CacheKey))
BLOCK_HASHES_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(RequestView),
                            POINTER(CacheKey), POINTER(c_uint64), c_size_t,
                            POINTER(c_size_t))
PRICE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(RequestView), c_int32,
                     POINTER(Price))


# The fields every module struct but the policy's (flags in reserved0's
# place) begins with.
_MODULE_HEAD: List[Tuple[str, Any]] = [
    ("abi_version", c_uint32),
    ("struct_size", c_uint32),
    ("on_failure", c_int32),
    ("reserved0", c_int32),
    ("configure", CONFIGURE_FN),
    ("release", RELEASE_FN),
]


class _ModuleStruct(_Struct):
    """Module structs: abi_version and a uint32 struct_size come first."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        if "abi_version" not in kw:
            self.abi_version = MODULE_ABI_VERSION


class ClassifierModule(_ModuleStruct):
    _c_name_ = "spi_classifier_module"
    _fields_ = _MODULE_HEAD + [
        ("classify", CLASSIFY_FN),
        ("classify_levels", CLASSIFY_LEVELS_FN),
    ]


class KeyBuilderModule(_ModuleStruct):
    _c_name_ = "spi_key_builder_module"
    _fields_ = _MODULE_HEAD + [
        ("build_key", BUILD_KEY_FN),
        ("block_hashes", BLOCK_HASHES_FN),
    ]


class CostModelModule(_ModuleStruct):
    _c_name_ = "spi_cost_model_module"
    _fields_ = _MODULE_HEAD + [
        ("price", PRICE_FN),
    ]


class Candidate(_Struct):
    """One replica a policy may choose. No struct_size: the context's
    candidate_size is the stride of the array."""
    _c_name_ = "spi_candidate"
    _fields_ = [
        ("id", c_void_p), ("id_len", c_size_t),
        ("pool", c_int32),
        ("model_tier", c_int32),
        ("eligible", c_int32),
        ("probe", c_int32),
        ("fresh", c_int32),
        ("advised", c_int32),         # since 0.2.0; reserved0 before
        ("running", c_double),
        ("waiting", c_double),
        ("kv_usage", c_double),
        ("inflight", c_uint32),
        ("max_inflight", c_uint32),
        ("matched_blocks", c_uint32),
        ("match_flags", c_uint32),    # MATCH_* (since 0.3.0; reserved1 before)
        ("rendezvous", c_uint64),
        ("est_ttft_ms", c_double),
        ("usd_per_hour", c_double),
        ("est_wait_ms", c_double),    # since 0.3.0 (candidate_size covers)
        ("served_tokens", c_double),
        ("prefill_tokens_per_s", c_double),
    ]


class PoolSummary(_Struct):
    """The usable candidates of one pool and model tier (since 0.2.0). No
    struct_size: the context's summary_size is the stride of the array.
    Every index names an entry of the context's candidates, or is -1."""
    _c_name_ = "spi_pool_summary"
    _fields_ = [
        ("pool", c_int32),
        ("model_tier", c_int32),
        ("usable", c_uint32),
        ("n_top", c_uint32),
        ("top", c_int32 * SUMMARY_TOP),
        ("warm", c_int32),
        ("least", c_int32),
        ("rendezvous", c_int32),
        ("reserved0", c_int32),
    ]


class RouteContext(_Struct):
    """struct_size tells whether the summaries fields (0.2.0) are there."""
    _c_name_ = "spi_route_context"
    _fields_ = [
        ("struct_size", c_size_t),
        ("candidate_size", c_size_t),
        ("req", POINTER(RequestView)),
        ("cls", POINTER(Classification)),
        ("candidates", c_void_p),
        ("n_candidates", c_size_t),
        ("total_blocks", c_uint32),
        ("max_fallbacks", c_uint32),
        ("pressure", c_int32 * 4),
        ("shed", c_int32 * 4),
        ("now_ns", c_int64),
        ("summaries", c_void_p),      # since 0.2.0
        ("summary_size", c_size_t),
        ("n_summaries", c_size_t),
        ("mean_served_tokens", c_double * 4),  # since 0.3.0
        ("prompt_tokens", c_double),
        ("mean_max_inflight", c_double * 4),
        ("mean_prefill_wait_ms", c_double * SUMMARY_CELLS),
        ("spot_seen_ns", c_int64),
    ]


class PolicyChoice(_Struct):
    _c_name_ = "spi_policy_choice"
    _fields_ = [
        ("struct_size", c_size_t),
        ("pool", c_int32),
        ("reason_code", c_int32),
        ("n_order", c_uint32),
        ("order", c_uint32 * (1 + MAX_FALLBACKS)),
        ("reason", c_char * 160),
    ]


CHOOSE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(RouteContext),
                      POINTER(PolicyChoice))


class PolicyModule(_ModuleStruct):
    _c_name_ = "spi_policy_module"
    _fields_ = [
        ("abi_version", c_uint32),
        ("struct_size", c_uint32),
        ("on_failure", c_int32),
        ("flags", c_int32),           # POLICY_*; reserved0 before 0.2.0
        ("configure", CONFIGURE_FN),
        ("release", RELEASE_FN),
        ("choose", CHOOSE_FN),
    ]


class ReplayRecord(_Struct):
    _c_name_ = "spi_replay_record"
    _fields_ = [
        ("struct_size", c_size_t),
        ("type", c_int32),
        ("attempts", c_uint32),
        ("key", c_void_p), ("key_len", c_size_t),
        ("visible_ns", c_int64),
        ("envelope", POINTER(Envelope)),
    ]


class ReplayStoreStats(_Struct):
    _c_name_ = "spi_replay_store_stats"
    _fields_ = [
        ("struct_size", c_size_t),
        ("bytes", c_uint64),
        ("appended", c_uint64),
        ("syncs", c_uint64),
        ("recovered", c_uint64),
        ("torn", c_uint64),
        ("truncated_bytes", c_uint64),
        ("compactions", c_uint64),
        ("skipped", c_uint64),
        ("skipped_bytes", c_uint64),
        ("aside_files", c_uint64),
        ("repaired", c_uint64),
    ]


REPLAY_RECORD_FN = CFUNCTYPE(c_int, c_void_p, POINTER(ReplayRecord))
RECOVER_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, REPLAY_RECORD_FN, c_void_p,
                       c_void_p, c_size_t)
APPEND_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(ReplayRecord),
                      POINTER(c_uint64), c_void_p, c_size_t)
SYNC_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_uint64, c_void_p, c_size_t)
COMPACT_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(ReplayRecord),
                       c_size_t, c_void_p, c_size_t)
STORE_STATS_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(ReplayStoreStats))


class ReplayCtx(_Struct):
    """What a queue store's calls get: the queue's settings and the time."""
    _c_name_ = "spi_replay_ctx"
    _fields_ = [
        ("struct_size", c_size_t),
        ("now_ns", c_int64),
        ("lease_ms", c_int64),
        ("max_attempts", c_uint32),
        ("reserved0", c_uint32),
        ("max_bytes", c_int64),
        ("max_acked_keys", c_int64),
        ("max_dead", c_int64),
    ]


# A queue store's callbacks (since 0.3.0). The binding mirrors them so the
# struct's layout is the header's; a queue store is a C module (for example
# libspotinfer_redis's "redis"), selected by configuration.
ENVELOPE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p)
Q_ENQUEUE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(ReplayCtx), c_void_p,
                         POINTER(c_int32), c_void_p, c_size_t)
Q_CLAIM_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(ReplayCtx), c_uint32,
                       ENVELOPE_FN, c_void_p, POINTER(c_uint64), c_void_p, c_size_t)
Q_ACK_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(ReplayCtx), c_uint64,
                     c_void_p, c_size_t)
Q_NACK_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(ReplayCtx), c_uint64,
                      c_uint32, c_int64, c_int32, c_void_p, c_size_t)
Q_STATS_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(ReplayCtx), c_void_p,
                       c_void_p, c_size_t)
Q_TICK_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(ReplayCtx), c_void_p,
                      c_size_t)
STORE_CHECK_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t, c_void_p, c_size_t)


class ReplayStoreModule(_ModuleStruct):
    _c_name_ = "spi_replay_store_module"
    _fields_ = _MODULE_HEAD + [
        ("recover", RECOVER_FN),
        ("append", APPEND_FN),
        ("sync", SYNC_FN),
        ("compact", COMPACT_FN),
        ("stats", STORE_STATS_FN),
        ("enqueue", Q_ENQUEUE_FN),
        ("claim", Q_CLAIM_FN),
        ("ack", Q_ACK_FN),
        ("nack", Q_NACK_FN),
        ("queue_stats", Q_STATS_FN),
        ("tick", Q_TICK_FN),
        ("check", STORE_CHECK_FN),
    ]


#: Every struct mirror, for the layout test and for introspection.
STRUCTS: Tuple[type, ...] = (
    Hooks, OptionInfo, Classification, CacheKey, SpotCost, Price,
    ReplicaInfo, Load, ReplicaStatus, Decision, TicketResult, LedgerRow,
    Signals, ParseReport, Notice, TicketPlan, Envelope, ReplayStats, RequestView,
    DegradeLevels, ClassifierModule, KeyBuilderModule,
    CostModelModule, Candidate, PoolSummary, RouteContext, PolicyChoice,
    PolicyModule, ReplayRecord, ReplayStoreStats, ReplayCtx, ReplayStoreModule,
)


# The fleet bus (spotinfer_module.h): notices and cooldowns shared between
# engines. Python code reads its stats; a bus is a C module (for example
# libspotinfer_redis's), selected by configuration.
FLEET_MSG_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
FLEET_PUBLISH_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_size_t,
                             c_void_p, c_size_t)
FLEET_POLL_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t, FLEET_MSG_FN,
                          c_void_p, c_void_p, c_size_t)


class FleetBusModule(_ModuleStruct):
    _c_name_ = "spi_fleet_bus_module"
    _fields_ = _MODULE_HEAD + [
        ("publish", FLEET_PUBLISH_FN),
        ("poll", FLEET_POLL_FN),
    ]


class FleetStats(_Struct):
    _c_name_ = "spi_fleet_stats"
    _fields_ = [
        ("struct_size", c_size_t),
        ("configured", c_int32),
        ("reserved0", c_int32),
        ("published", c_uint64),
        ("publish_failed", c_uint64),
        ("pending", c_uint64),
        ("dropped", c_uint64),
        ("polls", c_uint64),
        ("poll_failed", c_uint64),
        ("received", c_uint64),
        ("applied", c_uint64),
        ("duplicates", c_uint64),
        ("malformed", c_uint64),
        ("unknown", c_uint64),
        ("last_error", c_char * 256),
    ]


STRUCTS += (FleetBusModule, FleetStats)


# -------------------------------------------------------- function table

# Where a failed call's message lives: the handle in the first argument.
ENGINE = "engine"    # spi_engine_errmsg(args[0])
REQUEST = "request"  # spi_request_errmsg(args[0])
REPLAY = "replay"    # spi_replay_errmsg(args[0])
ERRBUF = "errbuf"    # the caller's errbuf, the last-but-one argument
PURE = "pure"        # no handle: the status name says it all
NONE = None          # not a status (void, size_t, pointers, counts)

_EBUFSIZE = -4
_EIO = -41
_ENOTFOUND = -42

P = POINTER
_vp = c_void_p   # opaque handles (spi_engine *, spi_request *)

# name, restype, argtypes, check[, statuses that are results, not errors]
FUNCTIONS: Tuple[Tuple[Any, ...], ...] = (
    # version and status
    ("spi_version_number", c_uint32, (), NONE),
    ("spi_version_string", c_char_p, (), NONE),
    ("spi_strerror", c_char_p, (c_int,), NONE),
    # engine
    ("spi_engine_new", c_int, (P(_vp), P(Hooks)), PURE),
    ("spi_engine_free", None, (_vp,), NONE),
    ("spi_engine_errmsg", c_char_p, (_vp,), NONE),
    ("spi_engine_configure", c_int, (_vp, c_char_p, c_size_t), ENGINE),
    ("spi_engine_configure_file", c_int, (_vp, c_char_p), ENGINE),
    ("spi_engine_config_json", c_int, (_vp, c_void_p, c_size_t, P(c_size_t)),
     ENGINE, frozenset({_EBUFSIZE})),
    # options
    ("spi_option_count", c_size_t, (), NONE),
    ("spi_option_get", c_int, (c_size_t, P(OptionInfo)), PURE),
    # classes and vocabularies
    ("spi_class_name", c_char_p, (c_int32,), NONE),
    ("spi_service_tier_name", c_char_p, (c_int32,), NONE),
    ("spi_engine_class_to_priority", c_int,
     (_vp, c_int32, c_int32, P(c_int32)), ENGINE),
    ("spi_engine_class_from_priority", c_int,
     (_vp, c_int32, c_int32, P(c_int32)), ENGINE),
    ("spi_engine_class_to_service_tier", c_int,
     (_vp, c_int32, P(c_int32)), ENGINE),
    ("spi_engine_class_from_service_tier", c_int,
     (_vp, c_int32, P(c_int32)), ENGINE),
    # requests
    ("spi_request_new", c_int, (_vp, P(_vp)), ENGINE),
    ("spi_request_free", None, (_vp,), NONE),
    ("spi_request_reset", c_int, (_vp,), REQUEST),
    ("spi_request_errmsg", c_char_p, (_vp,), NONE),
    ("spi_request_set_str", c_int, (_vp, c_int32, c_char_p, c_size_t), REQUEST),
    ("spi_request_set_int", c_int, (_vp, c_int32, c_int64), REQUEST),
    ("spi_request_unset_int", c_int, (_vp, c_int32), REQUEST),
    ("spi_request_add_message", c_int,
     (_vp, c_char_p, c_size_t, c_char_p, c_size_t), REQUEST),
    ("spi_request_set_metadata", c_int,
     (_vp, c_char_p, c_size_t, c_char_p, c_size_t), REQUEST),
    ("spi_request_set_token_ids", c_int, (_vp, c_void_p, c_size_t), REQUEST),
    ("spi_request_exclude_replica", c_int, (_vp, c_char_p, c_size_t), REQUEST),
    ("spi_request_parse_openai", c_int, (_vp, c_char_p, c_size_t, c_int32),
     REQUEST),
    ("spi_request_get_str", c_int, (_vp, c_int32, P(c_void_p), P(c_size_t)),
     REQUEST),
    ("spi_request_get_int", c_int, (_vp, c_int32, P(c_int64), P(c_int32)),
     REQUEST),
    ("spi_request_message_count", c_size_t, (_vp,), NONE),
    # classify, key, price
    ("spi_classify", c_int, (_vp, c_int32, P(Classification)), REQUEST),
    ("spi_cache_key_hex", c_int, (P(CacheKey), c_void_p, c_size_t), PURE),
    ("spi_request_cache_key", c_int, (_vp, P(CacheKey)), REQUEST),
    ("spi_request_block_hashes", c_int,
     (_vp, c_void_p, c_size_t, P(c_size_t)), REQUEST, frozenset({_EBUFSIZE})),
    ("spi_request_canonical_prompt", c_int, (_vp, P(c_void_p), P(c_size_t)),
     REQUEST),
    ("spi_request_price", c_int, (_vp, c_int32, P(Price)), REQUEST),
    # cost formulas
    ("spi_cost_per_million_tokens", c_int,
     (c_double, c_uint32, c_double, P(c_double)), PURE),
    ("spi_cost_break_even_tps", c_int,
     (c_double, c_uint32, c_double, P(c_double)), PURE),
    ("spi_cost_spot_effective", c_int,
     (c_double, c_double, c_double, c_double, c_double, P(SpotCost)), PURE),
    ("spi_cost_self_host_break_even", c_int,
     (c_double, c_uint32, c_double, c_double, P(c_double)), PURE),
    ("spi_cost_kv_bytes_per_sequence", c_int,
     (c_uint32, c_uint32, c_uint32, c_uint32, c_double, P(c_double)), PURE),
    ("spi_cost_max_sequences", c_int,
     (c_double, c_double, c_double, c_double, P(c_uint64)), PURE),
    # replicas
    ("spi_replica_upsert", c_int, (_vp, P(ReplicaInfo)), ENGINE),
    ("spi_replica_remove", c_int, (_vp, c_char_p, c_size_t), ENGINE),
    ("spi_replica_set_state", c_int, (_vp, c_char_p, c_size_t, c_int32),
     ENGINE),
    ("spi_replica_report_load", c_int, (_vp, c_char_p, c_size_t, P(Load)),
     ENGINE),
    ("spi_metrics_parse", c_int, (c_char_p, c_size_t, P(Load)), PURE),
    ("spi_metrics_parse_v2", c_int,
     (c_char_p, c_size_t, P(Load), P(ParseReport), c_void_p, c_size_t),
     ERRBUF),
    ("spi_replica_report_metrics", c_int,
     (_vp, c_char_p, c_size_t, c_char_p, c_size_t), ENGINE),
    ("spi_replica_count", c_size_t, (_vp,), NONE),
    ("spi_replica_status_at", c_int, (_vp, c_size_t, P(ReplicaStatus)),
     ENGINE),
    ("spi_replica_status_of", c_int,
     (_vp, c_char_p, c_size_t, P(ReplicaStatus)), ENGINE),
    # routing and tickets
    ("spi_reason_name", c_char_p, (c_int32,), NONE),
    ("spi_route", c_int, (_vp, P(Decision)), REQUEST),
    ("spi_ticket_first_token", c_int, (_vp, c_uint64), ENGINE),
    ("spi_ticket_progress", c_int, (_vp, c_uint64, c_uint64), ENGINE),
    ("spi_ticket_finish", c_int, (_vp, c_uint64, P(TicketResult)), ENGINE),
    # ledger, signals, metrics
    ("spi_ledger_count", c_size_t, (_vp,), NONE),
    ("spi_ledger_row_at", c_int, (_vp, c_size_t, P(LedgerRow)), ENGINE),
    ("spi_engine_signals", c_int, (_vp, P(Signals)), ENGINE),
    ("spi_engine_metrics", c_int, (_vp, c_void_p, c_size_t, P(c_size_t)),
     ENGINE, frozenset({_EBUFSIZE})),
    # notices and nodes
    ("spi_notice_kind_name", c_char_p, (c_int32,), NONE),
    ("spi_notice_parse", c_int,
     (c_int32, c_int32, c_char_p, c_size_t, c_char_p, c_size_t, c_int64,
      c_void_p, c_size_t, P(c_size_t), c_void_p, c_size_t), ERRBUF,
     frozenset({_EBUFSIZE})),
    ("spi_notice_parse_v2", c_int,
     (c_int32, c_int32, c_char_p, c_size_t, c_char_p, c_size_t, c_int64,
      c_void_p, c_size_t, P(ParseReport), c_void_p, c_size_t), ERRBUF,
     frozenset({_EBUFSIZE})),
    ("spi_node_state_name", c_char_p, (c_int32,), NONE),
    ("spi_engine_notice", c_int,
     (_vp, P(Notice), c_void_p, c_size_t, P(c_size_t)), ENGINE),
    ("spi_node_set_state", c_int, (_vp, c_char_p, c_size_t, c_int32), ENGINE),
    ("spi_node_get_state", c_int, (_vp, c_char_p, c_size_t, P(c_int32)),
     ENGINE),
    ("spi_engine_on_node_transition", c_int, (_vp, NODE_FN, c_void_p), ENGINE),
    ("spi_engine_node_plans", c_int,
     (_vp, c_char_p, c_size_t, c_void_p, c_size_t, P(c_size_t)), ENGINE,
     frozenset({_EBUFSIZE})),
    ("spi_engine_fleet_stats", c_int, (_vp, P(FleetStats)), ENGINE),
    ("spi_engine_tick", c_int, (_vp,), ENGINE),
    # replay queue
    ("spi_replay_open", c_int, (_vp, c_char_p, c_size_t, P(_vp)), ENGINE),
    ("spi_replay_close", None, (_vp,), NONE),
    ("spi_replay_errmsg", c_char_p, (_vp,), NONE),
    ("spi_replay_enqueue", c_int, (_vp, P(Envelope), P(c_int32)), REPLAY),
    ("spi_replay_claim", c_int,
     (_vp, c_uint32, c_int64, P(c_uint64), P(Envelope), c_void_p, c_size_t,
      P(c_size_t)), REPLAY, frozenset({_EBUFSIZE, _ENOTFOUND})),
    ("spi_replay_ack", c_int, (_vp, c_uint64), REPLAY),
    ("spi_replay_nack", c_int, (_vp, c_uint64), REPLAY),
    # SPI_EIO: a queue store that cannot be reached; the process's own
    # counts are filled all the same (ReplayQueue.stats reads them).
    ("spi_replay_stats_get", c_int, (_vp, P(ReplayStats)), REPLAY,
     frozenset({_EIO})),
    ("spi_replay_tick", c_int, (_vp,), REPLAY),
    ("spi_replay_continuation", c_int,
     (P(Envelope), c_void_p, c_size_t, P(c_size_t), P(c_uint32)), PURE,
     frozenset({_EBUFSIZE})),
    # modules (spotinfer_module.h)
    ("spi_module_kind_name", c_char_p, (c_int32,), NONE),
    ("spi_engine_register_module", c_int,
     (_vp, c_int32, c_char_p, c_size_t, c_void_p, c_void_p, DESTROY_FN),
     ENGINE),
    ("spi_engine_module_name", c_int, (_vp, c_int32, c_size_t, P(c_void_p)),
     ENGINE, frozenset({_ENOTFOUND})),
)


def _decode(b: Optional[bytes]) -> str:
    return b.decode("utf-8", "replace") if b else ""


# Shared libraries libspotinfer.so.0 itself needs at run time, with the
# Debian / Ubuntu package that provides each (named in the load error).
RUNTIME_DEPENDENCIES: Tuple[Tuple[str, str], ...] = (
    ("libcjson.so.1", "libcjson1"),
    ("libxxhash.so.0", "libxxhash0"),
)


class Library:
    """libspotinfer with every function of FUNCTIONS bound, loaded on first use.

    ``Library()`` loads nothing: the first attribute that is not yet there
    (``lib.spi_classify``, ``lib.path``, ``lib.version``, ...) finds and
    loads the shared library (see ``load_library``) and binds every
    function, so ``import spotinfer`` works on a machine without the C
    library and the first call raises LibraryNotFoundError saying what is
    missing and how to install it. A failed load is tried again on the
    next use. ``Library(cdll, path)`` binds an already loaded library.

    Attribute access gives the ctypes function (``lib.spi_classify``).
    Functions the loaded library does not export are bound to a stub that
    raises NotSupportedError naming the function, and listed in ``missing``.
    """

    cdll: ctypes.CDLL
    path: str
    missing: List[str]
    names: Tuple[str, ...]
    version: str
    version_number: int

    def __init__(self, cdll: Optional[ctypes.CDLL] = None,
                 path: Optional[str] = None) -> None:
        self.__dict__["_lock"] = threading.Lock()
        if cdll is not None:
            self._bind_all(cdll, path or str(cdll._name))

    def __getattr__(self, name: str) -> Any:
        # Called only for attributes not set yet: load, then look again.
        if name.startswith("__") or "_loaded" in self.__dict__:
            raise AttributeError(name)
        with self.__dict__["_lock"]:
            if "_loaded" not in self.__dict__:
                # Bound in full on a new object, then taken over whole, so
                # a library refused half-way leaves nothing bound here.
                done = load_library().__dict__
                self.__dict__.update(
                    (k, v) for k, v in done.items() if k != "_lock")
        return object.__getattribute__(self, name)

    @property
    def loaded(self) -> bool:
        """Whether the shared library has been loaded (without loading it)."""
        return "_loaded" in self.__dict__

    def _bind_all(self, cdll: ctypes.CDLL, path: str) -> None:
        self.cdll = cdll
        self.path = path
        self.missing = []
        self.names = tuple(row[0] for row in FUNCTIONS)
        for row in FUNCTIONS:
            self._bind(*row)
        self.version_number = int(self.spi_version_number())
        self.version = _decode(self.spi_version_string())
        if self.version_number // 10000 != ABI_MAJOR:
            raise LibraryNotFoundError(
                f"{path} is libspotinfer {self.version}; this binding needs "
                f"major version {ABI_MAJOR}")
        self.__dict__["_loaded"] = True

    def _bind(self, name: str, restype: Any, argtypes: Sequence[Any],
              check: Optional[str],
              results: FrozenSet[int] = frozenset()) -> None:
        try:
            fn = getattr(self.cdll, name)
        except AttributeError:
            self.missing.append(name)
            setattr(self, name, self._missing_stub(name))
            return
        fn.restype = restype
        fn.argtypes = list(argtypes)
        if check is not None:
            fn.errcheck = self._errcheck(check, results)
        setattr(self, name, fn)

    def _missing_stub(self, name: str) -> Callable[..., Any]:
        path = self.path

        def missing(*args: Any, **kw: Any) -> Any:
            raise NotSupportedError(
                -62, f"{name} is not exported by {path} (an older "
                "libspotinfer than this binding)", status_name="not supported",
                function=name)
        missing.__name__ = name
        return missing

    def _errcheck(self, check: str, results: FrozenSet[int]) -> Callable[..., Any]:
        def errcheck(result: int, func: Any, args: Tuple[Any, ...]) -> int:
            if result >= 0 or result in results:
                return result
            if check == ERRBUF:
                handle = args[-2] if len(args) >= 2 else None
                if isinstance(handle, ctypes.Array):
                    handle = ctypes.addressof(handle)
            else:
                handle = args[0] if args else None
            raise self.error(result, func.__name__, check, handle)
        return errcheck

    def error(self, code: int, function: str, check: str = PURE,
              handle: Any = None) -> Exception:
        """The exception for status code of function, with the handle's message."""
        message = ""
        if handle is not None and check == ENGINE:
            message = _decode(self.cdll.spi_engine_errmsg(handle))
        elif handle is not None and check == REQUEST:
            message = _decode(self.cdll.spi_request_errmsg(handle))
        elif handle is not None and check == REPLAY:
            message = _decode(self.cdll.spi_replay_errmsg(handle))
        elif handle is not None and check == ERRBUF:
            message = _decode(ctypes.string_at(handle)) if handle else ""
        return error_for_status(code, message, status_name=self.strerror(code),
                                function=function)

    def strerror(self, code: int) -> str:
        return _decode(self.spi_strerror(code))

    def has(self, name: str) -> bool:
        """Whether the loaded library exports name."""
        return name in self.names and name not in self.missing


def _try_load(path: str) -> ctypes.CDLL:
    return ctypes.CDLL(path)


def _install_hint(error: str) -> str:
    """What to do about a loader error that names a missing dependency."""
    for soname, package in RUNTIME_DEPENDENCIES:
        if soname in error:
            return (f"; libspotinfer needs {soname}, which is missing: "
                    f"install it with `sudo apt-get install {package}` "
                    "(Debian, Ubuntu)")
    return ""


def find_library() -> Tuple[ctypes.CDLL, str]:
    """Load the shared library: $SPOTINFER_LIBRARY if set, else the wheel's
    copy beside this module, else the SONAME on the loader path.

    An explicitly set SPOTINFER_LIBRARY that cannot be loaded is an error
    rather than a silent fall-back to whatever the loader finds. When the
    library is found but a library it needs is not (libcjson.so.1,
    libxxhash.so.0), the error names the package that provides it.
    """
    tried: List[str] = []
    override = os.environ.get(ENV_VAR)
    if override:
        try:
            return _try_load(override), override
        except OSError as e:
            raise LibraryNotFoundError(
                f"cannot load libspotinfer from {ENV_VAR}={override!r}: {e}"
                + _install_hint(str(e))) from e
    # The copy a wheel carries beside the package, then the installed one.
    here = os.path.dirname(os.path.abspath(__file__))
    bundled = [os.path.join(here, n) for n in SONAMES]
    hint = ""
    for name in [p for p in bundled if os.path.exists(p)] + list(SONAMES):
        try:
            return _try_load(name), name
        except OSError as e:
            tried.append(f"{name!r} ({e})")
            hint = hint or _install_hint(str(e))
    if hint:
        raise LibraryNotFoundError(
            "cannot load libspotinfer: tried " + ", ".join(tried) + hint)
    raise LibraryNotFoundError(
        "cannot load libspotinfer: tried " + ENV_VAR + " (not set), then "
        + ", ".join(tried) + " on the loader path; install the package with "
        "`pip install ./bindings/python` (its wheel carries the library), or "
        "install libspotinfer (docs/install.md) and run `sudo ldconfig`, or "
        "set " + ENV_VAR + " to the path of libspotinfer.so.0")


def load_library() -> Library:
    """Find and load libspotinfer now (see find_library); raises
    LibraryNotFoundError when it cannot."""
    cdll, path = find_library()
    return Library(cdll, path)


#: The library every module of the package calls through, loaded on first use.
lib = Library()

__all__ = ["lib", "load_library", "find_library", "Library", "FUNCTIONS",
           "STRUCTS", "RUNTIME_DEPENDENCIES", "byref", "sizeof"]
