"""Packing a model directory for an experiment, and unpacking it safely in a run directory.

A model directory travels as a gzipped tar. Nothing in it may escape its directory: when packing,
symlinks that point outside the directory are dropped (with a warning) and symlinks inside it are
stored as the file they point to; when checking or unpacking, members with absolute paths, ``..``
components, links, or device files are refused with an error naming the member.
"""

from __future__ import annotations

import io
import logging
import os
import pathlib
import tarfile

from determined_sdk.errors import InvalidArgumentError, ResourceExhaustedError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 2**20
#: Most entries a model archive may hold (many tiny files cost inodes and time, not bytes).
MAX_MEMBERS = 20_000
_SKIP_DIRS = {"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ipynb_checkpoints"}


def pack_model_dir(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Pack ``path`` into a tar.gz, refusing it when the files add up to more than ``max_bytes``.

    Args:
        path: the model directory.
        max_bytes: limit on the total size of the files (before compression).

    Returns:
        The archive bytes.

    Raises:
        InvalidArgumentError: ``path`` is not a directory.
        ResourceExhaustedError: the files are larger than ``max_bytes``.
    """
    root = pathlib.Path(path)
    if not root.is_dir():
        raise InvalidArgumentError(f"model_dir: {str(path)!r} is not a directory")
    root_real = root.resolve()
    total = 0
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            for name in sorted(
                filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            ):
                full = pathlib.Path(dirpath) / name
                rel = full.relative_to(root).as_posix()
                real = full.resolve()
                if full.is_symlink() and not real.is_relative_to(root_real):
                    logger.warning(
                        "model_dir: dropping %s: a symlink pointing outside the directory", rel
                    )
                    continue
                if not real.is_file():
                    continue
                size = real.stat().st_size
                total += size
                if total > max_bytes:
                    raise ResourceExhaustedError(
                        f"model_dir: {str(path)!r} holds more than {max_bytes} bytes "
                        f"(reached at {rel}); raise the limit or move data out of it"
                    )
                info = tarfile.TarInfo(rel)
                info.size = size
                info.mode = real.stat().st_mode & 0o777
                info.mtime = int(real.stat().st_mtime)
                with open(real, "rb") as f:
                    tar.addfile(info, f)
    return buf.getvalue()


def check_archive(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> list[tarfile.TarInfo]:
    """Validate a model archive without extracting it; returns its members.

    Raises:
        InvalidArgumentError: not a tar.gz, or a member would escape the directory or is not a
            regular file or directory.
        ResourceExhaustedError: the files add up to more than ``max_bytes``.
    """
    if not data:
        return []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InvalidArgumentError(f"model_definition: not a valid tar.gz archive ({e})") from e
    if len(members) > MAX_MEMBERS:
        raise ResourceExhaustedError(
            f"model_definition: {len(members)} entries; at most {MAX_MEMBERS} are allowed"
        )
    total = 0
    for m in members:
        p = pathlib.PurePosixPath(m.name)
        if p.is_absolute() or ".." in p.parts or m.name.startswith("\\"):
            raise InvalidArgumentError(
                f"model_definition: entry {m.name!r} escapes the model directory"
            )
        if not (m.isfile() or m.isdir()):
            raise InvalidArgumentError(
                f"model_definition: entry {m.name!r} is a link or special file; only regular "
                "files and directories are allowed"
            )
        total += m.size
        if total > max_bytes:
            raise ResourceExhaustedError(
                f"model_definition: more than {max_bytes} bytes unpacked (at {m.name!r})"
            )
    return members


def extract_archive(
    data: bytes, dest: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES
) -> None:
    """Check ``data`` with :func:`check_archive`, then unpack it into ``dest``."""
    check_archive(data, max_bytes)
    os.makedirs(dest, exist_ok=True)
    if not data:
        return
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
