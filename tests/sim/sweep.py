#!/usr/bin/env python3
"""The one-pool comparison away from the targets' operating point.

The hit target (docs/simulator.md) is measured at one point: 16 on-demand
replicas x 1,024 KV blocks, the generator at 20 requests a second, the
traces at their recorded pace. Traffic the policy was never tuned on will
not arrive there, so this runs the same comparison -- the library against
the greedy, SGLang and endpoint-picker baselines -- moving one of the three
away from it at a time: the arrival rate x0.5 and x2 (a trace's with
--speedup), 8 and 32 replicas, 512 and 2,048 blocks a replica, and
replicas of two sizes (sizes=mixed: 8 small and 8 large, kv_blocks 0 in
its lines); on every generator family and every trace in DATA/traces.

For each run it prints one JSON line (each policy's hit rate as % of the
pooled-LRU ceiling, token-load imbalance and gold p95 TTFT), and flags
where the library is below 95 % of the ceiling, above 1.25 imbalance, or
below a baseline's hit rate at no worse imbalance; a summary per point
follows on standard error, and the exit status is 1 when any run is
flagged. Opt-in, not part of scripts/test.sh: with the default 3 seeds,
210 runs (10 traffic kinds x 7 points x 3 seeds), about a minute of one
core; --seeds 1,...,15 and --points default,... for the full picture
(docs/routing.md, "Away from the targets' operating point").

    python3 tests/sim/sweep.py build/examples/spotinfer_sim ../shared/data \
        [--seeds 1,2,3] [--points rate/2,rate*2,...] [--families a,b]
        [--no-traces] [--config library.json]

--config passes a library configuration to every run (spotinfer_sim
--config), so a setting can be compared against the defaults.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

BASE = {"rate": 20.0, "replicas": 16, "kv": 1024}
POINTS = {
    "default": {},
    "rate/2": {"rate": 0.5},
    "rate*2": {"rate": 2.0},
    "replicas=8": {"replicas": 8},
    "replicas=32": {"replicas": 32},
    "kv=512": {"kv": 512},
    "kv=2048": {"kv": 2048},
    # 8 small and 8 large replicas in one pool (MIXED_SIZES).
    "sizes=mixed": {"cluster": True},
}
MIXED_SIZES = {"groups": [
    {"pool": "on_demand", "zone": "z1", "instance_type": "small", "count": 8,
     "usd_per_hour": 1.21, "prefill_tokens_per_s": 12000,
     "decode_tokens_per_s": 60, "kv_blocks": 768, "max_batch": 48},
    {"pool": "on_demand", "zone": "z1", "instance_type": "large", "count": 8,
     "usd_per_hour": 4.10, "prefill_tokens_per_s": 30000,
     "decode_tokens_per_s": 100, "kv_blocks": 2048, "max_batch": 96}]}
FAMILIES = ["mixed", "global-prompt", "tenants", "long-sessions", "agents",
            "bursts", "long-gen", "documents"]
BASELINES = ["greedy", "sglang", "epp"]


def run(sim, work, point, seed, tmp, config=None):
    p = POINTS[point]
    rate = BASE["rate"] * p.get("rate", 1.0)
    n = p.get("replicas", BASE["replicas"])
    kv = p.get("kv", BASE["kv"])
    out = os.path.join(tmp, "run.json")
    cmd = ["nice", "-n", "10", sim, "--quiet", "--seed", str(seed),
           "--policies", "library," + ",".join(BASELINES), "--json", out]
    if config:
        cmd += ["--config", config]
    if p.get("cluster"):
        cluster = os.path.join(tmp, "mixed-sizes.json")
        with open(cluster, "w") as f:
            json.dump(MIXED_SIZES, f)
        cmd += ["--cluster", cluster]
        n, kv = 16, 0
    else:
        cmd += ["--replicas", str(n), "--on-demand", str(n), "--kv-blocks", str(kv)]
    if work.startswith("generator:"):
        cmd += ["--family", work.split(":", 1)[1], "--requests", "5000",
                "--rate", str(rate)]
    else:
        cmd += ["--trace", work]
        if "rate" in p:
            cmd += ["--speedup", str(p["rate"])]
    if os.path.exists(out):
        os.unlink(out)
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if not os.path.exists(out):  # a trace the readers cannot use: said, not fatal
        why = done.stderr.strip().splitlines()[-1:] or ["exit %d" % done.returncode]
        return {"point": point, "trace": os.path.basename(work), "seed": seed,
                "flags": ["not run: " + why[0]]}
    with open(out) as f:
        d = json.load(f)
    pol = {q["name"]: q for q in d["policies"]}
    lib = pol["library"]
    flags = []
    if lib["hit_of_pooled_pct"] < 95.0 and d["ceilings"]["pooled_lru_hit"] > 0:
        flags.append("below 95% of pooled")
    if lib["imbalance"] > 1.25:
        flags.append("imbalance over 1.25")
    for b in BASELINES:
        q = pol[b]
        if q["hit"] > lib["hit"] and q["imbalance"] <= lib["imbalance"]:
            flags.append("below " + b)
    gen = work.startswith("generator:")
    row = {"point": point, "trace": os.path.basename(work), "seed": seed,
           "rate" if gen else "speedup": rate if gen else p.get("rate", 1.0),
           "replicas": n, "kv_blocks": kv,
           "pooled_ceiling_pct": round(100 * d["ceilings"]["pooled_lru_hit"], 3)}
    for name in ["library"] + BASELINES:
        q = pol[name]
        row[name] = {"hit_of_pooled_pct": q["hit_of_pooled_pct"],
                     "token_imbalance": q["imbalance"],
                     "gold_p95_ttft_ms": q["classes"]["gold"]["ttft_ms"][1]}
    if done.returncode != 0:  # conservation broken or a request lost
        flags.append("exit %d" % done.returncode)
    row["flags"] = flags
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sim")
    ap.add_argument("data")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--points", default=",".join(k for k in POINTS if k != "default"))
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--no-traces", action="store_true")
    ap.add_argument("--config")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    points = a.points.split(",")
    for p in points:
        if p not in POINTS:
            sys.exit(f"sweep: unknown point {p}; one of {', '.join(POINTS)}")
    work = ["generator:" + f for f in a.families.split(",") if f]
    if not a.no_traces:
        tdir = os.path.join(a.data, "traces")
        work += sorted(os.path.join(tdir, f) for f in os.listdir(tdir)
                       if f.endswith((".jsonl", ".csv")))
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in points:
            for w in work:
                for s in seeds:
                    row = run(a.sim, w, p, s, tmp, a.config)
                    print(json.dumps(row), flush=True)
                    k = summary.setdefault(p, [0, 0, []])
                    k[0] += 1
                    if row["flags"]:
                        k[1] += 1
                        k[2].append(f"{row['trace']}#{s}: {'; '.join(row['flags'])}")
    for p in points:
        runs, bad, what = summary[p]
        print(f"{p}: {runs - bad} of {runs} runs meet every bar", file=sys.stderr)
        for line in what:
            print("  " + line, file=sys.stderr)
    return 1 if any(v[1] for v in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
