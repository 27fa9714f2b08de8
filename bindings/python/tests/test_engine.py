"""Engine life cycle, configuration, errors, vocabularies, hooks."""

from __future__ import annotations

import gc
import json
import pathlib
import weakref

import pytest

import spotinfer
from spotinfer import Class, Engine, PriorityScheme, ServiceTier


def test_defaults_and_config_json(engine):
    cfg = engine.config
    assert cfg["cache_key"]["block_bytes"] == 1024
    # Feeding the effective configuration back is a no-op.
    text = engine.config_json()
    engine.configure(text)
    assert engine.config_json() == text


@pytest.mark.parametrize("form", ["str", "bytes", "dict", "path", "pathstr"])
def test_config_forms(form, tmp_path):
    cfg = {"cost": {"spot_usd_per_gpu_hour": 2.1}}
    if form == "str":
        arg = json.dumps(cfg)
    elif form == "bytes":
        arg = json.dumps(cfg).encode()
    elif form == "dict":
        arg = cfg
    else:
        p = tmp_path / "c.json"
        p.write_text(json.dumps(cfg))
        arg = p
    with Engine(arg if form != "pathstr" else None) as e:
        if form == "pathstr":
            e.configure_file(str(tmp_path / "c.json")) if (tmp_path / "c.json").exists() \
                else (tmp_path / "c.json").write_text(json.dumps(cfg)) or \
                e.configure_file(str(tmp_path / "c.json"))
        assert e.config["cost"]["spot_usd_per_gpu_hour"] == 2.1


def test_config_errors_name_the_path(engine):
    with pytest.raises(spotinfer.TypeMismatchError) as ei:
        engine.configure({"classifier": {"rules": 3}})
    e = ei.value
    assert e.code == spotinfer.Status.ETYPE == -21
    assert "classifier.rules" in e.message
    assert e.function == "spi_engine_configure"
    assert isinstance(e, spotinfer.InputError) and isinstance(e, ValueError)
    assert engine.errmsg == e.message

    with pytest.raises(spotinfer.UnknownNameError) as ei:
        engine.configure({"nope": 1})
    assert "nope" in ei.value.message

    with pytest.raises(spotinfer.ParseError) as ei:
        engine.configure("{not json")
    assert ei.value.code == -20

    with pytest.raises(spotinfer.RangeError):
        engine.configure({"cache_key": {"block_bytes": 0}})

    with pytest.raises(spotinfer.ReadError) as ei:
        engine.configure(pathlib.Path("/nonexistent/spotinfer.json"))
    assert ei.value.code == -41
    # Nothing changed after the failures.
    assert engine.config["cache_key"]["block_bytes"] == 1024


def test_failed_constructor_config_closes():
    with pytest.raises(spotinfer.ParseError):
        Engine("{")


def test_error_hierarchy():
    from spotinfer.errors import error_for_status
    assert type(error_for_status(-1)) is spotinfer.InvalidArgumentError
    assert type(error_for_status(-80)) is spotinfer.ShedError
    assert type(error_for_status(-81)) is spotinfer.NoCapacityError
    assert type(error_for_status(-44)) is spotinfer.StaleError
    # Codes this version does not know map to their group.
    assert type(error_for_status(-29)) is spotinfer.InputError
    assert type(error_for_status(-99)) is spotinfer.RoutingError
    assert type(error_for_status(-500)) is spotinfer.SpotinferError
    e = error_for_status(-20, "messages[2].role: bad", status_name="parse error",
                         function="spi_request_parse_openai")
    assert str(e) == ("spi_request_parse_openai: parse error: "
                      "messages[2].role: bad (-20)")
    import pickle
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is spotinfer.ParseError and e2.message == e.message


def test_close_is_idempotent_and_guards_use():
    e = Engine()
    r = e.request(model="m")
    assert not e.closed
    e.close()
    e.close()
    assert e.closed and r.closed  # the engine freed its request first
    with pytest.raises(spotinfer.MisuseError):
        e.configure("{}")
    with pytest.raises(spotinfer.MisuseError):
        r.classify()
    r.close()  # harmless after the engine freed it


def test_finalizer_frees_unreferenced_engine():
    e = Engine()
    st = e._st
    r = e.request()
    ref = weakref.ref(e)
    del e, r
    gc.collect()
    assert ref() is None
    assert st.ptr is None and not st.requests


def test_request_finalizer(engine):
    r = engine.request()
    del r
    gc.collect()
    assert not engine._st.requests


def test_vocabularies(engine):
    assert engine.class_to_priority(PriorityScheme.VLLM, Class.GOLD) == -1
    assert engine.class_to_priority("llmd", "bronze") == -1
    assert engine.class_from_priority(PriorityScheme.VLLM, 5) is Class.BRONZE
    assert engine.class_to_service_tier(Class.GOLD) is ServiceTier.PRIORITY
    assert engine.class_from_service_tier(ServiceTier.FLEX) is Class.BRONZE
    assert engine.class_from_service_tier(ServiceTier.UNSET) is Class.UNSET
    with pytest.raises(spotinfer.InvalidArgumentError):
        engine.class_to_priority(7, Class.GOLD)
    with pytest.raises(ValueError):
        engine.class_to_priority("nonsense", Class.GOLD)


def test_options():
    opts = spotinfer.options()
    assert len(opts) == spotinfer.lib.spi_option_count()
    by_path = {o.path: o for o in opts}
    bb = by_path["cache_key.block_bytes"]
    assert bb.type is spotinfer.OptionType.INT
    assert json.loads(bb.default_json) == 1024
    assert bb.min_value <= 1024 <= bb.max_value
    assert bb.doc
    with pytest.raises(spotinfer.NotFoundError):
        spotinfer.lib.spi_option_get(len(opts), spotinfer._native.OptionInfo())


def test_module_names(engine):
    assert "reference" in engine.module_names(spotinfer.ModuleKind.CLASSIFIER)
    assert engine.module_names("key_builder") == ["xxh3-v1"]
    assert "reference" in engine.module_names("cost_model")


def test_log_hook():
    lines = []
    # A Python classifier that fails, with fallback, makes the engine log.
    class Bad:
        on_failure = spotinfer.OnFailure.FALLBACK

        def classify(self, inst, req, pressure):
            raise RuntimeError("boom")

    with Engine(log=lambda lvl, msg: lines.append((lvl, msg)),
                log_level=spotinfer.LogLevel.DEBUG) as e:
        e.register_classifier("bad", Bad())
        e.configure({"modules": {"classifier": "bad"}})
        r = e.request(model="m", stream=True)
        assert r.classify().klass is Class.GOLD
    assert any("bad" in m for _, m in lines), lines
    assert all(isinstance(l, spotinfer.LogLevel) for l, _ in lines)


def test_clock_hook_is_called():
    calls = []

    def clock():
        calls.append(1)
        return 1_700_000_000_000_000_000

    with Engine(clock=clock) as e:
        e.request(model="m").classify()
    # The clock is only read where time matters; it must at least be safe.
    assert isinstance(len(calls), int)


def test_clock_hook_exception_is_contained():
    def clock():
        raise ValueError("no clock")

    with Engine(clock=clock) as e:
        assert e.request(model="m").classify().klass is Class.SILVER
