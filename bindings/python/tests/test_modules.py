"""Modules written in Python, registered on an engine."""

from __future__ import annotations

import gc
import threading
import weakref
from ctypes import (Structure, addressof, c_char, create_string_buffer,
                    sizeof)

import pytest

import spotinfer
from spotinfer import (Class, ClassifierModule, DegradeLevels, Engine,
                       ModelTier, ModuleKind, OnFailure, Pool, Pressure,
                       RequestView, Verdict)
from spotinfer import _native
from spotinfer.modules import _summaries


class ThresholdClassifier(ClassifierModule):
    """Gold for short SLAs below a configured threshold, else bronze."""

    def __init__(self):
        self.configured = []
        self.released = []
        self.destroyed = False
        self.seen = []

    def configure(self, config):
        self.configured.append(config)
        if config.get("threshold_ms", 1) <= 0:
            raise ValueError("threshold_ms must be positive")
        return {"threshold_ms": config.get("threshold_ms", 1000)}

    def release(self, instance):
        self.released.append(instance)

    def destroy(self):
        self.destroyed = True

    def classify(self, instance, req: RequestView, pressure: Pressure):
        self.seen.append((req.model, req.stream, req.sla_ms, req.tenant,
                          req.last_user_text, req.message_count, pressure))
        if req.sla_ms is not None and req.sla_ms < instance["threshold_ms"]:
            return Verdict(Class.GOLD, reason="python fast",
                           max_output_tokens=100 * (int(pressure) + 1))
        return Class.BRONZE


def _use(engine, name, cfg=None):
    engine.configure({"modules": {"classifier": name},
                      "module_config": {name: cfg or {}}})


def test_python_classifier(engine):
    mod = ThresholdClassifier()
    engine.register_classifier("py-threshold", mod)
    assert "py-threshold" in engine.module_names(ModuleKind.CLASSIFIER)
    _use(engine, "py-threshold", {"threshold_ms": 2000})
    assert mod.configured[-1] == {"threshold_ms": 2000}
    r = engine.request(model="m", sla_ms=1500, stream=True, tenant="acme",
                       messages=[{"role": "user", "content": "why?"}])
    c = r.classify(Pressure.HIGH)
    assert c.klass is Class.GOLD and c.reason == "python fast"
    assert c.max_output_tokens == 300 and c.model_tier is ModelTier.LARGE
    # The library fills the vocabularies itself.
    assert c.vllm_priority == -1 and c.pressure is Pressure.HIGH
    assert mod.seen[-1] == ("m", True, 1500, "acme", "why?", 1, Pressure.HIGH)
    r.sla_ms = 5000
    assert r.classify().klass is Class.BRONZE
    # Reconfiguring releases the previous instance.
    _use(engine, "py-threshold", {"threshold_ms": 9000})
    assert {"threshold_ms": 2000} in mod.released
    assert r.classify().klass is Class.GOLD
    engine.close()
    assert mod.destroyed


class LongReason(ClassifierModule):
    """A verdict whose reason fills the field with two-byte characters."""

    def classify(self, instance, req, pressure):
        return Verdict(Class.GOLD, reason="x" + "\u00e9" * 100)


def test_long_reason_is_cut_between_characters(engine):
    engine.register_classifier("long", LongReason())
    _use(engine, "long")
    c = engine.request(model="m").classify()
    # 119 bytes hold "x" and 59 whole two-byte characters; the 60th would
    # be cut in half and is left out instead of read back as U+FFFD.
    assert c.reason == "x" + "\u00e9" * 59


def test_utf8_cut_keeps_whole_characters():
    from spotinfer.types import utf8_cut
    assert utf8_cut("abc", 3) == b"abc"
    assert utf8_cut("ab\u20ac", 4) == b"ab"  # the euro sign takes 3 bytes
    assert utf8_cut("ab\u20ac", 5) == "ab\u20ac".encode()
    assert utf8_cut("\U0001F600" * 2, 7) == "\U0001F600".encode()
    assert utf8_cut("\u00e9", 1) == b""


