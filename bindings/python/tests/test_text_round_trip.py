"""Text the binding reads back from the library keeps the exact bytes it
was given: a str made from non-UTF-8 bytes (surrogateescape, as every other
field reads back) handed in again names the same tenant or machine, not one
whose bytes were replaced by U+FFFD."""

from __future__ import annotations

import json

import spotinfer
from spotinfer import (Engine, NodeState, NoticeFormat, NoticeKind, Pool)

NOW = 1_700_000_000 * 1_000_000_000
SEC = 1_000_000_000
NODE = b"i-\xfe1".decode("utf-8", "surrogateescape")
TENANT = b"acme-\xff".decode("utf-8", "surrogateescape")


def test_envelope_tenant_round_trips_non_utf8_bytes(engine):
    with engine.replay_queue() as q:
        assert q.enqueue(key="k1", body='{"model":"m","messages":[]}',
                         tenant=TENANT)
        c = q.claim()
        assert c.envelope.tenant == TENANT
        assert c.envelope.tenant.encode("utf-8", "surrogateescape") == b"acme-\xff"
        c.ack()


def test_parsed_notice_for_a_non_utf8_node_reaches_that_node():
    with Engine(clock=lambda: NOW) as e:
        e.upsert_replica(id="spot-a", pool=Pool.SPOT, usd_per_hour=2.0,
                         max_inflight=16, node=NODE)
        body = json.dumps({"action": "terminate", "time": "2023-11-14T22:15:20Z"})
        notices = spotinfer.parse_notice(NoticeFormat.AWS_INSTANCE_ACTION, body,
                                         node=NODE, now_ns=NOW)
        assert len(notices) == 1 and notices[0].node == NODE
        assert notices[0].kind is NoticeKind.TERMINATE
        e.notice(notices[0])
        assert e.node_state(NODE) is NodeState.NOTICED


def test_ledger_tenant_round_trips_non_utf8_bytes():
    with Engine(clock=lambda: NOW) as e:
        e.upsert_replica(id="spot-a", pool=Pool.SPOT, usd_per_hour=2.0,
                         max_inflight=16)
        r = e.request(model="m", messages=[("user", "hello")])
        r.tenant = TENANT
        d = r.route()
        d.ticket.finish(prompt_tokens=10, output_tokens=5)
        assert [row.tenant for row in e.ledger()] == [TENANT]
