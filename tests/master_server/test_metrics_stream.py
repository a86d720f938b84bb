"""StreamMetrics through a real master: columns as JSON text for readers that ask for them,
the same points as the repeated fields for those that do not."""

from __future__ import annotations

import math
import time
from typing import Any

from determined_sdk.metrics_wire import page_columns
from determined_sdk.proto import trial_pb2
from master_server.app import Master
from master_server.domain import MetricReport
from tests.support import Stubs, single_config


def test_json_columns_carry_the_same_points(stubs: Stubs, master: Master) -> None:
    store = master.parts["store"]
    exp = stubs.create(single_config("python -c pass"), activate=False)
    t1 = store.create_trial(exp.id, request_id="a", hparams={"x": 1})
    t2 = store.create_trial(exp.id, request_id="b", hparams={"x": 2})
    now = time.time()
    reports = [
        MetricReport(
            'va"l' if i % 4 == 0 else "training",
            i // 2,
            {"loss": 1 / (i + 1), "nan": math.nan} if i % 5 else {"x": i / 3},
            now + i / 7 if i != 9 else 12.5,  # one time SQLite cannot send as an integer
        )
        for i in range(40)
    ]
    store.add_metrics(t1.id, "b1", reports, run_id=1)
    store.add_metrics(t2.id, "b1", reports[:15], run_id=3)

    def read(**kw: Any) -> tuple[list[trial_pb2.StreamMetricsResponse], list[tuple[Any, ...]]]:
        req = trial_pb2.StreamMetricsRequest(
            trial_ids=[t1.id, t2.id], page_size=8, columnar=True, **kw
        )
        pages = list(stubs.trials.StreamMetrics(req))
        points = [p for page in pages for p in zip(*page_columns(page.columns), strict=True)]
        return pages, [(*p[:3], repr(p[3]), *p[4:]) for p in points]

    plain_pages, plain = read()
    json_pages, as_json = read(json_columns=True)
    assert len(plain) == 55 and as_json == plain
    assert not any(p.columns.steps_completed_json for p in plain_pages)
    # On SQLite the database gathers the columns as text, passed on as is; a page with a
    # time that is not a whole number of 2**-22 s sends its times as doubles.
    cols = [p.columns for p in json_pages]
    assert all(c.steps_completed_json and c.groups_json and c.trial_run_ids_json for c in cols)
    assert [bool(c.timestamps_json) for c in cols] == [True, False, True, True, True, True, False]
    assert plain[9][4] == 12.5 and plain[10][4] == now + 10 / 7
