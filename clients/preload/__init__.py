"""The preload library that turns /dev/dri/card0 into an xed device, and its build.

The C sources ship beside this module (package data). They are compiled on first use
with the system C compiler into a cache keyed by a hash of the sources and flags:
`$XDG_CACHE_HOME/xed/preload-<hash>/libxed-preload.so` (`~/.cache/xed/...` without
XDG_CACHE_HOME). So a plain `pip install .` works on any machine with `cc`, a changed
source is rebuilt, and two builds racing each other both end with the same file
(each writes its own and renames it into place).

    python -m clients.preload      # build (if needed) and print the library's path
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
LIBRARY = "libxed-preload.so"
CFLAGS = ("-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-fPIC", "-pthread", "-shared")
# what the library exports (the libc functions it stands in for) is listed in one place
EXPORTS = "exports.map"
EX_UNAVAILABLE = 69  # sysexits.h: no C compiler here
EX_SOFTWARE = 70  # the sources do not compile: a bug of ours


class BuildError(Exception):
    """The library cannot be built; `status` is the exit status to leave with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.c"))


def headers() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.h"))


def compiler() -> str:
    """$CC if set, else the system's `cc`."""
    return os.environ.get("CC", "cc")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xed"


def _digest(cc: str) -> str:
    h = hashlib.sha256()
    for path in [*sources(), *headers(), SOURCE_DIR / EXPORTS]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(" ".join((cc, *CFLAGS)).encode())
    return h.hexdigest()[:16]


def library_path() -> Path:
    """Where the library for the current sources lives (built or not)."""
    return cache_dir() / f"preload-{_digest(compiler())}" / LIBRARY


def build() -> Path:
    """The library for the current sources, compiled now if the cache has none."""
    cc = compiler()
    target = library_path()
    if target.exists():
        return target
    if shutil.which(cc) is None:
        raise BuildError(
            f"cannot build the preload library: no C compiler {cc!r} on PATH "
            "(install one, e.g. `apt-get install gcc`, or set CC)",
            EX_UNAVAILABLE,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    exports = f"-Wl,--version-script={SOURCE_DIR / EXPORTS}"
    command = [cc, *CFLAGS, exports, "-o", partial, *map(str, sources())]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise BuildError(
                f"cannot build the preload library ({' '.join(command)}):\n{done.stderr}",
                EX_SOFTWARE,
            )
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def build_program(name: str) -> Path:
    """A C program of bench/ (NAME.c), built beside the library it is run under."""
    cc = compiler()
    source = SOURCE_DIR / "bench" / f"{name}.c"
    target = library_path().parent / name
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    if shutil.which(cc) is None:
        raise BuildError(f"cannot build {name}: no C compiler {cc!r} on PATH", EX_UNAVAILABLE)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{name}-")
    os.close(fd)
    command = [cc, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{SOURCE_DIR}",
               "-o", partial, str(source)]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise BuildError(f"cannot build {name}:\n{done.stderr}", EX_SOFTWARE)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def main() -> int:
    """Build (if needed) and print the library's path; a BuildError's status if not."""
    try:
        print(build())
    except BuildError as exc:
        print(f"xed preload: {exc}", file=sys.stderr)
        return exc.status
    return 0
