"""Checkpoint storage: where checkpoint bytes live, behind one contract.

Every checkpoint is a set of files under ``<base>/<storage_id>/``. Two backends implement
:class:`CheckpointStorage`:

* :class:`SharedFSStorage` (``type: shared_fs`` or ``directory``): a directory every node
  mounts. Files are read and written in place.
* :class:`FsspecStorage` (``type: s3``, ``gcs``, ``azure``): a bucket reached through
  ``fsspec`` (``s3fs``, ``gcsfs``, ``adlfs``; each is imported only when its type is used).
  Credentials come from the backend's standard environment variables
  (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
  ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_CONNECTION_STRING``, ...), never from the
  config, so a config (stored by the master) never holds a secret.

The trial (``core_api``), the SDK and the master all go through this module; the storage
*record* (:meth:`CheckpointStorage.describe`) is what the master stores with each checkpoint
and :func:`from_config` rebuilds the storage from it.

Contract of :class:`CheckpointStorage`:

* Relative paths are POSIX, never absolute, never contain ``..``; files only (directories are
  implied by their files; an empty directory is not kept).
* :meth:`~CheckpointStorage.list_files` of a missing checkpoint is ``{}``;
  :meth:`~CheckpointStorage.delete` and :meth:`~CheckpointStorage.delete_files` of missing
  files are no-ops (deletion is idempotent, so an interrupted deletion is simply run again).
* :meth:`~CheckpointStorage.put` writes every given file before it returns; a checkpoint is
  reported only after that, so a reported checkpoint's files are all there.
* Instances are safe to share between threads.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import contextlib
import importlib
import itertools
import os
import pathlib
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any

from determined_sdk.errors import InvalidArgumentError

#: ``checkpoint_storage.type`` values; ``directory`` is an alias of ``shared_fs``.
LOCAL_TYPES = ("shared_fs", "directory")
#: Object-store types, and the fsspec package each one needs.
REMOTE_PACKAGES = {"s3": "s3fs", "gcs": "gcsfs", "azure": "adlfs"}
STORAGE_TYPES = LOCAL_TYPES + tuple(REMOTE_PACKAGES)
#: The name of the bucket field per remote type (Azure calls it a container).
BUCKET_FIELD = {"s3": "bucket", "gcs": "bucket", "azure": "container"}
#: Config keys that would hold secrets; refused so that none is ever stored.
SECRET_KEYS = (
    "access_key",
    "secret_key",
    "session_token",
    "connection_string",
    "credential",
    "account_key",
    "sas_token",
)
#: The standard environment variables holding each remote type's credentials and settings
#: (names, or prefixes ending in ``_``). The master passes these, for its experiment's storage
#: type only, from its own environment to its trials.
CREDENTIAL_ENV = {
    "s3": (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "AWS_CA_BUNDLE",
    ),
    "gcs": ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"),
    "azure": ("AZURE_STORAGE_", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"),
}
#: Read size for streaming (large: fewer calls, fewer messages).
READ_CHUNK = 8 << 20
#: Ranged reads of one object in flight at once (object stores only).
PREFETCH = 4

Selector = Callable[[str], bool]


class StorageConfigError(InvalidArgumentError):
    """A ``checkpoint_storage`` config is invalid or needs a package that is not installed;
    the message names the field."""


def check_relative(rel: str) -> str:
    """``rel`` if it is a safe relative POSIX path, else InvalidArgumentError naming it."""
    pure = pathlib.PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or "\x00" in rel or "\\" in rel:
        raise InvalidArgumentError(f"checkpoint file path {rel!r} is not a safe relative path")
    return rel


def check_storage_id(storage_id: str) -> str:
    """``storage_id`` if it is a plain name (no separator, not ``.``/``..``)."""
    if (
        not isinstance(storage_id, str)
        or not storage_id
        or "/" in storage_id
        or "\\" in storage_id
        or storage_id in (".", "..")
        or "\x00" in storage_id
    ):
        raise InvalidArgumentError(f"uuid: {storage_id!r} is not a valid checkpoint id")
    return storage_id


class CheckpointStorage(abc.ABC):
    """Where checkpoint files live; one directory (or key prefix) per checkpoint.

    See the module docstring for the contract every implementation keeps.
    """

    #: The normalized ``checkpoint_storage.type``.
    type: str

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """The storage record (no secrets): :func:`from_config` rebuilds this storage."""

    @abc.abstractmethod
    def url(self, storage_id: str) -> str:
        """Where the checkpoint lives, for people (``s3://bucket/prefix/uuid``, a path)."""

    @abc.abstractmethod
    def list_files(self, storage_id: str) -> dict[str, int]:
        """Relative path -> size of every file of the checkpoint; ``{}`` when it has none."""

    @abc.abstractmethod
    def put(self, storage_id: str, src: pathlib.Path, rels: Iterable[str] | None = None) -> None:
        """Copy files from the local directory ``src`` into the checkpoint.

        Args:
            storage_id: The checkpoint.
            src: A local directory.
            rels: The relative paths to copy (default: every file under ``src``).
        """

    @abc.abstractmethod
    def get(self, storage_id: str, dst: pathlib.Path, selector: Selector | None = None) -> None:
        """Copy the checkpoint's files (those ``selector`` accepts) into local ``dst``.

        Raises:
            FileNotFoundError: The checkpoint has no files.
        """

    @abc.abstractmethod
    def open(self, storage_id: str, rel: str) -> IO[bytes]:
        """The file ``rel`` of the checkpoint, open for reading in binary mode."""

    @abc.abstractmethod
    def delete(self, storage_id: str) -> None:
        """Remove every file of the checkpoint (no-op when there is none)."""

    @abc.abstractmethod
    def delete_files(self, storage_id: str, rels: Iterable[str]) -> None:
        """Remove some files of the checkpoint (missing ones are skipped)."""

    def local_dir(self, storage_id: str) -> pathlib.Path | None:
        """The checkpoint's directory when its files can be used in place here, else None."""
        return None

    def iter_file(self, storage_id: str, rel: str, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        """The contents of file ``rel``, in order, in pieces of up to ``chunk`` bytes."""
        with self.open(storage_id, rel) as f:
            yield from iter_chunks(f, chunk)

    def reachable(self) -> bool:
        """Whether this process can reach the storage (a cheap check, no data read)."""
        return True


class SharedFSStorage(CheckpointStorage):
    """A directory holding one sub-directory per checkpoint.

    Args:
        base: the directory; created when first written.
    """

    type = "shared_fs"

    def __init__(self, base: str | os.PathLike[str]) -> None:
        self.base = pathlib.Path(base).expanduser().resolve()

    def __repr__(self) -> str:
        return f"SharedFSStorage({str(self.base)!r})"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SharedFSStorage:
        """Build from a ``checkpoint_storage`` config (``{"type": "shared_fs", "path": ...}``).

        Raises:
            StorageConfigError: the config names another storage type, or no path.
        """
        storage = from_config(config) if config.get("type", "shared_fs") in LOCAL_TYPES else None
        if not isinstance(storage, SharedFSStorage):
            raise StorageConfigError(
                f"checkpoint_storage.type: {config.get('type')!r} is not a shared filesystem"
            )
        return storage

    def describe(self) -> dict[str, Any]:
        return {"type": "shared_fs", "path": str(self.base)}

    def url(self, storage_id: str) -> str:
        return str(self.path_of(storage_id))

    def path_of(self, storage_id: str) -> pathlib.Path:
        """Where the checkpoint's files live."""
        return self.base / check_storage_id(storage_id)

    def local_dir(self, storage_id: str) -> pathlib.Path | None:
        return self.path_of(storage_id)

    def reachable(self) -> bool:
        return self.base.is_dir()

    def list_files(self, storage_id: str) -> dict[str, int]:
        return list_local_files(self.path_of(storage_id))

    def put(self, storage_id: str, src: pathlib.Path, rels: Iterable[str] | None = None) -> None:
        dst = self.path_of(storage_id)
        if src.resolve() == dst.resolve():
            return
        for rel in list_local_files(src) if rels is None else rels:
            target = dst / check_relative(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, target)

    def get(self, storage_id: str, dst: pathlib.Path, selector: Selector | None = None) -> None:
        src = self.path_of(storage_id)
        if not src.is_dir():
            raise FileNotFoundError(f"checkpoint {storage_id}: no files at {str(src)!r}")
        dst.mkdir(parents=True, exist_ok=True)
        for rel in list_local_files(src):
            if selector is not None and not selector(rel):
                continue
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, target)

    def open(self, storage_id: str, rel: str) -> IO[bytes]:
        return (self.path_of(storage_id) / check_relative(rel)).open("rb")

    def delete(self, storage_id: str) -> None:
        path = self.path_of(storage_id)
        if path.is_symlink():
            path.unlink(missing_ok=True)
            return
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)  # unlinks symlinks inside, never follows them

    def delete_files(self, storage_id: str, rels: Iterable[str]) -> None:
        root = self.path_of(storage_id)
        for rel in rels:
            (root / check_relative(rel)).unlink(missing_ok=True)


