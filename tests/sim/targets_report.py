#!/usr/bin/env python3
"""The targets program's JSON lines, read against the targets.

`spotinfer_sim --targets DIR --seed N` prints one JSON object a line and
judges nothing (docs/simulator.md). This reads the lines of one run or of
many (a file per seed, or all in one) and counts, per trace and set-up,
the runs that meet each bar:

  hit     the library at >= 95 % of the pooled-LRU ceiling (a trace with a
          ceiling of 0 has no hits to reach: only the imbalance counts),
          token-load imbalance <= 1.25, and no baseline (greedy, SGLang,
          endpoint picker) with a higher hit rate at no worse imbalance;
  spot    the library at >= 90 % of the class-feasible maximum saving, 0
          lost, gold p95 TTFT within 10 % of the same run without
          interruptions; beside it the count at >= 90 % of the reachable
          maximum (the class-feasible one with the spot capacity and
          cache the run had), with the same other bars;
  replay  at least 100 replays, >= 99.9 % of them completed, 0 lost, gold
          within 10 % of the calm run.

The "drawn" spot windows are the targets' own; the "trace-start" ones (the
spot traces' first tick, two of twelve spot replicas up) are a stress case
and are listed apart. Each row lists the runs that miss, as seed:value. A
trace file the readers cannot use is listed as skipped, with the reason,
and counts as a miss for --strict.

    python3 tests/sim/targets_report.py run-1.jsonl run-2.jsonl ...
    spotinfer_sim --targets ../shared/data --seed 3 | python3 tests/sim/targets_report.py -

Exit status: 0, or 1 with --strict when a counted line misses a bar, 2 on
input that is not the targets program's.
"""
import argparse
import collections
import json
import os
import sys

BASELINES = ("greedy", "sglang", "epp")
HIT_OF_POOLED, IMBALANCE = 95.0, 1.25
SAVINGS_OF_MAX, GOLD_VS_CALM = 90.0, 1.10
REPLAYS, REPLAY_OK = 100, 99.9


def read_runs(paths):
    """Every JSON object of the files ('-': standard input), each with the
    name of its run: the seed its spot lines give (the hit lines carry
    none), else the file's base name."""
    runs = []
    for path in paths:
        f = sys.stdin if path == "-" else open(path, encoding="utf-8")
        rows = []
        with f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        seeds = [r["seed"] for r in rows if isinstance(r, dict) and "seed" in r]
        runs.append((str(seeds[0]) if seeds else os.path.basename(path), rows))
    return runs


def hit_verdict(lib, others):
    """(met, the library's figure as text) for one trace's hit lines."""
    ok = lib["token_imbalance"] <= IMBALANCE
    if lib["pooled_ceiling_pct"] > 0 and lib["hit_of_pooled_pct"] < HIT_OF_POOLED:
        ok = False
    for q in others:
        if q["hit_pct"] > lib["hit_pct"] and q["token_imbalance"] <= lib["token_imbalance"]:
            ok = False
    return ok, "%.1f@%.3f" % (lib["hit_of_pooled_pct"], lib["token_imbalance"])


def spot_verdict(r, of):
    """Whether a library spot line meets the bars, its savings taken as a
    share of the maximum named by `of` (savings_of_max_pct or
    savings_of_reachable_pct)."""
    return (r.get(of) is not None and r[of] >= SAVINGS_OF_MAX and r["lost"] == 0
            and r["gold_p95_vs_calm"] <= GOLD_VS_CALM)


def replay_verdict(r):
    return (r["replays"] >= REPLAYS and (r["replay_success_pct"] or 0) >= REPLAY_OK
            and r["lost"] == 0 and r["gold_p95_vs_calm"] <= GOLD_VS_CALM)


class Tally:
    def __init__(self):
        self.rows = collections.OrderedDict()
        self.skipped = collections.OrderedDict()  # trace -> its reason

    def add(self, key, bar, met, note):
        row = self.rows.setdefault(key, {})
        n, k, misses = row.get(bar, (0, 0, []))
        row[bar] = (n + 1, k + met, misses + ([] if met else [note]))

    def total(self, bar, keep=lambda key: True):
        n = k = 0
        for key, row in self.rows.items():
            if bar in row and keep(key):
                n, k = n + row[bar][0], k + row[bar][1]
        return k, n


def tally(runs):
    t = Tally()
    for run, rows in runs:
        hits = collections.OrderedDict()
        for r in rows:
            if isinstance(r, dict) and r.get("target") == "trace" and r.get("usable") is False:
                t.skipped[r["trace"]] = r.get("reason", "")
            if not isinstance(r, dict) or "target" not in r or "policy" not in r:
                continue
            if r["target"] == "hit":
                hits.setdefault(r["trace"], {})[r["policy"]] = r
            elif r["target"] == "spot" and r["policy"] == "library":
                key = ("spot", r["trace"], r.get("window", "drawn"))
                for bar, of in (("of max", "savings_of_max_pct"),
                                ("of reachable", "savings_of_reachable_pct")):
                    v = r.get(of)
                    t.add(key, bar, spot_verdict(r, of),
                          "%s:%s" % (run, "n/a" if v is None else "%.1f" % v))
            elif r["target"] == "replay" and r["policy"] == "library":
                t.add(("replay", r["trace"], ""), "replay", replay_verdict(r),
                      "%s:%d@%s" % (run, r["replays"], r["replay_success_pct"]))
        for trace, by in hits.items():
            if "library" in by:
                met, fig = hit_verdict(by["library"], [by[b] for b in BASELINES if b in by])
                t.add(("hit", trace, ""), "hit", met, "%s:%s" % (run, fig))
    if not t.rows:
        raise ValueError("no targets lines (spotinfer_sim --targets DIR prints them)")
    return t


def report(t, out):
    def drawn(key):
        return key[0] != "spot" or key[2] in ("drawn", "given")
    kh, nh = t.total("hit")
    ks, ns = t.total("of max", drawn)
    kr, nr = t.total("of reachable", drawn)
    kp, np_ = t.total("replay")
    out.write("hit lines %d/%d; spot lines (drawn) %d/%d of the class-feasible maximum, "
              "%d/%d of the reachable; replay %d/%d\n" % (kh, nh, ks, ns, kr, nr, kp, np_))
    order = {"hit": 0, "spot": 1, "replay": 2}
    for key, row in sorted(t.rows.items(), key=lambda kv: order[kv[0][0]]):
        what, trace, window = key
        name = trace + ("" if not window else " [%s]" % window)
        cells = []
        for bar, (n, k, misses) in row.items():
            cells.append("%s %d/%d%s" % (bar, k, n, (" (" + " ".join(misses) + ")") if misses else ""))
        out.write("  %-6s %-44s %s\n" % (what, name[:44], "; ".join(cells)))
    for trace, why in t.skipped.items():
        out.write("  %-6s %-44s %s\n" % ("skip", trace[:44], why))
    return kh == nh and ks == ns and kp == np_ and not t.skipped


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="targets output, a file per run ('-': standard input)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a counted line misses a bar")
    a = ap.parse_args()
    try:
        t = tally(read_runs(a.files))
    except (KeyError, TypeError) as e:
        print("targets_report: a line lacks a field the targets program prints: %s" % e, file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print("targets_report: %s" % e, file=sys.stderr)
        return 2
    try:
        all_met = report(t, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # A reader that stopped early (head, grep -q): no traceback, and
        # nothing more goes to the closed pipe when Python exits.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 1 if a.strict and not all_met else 0


if __name__ == "__main__":
    sys.exit(main())
