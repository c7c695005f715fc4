"""clients/debian.py: reading an archive's index, choosing packages, unpacking a .deb
without letting anything out of its directory, and the checks of a fetch (SHA256 of the
index and of each package), against a small archive served on localhost."""

from __future__ import annotations

import hashlib
import http.server
import io
import lzma
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import debian
from clients.debian import ArchiveError

INDEX = """\
Package: prog
Version: 1.0-1
Depends: libfoo1 (>= 2), tool | libalt, libvirtual:any
Filename: pool/main/p/prog_1.0-1_amd64.deb
Size: 10
SHA256: aa

Package: libfoo1
Version: 2.1
Pre-Depends: libc6
Depends: data-only
Filename: pool/main/f/libfoo1_2.1_amd64.deb
Size: 11
SHA256: bb

Package: libc6
Version: 2.43
Depends: libfoo1
Filename: pool/main/g/libc6_2.43_amd64.deb
Size: 12
SHA256: cc

Package: libbar2
Version: 3
Provides: libvirtual (= 3),
 other
Filename: pool/main/b/libbar2_3_amd64.deb
Size: 13
SHA256: dd

Package: data-only
Version: 1
Filename: pool/main/d/data-only_1_all.deb
Size: 14
SHA256: ee
"""


def lib_only(name: str) -> bool:
    return name.startswith("lib")


def test_an_index_is_read_field_by_field() -> None:
    index = debian.read_index(INDEX)
    assert set(index) == {"prog", "libfoo1", "libc6", "libbar2", "data-only"}
    prog = index["prog"]
    assert (prog.version, prog.size, prog.sha256) == ("1.0-1", 10, "aa")
    # first choices only, without versions or architecture qualifiers
    assert prog.depends == ("libfoo1", "tool", "libvirtual")
    assert index["libfoo1"].depends == ("libc6", "data-only")  # Pre-Depends first
    assert index["libbar2"].provides == ("libvirtual", "other")  # a continued field


def test_the_closure_takes_what_is_wanted_and_follows_virtual_names() -> None:
    index = debian.read_index(INDEX)
    chosen = debian.closure(index, ["prog"], lib_only)
    # tool (absent) and data-only (not wanted) are left out; libvirtual is libbar2's;
    # libc6 <-> libfoo1 depend on each other and are taken once
    assert [p.name for p in chosen] == ["libbar2", "libc6", "libfoo1", "prog"]


def test_a_root_the_archive_lacks_is_an_error() -> None:
    with pytest.raises(ArchiveError, match="no package nowhere") as caught:
        debian.closure(debian.read_index(INDEX), ["prog", "nowhere"], lib_only)
    assert caught.value.status == debian.EX_UNAVAILABLE


def test_release_names_each_file_with_its_sha256() -> None:
    release = "Origin: Debian\nSHA256:\n 0123 99 main/binary-amd64/Packages.xz\n 4567 5 x\n"
    assert debian.release_sha256(release, "main/binary-amd64/Packages.xz") == ("0123", 99)
    with pytest.raises(ArchiveError) as caught:
        debian.release_sha256(release, "main/binary-arm64/Packages.xz")
    assert caught.value.status == debian.EX_DATAERR


# --- .deb files -------------------------------------------------------------------------
def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:xz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


def deb_of(tar: bytes, name: str = "data.tar.xz") -> bytes:
    """An ar archive as dpkg-deb builds one: debian-binary, control, data."""
    out = b"!<arch>\n"
    for entry, body in (("debian-binary", b"2.0\n"), ("control.tar.xz", tar_of()), (name, tar)):
        header = f"{entry:<16}{0:<12}{0:<6}{0:<6}{0o100644:<8o}{len(body):<10}`\n"
        out += header.encode() + body + (b"\n" if len(body) % 2 else b"")
    return out


def test_a_deb_unpacks_its_files_links_and_modes(tmp_path: Path) -> None:
    data = tar_of(
        (member("./usr/lib", tarfile.DIRTYPE, mode=0o755), b""),
        (member("./usr/lib/libfoo.so.1.2", mode=0o644), b"ELF..."),
        (member("./usr/lib/libfoo.so.1", tarfile.SYMTYPE, "libfoo.so.1.2"), b""),
        (member("./usr/bin/prog", mode=0o4755), b"#!"),  # no setuid bit comes out
        (member("./usr/bin/same", tarfile.LNKTYPE, "./usr/bin/prog"), b""),
        (member("./lib64/ld.so", tarfile.SYMTYPE, "/usr/lib/ld.so"), b""),  # left out
        (member("./usr/share/doc/prog/copyright"), b"(c)"),  # left out
    )
    debian.unpack_deb(deb_of(data), tmp_path)
    assert (tmp_path / "usr/lib/libfoo.so.1").read_bytes() == b"ELF..."
    assert (tmp_path / "usr/lib/libfoo.so.1").readlink() == Path("libfoo.so.1.2")
    assert (tmp_path / "usr/bin/prog").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "usr/bin/same").read_bytes() == b"#!"
    assert not (tmp_path / "lib64/ld.so").is_symlink()
    assert not (tmp_path / "usr/share/doc").exists()


