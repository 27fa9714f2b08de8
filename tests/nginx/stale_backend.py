"""A backend whose kept-alive connections go stale, for tests/nginx/run.sh.

    python3 stale_backend.py ADDR_FILE [SECONDS]

Listens on 127.0.0.1 at a port the OS picks (written to ADDR_FILE), for at
most SECONDS (900). On each connection it answers the first POST with a
whole chat completion, kept alive (Content-Length), then reads the second
request on that connection and closes it without an answer: what a backend
that closed an idle connection looks like to the proxy that reuses it. A
second request whose path holds /hang/ is never answered instead: the
connection stays open until the proxy closes it (a backend that stopped
answering on a kept-alive connection). A request whose path holds /stall/
or /cut/, first or second on its connection, gets the header of a stream
(chunked) and its first event, then nothing more: /stall/ leaves the
connection open until the proxy closes it, /cut/ closes it before the
stream's end. A GET (the module's load scrape) gets an idle vLLM metrics
text and the connection is closed.
"""

import json
import os
import socket
import sys
import threading
import time

METRICS = "".join(f'{name}{{engine="0",model_name="fake-model"}} 0\n' for name in (
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")).encode()


def read_request(f):
    """(method, path, body) of the next request on f, or None at the end."""
    line = f.readline()
    if not line:
        return None
    method, path = (line.split(b" ") + [b""])[:2]
    length = 0
    while True:
        h = f.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return method, path, f.read(length)


def answer(body, content_type, keep):
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n").encode() + body


def completion():
    return json.dumps({
        "id": "chatcmpl-stale", "object": "chat.completion", "created": int(time.time()),
        "model": "fake-model", "system_fingerprint": "stale",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": " a fresh answer"}}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}}).encode()


def first_event():
    chunk = {"id": "chatcmpl-stale", "object": "chat.completion.chunk", "created": int(time.time()),
             "model": "fake-model", "system_fingerprint": "stale",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": " a"}, "finish_reason": None}]}
    event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(event) + event + b"\r\n")


def broken_stream(conn, f, path):
    """The stream's header and first event; /stall/: nothing more until the
    proxy closes the connection; /cut/: the connection closes. Whether path
    asked for one."""
    if b"/stall/" not in path and b"/cut/" not in path:
        return False
    conn.sendall(first_event())
    if b"/stall/" in path:
        f.read()  # until the proxy closes the connection
    return True


def serve(conn):
    with conn, conn.makefile("rb") as f:
        conn.settimeout(30)
        try:
            req = read_request(f)
            if req is None:
                return
            if req[0] != b"POST":
                conn.sendall(answer(METRICS, "text/plain; version=0.0.4", False))
                return
            if broken_stream(conn, f, req[1]):
                return
            conn.sendall(answer(completion(), "application/json", True))
            second = read_request(f)  # read, then the connection closes unanswered
            if second is not None and broken_stream(conn, f, second[1]):
                return
            if second is not None and b"/hang/" in second[1]:
                read_request(f)  # unanswered until the proxy closes the connection
        except OSError:
            pass


def main():
    lifetime = float(sys.argv[2]) if len(sys.argv) > 2 else 900.0
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(1.0)
    with open(sys.argv[1] + ".tmp", "w") as out:
        out.write("127.0.0.1:%d" % srv.getsockname()[1])
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    end = time.time() + lifetime
    while time.time() < end:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
