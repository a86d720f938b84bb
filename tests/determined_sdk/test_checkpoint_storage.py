"""The checkpoint storage contract, run on every backend: a shared directory and S3 (moto's
server on loopback). Also the config checks and the download wire format."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Iterator

import pytest

from determined_sdk import checkpoint_storage as cs
from determined_sdk import checkpoint_wire
from determined_sdk.errors import InvalidArgumentError
from determined_sdk.proto import checkpoint_pb2
from tests.s3_server import MotoServer

FILES = {
    "model.bin": b"\x00\x01" * 5000,
    "sub/dir/state.json": b'{"step": 3}',
    "empty.txt": b"",
    "name with spaces.txt": b"x",
}


@pytest.fixture(params=["shared_fs", "s3"])
def storage(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> Iterator[cs.CheckpointStorage]:
    if request.param == "shared_fs":
        yield cs.from_config({"type": "shared_fs", "path": str(tmp_path / "store")})
        return
    server: MotoServer = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    yield cs.from_config(
        {"type": "s3", "bucket": bucket, "prefix": "a/b", "endpoint_url": server.endpoint_url}
    )


def write_src(root: pathlib.Path) -> pathlib.Path:
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_put_list_get_open_roundtrip(storage: cs.CheckpointStorage, tmp_path: pathlib.Path) -> None:
    sid = str(uuid.uuid4())
    assert storage.list_files(sid) == {}
    storage.put(sid, write_src(tmp_path / "src"))
    assert storage.list_files(sid) == {rel: len(data) for rel, data in FILES.items()}
    storage.get(sid, tmp_path / "out")
    got = {
        p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
        for p in (tmp_path / "out").rglob("*")
        if p.is_file()
    }
    assert got == FILES
    with storage.open(sid, "sub/dir/state.json") as f:
        assert f.read() == b'{"step": 3}'
    pieces = list(storage.iter_file(sid, "model.bin", 3000))  # ranged reads, in order
    assert [len(p) for p in pieces] == [3000, 3000, 3000, 1000]
    assert b"".join(pieces) == FILES["model.bin"]
    assert list(storage.iter_file(sid, "empty.txt")) == []


def test_put_some_files_and_get_with_selector(
    storage: cs.CheckpointStorage, tmp_path: pathlib.Path
) -> None:
    sid = str(uuid.uuid4())
    storage.put(sid, write_src(tmp_path / "src"), ["model.bin", "sub/dir/state.json"])
    assert sorted(storage.list_files(sid)) == ["model.bin", "sub/dir/state.json"]
    storage.get(sid, tmp_path / "out", selector=lambda rel: rel.startswith("sub/"))
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == ["state.json"]


def test_delete_is_idempotent_and_leaves_others(
    storage: cs.CheckpointStorage, tmp_path: pathlib.Path
) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    src = write_src(tmp_path / "src")
    storage.put(a, src)
    storage.put(b, src)
    storage.delete_files(a, ["model.bin", "missing.bin"])
    assert "model.bin" not in storage.list_files(a)
    storage.delete(a)
    storage.delete(a)  # a deletion run again is a no-op
    assert storage.list_files(a) == {}
    assert storage.list_files(b) == {rel: len(data) for rel, data in FILES.items()}
    with pytest.raises(FileNotFoundError):
        storage.get(a, tmp_path / "out")


def test_describe_rebuilds_the_same_storage(
    storage: cs.CheckpointStorage, tmp_path: pathlib.Path
) -> None:
    sid = str(uuid.uuid4())
    storage.put(sid, write_src(tmp_path / "src"))
    again = cs.from_config(storage.describe())
    assert again.describe() == storage.describe()
    assert again.list_files(sid) == storage.list_files(sid)
    assert sid in storage.url(sid)
    assert storage.reachable()


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\\b", "x\x00"])
def test_bad_storage_ids_and_paths_are_refused(storage: cs.CheckpointStorage, bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match="uuid"):
        storage.list_files(bad)
    with pytest.raises(InvalidArgumentError, match="not a safe relative path"):
        storage.open(str(uuid.uuid4()), "../escape")


def test_s3_record_holds_no_secret(s3_server: MotoServer, s3_bucket: str) -> None:
    record = cs.from_config(
        {"type": "s3", "bucket": s3_bucket, "prefix": "/p/", "endpoint_url": s3_server.endpoint_url}
    ).describe()
    assert record == {
        "type": "s3",
        "bucket": s3_bucket,
        "prefix": "p",
        "endpoint_url": s3_server.endpoint_url,
    }


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "hdfs"}, "checkpoint_storage.type: must be one of"),
        ({"type": "s3"}, "checkpoint_storage.bucket: required for s3 storage"),
        ({"type": "s3", "bucket": "a/b"}, "checkpoint_storage.bucket: a bucket name has no '/'"),
        ({"type": "s3", "bucket": "b", "prefix": "../x"}, "checkpoint_storage.prefix"),
        ({"type": "s3", "bucket": "b", "access_key": "k"}, "checkpoint_storage.access_key"),
        ({"type": "gcs", "bucket": "b", "endpoint_url": "http://x"}, "only for s3"),
        ({"type": "azure", "bucket": "b"}, "checkpoint_storage.container: required"),
        ({"type": "shared_fs"}, "checkpoint_storage.path: required"),
    ],
)
def test_bad_configs_name_the_field(config: dict[str, str], message: str) -> None:
    with pytest.raises(cs.StorageConfigError, match=message.replace("(", r"\(")):
        cs.from_config(config)


def test_missing_backend_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "gcsfs", None)  # as if not installed
    with pytest.raises(cs.StorageConfigError, match="needs the gcsfs package"):
        cs.from_config({"type": "gcs", "bucket": "b"})


def test_credential_env_passes_only_the_storage_types_variables() -> None:
    environ = {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AZURE_STORAGE_KEY": "z",
        "DB_PASSWORD": "p",
    }
    assert cs.credential_env({"type": "s3", "bucket": "b"}, environ) == {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
    }
    assert cs.credential_env({"type": "azure"}, environ) == {"AZURE_STORAGE_KEY": "z"}
    assert cs.credential_env({"type": "shared_fs", "path": "/x"}, environ) == {}


@pytest.mark.parametrize(
    ("path", "offset", "size", "data"),
    [
        ("a.bin", 0, 0, b""),
        ("d/ü.bin", 1 << 33, (1 << 33) + 5, b"hello"),
        ("x", 7, 9, b"\x00" * 300),
    ],
)
def test_chunk_wire_matches_protobuf(path: str, offset: int, size: int, data: bytes) -> None:
    raw = checkpoint_wire.encode_chunk(path.encode(), offset, size, data)
    msg = checkpoint_pb2.CheckpointChunk.FromString(raw)
    assert (msg.path, msg.offset, msg.file_size, msg.data) == (path, offset, size, data)
    chunk = checkpoint_wire.decode_chunk(
        checkpoint_pb2.CheckpointChunk(
            path=path, offset=offset, file_size=size, data=data
        ).SerializeToString()
    )
    assert (chunk.path, chunk.offset, chunk.file_size, bytes(chunk.data)) == (
        path,
        offset,
        size,
        data,
    )


def test_chunk_wire_refuses_truncated_messages() -> None:
    raw = checkpoint_wire.encode_chunk(b"a", 0, 3, b"abc")
    with pytest.raises(ValueError, match="truncated"):
        checkpoint_wire.decode_chunk(raw[:-1])
