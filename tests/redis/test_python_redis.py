"""The Python binding on the Redis replay store, by configuration alone:
two engines (two proxy instances) share one queue. Run by ctest (label
redis) with SPOTINFER_LIBRARY set to the build tree's libspotinfer and
SPI_REDIS_PORT to the `redis` stage's server; without a server: skipped
(77)."""
import os
import sys

port = os.environ.get("SPI_REDIS_PORT")
if not port:  # before loading anything (sanitizer builds run this too)
    print("test_python_redis: needs SPI_REDIS_PORT")
    sys.exit(77)

import spotinfer  # noqa: E402
from spotinfer.replay import ReplayQueue  # noqa: E402

config = {"store": "redis", "lease_ms": 5000,
          "store_config": {"address": "127.0.0.1:" + port,
                           "key_prefix": "py:%d:" % os.getpid()}}
a_engine, b_engine = spotinfer.Engine(), spotinfer.Engine()
a = ReplayQueue(a_engine, config)
b = ReplayQueue(b_engine, config)
body = '{"model":"m","messages":[{"role":"user","content":"hi"}]}'
assert a.enqueue(key="req-1", body=body, klass="bronze", partial_text="Once")
assert a.enqueue(key="req-2", body=body, klass="gold")
assert not b.enqueue(key="req-1", body=body), "a duplicate across instances"
first = b.claim()
assert first is not None and first.envelope.key == "req-2", first  # gold first
second = b.claim()
assert second is not None and second.envelope.key == "req-1"
assert second.envelope.partial_text == "Once", second.envelope
assert a.claim() is None  # b holds both
b.ack(first.id)
b.ack(second.id)
s = a.stats()
assert s.ready == (0, 0, 0, 0) and s.leased == 0, s
assert not a.enqueue(key="req-2", body=body), "an acked key is remembered"
a.close()
b.close()
print("test_python_redis: ok (two engines, one queue, by configuration)")
