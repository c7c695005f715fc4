"""Binary packages from a Debian archive, checked and unpacked into a directory of our
own: what `xec igt` runs IGT's xe tests from (clients/igt.py), on any Linux machine,
without installing anything on it.

Each file is checked before it is used, as apt checks it: the suite's `InRelease`
against Debian's archive keyring (`gpgv`), the package index against the SHA256 that
`InRelease` gives it, each package against the index's SHA256. The pure parts (reading
an index, choosing the packages a set of packages needs, unpacking a .deb) take bytes
and return records, and are tested without a network.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath

import attrs

from protocols.cli import EX_SOFTWARE
from protocols.cli import EX_UNAVAILABLE as EX_UNAVAILABLE  # what callers compare with

MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
EX_DATAERR = 65  # sysexits.h: what came is not what was signed
_TIMEOUT = 60.0
# what a package unpacks that nothing here runs: left out
_SKIPPED = ("usr/share/doc/", "usr/share/man/", "usr/share/locale/", "usr/share/lintian/")


class ArchiveError(Exception):
    """The packages cannot be had; `status` is the exit status to leave with: 69 the
    archive did not answer, 65 something failed its check, 70 the rest."""

    def __init__(self, message: str, status: int = EX_SOFTWARE) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class Package:
    name: str
    version: str
    filename: str  # its path in the archive, from the index
    size: int
    sha256: str
    depends: tuple[str, ...]  # the first choice of each dependency, names only
    provides: tuple[str, ...]


# --- reading what the archive says (pure) ------------------------------------------------
def stanzas(text: str) -> Iterable[dict[str, str]]:
    """The paragraphs of a Debian control file (an index, a Release), as field -> value
    (continuation lines joined with newlines)."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def _names(field: str) -> tuple[str, ...]:
    """`a (>= 1) | b, c:any` -> ('a', 'c'): the first choice of each, without versions
    or architecture qualifiers."""
    names = []
    for choice in filter(None, (part.strip() for part in field.split(","))):
        names.append(choice.split("|")[0].split()[0].split(":")[0])
    return tuple(names)


def read_index(text: str) -> dict[str, Package]:
    """A `Packages` index: name -> the package (the last stanza of a name wins)."""
    index = {}
    for fields in stanzas(text):
        if "Package" not in fields or "Filename" not in fields:
            continue
        depends = fields.get("Pre-Depends", "") + "," + fields.get("Depends", "")
        index[fields["Package"]] = Package(
            name=fields["Package"],
            version=fields.get("Version", ""),
            filename=fields["Filename"],
            size=int(fields.get("Size", "0")),
            sha256=fields.get("SHA256", ""),
            depends=_names(depends),
            provides=_names(fields.get("Provides", "")),
        )
    return index


def release_sha256(release: str, path: str) -> tuple[str, int]:
    """(SHA256, size) that a Release/InRelease file gives `path` (e.g.
    main/binary-amd64/Packages.xz)."""
    for fields in stanzas(release):
        for line in fields.get("SHA256", "").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == path:
                return parts[0], int(parts[1])
    raise ArchiveError(f"the Release file names no {path}", EX_DATAERR)


def closure(
    index: Mapping[str, Package], roots: Iterable[str], wanted: Callable[[str], bool]
) -> list[Package]:
    """`roots` and what they need, recursively: the dependencies `wanted` accepts (the
    shared libraries, say), each by its first choice; a virtual name goes to the first
    package providing it. A root the index lacks is an ArchiveError."""
    providers: dict[str, str] = {}
    for package in index.values():
        for name in package.provides:
            providers.setdefault(name, package.name)
    chosen: dict[str, Package] = {}
    todo = [(name, True) for name in roots]
    while todo:
        name, root = todo.pop()
        real = name if name in index else providers.get(name)
        if real is None:
            if root:
                raise ArchiveError(f"the archive has no package {name}", EX_UNAVAILABLE)
            continue  # a dependency of no library (a virtual name nobody provides here)
        if real in chosen or not (root or wanted(real)):
            continue
        chosen[real] = index[real]
        todo += [(dep, False) for dep in index[real].depends]
    return sorted(chosen.values(), key=lambda p: p.name)


def unpack_deb(data: bytes, root: Path) -> None:
    """Unpack the files of a .deb (an `ar` archive holding data.tar.*) under `root`.
    Nothing lands outside it: a member named absolutely or with `..`, a device or a
    path through a link leading out is refused (ArchiveError); absolute links are
    left out (nothing here follows them: the loader is given its library path)."""
    if not data.startswith(b"!<arch>\n"):
        raise ArchiveError("not a .deb (no ar header)", EX_DATAERR)
    at, tar = 8, None
    while at + 60 <= len(data):
        header = data[at : at + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or "0")
        body = data[at + 60 : at + 60 + size]
        if name.startswith("data.tar"):
            tar = (name, body)
            break
        at += 60 + size + (size & 1)
    if tar is None:
        raise ArchiveError("a .deb with no data.tar member", EX_DATAERR)
    name, body = tar
    if name.endswith(".zst"):
        body = _unzstd(body)
    try:
        with tarfile.open(fileobj=io.BytesIO(body)) as archive:
            _extract(archive, root)
    except (tarfile.TarError, lzma.LZMAError, EOFError) as exc:
        raise ArchiveError(f"a .deb whose {name} cannot be read: {exc}", EX_DATAERR) from exc


