"""The ctypes struct mirrors match the C compiler's layout, field by field.

A small C program, generated from the Structure definitions, prints sizeof
and offsetof for every struct and field as the C compiler sees them in the
public headers of this repository; another prints the constants the binding
copies (array sizes, flags, SPI_SUMMARY_INDEX).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import pytest

import spotinfer
from spotinfer import _native

from conftest import INCLUDE


def _header_structs() -> set:
    import re
    names = set()
    for h in ("spotinfer.h", "spotinfer_module.h", "spotinfer_extras.h"):
        text = re.sub(r"/\*.*?\*/", "", (INCLUDE / "spotinfer" / h).read_text(),
                      flags=re.S)
        names.update(re.findall(r"typedef struct (spi_\w+) \{", text))
    return names


HEADER_STRUCTS = _header_structs()


def _c_program() -> str:
    lines = ['#include <stddef.h>', '#include <stdio.h>',
             '#include "spotinfer/spotinfer_module.h"',
             '#include "spotinfer/spotinfer_extras.h"', 'int main(void) {']
    for s in _native.STRUCTS:
        if s._c_name_ not in HEADER_STRUCTS:
            continue
        c = s._c_name_
        lines.append(f'  printf("{c} %zu\\n", sizeof({c}));')
        for f in s._fields_:
            lines.append(f'  printf("{c}.{f[0]} %zu %zu\\n", '
                         f'offsetof({c}, {f[0]}), sizeof((({c} *)0)->{f[0]}));')
    lines += ['  return 0;', '}']
    return "\n".join(lines) + "\n"


def _compile_and_run(tmp_path_factory, name: str, program: str) -> dict:
    """Compile program against this tree's headers, run it, and read its
    "name number..." lines."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") \
        or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler to compare with")
    d = tmp_path_factory.mktemp(name)
    src = d / f"{name}.c"
    src.write_text(program)
    exe = d / name
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", f"-I{INCLUDE}",
                    str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True,
                         text=True).stdout
    table = {}
    for line in out.splitlines():
        key, *nums = line.split()
        table[key] = tuple(int(n) for n in nums)
    return table


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    return _compile_and_run(tmp_path_factory, "layout", _c_program())


# Constants of spotinfer_module.h the binding mirrors: (C name, Python value).
MODULE_CONSTANTS = (
    ("SPI_MAX_FALLBACKS", _native.MAX_FALLBACKS),
    ("SPI_MODULE_ABI_VERSION", _native.MODULE_ABI_VERSION),
    ("SPI_SUMMARY_TOP", _native.SUMMARY_TOP),
    ("SPI_SUMMARY_CELLS", _native.SUMMARY_CELLS),
    ("SPI_POLICY_SUMMARIES_ONLY", _native.POLICY_SUMMARIES_ONLY),
    ("SPI_MAX_EXCLUDED", _native.MAX_EXCLUDED),  # spotinfer.h, included by it
)


def _header_text() -> str:
    return "".join((INCLUDE / "spotinfer" / h).read_text()
                   for h in ("spotinfer.h", "spotinfer_module.h", "spotinfer_extras.h"))


@pytest.fixture(scope="module")
def c_constants(tmp_path_factory):
    text = _header_text()
    lines = ['#include <stdio.h>', '#include "spotinfer/spotinfer_module.h"',
             '#include "spotinfer/spotinfer_extras.h"',
             'int main(void) {']
    for c, _ in MODULE_CONSTANTS:
        if c in text:
            lines.append(f'  printf("{c} %lld\\n", (long long)({c}));')
    if "SPI_SUMMARY_INDEX" in text:
        for pool in range(-1, 5):
            for tier in range(-1, 4):
                lines.append(f'  printf("SPI_SUMMARY_INDEX({pool},{tier}) %d\\n", '
                             f'(int)SPI_SUMMARY_INDEX({pool}, {tier}));')
    lines += ['  return 0;', '}']
    return _compile_and_run(tmp_path_factory, "constants", "\n".join(lines) + "\n")


@pytest.mark.parametrize("struct", _native.STRUCTS, ids=lambda s: s._c_name_)
def test_layout_matches_c(struct, c_layout):
    c = struct._c_name_
    if c not in HEADER_STRUCTS:
        # The binding may know structs of a newer header than the one in
        # this tree; they are checked where that header is.
        pytest.skip(f"{c} is not in this tree's headers")
    assert ctypes.sizeof(struct) == c_layout[c][0], f"sizeof({c})"
    for f in struct._fields_:
        desc = getattr(struct, f[0])
        assert (desc.offset, desc.size) == c_layout[f"{c}.{f[0]}"], f"{c}.{f[0]}"


def test_every_public_struct_is_mirrored():
    assert HEADER_STRUCTS - {s._c_name_ for s in _native.STRUCTS} == set()


def test_struct_size_is_set_automatically():
    for s in _native.STRUCTS:
        obj = s()
        if "struct_size" in [f[0] for f in s._fields_]:
            assert obj.struct_size == ctypes.sizeof(s), s._c_name_
        if "abi_version" in [f[0] for f in s._fields_]:
            assert obj.abi_version == 1


@pytest.mark.parametrize("name,value", MODULE_CONSTANTS, ids=[c for c, _ in MODULE_CONSTANTS])
def test_constants_match_c(name, value, c_constants):
    if name not in c_constants:
        pytest.skip(f"{name} is not in this tree's headers")
    assert c_constants[name] == (value,), name


def test_summary_index_matches_c(c_constants):
    keys = [k for k in c_constants if k.startswith("SPI_SUMMARY_INDEX(")]
    if not keys:
        pytest.skip("SPI_SUMMARY_INDEX is not in this tree's headers")
    for k in keys:
        pool, tier = (int(x) for x in k[len("SPI_SUMMARY_INDEX("):-1].split(","))
        assert _native.summary_index(pool, tier) == c_constants[k][0], k
        assert spotinfer.summary_index(pool, tier) == c_constants[k][0], k
    # Every cell once, in the order the summaries come in.
    cells = sorted(c_constants[k][0] for k in keys if c_constants[k][0] >= 0)
    assert cells == list(range(_native.SUMMARY_CELLS))
    assert spotinfer.summary_index("on_demand", spotinfer.ModelTier.SMALL) == 2
    assert spotinfer.PolicyFlags.SUMMARIES_ONLY == _native.POLICY_SUMMARIES_ONLY
    assert spotinfer.SUMMARY_TOP == _native.SUMMARY_TOP
    assert spotinfer.SUMMARY_CELLS == _native.SUMMARY_CELLS