class FsspecStorage(CheckpointStorage):
    """A bucket (and key prefix) of an object store, through ``fsspec``.

    Args:
        type: ``s3``, ``gcs`` or ``azure``.
        bucket: The bucket (Azure: the container).
        prefix: Key prefix under which checkpoints go (``""``: the bucket's top).
        endpoint_url: S3 only: the endpoint of an S3-compatible server (MinIO, moto, ...);
            default AWS (or ``AWS_ENDPOINT_URL``).
        account_name: Azure only: the storage account (default ``AZURE_STORAGE_ACCOUNT_NAME``).

    Raises:
        StorageConfigError: The backend's package is not installed.
    """

    def __init__(
        self,
        type: str,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        account_name: str | None = None,
    ) -> None:
        self.type = type
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.account_name = account_name or None
        require_backend(type)
        import fsspec

        kwargs: dict[str, Any] = {}
        if type == "s3" and self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        if type == "azure" and self.account_name:
            kwargs["account_name"] = self.account_name
        # One filesystem per storage (not fsspec's shared cache), so settings never leak.
        self.fs: Any = fsspec.filesystem(
            {"s3": "s3", "gcs": "gcs", "azure": "abfs"}[type], skip_instance_cache=True, **kwargs
        )
        self._root = "/".join(p for p in (bucket, self.prefix) if p)

    def __repr__(self) -> str:
        return f"FsspecStorage({self.url('')!r})"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            BUCKET_FIELD[self.type]: self.bucket,
            "prefix": self.prefix,
        }
        if self.endpoint_url:
            out["endpoint_url"] = self.endpoint_url
        if self.account_name:
            out["account_name"] = self.account_name
        return out

    def url(self, storage_id: str) -> str:
        scheme = {"s3": "s3", "gcs": "gs", "azure": "abfs"}[self.type]
        return f"{scheme}://{self._key(storage_id) if storage_id else self._root}"

    def _key(self, storage_id: str, rel: str = "") -> str:
        key = f"{self._root}/{check_storage_id(storage_id)}"
        return f"{key}/{check_relative(rel)}" if rel else key

    def reachable(self) -> bool:
        try:
            self.fs.ls(self.bucket, refresh=True)
        except Exception:
            return False
        return True

    def list_files(self, storage_id: str) -> dict[str, int]:
        base = self._key(storage_id)
        try:
            found = self.fs.find(base, detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        out: dict[str, int] = {}
        for path, info in found.items():
            path = str(path)
            if info.get("type") == "directory" or not path.startswith(base + "/"):
                continue
            out[path[len(base) + 1 :]] = int(info.get("size") or 0)
        return out

    def put(self, storage_id: str, src: pathlib.Path, rels: Iterable[str] | None = None) -> None:
        names = sorted(list_local_files(src) if rels is None else rels)
        if names:
            self.fs.put(
                [str(src / check_relative(r)) for r in names],
                [self._key(storage_id, r) for r in names],
            )
        self.fs.invalidate_cache(self._key(storage_id))

    def get(self, storage_id: str, dst: pathlib.Path, selector: Selector | None = None) -> None:
        files = self.list_files(storage_id)
        if not files:
            raise FileNotFoundError(f"checkpoint {storage_id}: no files at {self.url(storage_id)}")
        names = [check_relative(r) for r in sorted(files) if selector is None or selector(r)]
        dst.mkdir(parents=True, exist_ok=True)
        for r in names:
            (dst / r).parent.mkdir(parents=True, exist_ok=True)
        if names:
            self.fs.get([self._key(storage_id, r) for r in names], [str(dst / r) for r in names])

    def iter_file(self, storage_id: str, rel: str, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        # Ranged reads, PREFETCH of them in flight: one request at a time leaves the
        # connection idle for a round trip per piece.
        key = self._key(storage_id, rel)
        size = int(self.fs.info(key)["size"])
        starts = range(0, size, chunk)
        with concurrent.futures.ThreadPoolExecutor(PREFETCH) as pool:
            pending: collections.deque[concurrent.futures.Future[bytes]] = collections.deque()
            it = iter(starts)
            for start in itertools.islice(it, PREFETCH):
                pending.append(pool.submit(self._range, key, start, min(start + chunk, size)))
            while pending:
                data = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(self._range, key, nxt, min(nxt + chunk, size)))
                yield data

    def _range(self, key: str, start: int, end: int) -> bytes:
        data: bytes = self.fs.cat_file(key, start=start, end=end)
        return data

    def open(self, storage_id: str, rel: str) -> IO[bytes]:
        f: IO[bytes] = self.fs.open(
            self._key(storage_id, rel), "rb", block_size=READ_CHUNK, cache_type="none"
        )
        return f

    def delete(self, storage_id: str) -> None:
        key = self._key(storage_id)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(key, recursive=True)
        self.fs.invalidate_cache(key)

    def delete_files(self, storage_id: str, rels: Iterable[str]) -> None:
        keys = [self._key(storage_id, r) for r in rels]
        if keys:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(keys)
        self.fs.invalidate_cache(self._key(storage_id))


def require_backend(type: str, field: str = "checkpoint_storage.type") -> None:
    """Import the fsspec package a remote storage type needs.

    Raises:
        StorageConfigError: The type is unknown, or its package is not installed (the message
            names the package and the extra that installs it).
    """
    if type in LOCAL_TYPES:
        return
    package = REMOTE_PACKAGES.get(type)
    if package is None:
        raise StorageConfigError(
            f"{field}: must be one of {', '.join(STORAGE_TYPES)}, got {type!r}"
        )
    try:
        importlib.import_module(package)
    except ImportError as exc:
        extra = f" (pip install 'determined-sdk[{type}]')" if type == "s3" else ""
        raise StorageConfigError(
            f"{field}: {type!r} storage needs the {package} package, which is not installed "
            f"here{extra}: {exc}"
        ) from None


def normalize_config(
    config: Mapping[str, Any], prefix: str = "checkpoint_storage"
) -> dict[str, Any]:
    """Check a remote ``checkpoint_storage`` config and return its storage record.

    Only the storage fields are looked at (GC settings such as ``save_trial_best`` are the
    caller's). The backend package is not imported here (see :func:`require_backend`).

    Raises:
        StorageConfigError: A field is missing, of the wrong type, or holds a secret.
    """
    kind = config.get("type", "shared_fs")
    if kind not in STORAGE_TYPES:
        raise StorageConfigError(
            f"{prefix}.type: must be one of {', '.join(STORAGE_TYPES)}, got {kind!r}"
        )
    if kind in LOCAL_TYPES:
        path = config.get("path")
        if not isinstance(path, str) or not path:
            raise StorageConfigError(f"{prefix}.path: required for {kind} storage")
        return {"type": "shared_fs", "path": path}
    for key in SECRET_KEYS:
        if key in config:
            raise StorageConfigError(
                f"{prefix}.{key}: credentials are never stored in a config; set them in the "
                "environment of the master and the trials (see docs/checkpoint-storage.md)"
            )
    bucket_field = BUCKET_FIELD[kind]
    bucket = config.get(bucket_field)
    if not isinstance(bucket, str) or not bucket.strip("/"):
        raise StorageConfigError(f"{prefix}.{bucket_field}: required for {kind} storage")
    if "/" in bucket.strip("/"):
        raise StorageConfigError(
            f"{prefix}.{bucket_field}: a bucket name has no '/', got {bucket!r} "
            f"(put the rest in {prefix}.prefix)"
        )
    out: dict[str, Any] = {"type": kind, bucket_field: bucket.strip("/")}
    pfx = config.get("prefix") or ""
    if not isinstance(pfx, str):
        raise StorageConfigError(f"{prefix}.prefix: must be a string, got {pfx!r}")
    if ".." in pathlib.PurePosixPath(pfx).parts or "\x00" in pfx:
        raise StorageConfigError(f"{prefix}.prefix: must not contain '..', got {pfx!r}")
    out["prefix"] = pfx.strip("/")
    endpoint = config.get("endpoint_url")
    if endpoint is not None:
        if kind != "s3":
            raise StorageConfigError(f"{prefix}.endpoint_url: only for s3 storage")
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            raise StorageConfigError(
                f"{prefix}.endpoint_url: must be an http:// or https:// URL, got {endpoint!r}"
            )
        out["endpoint_url"] = endpoint
    account = config.get("account_name")
    if account is not None:
        if kind != "azure":
            raise StorageConfigError(f"{prefix}.account_name: only for azure storage")
        if not isinstance(account, str) or not account:
            raise StorageConfigError(f"{prefix}.account_name: must be a non-empty string")
        out["account_name"] = account
    return out


def from_config(config: Mapping[str, Any]) -> CheckpointStorage:
    """The storage a ``checkpoint_storage`` config or a checkpoint's storage record names.

    Raises:
        StorageConfigError: The config is invalid or its backend package is missing.
    """
    kind = config.get("type", "shared_fs")
    if kind in LOCAL_TYPES:
        path = config.get("path") or config.get("container_path")
        if not path and config.get("host_path"):
            path = os.path.join(str(config["host_path"]), str(config.get("storage_path", "")))
        if not path:
            raise StorageConfigError("checkpoint_storage.path: required for shared_fs storage")
        return SharedFSStorage(str(path))
    record = normalize_config(config)
    return FsspecStorage(
        record["type"],
        record[BUCKET_FIELD[record["type"]]],
        record.get("prefix", ""),
        endpoint_url=record.get("endpoint_url"),
        account_name=record.get("account_name"),
    )


def credential_env(config: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` that hold credentials for ``config``'s storage type
    (see :data:`CREDENTIAL_ENV`); ``{}`` for a shared filesystem."""
    names = CREDENTIAL_ENV.get(str(config.get("type", "shared_fs")), ())
    return {
        k: v
        for k, v in environ.items()
        if k in names or any(n.endswith("_") and k.startswith(n) for n in names)
    }


def is_remote(config: Mapping[str, Any]) -> bool:
    """Whether a storage config or record names an object store (not a local directory)."""
    return config.get("type", "shared_fs") in REMOTE_PACKAGES


def list_local_files(root: pathlib.Path) -> dict[str, int]:
    """Relative POSIX path -> size of every regular file under ``root`` (``{}`` if missing).

    Symlinks are not followed out of ``root``'s tree walk; a symlink to a file is read as that
    file only by callers that check containment themselves.
    """
    out: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = pathlib.Path(dirpath) / name
            try:
                st = full.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out[full.relative_to(root).as_posix()] = st.st_size
    return out


def iter_chunks(f: IO[bytes], size: int = READ_CHUNK) -> Iterator[bytes]:
    """The contents of ``f`` in chunks of up to ``size`` bytes."""
    while True:
        data = f.read(size)
        if not data:
            return
        yield data
