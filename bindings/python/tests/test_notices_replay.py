"""Interruption notices, node states and the replay queue.

These run once the loaded library exports the functions; until then each
group is skipped with the names of the missing functions.
"""

from __future__ import annotations

import json

import pytest

import spotinfer
from spotinfer import (Class, Engine, Envelope, NodeState, Notice, NoticeFormat,
                       NoticeKind, Pool, TicketAction)


def _needs(*names):
    missing = [n for n in names if not spotinfer.lib.has(n)]
    return pytest.mark.skipif(bool(missing), reason="the loaded libspotinfer "
                              "does not export " + ", ".join(missing))


needs_notices = _needs("spi_notice_parse", "spi_notice_kind_name")
needs_nodes = _needs("spi_engine_notice", "spi_node_set_state",
                     "spi_node_get_state", "spi_engine_on_node_transition",
                     "spi_node_state_name")
needs_replay = _needs("spi_replay_open", "spi_replay_enqueue", "spi_replay_claim",
                      "spi_replay_ack", "spi_replay_nack", "spi_replay_stats_get",
                      "spi_replay_tick", "spi_replay_close", "spi_replay_errmsg")
needs_continuation = _needs("spi_replay_continuation")

SEC = 1_000_000_000
NOW = 1_700_000_000 * SEC


def test_missing_functions_raise_not_supported():
    missing = spotinfer.lib.missing
    if not missing:
        pytest.skip("every function is exported")
    with pytest.raises(spotinfer.NotSupportedError) as ei:
        getattr(spotinfer.lib, missing[0])()
    assert missing[0] in str(ei.value)


@needs_notices
def test_parse_aws_instance_action():
    body = json.dumps({"action": "terminate", "time": "2023-11-14T22:15:20Z"})
    notices = spotinfer.parse_notice(NoticeFormat.AWS_INSTANCE_ACTION, body,
                                     node="i-0abc", now_ns=NOW)
    assert len(notices) == 1
    n = notices[0]
    assert n.kind is NoticeKind.TERMINATE and n.node == "i-0abc"
    assert n.deadline_ns == 1_700_000_120 * SEC
    assert n.received_ns == NOW and n.active and n.dedup_key
    assert spotinfer.notice_kind_name(n.kind) == "terminate"


@needs_notices
def test_parse_no_notice_and_errors():
    assert spotinfer.parse_notice("aws_instance_action", "", http_status=404,
                                  node="i-1", now_ns=NOW) == []
    gcp = spotinfer.parse_notice(NoticeFormat.GCP_PREEMPTED, "TRUE", node="vm-1",
                                 now_ns=NOW)
    assert [n.kind for n in gcp] == [NoticeKind.PREEMPT]
    assert gcp[0].deadline_ns == NOW + 30 * SEC
    assert spotinfer.parse_notice(NoticeFormat.GCP_PREEMPTED, "FALSE", node="vm-1",
                                  now_ns=NOW) == []
    with pytest.raises(spotinfer.InputError) as ei:
        spotinfer.parse_notice(NoticeFormat.AWS_INSTANCE_ACTION, "{not json",
                               node="i-1", now_ns=NOW)
    assert ei.value.message  # from the parser's errbuf


