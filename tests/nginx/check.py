"""Checks of the nginx module against a running nginx and fakellm backends.

Run by tests/nginx/run.sh, which starts everything. Requests go through the
official openai client and through plain HTTP (a new connection each, so
both worker processes take some); the access log ('$pid $status
"$upstream_addr" $request_uri "$spotinfer_replica" $spotinfer_class
$spotinfer_reason $spotinfer_blocks $spotinfer_tokens') shows which worker
served a request, which backends nginx tried and what the library decided.
"""

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPConnection, IncompleteRead

import httpx
import openai

SYSTEM = ("You are the support assistant of a company that sells spot GPU capacity. "
          "Answer briefly, cite the runbook, never invent prices. ") * 24
OTHER_SYSTEM = ("You translate short English sentences into formal French, one line each. ") * 40
# notices handed in after spot-a's before the reload: more than the ring
NOTICE_FLOOD = 70
DEADLINE = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))


def fail(msg):
    print(f"check: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def say(msg):
    print(f"   {msg}", flush=True)


def http(method, url, body=None, timeout=30.0):
    """(status, headers, body bytes) on a new connection."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def chat(system, user, **extra):
    body = {"model": "fake-model", "max_tokens": 6,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    body.update(extra)
    return body


def client(base):
    # No kept-alive connections: each request may land on another worker.
    hc = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=30.0)
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, http_client=hc)


def wait_ready(base, seconds):
    end = time.time() + seconds
    last = None
    while time.time() < end:
        try:
            last = http("POST", base + "/v1/chat/completions", chat("ready?", "ping"))
        except urllib.error.URLError as e:  # not listening yet
            last = (0, None, str(e).encode())
        if last[0] == 200:
            return
        time.sleep(0.2)
    fail(f"nginx never routed a request: last answer {last[0]} {last[2][:200]!r}")


def served_by(resp):
    return resp.system_fingerprint


def turn(system, n):
    """Turn n of the conversation on system: its earlier turns, then a new
    question (the prompt grows by a turn, as a chat client sends it)."""
    messages = [{"role": "system", "content": system}]
    for k in range(n):
        messages += [{"role": "user", "content": f"question {k}"},
                     {"role": "assistant", "content": f"the answer to question {k}, from the runbook"}]
    messages.append({"role": "user", "content": f"question {n}"})
    return {"model": "fake-model", "max_tokens": 6, "messages": messages}


def check_affinity(oa, log):
    """Two conversations, each on its own system prompt, three turns each,
    interleaved, each request on a new connection (so on either worker).
    What the library promises at its default configuration: a
    conversation's turns stay on the replica that holds it, in every
    worker. Each worker has its engine: the first turn a worker sees of a
    conversation is cold there and placed by rendezvous hash (the same
    replica in every worker), the next ones find it held there. One
    exception is the policy's share guard: a worker that has sent all its
    work so far to one replica (it saw one conversation only) finds that
    replica over its pool's mean share, and a turn may leave it
    ("imbalance"); that is checked as such."""
    families = {"a": SYSTEM, "b": OTHER_SYSTEM}
    owners = {f: [] for f in families}
    for n in range(3):
        for f, system in families.items():
            resp = oa.chat.completions.create(**turn(system, n),
                                              extra_query={"probe": f"affinity-{f}-{n}"})
            owners[f].append(served_by(resp))
    entries = access_log(log, "probe=affinity-")  # in the order they were served
    if len(entries) != 6:
        fail(f"the decisions of the two conversations: {entries}")
    sent = {}    # worker -> the replicas it chose, in order
    placed = {}  # (worker, conversation) -> the replica holding it there
    cold = {}    # conversation -> its rendezvous replica
    warm, moved = [], []
    for e in entries:
        f = re.search(r"affinity-(\w)-", e["uri"]).group(1)
        key, held = (e["pid"], f), int(e["blocks"].split("/")[0])
        before = sent.setdefault(e["pid"], [])
        if key not in placed:  # cold in this worker: the same replica in every worker
            ok = e["reason"] == "rendezvous" and held == 0 and \
                cold.setdefault(f, e["replica"]) == e["replica"]
        elif e["replica"] == placed[key]:
            ok = e["reason"] == "affinity" and held > 0
            warm.append(e)
        else:
            ok = e["reason"] == "imbalance" and set(before) == {placed[key]}
            moved.append(e)
        if not ok:
            fail(f"the decisions of conversation {f}: {[x for x in entries if f'-{f}-' in x['uri']]}")
        placed[key] = e["replica"]
        before.append(e["replica"])
    for f, o in owners.items():
        if len(set(o)) != 1 and not any(f"-{f}-" in m["uri"] for m in moved):
            fail(f"the three turns of conversation {f} went to {o}")
    if not warm:
        fail(f"no turn found its conversation held: {entries}")
    workers = {e["pid"] for e in entries}
    say(f"affinity: two conversations of three turns ({owners['a'][0]}, {owners['b'][0]}) "
        f"through {len(workers)} workers: {len(entries) - len(warm) - len(moved)} placed by "
        f"rendezvous hash, {len(warm)} by affinity ({warm[-1]['blocks']} blocks held), "
        f"{len(moved)} moved by the share guard")
    return owners["a"][0]


NORMALIZE = re.compile(rb'"(id|created|system_fingerprint)":("[^"]*"|\d+)')


def check_stream(oa, base, backends, log):
    body = chat(SYSTEM, "stream me an answer", stream=True, max_tokens=24)
    chunks = list(oa.chat.completions.create(**body, extra_query={"probe": "stream"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    owner = chunks[0].system_fingerprint
    direct = openai.OpenAI(base_url=f"http://{backends[owner]}/v1", api_key="unused", max_retries=0)
    ref = list(direct.chat.completions.create(**body))
    ref_text = "".join(c.choices[0].delta.content or "" for c in ref if c.choices)
    if text != ref_text or len(chunks) != len(ref):
        fail(f"stream through nginx: {len(chunks)} chunks {text!r}; direct: {len(ref)} chunks {ref_text!r}")
    # The bytes too: only the per-request id, time and server name differ.
    _, h1, raw = http("POST", base + "/v1/chat/completions", body)
    _, _, raw_ref = http("POST", f"http://{backends[owner]}/v1/chat/completions", body)
    if NORMALIZE.sub(b"", raw) != NORMALIZE.sub(b"", raw_ref):
        fail("the event stream through nginx differs from the backend's")
    if not h1.get("Content-Type", "").startswith("text/event-stream"):
        fail(f"stream Content-Type {h1.get('Content-Type')!r}")
    # Several tokens an event (-tokens-per-event 3): the ticket counts the
    # tokens (each a word of the fake server's text), not the events.
    logged = access_log(log, "probe=stream")
    if len(logged) != 1 or logged[0]["tokens"] != str(len(text.split())):
        fail(f"the stream's {len(text.split())} tokens in {len(chunks)} chunks were counted as {logged}")
    # With a usage chunk (or a whole answer's usage) its count is the one.
    used = list(oa.chat.completions.create(**body, stream_options={"include_usage": True},
                                           extra_query={"probe": "usage-stream"}))
    whole = oa.chat.completions.create(**chat(SYSTEM, "a whole answer"), extra_query={"probe": "usage-whole"})
    got = [e["tokens"] for p in ("usage-stream", "usage-whole") for e in access_log(log, "probe=" + p)]
    want = [str(used[-1].usage.completion_tokens), str(whole.usage.completion_tokens)]
    if got != want or len(used) == used[-1].usage.completion_tokens:
        fail(f"usage: tickets got {got} output tokens, the answers said {want}")
    say(f"stream: {len(chunks)} chunks, text and bytes as the backend sends them; the ticket counted "
        f"{logged[0]['tokens']} tokens; with usage the tickets take its count ({', '.join(want)})")


TOK_NODE = "i-00000000000000aa0"


def words(text):
    """The fake server's tokens in its text: each is a space and a word."""
    return len(text.split())


def sse_events(resp):
    """The JSON events of a stream, as they come."""
    for line in resp.iter_lines():
        if line.startswith("data: {"):
            yield json.loads(line[len("data: "):])


def event_text(ev):
    return "".join(c.get("delta", {}).get("content") or c.get("text") or "" for c in ev.get("choices", []))


def check_tokens(base, log, error_log):
    """Upstream "tok": multi sends 4 tokens an event. A ticket's output
    tokens (in the access log) are the stream's tokens, from the backend's
    usage when an event carries it (the usage chunk with include_usage, the
    usage so far in every event with continuous_usage_stats) and else its
    words, never its events (role, text, finish, usage). A ticket's progress
    is what the library's plans read: two streams, one without usage and
    one with the running count, are open when their machine gets a notice,
    and each one's plan in the error log says how far it had streamed."""
    oa = openai.OpenAI(base_url=base + "/tok/v1", api_key="unused", max_retries=0,
                       http_client=httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=30.0))
    got = {}
    for probe, extra in [("tok-plain", {}),
                         ("tok-usage", {"stream_options": {"include_usage": True}}),
                         ("tok-running", {"stream_options": {"include_usage": True,
                                                             "continuous_usage_stats": True}})]:
        # multi is spot: streams default to gold, which runs on on-demand
        body = chat(SYSTEM, probe, stream=True, max_tokens=12, metadata={"class": "silver"})
        chunks = list(oa.chat.completions.create(**body, extra_body=extra, extra_query={"probe": probe}))
        n = words("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        usage = chunks[-1].usage.completion_tokens if chunks[-1].usage else None
        logged = access_log(log, "probe=" + probe)
        if n != 12 or usage not in (None, n) or len(chunks) >= n:
            fail(f"{probe}: {len(chunks)} chunks, {n} tokens, usage {usage}")
        if len(logged) != 1 or logged[0]["replica"] != "multi" or logged[0]["tokens"] != str(n):
            fail(f"{probe}: {n} tokens in {len(chunks)} chunks, the ticket counted {logged}")
        got[probe] = len(chunks)

    # Progress. Plans expect max_tokens (48) tokens of each; a plan's
    # progress times 48 is what the ticket had reported.
    max_tokens, streams, had = 48, {}, {}
    with httpx.Client(timeout=30) as hc:
        for klass, extra in [("silver", {}),
                             ("bronze", {"stream_options": {"include_usage": True,
                                                            "continuous_usage_stats": True}})]:
            body = chat(SYSTEM, "a long answer, " + klass, stream=True, max_tokens=max_tokens,
                        metadata={"class": klass}, **extra)
            resp = hc.send(hc.build_request("POST", f"{base}/tok/v1/chat/completions?probe=tok-{klass}",
                                            json=body), stream=True)
            streams[klass] = (resp, sse_events(resp))
            had[klass] = 0
        # Both have two events of text (8 tokens) when the notice comes.
        for klass, (_, events) in streams.items():
            while had[klass] < 8:
                had[klass] += words(event_text(next(events)))
        notice(base, "tok-notice", TOK_NODE)
        for klass, (resp, events) in streams.items():
            for ev in events:
                had[klass] += words(event_text(ev))
            resp.close()
    pat = re.compile(rf'machine "{TOK_NODE}": ticket \d+ on "multi" \((\w+)\): progress ([\d.]+)')
    plans = {}
    for _ in range(20):
        with open(error_log) as f:
            plans = {m.group(1): round(float(m.group(2)) * max_tokens) for m in pat.finditer(f.read())}
        if len(plans) == 2:
            break
        time.sleep(0.1)
    for klass in streams:
        if had[klass] != max_tokens:
            fail(f"the {klass} stream ended after {had[klass]} of {max_tokens} tokens")
    # What the client had read when the notice went is a lower bound (nginx
    # counts an event before the client reads it); events of 4 tokens.
    if sorted(plans) != ["bronze", "silver"] or any(
            not 8 <= v <= max_tokens or v % 4 for v in plans.values()):
        fail(f"the notice's plans put the open streams at {plans} tokens streamed, "
             f"the client had read 8 of each by then")
    # No ticket left open; another worker's samples are up to a second old.
    for _ in range(20):
        _, _, raw = http("GET", base + "/tok-metrics")
        inflight = re.findall(r"^spotinfer_replica_inflight\{[^}]*\} (\S+)$", raw.decode(), re.M)
        if inflight and all(float(v) == 0 for v in inflight):
            break
        time.sleep(0.5)
    else:
        fail(f"open tickets on tok after its streams ended: {inflight}")
    say(f"tokens: 12 tokens in {got['tok-plain']} events counted 12, with a usage chunk and with the usage "
        f"in every event 12; a notice on two open streams (8 tokens read) planned them at "
        f"{plans['silver']} (words) and {plans['bronze']} (the backend's count) of {max_tokens} tokens streamed")


def check_bad_requests(oa, base):
    status, _, raw = http("POST", base + "/v1/chat/completions", b'{"model": "m", "messages": [')
    err = json.loads(raw)["error"]
    if status != 400 or err["type"] != "invalid_request_error" or "malformed JSON at byte offset" not in err["message"]:
        fail(f"malformed body: {status} {raw!r}")
    try:
        oa.chat.completions.create(model="m", messages=[{"role": "wizard", "content": "hi"}])
        fail("a message with an unknown role was served")
    except openai.BadRequestError as e:
        msg = e.body.get("message", "") if isinstance(e.body, dict) else ""
        if "role" not in msg:
            fail(f"unknown role: message {msg!r}")
        say(f"400: malformed JSON -> {err['message']!r}; unknown role -> {msg!r}")
    status, _, _ = http("GET", base + "/v1/chat/completions")
    if status != 405:
        fail(f"GET on the routed location: {status}")


def check_cancel(base, log):
    """A client that goes away mid-stream: its ticket is finished too (the
    metrics check later finds no ticket open)."""
    body = chat(SYSTEM, "a long story", stream=True, max_tokens=400)
    with httpx.stream("POST", base + "/v1/chat/completions?probe=cancel", json=body, timeout=30) as r:
        for _ in r.iter_lines():
            break
    time.sleep(0.5)
    logged = access_log(log, "probe=cancel")
    if len(logged) != 1 or logged[0]["replica"] == "":
        fail(f"the cancelled stream: {logged}")
    say(f"cancel: a client left a stream on {logged[0]['replica']} after its first chunk")


def check_big_body(oa, log):
    """A body over client_body_buffer_size waits in a temporary file: the
    module reads it back to route it, and proxy_pass sends it on."""
    big = "Here is the whole incident log to summarise. " + "line of the log; " * 3000
    resp = oa.chat.completions.create(**chat(big, "summarise"), extra_query={"probe": "big"})
    logged = access_log(log, "probe=big")
    if len(logged) != 1 or logged[0]["status"] != 200 or resp.usage.prompt_tokens < 5000:
        fail(f"a {len(big)}-byte prompt: {logged}, usage {resp.usage}")
    say(f"a {len(big) // 1024} KiB body (buffered in a file): routed to {logged[0]['replica']} "
        f"({logged[0]['blocks']} blocks), {resp.usage.prompt_tokens} prompt tokens arrived")


def peak_memory(pid):
    """A process's peak resident memory (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def check_huge_body(base, log):
    """A body far over limits.max_body_bytes (4 MiB), let in by
    client_max_body_size (/huge/), is refused 413 with the library's
    message, unread: the worker's peak memory does not grow by its size."""
    before = {e["pid"]: peak_memory(e["pid"]) for e in access_log(log, "")}
    body = json.dumps(chat(SYSTEM, "many words " * (6 << 20))).encode()
    status, _, raw = http("POST", f"{base}/huge/v1/chat/completions?probe=huge", body, timeout=60)
    logged = access_log(log, "probe=huge")
    if status != 413 or "exceeds the limit of 4194304" not in raw.decode() or len(logged) != 1:
        fail(f"a {len(body)}-byte body: {status} {raw[:200]!r}, logged {logged}")
    pid = logged[0]["pid"]
    if pid not in before:
        fail(f"the worker {pid} that took the huge body served nothing before it ({sorted(before)})")
    grown = peak_memory(pid) - before[pid]
    if grown > 16 << 20:
        fail(f"a {len(body) >> 20} MiB body refused 413 raised the worker's peak memory by {grown >> 20} MiB")
    say(f"a {len(body) >> 20} MiB body: 413 {json.loads(raw)['error']['message']!r}, the worker's "
        f"peak memory grew by {grown >> 10} KiB")


def edge_metrics(base, location="/edge-metrics"):
    """Upstream "edge" (or another) summed over the workers: decisions (all,
    and those that chose the on-demand pool), breakers opened, open tickets
    (all, and pair-od's), and its replicas' breaker states (0 closed, 1
    open, 2 half-open: all, and pair-od's)."""
    _, _, raw = http("GET", base + location)
    text = raw.decode()

    def total(name, label=""):
        return sum(float(v) for labels, v in re.findall(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M)
                   if label in labels)
    return {"decisions": total("spotinfer_decisions_total"),
            "od_decisions": total("spotinfer_decisions_total", 'pool="on_demand"'),
            "breakers_opened": total("spotinfer_breaker_opens_total"),
            "open_tickets": total("spotinfer_replica_inflight"),
            "od_tickets": total("spotinfer_replica_inflight", 'replica="pair-od"'),
            "breaker": total("spotinfer_replica_breaker"),
            "od_breaker": total("spotinfer_replica_breaker", 'replica="pair-od"')}


def wait_edge(base, want, what, location="/edge-metrics"):
    """Reads the edge metrics until they are want (a tuple: one of its
    values), as each worker copies its text in every second."""
    got = None
    for _ in range(20):
        got = edge_metrics(base, location)
        if all(got[k] in (v if isinstance(v, tuple) else (v,)) for k, v in want.items()):
            return
        time.sleep(0.5)
    fail(f"{what}: edge metrics {got}, want {want}")


def post_on(conn, path, body):
    """POST on a kept-alive connection (so on one worker, one engine)."""
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read()


def check_redirects(base, log):
    """Internal redirects: a ticket ends with the replica's own answer when
    it gave one, and as cancelled when it never got the request. All on
    one connection, so one worker's
    engine, whose breaker (edge.json: one error opens it, and a
    millisecond later the next request is its probe) tells the outcomes
    apart: an error opens it (the counter; the gauge may already read
    half-open, the cooldown being so short), an OK probe closes it, a
    cancelled probe leaves it half-open. A named location that routes
    and proxies again does not route the request as a new one: its second
    pass through the balancer routes it again only within the tries the
    decision named (its choice and fallbacks): edge's has no fallback, so
    no decision is made and nginx answers 502 rather than sending the
    request back to the replica that failed it; a replica that handed the
    request on unfailed (X-Accel-Redirect) is tried again. The variables
    still have the decision after the redirect."""
    m = edge_metrics(base)
    if m["breaker"] != 0 or m["open_tickets"] != 0:
        fail(f"edge before its checks: {m}")
    conn = HTTPConnection(base.split("//", 1)[1], timeout=30)
    tripped = (1, 2)  # open, or half-open once the 1 ms went by
    # (path, status, body: a dict, or the fakellm that answered, decisions,
    # breakers opened, breaker state), the counts since the start
    steps = [
        # a 503 passed on to the client: an error, as before
        ("/edge-plain/fail/", 503, None, 1, 1, tripped),
        # the probe: the replica answers X-Accel-Redirect, which is an answer
        ("/edge/accel/", 200, {"cached": True}, 2, 1, 0),
        # an X-Accel-Redirect to a location routed through edge again: the
        # replica handed it on without failing it, so it is tried again
        ("/edge/again/", 200, {"again": True}, 3, 1, 0),
        # a 503 that error_page turns into a 200: the replica's error
        ("/edge/fail/", 200, {"sorry": True}, 4, 2, tripped),
        # the probe: a 503 to a named location that proxies again, where
        # no replica is left to try (not the one that failed it)
        ("/edge-named/fail/", 502, None, 5, 3, tripped),
        # the probe, sent elsewhere by try_files: the replica never got it,
        # cancelled, so the breaker stays half-open
        ("/edge-static/", 200, {"sorry": True}, 6, 3, 2),
    ]
    worker = None
    for path, want_status, want_body, decisions, opened, breaker in steps:
        probe = path.strip("/").replace("/", "-")
        status, raw = post_on(conn, f"{path}v1/chat/completions?probe={probe}", chat(SYSTEM, probe))
        body = None if want_body is None else json.loads(raw)
        if isinstance(want_body, str):
            body = body.get("system_fingerprint")
        if status != want_status or want_body != body:
            fail(f"{path}: {status} {raw!r}")
        logged = access_log(log, f"probe={probe}")
        worker = worker or logged[0]["pid"]
        if len(logged) != 1 or logged[0]["pid"] != worker:
            fail(f"{path}: the connection left worker {worker}: {logged}")
        wait_edge(base, {"decisions": m["decisions"] + decisions,
                         "breakers_opened": m["breakers_opened"] + opened,
                         "open_tickets": 0, "breaker": breaker}, path)
        if (logged[0]["replica"], logged[0]["klass"]) != ("edge", "silver"):
            fail(f"{path}: the decision was lost in the redirect: {logged}")
    conn.close()
    say("internal redirects: a 503 passed on opened edge's breaker; an X-Accel-Redirect as its probe "
        "ended OK (closed it); one back to edge went to edge again; a 503 to an error_page answering 200, and one to a named location "
        "that proxies again (502 there: no replica left but the one that failed), ended as errors "
        "(opened it); a probe try_files served elsewhere was "
        "cancelled (left it half-open); one decision each, no ticket left open, the decision in "
        "the variables after the redirect")


def check_pair(base, log):
    """Upstream "pair": silver goes to its spot replica first, with the
    on-demand one as the fallback, and one error opens a breaker
    (pair.json). A try after a failed one is routed again without the
    replicas tried, so the on-demand replica's try is a decision of its own
    (on the on-demand pool) with its own ticket, and the access log shows
    the last try's. Each try's outcome is the replica's that gave it: a 404
    or 403 the spot replica answered, which proxy_next_upstream http_404
    and http_403 pass over, ends its ticket with that answer (OK: no
    breaker opens), and the fallback's ticket gets the answer sent (6
    tokens); a 503 from the spot replica that error_page sends to a named
    location proxying to "pair" again ends its ticket as an error (its
    breaker opens), and that second pass goes to the on-demand replica
    (not back to the replica that failed). Every ticket ended, none open."""
    m = edge_metrics(base, "/pair-metrics")
    # (path, separator in $upstream_addr, breakers opened since the start)
    steps = [("/pair/missing/", ", ", 0), ("/pair/denied/", ", ", 0), ("/pair-again/fail/", " : ", 1)]
    for n, (path, sep, opened) in enumerate(steps, 1):
        probe = path.strip("/").replace("/", "-")
        status, _, raw = http("POST", f"{base}{path}v1/chat/completions?probe={probe}", chat(SYSTEM, probe))
        if status != 200 or json.loads(raw).get("system_fingerprint") != "edge":
            fail(f"{path}: {status} {raw!r}")
        logged = access_log(log, f"probe={probe}")
        tried = logged[0]["upstream"].split(sep) if len(logged) == 1 else []
        if len(tried) != 2 or len(set(tried)) != 2 or logged[0]["replica"] != "pair-od":
            fail(f"{path}: the spot replica, then the on-demand one: {logged}")
        if logged[0]["tokens"] != "6":
            fail(f"{path}: the on-demand replica's ticket did not count its answer: {logged}")
        # two decisions each: the first, and the on-demand try's
        wait_edge(base, {"decisions": m["decisions"] + 2 * n, "od_decisions": m["od_decisions"] + n,
                         "open_tickets": 0, "breakers_opened": m["breakers_opened"] + opened},
                  path, "/pair-metrics")
    # The spot replica fails (its breaker, open a millisecond, lets it take
    # this request as its probe), and the on-demand replica hands the
    # request back to "pair" (X-Accel-Redirect): the second pass goes to
    # the on-demand one again, not past it, unrouted.
    status, _, raw = http("POST", f"{base}/pair-handoff/v1/chat/completions?probe=handoff",
                          chat(SYSTEM, "handoff"))
    if status != 200 or json.loads(raw) != {"handed": "on-demand"}:
        fail(f"/pair-handoff/: {status} {raw!r}")
    logged = access_log(log, "probe=handoff")
    tried = re.split(", | : ", logged[0]["upstream"]) if len(logged) == 1 else []
    if len(tried) != 3 or tried[0] == tried[1] or tried[1] != tried[2]:
        fail(f"/pair-handoff/: the spot replica, the on-demand one, then it again: {logged}")
    wait_edge(base, {"decisions": m["decisions"] + 2 * (len(steps) + 1), "open_tickets": 0,
                     "breakers_opened": m["breakers_opened"] + 2}, "/pair-handoff/", "/pair-metrics")
    check_post_action(base, log)
    check_post_action_elsewhere(base, log)
    check_retry_load(base, log)
    check_retry_breaker(base, log)
    say("pair: a 404 and a 403 retried with proxy_next_upstream ended the spot replica's ticket "
        "with its own answer (OK), and the on-demand try was routed again, with a ticket of its "
        "own that counted the answer; a 503 sent by error_page to a named location that proxies "
        "again ended it as an error and went on to the on-demand replica (not back to the replica "
        "that failed); an on-demand replica that handed the request back to pair got it again; "
        "a post_action back to pair went to the replica that served, unrouted, and left its "
        "ticket to the answer, and one to another service answering 503 left the served 200 "
        "alone; no ticket left open")


def stale_pair(post):
    """Two requests in a row through upstream "ka" (post sends them on one
    client connection, so one worker): the second finds the first's
    kept-alive connection to the stale replica, which closes it unanswered,
    and nginx sends it again on a new connection. (status, body) of each."""
    return [post(f"/ka/v1/chat/completions?probe=ka-{n}", chat(SYSTEM, f"kept alive {n}")) for n in (1, 2)]


def check_keepalive(base, log):
    """A kept-alive connection gone stale is nginx's to retry, not a try of
    the request: both requests are served by the one replica (no fallback),
    the second after nginx's retry on a new connection (the replica twice
    in $upstream_addr), with one decision each, its breaker closed
    (edge.json: one error would open it) and no ticket left open."""
    m = edge_metrics(base, "/ka-metrics")
    conn = HTTPConnection(base.split("//", 1)[1], timeout=30)
    answers = stale_pair(lambda path, body: post_on(conn, path, body))
    conn.close()
    for n, (status, raw) in enumerate(answers, 1):
        if status != 200 or json.loads(raw).get("system_fingerprint") != "stale":
            fail(f"/ka/, request {n}: {status} {raw!r}")
    logged = access_log(log, "probe=ka-2")
    tried = logged[0]["upstream"].split(", ") if len(logged) == 1 else []
    if len(tried) != 2 or tried[0] != tried[1] or logged[0]["replica"] != "stale":
        fail(f"/ka/: the second request, the stale connection then a new one to the same replica: {logged}")
    wait_edge(base, {"decisions": m["decisions"] + 2, "open_tickets": 0, "breaker": 0,
                     "breakers_opened": m["breakers_opened"]}, "/ka/", "/ka-metrics")
    say("keepalive: a kept-alive connection the replica had closed was retried by nginx on a new one, "
        "to the same replica, unrouted: 200, one decision a request, no error counted, no ticket open")


def check_keepalive_given_up(base, log):
    """A POST on a kept-alive connection gone stale, where nginx may not
    send it again (no non_idempotent): the try failed (the replica's error:
    its breaker opens, edge.json), and the error page's answer, from the
    edge fakellm, counts nothing on that try's ticket (0 tokens). On one
    client connection (one worker) the stale replica serves a request a
    connection, so one of the first two finds a kept-alive one."""
    m = edge_metrics(base, "/ka-metrics")
    conn = HTTPConnection(base.split("//", 1)[1], timeout=30)
    sent, given_up = 0, None
    while given_up is None and sent < 2:
        sent += 1
        status, raw = post_on(conn, f"/ka-fb/v1/chat/completions?probe=kafb-{sent}",
                              chat(SYSTEM, f"given up {sent}"))
        fp = json.loads(raw).get("system_fingerprint") if status == 200 else None
        if fp not in ("stale", "edge"):
            fail(f"/ka-fb/, request {sent}: {status} {raw!r}")
        if fp == "edge":
            given_up = sent
    conn.close()
    if given_up is None:
        fail("/ka-fb/: no request found a kept-alive connection to the stale replica")
    logged = access_log(log, f"probe=kafb-{given_up}")
    if len(logged) != 1 or logged[0]["tokens"] != "0":
        fail(f"/ka-fb/: the error page's answer counted on the failed try's ticket: {logged}")
    wait_edge(base, {"decisions": m["decisions"] + sent, "open_tickets": 0,
                     "breakers_opened": m["breakers_opened"] + 1}, "/ka-fb/", "/ka-metrics")
    say("keepalive, not retried (a POST without non_idempotent): the try failed as the replica's "
        "error, and the error page's answer from another server counted nothing on its ticket")


def check_keepalive_post_action(base, log, error_log):
    """A post_action back to "ka" runs after the answer, and finds the
    connection that answer came on kept alive and stale (the replica closes
    a connection on its second request): nginx sends it again on a new
    connection, as with its own round robin, to the same replica, unrouted
    (one decision), with no error counted (edge.json: one would open the
    breaker), no "no live upstreams", and the served try's ticket ended
    with the answer (its 3 tokens)."""
    m = edge_metrics(base, "/ka-metrics")
    status, _, raw = http("POST", f"{base}/ka-post/v1/chat/completions?probe=ka-post",
                          chat(SYSTEM, "kept alive, then a post_action"))
    if status != 200 or json.loads(raw).get("system_fingerprint") != "stale":
        fail(f"/ka-post/: {status} {raw!r}")
    logged = []
    for _ in range(20):  # the log line is written once post_action is done
        logged = access_log(log, "probe=ka-post")
        if logged:
            break
        time.sleep(0.1)
    served, _, post = logged[0]["upstream"].partition(" : ") if len(logged) == 1 else ("", "", "")
    tried = served.split(", ") + post.split(", ")
    if len(post.split(", ")) < 2 or len(set(tried)) != 1 or logged[0]["tokens"] != "3":
        fail(f"/ka-post/: the post_action on the stale connection, then on a new one to the same "
             f"replica; the served ticket with the answer's tokens: {logged}")
    with open(error_log) as f:
        nolive = [line for line in f if "no live upstreams" in line and "probe=ka-post" in line]
    if nolive:
        fail(f"/ka-post/: nginx found no try for the post_action's retry: {nolive[-1].strip()}")
    # No error counted: the breaker was not opened again. Its state is not
    # read: the earlier checks may have left it open in another worker's
    # engine, which this request (a new connection) need not reach.
    wait_edge(base, {"decisions": m["decisions"] + 1, "open_tickets": 0,
                     "breakers_opened": m["breakers_opened"]}, "/ka-post/", "/ka-metrics")
    say(f"keepalive, post_action: on the stale connection the answer came on, then sent again "
        f"by nginx on a new one to the same replica ({post}), unrouted, no error counted, the "
        f"served ticket ended with the answer")


def check_keepalive_timeout(base, log, error_log):
    """A kept-alive connection on which the replica takes the request and
    never answers (its second, to /hang/): the read times out after 1 s,
    and nginx gives no try back for a timeout, so the try failed as the
    replica's error (its breaker opens, edge.json), on that connection only
    (not sent again on a new one), its ticket ended (none left open), and
    the client gets nginx's 504. A request through /ka/ first, on the same
    client connection (one worker), leaves a kept-alive connection that
    served one request."""
    m = edge_metrics(base, "/ka-metrics")
    conn = HTTPConnection(base.split("//", 1)[1], timeout=30)
    answers = [post_on(conn, f"{path}v1/chat/completions?probe={probe}", chat(SYSTEM, probe))
               for path, probe in (("/ka/", "kato-1"), ("/ka-hang/", "kato-2"))]
    conn.close()
    if [status for status, _ in answers] != [200, 504]:
        fail(f"/ka/ then /ka-hang/ on one connection: {answers}")
    logged = access_log(log, "probe=kato-2")
    if len(logged) != 1 or len(logged[0]["upstream"].split(", ")) != 1 or logged[0]["replica"] != "stale":
        fail(f"/ka-hang/: one try, on the kept-alive connection: {logged}")
    with open(error_log) as f:
        timed_out = [line for line in f if "upstream timed out" in line and "probe=kato-2" in line]
    if len(timed_out) != 1:
        fail(f"/ka-hang/: nginx's read timeout in the error log: {timed_out}")
    wait_edge(base, {"decisions": m["decisions"] + 2, "open_tickets": 0,
                     "breakers_opened": m["breakers_opened"] + 1}, "/ka-hang/", "/ka-metrics")
    say("keepalive, timed out: a kept-alive connection the replica never answered on timed out; "
        "the try failed as the replica's error (breaker opened), not sent again, ticket ended, 504")


def broken_answer(base, path):
    """POST path on a new connection: (status, the body read, whether it
    ended whole)."""
    conn = HTTPConnection(base.split("//", 1)[1], timeout=30)
    # silver: the stale replica is spot, which takes gold (a stream's
    # default class) only on a cache hit
    body = chat(SYSTEM, "broken", stream=True, metadata={"class": "silver"})
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    try:
        raw, whole = resp.read(), True
    except IncompleteRead as e:
        raw, whole = e.partial, False
    conn.close()
    return resp.status, raw, whole


def check_answer_failed(base, log, error_log):
    """A replica that fails an answer whose header nginx had sent on: the
    stale replica sends a stream's header and first event, then stalls
    until the read times out (/ka-stall/, proxy_read_timeout 1s) or closes
    the connection before the stream's end (/ka-cut/, without buffering,
    and /ka-cut-buffered/, with it). nginx cannot pass such a try over:
    the client has the 200 and the event, then the connection closes. The
    try's ticket ends as the replica's error (its breaker opens,
    edge.json), not with the 200 sent."""
    for path, probe, why in [("/ka-stall/", "kastall", "upstream timed out"),
                             ("/ka-cut/", "kacut", "upstream prematurely closed connection"),
                             ("/ka-cut-buffered/", "kacutbuf", "upstream prematurely closed connection")]:
        m = edge_metrics(base, "/ka-metrics")
        status, raw, whole = broken_answer(base, f"{path}v1/chat/completions?probe={probe}")
        if status != 200 or whole or b'"system_fingerprint": "stale"' not in raw:
            fail(f"{path}: {status}, {'whole' if whole else 'cut'}: {raw!r}")
        logged = access_log(log, f"probe={probe}")
        if len(logged) != 1 or logged[0]["status"] != 200 or logged[0]["replica"] != "stale":
            fail(f"{path}: {logged}")
        with open(error_log) as f:
            said = [line for line in f if why in line and f"probe={probe}" in line]
        if len(said) != 1:
            fail(f"{path}: nginx's \"{why}\" in the error log: {said}")
        wait_edge(base, {"decisions": m["decisions"] + 1, "open_tickets": 0,
                         "breakers_opened": m["breakers_opened"] + 1}, path, "/ka-metrics")
    say("answer failed after its header: a stream stalled past the read timeout, and one cut "
        "short (buffered and not), sent the client their 200 and ended the tries as the "
        "replica's errors (its breaker opened each time)")


def check_unix_socket(base, error_log, workers):
    """Upstream "sock": its replica is a server of this nginx on a unix
    socket, which takes the module's /metrics request (its Host header
    names no path) and answers a KV usage of 0.25: every worker's engine
    has that reading, and no load reading of it went stale. A request
    through it is served."""
    with open(error_log) as f:
        stale = [line.strip() for line in f if 'replica "sock"' in line and "goes stale" in line]
    if stale:
        fail(f"sock: its load reading went stale: {stale[0]}")
    kv = []
    for _ in range(20):  # another worker's samples are up to a second old
        _, _, raw = http("GET", base + "/sock-metrics")
        kv = re.findall(r'^spotinfer_replica_kv_usage\{[^}]*replica="sock"[^}]*\} (\S+)$', raw.decode(), re.M)
        if len(kv) == workers and all(float(v) == 0.25 for v in kv):
            break
        time.sleep(0.5)
    else:
        fail(f"sock: the replica's KV usage in the workers' engines: {kv}, want 0.25 in {workers}")
    status, _, raw = http("POST", f"{base}/sock/v1/chat/completions", chat(SYSTEM, "sock"))
    if status != 200 or json.loads(raw).get("system_fingerprint") != "edge":
        fail(f"/sock/: {status} {raw!r}")
    say(f"unix socket: the replica's /metrics read in {workers} worker(s) (KV usage 0.25), "
        f"a request served through it")


def check_encoded(base, log, error_log):
    """The sock replica's /gz/ compresses its answer when the client
    accepts gzip: the module does not read those bytes as text (0 output
    tokens, and the error log says why, once a worker); with the client's
    Accept-Encoding not passed on, the same answers are counted."""
    got = {}
    for where in ("gz", "identity"):
        for stream in (True, False):
            probe = f"enc-{where}-{'stream' if stream else 'whole'}"
            req = urllib.request.Request(
                f"{base}/sock-{where}/v1/chat/completions?probe={probe}",
                data=json.dumps(chat(SYSTEM, probe, stream=stream, metadata={"class": "silver"})).encode(),
                method="POST",
                headers={"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                coded = resp.headers.get("Content-Encoding")
                resp.read()
            if (coded == "gzip") != (where == "gz"):
                fail(f"{probe}: the answer came with Content-Encoding {coded}")
            got[probe] = [e["tokens"] for e in access_log(log, "probe=" + probe)]
    if any(got[p] != ["0"] for p in got if "-gz-" in p) or any(
            len(got[p]) != 1 or int(got[p][0]) <= 0 for p in got if "-identity-" in p):
        fail(f"compressed answers: the tickets' output tokens {got}")
    with open(error_log) as f:
        said = [line for line in f if '"Content-Encoding: gzip", whose output tokens are not counted' in line]
    if not said:
        fail("compressed answers: the error log does not say their tokens are not counted")
    say(f"compressed answers: not counted ({got['enc-gz-stream'][0]} tokens), said in the error log; "
        f"with Accept-Encoding \"\" on the proxied request counted "
        f"({got['enc-identity-stream'][0]} and {got['enc-identity-whole'][0]})")


def check_refused(base, log):
    """Upstream "refused": its spot replica answers 404 (on a unix socket),
    which proxy_next_upstream http_404 passes over, and the next try's
    connect() to the on-demand one fails at once (a unix socket nobody
    listens on; an unreachable network does the same), before nginx reads
    anything on that try and before it clears the answer of the try
    before. That try had no answer: its ticket ends as the replica's error
    (its breaker opens, pair.json), and nginx answers 502 with no try
    left."""
    m = edge_metrics(base, "/refused-metrics")
    status, _, raw = http("POST", f"{base}/refused/v1/chat/completions?probe=refused",
                          chat(SYSTEM, "refused"))
    logged = access_log(log, "probe=refused")
    tried = logged[0]["upstream"].split(", ") if len(logged) == 1 else []
    if status != 502 or len(tried) != 2 or not tried[1].endswith("/dead.sock"):
        fail(f"/refused/: {status} {raw!r} {logged}")
    wait_edge(base, {"decisions": m["decisions"] + 2, "open_tickets": 0,
                     "breakers_opened": m["breakers_opened"] + 1}, "/refused/", "/refused-metrics")
    say("refused: a 404 passed over, then a try whose connect() failed at once: that try ended as "
        "its replica's error (breaker opened), 502")


def check_post_action(base, log):
    """A post_action proxying to pair again runs after the answer was
    served and before the log phase: it goes to the replica that served,
    is not routed (one decision), and the served try's ticket ends with
    the answer (its 6 tokens, its 200), not as cancelled by that pass nor
    with the post_action's 503 (no breaker opens: pair.json)."""
    m = edge_metrics(base, "/pair-metrics")
    status, _, raw = http("POST", f"{base}/pair-post/v1/chat/completions?probe=post",
                          chat(SYSTEM, "post"))
    if status != 200 or json.loads(raw).get("system_fingerprint") != "edge":
        fail(f"/pair-post/: {status} {raw!r}")
    logged = []
    for _ in range(20):  # the log line is written once post_action is done
        logged = access_log(log, "probe=post")
        if logged:
            break
        time.sleep(0.1)
    tried = re.split(", | : ", logged[0]["upstream"]) if len(logged) == 1 else []
    if len(tried) != 2 or tried[0] != tried[1] or logged[0]["tokens"] != "6":
        fail(f"/pair-post/: the served replica twice, its ticket with the answer's tokens: {logged}")
    wait_edge(base, {"decisions": m["decisions"] + 1, "open_tickets": 0,
                     "breakers_opened": m["breakers_opened"]}, "/pair-post/", "/pair-metrics")


def check_post_action_elsewhere(base, log):
    """A post_action that proxies to another service (no spotinfer
    upstream's; it answers 503) runs after the answer was served: nginx
    writes that 503 over the request's status, and the served try's ticket
    still ends with the answer's 200 (no breaker opens: pair.json)."""
    m = edge_metrics(base, "/pair-metrics")
    status, _, raw = http("POST", f"{base}/pair-notify/v1/chat/completions?probe=notify",
                          chat(SYSTEM, "notify"))
    if status != 200 or json.loads(raw).get("system_fingerprint") != "edge":
        fail(f"/pair-notify/: {status} {raw!r}")
    logged = []
    for _ in range(20):  # the log line is written once post_action is done
        logged = access_log(log, "probe=notify")
        if logged:
            break
        time.sleep(0.1)
    tried = logged[0]["upstream"].split(" : ") if len(logged) == 1 else []
    if len(tried) != 2 or logged[0]["tokens"] != "6":
        fail(f"/pair-notify/: a replica, then the post_action's service; the served ticket "
             f"with the answer's tokens: {logged}")
    wait_edge(base, {"decisions": m["decisions"] + 1, "open_tickets": 0,
                     "breakers_opened": m["breakers_opened"]}, "/pair-notify/", "/pair-metrics")


def check_retry_load(base, log):
    """A try after a failed one has its own ticket: the on-demand replica's
    load is counted while it serves a slow stream the spot replica passed
    over (its open tickets read 1, then 0)."""
    m = edge_metrics(base, "/pair-metrics")
    body = chat(SYSTEM, "slow", stream=True, max_tokens=48, metadata={"class": "silver"})
    seen = None
    with httpx.stream("POST", f"{base}/pair/slow/v1/chat/completions?probe=pair-slow", json=body,
                      timeout=30) as r:
        events = sse_events(r)
        next(events)
        end = time.time() + 2  # the stream lasts 2.4 s (48 tokens, 20 a second)
        while seen is None and time.time() < end:
            got = edge_metrics(base, "/pair-metrics")
            if got["od_tickets"] == 1:
                seen = got
            time.sleep(0.2)
        n = sum(1 for _ in events)
    logged = access_log(log, "probe=pair-slow")
    if seen is None or r.status_code != 200:
        fail(f"/pair/slow/: the on-demand replica's open tickets never read 1 while it served "
             f"({n} more events): {edge_metrics(base, '/pair-metrics')}, {logged}")
    if len(logged) != 1 or logged[0]["replica"] != "pair-od" or logged[0]["tokens"] != "48":
        fail(f"/pair/slow/: the on-demand replica's ticket: {logged}")
    wait_edge(base, {"decisions": m["decisions"] + 2, "od_tickets": 0, "open_tickets": 0},
              "/pair/slow/", "/pair-metrics")
    say("retry load: pair-od's open tickets read 1 while it served a stream the spot replica "
        "passed over, and its ticket counted the stream's 48 tokens")


def check_retry_breaker(base, log):
    """A try after a failed one has its own ticket, so its failure opens
    its replica's breaker: both replicas fail /pair-down/, two breakers
    open, and the client gets the last try's 503."""
    m = edge_metrics(base, "/pair-metrics")
    status, _, raw = http("POST", f"{base}/pair-down/v1/chat/completions?probe=pair-down",
                          chat(SYSTEM, "down"))
    logged = access_log(log, "probe=pair-down")
    tried = logged[0]["upstream"].split(", ") if len(logged) == 1 else []
    if status != 503 or b"on-demand replica failed" not in raw or len(set(tried)) != 2:
        fail(f"/pair-down/: {status} {raw!r} {logged}")
    wait_edge(base, {"decisions": m["decisions"] + 2, "open_tickets": 0,
                     "breakers_opened": m["breakers_opened"] + 2, "od_breaker": (1, 2)},
              "/pair-down/", "/pair-metrics")
    say("retry breaker: both replicas failing a request opened both breakers (the on-demand "
        "one's by its own try's ticket)")


PAIR_OD_NODE = "i-00000000000000b20"


def close_pair_breakers(post):
    """A silver request to pair's spot replica, a gold one to its on-demand
    one: both breakers closed, in the worker post reaches (the earlier
    checks opened them, and a half-open replica's probe is routed with no
    fallback)."""
    for klass in ("silver", "gold"):
        status, raw = post(f"/pair/v1/chat/completions?probe=pair-close-{klass}",
                           chat(SYSTEM, "close", metadata={"class": klass}))
        if status != 200:
            fail(f"pair, {klass}: {status} {raw!r}")


def late_and_notice(post, base):
    """/pair-late/ (the spot replica answers past the read timeout) with a
    notice for the on-demand replica's machine while the first try waits:
    the answer's status and body."""
    out = {}
    body = chat(SYSTEM, "late", max_tokens=40, metadata={"class": "silver"})
    t = threading.Thread(target=lambda: out.update(
        answer=post("/pair-late/v1/chat/completions?probe=pair-late", body)), daemon=True)
    t.start()
    time.sleep(0.3)  # routed to the spot replica, which answers in 2 s
    notice(base, "pair-notice", PAIR_OD_NODE)
    t.join(20)
    return out.get("answer", (0, b""))


def check_retry_nowhere(base, log, error_log):
    """A try after a failed one that the library places nowhere: the spot
    replica times out, and meanwhile the on-demand one's machine got a
    notice, so no replica is left for the next try. nginx answers 502 as
    with no peer left (the upstream's name for that try in
    $upstream_addr), the module logs why, nginx logs no "no live
    upstreams" next to it (the on-demand replica is alive), and the first
    try's ticket ended as an error. On one connection, so one worker. Last
    of the pair checks: the notice stays."""
    m = edge_metrics(base, "/pair-metrics")
    conn = HTTPConnection(base.split("//", 1)[1], timeout=30)

    def post(path, body):
        return post_on(conn, path, body)
    close_pair_breakers(post)
    status, _ = late_and_notice(post, base)
    conn.close()
    logged = access_log(log, "probe=pair-late")
    tried = logged[0]["upstream"].split(", ") if len(logged) == 1 else []
    if status != 502 or len(tried) != 2 or tried[1] != "pair" or logged[0]["replica"] != "pair-spot":
        fail(f"/pair-late/: {status} {logged}")
    with open(error_log) as f:
        why = re.findall(r'upstream "pair": try 2 of the request not routed, no replica left to try: [^,]*', f.read())
    if not why:
        fail("/pair-late/: the error log does not say why the second try was not routed")
    with open(error_log) as f:
        nolive = [line for line in f if "no live upstreams" in line and "probe=pair-late" in line]
    if nolive:
        fail(f"/pair-late/: nginx's error next to the module's reason: {nolive[-1].strip()}")
    wait_edge(base, {"decisions": m["decisions"] + 4, "open_tickets": 0,
                     "breakers_opened": m["breakers_opened"] + 1}, "/pair-late/", "/pair-metrics")
    say(f"retry nowhere: the spot replica timed out and the on-demand one was noticed meanwhile: "
        f"502, \"{why[-1]}\"")


def access_log(path, probe):
    """The access log's entries of the requests whose URI holds probe. A
    client has its answer a moment before nginx logs the request."""
    time.sleep(0.2)
    out = []
    with open(path) as f:
        for line in f:
            m = re.match(r'(\d+) (\d+) "([^"]*)" (\S+) "([^"]*)" (\S+) (\S+) (\S+) (\S+)$', line)
            if m and probe in m.group(4):
                out.append(dict(pid=m.group(1), status=int(m.group(2)), upstream=m.group(3), uri=m.group(4),
                                replica=m.group(5), klass=m.group(6), reason=m.group(7),
                                blocks=m.group(8), tokens=m.group(9)))
    return out


def access_lines(path, probe):
    """(pid, status, upstream_addr) of the requests whose URI holds probe."""
    return [(e["pid"], e["status"], e["upstream"]) for e in access_log(path, probe)]


def bad_notice(base):
    """A notice body the parser rejects: 400 with its message."""
    status, _, raw = http("POST", f"{base}/notice?format=aws_instance_action&node=i-1",
                          {"action": "explode", "time": DEADLINE})
    err = json.loads(raw)["error"]
    if status != 400 or "action" not in err["message"]:
        fail(f"a notice with an unknown action: {status} {raw!r}")
    return err["message"]


def notice(base, location, node):
    status, _, raw = http("POST", f"{base}/{location}?format=aws_instance_action&node={node}",
                          {"action": "terminate", "time": DEADLINE})
    if status != 200 or json.loads(raw) != {"notices": 1}:
        fail(f"notice for {node}: {status} {raw!r}")


def check_notice(base, owner, nodes, addrs, log, workers):
    """The owner's machine gets a notice: from then on no worker routes to it."""
    msg = bad_notice(base)
    notice(base, "notice", nodes[owner])
    seen = set()
    for i in range(60):
        status, _, raw = http("POST", f"{base}/v1/chat/completions?probe=notice-{i}",
                              chat(SYSTEM, f"after the notice {i}"))
        if status != 200:
            fail(f"after the notice: {status} {raw!r}")
        got = json.loads(raw)["system_fingerprint"]
        if got == owner:
            fail(f"request {i} after the notice went to the noticed {owner}")
        seen.add(got)
        pids = {p for p, _, _ in access_lines(log, "probe=notice-")}
        if i >= 11 and len(pids) >= workers:
            break
    lines = access_lines(log, "probe=notice-")
    pids = {p for p, _, _ in lines}
    if len(pids) < workers:
        fail(f"{len(lines)} requests after the notice were all served by worker(s) {pids}")
    if any(addrs[owner] in a for _, _, a in lines):
        fail(f"nginx connected to the noticed {owner} after the notice")
    say(f"notice: {owner}'s machine noticed; {len(lines)} requests from {len(pids)} workers "
        f"avoided it at once (now on {sorted(seen)}); a bad body got 400 {msg!r}")
    return seen.pop() if len(seen) == 1 else None


def check_fallback(base, victim, pids, addrs, log):
    """A backend dies: the library still routes the prompt to it (warm, its
    last load reading fresh), nginx fails to connect and proxy_next_upstream
    takes the next try, routed again without it."""
    os.kill(pids[victim], signal.SIGKILL)
    time.sleep(0.1)
    for i in range(3):
        status, _, raw = http("POST", f"{base}/v1/chat/completions?probe=fallback-{i}",
                              chat(SYSTEM, f"after the crash {i}"))
        if status != 200:
            fail(f"request {i} after {victim} died: {status} {raw!r}")
    lines = access_lines(log, "probe=fallback-")
    tried = [a for _, _, a in lines if a.startswith(addrs[victim] + ", ")]
    if not tried:
        fail(f"no request tried {victim} and then a fallback: {lines}")
    say(f"fallback: {victim} killed; {len(tried)} of {len(lines)} requests tried it, then "
        f"proxy_next_upstream took a try routed again without it ({tried[0]})")


def kv_usage(addr):
    _, _, raw = http("GET", f"http://{addr}/metrics")
    m = re.search(rb"^vllm:kv_cache_usage_perc\{[^}]*\} (\S+)$", raw, re.M)
    return float(m.group(1)) if m else 0.0


def hold_kv(addr, stop):
    """A long stream straight to the backend: it fills the KV cache until
    stop is set."""
    body = chat("hold", "a long answer", stream=True, max_tokens=95)
    with httpx.stream("POST", f"http://{addr}/v1/chat/completions", json=body, timeout=60) as r:
        for _ in r.iter_bytes():
            if stop.is_set():
                return


def wait_kv(addr, above):
    end = time.time() + 10
    while (kv_usage(addr) >= 0.9) != above:
        if time.time() > end:
            fail(f"the KV usage of {addr} did not {'rise' if above else 'fall'}")
        time.sleep(0.05)
    time.sleep(0.5)  # a few scrapes by every worker


def check_shed_and_capacity(base, hot_addr, hot_node, log):
    """hot's KV cache fills: bronze is shed (429). It empties: silver is
    served; its machine gets a notice: nothing is left (503)."""
    stop = threading.Event()
    t = threading.Thread(target=hold_kv, args=(hot_addr, stop), daemon=True)
    t.start()
    try:
        wait_kv(hot_addr, True)
        bronze = chat("batch", "summarise", metadata={"class": "bronze"})
        status, headers, raw = http("POST", base + "/hot/v1/chat/completions?probe=shed", bronze)
        if status != 429 or not headers.get("Retry-After") or json.loads(raw)["error"]["type"] != "rate_limit_error":
            fail(f"bronze on a full KV cache: {status} Retry-After={headers.get('Retry-After')} {raw!r}")
        oa = openai.OpenAI(base_url=base + "/hot/v1", api_key="unused", max_retries=0)
        try:
            oa.chat.completions.create(**bronze)
            fail("the openai client got an answer from a shed request")
        except openai.RateLimitError:
            pass
        logged = access_log(log, "probe=shed")
        if [(e["status"], e["replica"], e["klass"], e["reason"]) for e in logged] != [(429, "", "bronze", "shed")]:
            fail(f"the shed request was logged as {logged}")
        say(f"429: bronze shed on a full KV cache, Retry-After {headers['Retry-After']}: "
            f"{json.loads(raw)['error']['message']!r}")
    finally:
        stop.set()
    t.join(10)
    wait_kv(hot_addr, False)
    silver = chat("interactive", "now", metadata={"class": "silver"})
    status, _, raw = http("POST", base + "/hot/v1/chat/completions", silver)
    if status != 200:
        fail(f"silver on an idle spot replica: {status} {raw!r}")
    # This time as an EventBridge event, which names the machine itself.
    event = {"version": "0", "id": "7d2c4c8e-1b7a-4f7e-9a43-2f7e1c0b9d11",
             "detail-type": "EC2 Spot Instance Interruption Warning", "source": "aws.ec2",
             "account": "123456789012", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "region": "us-east-1", "resources": [f"arn:aws:ec2:us-east-1a:instance/{hot_node}"],
             "detail": {"instance-id": hot_node, "instance-action": "terminate"}}
    status, _, raw = http("POST", f"{base}/hot-notice?format=aws_eventbridge", event)
    if status != 200 or json.loads(raw) != {"notices": 1}:
        fail(f"EventBridge notice for {hot_node}: {status} {raw!r}")
    status, headers, raw = http("POST", base + "/hot/v1/chat/completions", silver)
    if status != 503 or not headers.get("Retry-After") or json.loads(raw)["error"]["type"] != "unavailable":
        fail(f"no capacity: {status} {raw!r}")
    say(f"503: silver served, then its only replica noticed (EventBridge): Retry-After {headers['Retry-After']}: "
        f"{json.loads(raw)['error']['message']!r}")


def check_error_page(base):
    """hot's only replica is noticed (check_shed_and_capacity): /hot/
    answers the module's 503, /hot-fb/ the named location its error_page
    names."""
    silver = chat("interactive", "fallback", metadata={"class": "silver"})
    status, _, raw = http("POST", base + "/hot-fb/v1/chat/completions", silver)
    if status != 200 or json.loads(raw) != {"fallback": True}:
        fail(f"error_page 503 = @hot-fallback: {status} {raw!r}")
    status, _, raw = http("POST", base + "/hot/v1/chat/completions", silver)
    if status != 503:
        fail(f"/hot/ without an error_page: {status} {raw!r}")
    say(f"error_page: the module's 503 went to the named location (and stays {json.loads(raw)['error']['type']} "
        f"where the location has none)")


def check_metrics(base, out, log, workers):
    """One scrape has every worker's samples, labelled worker="N"."""
    # Another worker's copy is up to a second old: read until every worker
    # has copied its text in since the last request (bounded).
    routed = [e for e in access_log(log, "/v1/") if e["uri"].startswith("/v1/") and e["klass"] != "-"]
    # A try after a failed one (check_fallback's) was routed again: one
    # decision a try, each an entry of $upstream_addr ("-" for none).
    routes = sum(len(re.split(", | : ", e["upstream"])) for e in routed)
    for _ in range(20):
        status, headers, raw = http("GET", base + "/metrics")
        if status != 200 or not headers.get("Content-Type", "").startswith("text/plain"):
            fail(f"/metrics: {status} {headers.get('Content-Type')}")
        text = raw.decode()
        total = sum(float(v) for v in re.findall(r"^spotinfer_decisions_total\{[^}]*\} (\S+)$", text, re.M))
        if total == routes:
            break
        time.sleep(0.5)

    def samples(name, labels=""):
        pat = rf'^{name}\{{worker="(\d+)"{labels}[^}}]*\}} (\S+)$'
        return [(w, float(v)) for w, v in re.findall(pat, text, re.M)]

    noticed = samples("spotinfer_node_transitions_total", ',from="active",to="noticed"')
    if len(noticed) != workers or any(v != 1 for _, v in noticed):
        fail(f"the pushed notice in each worker's engine: {noticed}")
    # Every ticket was finished (in the log phase, or when its try
    # failed), and finished tickets carried their first byte.
    inflight = samples("spotinfer_replica_inflight")
    if len(inflight) != 3 * workers or any(v != 0 for _, v in inflight):
        fail(f"open tickets after every request ended: {inflight}")
    ttft = sum(v for _, v in samples("spotinfer_ttft_seconds_count"))
    # The workers' decisions add up to the requests routed through "llm".
    decisions = sum(v for _, v in samples("spotinfer_decisions_total"))
    if decisions != routes or ttft < 1:
        fail(f"{decisions:.0f} decisions over the workers, {len(routed)} routed requests logged "
             f"with {routes} tries; ttft {ttft}")
    with open(out, "w") as f:
        f.write(text)
    say(f"metrics: {len(text.splitlines())} lines from {workers} workers: the pushed notice in each, "
        f"no open ticket, {decisions:.0f} decisions = the tries of the {len(routed)} routed requests logged")


def valgrind_round(base, backends):
    """Every kind of request once, slowly (nginx runs under valgrind)."""
    wait_ready(base, 90)
    oa = client(base)
    oa.chat.completions.create(**chat(SYSTEM, "under valgrind"))
    list(oa.chat.completions.create(**chat(SYSTEM, "streamed", stream=True)))
    check_bad_requests(oa, base)
    bad_notice(base)
    notice(base, "notice", "i-0000000000000000c")
    status, _, _ = http("GET", base + "/metrics")
    bronze = chat("batch", "x", metadata={"class": "bronze"})
    http("POST", base + "/hot/v1/chat/completions", bronze)
    if status != 200:
        fail(f"/metrics under valgrind: {status}")
    for path, want in [("/edge/accel", 200), ("/edge/again", 200), ("/edge/fail", 200), ("/edge-named/fail", 502),
                       ("/edge-static", 200), ("/pair/missing", 200), ("/pair/denied", 200),
                       ("/pair-again/fail", 200), ("/pair-handoff", 200), ("/pair-down", 503)]:
        got, _, raw = http("POST", base + path + "/v1/chat/completions", chat(SYSTEM, "redirected"))
        if got != want:
            fail(f"{path} under valgrind: {got} {raw!r}")
    def post(path, body):
        got, _, raw = http("POST", base + path, body)
        return got, raw
    close_pair_breakers(post)
    got, raw = late_and_notice(post, base)
    if got != 502:
        fail(f"/pair-late under valgrind: {got} {raw!r}")
    conn = HTTPConnection(base.split("//", 1)[1], timeout=60)
    for got, raw in stale_pair(lambda path, body: post_on(conn, path, body)):
        if got != 200:
            fail(f"/ka under valgrind: {got} {raw!r}")
    # a post_action sent again on a new connection, then a kept-alive one
    # that times out
    for path, want in [("/ka-post/", 200), ("/ka/", 200), ("/ka-hang/", 504)]:
        got, raw = post_on(conn, path + "v1/chat/completions", chat(SYSTEM, "kept alive"))
        if got != want:
            fail(f"{path} under valgrind: {got} {raw!r}")
    conn.close()
    # answers that fail after their header (each opens the breaker, which
    # edge.json cools down for 1 ms: a request sent at once finds no
    # replica), a replica on a unix socket, and a try whose connect() fails
    # at once
    for path in ("/ka-stall/", "/ka-cut/", "/ka-cut-buffered/"):
        time.sleep(0.05)
        got, raw, whole = broken_answer(base, path + "v1/chat/completions")
        if got != 200 or whole:
            fail(f"{path} under valgrind: {got} {raw!r}")
    for path, want in [("/sock/", 200), ("/refused/", 502)]:
        got, _, raw = http("POST", base + path + "v1/chat/completions", chat(SYSTEM, "unix"))
        if got != want:
            fail(f"{path} under valgrind: {got} {raw!r}")
    # Streams of several tokens an event, one with the usage so far in each,
    # and a notice while one is open (its plan is logged).
    tok = openai.OpenAI(base_url=base + "/tok/v1", api_key="unused", max_retries=0)
    silver = {"class": "silver"}
    list(tok.chat.completions.create(**chat(SYSTEM, "running usage", stream=True, metadata=silver), extra_body={
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}}))
    with httpx.stream("POST", base + "/tok/v1/chat/completions", timeout=60,
                      json=chat(SYSTEM, "open at the notice", stream=True, max_tokens=12, metadata=silver)) as r:
        events = sse_events(r)
        next(events)
        notice(base, "tok-notice", TOK_NODE)
        for _ in events:
            pass
    say("valgrind round: chat, stream, 400, 405, notice, metrics, internal redirects, "
        "404, 403 and 503 retried on a request routed again, one routed nowhere, "
        "a stale kept-alive connection retried (a request's and a post_action's), one timed out, "
        "answers failed after their header, a unix socket replica, a connect() refused at once, "
        "streams of several tokens an event, a notice on an open stream")


def flood_notices(base, count=NOTICE_FLOOD):
    """More notices than the shared ring holds, for machines that run no
    replica, after spot-a's: a worker that starts later still has to take
    spot-a's (after_reload)."""
    for i in range(count):
        notice(base, "notice", f"i-flood{i:012d}")
    say(f"notices: {count} more for machines without replicas, past the ring of 64")


def after_reload(base, workers):
    """nginx -s reload started new workers with new engines: they take the
    notices still in force from the shared zone (spot-a's came before
    NOTICE_FLOOD others, more than the ring holds), so spot-a stays
    avoided."""
    time.sleep(1.5)  # the new workers have ticked and published
    _, _, raw = http("GET", base + "/metrics")
    noticed = re.findall(r'^spotinfer_replica_state\{worker="(\d+)",replica="spot-a",[^}]*\} 3$',
                         raw.decode(), re.M)
    flooded = re.findall(r'^spotinfer_node_transitions_total\{worker="(\d+)",from="active",'
                         r'to="noticed"\} (\d+)$', raw.decode(), re.M)
    if len(noticed) < workers:
        fail(f"after the reload spot-a is noticed in the engines of workers {noticed} only "
             f"(machines noticed: {flooded})")
    # Silver goes to spot first; spot-a is the only spot replica with a
    # load reading (spot-b is dead), so without the notice it would get
    # these. With it, the spot pool has nothing to give.
    answers = set()
    for i in range(8):
        status, _, raw = http("POST", base + "/v1/chat/completions", chat(SYSTEM, f"after the reload {i}"))
        if status == 200 and json.loads(raw)["system_fingerprint"] == "spot-a":
            fail(f"after the reload request {i} went to the noticed spot-a")
        answers.add(status)
    say(f"reload: the new workers ({len(noticed)}) took the earlier notice from the shared zone, "
        f"{NOTICE_FLOOD} notices later (machines noticed: {sorted(set(n for _, n in flooded))}); "
        f"spot-a still gets nothing (answers {sorted(answers)})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--backends", required=True, help="id=host:port,...")
    ap.add_argument("--pids", default="")
    ap.add_argument("--access-log")
    ap.add_argument("--error-log")
    ap.add_argument("--metrics-out")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--valgrind-round", action="store_true")
    ap.add_argument("--after-reload", action="store_true")
    a = ap.parse_args()
    addrs = dict(kv.split("=", 1) for kv in a.backends.split(","))
    if a.valgrind_round:
        valgrind_round(a.base, addrs)
        return
    if a.after_reload:
        after_reload(a.base, a.workers)
        return
    pids = {k: int(v) for k, v in (kv.split("=", 1) for kv in a.pids.split(","))}
    nodes = {"spot-a": "i-0000000000000000a", "spot-b": "i-0000000000000000b",
             "od-1": "i-0000000000000000c"}
    wait_ready(a.base, 20)
    oa = client(a.base)
    owner = check_affinity(oa, a.access_log)
    check_stream(oa, a.base, addrs, a.access_log)
    check_tokens(a.base, a.access_log, a.error_log)
    check_bad_requests(oa, a.base)
    check_big_body(oa, a.access_log)
    check_huge_body(a.base, a.access_log)
    check_redirects(a.base, a.access_log)
    check_pair(a.base, a.access_log)
    check_retry_nowhere(a.base, a.access_log, a.error_log)
    check_keepalive(a.base, a.access_log)
    check_keepalive_given_up(a.base, a.access_log)
    check_keepalive_post_action(a.base, a.access_log, a.error_log)
    check_keepalive_timeout(a.base, a.access_log, a.error_log)
    check_answer_failed(a.base, a.access_log, a.error_log)
    check_unix_socket(a.base, a.error_log, a.workers)
    check_encoded(a.base, a.access_log, a.error_log)
    check_refused(a.base, a.access_log)
    check_cancel(a.base, a.access_log)
    heir = check_notice(a.base, owner, nodes, addrs, a.access_log, a.workers)
    if heir is None:
        fail("after the notice the prompt did not settle on one backend")
    check_fallback(a.base, heir, pids, addrs, a.access_log)
    check_shed_and_capacity(a.base, addrs["hot"], "i-00000000000000ff0", a.access_log)
    check_metrics(a.base, a.metrics_out, a.access_log, a.workers)
    check_error_page(a.base)
    flood_notices(a.base)
    print("check: all passed")


if __name__ == "__main__":
    main()
