"""The Python examples of the documentation run as printed.

Every ```python block of docs/bindings.md and of this package's README is
read from the page and run on its own (each is a complete program), so the
pages cannot drift from the binding. A page with a block this file does not
expect fails, so a new example cannot go untested.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import re
from typing import List

import pytest

from conftest import REPO, needs_routing

# The first example prints the class, the classifier's reason, the cache key
# and the spot price of one streamed chat body.
_FIRST = r"^GOLD rule interactive [0-9a-f]{32} [0-9.e-]+\n$"

# What each python block of a page prints, in order.
PAGES = {
    REPO / "docs" / "bindings.md": [_FIRST],
    REPO / "bindings" / "python" / "README.md": [
        _FIRST,
        r"^GOLD fast lane\n$",                          # a classifier module
        r"^spot-a fastest / default class silver\n$",   # a policy module
    ],
}


def python_blocks(page: pathlib.Path) -> List[str]:
    return re.findall(r"^```python\n(.*?)^```$", page.read_text(encoding="utf-8"),
                      re.S | re.M)


@needs_routing
@pytest.mark.parametrize("page", list(PAGES), ids=lambda p: str(p.relative_to(REPO)))
def test_examples_run_as_printed(page: pathlib.Path) -> None:
    if not page.exists():
        pytest.skip(f"{page} is not part of this tree (an unpacked sdist)")
    blocks = python_blocks(page)
    expected = PAGES[page]
    assert len(blocks) == len(expected), (
        f"{page} has {len(blocks)} python blocks, this test expects "
        f"{len(expected)}: add what the new one prints to PAGES")
    for i, (block, want) in enumerate(zip(blocks, expected), 1):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, f"{page}, python block {i}", "exec"), {})
        assert re.match(want, out.getvalue()), (i, out.getvalue())