@needs_nodes
def test_notice_plans_and_node_states():
    clock = [NOW]
    seen = []
    with Engine(clock=lambda: clock[0]) as e:
        e.on_node_transition(lambda node, a, b: seen.append((node, a, b)))
        for rid, pool, node in (("spot-a", Pool.SPOT, "i-1"),
                                ("od-a", Pool.ON_DEMAND, "i-2")):
            e.upsert_replica(id=rid, pool=pool, usd_per_hour=2.0, max_inflight=16,
                             node=node, zone="z1", instance_type="g5.xlarge")
            e.report_load(rid, running=1, kv_usage=0.2)
        assert e.node_state("i-1") is NodeState.ACTIVE
        r = e.request(model="m", sla_ms=5000, replayable=True,
                      messages=[("user", "hello")])
        d = r.route()
        assert d.replica_id == "spot-a"
        notice = Notice(NoticeKind.TERMINATE, NoticeFormat.AWS_INSTANCE_ACTION,
                        "i-1", deadline_ns=NOW + 120 * SEC, received_ns=NOW,
                        dedup_key="aws:i-1:terminate")
        plans = e.notice(notice)
        assert [p.ticket for p in plans] == [d.ticket.id]
        assert plans[0].action in (TicketAction.DRAIN, TicketAction.REPLAY)
        assert plans[0].replica_id == "spot-a"
        assert e.node_state("i-1") is NodeState.NOTICED
        assert ("i-1", NodeState.ACTIVE, NodeState.NOTICED) in seen
        assert e.notice(notice) == []  # the same notice again plans nothing
        # Nothing new goes to the noticed machine.
        d2 = r.route()
        assert d2.replica_id != "spot-a"
        e.set_node_state("i-1", NodeState.DRAINING)
        assert e.node_state("i-1") is NodeState.DRAINING
        with pytest.raises(spotinfer.InvalidArgumentError) as ei:
            e.set_node_state("i-1", NodeState.ACTIVE)
        assert "draining" in ei.value.message.lower()
        e.on_node_transition(None)
        assert spotinfer.node_state_name(NodeState.ADVISED) == "advised"


@needs_replay
def test_replay_queue_memory():
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    with Engine() as e, e.replay_queue({"store": "memory"}) as q:
        assert q.enqueue(key="a", body=body, klass=Class.BRONZE)
        assert q.enqueue(Envelope("b", body, klass=Class.GOLD, partial_text="Hel",
                                  stream_offset=1, tenant="acme"))
        assert not q.enqueue(key="a", body=body, klass=Class.BRONZE)  # duplicate
        st = q.stats()
        assert st.ready[Class.GOLD] == 1 and st.ready[Class.BRONZE] == 1
        assert st.duplicates == 1 and st.enqueued == 2
        c = q.claim()
        assert c.envelope.key == "b"  # gold first
        assert c.envelope.partial_text == "Hel" and c.envelope.tenant == "acme"
        assert json.loads(c.envelope.body) == json.loads(body)
        c.ack()
        with pytest.raises(spotinfer.StaleError):
            c.ack()
        c2 = q.claim(classes=[Class.BRONZE])
        assert c2.envelope.key == "a"
        c2.nack()
        assert q.stats().acked == 1 and q.stats().nacked == 1
        assert q.claim(classes=["gold"]) is None
        q.tick()
    assert q.closed


@needs_replay
def test_replay_integers_are_checked():
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    with Engine() as e, e.replay_queue({"store": "memory"}) as q:
        with pytest.raises(spotinfer.RangeError):
            q.claim(lease_ms=2**64 + 1)  # ctypes would send 1 ms
        with pytest.raises(spotinfer.RangeError):
            q.ack(-1)
        with pytest.raises(spotinfer.RangeError):
            q.enqueue(key="k", body=body, deadline_ns=2**63)
        assert q.stats().enqueued == 0


@needs_replay
def test_envelope_tenant_too_long_is_refused_not_cut():
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    with Engine() as e, e.replay_queue({"store": "memory"}) as q:
        # C keeps 63 bytes of a tenant: a longer one (or one that 63 bytes
        # would cut inside a character) is refused, not cut.
        assert q.enqueue(key="t63", body=body, tenant="t" * 63)
        for tenant in ("t" * 64, "é" * 32, "a\0b"):
            with pytest.raises(ValueError):
                q.enqueue(key="long", body=body, tenant=tenant)
        assert q.stats().enqueued == 1