@pytest.mark.parametrize(
    "members",
    [
        [(member("../escaped"), b"x")],
        [(member("/etc/escaped"), b"x")],
        [(member("./usr/../../escaped"), b"x")],
        # a link to a directory outside, then a file through it
        [(member("./out", tarfile.SYMTYPE, "../outside"), b""), (member("./out/f"), b"x")],
        [(member("./same", tarfile.LNKTYPE, "../../etc/passwd"), b"")],
    ],
    ids=["dotdot", "absolute", "dotdot-inside", "through-a-link", "hard-link-out"],
)
def test_nothing_of_a_deb_lands_outside_its_root(tmp_path: Path, members: list) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    with pytest.raises(ArchiveError) as caught:
        debian.unpack_deb(deb_of(tar_of(*members)), root)
    assert caught.value.status == debian.EX_DATAERR
    assert list((tmp_path / "outside").iterdir()) == []
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize(
    "data",
    [b"not an ar archive", deb_of(b"garbage"), b"!<arch>\n"],
    ids=["no-ar-header", "bad-tar", "no-data-member"],
)
def test_a_broken_deb_is_a_data_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(ArchiveError) as caught:
        debian.unpack_deb(data, tmp_path)
    assert caught.value.status == debian.EX_DATAERR


# --- a fetch from an archive on localhost ---------------------------------------------------
@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An archive with one suite (`test`, amd64) holding one package, served over HTTP
    from `tmp_path / "archive"`; (its URL, its directory)."""
    top = tmp_path / "archive"
    deb = deb_of(tar_of((member("./usr/lib/libone.so.1"), b"one")))
    (top / "pool").mkdir(parents=True)
    (top / "pool/libone1_1_amd64.deb").write_bytes(deb)
    index = (
        f"Package: libone1\nVersion: 1\nFilename: pool/libone1_1_amd64.deb\n"
        f"Size: {len(deb)}\nSHA256: {hashlib.sha256(deb).hexdigest()}\n"
    )
    packed = lzma.compress(index.encode())
    dists = top / "dists/test"
    (dists / "main/binary-amd64").mkdir(parents=True)
    (dists / "main/binary-amd64/Packages.xz").write_bytes(packed)
    (dists / "InRelease").write_text(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nSuite: test\nSHA256:\n"
        f" {hashlib.sha256(packed).hexdigest()} {len(packed)} main/binary-amd64/Packages.xz\n"
        "-----BEGIN PGP SIGNATURE-----\n\nnot a signature\n-----END PGP SIGNATURE-----\n"
    )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(top), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", top
    finally:
        server.shutdown()
        server.server_close()


def test_a_fetch_checks_the_index_and_each_package(mirror, tmp_path: Path) -> None:
    url, top = mirror
    index = debian.fetch_index(url, "test", "amd64", verify=False)
    data = debian.fetch_package(url, index["libone1"], tmp_path / "cache")
    debian.unpack_deb(data, tmp_path / "root")
    assert (tmp_path / "root/usr/lib/libone.so.1").read_bytes() == b"one"
    # kept, and taken from the cache once the archive has lost it
    (top / "pool/libone1_1_amd64.deb").unlink()
    assert debian.fetch_package(url, index["libone1"], tmp_path / "cache") == data


def test_a_package_that_is_not_what_the_index_says_is_refused(mirror, tmp_path: Path) -> None:
    url, top = mirror
    index = debian.fetch_index(url, "test", "amd64", verify=False)
    (top / "pool/libone1_1_amd64.deb").write_bytes(b"!<arch>\nsomething else")
    with pytest.raises(ArchiveError, match="SHA256") as caught:
        debian.fetch_package(url, index["libone1"], tmp_path / "cache")
    assert caught.value.status == debian.EX_DATAERR
    assert not (tmp_path / "cache/libone1_1_amd64.deb").exists()  # nothing kept


def test_an_index_that_is_not_what_release_says_is_refused(mirror) -> None:
    url, top = mirror
    (top / "dists/test/main/binary-amd64/Packages.xz").write_bytes(lzma.compress(b"Package: x\n"))
    with pytest.raises(ArchiveError, match="SHA256") as caught:
        debian.fetch_index(url, "test", "amd64", verify=False)
    assert caught.value.status == debian.EX_DATAERR


def test_an_unsigned_release_fails_the_signature_check(mirror) -> None:
    """gpgv against Debian's keyring: the test archive's InRelease is signed by nobody."""
    url, _top = mirror
    if not debian.KEYRING.exists():
        pytest.fail(f"this test needs {debian.KEYRING} (Debian's debian-archive-keyring)")
    with pytest.raises(ArchiveError, match="bad signature") as caught:
        debian.fetch_index(url, "test", "amd64", verify=True)
    assert caught.value.status == debian.EX_DATAERR


def test_an_archive_that_does_not_answer_is_unavailable(mirror) -> None:
    url, _top = mirror
    with pytest.raises(ArchiveError, match="404") as caught:
        debian.fetch_index(url, "nosuchsuite", "amd64", verify=False)
    assert caught.value.status == debian.EX_UNAVAILABLE
    with pytest.raises(ArchiveError) as caught:
        debian.download("http://127.0.0.1:9/nothing")  # the discard port: refused
    assert caught.value.status == debian.EX_UNAVAILABLE
