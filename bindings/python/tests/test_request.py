"""Requests: fields, OpenAI bodies, classify, key, blocks, price."""

from __future__ import annotations

import json

import pytest

import spotinfer
from spotinfer import Class, ModelTier, OpenAIKind, Pool, Pressure, Request

from conftest import CHAT_BODY


def test_string_and_int_attributes(engine):
    r = engine.request()
    assert r.model == "" and r.sla_ms is None and r.stream is None
    r.model = "llama-3.1-70b"
    r.tenant = "acme"
    r.tenant_tier = "enterprise"
    r.sla_ms = 1500
    r.stream = True
    r.replayable = False
    r.priority = -3
    assert (r.model, r.tenant, r.tenant_tier) == ("llama-3.1-70b", "acme", "enterprise")
    assert (r.sla_ms, r.stream, r.replayable, r.priority) == (1500, True, False, -3)
    r.sla_ms = None
    assert r.sla_ms is None
    r.explicit_class = Class.BRONZE
    assert r.explicit_class == "bronze"
    r.explicit_class = "gold"
    assert r.explicit_class == "gold"
    r.explicit_class = Class.UNSET  # clears it
    assert r.explicit_class == ""
    r.explicit_class = "gold"
    assert r.get_int(spotinfer.ReqInt.STREAM) == 1
    assert r.get_str("model") == "llama-3.1-70b"
    r.reset()
    assert r.model == "" and r.stream is None and r.explicit_class == ""


def test_int_attributes_out_of_int64_raise_instead_of_wrapping(engine):
    r = engine.request(model="m", sla_ms=800)
    with pytest.raises(spotinfer.RangeError) as ei:
        r.sla_ms = 2**64 + 250  # ctypes would send 250
    assert "sla_ms" in str(ei.value)
    with pytest.raises(spotinfer.RangeError):
        r.priority = -2**63 - 1
    with pytest.raises(spotinfer.RangeError):
        r.set_int(spotinfer.ReqInt.REPLAY_SINCE_NS, 2**63)
    with pytest.raises(spotinfer.RangeError):
        engine.request(max_output_tokens=2**64)
    assert r.sla_ms == 800 and r.priority is None  # unchanged
    with pytest.raises(spotinfer.RangeError):
        r.set_int(2**32 + int(spotinfer.ReqInt.SLA_MS), 5)  # the field too
    with pytest.raises(spotinfer.RangeError):
        r.classify(2**32)  # a Pressure out of int32_t


def test_signed_range_edges():
    from spotinfer.enums import signed
    assert signed(2**63 - 1, 64, "x") == 2**63 - 1
    assert signed(-2**63, 64, "x") == -2**63
    assert signed(-2**31, 32, "x") == -2**31
    for bad in (2**63, -2**63 - 1):
        with pytest.raises(spotinfer.RangeError):
            signed(bad, 64, "x")
    with pytest.raises(ValueError):  # RangeError is a ValueError
        signed(2**31, 32, "x")


def test_constructor_keywords(engine):
    r = Request(engine, model="m", stream=True, sla_ms=900,
                messages=[{"role": "user", "content": "hi"}, ("assistant", "yo")],
                metadata={"tenant": "acme", "priority": 2},
                tools=[{"type": "function", "function": {"name": "f"}}])
    assert r.message_count == 2 and r.tenant == "acme" and r.priority == 2
    assert json.loads(r.tools_json)[0]["function"]["name"] == "f"
    with pytest.raises(TypeError):
        Request(engine, nonsense=1)


def test_binary_values_round_trip(engine):
    r = engine.request()
    raw = b"\x00\xff\x10\xfe\x80"
    r.tenant_salt = raw
    assert r.get_bytes(spotinfer.ReqStr.TENANT_SALT) == raw
    # The str form round-trips through surrogate escapes.
    r.tenant_salt = r.tenant_salt
    assert r.get_bytes(spotinfer.ReqStr.TENANT_SALT) == raw