def test_notice_fixed_fields_are_refused_when_too_long():
    ok = Notice(NoticeKind.TERMINATE, NoticeFormat.AWS_INSTANCE_ACTION,
                "n" * 63, event_id="e" * 63, dedup_key="d" * 159)
    assert ok._struct().dedup_key == b"d" * 159
    for field, value in (("node", "n" * 64), ("event_id", "ü" * 32),
                         ("dedup_key", "d" * 160)):
        kw = {"node": "i-1", field: value}
        bad = Notice(NoticeKind.TERMINATE, NoticeFormat.AWS_INSTANCE_ACTION, **kw)
        with pytest.raises(ValueError) as ei:
            bad._struct()
        assert field in str(ei.value)
    with pytest.raises(spotinfer.RangeError):
        Notice(NoticeKind.TERMINATE, NoticeFormat.AWS_INSTANCE_ACTION, "i-1",
               deadline_ns=2**64)._struct()


@needs_replay
def test_replay_queue_closed_with_engine():
    e = Engine()
    q = e.replay_queue()
    e.close()
    assert q.closed
    with pytest.raises(spotinfer.MisuseError):
        q.stats()


@needs_replay
def test_replay_open_errors(engine):
    with pytest.raises(spotinfer.SpotinferError) as ei:
        engine.replay_queue({"store": "carrier-pigeon"})
    assert ei.value.message


@needs_continuation
def test_continuation():
    body = json.dumps({"model": "m", "max_tokens": 100,
                       "messages": [{"role": "user", "content": "count"}]})
    text, flags = spotinfer.continuation(Envelope("k", body, partial_text="1 2 3",
                                                  stream_offset=3))
    cont = json.loads(text)
    assert cont["messages"][-1] == {"role": "assistant", "content": "1 2 3"} or \
        cont["messages"][-1]["content"] == "1 2 3"
    assert cont.get("continue_final_message") is True
    assert flags & spotinfer.ENVELOPE_FROM_SCRATCH == 0
    guided = json.dumps({"model": "m", "response_format": {"type": "json_object"},
                         "messages": [{"role": "user", "content": "json"}]})
    _, flags = spotinfer.continuation(Envelope("g", guided, partial_text="{"))
    assert flags & spotinfer.ENVELOPE_FROM_SCRATCH


class ListStore(spotinfer.ReplayStoreModule):
    """A replay store over a Python list, shared by every queue opened on it."""

    def __init__(self):
        self.records = []
        self.syncs = 0
        self.opened = 0
        self.closed = 0

    def configure(self, config):
        self.opened += 1
        return self

    def release(self, instance):
        self.closed += 1

    def recover(self, instance):
        return list(self.records)

    def append(self, instance, record):
        self.records.append(record)
        return len(self.records)

    def sync(self, instance, seq):
        self.syncs += 1

    def stats(self, instance):
        return spotinfer.ReplayStoreStats(appended=len(self.records),
                                          syncs=self.syncs)


def test_replay_store_struct_and_registration_shape():
    store = ListStore()
    with Engine() as e:
        try:
            e.register_replay_store("py-list", store)
        except spotinfer.NotSupportedError:
            pytest.skip("the loaded libspotinfer does not take replay stores yet")
        assert "py-list" in e.module_names("replay_store")
        with pytest.raises(TypeError):
            e.register_replay_store("incomplete", object())


@needs_replay
def test_python_replay_store_round_trip():
    store = ListStore()
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    with Engine() as e:
        try:
            e.register_replay_store("py-list", store)
        except spotinfer.NotSupportedError:
            pytest.skip("the loaded libspotinfer does not take replay stores yet")
        with e.replay_queue({"store": "py-list"}) as q:
            assert q.enqueue(key="k1", body=body, klass=Class.SILVER)
            c = q.claim()
            c.nack()
        assert store.opened == 1 and store.closed == 1
        types = [r.type for r in store.records]
        assert types[0] is spotinfer.ReplayRecordType.ENQUEUE
        assert store.records[0].key == "k1"
        assert store.records[0].envelope.key == "k1"
        assert spotinfer.ReplayRecordType.NACK in types
        # A new queue over the same store recovers the envelope.
        with e.replay_queue({"store": "py-list"}) as q2:
            st = q2.stats()
            assert st.ready[Class.SILVER] + st.delayed == 1


