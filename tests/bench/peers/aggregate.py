#!/usr/bin/env python3
"""Pools the per-run samples of scripts/bench-peers.sh into JSON lines.

    aggregate.py <run dir> [--markdown FILE]

<run dir>/runs.jsonl holds one line per harness run (as the harness printed
it, plus "samples": the file of its times in ns, one per line). Every
case (prompt bytes x replicas) gets one line per peer with p50/p99 over
all of that peer's samples in the case, and both as a ratio to spi_route's
in the same case: the runs of a case alternate between the peers round by
round, so the ratios come from the same minutes of the same machine.

Runs that carry their place in the case's sequence ("seq", as the script
writes them: spi_route before and after every other peer's run) also give
each other peer a paired ratio: each of its runs' p50 over the mean p50 of
the spi_route runs just before and just after it, and the median of those
over the rounds (p50_paired_ratio_to_spi, with the rounds' lowest and
highest). A host whose speed changes within a case moves a pooled ratio
with it; a pair is taken in the same seconds.

Last comes a summary line: whether spi_route had the lowest pooled p50 in
every case and, with pairs, whether every paired ratio is above 1. With
--markdown, also writes the table for docs/performance.md (its ratios are
the paired ones when there are pairs).

    aggregate.py --self-test

checks the pairing on made-up runs.

<run dir>/host.jsonl, when there, holds the machine's speed as each case
started (peer_spi --host-speed: one XXH3 pass over 8 KiB, in ns); each
case's lines then carry it as host_xxh3_8k_ns and the table shows it, so
cases run in a host's slow minutes can be told from the others.
"""
import json
import os
import statistics
import sys
import tempfile

SPI = "spi_route"
ORDER = [SPI, "dynamo_kv_router", "sglang_kv_index", "gie_epp"]
LABEL = {
    SPI: "spi_route",
    "dynamo_kv_router": "Dynamo KV router core",
    "sglang_kv_index": "SGLang cache-aware (kv-index)",
    "gie_epp": "GIE EPP v1.5.0 default profile",
}


