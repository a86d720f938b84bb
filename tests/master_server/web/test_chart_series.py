"""Chart reads through a real master (HTTP on port 0, SQLite file): the answers built from the
packed series equal the exact read path's, after a master restart and after a trial restart
that supersedes points; bad parameters are 400s naming the field."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from master_server.app import Master
from master_server.charts import MAX_NAMES
from master_server.domain import ExperimentState, MetricReport, NewExperiment
from master_server.store.base import Store
from master_server.web.metrics import exact_series
from master_server.web.serialize import JSON
from tests.master_server.web.conftest import error_of

pytestmark = pytest.mark.slow
API = "/api/v1"


def start(path: Path) -> Master:
    return Master(path, slots=1, http_port=0).start()


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Master]:
    m = start(tmp_path)
    yield m
    m.stop()


def fill(store: Store, trials: int = 3, points: int = 3000) -> tuple[int, list[int]]:
    exp = store.create_experiment(
        NewExperiment(
            name="chart",
            config={"searcher": {"name": "random", "metric": "loss"}},
            original_config="",
            project_id=1,
            searcher_name="random",
            state=ExperimentState.COMPLETED,
        )
    )
    ids = []
    for t in range(trials):
        tid = store.create_trial(exp.id, request_id=f"t{t}", hparams={}).id
        ids.append(tid)
        for lo in range(0, points, 250):
            reports = [
                MetricReport(
                    "validation",
                    i,
                    {"loss": math.nan if i % 97 == 0 else math.sin(i / (7 + t)), "acc": i / 3},
                    1e9 + i,
                )
                for i in range(lo, lo + 250)
            ]
            reports.append(MetricReport("training", lo, {"loss": float(lo)}, 1e9 + lo))
            store.add_metrics(tid, f"b{lo}", reports, run_id=1)
    return int(exp.id), ids


def check_same(http: httpx.Client, store: Store, exp_id: int, ids: list[int]) -> dict[str, Any]:
    """Every chart answer equals the exact path's; returns one of them."""
    body: dict[str, Any] = {}
    for group in ("validation", "training"):
        for names in ([], ["loss"], ["acc", "nope"]):
            for max_points in (0, 4, 37, 400, 5000):
                params: dict[str, Any] = {"group": group, "max_points": max_points}
                if names:
                    params["names"] = ",".join(names)
                r = http.get(f"{API}/experiments/{exp_id}/metrics", params=params)
                assert r.status_code == 200, r.text
                body = r.json()
                want = exact_series(store, ids, group, sorted(names), max_points)
                got = {str(t["trial_id"]): {"series": t["series"]} for t in body["trials"]}
                assert got == json.loads(JSON(want).body), (group, names, max_points)
                one = http.get(f"{API}/trials/{ids[0]}/metrics", params=params).json()
                assert one["series"] == got[str(ids[0])]["series"]
    return body


def series_rows(path: Path) -> tuple[int, int]:
    """(segments, complete states) in the master's database file."""
    with sqlite3.connect(path / "master.db") as db:
        segments = db.execute("SELECT count(*) FROM metric_series").fetchone()[0]
        complete = db.execute("SELECT count(*) FROM metric_series_state WHERE complete").fetchone()
    return int(segments), int(complete[0])


def test_chart_answers_equal_the_exact_path_and_survive_a_restart(tmp_path: Path) -> None:
    m = start(tmp_path)
    try:
        exp_id, ids = fill(m.parts["store"])
        with httpx.Client(base_url=str(m.http_url), timeout=60) as http:
            before = check_same(http, m.parts["store"], exp_id, ids)
        kept = series_rows(tmp_path)
        assert kept[0] > 0 and kept[1] == 2 * len(ids)
    finally:
        m.stop()
    m = start(tmp_path)  # a fresh process' caches: the series come from the database file
    try:
        assert series_rows(tmp_path) == kept  # nothing was rebuilt
        with httpx.Client(base_url=str(m.http_url), timeout=60) as http:
            after = check_same(http, m.parts["store"], exp_id, ids)
        assert after == before
        assert series_rows(tmp_path) == kept
    finally:
        m.stop()


def test_trial_restart_supersedes_points_in_the_chart(master: Master) -> None:
    store = master.parts["store"]
    exp_id, ids = fill(store, trials=2, points=2000)
    tid = ids[1]
    # What the engine does when run 2 starts from the checkpoint at step 1200 ...
    assert store.supersede_metrics(tid, 2, 1200) > 0
    # ... and run 2 reports again from there, with other values.
    redo = [MetricReport("validation", i, {"loss": -5.0}, 2e9 + i) for i in range(1201, 1501)]
    store.add_metrics(tid, "run2", redo, run_id=2)
    with httpx.Client(base_url=str(master.http_url), timeout=60) as http:
        check_same(http, store, exp_id, ids)
        s = http.get(
            f"{API}/trials/{tid}/metrics", params={"names": "loss,acc", "max_points": 0}
        ).json()["series"]
    assert s["loss"]["steps"] == list(range(1501)) and s["loss"]["values"][1201:] == [-5.0] * 300
    assert s["acc"]["steps"] == list(range(1201))  # run 2 did not report acc past 1200


def test_points_out_of_order_and_stored_before_the_series_existed(master: Master) -> None:
    store = master.parts["store"]
    exp_id, ids = fill(store, trials=2, points=1000)
    store.add_metrics(ids[0], "late", [MetricReport("validation", 10, {"loss": 9.0}, 0.0)])
    db = master.parts["store"]
    with db._write() as conn:  # what a database migrated to 0008 holds for trial 2
        conn.exec_driver_sql(f"DELETE FROM metric_series WHERE trial_id = {ids[1]}")
        conn.exec_driver_sql(f"DELETE FROM metric_series_state WHERE trial_id = {ids[1]}")
    with httpx.Client(base_url=str(master.http_url), timeout=60) as http:
        check_same(http, store, exp_id, ids)


def test_bad_chart_parameters_are_400s_naming_the_field(master: Master) -> None:
    exp_id, ids = fill(master.parts["store"], trials=1, points=250)
    with httpx.Client(base_url=str(master.http_url), timeout=60) as http:
        for url in (f"{API}/experiments/{exp_id}/metrics", f"{API}/trials/{ids[0]}/metrics"):
            for bad in ("-1", "3", str(10**9), "x", "1.5"):
                err = error_of(http.get(url, params={"max_points": bad}), 400)
                assert err["field"] == "max_points", err
            for bad in ("", "  ", "a\x00b", "g" * 2000):
                err = error_of(http.get(url, params={"group": bad}), 400)
                assert err["field"] == "group", err
            many = ",".join(f"m{i}" for i in range(MAX_NAMES + 1))
            for bad in (many, "x" * 2000, "a\x00b"):
                err = error_of(http.get(url, params={"names": bad}), 400)
                assert err["field"] == "names", err
                assert "names" in err["message"]
