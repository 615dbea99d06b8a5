"""The wheel repair: its decisions on any host, and its ELF edits on real shared objects."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import manylinux_repair as repair  # noqa: E402

needs_cxx = pytest.mark.skipif(not shutil.which("g++"), reason="needs g++")


@pytest.mark.parametrize("glibc, accepts", [((2, 36), False), ((2, 38), False),
                                            ((2, 39), True), ((2, 40), True), ((3, 0), True)])
def test_pip_accepts_manylinux_2_39_only_from_glibc_2_39(glibc, accepts):
    assert repair.pip_accepts_wheels(glibc) is accepts


def _need(lib, version, flags=0):
    return (lib, version, flags, 0)


def test_missing_versions_on_an_old_host():
    needs = [_need("libc.so.6", "GLIBC_2.2.5"), _need("libc.so.6", "GLIBC_2.38"),
             _need("libstdc++.so.6", "GLIBCXX_3.4.32"), _need("libstdc++.so.6", "CXXABI_1.3.15"),
             _need("libm.so.6", "GLIBC_2.99")]  # a library the repair does not look at
    provided = {"libc.so.6": {"GLIBC_2.2.5", "GLIBC_2.36"},
                "libstdc++.so.6": {"GLIBCXX_3.4.30", "CXXABI_1.3.13"}}
    assert repair.missing_versions(needs, provided) == {
        "GLIBC_2.38", "GLIBCXX_3.4.32", "CXXABI_1.3.15"}


def test_nothing_missing_on_a_new_host_or_after_the_repair():
    needs = [_need("libc.so.6", "GLIBC_2.38"), _need("libstdc++.so.6", "GLIBCXX_3.4.32")]
    new_host = {"libc.so.6": {"GLIBC_2.38", "GLIBC_2.39"}, "libstdc++.so.6": {"GLIBCXX_3.4.32"}}
    assert repair.missing_versions(needs, new_host) == set()
    weak = [_need("libc.so.6", "GLIBC_2.38", repair.VER_FLG_WEAK)]
    assert repair.missing_versions(weak, {"libc.so.6": set()}) == set()


def test_compat_source_covers_only_what_is_missing_and_refuses_the_unknown():
    source = repair.compat_source({"GLIBC_2.38"})
    assert "__isoc23_strtoull" in source and "ios_base_library_init" not in source
    with pytest.raises(repair.RepairError, match="GLIBC_2.41"):
        repair.compat_source({"GLIBC_2.38", "GLIBC_2.41"})


def test_host_libraries_define_their_base_versions():
    libc = repair.version_defs(repair.host_library("libc.so.6").read_bytes())
    assert "GLIBC_2.2.5" in libc
    assert ("GLIBC_%d.%d" % repair.host_glibc()) in libc


@needs_cxx
def test_compat_library_defines_the_symbols(tmp_path):
    lib = tmp_path / repair.COMPAT_LIB
    repair.build_compat_lib(set(repair.REPAIRABLE), lib)
    handle = ctypes.CDLL(str(lib))
    strtoull = handle.__isoc23_strtoull
    strtoull.restype, strtoull.argtypes = ctypes.c_ulonglong, [ctypes.c_char_p, ctypes.c_void_p,
                                                               ctypes.c_int]
    assert strtoull(b"18446744073709551615", None, 10) == 2**64 - 1
    for symbol in ("_ZSt21ios_base_library_initv", "__cxa_call_terminate"):
        assert hasattr(handle, symbol)


@needs_cxx
def test_mark_weak_edits_only_the_named_version_need_and_the_library_still_loads(tmp_path):
    source = tmp_path / "probe.c"
    source.write_text("#include <stdlib.h>\nlong probe(const char* s) { return strtol(s, 0, 10); }\n")
    lib = tmp_path / "libprobe.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    before = repair.version_needs(lib.read_bytes())
    assert ("libc.so.6", "GLIBC_2.2.5") in [(l, v) for l, v, _, _ in before]
    assert repair.mark_weak(lib, {"GLIBC_2.2.5"}) == ["GLIBC_2.2.5"]
    assert repair.mark_weak(lib, {"GLIBC_2.2.5"}) == []  # idempotent
    flags = {v: f for _, v, f, _ in repair.version_needs(lib.read_bytes())}
    assert flags["GLIBC_2.2.5"] & repair.VER_FLG_WEAK
    assert ctypes.CDLL(str(lib)).probe(b"42") == 42


def test_the_installed_extensions_import():
    """The proof `make setup` ends with: both extension modules import in this environment."""
    repair.verify_imports()
