"""The pure cost formulas of libspotinfer (no engine needed).

Every input is validated by the library: NaN, infinity, negative values or
zero where zero is meaningless raise RangeError; results are never NaN or
infinite.
"""

from __future__ import annotations

from ctypes import byref, c_double, c_uint64

from . import _native as _n
from .enums import unsigned
from .types import SpotCost

_lib = _n.lib

__all__ = ["CostModel"]


class CostModel:
    """Namespace of the cost formulas (all static methods)."""

    @staticmethod
    def per_million_tokens(usd_per_gpu_hour: float, gpus: int,
                           tokens_per_s: float) -> float:
        """$ per million tokens = $/GPU-h x GPUs / (tokens/s x 3600) x 1e6."""
        out = c_double()
        _lib.spi_cost_per_million_tokens(usd_per_gpu_hour,
                                         unsigned(gpus, 32, "gpus"),
                                         tokens_per_s, byref(out))
        return out.value

    @staticmethod
    def break_even_tps(usd_per_gpu_hour: float, gpus: int,
                       target_usd_per_million: float) -> float:
        """Tokens/s needed to reach a target $ per million tokens."""
        out = c_double()
        _lib.spi_cost_break_even_tps(usd_per_gpu_hour,
                                     unsigned(gpus, 32, "gpus"),
                                     target_usd_per_million, byref(out))
        return out.value

    @staticmethod
    def spot_effective(spot_hours: float, spot_usd_per_hour: float,
                       on_demand_usd_per_hour: float, interruption_rate: float,
                       restart_overhead_hours: float) -> SpotCost:
        """Effective cost of spot hours when a fraction is interrupted and
        each interruption loses restart_overhead_hours of work."""
        out = _n.SpotCost()
        _lib.spi_cost_spot_effective(spot_hours, spot_usd_per_hour,
                                     on_demand_usd_per_hour, interruption_rate,
                                     restart_overhead_hours, byref(out))
        return SpotCost._from(out)

    @staticmethod
    def self_host_break_even(usd_per_gpu_hour: float, gpus: int,
                             hours_per_month: float,
                             api_usd_per_million: float) -> float:
        """Tokens per month above which self-hosting beats the API."""
        out = c_double()
        _lib.spi_cost_self_host_break_even(usd_per_gpu_hour,
                                           unsigned(gpus, 32, "gpus"),
                                           hours_per_month,
                                           api_usd_per_million, byref(out))
        return out.value

    @staticmethod
    def kv_bytes_per_sequence(layers: int, kv_heads: int, head_dim: int,
                              seq_len: int, bytes_per_element: float) -> float:
        """2 x layers x kv_heads x head_dim x seq_len x bytes_per_element."""
        out = c_double()
        _lib.spi_cost_kv_bytes_per_sequence(
            unsigned(layers, 32, "layers"), unsigned(kv_heads, 32, "kv_heads"),
            unsigned(head_dim, 32, "head_dim"), unsigned(seq_len, 32, "seq_len"),
            bytes_per_element, byref(out))
        return out.value

    @staticmethod
    def max_sequences(gpu_memory_bytes: float, model_bytes: float,
                      utilization: float, kv_bytes_per_sequence: float) -> int:
        """Sequences that fit in (GPU memory - model) x utilization."""
        out = c_uint64()
        _lib.spi_cost_max_sequences(gpu_memory_bytes, model_bytes, utilization,
                                    kv_bytes_per_sequence, byref(out))
        return out.value
