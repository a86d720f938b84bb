"""Containment of checkpoint files: storage roots the operator allows, paths that stay inside.

* A checkpoint storage path (``checkpoint_storage.path`` / ``host_path``) must resolve, symlinks
  followed, inside one of the master's storage roots (``--checkpoint-root``, repeatable; default
  the master's checkpoint directory).
* A checkpoint's directory is ``<storage path>/<uuid>`` with a plain uuid; it must itself not be
  a symlink, and every file read from it (download) or listed in it (report) must resolve inside
  it. Only regular files are read (a FIFO or device would hang or leak).
* Deletion removes only a real directory inside a root; a symlink in its place is unlinked, never
  followed.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import stat
from collections.abc import Iterable, Iterator

from determined_sdk.errors import FailedPreconditionError, InvalidArgumentError


class StorageRoots:
    """The directories checkpoint storage may live in.

    Args:
        roots: Allowed directories (resolved now; each must be absolute once resolved).
    """

    def __init__(self, roots: Iterable[str | os.PathLike[str]]) -> None:
        self.roots: tuple[pathlib.Path, ...] = tuple(
            pathlib.Path(os.path.realpath(r)) for r in roots
        )
        if not self.roots:
            raise ValueError("StorageRoots: give at least one root")

    def __repr__(self) -> str:
        return f"StorageRoots({[str(r) for r in self.roots]})"

    def contains(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` resolves (symlinks followed) inside a root."""
        real = pathlib.Path(os.path.realpath(path))
        return any(real == r or real.is_relative_to(r) for r in self.roots)

    def check_storage_path(self, path: str, field: str = "checkpoint_storage.path") -> str:
        """``path`` resolved, if it lies inside a root; else InvalidArgumentError naming it."""
        if "\x00" in path:
            raise InvalidArgumentError(f"{field}: must not contain NUL")
        p = pathlib.Path(path)
        if not p.is_absolute():
            raise InvalidArgumentError(f"{field}: must be an absolute path, got {path!r}")
        if not self.contains(p):
            allowed = ", ".join(str(r) for r in self.roots)
            raise InvalidArgumentError(
                f"{field}: {path!r} is outside the directories this master allows for "
                f"checkpoints ({allowed}); the operator adds one with --checkpoint-root"
            )
        return str(pathlib.Path(os.path.realpath(p)))

    def checkpoint_dir(self, storage_path: str, uuid: str) -> pathlib.Path:
        """The directory of checkpoint ``uuid`` under ``storage_path``, checked to stay inside.

        Raises:
            FailedPreconditionError: The storage path is outside every root (a record made
                before the roots were set), or the uuid is not a plain name.
        """
        if not uuid or "/" in uuid or "\\" in uuid or uuid in (".", "..") or "\x00" in uuid:
            raise InvalidArgumentError(f"uuid: {uuid!r} is not a valid checkpoint id")
        base = pathlib.Path(storage_path)
        if not base.is_absolute() or not self.contains(base):
            raise FailedPreconditionError(
                f"checkpoint {uuid}: its storage {storage_path!r} is outside this master's "
                "checkpoint roots; refusing to touch it"
            )
        return pathlib.Path(os.path.realpath(base)) / uuid


def check_resources(ckpt_dir: pathlib.Path, resources: Iterable[str]) -> None:
    """Each listed file must stay inside ``ckpt_dir`` (by name, and on disk when it exists)."""
    if ckpt_dir.is_symlink():
        raise InvalidArgumentError(
            f"uuid: the checkpoint directory {ckpt_dir.name!r} is a symlink; refused"
        )
    real_dir = pathlib.Path(os.path.realpath(ckpt_dir))
    for name in resources:
        pure = pathlib.PurePosixPath(name)
        if not name or pure.is_absolute() or ".." in pure.parts or "\x00" in name:
            raise InvalidArgumentError(f"resources: bad path {name!r}")
        full = ckpt_dir / pure
        if os.path.lexists(full):
            real = pathlib.Path(os.path.realpath(full))
            if not real.is_relative_to(real_dir):
                raise InvalidArgumentError(
                    f"resources: {name!r} resolves outside the checkpoint (a symlink out)"
                )


def iter_files(ckpt_dir: pathlib.Path) -> Iterator[tuple[str, pathlib.Path]]:
    """(relative path, real path) of every regular file in ``ckpt_dir``, refusing escapes.

    Raises:
        FailedPreconditionError: The directory is a symlink, or a file in it is a symlink
            out of it, or not a regular file.
    """
    if ckpt_dir.is_symlink():
        raise FailedPreconditionError(f"checkpoint {ckpt_dir.name}: its directory is a symlink")
    real_dir = pathlib.Path(os.path.realpath(ckpt_dir))
    for dirpath, dirs, files in os.walk(ckpt_dir, followlinks=False):
        dirs.sort()
        # A symlinked sub-directory is listed in dirs but not walked: treat it like a file.
        entries = sorted(files) + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]
        for name in sorted(entries):
            full = pathlib.Path(dirpath) / name
            rel = full.relative_to(ckpt_dir).as_posix()
            real = pathlib.Path(os.path.realpath(full))
            if not real.is_relative_to(real_dir):
                raise FailedPreconditionError(
                    f"checkpoint {ckpt_dir.name}: {rel!r} is a symlink out of the checkpoint; "
                    "refused"
                )
            try:
                mode = os.stat(real).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                continue  # a symlink to a directory inside: walked through its real path
            if not stat.S_ISREG(mode):
                raise FailedPreconditionError(
                    f"checkpoint {ckpt_dir.name}: {rel!r} is not a regular file; refused"
                )
            yield rel, real


def remove_checkpoint_dir(roots: StorageRoots, ckpt_dir: pathlib.Path) -> None:
    """Delete a checkpoint's directory; a symlink there is unlinked, never followed."""
    if ckpt_dir.is_symlink():
        ckpt_dir.unlink(missing_ok=True)
        return
    if not roots.contains(ckpt_dir) or ckpt_dir.resolve() in roots.roots:
        raise FailedPreconditionError(f"refusing to delete {str(ckpt_dir)!r}: not inside a root")
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(ckpt_dir)  # rmtree unlinks symlinks inside, never follows them