def test_setter_errors_carry_request_message(engine):
    r = engine.request()
    with pytest.raises(spotinfer.RangeError) as ei:
        r.sla_ms = 0
    assert ei.value.function == "spi_request_set_int"
    assert "sla_ms" in ei.value.message
    with pytest.raises(spotinfer.UnknownNameError):
        r.explicit_class = "platinum"
    with pytest.raises(spotinfer.ParseError):
        r.tools_json = "{not an array"
    with pytest.raises(spotinfer.InvalidArgumentError):
        r.set_str(99, "x")
    with pytest.raises(spotinfer.UnknownNameError) as ei:
        r.add_message("robot", "hi")
    assert "robot" in ei.value.message


@pytest.mark.parametrize("form", ["dict", "str", "bytes"])
def test_from_openai(engine, form):
    body = {"dict": CHAT_BODY, "str": json.dumps(CHAT_BODY),
            "bytes": json.dumps(CHAT_BODY).encode()}[form]
    r = Request.from_openai(engine, body)
    assert r.model == "llama-3.1-70b" and r.stream is True and r.message_count == 2
    c = r.classify()
    assert c.klass is Class.GOLD and c.reason == "rule interactive"
    assert c.class_name == "gold"
    assert c.model_tier is ModelTier.LARGE and c.pressure is Pressure.NORMAL


def test_completions_body(engine):
    r = engine.parse_openai({"model": "m", "prompt": "Once upon a time"},
                            OpenAIKind.COMPLETIONS)
    assert r.prompt == "Once upon a time"
    assert r.canonical_prompt() == b"Once upon a time"


