"""A tiny OpenAI-shaped backend on loopback that answers after a delay:
chat (stream or not), completions, embeddings, responses."""
import json
import threading
import time
import http.server


class Handler(http.server.BaseHTTPRequestHandler):
    delay = 1.2
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"{}")
        time.sleep(self.server.delay)
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        p = self.path
        if p.endswith("/embeddings"):
            inp = body.get("input")
            k = len(inp) if isinstance(inp, list) else 1
            return self._send({"object": "list", "model": body.get("model"),
                               "data": [{"object": "embedding", "index": i,
                                         "embedding": [0.1, 0.2]} for i in range(k)],
                               "usage": {"prompt_tokens": 5, "total_tokens": 5}})
        if p.endswith("/chat/completions"):
            if body.get("stream"):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for i, piece in enumerate(["he", "llo", ""]):
                    ch = {"id": "c1", "object": "chat.completion.chunk", "created": 1,
                          "model": body.get("model"),
                          "choices": [{"index": 0, "delta": {"content": piece} if piece else {},
                                       "finish_reason": None if piece else "stop"}]}
                    self.wfile.write(f"data: {json.dumps(ch)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True
                return
            return self._send({"id": "c1", "object": "chat.completion", "created": 1,
                               "model": body.get("model"),
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": "hi"}}],
                               "usage": usage})
        if p.endswith("/completions"):
            return self._send({"id": "t1", "object": "text_completion", "created": 1,
                               "model": body.get("model"),
                               "choices": [{"index": 0, "text": "hi", "finish_reason": "stop",
                                            "logprobs": None}],
                               "usage": usage})
        if p.endswith("/responses"):
            return self._send({"id": "resp_1", "object": "response", "created_at": 1,
                               "status": "completed", "model": body.get("model"),
                               "output": [{"type": "message", "id": "m1", "status": "completed",
                                           "role": "assistant",
                                           "content": [{"type": "output_text", "text": "hi",
                                                        "annotations": []}]}],
                               "usage": {"input_tokens": 5, "output_tokens": 3,
                                         "total_tokens": 8}})
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


def serve(delay):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.delay = delay
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"
