"""The fleet bus from Python: its stats, its configuration errors, and the
plans for a noticed machine asked for after the fact (spi_engine_node_plans),
which is how a host gets plans for a notice another engine published."""

from __future__ import annotations

import pytest

import spotinfer
from spotinfer import (Engine, ModuleKind, Notice, NoticeFormat, NoticeKind,
                       Pool)

needs_fleet = pytest.mark.skipif(
    not (spotinfer.lib.has("spi_engine_fleet_stats")
         and spotinfer.lib.has("spi_engine_node_plans")),
    reason="the loaded libspotinfer has no fleet bus")

SEC = 1_000_000_000
NOW = 1_700_000_000 * SEC


@needs_fleet
def test_fleet_stats_without_a_bus(engine):
    st = engine.fleet_stats()
    assert st["configured"] is False
    assert st["published"] == 0 and st["applied"] == 0
    assert st["last_error"] == ""
    engine.tick()  # no bus: nothing to poll, no error


@needs_fleet
def test_unknown_bus_is_a_configuration_error(engine):
    with pytest.raises(spotinfer.NotFoundError) as ei:
        engine.configure({"modules": {"fleet_bus": "nope"}})
    assert "modules.fleet_bus" in ei.value.message
    with pytest.raises(spotinfer.SpotinferError) as ei:
        engine.configure({"fleet": {"max_per_poll": 0}})
    assert "fleet.max_per_poll" in ei.value.message
    assert spotinfer.module_kind_name(ModuleKind.FLEET_BUS) == "fleet_bus"


@needs_fleet
def test_node_plans_after_the_notice():
    clock = [NOW]
    with Engine(clock=lambda: clock[0]) as e:
        e.upsert_replica(id="spot-a", pool=Pool.SPOT, usd_per_hour=2.0,
                         max_inflight=16, node="i-1", zone="z1",
                         instance_type="g5.xlarge")
        e.report_load("spot-a", running=1, kv_usage=0.2)
        d = e.request(model="m", replayable=True,
                      messages=[("user", "hello")]).route()
        assert d.replica_id == "spot-a"
        assert e.node_plans("i-1") == []  # not noticed
        e.notice(Notice(NoticeKind.TERMINATE, NoticeFormat.AWS_INSTANCE_ACTION,
                        "i-1", deadline_ns=NOW + 120 * SEC, received_ns=NOW,
                        dedup_key="k"))
        plans = e.node_plans("i-1")
        assert [p.ticket for p in plans] == [d.ticket.id]
        assert plans[0].replica_id == "spot-a"
        with pytest.raises(spotinfer.InvalidArgumentError):
            e.node_plans("")


def test_python_fleet_bus_is_refused_plainly(engine):
    """A fleet bus is a C module: an object with publish and poll is refused
    with a message that says so, not "lacks a required callback"."""
    class Bus:
        def configure(self, config):
            return self

        def publish(self, instance, msg):
            pass

        def poll(self, instance, max_messages):
            return []

    with pytest.raises(spotinfer.NotSupportedError) as ei:
        engine.register_module(ModuleKind.FLEET_BUS, "pybus", Bus())
    assert "C module" in ei.value.message and "pybus" in ei.value.message
    assert "pybus" not in engine.module_names(ModuleKind.FLEET_BUS)