def test_configure_exception_becomes_config_error(engine):
    mod = ThresholdClassifier()
    engine.register_classifier("py", mod)
    with pytest.raises(spotinfer.ModuleFailedError) as ei:
        _use(engine, "py", {"threshold_ms": -5})
    msg = ei.value.message
    assert "py" in msg and "threshold_ms must be positive" in msg, msg
    assert isinstance(ei.value.__cause__, ValueError)
    # The previous configuration stays in force.
    assert engine.config["modules"]["classifier"] == "reference"


class RaisesLong(ClassifierModule):
    """configure raises a message longer than the library's error buffer,
    of three-byte characters after pad ASCII ones."""

    def __init__(self, pad):
        self.pad = pad

    def configure(self, config):
        raise ValueError("x" * self.pad + "\u20ac" * 200)


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_long_module_message_is_cut_between_characters(engine, pad):
    engine.register_classifier("long", RaisesLong(pad))
    with pytest.raises(spotinfer.ModuleFailedError) as ei:
        _use(engine, "long")
    msg = ei.value.message
    # Cut twice (by the binding into the module's buffer, by the library
    # after its prefix), each time before a character, not inside one.
    assert "\u20ac" * 10 in msg, msg
    assert "\ufffd" not in msg, msg
    assert msg.encode("utf-8").decode("utf-8") == msg


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_module_error_buffer_gets_whole_characters(pad):
    from spotinfer.modules import _write_err
    buf = create_string_buffer(b"z" * 16)
    _write_err(addressof(buf), 16, "x" * pad + "\u20ac" * 10)
    written = buf.value
    assert written.decode("utf-8") == "x" * pad + "\u20ac" * ((15 - pad) // 3)


class Raises(ClassifierModule):
    def __init__(self, exc):
        self.exc = exc

    def classify(self, instance, req, pressure):
        raise self.exc


def test_classify_exception_with_error_policy(engine):
    engine.register_classifier("boom", Raises(KeyError("nope")))
    _use(engine, "boom")
    r = engine.request(model="m")
    with pytest.raises(spotinfer.ModuleFailedError) as ei:
        r.classify()
    assert ei.value.code == spotinfer.Status.EMODULE
    assert '"boom"' in ei.value.message
    assert isinstance(ei.value.__cause__, KeyError)
    # The engine keeps working after a failed callback.
    with pytest.raises(spotinfer.ModuleFailedError):
        r.classify()


def test_classify_exception_with_fallback(engine):
    engine.register_classifier("boom", Raises(RuntimeError("x")),
                               on_failure=OnFailure.FALLBACK)
    _use(engine, "boom")
    r = engine.request(model="m", stream=True)
    c = r.classify()
    assert c.klass is Class.GOLD and c.reason == "rule interactive"


class Boom(RuntimeError):
    """Weakly referenceable, so a test can tell when nothing holds it."""


def test_exception_of_a_module_that_fell_back_is_not_kept(engine):
    raised = []

    class Once(ClassifierModule):
        def classify(self, instance, req, pressure):
            e = Boom("x")
            raised.append(weakref.ref(e))
            raise e

    engine.register_classifier("once", Once(), on_failure=OnFailure.FALLBACK)
    _use(engine, "once")
    assert engine.request(model="m").classify().klass is Class.SILVER
    gc.collect()
    assert raised and raised[0]() is None, "the binding still holds it"


def test_only_the_failing_kind_exception_is_the_cause(engine):
    """A classifier that raised and fell back to the built-in is not the
    cause of the policy failing later in the same route."""
    e = engine
    e.upsert_replica("s1", pool=Pool.SPOT, usd_per_hour=1.8, max_inflight=8)
    e.report_load("s1", running=0, kv_usage=0.1)

    class Raising(ClassifierModule):
        def classify(self, instance, req, pressure):
            raise Boom("classifier")

    class OutOfRange(spotinfer.PolicyModule):
        def choose(self, instance, ctx):
            return spotinfer.PolicyChoice(Pool.SPOT, [99])  # no exception

    class Raises(spotinfer.PolicyModule):
        def choose(self, instance, ctx):
            raise KeyError("policy")

    e.register_classifier("raising", Raising(), on_failure=OnFailure.FALLBACK)
    e.register_policy("oor", OutOfRange())
    e.register_policy("raises", Raises())
    e.configure({"modules": {"classifier": "raising", "policy": "oor"}})
    req = e.request(model="m", sla_ms=5000, replayable=True,
                    messages=[("user", "hi")])
    with pytest.raises(spotinfer.ModuleFailedError) as ei:
        req.route()
    assert "policy" in ei.value.message
    assert ei.value.__cause__ is None
    e.configure({"modules": {"classifier": "raising", "policy": "raises"}})
    with pytest.raises(spotinfer.ModuleFailedError) as ei:
        req.route()
    assert isinstance(ei.value.__cause__, KeyError)


def test_verdict_out_of_range_fails_instead_of_wrapping(engine):
    class Huge(ClassifierModule):
        def classify(self, instance, req, pressure):
            # 2**64 would wrap to 0 (no cap) in the C int64_t
            return Verdict(Class.GOLD, max_output_tokens=2**64)

    engine.register_classifier("huge", Huge())
    _use(engine, "huge")
    with pytest.raises(spotinfer.ModuleFailedError) as ei:
        engine.request(model="m").classify()
    assert isinstance(ei.value.__cause__, spotinfer.RangeError)


def test_on_failure_attribute_is_used(engine):
    mod = Raises(RuntimeError("x"))
    mod.on_failure = OnFailure.FALLBACK
    engine.register_classifier("boom", mod)
    _use(engine, "boom")
    assert engine.request(model="m").classify().klass is Class.SILVER


def test_invalid_output_is_rejected(engine):
    class Bad(ClassifierModule):
        def classify(self, instance, req, pressure):
            return Verdict(Class.GOLD, model_tier=7)

    engine.register_classifier("bad", Bad())
    _use(engine, "bad")
    with pytest.raises(spotinfer.ModuleFailedError) as ei:
        engine.request(model="m").classify()
    assert "invalid" in ei.value.message


def test_wrong_return_type(engine):
    class Odd(ClassifierModule):
        def classify(self, instance, req, pressure):
            return "gold"

    engine.register_classifier("odd", Odd())
    _use(engine, "odd")
    with pytest.raises(spotinfer.ModuleFailedError) as ei:
        engine.request(model="m").classify()
    assert isinstance(ei.value.__cause__, TypeError)


def test_spotinfer_error_status_is_passed_through(engine):
    class Oom(ClassifierModule):
        def classify(self, instance, req, pressure):
            raise spotinfer.NoMemoryError(-40, "out of memory")

    engine.register_classifier("oom", Oom())
    _use(engine, "oom")
    with pytest.raises(spotinfer.ModuleFailedError) as ei:
        engine.request(model="m").classify()
    assert "out of memory" in ei.value.message


def test_plain_object_and_dict_results(engine):
    class Plain:  # no base class, no configure
        def classify(self, instance, req, pressure):
            assert instance == {"x": 1}
            return {"klass": Class.SILVER, "replayable": True, "reason": "dict"}

    engine.register_classifier("plain", Plain())
    _use(engine, "plain", {"x": 1})
    c = engine.request(model="m").classify()
    assert (c.klass, c.replayable, c.reason) == (Class.SILVER, True, "dict")


class Tiers(ClassifierModule):
    """Silver for every pressure, with a cap that tightens and tools that go
    as the pressure rises, deferred at CRITICAL: all in one call."""

    def __init__(self, levels=None):
        self.levels_calls = 0
        self.classify_calls = 0
        self.levels = levels or DegradeLevels(
            max_output_tokens=(0, 800, 400, 100),
            tools_allowed=(True, True, False, False),
            defer=(False, False, False, True))

    def classify(self, instance, req, pressure):
        self.classify_calls += 1
        return Class.BRONZE

    def classify_levels(self, instance, req):
        self.levels_calls += 1
        # The verdict's own plan fields are ignored.
        return (Verdict(Class.SILVER, replayable=True, reason="levels " + req.model,
                        max_output_tokens=7, tools_allowed=False, defer=True),
                self.levels)


def test_classify_levels(engine):
    mod = Tiers()
    engine.register_classifier("py-levels", mod)
    _use(engine, "py-levels")
    r = engine.request(model="m")
    want = [(0, True, False), (800, True, False), (400, False, False),
            (100, False, True)]
    for p, (cap, tools, defer) in zip(Pressure, want):
        c = r.classify(p)
        assert (c.klass, c.replayable, c.reason) == (Class.SILVER, True, "levels m")
        assert (c.max_output_tokens, c.tools_allowed, c.defer) == (cap, tools, defer)
        assert c.pressure is p
    assert (mod.levels_calls, mod.classify_calls) == (4, 0)


def test_classify_levels_checked_and_dicts(engine):
    # Every level is checked, not only the one asked for.
    bad = Tiers(DegradeLevels(max_output_tokens=(0, 0, 0, -1)))
    engine.register_classifier("py-bad-levels", bad)
    _use(engine, "py-bad-levels")
    with pytest.raises(spotinfer.ModuleFailedError) as ei:
        engine.request(model="m").classify(Pressure.NORMAL)
    assert "invalid" in ei.value.message

    class Plain:  # no base class and no classify: classify_levels suffices
        def classify_levels(self, instance, req):
            return ({"klass": Class.GOLD},
                    {"max_output_tokens": [10, 20, 30, 40]})

    engine.register_classifier("plain-levels", Plain())
    _use(engine, "plain-levels")
    c = engine.request(model="m").classify(Pressure.HIGH)
    assert (c.klass, c.max_output_tokens, c.tools_allowed) == (Class.GOLD, 30, True)
    with pytest.raises(ValueError):
        DegradeLevels(defer=(True,))


def test_classify_without_levels_is_asked(engine):
    # A subclass that keeps the base class's classify_levels registers
    # classify only.
    mod = ThresholdClassifier()
    engine.register_classifier("py-plain", mod)
    _use(engine, "py-plain")
    assert engine.request(model="m").classify().klass is Class.BRONZE
    assert len(mod.seen) == 1


def test_registration_errors(engine):
    engine.register_classifier("dup", ThresholdClassifier())
    with pytest.raises(spotinfer.ExistsError):
        engine.register_classifier("dup", ThresholdClassifier())
    with pytest.raises(spotinfer.InvalidArgumentError):
        engine.register_classifier("bad name!", ThresholdClassifier())
    with pytest.raises(TypeError):
        engine.register_classifier("nometh", object())
    with pytest.raises(spotinfer.NotSupportedError):
        engine.register_module(ModuleKind.NOTICE_SOURCE, "ns", object())
    # A failed registration leaves nothing behind to keep alive.
    names = engine.module_names(ModuleKind.CLASSIFIER)
    assert names.count("dup") == 1 and "bad name!" not in names


def test_callbacks_stay_alive_without_user_references():
    with Engine() as e:
        e.register_classifier("ephemeral", ThresholdClassifier())
        gc.collect()
        _use(e, "ephemeral", {"threshold_ms": 500})
        gc.collect()
        assert e.request(model="m", sla_ms=100).classify().klass is Class.GOLD


def test_request_view_expires(engine):
    kept = []

    class Keeper(ClassifierModule):
        def classify(self, instance, req, pressure):
            kept.append(req)
            return Class.SILVER

    engine.register_classifier("keeper", Keeper())
    _use(engine, "keeper")
    engine.request(model="m").classify()
    with pytest.raises(RuntimeError):
        kept[0].model


def test_python_key_builder(engine):
    class Keys(spotinfer.KeyBuilderModule):
        def build_key(self, instance, req):
            return (len(req.model), 0xABC)

        def block_hashes(self, instance, req, key):
            return [key.low64 + i for i in range(len(req.prompt) // 10)]

    engine.register_key_builder("py-keys", Keys())
    engine.configure({"modules": {"key_builder": "py-keys"}})
    r = engine.request(model="abcd", prompt="z" * 95)
    assert r.cache_key() == f"{4:016x}{0xABC:016x}"
    assert r.block_hashes() == [0xABC + i for i in range(9)]


def test_python_cost_model(engine):
    class Flat(spotinfer.CostModelModule):
        def configure(self, config):
            return float(config.get("usd", 0.01))

        def price(self, instance, req, pool):
            usd = instance * (2 if pool is Pool.ON_DEMAND else 1)
            return {"prompt_tokens": 1, "output_tokens": 2, "gpu_seconds": 0.5,
                    "usd": usd, "usd_per_million": 1.0}

    engine.register_cost_model("flat", Flat())
    engine.configure({"modules": {"cost_model": "flat"},
                      "module_config": {"flat": {"usd": 0.25}}})
    r = engine.request(model="m")
    assert r.price(Pool.SPOT).usd == 0.25
    assert r.price(Pool.ON_DEMAND).usd == 0.5


def test_python_cost_model_negative_price_rejected(engine):
    class Neg(spotinfer.CostModelModule):
        def price(self, instance, req, pool):
            return {"usd": -1.0}

    engine.register_cost_model("neg", Neg())
    engine.configure({"modules": {"cost_model": "neg"}})
    with pytest.raises(spotinfer.ModuleFailedError):
        engine.request(model="m").price()


def test_module_called_from_many_threads(engine):
    mod = ThresholdClassifier()
    engine.register_classifier("py", mod)
    _use(engine, "py", {"threshold_ms": 1000})
    errors = []

    def work(i):
        try:
            with engine.request(model=f"m{i}") as r:
                for j in range(200):
                    r.sla_ms = 500 if j % 2 else 5000
                    want = Class.GOLD if j % 2 else Class.BRONZE
                    assert r.classify().klass is want
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _summary_array(stride_pad=0, n=4):
    """n C summaries, stride_pad bytes apart beyond sizeof(spi_pool_summary)
    (a newer library's longer struct); only the first names candidates."""
    class Wide(Structure):
        _fields_ = [("s", _native.PoolSummary), ("pad", c_char * stride_pad)]

    arr = (Wide * n)()
    for k in range(n):
        s = arr[k].s
        s.pool, s.model_tier = k // 2 + 1, k % 2 + 1
        s.usable = 9 if k == 0 else 0
        s.n_top = 3 if k == 0 else 0
        for j in range(_native.SUMMARY_TOP):
            s.top[j] = j if k == 0 and j < 3 else -1
        s.warm = s.least = s.rendezvous = -1
        if k == 0:
            s.warm, s.least, s.rendezvous = 2, 0, 1
        arr[k].pad = b"\xff" * stride_pad
    return arr, sizeof(Wide)


def test_route_context_summaries_are_read_by_summary_size():
    for pad in (0, 8, 40):
        arr, stride = _summary_array(pad)
        c = _native.RouteContext(summaries=addressof(arr), summary_size=stride,
                                 n_summaries=4)
        got = _summaries(c)
        assert [(s.pool, s.model_tier) for s in got] == [
            (Pool.SPOT, ModelTier.SMALL), (Pool.SPOT, ModelTier.LARGE),
            (Pool.ON_DEMAND, ModelTier.SMALL), (Pool.ON_DEMAND, ModelTier.LARGE)]
        first = got[0]
        assert (first.usable, first.top, first.warm, first.least,
                first.rendezvous, first.best) == (9, (0, 1, 2), 2, 0, 1, 0)
        for s in got[1:]:
            assert (s.usable, s.top, s.warm, s.least, s.rendezvous, s.best) == \
                (0, (), None, None, None, None)
        ctx = spotinfer.RouteContext(
            req=None, cls=None, candidates=(), total_blocks=0, max_fallbacks=0,
            pressure=(0, 0, 0, 0), shed=(False,) * 4, now_ns=0, summaries=got)
        assert ctx.summary("spot", "small") is got[0]
        assert ctx.summary(Pool.ON_DEMAND, ModelTier.LARGE) is got[3]
        assert ctx.summary(Pool.QUEUE, ModelTier.SMALL) is None

    # A context from before 0.2.0: struct_size ends before the summaries.
    arr, stride = _summary_array()
    c = _native.RouteContext(summaries=addressof(arr), summary_size=stride,
                             n_summaries=4)
    c.struct_size = _native.RouteContext.summaries.offset
    assert _summaries(c) == ()
    c.struct_size = sizeof(_native.RouteContext)
    c.n_summaries = 0
    assert _summaries(c) == ()


def test_route_context_short_summary_stride():
    """A summary shorter than this binding's: what is past it reads as none."""
    arr, _ = _summary_array()
    short = _native.PoolSummary.warm.offset  # pool .. top only
    c = _native.RouteContext(summaries=addressof(arr), summary_size=short,
                             n_summaries=1)
    (s,) = _summaries(c)
    assert (s.pool, s.usable, s.top) == (Pool.SPOT, 9, (0, 1, 2))
    assert (s.warm, s.least, s.rendezvous) == (None, None, None)


@pytest.mark.parametrize("kind", [ModuleKind.CLASSIFIER, ModuleKind.KEY_BUILDER,
                                  ModuleKind.COST_MODEL, ModuleKind.POLICY])
def test_every_module_callback_is_bound(kind):
    """Every callback of the C module struct is set for a module that has
    every method, so a field added to the header is not left NULL."""
    class Full:
        def classify(self, instance, req, pressure): ...
        def classify_levels(self, instance, req): ...
        def build_key(self, instance, req): ...
        def block_hashes(self, instance, req, key): ...
        def price(self, instance, req, pool): ...
        def choose(self, instance, ctx): ...

    from spotinfer.modules import build_module
    adapter = build_module(int(kind), "full", Full(), 0, threading.local())
    callbacks = [name for name, typ in adapter.struct._fields_
                 if hasattr(typ, "argtypes")]
    assert len(callbacks) >= 3
    for name in callbacks:
        assert getattr(adapter.struct, name), f"{name} is not bound"


class MetadataClassifier:
    """Gold when the request's metadata says team=search."""

    def __init__(self):
        self.seen = []

    def configure(self, config):
        return {}

    def classify(self, instance, req: RequestView, pressure: Pressure):
        self.seen.append(req.metadata)
        return Class.GOLD if req.metadata.get("team") == "search" else Class.BRONZE


def test_view_metadata(engine):
    mod = MetadataClassifier()
    engine.register_classifier("py-meta", mod)
    _use(engine, "py-meta")
    r = engine.request(model="m", messages=[{"role": "user", "content": "hi"}])
    assert r.classify().klass is Class.BRONZE and mod.seen[-1] == {}
    r.update_metadata({"team": "search", "note": "", "tenant": "acme"})
    assert r.classify().klass is Class.GOLD
    assert mod.seen[-1] == {"team": "search", "note": "", "tenant": "acme"}
    r.set_metadata("team", "ads")  # the later pair counts
    assert r.classify().klass is Class.BRONZE
    assert mod.seen[-1]["team"] == "ads"
    r.parse_openai({"model": "m", "metadata": {"team": "search", "x": "é"},
                    "messages": [{"role": "user", "content": "hi"}]})
    assert r.classify().klass is Class.GOLD
    assert mod.seen[-1] == {"team": "search", "x": "é"}
