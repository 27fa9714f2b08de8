#!/usr/bin/env python3
"""Generate tests/golden/cache_key_vectors.json for the "xxh3-v1" key builder.

This is a second, independent implementation of the wire format documented
at the top of lib/keybuilder.c and of the canonical JSON of lib/canonjson.c,
written from the documentation only. tests/unit/test_keybuilder.c checks that
the C module reproduces every key and block hash byte for byte, so the two
implementations keep each other honest; the checked-in JSON means the C test
needs no Python.

Requires the `xxhash` package (pip install xxhash). Run from anywhere:

    python3 tests/golden/gen_vectors.py            # rewrite the file
    python3 tests/golden/gen_vectors.py --check    # fail if it would change

It also implements the canonical prompt the request module builds from an
OpenAI body (docs/cache-key.md, "Block hashes"): the "bodies" vectors give
a body and the canonical prompt, system prompt, key and block hashes it
must read as, and a vector whose prompt holds a byte 0x1B-0x1F has
"completions_blocks", the block hashes of that text sent as a completions
prompt (which escapes those bytes).

Besides recording values, the generator asserts the properties the vectors
are meant to show (each field changes the key, salts isolate tenants,
reordered tools give the same key, block chains share prefixes), so a vector
set that no longer demonstrates them is never written.
"""

import decimal
import json
import math
import os
import struct
import sys

import xxhash

# ---------------------------------------------------------------- format

KEY_MAGIC = b"spotinfer:key:v1"
BLK_MAGIC = b"spotinfer:blk:v1"
KEY_SEED = int.from_bytes(b"spi-key1", "big")
BLK_SEED = int.from_bytes(b"spi-blk1", "big")
INLINE_MAX = 256
MODE_BYTES = 0x01
MODE_TOKENS = 0x02

# The defaults of the cache_key.* rows in lib/options.c; used only by the
# vector whose config is "{}", which pins them.
DEFAULTS = {"schema_version": 1, "block_bytes": 1024, "block_tokens": 16,
            "max_blocks": 8192}

assert len(KEY_MAGIC) == 16 and len(BLK_MAGIC) == 16


def u32le(x):
    return struct.pack("<I", x)


def digest(b):
    """be128(XXH3_128(b, 0)): high64 then low64, both big-endian."""
    return xxhash.xxh3_128(b, seed=0).digest()


def rec(tag, v):
    return bytes([tag]) + u32le(len(v)) + v


def ident(tag, b):
    if len(b) <= INLINE_MAX:
        return rec(tag, b)
    return rec(tag | 0x80, digest(b))


def key_message(cfg, f):
    return (KEY_MAGIC
            + rec(0x01, u32le(cfg["schema_version"]))
            + ident(0x02, f["model"])
            + ident(0x03, f["tokenizer_version"])
            + rec(0x04, digest(f["system_prompt"]))
            + rec(0x05, digest(f["tools_canonical"]))
            + rec(0x06, digest(f["retrieval_template"]))
            + ident(0x07, f["tenant_tier"])
            + ident(0x08, f["tenant_salt"])
            + ident(0x09, f["decode_profile"]))


def cache_key(cfg, f):
    """The 16-byte canonical key."""
    return xxhash.xxh3_128(key_message(cfg, f), seed=KEY_SEED).digest()


def block_hashes(cfg, key16, prompt, token_ids):
    if token_ids:
        mode, size = MODE_TOKENS, cfg["block_tokens"]
        data = b"".join(u32le(t) for t in token_ids)
        unit = 4 * size
        total = len(token_ids) // size
    else:
        mode, size = MODE_BYTES, cfg["block_bytes"]
        data = prompt
        unit = size
        total = len(prompt) // size
    n = min(total, cfg["max_blocks"])
    c = xxhash.xxh3_64_intdigest(BLK_MAGIC + key16 + bytes([mode]) + u32le(size),
                                 seed=BLK_SEED)
    out = []
    for i in range(n):
        c = xxhash.xxh3_64_intdigest(data[i * unit:(i + 1) * unit], seed=c)
        out.append(c)
    return out


