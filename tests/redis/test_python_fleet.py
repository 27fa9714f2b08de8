"""The Python binding on the redis fleet bus, by configuration alone: a
notice handed to engine A (one proxy instance) stops routing to its machine
in engine B (another) after B's next tick, and B gets the plan for its own
open ticket there from node_plans. Run by ctest (label redis) with
SPOTINFER_LIBRARY set to the build tree's libspotinfer and SPI_REDIS_PORT to
the `redis` stage's server; without a server: skipped (77)."""
import os
import sys
import time

port = os.environ.get("SPI_REDIS_PORT")
if not port:  # before loading anything (sanitizer builds run this too)
    print("test_python_fleet: needs SPI_REDIS_PORT")
    sys.exit(77)

import spotinfer  # noqa: E402
from spotinfer import Notice, NoticeFormat, NoticeKind, NodeState, Pool  # noqa: E402

SEC = 1_000_000_000
config = {"modules": {"fleet_bus": "redis"},
          "module_config": {"redis": {"address": "127.0.0.1:" + port,
                                      "key_prefix": "pyfleet:%d:" % os.getpid(),
                                      "lookback_ms": 0}}}
a, b = spotinfer.Engine(), spotinfer.Engine()
a.configure(config)
b.configure(config)
moved = []
b.on_node_transition(lambda node, old, new: moved.append((node, new)))
for rid, node, zone in (("spot-a", "i-aaa", "z1"), ("spot-b", "i-bbb", "z2")):
    b.upsert_replica(id=rid, pool=Pool.SPOT, usd_per_hour=1.8, max_inflight=16,
                     node=node, zone=zone, instance_type="g5.xlarge")
    b.report_load(rid, running=1, kv_usage=0.2)
b.tick()  # B reads the stream from here on


def route(prompt):
    return b.request(model="m", klass="silver", prompt=prompt,
                     system_prompt=prompt).route()


def lands_on_a(prompt):
    d = route(prompt)
    if d.ticket:
        d.ticket.finish()
    return d.replica_id == "spot-a"


prompt = next(p for p in ("p%d" % i for i in range(500)) if lands_on_a(p))
open_ticket = route(prompt)  # B's own request on the machine, left open
assert open_ticket.replica_id == "spot-a"
now = time.time_ns()
a.notice(Notice(NoticeKind.TERMINATE, NoticeFormat.AWS_INSTANCE_ACTION, "i-aaa",
                deadline_ns=now + 120 * SEC, received_ns=now,
                dedup_key="aws:i-aaa:terminate"))
assert a.fleet_stats()["published"] == 1, a.fleet_stats()
b.tick()  # one tick
assert b.node_state("i-aaa") is NodeState.NOTICED
assert ("i-aaa", NodeState.NOTICED) in moved, moved
for _ in range(10):
    d = route(prompt)
    assert d.replica_id == "spot-b", d
    d.ticket.finish()
plans = b.node_plans("i-aaa")
assert [p.ticket for p in plans] == [open_ticket.ticket.id], plans
open_ticket.ticket.finish()
st = b.fleet_stats()
assert st["configured"] and st["applied"] == 1 and st["published"] == 0, st
a.close()
b.close()
print("test_python_fleet: ok (two engines, one bus, by configuration)")