@needs_replay
def test_python_replay_store_reports_repaired():
    class Repairing(ListStore):
        def stats(self, instance):
            return spotinfer.ReplayStoreStats(syncs=self.syncs, repaired=3)

    with Engine() as e:
        try:
            e.register_replay_store("repairing", Repairing())
        except spotinfer.NotSupportedError:
            pytest.skip("the loaded libspotinfer does not take replay stores yet")
        with e.replay_queue({"store": "repairing"}) as q:
            assert q.stats().repaired == 3


@needs_replay
def test_python_replay_store_failure_fails_the_call():
    class Broken(ListStore):
        def append(self, instance, record):
            raise OSError("disk on fire")

    with Engine() as e:
        try:
            e.register_replay_store("broken", Broken())
        except spotinfer.NotSupportedError:
            pytest.skip("the loaded libspotinfer does not take replay stores yet")
        with e.replay_queue({"store": "broken"}) as q:
            with pytest.raises(spotinfer.ModuleFailedError) as ei:
                q.enqueue(key="k", body="{}")
            assert "disk on fire" in ei.value.message
            assert isinstance(ei.value.__cause__, OSError)
            # Not kept past the call that failed.
            assert not getattr(e._st.callback_error, "by_kind", None)


@needs_replay
def test_python_replay_store_failures_are_chained_on_every_call():
    class Flaky(ListStore):
        fail_recover = fail_sync = False

        def recover(self, instance):
            if self.fail_recover:
                raise PermissionError("journal unreadable")
            return super().recover(instance)

        def sync(self, instance, seq):
            if self.fail_sync:
                raise TimeoutError("fsync stalled")
            super().sync(instance, seq)

    store = Flaky()
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    with Engine() as e:
        e.register_replay_store("flaky", store)
        cfg = {"store": "flaky", "fsync": "always"}
        with e.replay_queue(cfg) as q:
            assert q.enqueue(key="k1", body=body)
            store.fail_sync = True
            with pytest.raises(spotinfer.ModuleFailedError) as ei:
                q.enqueue(key="k2", body=body)
            assert isinstance(ei.value.__cause__, TimeoutError)
            store.fail_sync = False
        store.fail_recover = True
        with pytest.raises(spotinfer.ModuleFailedError) as ei:
            e.replay_queue(cfg)
        assert "journal unreadable" in ei.value.message
        assert isinstance(ei.value.__cause__, PermissionError)


@needs_replay
def test_journal_survives_reopen(tmp_path):
    cfg = {"store": "journal", "dir": str(tmp_path), "fsync": "always"}
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    with Engine() as e:
        with e.replay_queue(cfg) as q:
            assert q.enqueue(key="durable", body=body, klass=Class.GOLD,
                             partial_text="par", stream_offset=2)
            assert q.enqueue(key="done", body=body, klass=Class.SILVER)
            c = q.claim(classes=[Class.SILVER])
            c.ack()
            assert q.stats().journal_bytes > 0
        with e.replay_queue(cfg) as q:
            st = q.stats()
            assert st.recovered > 0 and st.torn == 0 and st.truncated_bytes == 0
            assert st.skipped == 0 and st.skipped_bytes == 0 and st.aside_files == 0
            assert st.repaired == 0
            c = q.claim()
            assert c.envelope.key == "durable" and c.envelope.partial_text == "par"
            assert c.envelope.stream_offset == 2
            assert q.claim() is None  # the acked one stays gone
            # An acked key is remembered: enqueueing it again is a duplicate.
            assert not q.enqueue(key="done", body=body, klass=Class.SILVER)


@needs_replay
def test_journal_counts_a_repaired_length(tmp_path):
    # A record whose length field alone was damaged on disk is read back
    # whole, and the stats count it in repaired (in no count of a loss).
    cfg = {"store": "journal", "dir": str(tmp_path), "fsync": "always"}
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    with Engine() as e:
        with e.replay_queue(cfg) as q:
            assert q.enqueue(key="a", body=body, klass=Class.GOLD)
            assert q.enqueue(key="b", body=body, klass=Class.GOLD)
        seg = tmp_path / "000001.log"
        data = bytearray(seg.read_bytes())
        data[8] ^= 0x01  # the first record's length field
        seg.write_bytes(bytes(data))
        with e.replay_queue(cfg) as q:
            st = q.stats()
            assert st.repaired == 1
            assert st.torn == 0 and st.skipped == 0 and st.ready[Class.GOLD] == 2
            assert [q.claim().envelope.key for _ in range(2)] == ["a", "b"]


