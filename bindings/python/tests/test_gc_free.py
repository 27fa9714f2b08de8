"""The garbage collector may run a request's finalizer at any allocation,
including one the engine makes while it frees its requests: that must never
deadlock (the engine's bookkeeping lock is taken again on the same thread)
or free anything twice."""

from __future__ import annotations

import gc
import threading

import spotinfer


def _close_with_cyclic_garbage(n: int) -> None:
    e = spotinfer.Engine()
    keep = [e.request() for _ in range(n)]
    for _ in range(n):
        r = e.request()
        r.cycle = r  # garbage only the collector can reclaim
        del r
    # Collect at (almost) every allocation, so one runs inside close().
    old = gc.get_threshold()
    gc.set_threshold(1, 1, 1)
    try:
        e.close()
    finally:
        gc.set_threshold(*old)
    assert all(r.closed for r in keep)


def test_collector_running_inside_close_does_not_deadlock() -> None:
    for n in (1, 8, 64):
        t = threading.Thread(target=_close_with_cyclic_garbage, args=(n,),
                             daemon=True)
        t.start()
        t.join(timeout=20)
        assert not t.is_alive(), "Engine.close() hung with %d cyclic requests" % n
