"""fakellm backends for the LiteLLM tests and the benchmark: each a process
on 127.0.0.1 at a port it picks, named by its replica id."""

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = "fake-model"


def fakellm_binary(workdir):
    """$SPI_FAKELLM, else examples/fakellm built with `go build` into workdir."""
    path = os.environ.get("SPI_FAKELLM")
    if path:
        return path
    out = Path(workdir) / "fakellm"
    subprocess.run(["go", "build", "-o", str(out), "."],
                   cwd=ROOT / "examples" / "fakellm", check=True)
    return str(out)


class Backends:
    """fakellm processes, each named by its replica id."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = workdir
        self.procs = {}
        self.addrs = {}

    def start(self, rid, *args, model=MODEL):
        addr_file = Path(self.workdir) / f"{rid}.addr"
        log = Path(self.workdir) / f"{rid}.jsonl"
        p = subprocess.Popen([self.binary, "-addr", "127.0.0.1:0", "-addr-file",
                              str(addr_file), "-id", rid, "-model", model,
                              "-log", str(log), *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs[rid] = p
        deadline = time.monotonic() + 10
        while not (addr_file.exists() and addr_file.read_text().strip()):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fakellm {rid} did not start")
            time.sleep(0.02)
        self.addrs[rid] = addr_file.read_text().strip()
        return self.addrs[rid]

    def url(self, rid):
        return f"http://{self.addrs[rid]}/v1"

    def stop(self, rid):
        p = self.procs.pop(rid)
        p.kill()
        p.wait()

    def close(self):
        for rid in list(self.procs):
            self.stop(rid)


def deployment(backends, rid, pool="spot", usd=1.8, **extra):
    """A model_list entry for a backend, with its spotinfer settings."""
    settings = {"pool": pool, "usd_per_hour": usd, "max_inflight": 16, **extra}
    return {"model_name": MODEL,
            "litellm_params": {"model": f"openai/{MODEL}", "api_base": backends.url(rid),
                               "api_key": "unused"},
            "model_info": {"id": rid, "spotinfer": settings}}
