"""The supervisor encodes its three messages itself: the bytes must be the generated code's."""

from __future__ import annotations

import pytest

from determined_sdk.log_levels import LEVELS
from determined_sdk.proto import logs_pb2, master_pb2
from master_server import supervisor

_LINES = [
    {"trial_id": 7, "timestamp": 1_796_283_128.4686, "rank": 0, "stream": "stdout"},
    {"trial_id": 2**31 - 1, "timestamp": 0.5, "rank": 3, "stream": "stderr"},
    {"trial_id": 1, "timestamp": 1e-9, "rank": 2**31 - 1, "stream": "stdout"},
]
_TEXTS = ["", "hello", "naïve ünïcödé ✓ 𝄞", "\ufffd" * 3, "x" * 70_000]


@pytest.mark.parametrize("line", _LINES)
@pytest.mark.parametrize("text", _TEXTS)
@pytest.mark.parametrize("level", LEVELS)
def test_log_lines_are_the_generated_codes_bytes(
    line: dict[str, object], text: str, level: str
) -> None:
    fields = {**line, "run_id": 12}
    ours = supervisor.log_line(level=level, text=text, **fields)  # type: ignore[arg-type]
    theirs = logs_pb2.LogLine(
        level=logs_pb2.LogLevel.Value("LOG_LEVEL_" + level),
        message=text,
        **fields,  # type: ignore[arg-type]
    )
    assert ours == theirs.SerializeToString()
    assert logs_pb2.LogLine.FromString(ours) == theirs


def test_a_ship_logs_request_is_the_generated_codes_bytes() -> None:
    lines = [
        logs_pb2.LogLine(trial_id=3, timestamp=2.25, rank=r, stream="stdout", message=m, run_id=1)
        for r, m in enumerate(["a", "", "ü" * 300])
    ]
    ours = supervisor.ship_logs_request(
        [
            supervisor.log_line(
                trial_id=3, timestamp=2.25, rank=r, stream="stdout", level="INFO", text=m, run_id=1
            )
            for r, m in enumerate(["a", "", "ü" * 300])
        ],
        "b" * 32,
    )
    for line in lines:
        line.level = logs_pb2.LOG_LEVEL_INFO
    theirs = logs_pb2.ShipLogsRequest(lines=lines, batch_id="b" * 32)
    assert ours == theirs.SerializeToString()
    assert (
        supervisor.ship_logs_request([], "id")
        == logs_pb2.ShipLogsRequest(batch_id="id").SerializeToString()
    )


@pytest.mark.parametrize("code", [0, 1, 2, 127, 137, 255, -1, -9, -15, 2**31 - 1, -(2**31)])
def test_an_exit_report_is_the_generated_codes_bytes(code: int) -> None:
    ours = supervisor.report_trial_exit_request(41, 3, code)
    theirs = master_pb2.ReportTrialExitRequest(trial_id=41, run_id=3, exit_code=code)
    assert ours == theirs.SerializeToString()
    assert master_pb2.ReportTrialExitRequest.FromString(ours).exit_code == code


def test_levels_fields_and_methods_match_the_protos() -> None:
    assert {
        level: logs_pb2.LogLevel.Value("LOG_LEVEL_" + level) for level in LEVELS
    } == supervisor.LOG_LEVELS
    line = logs_pb2.LogLine.DESCRIPTOR.fields_by_name
    numbers = {name: line[name].number for name in line}
    assert numbers == {
        "id": 1,
        "trial_id": 2,
        "timestamp": 3,
        "rank": 4,
        "stream": 5,
        "level": 6,
        "message": 7,
        "run_id": 8,
    }
    logs = logs_pb2.DESCRIPTOR.services_by_name["LogService"]
    master = master_pb2.DESCRIPTOR.services_by_name["MasterService"]
    assert f"/{logs.full_name}/ShipLogs" == supervisor.SHIP_LOGS
    assert f"/{master.full_name}/ReportTrialExit" == supervisor.REPORT_TRIAL_EXIT
    assert logs.methods_by_name["ShipLogs"].input_type.full_name == "detsdk.v1.ShipLogsRequest"
    assert (
        master.methods_by_name["ReportTrialExit"].input_type.full_name
        == "detsdk.v1.ReportTrialExitRequest"
    )