def test_parse_errors_are_all_or_nothing(engine):
    r = engine.parse_openai(CHAT_BODY)
    with pytest.raises(spotinfer.ParseError) as ei:
        r.parse_openai('{"model": "m", "messages": [')
    assert ei.value.message  # names the byte offset
    assert r.model == "" and r.message_count == 0  # left empty
    with pytest.raises(spotinfer.UnknownNameError) as ei:
        r.parse_openai({"model": "m", "messages": [
            {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
            {"role": "robot", "content": "c"}]})
    assert "messages[2].role" in ei.value.message
    assert r.errmsg == ei.value.message
    with pytest.raises(spotinfer.TypeMismatchError):
        r.parse_openai({"model": 3, "messages": []})
    with pytest.raises(spotinfer.SpotinferError):
        Request.from_openai(engine, "[]")


def test_metadata_sets_attributes(engine):
    r = engine.request(model="m")
    r.set_metadata("class", "bronze")
    r.set_metadata("sla_ms", 2500)
    r.set_metadata("replayable", True)
    r.set_metadata("custom", "anything")
    assert r.explicit_class == "bronze" and r.sla_ms == 2500 and r.replayable is True
    with pytest.raises(spotinfer.TypeMismatchError):
        r.set_metadata("sla_ms", "soon")


def test_classify_pressure_and_degrade(engine):
    r = engine.request(model="m", explicit_class="bronze")
    normal = r.classify(Pressure.NORMAL)
    critical = r.classify("critical")
    assert normal.klass is Class.BRONZE and normal.rule_index == -1
    assert critical.defer and critical.pressure is Pressure.CRITICAL
    # Bronze's default plan: uncapped, 512, 256 without tools, deferred.
    plan = [(c.max_output_tokens, c.tools_allowed, c.defer)
            for c in (r.classify(p) for p in Pressure)]
    assert plan == [(0, True, False), (512, True, False), (256, False, False),
                    (256, False, True)]
    with pytest.raises(spotinfer.InvalidArgumentError):
        r.classify(9)


def test_cache_key_and_blocks(engine):
    engine.configure({"cache_key": {"block_bytes": 64}})
    r = engine.request(model="m", prompt="x" * 1000)
    key = r.cache_key()
    assert len(key) == 32 and int(key, 16) >= 0
    kv = r.cache_key_value()
    assert kv.hex == key == spotinfer.cache_key_hex(kv.high64, kv.low64)
    assert int(kv) == int(key, 16)
    blocks = r.block_hashes()
    assert len(blocks) == 1000 // 64 == r.block_count()
    assert all(0 <= b < 2**64 for b in blocks)
    # More blocks than the request's first buffer holds.
    r.prompt = "y" * (64 * 300)
    assert len(r.block_hashes()) == 300
    # Same prefix, same leading blocks.
    r2 = engine.request(model="m", prompt="y" * (64 * 10))
    assert r2.block_hashes() == r.block_hashes()[:10]
    assert r2.cache_key() == r.cache_key()


def test_token_ids(engine):
    engine.configure({"cache_key": {"block_tokens": 16}})
    r = engine.request(model="m")
    r.set_token_ids(range(50))
    assert len(r.block_hashes()) == 3
    r.set_token_ids([])
    assert r.block_hashes() == []
    with pytest.raises(spotinfer.RangeError):
        r.set_token_ids([2**32])


def test_price(engine):
    engine.configure({"cost": {"spot_usd_per_gpu_hour": 1.8,
                               "on_demand_usd_per_gpu_hour": 4.5}})
    r = engine.request(model="m", prompt="hello " * 100, max_output_tokens=256)
    spot, od = r.price(Pool.SPOT), r.price("on_demand")
    assert spot.pool is Pool.SPOT and od.pool is Pool.ON_DEMAND
    assert 0 < spot.usd < od.usd
    assert spot.output_tokens == 256
    assert spot.gpu_seconds == od.gpu_seconds > 0
    with pytest.raises(spotinfer.InvalidArgumentError):
        r.price(9)


def test_closed_request(engine):
    with engine.request(model="m") as r:
        pass
    assert r.closed
    with pytest.raises(spotinfer.MisuseError):
        r.model
    assert "closed" in repr(r)


def test_freed_handle_is_detected_by_the_library(engine):
    # The C layer itself turns a bogus handle into SPI_EMISUSE.
    import ctypes
    bogus = ctypes.create_string_buffer(256)
    with pytest.raises(spotinfer.MisuseError):
        spotinfer.lib.spi_classify(ctypes.cast(bogus, ctypes.c_void_p), 0,
                                   ctypes.byref(spotinfer._native.Classification()))


@pytest.mark.parametrize("bad", [2**32, -1, 2**64 + 5])
def test_token_id_outside_uint32_is_a_range_error(engine, bad):
    # As for every other integer the binding hands to C (an envelope's
    # partial_tokens included): RangeError, a ValueError, naming the value.
    r = engine.request(model="m")
    r.set_token_ids([1, 2, 3])
    with pytest.raises(spotinfer.RangeError, match=str(bad)):
        r.set_token_ids([7, bad])
    with pytest.raises(ValueError):
        engine.request(model="m", token_ids=[bad])
    assert r.block_count() >= 0


@pytest.mark.parametrize("bad", [1500.5, float("inf"), float("nan")])
def test_integer_attribute_refuses_a_fraction_instead_of_cutting_it(engine, bad):
    # int(1500.5) would send 1500 without a word: the value given is not
    # the value used. A whole float (1500.0) is still taken.
    r = engine.request(model="m")
    with pytest.raises(ValueError):
        r.sla_ms = bad
    assert r.sla_ms is None
    r.sla_ms = 1500.0
    assert r.sla_ms == 1500


@pytest.mark.parametrize("high, low", [(2**64 + 5, 0), (-1, 0), (0, 2**64)])
def test_cache_key_hex_refuses_halves_outside_uint64(high, low):
    # ctypes would keep the low 64 bits: 2**64 + 5 formatted as key 5.
    with pytest.raises(spotinfer.RangeError):
        spotinfer.cache_key_hex(high, low)
    assert spotinfer.cache_key_hex(2**64 - 1, 5) == "f" * 16 + "0" * 15 + "5"
