#!/usr/bin/env python3
"""Request traces in Mooncake's JSONL format, shaped like traffic the
project's data does not have, for checks away from ../shared/data.

The policy is meant to hold on traces it was never tuned on. The trace in
../shared/data has no prompt that most requests share; real services do.
These two shapes put one in front, as Mooncake's conversation and
tool-agent traces do (every request of the conversation trace starts with
block 0):

  chat    a multi-turn chat service: one global block (id 0) in front of
          every prompt, conversations of 2-20 turns, each turn the last
          one's prompt, its answer and a new question (the last, part-filled
          block gets a new id), prompts of about 12k tokens on average,
          arrivals on 3 s ticks as Mooncake's are.
  agents  tool-using agents: 60 % of loops behind one 12-block tool list,
          the rest behind two others (8 and 6 blocks), each loop re-sending
          its growing context every few seconds with a short answer (a
          tool call), 3-30 steps, up to 100k tokens.

Output is deterministic for a seed. Run the simulator on the file:

    python3 tests/sim/make_trace.py agents > /tmp/agents.jsonl
    build/examples/spotinfer_sim --trace /tmp/agents.jsonl \\
        --replicas 16 --on-demand 16 --policies library,greedy,sglang,epp

or put such files in DIR/traces (with DIR/spot linked to
../shared/data/spot) for `spotinfer_sim --targets DIR` or
tests/sim/sweep.py (docs/simulator.md, "Traffic shaped like traces the
project's data lacks").
"""
import argparse
import json
import math
import random
import sys

BLOCK = 512


class Ids:
    def __init__(self, first):
        self.next = first

    def new(self):
        self.next += 1
        return self.next


def grow(ids, tokens, more, fresh):
    """A prompt of tokens grown by more: its full blocks kept, the
    part-filled last one and the new ones under new ids."""
    keep = ids[:tokens // BLOCK]
    tokens += more
    while len(keep) < math.ceil(tokens / BLOCK):
        keep.append(fresh.new())
    return keep, tokens


def chat(n, duration_s, rng):
    fresh = Ids(1)
    out, active, t = [], [], 0.0
    while len(out) < n:
        t += rng.expovariate(n / duration_s)
        if active and rng.random() < 0.45:
            c = active[rng.randrange(len(active))]
            ask = max(200, int(rng.lognormvariate(6.5, 1.0)))
            c["ids"], c["tok"] = grow(c["ids"], c["tok"], c["out"] + ask, fresh)
            c["turns"] += 1
            if c["turns"] >= c["last"]:
                active.remove(c)
        else:
            tok = min(BLOCK + max(100, int(rng.lognormvariate(8.8, 1.0))), 120000)
            ids = [0] + [fresh.new() for _ in range(math.ceil(tok / BLOCK) - 1)]
            c = {"ids": ids, "tok": tok, "turns": 1, "out": 0,
                 "last": rng.choice([2, 3, 5, 8, 20])}
            active.append(c)
            if len(active) > 400:
                active.pop(0)
        c["out"] = max(1, int(rng.lognormvariate(5.5, 0.8)))
        out.append((int(t // 3) * 3000, c["tok"], c["out"], list(c["ids"])))
    return out


def agents(n, duration_s, rng):
    fresh = Ids(100)
    tools = [[fresh.new() for _ in range(k)] for k in (12, 8, 6)]
    steps, t = [], 0.0
    while len(steps) < n * 1.2:
        t += rng.expovariate(n / duration_s / 8.0)
        u = rng.random()
        tool = tools[0] if u < 0.6 else tools[1] if u < 0.85 else tools[2]
        tok = len(tool) * BLOCK + max(50, int(rng.lognormvariate(7.5, 0.8)))
        ids = list(tool) + [fresh.new() for _ in range(math.ceil(tok / BLOCK) - len(tool))]
        at = t
        for _ in range(rng.randint(3, 30)):
            out = max(1, int(rng.lognormvariate(4.0, 0.7)))
            steps.append((at, tok, out, list(ids)))
            at += rng.expovariate(1 / 4.0) + out / 40.0
            result = out + max(20, int(rng.lognormvariate(6.5, 1.0)))
            ids, tok = grow(ids, tok, result, fresh)
            if tok > 100000:
                break
    steps.sort(key=lambda s: s[0])
    return [(int(at * 1000), tok, out, ids) for at, tok, out, ids in steps[:n]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape", choices=["chat", "agents"])
    ap.add_argument("--requests", type=int, default=12000)
    ap.add_argument("--seconds", type=float, default=3600.0,
                    help="the span the arrivals are drawn over (chat; agents' "
                         "loops start over it and run on)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.requests < 1 or not a.seconds > 0:
        ap.error("--requests must be at least 1 and --seconds above 0")
    rng = random.Random(a.seed)
    make = chat if a.shape == "chat" else agents
    for ts, tok, out, ids in make(a.requests, a.seconds, rng):
        sys.stdout.write(json.dumps({"timestamp": ts, "input_length": tok,
                                     "output_length": out, "hash_ids": ids}) + "\n")


if __name__ == "__main__":
    main()