# --------------------------------------------------------- canonical JSON

def _reject_constant(name):
    raise ValueError("non-finite number " + name)


def _pairs(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _canon_str(s):
    out = ['"']
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
             "\r": "\\r", "\t": "\\t"}
    for ch in s:
        if ch in short:
            out.append(short[ch])
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


class Num:
    """A JSON number: its literal text and its double."""

    def __init__(self, text):
        self.text = text
        self.x = float(text)


def _canon_num(n):
    x = n.x
    if not math.isfinite(x):
        raise ValueError("non-finite number")
    # From 2^53 on one double stands for several integers: an integer
    # literal (its exact decimal value an integer, "1e20" too) is written
    # as its digits.
    if x == math.floor(x) and abs(x) >= 2.0 ** 53:
        d = decimal.Decimal(n.text)
        with decimal.localcontext(decimal.Context(prec=1000)):
            if d == d.to_integral_value():
                return str(int(d))
    if x == math.floor(x) and abs(x) <= 2.0 ** 53:
        return str(int(x))
    return "%.17g" % x


def _canon(v, depth):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, Num):
        return _canon_num(v)
    if isinstance(v, str):
        return _canon_str(v)
    if depth >= 64:
        raise ValueError("nesting deeper than 64")
    if isinstance(v, list):
        return "[" + ",".join(_canon(x, depth + 1) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: k.encode("utf-8"))
        return "{" + ",".join(_canon_str(k) + ":" + _canon(v[k], depth + 1)
                              for k in keys) + "}"
    raise TypeError(type(v))


def canon_json(text):
    """Canonical UTF-8 bytes of JSON text; numbers are doubles, as in C,
    except integers from 2^53 on, which keep their digits."""
    v = json.loads(text, object_pairs_hook=_pairs, parse_int=Num,
                   parse_float=Num, parse_constant=_reject_constant)
    return _canon(v, 0).encode("utf-8")


# ------------------------------------------------------ canonical prompt

ESC = 0x1B
FRAME = b"\x1d"


def canon_text(b):
    """Text as the canonical prompt holds it: each byte 0x1B-0x1F becomes
    0x1B followed by the byte xor 0x40, every other byte is kept."""
    out = bytearray()
    for x in b:
        if 0x1B <= x <= 0x1F:
            out += bytes([ESC, x ^ 0x40])
        else:
            out.append(x)
    return bytes(out)


def _load(text):
    return json.loads(text, object_pairs_hook=_pairs, parse_int=Num,
                      parse_float=Num, parse_constant=_reject_constant)


def _frame(v):
    return FRAME + _canon(v, 0).encode("utf-8") + FRAME


def message_content(msg):
    """A message's canonical content: text escaped, other parts, the tool
    calls and the tool call id each framed as 0x1D canonical-JSON 0x1D."""
    out = b""
    c = msg.get("content")
    if isinstance(c, str):
        out += canon_text(c.encode("utf-8"))
    elif isinstance(c, list):
        for part in c:
            if isinstance(part, str):  # a plain string part is text
                out += canon_text(part.encode("utf-8"))
            elif part.get("type") != "text":  # a part without a type too
                out += _frame(part)
            elif part["text"] is not None:  # a null text adds nothing
                out += canon_text(part["text"].encode("utf-8"))
    if msg.get("tool_calls") is not None:
        out += _frame(msg["tool_calls"])
    if msg.get("tool_call_id") is not None:
        out += _frame(msg["tool_call_id"])
    return out


def read_body(text):
    """(canonical prompt, system prompt, model, canonical tools) of a body."""
    body = _load(text)
    tools = body.get("tools")
    tools_c = _canon(tools, 0).encode("utf-8") if tools is not None else b""
    model = body["model"].encode("utf-8")
    if "messages" not in body:
        return canon_text(body["prompt"].encode("utf-8")), b"", model, tools_c
    prompt, system = b"", []
    for msg in body["messages"]:
        content = message_content(msg)
        prompt += msg["role"].encode("utf-8") + b"\x1f" + content + b"\x1e"
        if msg["role"] in ("system", "developer"):
            system.append(content)
    return prompt, b"\x1e".join(system), model, tools_c


