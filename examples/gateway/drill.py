"""The spot-interruption drill's clients and checks.

Real OpenAI clients (the official `openai` package) send concurrent streamed
chat requests that share a few system prompts through the gateway while one
spot backend gets an interruption notice and dies at its deadline. The same
requests sent straight to a reference backend give the uninterrupted texts.
Then the checks: every request succeeded with the full text, every replay
resumed from the tokens the client had, nothing new reached the noticed
backend after the notice, requests sharing a system
prompt stuck to one backend while it was healthy, the gateway's /metrics
shows the notice and the replays, and the replay queue is empty.

    python drill.py --gateway http://127.0.0.1:PORT --reference http://... \
        --events gw.jsonl --backend-logs a.jsonl,b.jsonl,c.jsonl --noticed spot-a

Exit status 0 when every check holds; each check prints one line.
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import time
import urllib.request

import openai

SYSTEM_PROMPTS = [
    "You are a support agent for a bicycle shop. Answer in short sentences. " * 40,
    "You translate technical English into plain words for new engineers. " * 40,
    "You are a travel planner who always lists three options with prices. " * 40,
    "You review SQL queries for mistakes and explain each fix briefly. " * 40,
    "You write release notes from commit messages, grouped by area. " * 40,
    "You answer questions about tide tables for a small harbor office. " * 40,
]

MODEL = "fake-model"


def fnv64(text):
    """The fake server's hash of a system prompt (FNV-1a, 64 bit)."""
    h = 0xCBF29CE484222325
    for b in text.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def make_wave(w, per_wave):
    reqs = []
    for i in range(per_wave):
        n = w * per_wave + i
        reqs.append({
            "n": n,
            "wave": w,
            "system": SYSTEM_PROMPTS[n % len(SYSTEM_PROMPTS)],
            "user": "question %d: %s" % (n, hashlib.sha1(str(n).encode()).hexdigest()[:12]),
        })
    return reqs


def notice_handed_in(events_path):
    """When the gateway handed in its first notice (None before it has)."""
    try:
        for e in read_jsonl(events_path):
            if e.get("event") == "notice":
                return e["handed_in"]
    except (OSError, ValueError):
        pass
    return None


def messages(r):
    return [{"role": "system", "content": r["system"]}, {"role": "user", "content": r["user"]}]


def stream_one(client, r, max_tokens, out):
    res = {"n": r["n"], "text": "", "finish": None, "fingerprints": [], "ids": [], "error": None,
           "usage": None, "usage_mid": 0, "start": time.time()}
    try:
        stream = client.chat.completions.create(
            model=MODEL, messages=messages(r), stream=True, max_tokens=max_tokens,
            stream_options={"include_usage": True}, metadata={"class": "silver"})
        for chunk in stream:
            fp = chunk.system_fingerprint
            if fp and (not res["fingerprints"] or res["fingerprints"][-1] != fp):
                res["fingerprints"].append(fp)
            if chunk.id and chunk.id not in res["ids"]:
                res["ids"].append(chunk.id)
            if chunk.usage is not None:
                res["usage"] = chunk.usage.completion_tokens
                if chunk.choices:
                    res["usage_mid"] += 1  # asked for at the end only
            for c in chunk.choices:
                if c.delta and c.delta.content:
                    res["text"] += c.delta.content
                if c.finish_reason:
                    res["finish"] = c.finish_reason
    except Exception as e:  # any failure is a failed check, reported below
        res["error"] = "%s: %s" % (type(e).__name__, e)
    res["end"] = time.time()
    out[r["n"]] = res


def reference_one(client, r, max_tokens, out):
    try:
        c = client.chat.completions.create(model=MODEL, messages=messages(r), max_tokens=max_tokens)
        out[r["n"]] = c.choices[0].message.content
    except Exception as e:
        out[r["n"]] = "ERROR %s" % e


def more_waves(args, w):
    """Waves go on past --waves until requests have arrived for a while
    after the notice (its time depends on how fast the machine started
    everything), bounded by --max-waves."""
    if w < args.waves:
        return True
    if w >= args.max_waves:
        return False
    t_notice = notice_handed_in(args.events)
    return t_notice is None or time.time() < t_notice + 2.0 * args.interval + 1.0


