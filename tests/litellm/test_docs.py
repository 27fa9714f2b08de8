"""docs/litellm.md as printed: its model_list (with the api_base of each
deployment pointed at a fakellm backend) and its program, run as a user
would run them."""

import os
import re
import subprocess
import sys

import yaml

from conftest import ROOT

PAGE = ROOT / "docs" / "litellm.md"


def fenced(lang, index=0):
    """The index-th block of a language on the page."""
    found = re.findall(r"^```%s\n(.*?)^```$" % lang, PAGE.read_text(), re.S | re.M)
    assert len(found) > index, f"no {lang} block {index} in {PAGE}"
    return found[index]


def test_the_page_runs(backends, tmp_path):
    model_list = yaml.safe_load(fenced("yaml"))
    for dep in model_list:
        rid = dep["model_info"]["id"]
        backends.start(rid, "-token-rate", "2000", "-answer-tokens", "12",
                       model=dep["model_name"])
        dep["litellm_params"]["api_base"] = backends.url(rid)
    (tmp_path / "model_list.yaml").write_text(yaml.safe_dump(model_list))
    (tmp_path / "program.py").write_text(fenced("python"))
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True",
               PYTHONPATH=str(ROOT / "bindings" / "python"), PYTHONWARNINGS="ignore")
    run = subprocess.run([sys.executable, "program.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 3, run.stdout
    first, second = (ln.split(None, 1) for ln in lines[:2])
    # Silver goes to spot; the second question with the same system prompt
    # goes where the first one's prefix is warm.
    assert first[0] in ("spot-a", "spot-b") and second[0] == first[0], lines
    assert first[1] and second[1]
    assert lines[2].startswith("# HELP spotinfer_"), lines[2]


def readme_block():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using it from LiteLLM", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"^```python\n(.*?)^```$", section, re.S | re.M)
    assert len(found) == 1, "expected one python block in the README's LiteLLM section"
    return found[0]


def test_the_readme_section_runs(backends, tmp_path):
    program = readme_block()
    ids = re.findall(r'deployment\("([^"]+)"', program)
    urls = re.findall(r'"(http://[^"]+/v1)"', program)
    assert len(ids) == len(urls) == 3, (ids, urls)
    for rid, url in zip(ids, urls):
        backends.start(rid, "-token-rate", "2000", "-answer-tokens", "12", model="llama-70b")
        program = program.replace(f'"{url}"', f'"{backends.url(rid)}"')
    (tmp_path / "program.py").write_text(program)
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True",
               PYTHONPATH=str(ROOT / "bindings" / "python"), PYTHONWARNINGS="ignore")
    run = subprocess.run([sys.executable, "program.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    # Silver goes to spot, and the second question to where the first one's
    # prefix is warm.
    first, second = run.stdout.split()
    assert first in ("spot-a", "spot-b") and second == first, run.stdout
