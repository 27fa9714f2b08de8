"""The ctypes struct mirrors match the C compiler's layout, field by field.

A small C program, generated from the Structure definitions, prints sizeof
and offsetof for every struct and field as the C compiler sees them in the
public headers of this repository.
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
    for h in ("spotinfer.h", "spotinfer_module.h"):
        text = re.sub(r"/\*.*?\*/", "", (INCLUDE / "spotinfer" / h).read_text(),
                      flags=re.S)
        names.update(re.findall(r"typedef struct (spi_\w+) \{", text))
    return names


HEADER_STRUCTS = _header_structs()


def _c_program() -> str:
    lines = ['#include <stddef.h>', '#include <stdio.h>',
             '#include "spotinfer/spotinfer_module.h"', 'int main(void) {']
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


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") \
        or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler to compare struct layouts with")
    d = tmp_path_factory.mktemp("layout")
    src = d / "layout.c"
    src.write_text(_c_program())
    exe = d / "layout"
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", f"-I{INCLUDE}",
                    str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True,
                         text=True).stdout
    layout = {}
    for line in out.splitlines():
        name, *nums = line.split()
        layout[name] = tuple(int(n) for n in nums)
    return layout


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