def _unzstd(body: bytes) -> bytes:
    """zstd is not in this Python's standard library: the zstd command, if there is one."""
    if shutil.which("zstd") is None:
        raise ArchiveError("a .deb compressed with zstd, and no zstd command here")
    return subprocess.run(["zstd", "-dc"], input=body, capture_output=True, check=True).stdout


def _extract(archive: tarfile.TarFile, root: Path) -> None:
    top = os.path.realpath(root)
    for member in archive:
        path = PurePosixPath(member.name.removeprefix("./"))
        if not path.parts or str(path) == ".":
            continue
        if path.is_absolute() or ".." in path.parts:
            raise ArchiveError(f"a .deb member outside its root: {member.name}", EX_DATAERR)
        if any(f"{path}/".startswith(skip) for skip in _SKIPPED):
            continue
        target = root / path
        parent = os.path.realpath(target.parent)
        if parent != top and not parent.startswith(top + os.sep):
            raise ArchiveError(f"a .deb member through a link out: {member.name}", EX_DATAERR)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        elif member.issym():
            if not member.linkname.startswith("/"):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                target.symlink_to(member.linkname)
        elif member.isfile():
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None  # a regular file has a body
            target.unlink(missing_ok=True)
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            target.chmod(member.mode & 0o755)
        elif member.islnk():  # a hard link to a member unpacked before it
            linked = PurePosixPath(member.linkname.removeprefix("./"))
            if linked.is_absolute() or ".." in linked.parts:
                raise ArchiveError(f"a .deb hard link out: {member.name}", EX_DATAERR)
            link = root / linked
            if link.is_file() and not link.is_symlink():
                target.unlink(missing_ok=True)
                shutil.copyfile(link, target)
                target.chmod(member.mode & 0o755)
        # devices and fifos: nothing a library package needs


# --- talking to the archive ----------------------------------------------------------------
def download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as answer:  # noqa: S310 - http(s) only
            data: bytes = answer.read()
            return data
    except urllib.error.HTTPError as exc:
        raise ArchiveError(f"{url}: {exc.code} {exc.reason}", EX_UNAVAILABLE) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ArchiveError(f"{url}: {getattr(exc, 'reason', exc)}", EX_UNAVAILABLE) from exc


def checked(data: bytes, sha256: str, size: int, what: str) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256 or len(data) != size:
        raise ArchiveError(
            f"{what}: SHA256 {digest[:16]}... and {len(data)} bytes, where the archive "
            f"signed {sha256[:16]}... and {size}",
            EX_DATAERR,
        )
    return data


def signed_release(mirror: str, suite: str, verify: bool) -> str:
    """The suite's InRelease, its signature checked with gpgv against Debian's keyring
    (unless not `verify`); the text signed."""
    data = download(f"{mirror}/dists/{suite}/InRelease")
    if verify:
        if shutil.which("gpgv") is None or not KEYRING.exists():
            raise ArchiveError(
                f"cannot check the archive's signature: no gpgv or no {KEYRING} here "
                "(Debian's gpgv and debian-archive-keyring packages); --no-verify skips "
                "the check, SHA256s are still checked against the unsigned index",
                EX_UNAVAILABLE,
            )
        with tempfile.NamedTemporaryFile(suffix=".InRelease") as signed:
            signed.write(data)
            signed.flush()
            check = subprocess.run(
                ["gpgv", "--keyring", str(KEYRING), signed.name], capture_output=True, text=True
            )
        if check.returncode != 0:
            raise ArchiveError(
                f"{suite}/InRelease: bad signature: {check.stderr.strip()}", EX_DATAERR
            )
    text = data.decode("utf-8", "replace")
    start, end = text.find("\n\n"), text.find("\n-----BEGIN PGP SIGNATURE")
    return text[start + 2 : end] if start >= 0 and end > start else text


def fetch_index(mirror: str, suite: str, arch: str, verify: bool) -> dict[str, Package]:
    """The suite's package index for `arch`, checked against its signed InRelease."""
    release = signed_release(mirror, suite, verify)
    path = f"main/binary-{arch}/Packages.xz"
    sha256, size = release_sha256(release, path)
    packed = checked(download(f"{mirror}/dists/{suite}/{path}"), sha256, size, path)
    return read_index(lzma.decompress(packed).decode("utf-8", "replace"))


def fetch_package(mirror: str, package: Package, cache: Path) -> bytes:
    """The package's .deb: from `cache` if a copy there passes its check, else fetched,
    checked and kept there."""
    kept = cache / PurePosixPath(package.filename).name
    if kept.exists():
        data = kept.read_bytes()
        if hashlib.sha256(data).hexdigest() == package.sha256:
            return data
    data = checked(download(f"{mirror}/{package.filename}"), package.sha256, package.size,
                   package.filename)  # fmt: skip
    cache.mkdir(parents=True, exist_ok=True)
    partial = kept.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(kept)
    return data
