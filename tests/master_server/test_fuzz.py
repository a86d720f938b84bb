"""Hostile input to every RPC (hypothesis; fixed seed, bounded budget): never INTERNAL/UNKNOWN.

Every RPC in the generated descriptors gets random bytes as its request and requests whose fields
are fuzzed by type (negative/huge ids, empty/huge/unicode/NUL strings, NaN/inf numbers, unknown
enum values, deep or huge JSON in ``*_json`` fields, YAML anchor bombs in configs, big repeated
fields), sent by an admin so that the checks past authorization are reached. Long-poll timeouts
are kept under a second so the budget goes to cases, not waits. Afterwards the master still
serves, its SQLite file passes ``PRAGMA integrity_check``, and nothing was written outside its
data directory. The number of cases tried is printed in the terminal summary.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import pkgutil
import sqlite3
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import determined_sdk.proto as proto_pkg
from determined_sdk.errors import InvalidArgumentError
from determined_sdk.proto import auth_pb2, master_pb2
from master_server.app import Master
from master_server.auth.core import PUBLIC_METHODS

EXAMPLES = 25  # per RPC, for fuzzed fields; random bytes get as many again
BAD = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
FINE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # our own client deadline on a long poll or follow
    grpc.StatusCode.CANCELLED,
}

BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "\n".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)
)
HOSTILE_STRINGS = [
    "",
    "\x00",
    "a\x00b",
    "x" * 70_000,
    "é🙂\u202e",
    "../../etc/passwd",
    "/etc/passwd",
    BOMB,
    "[" * 5000,
    '{"a":' * 5000 + "1" + "}" * 5000,
    "9" * 5001,
    json.dumps({"a": 1e308, "b": [1] * 10}),
    '{"x": NaN, "y": Infinity}',
    "name: x\nsearcher: {name: adaptive_asha, metric: m, max_length: {batches: 99999999999999999999}, max_trials: 999999999999}\nentrypoint: x",  # noqa: E501
    "name: x\nhyperparameters: {a: {type: int, minval: 0, maxval: 99999999999999999999}}\nsearcher: {name: grid, metric: m, max_length: 1}\nentrypoint: x",  # noqa: E501
]


def _all_methods() -> list[tuple[str, Any, bool]]:
    out = []
    for m in pkgutil.iter_modules(proto_pkg.__path__):
        if not m.name.endswith("_pb2"):
            continue
        mod = importlib.import_module(f"{proto_pkg.__name__}.{m.name}")
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for meth in svc.methods:
                cls = message_factory.GetMessageClass(meth.input_type)
                out.append((f"/{svc.full_name}/{meth.name}", cls, meth.server_streaming))
    return sorted(out, key=lambda x: x[0])


METHODS = _all_methods()
I32 = st.one_of(st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1))
I64 = st.one_of(st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1))
U64 = st.one_of(st.sampled_from([0, 1, 2**64 - 1]), st.integers(0, 2**64 - 1))
FLOATS = st.one_of(
    st.sampled_from([0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e308]), st.floats()
)
TEXT = st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=30))


def _json_text() -> st.SearchStrategy[str]:
    leaf = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=10), st.none())
    tree = st.recursive(
        leaf,
        lambda c: st.one_of(
            st.lists(c, max_size=4), st.dictionaries(st.text(max_size=5), c, max_size=4)
        ),
        max_leaves=40,
    )
    return st.one_of(st.sampled_from(HOSTILE_STRINGS), tree.map(json.dumps))


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = fd.type
    if fd.name.startswith("timeout"):
        return st.one_of(st.floats(-1.0, 0.5), st.sampled_from([float("nan"), -1e308]))
    if t in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return I32
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return I64
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return U64
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return FLOATS if t == FieldDescriptor.TYPE_DOUBLE else st.floats(width=32)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 40)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_STRING:
        return _json_text() if fd.name.endswith("json") or fd.name == "config" else TEXT
    raise AssertionError(f"unhandled field type {t}")


def _message(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in desc.fields:
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            assert fd.message_type is not None
            if fd.message_type.GetOptions().map_entry:
                k = _scalar(fd.message_type.fields_by_name["key"])
                v = _scalar(fd.message_type.fields_by_name["value"])
                fields[fd.name] = st.dictionaries(k, v, max_size=4)
                continue
            if depth >= 2:
                continue
            sub = _message(fd.message_type, depth + 1)
            fields[fd.name] = st.lists(sub, max_size=6) if fd.is_repeated else sub
        elif fd.is_repeated:
            fields[fd.name] = st.lists(_scalar(fd), max_size=6)
        else:
            fields[fd.name] = _scalar(fd)
    return st.fixed_dictionaries({}, optional=fields)


def _build(cls: Any, values: dict[str, Any]) -> Any:
    msg = cls()
    for name, v in values.items():
        fd = msg.DESCRIPTOR.fields_by_name[name]
        try:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                sub_cls = message_factory.GetMessageClass(fd.message_type)
                if fd.message_type.GetOptions().map_entry:
                    getattr(msg, name).update(v)
                elif fd.is_repeated:
                    getattr(msg, name).extend(_build(sub_cls, x) for x in v)
                else:
                    getattr(msg, name).CopyFrom(_build(sub_cls, v))
            elif fd.is_repeated:
                getattr(msg, name).extend(v)
            else:
                setattr(msg, name, v)
        except (ValueError, TypeError):
            continue  # a value the client library itself refuses (e.g. a float32 overflow)
    return msg


class Fuzzer:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.channel = grpc.insecure_channel(master.address)
        self.cases = 0
        self.codes: dict[str, int] = {}
        login = self.channel.unary_unary(
            "/detsdk.v1.MasterService/Login",
            request_serializer=master_pb2.LoginRequest.SerializeToString,
            response_deserializer=master_pb2.LoginResponse.FromString,
        )
        self._login = login
        self.token = login(master_pb2.LoginRequest(username="admin")).token
        create = self.channel.unary_unary(
            "/detsdk.v1.UserService/CreateUser",
            request_serializer=auth_pb2.CreateUserRequest.SerializeToString,
        )
        create(
            auth_pb2.CreateUserRequest(username="victim", password="v"),
            metadata=[("authorization", f"Bearer {self.token}")],
        )

    def send(self, method: str, payload: bytes, streaming: bool) -> None:
        """Send raw request bytes as the admin; fail on INTERNAL/UNKNOWN."""
        self.cases += 1
        token = self.token
        if method.endswith("/Logout"):  # end a throwaway session, not the fuzzer's
            token = self._login(master_pb2.LoginRequest(username="admin")).token
        md = [("authorization", f"Bearer {token}")]
        ident = lambda b: b  # noqa: E731
        try:
            if streaming:
                call = self.channel.unary_stream(method, request_serializer=ident)
                for _ in call(payload, metadata=md, timeout=5):
                    pass
            else:
                self.channel.unary_unary(method, request_serializer=ident)(
                    payload, metadata=md, timeout=10
                )
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
            assert code not in BAD, f"{method}: {code.name}: {e.details()[:300]}"
            fine = FINE | (
                {grpc.StatusCode.UNAUTHENTICATED} if method.endswith("/Login") else set()
            )
            assert code in fine, f"{method}: unexpected {code.name}: {e.details()[:300]}"
            assert e.details(), f"{method}: {code.name} without a message"
        self.codes[code.name] = self.codes.get(code.name, 0) + 1


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def fuzzer(fuzz_root: pathlib.Path, request: pytest.FixtureRequest) -> Iterator[Fuzzer]:
    m = Master(fuzz_root / "master", slots=2, preempt_grace_s=2.0).start()
    f = Fuzzer(m)
    yield f
    try:
        # Still serving, the database is intact, nothing was written outside the data dir.
        info = f.channel.unary_unary(
            "/detsdk.v1.MasterService/GetMasterInfo",
            request_serializer=master_pb2.GetMasterInfoRequest.SerializeToString,
            response_deserializer=master_pb2.GetMasterInfoResponse.FromString,
        )(master_pb2.GetMasterInfoRequest(), metadata=[("authorization", f"Bearer {f.token}")])
        assert info.total_slots == 2
    finally:
        f.channel.close()
        m.stop()
    with sqlite3.connect(fuzz_root / "master" / "master.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(p.name for p in fuzz_root.iterdir()) == ["master"]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\nfuzz: {f.cases} hostile requests over {len(METHODS)} RPCs; answers {f.codes}"
            )


def _skip_public(method: str) -> None:
    if method in PUBLIC_METHODS:
        pytest.skip("public method")


@pytest.mark.parametrize(("method", "cls", "streaming"), METHODS, ids=[m[0] for m in METHODS])
def test_fuzzed_fields(fuzzer: Fuzzer, method: str, cls: Any, streaming: bool) -> None:
    @seed(20261202)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(values=_message(cls.DESCRIPTOR))
    def run(values: dict[str, Any]) -> None:
        req = _build(cls, values)
        if method.endswith(("/ChangePassword", "/SetUserActive")):
            req.username = "victim"  # never lock the fuzzer's own admin out
        fuzzer.send(method, req.SerializeToString(), streaming)

    run()


@pytest.mark.parametrize(("method", "cls", "streaming"), METHODS, ids=[m[0] for m in METHODS])
def test_random_bytes(fuzzer: Fuzzer, method: str, cls: Any, streaming: bool) -> None:
    @seed(20261202)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=st.binary(max_size=256))
    def run(payload: bytes) -> None:
        if method.endswith(("/ChangePassword", "/SetUserActive")):
            return  # the admin's own password/state must survive (victim only, above)
        fuzzer.send(method, payload, streaming)

    run()


CONFIG_KEYS = {
    "name": TEXT,
    "entrypoint": st.one_of(TEXT, st.lists(TEXT, max_size=3)),
    "max_restarts": I64,
    "labels": st.lists(TEXT, max_size=3),
    "resources": st.fixed_dictionaries({}, optional={"slots_per_trial": I64}),
}
_NUM = st.one_of(
    I64,
    FLOATS,
    st.sampled_from([10**30, -(10**30), 2**63, True, "1", None, [], {}]),
)
_LENGTH = st.one_of(_NUM, st.dictionaries(st.sampled_from(["batches", "epochs", "records"]), _NUM))
_HP = st.one_of(
    _NUM,
    TEXT,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["int", "double", "log", "categorical", "const", "bogus"])},
        optional={
            "minval": _NUM,
            "maxval": _NUM,
            "base": _NUM,
            "count": _NUM,
            "vals": st.lists(_NUM, max_size=3),
            "val": _NUM,
        },
    ),
)
_SEARCHER = st.fixed_dictionaries(
    {
        "name": st.sampled_from(
            ["single", "grid", "random", "adaptive_asha", "pbt", "custom", "bogus"]
        ),
        "metric": st.one_of(st.just("loss"), TEXT),
    },
    optional={
        "max_trials": _NUM,
        "max_length": _LENGTH,
        "max_concurrent_trials": _NUM,
        "max_rungs": _NUM,
        "divisor": _NUM,
        "num_rungs": _NUM,
        "population_size": _NUM,
        "num_rounds": _NUM,
        "length_per_round": _LENGTH,
        "smaller_is_better": st.one_of(st.booleans(), _NUM),
        "mode": TEXT,
    },
)


@seed(20261202)
@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    base=st.fixed_dictionaries({}, optional=CONFIG_KEYS),
    searcher=_SEARCHER,
    hps=st.dictionaries(st.text(min_size=1, max_size=5), _HP, max_size=3),
    as_yaml=st.booleans(),
)
def test_fuzzed_configs_get_a_clear_error_or_a_search(
    base: dict[str, Any], searcher: dict[str, Any], hps: dict[str, Any], as_yaml: bool
) -> None:
    """The validator and searcher construction (what CreateExperiment runs) on hostile configs."""
    import yaml as yaml_mod

    from master_server.config import validate_experiment_config
    from master_server.searcher.factory import make_search_method

    cfg = {"entrypoint": "python x.py", **base, "searcher": searcher, "hyperparameters": hps}
    raw: Any = yaml_mod.safe_dump(cfg) if as_yaml else cfg
    try:
        valid = validate_experiment_config(raw)
        make_search_method(valid)
    except InvalidArgumentError as e:
        assert str(e)
