"""Finding the library, the function table, versions, names."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys

import pytest

import spotinfer
from spotinfer import _native

from conftest import INCLUDE, REPO


def _header_functions() -> set:
    names = set()
    for h in ("spotinfer.h", "spotinfer_module.h", "spotinfer_extras.h"):
        text = (INCLUDE / "spotinfer" / h).read_text()
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        names.update(re.findall(r"\bSPI_API\b[^;(]*?\b(spi_\w+)\s*\(", text))
    return names


def test_table_covers_every_header_function():
    declared = _header_functions()
    assert len(declared) > 40
    table = {row[0] for row in _native.FUNCTIONS}
    assert declared - table == set(), "functions without a binding"
    # The table may know functions of a newer header than this tree's;
    # the loaded library then lacks them too and they raise NotSupportedError.
    for name in table - declared:
        assert not spotinfer.lib.has(name), f"{name} is exported but not declared"
    assert len(table) == len(_native.FUNCTIONS), "a function is declared twice"


def test_every_row_sets_restype_and_argtypes():
    for row in _native.FUNCTIONS:
        name, restype, argtypes = row[0], row[1], row[2]
        assert isinstance(argtypes, tuple), name
        if not spotinfer.lib.has(name):
            continue
        fn = getattr(spotinfer.lib, name)
        assert fn.restype is restype, name
        assert list(fn.argtypes) == list(argtypes), name
        # Functions that return a status have an errcheck; others do not.
        if restype is ctypes.c_int:
            assert fn.errcheck is not None, name


def test_exported_symbols_are_all_bound():
    # Every spi_ function the loaded library exports has a row.
    exported = _exported_functions()
    if exported is None:
        pytest.skip("no nm to list the library's symbols")
    table = {row[0] for row in _native.FUNCTIONS}
    assert exported - table == set(), "exported functions without a binding"
    assert {n for n in table if spotinfer.lib.has(n)} == exported & table


def _exported_functions():
    import shutil
    nm = shutil.which("nm")
    if not nm:
        return None
    out = subprocess.run([nm, "-D", "--defined-only", spotinfer.lib.path],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    names = set()
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "T" and parts[2].startswith("spi_"):
            names.add(parts[2].split("@")[0])
    return names


def test_version_agrees():
    header = (INCLUDE / "spotinfer" / "spotinfer.h").read_text()
    major = int(re.search(r"#define SPI_VERSION_MAJOR (\d+)", header).group(1))
    minor = int(re.search(r"#define SPI_VERSION_MINOR (\d+)", header).group(1))
    patch = int(re.search(r"#define SPI_VERSION_PATCH (\d+)", header).group(1))
    assert spotinfer.library_version == f"{major}.{minor}.{patch}"
    assert spotinfer.library_version_number == major * 10000 + minor * 100 + patch


def test_names():
    assert spotinfer.strerror(0) == "ok" or spotinfer.strerror(0)
    assert spotinfer.strerror(-20)
    assert spotinfer.strerror(-12345) == "unknown status"
    assert spotinfer.class_name(spotinfer.Class.GOLD) == "gold"
    assert spotinfer.class_name(99) == "invalid"
    assert spotinfer.service_tier_name(spotinfer.ServiceTier.FLEX) == "flex"
    assert spotinfer.service_tier_name(0) == ""
    assert spotinfer.module_kind_name(spotinfer.ModuleKind.COST_MODEL) == "cost_model"


def _run_with_env(env_updates: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(env_updates)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "bindings" / "python")] + sys.path)
    return subprocess.run([sys.executable, "-c", "import spotinfer"],
                          env=env, capture_output=True, text=True)


def test_bad_override_is_a_clear_error():
    r = _run_with_env({"SPOTINFER_LIBRARY": "/nonexistent/libspotinfer.so.0"})
    assert r.returncode != 0
    assert "LibraryNotFoundError" in r.stderr
    assert "SPOTINFER_LIBRARY='/nonexistent/libspotinfer.so.0'" in r.stderr


def test_not_found_names_what_was_tried():
    r = _run_with_env({"SPOTINFER_LIBRARY": "", "LD_LIBRARY_PATH": "/nonexistent"})
    if r.returncode == 0:
        pytest.skip("libspotinfer.so.0 is installed system-wide")
    assert "LibraryNotFoundError" in r.stderr
    assert "libspotinfer.so.0" in r.stderr and "SPOTINFER_LIBRARY" in r.stderr


def test_override_is_used():
    path = spotinfer.lib.path
    r = _run_with_env({"SPOTINFER_LIBRARY": path})
    assert r.returncode == 0, r.stderr


def test_missing_function_raises_not_supported(monkeypatch):
    lib = spotinfer.lib
    stub = lib._missing_stub("spi_does_not_exist")
    with pytest.raises(spotinfer.NotSupportedError) as ei:
        stub()
    assert ei.value.code == -62
    assert "spi_does_not_exist" in str(ei.value)
