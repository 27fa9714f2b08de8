"""The LiteLLM Router with and without the spotinfer strategy, on the same
fakellm backends, in one run: requests per second and client latency
(p50, p99), each variant's time in deployment selection, and the ratios.

    python tests/litellm/bench.py [--rounds 4] [--seconds 5] [--concurrency 8]
    python tests/litellm/bench.py --smoke        # one short round (the test stage)

Prints JSON lines: one per variant and round, then one with the ratios
(spotinfer / default). The rounds alternate the variants so that a slower
machine moment is shared. Bounded: every round stops after --seconds or
--max-requests, whichever comes first. The backends answer in a fixed,
short time whether or not the prompt is cached (-ttft = -cached-ttft), so
the difference is what routing adds, not what prefix hits save.

$SPOTINFER_LIBRARY names the library; $SPI_FAKELLM the fakellm binary (else
it is built with `go build`).
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "bindings" / "python"))
sys.path.insert(0, str(HERE))

import litellm  # noqa: E402,F401
from importlib.metadata import version  # noqa: E402
from litellm import Router  # noqa: E402

from backends import MODEL, Backends, deployment, fakellm_binary  # noqa: E402
from spotinfer.litellm import SpotinferRouting  # noqa: E402

IDS = ("spot-a", "spot-b", "spot-c")
BACKEND_ARGS = ("-token-rate", "20000", "-answer-tokens", "8", "-ttft", "5ms",
                "-cached-ttft", "5ms", "-max-running", "256")
SYSTEMS = ["System prompt %d: answer briefly and cite the manual. " % i * 30
           for i in range(8)]


def pct(xs, p):
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def timed_selection(router, sink):
    """Wrap the router's deployment selection (the default strategy or the
    plugged one) to record its time."""
    inner = router._core_async_get_available_deployment

    async def selection(*a, **kw):
        t0 = time.perf_counter()
        try:
            return await inner(*a, **kw)
        finally:
            sink.append(time.perf_counter() - t0)
    router._core_async_get_available_deployment = selection


async def round_of(router, seconds, max_requests, concurrency, seq):
    lat, errors = [], 0
    stop_at = time.monotonic() + seconds
    count = 0

    async def worker():
        nonlocal count, errors
        while time.monotonic() < stop_at and count < max_requests:
            n = seq[0]
            seq[0] += 1
            count += 1
            msgs = [{"role": "system", "content": SYSTEMS[n % len(SYSTEMS)]},
                    {"role": "user", "content": "question %d" % n}]
            t0 = time.perf_counter()
            try:
                await router.acompletion(model=MODEL, messages=msgs,
                                         metadata={"class": "silver"})
            except Exception:  # noqa: BLE001 - counted, the run goes on
                errors += 1
                continue
            lat.append(time.perf_counter() - t0)
    t0 = time.monotonic()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return lat, errors, time.monotonic() - t0


def line(**kw):
    print(json.dumps(kw, sort_keys=False), flush=True)


async def main(args):
    work = tempfile.mkdtemp(prefix="spotinfer-litellm-bench.")
    backends = Backends(fakellm_binary(work), work)
    try:
        for rid in IDS:
            backends.start(rid, *BACKEND_ARGS)
        model_list = [deployment(backends, rid, max_inflight=256) for rid in IDS]
        plain = Router(model_list=[dict(d) for d in model_list], num_retries=0)
        routed = Router(model_list=[dict(d) for d in model_list], num_retries=0)
        routing = SpotinferRouting.install(routed, {"policy": {"load_share_cap": 2}})
        variants = {"default": (plain, []), "spotinfer": (routed, [])}
        for router, sink in variants.values():
            timed_selection(router, sink)
        seq = [0]
        # A warm-up round of each (connections, LiteLLM's first-call set-up).
        for router, _ in variants.values():
            await round_of(router, min(1.0, args.seconds), 200, args.concurrency, seq)
        totals = {k: {"lat": [], "n": 0, "s": 0.0, "err": 0, "sel": []} for k in variants}
        for r in range(args.rounds):
            for name, (router, sink) in variants.items():
                sink.clear()
                lat, err, took = await round_of(router, args.seconds, args.max_requests,
                                                args.concurrency, seq)
                t = totals[name]
                t["lat"] += lat
                t["n"] += len(lat)
                t["s"] += took
                t["err"] += err
                t["sel"] += sink
                line(bench="litellm_router", variant=name, round=r, requests=len(lat),
                     errors=err, rps=round(len(lat) / took, 1),
                     p50_ms=round(pct(lat, 50) * 1e3, 2), p99_ms=round(pct(lat, 99) * 1e3, 2),
                     select_p50_us=round(pct(sink, 50) * 1e6, 1),
                     select_p99_us=round(pct(sink, 99) * 1e6, 1))
        await asyncio.sleep(0.2)  # the last callbacks
        d, s = totals["default"], totals["spotinfer"]
        rps_d, rps_s = d["n"] / d["s"], s["n"] / s["s"]
        p50_d, p50_s = pct(d["lat"], 50), pct(s["lat"], 50)
        p99_d, p99_s = pct(d["lat"], 99), pct(s["lat"], 99)
        completed = sum(row.completed for row in routing.engine.ledger())
        line(bench="litellm_router_ratio", rounds=args.rounds, concurrency=args.concurrency,
             requests_default=d["n"], requests_spotinfer=s["n"],
             errors=d["err"] + s["err"],
             rps_default=round(rps_d, 1), rps_spotinfer=round(rps_s, 1),
             rps_ratio=round(rps_s / rps_d, 3) if rps_d else None,
             p50_ms_default=round(p50_d * 1e3, 2), p50_ms_spotinfer=round(p50_s * 1e3, 2),
             p50_ratio=round(p50_s / p50_d, 3) if p50_d else None,
             p99_ms_default=round(p99_d * 1e3, 2), p99_ms_spotinfer=round(p99_s * 1e3, 2),
             p99_ratio=round(p99_s / p99_d, 3) if p99_d else None,
             added_p50_ms=round((p50_s - p50_d) * 1e3, 2),
             added_p99_ms=round((p99_s - p99_d) * 1e3, 2),
             select_p50_us_default=round(pct(d["sel"], 50) * 1e6, 1),
             select_p50_us_spotinfer=round(pct(s["sel"], 50) * 1e6, 1),
             select_p99_us_default=round(pct(d["sel"], 99) * 1e6, 1),
             select_p99_us_spotinfer=round(pct(s["sel"], 99) * 1e6, 1),
             tickets_completed=completed, tickets_open=len(routing._open),
             litellm=version("litellm"))
        routing.close()
        return 0 if s["n"] and d["n"] and not (d["err"] + s["err"]) else 1
    finally:
        backends.close()


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=5.0, help="per variant and round")
    p.add_argument("--max-requests", type=int, default=5000, help="per variant and round")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--smoke", action="store_true", help="one round of 1.5 s")
    a = p.parse_args(argv)
    if a.smoke:
        a.rounds, a.seconds = 1, 1.5
    if a.rounds < 1 or a.seconds <= 0 or a.max_requests < 1 or a.concurrency < 1:
        p.error("--rounds, --seconds, --max-requests and --concurrency must be positive")
    return a


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