def pct(sorted_ns, q):
    return sorted_ns[min(len(sorted_ns) - 1, len(sorted_ns) * q // 100)]


def load(run_dir):
    cases = {}
    with open(os.path.join(run_dir, "runs.jsonl")) as f:
        for line in f:
            if not line.strip():
                continue
            run = json.loads(line)
            key = (run["prompt_bytes"], run["replicas"], run.get("in_flight", 0))
            peer = cases.setdefault(key, {}).setdefault(
                run["peer"], {"ns": [], "runs": 0, "chosen": 0, "fnv": set(), "seq": {}})
            with open(run["samples"]) as s:
                ns = [int(x) for x in s if x.strip()]
            peer["ns"].extend(ns)
            if "seq" in run and ns:
                peer["seq"][run["seq"]] = pct(sorted(ns), 50)
            peer["runs"] += 1
            peer["chosen"] = max(peer["chosen"], run["replicas_chosen"])
            peer["fnv"].add(run["prompts_fnv"])
    return cases


def load_host(run_dir):
    """The host's speed by case: {(prompt bytes, replicas): XXH3 8 KiB ns}."""
    path = os.path.join(run_dir, "host.jsonl")
    if not os.path.exists(path):
        return {}
    speed = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                h = json.loads(line)
                speed[(h["prompt_bytes"], h["replicas"])] = h["xxh3_8k_ns"]
    return speed


def paired(peer, spi):
    """A peer's runs against the spi_route runs on either side of each:
    (median, lowest, highest) of the ratios of their p50s, or None."""
    ratios = []
    for seq, p50 in peer["seq"].items():
        near = [spi["seq"][s] for s in (seq - 1, seq + 1) if s in spi["seq"]]
        if near:
            ratios.append(p50 / (sum(near) / len(near)))
    if not ratios:
        return None
    return statistics.median(ratios), min(ratios), max(ratios)


def summarize(cases, host=None):
    host = host or {}
    lines = []
    lowest = True
    pairs_lowest = None
    for (size, reps, in_flight) in sorted(cases):
        peers = cases[(size, reps, in_flight)]
        fnvs = set().union(*(p["fnv"] for p in peers.values()))
        if len(fnvs) != 1:
            sys.exit("aggregate: the peers saw different prompts in case %d/%d" % (size, reps))
        stats = {}
        for name, p in peers.items():
            ns = sorted(p["ns"])
            stats[name] = (pct(ns, 50), pct(ns, 99), len(ns), p["runs"], p["chosen"])
        spi = stats.get(SPI)
        for name in sorted(stats, key=lambda n: ORDER.index(n) if n in ORDER else 99):
            p50, p99, n, runs, chosen = stats[name]
            line = {"bench": "peers", "peer": name, "prompt_bytes": size, "replicas": reps,
                    "in_flight": in_flight, "runs": runs, "samples": n, "replicas_chosen": chosen,
                    "p50_ns": p50, "p99_ns": p99}
            if (size, reps) in host:
                line["host_xxh3_8k_ns"] = host[(size, reps)]
            if spi:
                line["p50_ratio_to_spi"] = round(p50 / spi[0], 2)
                line["p99_ratio_to_spi"] = round(p99 / spi[1], 2)
                if name != SPI and p50 <= spi[0]:
                    lowest = False
            pr = paired(peers[name], peers[SPI]) if spi and name != SPI else None
            if pr:
                line["p50_paired_ratio_to_spi"] = round(pr[0], 2)
                line["paired_ratio_lowest"] = round(pr[1], 2)
                line["paired_ratio_highest"] = round(pr[2], 2)
                pairs_lowest = (pairs_lowest is not False) and pr[0] > 1
            lines.append(line)
        if not spi:
            lowest = False
    summary = {"bench": "peers_summary", "cases": len(cases),
               "spi_route_lowest_p50_in_every_case": lowest}
    if pairs_lowest is not None:
        summary["spi_route_lowest_paired_in_every_case"] = pairs_lowest
    lines.append(summary)
    return lines


def fmt_us(ns):
    return "%.1f" % (ns / 1000.0) if ns < 100000 else "%.0f" % (ns / 1000.0)


def markdown(lines, path):
    rows = [l for l in lines if l["bench"] == "peers"]
    peers = [p for p in ORDER if any(r["peer"] == p for r in rows)]
    speed = any("host_xxh3_8k_ns" in r for r in rows)
    head = "| prompt | replicas | " + " | ".join(LABEL[p] for p in peers) + " |"
    if speed:
        head += " host: XXH3 8 KiB (ns) |"
    out = [head, "|" + "---|" * (2 + len(peers) + speed)]
    for size, reps in sorted({(r["prompt_bytes"], r["replicas"]) for r in rows}):
        cells = []
        for p in peers:
            r = next((r for r in rows if r["peer"] == p and r["prompt_bytes"] == size
                      and r["replicas"] == reps), None)
            if r is None:
                cells.append("-")
            elif p == SPI:
                cells.append("%s / %s" % (fmt_us(r["p50_ns"]), fmt_us(r["p99_ns"])))
            else:
                ratio = r.get("p50_paired_ratio_to_spi", r.get("p50_ratio_to_spi", 0))
                cells.append("%s / %s (%s)" % (fmt_us(r["p50_ns"]), fmt_us(r["p99_ns"]),
                                               ("%.2f×" if ratio < 10 else "%.0f×") % ratio))
        if speed:
            h = next((r.get("host_xxh3_8k_ns") for r in rows if r["prompt_bytes"] == size
                      and r["replicas"] == reps and "host_xxh3_8k_ns" in r), None)
            cells.append("-" if h is None else str(h))
        out.append("| %d KiB | %d | %s |" % (size // 1024, reps, " | ".join(cells)))
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def self_test():
    """Made-up runs: the host doubles its speed in the middle of a case.
    spi_route is faster in every pair (the peer takes 1.1 times as long),
    but half of its runs fall in the slow half and only one of the peer's,
    so the pooled p50s say the opposite."""
    with tempfile.TemporaryDirectory() as d:
        runs = [("spi_route", 200), ("dynamo_kv_router", 220), ("spi_route", 200),
                ("dynamo_kv_router", 165), ("spi_route", 100), ("dynamo_kv_router", 110),
                ("spi_route", 100)]
        with open(os.path.join(d, "runs.jsonl"), "w") as f:
            for seq, (peer, ns) in enumerate(runs):
                path = os.path.join(d, "%d.txt" % seq)
                with open(path, "w") as s:
                    s.write("%d\n" % ns * 5)
                f.write(json.dumps({"peer": peer, "prompt_bytes": 1024, "replicas": 8,
                                    "replicas_chosen": 8, "prompts_fnv": "x", "round": 0,
                                    "seq": seq, "samples": path}) + "\n")
        lines = summarize(load(d))
        dyn = next(l for l in lines if l.get("peer") == "dynamo_kv_router")
        assert dyn["p50_ratio_to_spi"] == 0.82, dyn  # pooled: 165 / 200
        assert dyn["p50_paired_ratio_to_spi"] == 1.1, dyn
        assert (dyn["paired_ratio_lowest"], dyn["paired_ratio_highest"]) == (1.1, 1.1), dyn
        assert lines[-1]["spi_route_lowest_p50_in_every_case"] is False, lines[-1]
        assert lines[-1]["spi_route_lowest_paired_in_every_case"] is True, lines[-1]
        markdown(lines, os.path.join(d, "table.md"))
        with open(os.path.join(d, "table.md")) as f:
            assert "(1.10×)" in f.read()
        # Runs without their place (an older run directory): pooled only.
        with open(os.path.join(d, "runs.jsonl")) as f:
            old = [json.loads(l) for l in f]
        with open(os.path.join(d, "runs.jsonl"), "w") as f:
            for r in old:
                del r["seq"]
                f.write(json.dumps(r) + "\n")
        lines = summarize(load(d))
        assert "p50_paired_ratio_to_spi" not in lines[1], lines[1]
        assert "spi_route_lowest_paired_in_every_case" not in lines[-1], lines[-1]
    print("aggregate.py: self-test passed")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return
    if len(sys.argv) not in (2, 4) or (len(sys.argv) == 4 and sys.argv[2] != "--markdown"):
        sys.exit(__doc__)
    lines = summarize(load(sys.argv[1]), load_host(sys.argv[1]))
    for line in lines:
        print(json.dumps(line, separators=(",", ":")))
    if len(sys.argv) == 4:
        markdown(lines, sys.argv[3])


if __name__ == "__main__":
    main()