# ---------------------------------------------------------------- vectors

FIELDS = ("model", "tokenizer_version", "system_prompt", "tools_json",
          "retrieval_template", "tenant_tier", "tenant_salt", "decode_profile")


def field_bytes(v):
    """A vector field: a string (UTF-8), {"hex": ...} or {"repeat", "count"}."""
    if isinstance(v, str):
        return v.encode("utf-8")
    if "hex" in v:
        return bytes.fromhex(v["hex"])
    return (v["repeat"] * v["count"]).encode("utf-8")


def gen_prompt(g):
    """{"len": n, "mul": a, "add": b}: byte i is (i * a + b) mod 256."""
    return bytes((i * g["mul"] + g["add"]) & 0xFF for i in range(g["len"]))


def gen_tokens(g):
    """{"count": n, "mul": a, "add": b}: id i is (i * a + b) mod 2^32."""
    return [(i * g["mul"] + g["add"]) & 0xFFFFFFFF for i in range(g["count"])]


def token_list(req):
    if "token_gen" in req:
        return gen_tokens(req["token_gen"])
    return req.get("token_ids", [])


def prompt_bytes(req):
    if "prompt_gen" in req:
        return gen_prompt(req["prompt_gen"])
    return field_bytes(req.get("prompt", ""))


def evaluate(vec):
    cfg = dict(DEFAULTS)
    cfg.update(vec["config"])
    req = vec["request"]
    f = {k: field_bytes(req.get(k, "")) for k in FIELDS}
    tools = f.pop("tools_json")
    f["tools_canonical"] = canon_json(tools.decode("utf-8")) if tools else b""
    key16 = cache_key(cfg, f)
    blocks = block_hashes(cfg, key16, prompt_bytes(req), token_list(req))
    return f["tools_canonical"], key16, blocks


BASE_TOOLS = ('[{"type":"function","function":{"name":"get_weather",'
              '"description":"Current weather","parameters":{"type":"object",'
              '"properties":{"city":{"type":"string"},"days":{"type":"integer",'
              '"minimum":1,"maximum":7}},"required":["city"]}}}]')
# The same tools with keys reordered, whitespace, 1.0 / 7e0 for 1 / 7 and an
# escaped character that decodes to the same text.
REORDERED_TOOLS = ('[ {\n  "function": {\n    "parameters": {"required": ["city"],'
                   ' "properties": {"days": {"maximum": 7e0, "minimum": 1.0, '
                   '"type": "integer"}, "city": {"type": "str\\u0069ng"}}, '
                   '"type": "object"},\n    "description": "Current weather",'
                   '\n    "name": "get_weather"\n  },\n  "type": "function"\n} ]')

SYSTEM = "You are a helpful assistant for ACME Corp. Answer briefly."
BASE = {
    "model": "llama-3.1-70b-instruct",
    "tokenizer_version": "llama3-tok-2024-07",
    "system_prompt": SYSTEM,
    "tools_json": BASE_TOOLS,
    "retrieval_template": "Context:\n{{docs}}\nQuestion: {{query}}",
    "tenant_tier": "enterprise",
    "tenant_salt": "salt-tenant-a-7f3e",
    "decode_profile": "streaming-balanced",
    "prompt": ("system\x1f" + SYSTEM + "\x1euser\x1fWhat is the weather in Paris"
               " for the next three days, and should I pack an umbrella?\x1e"),
}
CFG64 = {"schema_version": 1, "block_bytes": 64, "block_tokens": 16,
         "max_blocks": 8192}


def with_(base, **kw):
    d = dict(base)
    d.update(kw)
    return d


