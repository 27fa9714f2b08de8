"""A user's script, checked with ``mypy --strict`` by scripts/test.sh: the
package's public names must be exported and typed."""

from __future__ import annotations

import spotinfer
from spotinfer import Engine, Pool, SpotinferError


def route_one(engine: spotinfer.Engine, body: str) -> str:
    req: spotinfer.Request = engine.parse_openai(body)
    c: spotinfer.Classification = req.classify()
    price: spotinfer.Price = req.price(Pool.SPOT)
    try:
        d: spotinfer.Decision = req.route()
    except spotinfer.NoCapacityError:
        return f"{c.klass.name}: no capacity"
    if d.ticket is not None:
        d.ticket.finish(output_tokens=1)
    return f"{c.klass.name} {d.pool.name} {d.replica_id} {price.usd:.6f} {req.cache_key()}"


def main() -> None:
    with Engine({"cost": {"spot_usd_per_gpu_hour": 1.8}}) as engine:
        engine.upsert_replica(id="spot-a", pool=Pool.SPOT, max_inflight=4,
                              usd_per_hour=1.8)
        engine.report_load("spot-a", running=0, waiting=0, kv_usage=0.1)
        body = '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
        print(route_one(engine, body))
    cost: float = spotinfer.CostModel.per_million_tokens(3.5, 1, 1000.0)
    print(f"{cost:.3f} {spotinfer.library_version}")
    try:
        Engine({"router": {"max_replicas": 0}})
    except SpotinferError as e:
        print(type(e).__name__)


if __name__ == "__main__":
    main()
