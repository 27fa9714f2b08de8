#!/usr/bin/env python3
"""Every code block of the documentation is either run by a test or is not
something to run.

Pages: README.md, CHANGELOG.md, docs/*.md and the bindings' READMEs. Each
fenced block gets one of these verdicts:

  run         a shell block whose every command runs, and must exit 0, in
              --run mode (from a scratch copy of the repository root: each
              top-level entry linked, build/ linked to --build, outputs
              written in the scratch directory), with the installed
              --prefix's bin/ first on PATH
  config      a JSON configuration: parsed here; in --run mode also
              `spotinfer config check`
  json        any other JSON block: parsed here
  by FILE...  run by the named test(s), which must exist (a test that
              extracts the block from the page, or runs the same commands)
  skip WHY    shown but not run, and why
  text        no language: a diagram, a formula, output, a wire format

The verdict comes from a comment on the line before the block,
`<!-- doc-check: VERDICT -->` (invisible on the rendered page), else from
the table KNOWN below (pages whose owners keep them marker-free), else from
the block's language: none -> text, json -> json. A block with any other
language (sh, c, python, go, ...) and no verdict fails the check, so a new
command cannot go into the docs untested.

Usage:
  check-doc-blocks.py --self-test                 the check on made-up pages
  check-doc-blocks.py [root]                      static check (docs stage)
  check-doc-blocks.py --run --prefix P --build B [root]
                                                  also run the run/config
                                                  blocks against the
                                                  install prefix P
Exit status 1 when a block fails, with one line per failure.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

MARK = re.compile(r"^<!--\s*doc-check:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(```+|~~~+)\s*([\w.+-]*)\s*$")

# Verdicts for blocks of pages that carry no markers: (page, the block's
# first line less a trailing comment) -> verdict.
KNOWN = {
    ("docs/integrations.md", "bash scripts/setup-deps.sh"):
        "by scripts/test.sh examples/gateway/drill.sh examples/gateway/loadrun.sh",
    ("docs/simulator.md", "build/examples/spotinfer_sim --requests 20000 --rate 200 \\"):
        "run",
    ("docs/configuration.md", "{"): "config",
    # The same calls, checked, in the redis stage's store test.
    ("docs/redis.md", "spi_replay_store_module m;"):
        "by tests/redis/test_redis_store.c",
}


def blocks(text):
    """(line of the opening fence, language, body lines, marker or None)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence[0] * len(fence)):
            j += 1
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        mark = MARK.match(lines[k]) if k >= 0 else None
        yield start + 1, lang, lines[start + 1:j], mark.group(1) if mark else None
        i = j + 1


def verdict(page, lang, body, mark):
    if mark:
        return mark
    first = next((l for l in body if l.strip()), "")
    first = re.sub(r"\s+#.*$", "", first)
    if (page, first) in KNOWN:
        return KNOWN[(page, first)]
    if lang == "":
        return "text"
    if lang == "json":
        return "json"
    return None


def commands(body):
    """Shell commands of a block: comments dropped, continuations joined."""
    out, cur, first = [], "", None
    for n, line in enumerate(body):
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not cur:
            first = n
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append((first, cur + line))
        cur = ""
    if cur:
        out.append((first, cur))
    return out


def scratch(root, build):
    """A directory that looks like the repository root but takes outputs."""
    d = tempfile.mkdtemp(prefix="spotinfer-doccheck.")
    for name in os.listdir(root):
        if name in (".git", "build"):
            continue
        os.symlink(os.path.join(root, name), os.path.join(d, name))
    if build:
        os.symlink(os.path.abspath(build), os.path.join(d, "build"))
    return d


def run_block(where, body, env, cwd):
    bad = []
    for n, cmd in commands(body):
        try:
            r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd,
                               env=env, capture_output=True, text=True,
                               timeout=300)
            rc, err = r.returncode, r.stderr
        except subprocess.TimeoutExpired:
            rc, err = "timeout", ""
        if rc == 0:
            print(f"ok   {where}+{n + 1}: {cmd}")
        else:
            tail = " | ".join(err.strip().splitlines()[-3:])
            bad.append(f"{where}+{n + 1}: `{cmd}` exited {rc}: {tail}")
    return bad


