"""Model directories: packing, size limits, and nothing escaping the directory."""

from __future__ import annotations

import io
import os
import pathlib
import tarfile

import pytest

from determined_sdk.errors import InvalidArgumentError, ResourceExhaustedError
from determined_sdk.model_dir import MAX_MEMBERS, check_archive, extract_archive, pack_model_dir


def test_round_trip_skips_caches_and_outside_links(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "train.py").write_text("print(1)")
    (src / "pkg" / "mod.py").write_text("x = 1")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not ship")
    os.symlink(secret, src / "leak.txt")
    os.symlink(src / "train.py", src / "alias.py")
    data = pack_model_dir(src)
    names = sorted(m.name for m in check_archive(data))
    assert names == ["alias.py", "pkg/mod.py", "train.py"]
    out = tmp_path / "out"
    extract_archive(data, out)
    assert (out / "alias.py").read_text() == "print(1)"
    assert not (out / "alias.py").is_symlink()
    assert (out / "pkg" / "mod.py").read_text() == "x = 1"


def test_size_limit(tmp_path: pathlib.Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"x" * 5000)
    with pytest.raises(ResourceExhaustedError, match="more than 4096 bytes"):
        pack_model_dir(tmp_path, max_bytes=4096)


def test_not_a_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        pack_model_dir(tmp_path / "missing")


def _tar(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data) if data else None)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["../up.py", "a/../../up.py", "/abs.py"])
def test_escaping_entries_are_refused(tmp_path: pathlib.Path, name: str) -> None:
    with pytest.raises(InvalidArgumentError, match="escapes"):
        extract_archive(_tar(tarfile.TarInfo(name), b"x"), tmp_path / "out")
    assert not (tmp_path / "up.py").exists()


def test_links_are_refused(tmp_path: pathlib.Path) -> None:
    link = tarfile.TarInfo("evil")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(InvalidArgumentError, match="'evil' is a link"):
        check_archive(_tar(link))


def test_garbage_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=r"not a valid tar\.gz"):
        check_archive(b"garbage")


@pytest.mark.parametrize(
    "kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.LNKTYPE]
)
def test_device_files_and_hard_links_are_refused(kind: bytes) -> None:
    dev = tarfile.TarInfo("dev")
    dev.type = kind
    dev.linkname = "/etc/shadow" if kind == tarfile.LNKTYPE else ""
    with pytest.raises(InvalidArgumentError, match="'dev' is a link or special file"):
        check_archive(_tar(dev))


def test_many_tiny_files_are_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(MAX_MEMBERS + 1):
            tar.addfile(tarfile.TarInfo(f"f{i}"), io.BytesIO(b""))
    with pytest.raises(ResourceExhaustedError, match="entries"):
        check_archive(buf.getvalue())
