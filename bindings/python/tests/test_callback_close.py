"""Closing an engine, or a request of it, from inside one of the engine's
own callbacks would free what the running C call is using: the binding
refuses it with MisuseError and leaves everything open."""

from __future__ import annotations

import pytest

import spotinfer
from spotinfer import Class, Engine, MisuseError, Verdict


class ClosingClassifier:
    def __init__(self):
        self.target = None
        self.raised = []

    def classify(self, instance, req, pressure):
        try:
            self.target.close()
        except BaseException as e:  # noqa: BLE001 - recorded for the test
            self.raised.append(e)
        return Verdict(Class.GOLD)


def _engine_with(module):
    eng = Engine()
    eng.register_classifier("closer", module)
    eng.configure({"modules": {"classifier": "closer"}})
    return eng


def test_engine_close_inside_its_module_callback_is_refused():
    mod = ClosingClassifier()
    eng = _engine_with(mod)
    mod.target = eng
    req = eng.request(model="m")
    req.add_message("user", "hi")
    assert req.classify().klass == Class.GOLD
    assert len(mod.raised) == 1 and isinstance(mod.raised[0], MisuseError)
    assert not eng.closed and not req.closed
    assert req.classify().klass == Class.GOLD  # still usable
    eng.close()
    assert eng.closed and req.closed


def test_request_close_inside_a_callback_on_it_is_refused():
    mod = ClosingClassifier()
    eng = _engine_with(mod)
    req = eng.request(model="m")
    req.add_message("user", "hi")
    mod.target = req
    assert req.classify().klass == Class.GOLD
    assert len(mod.raised) == 1 and isinstance(mod.raised[0], MisuseError)
    assert not req.closed
    eng.close()


def test_engine_close_inside_the_clock_hook_is_refused():
    raised = []
    box = {}

    def clock():
        if "eng" in box:
            try:
                box["eng"].close()
            except MisuseError as e:
                raised.append(e)
        return 1_700_000_000_000_000_000

    eng = Engine(clock=clock)
    box["eng"] = eng
    eng.tick()
    del box["eng"]
    assert raised and not eng.closed
    eng.close()


def test_close_outside_callbacks_still_works_after_one():
    mod = ClosingClassifier()
    eng = _engine_with(mod)
    mod.target = eng
    req = eng.request(model="m")
    req.classify()
    req.close()
    assert req.closed
    eng.close()
    assert eng.closed


def test_other_requests_may_be_made_and_closed_inside_a_callback():
    # Only what the call under the callback uses is refused: a request made
    # there (one that fails to parse included) is closed as usual.
    seen = []

    class Maker:
        def classify(self, instance, req, pressure):
            other = eng.request(model="x")
            other.close()
            seen.append(other.closed)
            try:
                eng.parse_openai("{not json")
            except spotinfer.SpotinferError as e:
                seen.append(type(e).__name__)
            return Verdict(Class.SILVER)

    eng = _engine_with(Maker())
    req = eng.request(model="m")
    assert req.classify().klass == Class.SILVER
    assert seen == [True, "ParseError"]
    eng.close()


def test_a_replaced_node_transition_callback_is_let_go():
    # Only the callback C can still call is kept: setting a new one (or
    # None) drops the old, instead of keeping every one ever set.
    import gc
    import weakref
    from spotinfer import NodeState

    seen = []
    with Engine() as e:
        def first(node, a, b):
            seen.append(("first", node))
        ref = weakref.ref(first)
        e.on_node_transition(first)
        del first
        e.on_node_transition(lambda node, a, b: seen.append(("second", node)))
        gc.collect()
        assert ref() is None
        e.set_node_state("n1", NodeState.DRAINING)
        assert seen == [("second", "n1")]
        e.on_node_transition(None)
        e.set_node_state("n1", NodeState.TERMINATED)
        assert seen == [("second", "n1")]
