"""The golden cache-key vectors through the binding.

tests/golden/cache_key_vectors.json is what the C unit tests check too, so
passing here shows Python and C produce the same keys and block hashes.
"""

from __future__ import annotations

import json

import pytest

import spotinfer
from spotinfer import ReqStr

from conftest import GOLDEN

FIELDS = {
    "model": ReqStr.MODEL,
    "tokenizer_version": ReqStr.TOKENIZER_VERSION,
    "system_prompt": ReqStr.SYSTEM_PROMPT,
    "tools_json": ReqStr.TOOLS_JSON,
    "retrieval_template": ReqStr.RETRIEVAL_TEMPLATE,
    "tenant_tier": ReqStr.TENANT_TIER,
    "tenant_salt": ReqStr.TENANT_SALT,
    "decode_profile": ReqStr.DECODE_PROFILE,
}

DOC = json.loads(GOLDEN.read_text())


def field_bytes(v) -> bytes:
    """A vector field: a string, {"hex": ...} or {"repeat": s, "count": n}."""
    if isinstance(v, str):
        return v.encode("utf-8")
    if "hex" in v:
        return bytes.fromhex(v["hex"])
    return v["repeat"].encode("utf-8") * v["count"]


def prompt_bytes(req) -> bytes:
    g = req.get("prompt_gen")
    if g:
        return bytes((i * g["mul"] + g["add"]) & 0xFF for i in range(g["len"]))
    return field_bytes(req.get("prompt", ""))


def token_ids(req):
    g = req.get("token_gen")
    if g:
        return [(i * g["mul"] + g["add"]) & 0xFFFFFFFF for i in range(g["count"])]
    return req.get("token_ids", [])


def completions_text(b: bytes) -> bytes:
    """A completions prompt's canonical text: each byte 0x1B-0x1F written as
    0x1B, byte ^ 0x40 (docs/cache-key.md)."""
    out = bytearray()
    for x in b:
        out += bytes([0x1B, x ^ 0x40]) if 0x1B <= x <= 0x1F else bytes([x])
    return bytes(out)


def test_vector_file():
    assert DOC["module"] == "xxh3-v1"
    assert len(DOC["vectors"]) >= 30


@pytest.fixture(scope="module")
def golden_engine():
    with spotinfer.Engine() as e:
        yield e


@pytest.mark.parametrize("vec", DOC["vectors"], ids=[v["name"] for v in DOC["vectors"]])
def test_golden_vector(golden_engine, vec):
    e = golden_engine
    e.configure({"cache_key": vec["config"]})
    req = vec["request"]
    with e.request() as r:
        for name, field in FIELDS.items():
            if name in req:
                value = field_bytes(req[name])
                if value:
                    r.set_str(field, value)
        prompt = prompt_bytes(req)
        if prompt:
            r.set_str(ReqStr.PROMPT, prompt)
        ids = token_ids(req)
        if ids:
            r.set_token_ids(ids)
        assert r.canonical_prompt() == completions_text(prompt)
        assert r.cache_key() == vec["key"]
        # The vector's blocks are those of its prompt as canonical text; as a
        # completions prompt, bytes 0x1B-0x1F are escaped first.
        blocks = vec.get("completions_blocks", vec["blocks"])
        assert r.block_hashes() == [int(b, 16) for b in blocks]
        assert r.block_count() == len(blocks)


@pytest.mark.parametrize("vec", DOC["bodies"], ids=[v["name"] for v in DOC["bodies"]])
def test_golden_body(golden_engine, vec):
    e = golden_engine
    e.configure({"cache_key": vec["config"]})
    with e.request() as r:
        r.parse_openai(vec["body"])
        assert r.canonical_prompt() == vec["canonical_prompt"].encode("utf-8")
        assert r.cache_key() == vec["key"]
        assert r.block_hashes() == [int(b, 16) for b in vec["blocks"]]