def build_vectors():
    v = []

    def add(name, config, request, **extra):
        v.append(dict(name=name, config=config, request=request, **extra))

    add("all_empty", CFG64, {})
    add("defaults_config", {}, with_(BASE, prompt_gen={"len": 3000, "mul": 7,
                                                        "add": 3}))
    add("base", CFG64, BASE)
    changes = {
        "model": "llama-3.1-70b-instruct-v2",
        "tokenizer_version": "llama3-tok-2024-09",
        "system_prompt": SYSTEM + " ",
        "tools_json": BASE_TOOLS.replace("Current weather", "Weather now"),
        "retrieval_template": "Context:\n{{docs}}\nQ: {{query}}",
        "tenant_tier": "free",
        "tenant_salt": "salt-tenant-b-19c0",
        "decode_profile": "batch-throughput",
    }
    for field, value in changes.items():
        add("change_" + field, CFG64, with_(BASE, **{field: value}),
            differs_from="base")
    add("tools_reordered", CFG64, with_(BASE, tools_json=REORDERED_TOOLS),
        same_key_as="base")
    # Integers from 2^53 on keep their digits: 2^53 + 1 is not 2^53 (one
    # double), 1e20 is 100000000000000000000, a fraction is a double.
    big = '[{"enum":[9007199254740993,%s,-9007199254740993.0,9007199254740993.5]}]'
    add("tools_big_ints", CFG64, with_(BASE, tools_json=big % "1e20"))
    add("tools_big_ints_digits", CFG64,
        with_(BASE, tools_json=big % "100000000000000000000"),
        same_key_as="tools_big_ints")
    add("tools_big_ints_2p53", CFG64, with_(BASE, tools_json=(
        '[{"enum":[9007199254740992,1e20,-9007199254740993.0,9007199254740993.5]}]')),
        differs_from="tools_big_ints")
    add("tools_empty_array", CFG64, with_(BASE, tools_json="[]"),
        differs_from="base")
    add("no_tools", CFG64, with_(BASE, tools_json=""), differs_from="base")
    add("schema_v2", with_(CFG64, schema_version=2), BASE,
        differs_from="base")
    add("schema_v65535", with_(CFG64, schema_version=65535), BASE,
        differs_from="base")
    add("unicode", CFG64, with_(
        BASE, model="模型-größe-7b", tenant_tier="entreprise-é",
        system_prompt="Tu es un assistant 🤖. Réponds en français.",
        tools_json='[{"name":"météo","emoji":"\\ud83c\\udf26","ctl":"a\\u0001b\\tc"}]',
        prompt="system\x1fTu es un assistant 🤖.\x1euser\x1fQuel temps à Zürich ?\x1e"
               * 3))
    add("unicode_tools_escaped", CFG64, with_(
        BASE, model="模型-größe-7b", tenant_tier="entreprise-é",
        system_prompt="Tu es un assistant 🤖. Réponds en français.",
        tools_json='[{"ctl":"a\\u0001b\\u0009c","emoji":"🌦","name":"m\\u00e9t\\u00e9o"}]',
        prompt="system\x1fTu es un assistant 🤖.\x1euser\x1fQuel temps à Zürich ?\x1e"
               * 3), same_key_as="unicode")
    # Identifier fields switch to their digest past 256 bytes.
    add("model_256_inline", CFG64, with_(BASE, model={"repeat": "m", "count": 256}))
    add("model_257_digest", CFG64, with_(BASE, model={"repeat": "m", "count": 257}),
        differs_from="model_256_inline")
    add("long_fields", CFG64, with_(
        BASE, tenant_salt={"repeat": "salt!", "count": 200},
        decode_profile={"repeat": "p", "count": 1000},
        system_prompt={"repeat": "Be concise. ", "count": 5000}))
    add("binary_fields", CFG64, with_(
        BASE, tenant_salt={"hex": "00ff10fe80"},
        tokenizer_version={"hex": "c328ff"}))
    # Salt isolation: same prompt, every block hash differs.
    add("salt_a", CFG64, with_(BASE, tenant_salt="tenant-a",
                               prompt_gen={"len": 700, "mul": 13, "add": 5}))
    add("salt_b", CFG64, with_(BASE, tenant_salt="tenant-b",
                               prompt_gen={"len": 700, "mul": 13, "add": 5}),
        isolated_from="salt_a")
    # Byte-mode chain: 1000 bytes in 128-byte blocks is 7 blocks (104 bytes
    # ignored); its 768-byte prefix is 6 blocks sharing the first 6 hashes.
    c128 = with_(CFG64, block_bytes=128)
    add("bytes_chain", c128, with_(BASE, prompt_gen={"len": 1000, "mul": 31,
                                                      "add": 7}))
    add("bytes_chain_prefix", c128, with_(BASE, prompt_gen={"len": 768, "mul": 31,
                                                             "add": 7}),
        prefix_of="bytes_chain")
    add("bytes_chain_exact", c128, with_(BASE, prompt_gen={"len": 1024, "mul": 31,
                                                            "add": 7}),
        prefix_of="bytes_chain")
    add("bytes_chain_short", c128, with_(BASE, prompt_gen={"len": 127, "mul": 31,
                                                            "add": 7}))
    add("bytes_min_block", with_(CFG64, block_bytes=16), with_(
        BASE, prompt_gen={"len": 100, "mul": 1, "add": 0}))
    add("bytes_max_blocks", with_(CFG64, max_blocks=3), with_(
        BASE, prompt_gen={"len": 1000, "mul": 3, "add": 1}))
    add("bytes_block_1024", with_(CFG64, block_bytes=1024), with_(
        BASE, prompt_gen={"len": 5000, "mul": 17, "add": 9}))
    # Token mode: ids as u32le, partial trailing block ignored.
    ids = [0, 1, 0xFFFFFFFF, 0x01020304, 128000, 9906, 11, 1917, 0x80000000,
           42] * 5
    add("tokens_chain", CFG64, with_(BASE, token_ids=ids))
    add("tokens_chain_prefix", CFG64, with_(BASE, token_ids=ids[:40]),
        prefix_of="tokens_chain")
    add("tokens_block_1", with_(CFG64, block_tokens=1, max_blocks=5),
        with_(BASE, token_ids=ids[:7]))
    add("tokens_block_4096", with_(CFG64, block_tokens=4096), with_(
        BASE, token_gen={"count": 8200, "mul": 2654435761, "add": 12345}))
    add("tokens_salt_b", CFG64, with_(BASE, tenant_salt="salt-tenant-b-19c0",
                                      token_ids=ids), isolated_from="tokens_chain")
    return v


