"""Shared fixtures of the spotinfer binding tests.

The tests load the library the environment points at (SPOTINFER_LIBRARY or
the loader path), i.e. the one the CMake build installed, and read the C
headers and golden vectors from this repository.
"""

from __future__ import annotations

import pathlib
from typing import Iterator

import pytest

import spotinfer

REPO = pathlib.Path(__file__).resolve().parents[3]
INCLUDE = REPO / "include"
GOLDEN = REPO / "tests" / "golden" / "cache_key_vectors.json"

ROUTING_FUNCTIONS = ("spi_route", "spi_replica_upsert", "spi_ticket_finish",
                     "spi_ledger_count", "spi_engine_metrics",
                     "spi_engine_signals", "spi_metrics_parse")


def routing_available() -> bool:
    return all(spotinfer.lib.has(f) for f in ROUTING_FUNCTIONS)


needs_routing = pytest.mark.skipif(
    not routing_available(),
    reason="the loaded libspotinfer does not export the routing functions: "
    + ", ".join(f for f in ROUTING_FUNCTIONS if not spotinfer.lib.has(f)))


@pytest.fixture
def engine() -> Iterator[spotinfer.Engine]:
    with spotinfer.Engine() as e:
        yield e


CHAT_BODY = {
    "model": "llama-3.1-70b",
    "stream": True,
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello"},
    ],
}
