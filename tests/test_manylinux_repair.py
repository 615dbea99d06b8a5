"""The wheel repair: its decisions on any host, and its ELF edits on real shared objects."""
from __future__ import annotations

import base64
import csv
import ctypes
import email.parser
import hashlib
import shutil
import subprocess
import sys
import zipfile
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


# ----------------------------------------------------------------------------- locked wheels

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"


def test_the_lock_gives_a_version_and_hashes_for_each_repaired_wheel():
    pins = repair.locked_requirements(LOCK)
    for dist in repair.PACKAGES:
        version, hashes = pins[dist]
        assert version == "1.21.0" and hashes and all(len(h) == 64 for h in hashes)
    assert pins["tensorflow"][0] == "2.21.0"  # names are normalised, every pin is read


def test_a_lock_without_hashes_is_refused(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("ml-metadata==1.21.0\ntensorflow-data-validation==1.21.0 \\\n"
                    "    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(repair.RepairError, match="no --hash for ml-metadata"):
        repair.locked_requirements(lock)


def _wheel(directory: Path, platform: str) -> Path:
    """A minimal real wheel (module, METADATA, WHEEL, RECORD) tagged ``platform``."""
    files = {"probe_mod.py": b"VALUE = 42\n",
             "probe_mod-1.0.dist-info/METADATA": (b"Metadata-Version: 2.1\nName: probe-mod\n"
                                                  b"Version: 1.0\n"),
             "probe_mod-1.0.dist-info/WHEEL": ("Wheel-Version: 1.0\nGenerator: test\n"
                                               "Root-Is-Purelib: false\n"
                                               f"Tag: cp311-cp311-{platform}\n\n").encode()}
    record = "".join(f"{name},sha256={_b64_sha256(data)},{len(data)}\n"
                     for name, data in files.items()) + "probe_mod-1.0.dist-info/RECORD,,\n"
    path = directory / f"probe_mod-1.0-cp311-cp311-{platform}.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for name, data in {**files, "probe_mod-1.0.dist-info/RECORD": record.encode()}.items():
            whl.writestr(name, data)
    return path


def _b64_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _record_matches(wheel: Path) -> bool:
    with zipfile.ZipFile(wheel) as whl:
        record = next(n for n in whl.namelist() if n.endswith(".dist-info/RECORD"))
        for name, digest, size in csv.reader(whl.read(record).decode().splitlines()):
            if digest:
                data = whl.read(name)
                if digest != f"sha256={_b64_sha256(data)}" or int(size) != len(data):
                    return False
    return True


def test_a_wheel_whose_hash_is_not_locked_is_refused_before_retagging(tmp_path):
    whl = _wheel(tmp_path, "manylinux_2_39_x86_64")
    good = hashlib.sha256(whl.read_bytes()).hexdigest()
    repair.check_sha256(whl, {good, "f" * 64})
    whl.write_bytes(whl.read_bytes() + b"\0")  # one byte more: another file
    with pytest.raises(repair.RepairError,
                       match=rf"{whl.name}: sha256 \w+ is none of the lock's 1 hashes"):
        repair.check_sha256(whl, {good})


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the probe wheel is tagged cp311")
def test_a_retagged_wheel_is_consistent_and_pip_installs_it_from_its_path(tmp_path):
    original = _wheel(tmp_path, "manylinux_2_39_x86_64")
    retagged = repair.retag(original, "linux_x86_64")
    assert retagged.name == "probe_mod-1.0-cp311-cp311-linux_x86_64.whl"
    assert original.exists() and _record_matches(retagged)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--target", str(target), str(retagged)], check=True)
    assert (target / "probe_mod.py").read_text() == "VALUE = 42\n"
    wheel_meta = email.parser.Parser().parsestr((target / "probe_mod-1.0.dist-info" / "WHEEL")
                                                .read_text())
    assert wheel_meta.get_all("Tag") == ["cp311-cp311-linux_x86_64"]  # what `pip check` reads