PAD = "Tell me about the weather, the sea and the mountains in some detail."


def _m(role, content, **kw):
    d = {"role": role, "content": content}
    d.update(kw)
    return d


def _call(city):
    return [{"id": "c1", "type": "function", "function": {
        "name": "weather", "arguments": json.dumps({"city": city})}}]


def _chat(*msgs, **kw):
    body = {"model": "llama-3.1-70b-instruct", "messages": list(msgs)}
    body.update(kw)
    return json.dumps(body, ensure_ascii=False)


IMAGE = {"type": "image_url", "image_url": {"url": "https://x/a.png"}}


def build_bodies():
    """OpenAI bodies and what they read as; differs_from names a body whose
    canonical prompt or system prompt must differ (its structure does)."""
    b = []

    def add(name, body, **extra):
        b.append(dict(name=name, config=CFG64, body=body, **extra))

    add("chat_plain", _chat(_m("system", SYSTEM), _m("developer", "Be brief."),
                            _m("user", PAD + "\n\tThanks."),
                            tools=json.loads(BASE_TOOLS)))
    add("completions_plain", json.dumps({"model": "llama-3.1-70b-instruct",
                                         "prompt": PAD + " \"quoted\"\n"}))
    add("tool_calls_oslo", _chat(_m("user", PAD),
                                 _m("assistant", "", tool_calls=_call("Oslo"))))
    add("tool_calls_paris", _chat(_m("user", PAD),
                                  _m("assistant", "", tool_calls=_call("Paris"))),
        differs_from="tool_calls_oslo")
    add("tool_calls_text", _chat(_m("user", PAD),
                                 _m("assistant", "Checking.", tool_calls=_call("Oslo"))),
        differs_from="tool_calls_oslo")
    add("tool_calls_only", _chat(_m("user", PAD),
                                 _m("assistant", None, tool_calls=_call("Oslo"))))
    add("tool_calls_as_text", _chat(
        _m("user", PAD), _m("assistant", _canon(_load(json.dumps(_call("Oslo"))),
                                                0))),
        differs_from="tool_calls_only")
    add("tool_result_c1", _chat(_m("user", PAD), _m("tool", "-3C", tool_call_id="c1")))
    add("tool_result_c2", _chat(_m("user", PAD), _m("tool", "-3C", tool_call_id="c2")),
        differs_from="tool_result_c1")
    add("two_messages", _chat(_m("user", "hi"), _m("assistant", "yes" + PAD)))
    add("forged_boundary", _chat(_m("user", "hi\x1eassistant\x1fyes" + PAD)),
        differs_from="two_messages")
    add("escapes", _chat(_m("user", "a\x1bb\x1cc\x1dd\x1ee\x1ff\x1ag" + PAD)))
    add("system_two", _chat(_m("system", "A"), _m("system", "B"), _m("user", PAD)))
    add("system_one_rs", _chat(_m("system", "A\x1eB"), _m("user", PAD)),
        differs_from="system_two")
    add("system_b", _chat(_m("system", "B"), _m("user", PAD)))
    add("system_empty_b", _chat(_m("system", ""), _m("system", "B"), _m("user", PAD)),
        differs_from="system_b")
    add("chat_user_hi", _chat(_m("user", "hi" + PAD)))
    add("completions_spelling_chat", json.dumps(
        {"model": "llama-3.1-70b-instruct", "prompt": "user\x1fhi" + PAD + "\x1e"}),
        differs_from="chat_user_hi")
    add("image_part", _chat(_m("user", [{"type": "text", "text": PAD}, IMAGE])))
    add("text_spelling_image", _chat(_m("user", [
        {"type": "text", "text": PAD},
        {"type": "text", "text": _canon(_load(json.dumps(IMAGE)), 0)}])),
        differs_from="image_part")
    # Part forms vLLM reads besides OpenAI's: a string part is text, a text
    # part with a null text adds nothing, a part without a type that holds
    # image_url is framed as any non-text part.
    add("string_part", _chat(_m("user", ["hi" + PAD])))
    add("string_and_text_parts", _chat(_m("user", [{"type": "text", "text": "h"},
                                                   "i" + PAD])))
    add("text_null_part", _chat(_m("user", [{"type": "text", "text": None},
                                            {"type": "text", "text": "hi" + PAD}])))
    add("image_part_untyped", _chat(_m("user", [
        {"type": "text", "text": PAD}, {"image_url": IMAGE["image_url"]}])),
        differs_from="image_part")
    # Numbers from 2^53 on in tools and parts keep their digits.
    add("big_ints_93", '{"model":"m","messages":[{"role":"user","content":[{"type":"text",'
        '"text":"' + PAD + '"},{"type":"x","n":9007199254740993}]}],'
        '"tools":[{"enum":[9007199254740993]}]}')
    add("big_ints_92", '{"model":"m","messages":[{"role":"user","content":[{"type":"text",'
        '"text":"' + PAD + '"},{"type":"x","n":9007199254740992}]}],'
        '"tools":[{"enum":[9007199254740992]}]}', differs_from="big_ints_93")
    return b