@_needs("spi_notice_parse_v2")
def test_parse_notice_report_skips_unknown_events():
    body = json.dumps({"DocumentIncarnation": 7, "Events": [
        {"EventId": "N1", "EventType": "LiveMigrate", "EventStatus": "Scheduled",
         "NotBefore": "Sun, 22 Nov 2026 06:30:00 GMT", "Resources": ["vm9"]},
        {"EventId": "P1", "EventType": "Preempt", "EventStatus": "Scheduled",
         "NotBefore": "Sun, 22 Nov 2026 06:00:30 GMT", "Resources": ["vm3"]}]})
    notices, rep = spotinfer.parse_notice_report(NoticeFormat.AZURE_SCHEDULED,
                                                 body, now_ns=NOW)
    assert [n.kind for n in notices] == [NoticeKind.PREEMPT]
    assert notices[0].node == "vm3"
    assert (rep.found, rep.skipped, rep.first_skipped) == (1, 1, 1)
    assert "LiveMigrate" in rep.message
    # The first interface reads the same Preempt.
    assert spotinfer.parse_notice(NoticeFormat.AZURE_SCHEDULED, body,
                                  now_ns=NOW) == notices
    # Malformed is still an error.
    with pytest.raises(spotinfer.ParseError):
        spotinfer.parse_notice_report(NoticeFormat.AZURE_SCHEDULED, "{\"Ev",
                                      now_ns=NOW)
    _, clean = spotinfer.parse_notice_report(
        NoticeFormat.AWS_SCHEDULED, "[]", node="i-1", now_ns=NOW)
    assert (clean.found, clean.skipped, clean.message) == (0, 0, "")


@needs_replay
def test_redis_fallback_journal_counts(tmp_path):
    # "redis" at an address nobody answers, with the fallback journal: the
    # enqueues go to the journal, the engine's metrics text counts them as
    # held, and stats() still returns this process's counts (the same as
    # the metrics text) with the outage flagged (SPI_EIO from C), while a
    # journal queue reads the new fields as 0. Needs libspotinfer_redis
    # beside the library (an installed prefix, the wheel, a build tree).
    cfg = {"store": "redis", "fallback": "journal", "dir": str(tmp_path),
           "store_config": {"address": "127.0.0.1:1", "timeout_ms": 100}}
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    with Engine() as e:
        try:
            q = e.replay_queue(cfg)
        except spotinfer.NotFoundError as err:
            pytest.skip(f"no libspotinfer_redis: {err}")
        with q:
            assert q.enqueue(key="a", body=body) and q.enqueue(key="b", body=body)
            text = e.metrics()
            assert "\nspotinfer_replay_fallback_envelopes 2\n" in text
            assert "\nspotinfer_replay_fallback_enqueued_total 2\n" in text
            assert "\nspotinfer_replay_fallback_moved_total 0\n" in text
            st = q.stats()
            assert st.store_unreachable, st
            assert "replay store \"redis\"" in st.store_error, st.store_error
            assert (st.enqueued, st.duplicates, st.acked, st.nacked) == (2, 0, 0, 0)
            assert (st.fallback_held, st.fallback_enqueued, st.fallback_moved) == (2, 2, 0)
            assert st.ready == (0, 0, 0, 0) and st.leased == 0, st
        assert "\nspotinfer_replay_fallback_envelopes 0\n" in e.metrics()
        with e.replay_queue({"store": "journal", "dir": str(tmp_path / "j")}) as j:
            st = j.stats()
            assert (st.fallback_held, st.fallback_enqueued, st.fallback_moved) == (0, 0, 0)
            assert not st.store_unreachable and st.store_error == "", st