def run_clients(args):
    client = openai.OpenAI(base_url=args.gateway + "/v1", api_key="drill", max_retries=0,
                           timeout=120)
    reqs, results, threads = [], {}, []
    t0 = time.time()
    w = 0
    while more_waves(args, w):
        # Waves start at fixed times, so requests are in flight when the
        # notice comes and new ones arrive after it.
        delay = t0 + w * args.interval - time.time()
        if delay > 0:
            time.sleep(delay)
        for r in make_wave(w, args.per_wave):
            t = threading.Thread(target=stream_one, args=(client, r, args.max_tokens, results))
            t.start()
            threads.append(t)
            reqs.append(r)
        w += 1
    for t in threads:
        t.join(timeout=180)
    ref_client = openai.OpenAI(base_url=args.reference + "/v1", api_key="drill", max_retries=0,
                               timeout=60)
    expected, rthreads = {}, []
    for r in reqs:
        t = threading.Thread(target=reference_one, args=(ref_client, r, args.max_tokens, expected))
        t.start()
        rthreads.append(t)
    for t in rthreads:
        t.join(timeout=60)
    return reqs, results, expected


def read_jsonl(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def scrape(url):
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


class Checks:
    def __init__(self):
        self.failed = 0
        self.passed = 0

    def check(self, ok, what, detail=""):
        print("%s %s%s" % ("ok  " if ok else "FAIL", what, (": " + detail) if detail else ""))
        if ok:
            self.passed += 1
        else:
            self.failed += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True, help="URL, or @file holding host:port")
    ap.add_argument("--reference", required=True, help="URL, or @file holding host:port")
    ap.add_argument("--go-file", help="start once this file exists")
    ap.add_argument("--events", required=True, help="the gateway's -events file")
    ap.add_argument("--backend-logs", required=True, help="comma-separated fakellm -log files")
    ap.add_argument("--noticed", required=True, help="the backend that gets the notice")
    ap.add_argument("--waves", type=int, default=8, help="waves sent at least")
    ap.add_argument("--max-waves", type=int, default=20,
                    help="waves sent at most, waiting for requests after the notice")
    ap.add_argument("--per-wave", type=int, default=6)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=120)
    ap.add_argument("--report", help="write the per-request results here (JSON)")
    args = ap.parse_args()

    if args.go_file:
        # Started before the servers, so the import above is done when they
        # are up: wait for the word, then read their addresses.
        t_end = time.time() + 120
        while not os.path.exists(args.go_file):
            if time.time() > t_end:
                print("drill: the servers never came up")
                return 1
            time.sleep(0.02)
    for name in ("gateway", "reference"):
        v = getattr(args, name)
        if v.startswith("@"):
            with open(v[1:]) as f:
                setattr(args, name, "http://" + f.read().strip())
    reqs, results, expected = run_clients(args)
    # Let the gateway finish its bookkeeping (tickets, acks) after the last byte.
    time.sleep(0.5)
    events = read_jsonl(args.events)
    backend = []
    for p in args.backend_logs.split(","):
        backend += read_jsonl(p)
    metrics = scrape(args.gateway)
    c = Checks()

    # 1. No client request fails.
    errors = [r for r in results.values() if r["error"] or not r["finish"]]
    c.check(len(results) == len(reqs) and not errors,
            "all %d streamed requests completed" % len(reqs),
            "; ".join("#%d %s" % (r["n"], r["error"] or "no finish_reason") for r in errors[:5]))

    # 2. Interrupted streams complete with the same full text.
    interrupted = [r for r in results.values() if len(r["fingerprints"]) > 1]
    wrong = [n for n, r in results.items() if r["text"] != expected.get(n)]
    c.check(len(interrupted) > 0, "streams were interrupted and resumed on another backend",
            "%d of %d" % (len(interrupted), len(reqs)))
    c.check(not wrong, "every stream has the text of an uninterrupted run",
            "differ: %s" % wrong[:10])
    many_ids = [r["n"] for r in results.values() if len(r["ids"]) != 1]
    c.check(not many_ids, "every stream kept one id across legs", str(many_ids[:10]))
    bad_usage = [r["n"] for r in results.values() if r["usage"] is not None and r["usage"] != args.max_tokens]
    c.check(not bad_usage, "usage chunks count every streamed token across legs", str(bad_usage[:10]))
    usage_mid = [r["n"] for r in results.values() if r["usage_mid"]]
    c.check(not usage_mid, "no client got the running usage it did not ask for", str(usage_mid[:10]))

    # The stream offset: the fake servers count, from a continuation's
    # text, the tokens the client had (whatever the events held), and
    # generate what is left of max_tokens.
    enqueued = {e["key"]: e for e in events if e["event"] == "replay_enqueued"}
    conts = [e for e in backend if e["event"] == "request" and e["request_id"] in enqueued]
    bad_offset = ["%s: gateway %d, text %d" % (e["request_id"], enqueued[e["request_id"]]["offset"], e["offset"])
                  for e in conts if enqueued[e["request_id"]]["offset"] != e["offset"]
                  or enqueued[e["request_id"]].get("offset_estimated")]
    c.check(len(conts) >= len(interrupted) and not bad_offset,
            "every replay's stream offset is the backend's count of the tokens the client had",
            "%d continuations; %s" % (len(conts), bad_offset[:5]))
    bad_cap = ["%s: %d + %d" % (e["request_id"], e["offset"], e["count"])
               for e in conts if e["offset"] + e["count"] != args.max_tokens]
    c.check(not bad_cap, "every continuation generates what is left of max_tokens", str(bad_cap[:5]))

    # 3. Nothing new reaches the noticed backend after the notice.
    notices = [e for e in events if e["event"] == "notice" and e["replica"] == args.noticed]
    c.check(len(notices) == 1, "the gateway handed in one notice for %s" % args.noticed,
            json.dumps(notices))
    if notices:
        t_notice = notices[0]["handed_in"]
        # Exact, from the gateway's own times: a route that started after
        # the notice was handed in must not choose the noticed backend, and
        # every request reaching it after the notice must come from a route
        # that started before (it was on the wire).
        routes = {e["key"]: e for e in events if e["event"] == "route"}
        before = [e for e in backend if e["server"] == args.noticed and e["event"] == "request"
                  and e["t"] < t_notice]
        routed_after = [e for e in routes.values() if e["replica"] == args.noticed
                        and e["route_start"] > t_notice]
        arrived_after = [e for e in backend if e["server"] == args.noticed and e["event"] == "request"
                         and e["t"] > t_notice
                         and (e["request_id"] not in routes
                              or routes[e["request_id"]]["route_start"] > t_notice)]
        c.check(len(before) > 0, "%s served requests before the notice" % args.noticed,
                "%d" % len(before))
        c.check(not arrived_after and not routed_after,
                "no request routed after the notice reached %s" % args.noticed,
                "%d routed, %d arrived" % (len(routed_after), len(arrived_after)))
        died = [e for e in backend if e["server"] == args.noticed and e["event"] == "died"]
        c.check(len(died) == 1 and died[0]["t"] >= notices[0]["deadline"] - 1,
                "%s died at its deadline" % args.noticed,
                "deadline %.1f, died %s" % (notices[0]["deadline"], [round(e["t"], 1) for e in died]))
        print("     notice: %d plans, %s replay, %s drain" % (
            notices[0]["plans"], notices[0].get("replay"), notices[0].get("drain")))

        # 4. Requests sharing a system prompt stick to one backend while it
        # is healthy: before the notice, and among new requests after it.
        def stickiness(sel):
            by = {}
            for e in backend:
                if e["event"] == "request" and not e["continuation"] and sel(e["t"]):
                    by.setdefault(e["system"], set()).add(e["server"])
            return by

        # Requests arriving within a second of the notice were routed
        # around it, so they belong to neither side.
        for name, sel in (("before the notice", lambda t: t < t_notice),
                          ("after the notice", lambda t: t > t_notice + 1.0)):
            by = stickiness(sel)
            split = {k[:8]: sorted(v) for k, v in by.items() if len(v) > 1}
            c.check(len(by) > 0 and not split,
                    "each system prompt stuck to one backend %s" % name,
                    "%d prompts; split: %s" % (len(by), split) if split else "%d prompts" % len(by))

    # 5. /metrics shows the notice and the replays.
    noticed = sum(v for k, v in metrics.items()
                  if k.startswith("spotinfer_node_transitions_total{") and 'to="noticed"' in k)
    c.check(noticed >= 1 and metrics.get("gateway_notices_total", 0) >= 1,
            "/metrics shows the notice", "node transitions to noticed: %d" % noticed)
    enq = metrics.get('gateway_replays_total{step="enqueued"}', 0)
    res = metrics.get('gateway_replays_total{step="resumed"}', 0)
    fail = metrics.get('gateway_replays_total{step="failed"}', 0)
    c.check(res >= len(interrupted) and res == enq and fail == 0,
            "/metrics shows the replays", "enqueued %d, resumed %d, failed %d" % (enq, res, fail))

    # 6. Nothing is left in the replay queue.
    left = {s: metrics.get('gateway_replay_queue{state="%s"}' % s, -1)
            for s in ("ready", "leased", "delayed", "dead")}
    c.check(all(v == 0 for v in left.values()), "the replay queue is empty", json.dumps(left))

    if args.report:
        with open(args.report, "w") as f:
            json.dump({"results": results, "expected": expected}, f, indent=1)
    print("drill: %d passed, %d failed" % (c.passed, c.failed))
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