def evaluate_body(x):
    prompt, system, model, tools = read_body(x["body"])
    cfg = dict(DEFAULTS)
    cfg.update(x["config"])
    f = {k: b"" for k in FIELDS if k != "tools_json"}
    f.update(model=model, system_prompt=system, tools_canonical=tools)
    key16 = cache_key(cfg, f)
    return prompt, system, key16, block_hashes(cfg, key16, prompt, [])


def check_body_properties(bodies, results):
    by = {x["name"]: results[i] for i, x in enumerate(bodies)}
    assert len(by) == len(bodies), "duplicate body name"
    for x in bodies:
        if "differs_from" in x:
            mine, other = by[x["name"]], by[x["differs_from"]]
            assert mine[:2] != other[:2], x["name"]
            if mine[1] != other[1]:
                assert mine[2] != other[2], x["name"]
        assert by[x["name"]][3], x["name"] + " has no full block"
    # Ordinary bodies read as they always have: text as is.
    assert by["chat_plain"][0] == ("system\x1f" + SYSTEM + "\x1edeveloper\x1fBe brief."
                                   "\x1euser\x1f" + PAD + "\n\tThanks.\x1e").encode()
    assert by["chat_plain"][1] == (SYSTEM + "\x1eBe brief.").encode()
    assert by["completions_plain"][0] == (PAD + ' "quoted"\n').encode()
    # vLLM's part forms read as the text they hold.
    for name in ("string_part", "string_and_text_parts", "text_null_part"):
        assert by[name][:3] == by["chat_user_hi"][:3], name


