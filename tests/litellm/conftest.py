"""Fixtures of the LiteLLM tests: fakellm backends on 127.0.0.1 ports they
pick, and a LiteLLM Router over them.

The fakellm binary comes from $SPI_FAKELLM, else it is built from
examples/fakellm with `go build` into pytest's temporary directory.
"""

import os
import sys
from pathlib import Path

# Before LiteLLM is imported anywhere: its model cost map from the package,
# not the network.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bindings" / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import MODEL, Backends, deployment, fakellm_binary  # noqa: E402,F401


@pytest.fixture(scope="session")
def fakellm_bin(tmp_path_factory):
    return fakellm_binary(tmp_path_factory.mktemp("fakellm"))


@pytest.fixture
def backends(fakellm_bin, tmp_path):
    b = Backends(fakellm_bin, tmp_path)
    yield b
    b.close()
