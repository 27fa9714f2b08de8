"""The Python examples of the documentation run as printed.

docs/bindings.md and this package's README each show one example; both are
read from the page and run, so the pages cannot drift from the binding.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

from conftest import REPO, needs_routing

PAGES = (REPO / "docs" / "bindings.md", REPO / "bindings" / "python" / "README.md")


def first_python_block(page: pathlib.Path) -> str:
    m = re.search(r"^```python\n(.*?)^```$", page.read_text(encoding="utf-8"),
                  re.S | re.M)
    assert m, f"{page} has no python block"
    return m.group(1)


@needs_routing
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_example_runs_as_printed(page: pathlib.Path) -> None:
    if not page.exists():
        pytest.skip(f"{page} is not part of this tree (an unpacked sdist)")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(first_python_block(page), str(page), "exec"), {})
    # The example prints the class, the classifier's reason, the cache key
    # and the spot price of one streamed chat body.
    assert re.match(r"^GOLD rule interactive [0-9a-f]{32} [0-9.e-]+\n$",
                    out.getvalue()), out.getvalue()