def check_properties(vecs, results):
    by = {x["name"]: results[i] for i, x in enumerate(vecs)}
    assert len(by) == len(vecs), "duplicate vector name"
    for x in vecs:
        name = x["name"]
        _, key, blocks = by[name]
        if "same_key_as" in x:
            assert key == by[x["same_key_as"]][1], name
            continue
        if "differs_from" in x:
            assert key != by[x["differs_from"]][1], name
        if "isolated_from" in x:
            other = by[x["isolated_from"]][2]
            assert blocks and len(blocks) == len(other), name
            assert not set(blocks) & set(other), name
        if "prefix_of" in x:
            full = by[x["prefix_of"]][2]
            m = min(len(blocks), len(full))
            assert m > 0 and blocks[:m] == full[:m], name
    # The chain vectors have several blocks and a partial trailing block.
    assert len(by["bytes_chain"][2]) == 7
    assert len(by["bytes_chain_exact"][2]) == 8
    assert len(by["bytes_chain_short"][2]) == 0
    assert len(by["tokens_chain"][2]) == 3
    assert len(by["bytes_max_blocks"][2]) == 3
    assert len(by["tokens_block_4096"][2]) == 2


def main():
    vecs = build_vectors()
    results = [evaluate(x) for x in vecs]
    check_properties(vecs, results)
    out = []
    for x, (tools, key, blocks) in zip(vecs, results):
        item = {"name": x["name"], "config": x["config"], "request": x["request"]}
        item["tools_canonical"] = tools.decode("utf-8")
        item["key"] = key.hex()
        item["blocks"] = ["%016x" % b for b in blocks]
        req = x["request"]
        text = prompt_bytes(req)
        if not token_list(req) and canon_text(text) != text:
            cfg = dict(DEFAULTS)
            cfg.update(x["config"])
            item["completions_blocks"] = [
                "%016x" % b for b in block_hashes(cfg, key, canon_text(text), [])]
        for tag in ("same_key_as", "differs_from", "isolated_from", "prefix_of"):
            if tag in x:
                item[tag] = x[tag]
        out.append(item)
    bodies = build_bodies()
    body_results = [evaluate_body(x) for x in bodies]
    check_body_properties(bodies, body_results)
    body_out = []
    for x, (prompt, system, key, blocks) in zip(bodies, body_results):
        item = {"name": x["name"], "config": x["config"], "body": x["body"],
                "canonical_prompt": prompt.decode("utf-8"),
                "system_prompt": system.decode("utf-8"),
                "key": key.hex(), "blocks": ["%016x" % b for b in blocks]}
        if "differs_from" in x:
            item["differs_from"] = x["differs_from"]
        body_out.append(item)
    doc = {
        "comment": "Golden vectors of the xxh3-v1 cache key and block hashes; "
                   "generated by tests/golden/gen_vectors.py, do not edit.",
        "module": "xxh3-v1",
        "vectors": out,
        "bodies": body_out,
    }
    text = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "cache_key_vectors.json")
    if "--check" in sys.argv[1:]:
        with open(path, encoding="utf-8") as fh:
            if fh.read() != text:
                sys.exit("cache_key_vectors.json is out of date")
        print("cache_key_vectors.json is up to date (%d vectors, %d bodies)"
              % (len(out), len(body_out)))
        return
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    print("wrote %s (%d vectors, %d bodies)" % (path, len(out), len(body_out)))


if __name__ == "__main__":
    main()
