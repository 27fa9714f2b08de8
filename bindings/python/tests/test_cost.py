"""The pure cost formulas, with the reference worked examples."""

from __future__ import annotations

import math

import pytest

import spotinfer
from spotinfer import CostModel


def test_spot_worked_example():
    # 1000 spot hours at $1.80 against on-demand at $4.50, 5 % of the hours
    # interrupted, 10 minutes lost each.
    s = CostModel.spot_effective(1000, 1.80, 4.50, 0.05, 10 / 60)
    assert s.expected_interruptions == pytest.approx(50)
    assert round(s.effective_hours, 2) == 991.67
    assert s.spot_cost == pytest.approx(1800.0)
    assert round(s.cost_per_effective_hour, 3) == 1.815
    assert s.on_demand_cost == pytest.approx(4462.50)
    assert s.savings == pytest.approx(2662.50)
    assert round(s.savings_fraction, 4) == 0.5966


def test_per_million_and_break_even():
    assert round(CostModel.per_million_tokens(3.50, 1, 1000), 3) == 0.972
    tps = CostModel.break_even_tps(3.50, 1, 0.972222222)
    assert tps == pytest.approx(1000, rel=1e-6)


def test_self_host_break_even():
    t = CostModel.self_host_break_even(3.50, 1, 730, 0.90)
    assert 2.8e9 <= t < 2.9e9


def test_kv_bytes_and_max_sequences():
    # Llama-3-8B: 32 layers, 8 KV heads, head_dim 128, 4096 tokens, FP16.
    b = CostModel.kv_bytes_per_sequence(32, 8, 128, 4096, 2)
    assert b == 512 * 1024 * 1024
    n = CostModel.max_sequences(80e9, 16e9, 0.9, b)
    assert n == math.floor((80e9 - 16e9) * 0.9 / b)


@pytest.mark.parametrize("args", [
    (float("nan"), 1, 1000.0), (-1.0, 1, 1000.0), (3.5, 1, 0.0),
    (float("inf"), 1, 1000.0)])
def test_bad_inputs_raise_range_error(args):
    with pytest.raises(spotinfer.RangeError) as ei:
        CostModel.per_million_tokens(*args)
    assert ei.value.code == -3
    assert ei.value.function == "spi_cost_per_million_tokens"


def test_overhead_that_eats_every_hour():
    with pytest.raises(spotinfer.RangeError):
        CostModel.spot_effective(10, 1.0, 2.0, 1.0, 2.0)


def test_negative_counts_are_refused_not_wrapped(engine):
    """ctypes would wrap -1 into 4294967295, a valid-looking count."""
    with pytest.raises(spotinfer.RangeError) as ei:
        CostModel.per_million_tokens(2.0, -1, 1000.0)
    assert "gpus: -1 is not between 0 and 4294967295" in str(ei.value)
    with pytest.raises(spotinfer.RangeError):
        CostModel.kv_bytes_per_sequence(-80, 8, 128, 8192, 2.0)
    with pytest.raises(spotinfer.RangeError):
        engine.upsert_replica(id="r", pool="spot", usd_per_hour=1.0, max_inflight=-1)
    with pytest.raises(ValueError):  # RangeError is one
        spotinfer.TicketResult(output_tokens=-5)._struct()
