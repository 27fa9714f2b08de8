"""Finding the library, the function table, versions, names."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
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


def _run_with_env(env_updates: dict, code: str = "import spotinfer",
                  pythonpath: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(env_updates)
    env["PYTHONPATH"] = os.pathsep.join(
        [pythonpath or str(REPO / "bindings" / "python")] + sys.path)
    # Run from / so that the current directory (first on sys.path under -c)
    # holds no other copy of the package.
    return subprocess.run([sys.executable, "-c", code], cwd="/",
                          env=env, capture_output=True, text=True)


# Imports, then makes a first call and prints what it raised.
_FIRST_CALL = """
import spotinfer
assert not spotinfer.lib.loaded
try:
    spotinfer.Engine()
except spotinfer.LibraryNotFoundError as e:
    print("LibraryNotFoundError:", e)
else:
    print("loaded", spotinfer.lib.path)
"""


def test_import_does_not_load_the_library():
    r = _run_with_env({"SPOTINFER_LIBRARY": "/nonexistent/libspotinfer.so.0"},
                      "import spotinfer, spotinfer.cost, spotinfer.modules\n"
                      "print(spotinfer.lib.loaded)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_bad_override_is_a_clear_error():
    r = _run_with_env({"SPOTINFER_LIBRARY": "/nonexistent/libspotinfer.so.0"},
                      _FIRST_CALL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("LibraryNotFoundError:"), r.stdout
    assert "SPOTINFER_LIBRARY='/nonexistent/libspotinfer.so.0'" in r.stdout


def test_not_found_names_what_was_tried():
    r = _run_with_env({"SPOTINFER_LIBRARY": "", "LD_LIBRARY_PATH": "/nonexistent"},
                      _FIRST_CALL)
    assert r.returncode == 0, r.stderr
    if r.stdout.startswith("loaded"):
        pytest.skip("libspotinfer.so.0 is installed system-wide")
    assert r.stdout.startswith("LibraryNotFoundError:"), r.stdout
    assert "libspotinfer.so.0" in r.stdout and "SPOTINFER_LIBRARY" in r.stdout
    assert "pip install" in r.stdout and "ldconfig" in r.stdout


def test_failed_load_is_tried_again():
    # The first use fails; once the environment names the library, the next
    # use loads it (nothing of the failed attempt sticks).
    code = _FIRST_CALL + """
import os
os.environ["SPOTINFER_LIBRARY"] = %r
print(spotinfer.library_version == spotinfer.lib.version, spotinfer.lib.loaded)
""" % spotinfer.lib.path
    r = _run_with_env({"SPOTINFER_LIBRARY": "/nonexistent/libspotinfer.so.0"},
                      code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "True True", r.stdout


def _library_needing(tmp_path, soname: str) -> str:
    """A stand-in libspotinfer.so.0 that needs soname, which is then removed,
    so loading it fails as it does on a machine without that package."""
    cc = os.environ.get("CC", "cc")
    dep = tmp_path / soname
    stub = tmp_path / "libspotinfer.so.0"
    (tmp_path / "dep.c").write_text("int spi_test_dep(void) { return 1; }\n")
    (tmp_path / "stub.c").write_text(
        "int spi_test_dep(void);\nint spi_version_number(void) "
        "{ return spi_test_dep(); }\n")
    try:
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(dep),
                        f"-Wl,-soname,{soname}", str(tmp_path / "dep.c")],
                       check=True, capture_output=True)
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(stub),
                        str(tmp_path / "stub.c"), str(dep)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no C compiler to build a stand-in library: {e}")
    dep.unlink()
    return str(stub)


# A dependency no machine has, so that the loader fails on it as it does on
# libcjson.so.1 where libcjson1 is not installed; the subprocess adds it to
# the table of dependencies the error message knows.
_FAKE_DEP = ("libspotinfer-testdep.so.7", "libspotinfer-testdep7")
_WITH_FAKE_DEP = ("from spotinfer import _native\n"
                  f"_native.RUNTIME_DEPENDENCIES += ({_FAKE_DEP!r},)\n")


def test_missing_dependency_names_the_package(tmp_path):
    stub = _library_needing(tmp_path, _FAKE_DEP[0])
    r = _run_with_env({"SPOTINFER_LIBRARY": stub}, _WITH_FAKE_DEP + _FIRST_CALL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("LibraryNotFoundError:"), r.stdout
    assert _FAKE_DEP[0] in r.stdout
    assert f"apt-get install {_FAKE_DEP[1]}" in r.stdout


def test_missing_dependency_of_the_bundled_copy(tmp_path):
    # The same, for the copy a wheel carries beside the package.
    (tmp_path / "lib").mkdir()
    stub = _library_needing(tmp_path / "lib", _FAKE_DEP[0])
    pkg = tmp_path / "site" / "spotinfer"
    shutil.copytree(REPO / "bindings" / "python" / "spotinfer", pkg,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so*"))
    shutil.copy(stub, pkg / "libspotinfer.so.0")
    r = _run_with_env({"SPOTINFER_LIBRARY": "", "LD_LIBRARY_PATH": "/nonexistent"},
                      _WITH_FAKE_DEP + _FIRST_CALL,
                      pythonpath=str(tmp_path / "site"))
    assert r.returncode == 0, r.stderr
    if r.stdout.startswith("loaded libspotinfer.so.0"):
        pytest.skip("libspotinfer.so.0 is installed system-wide")
    assert r.stdout.startswith("LibraryNotFoundError:"), r.stdout
    assert str(pkg / "libspotinfer.so.0") in r.stdout
    assert f"apt-get install {_FAKE_DEP[1]}" in r.stdout


def test_dependency_table_matches_the_library():
    # Every library the loaded libspotinfer needs, beyond the C library
    # itself, has a package named in the error message, and no more.
    try:
        out = subprocess.run(["readelf", "-d", spotinfer.lib.path],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no readelf to list the library's dependencies: {e}")
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))
    libc = {n for n in needed
            if re.match(r"lib(c|m|pthread|dl|rt)\.so\.\d+$|ld-linux", n)}
    assert {s for s, _ in _native.RUNTIME_DEPENDENCIES} == needed - libc


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


def test_redis_store_beside_the_library_names_its_missing_dependency(tmp_path):
    # "store": "redis" loads libspotinfer_redis.so.0 from the directory of
    # the libspotinfer that runs (where a wheel puts it) before the loader's
    # path. A copy there that cannot load (its hiredis missing) is named
    # with the loader's reason, not hidden by the search that follows.
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(spotinfer.lib.path, lib / "libspotinfer.so.0")
    stand_in = _library_needing(tmp_path, _FAKE_DEP[0])
    shutil.move(stand_in, lib / "libspotinfer_redis.so.0")
    code = """
import spotinfer
from spotinfer.replay import ReplayQueue
try:
    ReplayQueue(spotinfer.Engine(), {"store": "redis"})
except spotinfer.NotFoundError as e:
    print("NotFoundError:", e)
else:
    print("opened")
"""
    r = _run_with_env({"SPOTINFER_LIBRARY": str(lib / "libspotinfer.so.0"),
                       "LD_LIBRARY_PATH": "/nonexistent"}, code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("NotFoundError:"), r.stdout
    assert "libspotinfer_redis.so.0" in r.stdout and "libhiredis" in r.stdout
    assert "the one beside libspotinfer: " + _FAKE_DEP[0] in r.stdout, r.stdout