def self_test():
    """The check on made-up pages: what must fail fails, what must pass
    passes (in a scratch root, so the repository is not read)."""
    cases = [
        ("```sh\nls\n```\n", 1),                               # unmarked command
        ("<!-- doc-check: skip shown only -->\n```sh\nls\n```\n", 0),
        ("<!-- doc-check: skip -->\n```sh\nls\n```\n", 1),    # no reason
        ("<!-- doc-check: by no/such/test.sh -->\n```c\nx\n```\n", 1),
        ("```json\n{\"a\": 1,}\n```\n", 1),                   # not JSON
        ("```\nA -> B\n```\n", 0),                               # text
        ("<!-- doc-check: run -->\n```sh\ntrue\n```\n", 0),
        ("<!-- doc-check: run -->\n```sh\nfalse\n```\n", 1),  # fails in --run
        ("<!-- doc-check: bogus -->\n```sh\nls\n```\n", 1),
    ]
    bad = 0
    for text, want in cases:
        d = tempfile.mkdtemp(prefix="spotinfer-doccheck-self.")
        try:
            with open(os.path.join(d, "README.md"), "w", encoding="utf-8") as f:
                f.write(text)
            r = subprocess.run([sys.executable, __file__, "--run", "--prefix", d, d],
                               capture_output=True, text=True)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        if (r.returncode != 0) != bool(want):
            bad += 1
            print(f"self-test: exit {r.returncode} for {text!r}: {r.stdout.strip()}")
    print(f"check-doc-blocks self-test: {len(cases) - bad} passed, {bad} failed")
    return 1 if bad else 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?",
                    default=os.path.join(os.path.dirname(__file__), ".."))
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--prefix", help="install prefix with bin/spotinfer")
    ap.add_argument("--build", help="build tree to use as build/")
    a = ap.parse_args()
    root = os.path.abspath(a.root)
    if a.run and not a.prefix:
        ap.error("--run needs --prefix")

    pages = ["README.md", "CHANGELOG.md"]
    pages += sorted(os.path.relpath(p, root)
                    for p in glob.glob(os.path.join(root, "docs", "*.md")))
    pages += sorted(os.path.relpath(p, root) for p in
                    glob.glob(os.path.join(root, "bindings", "*", "README.md")))
    pages = [p for p in pages if os.path.exists(os.path.join(root, p))]

    env = dict(os.environ)
    cwd = None
    if a.run:
        prefix = os.path.abspath(a.prefix)
        env["PATH"] = os.path.join(prefix, "bin") + os.pathsep + env["PATH"]
        env.pop("LD_LIBRARY_PATH", None)
        cwd = scratch(root, a.build)

    bad, counts = [], {}
    try:
        for page in pages:
            with open(os.path.join(root, page), encoding="utf-8") as f:
                text = f.read()
            for line, lang, body, mark in blocks(text):
                where = f"{page}:{line}"
                v = verdict(page, lang, body, mark)
                kind = v.split()[0] if v else "unchecked"
                counts[kind] = counts.get(kind, 0) + 1
                if v is None:
                    bad.append(f"{where}: a ```{lang} block that no test runs: run it "
                               "from a test, or put `<!-- doc-check: run | by TEST | "
                               "skip WHY -->` on the line before it "
                               "(scripts/check-doc-blocks.py explains each)")
                elif kind in ("json", "config"):
                    try:
                        json.loads("\n".join(body))
                    except ValueError as e:
                        bad.append(f"{where}: not JSON: {e}")
                        continue
                    if kind == "config" and a.run:
                        with tempfile.NamedTemporaryFile("w", suffix=".json",
                                                         dir=cwd, delete=False) as t:
                            t.write("\n".join(body))
                        bad += run_block(where, [f"spotinfer config check {t.name} >/dev/null"],
                                         env, cwd)
                elif kind == "by":
                    for test in v.split()[1:]:
                        if not os.path.exists(os.path.join(root, test)):
                            bad.append(f"{where}: names {test}, which does not exist")
                elif kind == "skip":
                    if len(v.split()) < 2:
                        bad.append(f"{where}: `skip` without the reason")
                elif kind == "run":
                    if lang not in ("sh", "bash", "shell"):
                        bad.append(f"{where}: `run` on a ```{lang} block (shell only)")
                    elif a.run:
                        bad += run_block(where, body, env, cwd)
                elif kind != "text":
                    bad.append(f"{where}: unknown verdict `{v}`")
    finally:
        if cwd:
            shutil.rmtree(cwd, ignore_errors=True)
    for b in bad:
        print(b)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(f"check-doc-blocks: {len(pages)} pages, {summary}; {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
