"""Every row of FUNCTIONS passes its arguments and reads its result as the
prototype in the headers declares them: same count, and each scalar of the
same size and signedness (a pointer where the prototype has one). A wrong
width would pass garbage or cut a value without any error."""

from __future__ import annotations

import ctypes
import re

import pytest

from spotinfer import _native

from conftest import INCLUDE

_SCALARS = {"int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32,
            "int64_t": ctypes.c_int64, "uint64_t": ctypes.c_uint64,
            "size_t": ctypes.c_size_t, "double": ctypes.c_double,
            "int": ctypes.c_int}


def _prototypes() -> dict:
    out = {}
    for h in ("spotinfer.h", "spotinfer_module.h", "spotinfer_extras.h"):
        text = re.sub(r"/\*.*?\*/", "", (INCLUDE / "spotinfer" / h).read_text(),
                      flags=re.S)
        for m in re.finditer(r"SPI_API\s+([^;{#]*?)\b(spi_\w+)\s*\(([^;]*?)\)\s*;",
                             text, re.S):
            params = [" ".join(p.split()) for p in m.group(3).split(",")]
            out[m.group(2)] = (" ".join(m.group(1).split()),
                               [] if params == ["void"] else params)
    return out


PROTOTYPES = _prototypes()


def _c_kind(decl: str) -> str:
    d = decl.replace("const ", "").strip()
    if "*" in d or d.split()[0].endswith("_fn"):
        return "pointer"
    typ = d.split()[0]
    if typ == "void":
        return "void"
    if typ not in _SCALARS:
        return "unknown " + typ
    return _kind_of(_SCALARS[typ], typ)


def _kind_of(ct, name: str = "") -> str:
    if ct is None:
        return "void"
    if ct is ctypes.c_double:
        return "double"
    for typ, c in _SCALARS.items():
        if ct is c:
            unsigned = typ.startswith("u") or typ == "size_t"
            return f"{'u' if unsigned else 's'}{ctypes.sizeof(c) * 8}"
    return "pointer"


@pytest.mark.parametrize("row", _native.FUNCTIONS, ids=lambda r: r[0])
def test_row_matches_prototype(row):
    name, restype, argtypes = row[0], row[1], row[2]
    assert name in PROTOTYPES, f"{name} has no prototype in the headers"
    ret, params = PROTOTYPES[name]
    assert _kind_of(restype) == _c_kind(ret + " x"), f"{name} result"
    assert len(argtypes) == len(params), f"{name}: argument count"
    for i, (ct, decl) in enumerate(zip(argtypes, params)):
        assert _kind_of(ct) == _c_kind(decl), f"{name} argument {i}: {decl}"
