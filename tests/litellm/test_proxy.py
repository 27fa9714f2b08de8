"""LiteLLM's proxy with the strategy, started from the config.yaml of
docs/litellm.md (api_base pointed at fakellm backends) on a port it picks,
and the official openai client against it."""

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest
import yaml

from conftest import ROOT
from test_docs import fenced

KEY = "sk-change-me"
FAST = ("-token-rate", "2000", "-answer-tokens", "12")
SYSTEM = "You answer questions about tide tables for a small harbor office. " * 120

# A vLLM /metrics page under KV pressure: bronze is shed above 0.85, silver
# above 0.95.
PRESSURED = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.9
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def metrics_page():
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = PRESSURED.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/metrics"
    srv.shutdown()
    srv.server_close()


def extra_group(name, api_base, rid, pool, metrics_url):
    return {"model_name": name,
            "litellm_params": {"model": f"openai/{name}", "api_base": api_base,
                               "api_key": "none"},
            "model_info": {"id": rid, "spotinfer": {"pool": pool, "usd_per_hour": 1.8,
                                                    "metrics_url": metrics_url}}}


def start_proxy(tmp_path, config):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # The error breaker opens after two failed tickets in a row.
    (tmp_path / "spotinfer.json").write_text(json.dumps(
        {"policy": {"load_share_cap": 2},
         "router": {"error_threshold": 2, "error_cooldown_ms": 600000}}))
    port = free_port()
    env = dict(os.environ, SPOTINFER_CONFIG=str(tmp_path / "spotinfer.json"),
               LITELLM_LOCAL_MODEL_COST_MAP="True",
               PYTHONPATH=str(ROOT / "bindings" / "python"), PYTHONWARNINGS="ignore")
    log = open(tmp_path / "proxy.log", "w")
    cli = Path(sys.executable).parent / "litellm"
    proc = subprocess.Popen([str(cli), "--config", str(tmp_path / "config.yaml"),
                             "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/readiness", timeout=2):
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the proxy did not start:\n" +
                                 (tmp_path / "proxy.log").read_text()[-4000:])
        time.sleep(0.5)


def test_the_proxy_routes_with_the_strategy(backends, metrics_page, tmp_path):
    config = yaml.safe_load(fenced("yaml", 1))
    assert config["litellm_settings"]["callbacks"] == ["spotinfer.litellm_proxy.routing"]
    # KV pressure on the spot pool (the library's breaker is per pool): its
    # replicas' load comes from a page showing 0.9.
    for dep in config["model_list"]:
        rid = dep["model_info"]["id"]
        backends.start(rid, *FAST, model=dep["model_name"])
        dep["litellm_params"]["api_base"] = backends.url(rid)
        if dep["model_info"]["spotinfer"]["pool"] == "spot":
            dep["model_info"]["spotinfer"]["metrics_url"] = metrics_page
    # Two more model groups of one deployment each: a spot one, and an
    # on-demand one whose server is gone.
    backends.start("pressured", *FAST, model="pressured")
    dead = f"http://127.0.0.1:{free_port()}"
    config["model_list"] += [
        extra_group("pressured", backends.url("pressured"), "pressured", "spot", metrics_page),
        extra_group("dead", dead + "/v1", "dead", "on_demand", dead + "/metrics")]
    proc, port = start_proxy(tmp_path, config)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY,
                               max_retries=0, timeout=60)
        check_affinity_and_streams(client)
        check_shed_and_no_capacity(client)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ask(client, user, **kw):
    return client.chat.completions.create(
        model="llama-70b", metadata={"class": "silver"},
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}], **kw)


def check_affinity_and_streams(client):
    whole = [ask(client, f"question {n}") for n in range(4)]
    fps = [r.system_fingerprint for r in whole]
    assert fps[0] in ("spot-a", "spot-b") and fps == [fps[0]] * 4, fps
    chunks = list(ask(client, "question 0", stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 5
    assert text == whole[0].choices[0].message.content
    assert {c.system_fingerprint for c in chunks if c.system_fingerprint} == {fps[0]}


def check_shed_and_no_capacity(client):
    def call(model, cls):
        return client.chat.completions.with_raw_response.create(
            model=model, metadata={"class": cls},
            messages=[{"role": "user", "content": "hello"}])
    with pytest.raises(openai.RateLimitError) as ei:
        call("pressured", "bronze")
    assert ei.value.status_code == 429
    assert ei.value.response.headers.get("retry-after") == "1"
    assert re.search("shed", str(ei.value))
    assert call("pressured", "silver").http_response.status_code == 200
    # The dead server's tries fail and finish their tickets as errors, until
    # the library's breaker opens: then nothing is eligible, a 503 (the
    # proxy's own retries may open it within the first client call).
    answers = []
    for _ in range(6):
        try:
            call("dead", "silver")
            answers.append(200)
        except openai.APIStatusError as e:
            answers.append(e.status_code)
            if e.status_code == 503 and "no capacity" in str(e):
                answers.append("no capacity")
                break
    assert answers[-2:] == [503, "no capacity"], answers
    assert all(a >= 500 for a in answers[:-1]), answers
