"""The REST API through a real master (HTTP on port 0) with real trial processes.

Every path is exercised, with its bad-input answers: a 4xx with a JSON body naming the field or
id at fault, never a 500.
"""

from __future__ import annotations

import io
import json
import pathlib
import tarfile
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from determined_sdk import Determined, Experiment
from master_server.app import Master
from tests.master_server.web.conftest import error_of
from tests.support import wait_for

pytestmark = pytest.mark.slow
API = "/api/v1"


def test_master_info(http: httpx.Client) -> None:
    r = http.get(f"{API}/master")
    assert r.status_code == 200
    info = r.json()
    assert info["total_slots"] == 2 and info["database"] == "sqlite" and info["version"]


def test_openapi_document_lists_every_path(http: httpx.Client) -> None:
    doc = http.get(f"{API}/openapi.json").json()
    paths = set(doc["paths"])
    for p in (
        "/experiments",
        "/experiments/{experiment_id}",
        "/experiments/{experiment_id}/{action}",
        "/experiments/{experiment_id}/trials",
        "/experiments/{experiment_id}/metrics",
        "/trials/{trial_id}",
        "/trials/{trial_id}/metrics",
        "/trials/{trial_id}/logs",
        "/checkpoints/{uuid}",
        "/checkpoints/{uuid}/download",
        "/models",
        "/models/{name}/versions",
    ):
        assert API + p in paths, p
    assert not any(p.startswith("/static") for p in paths)


def test_unknown_path_and_method(http: httpx.Client) -> None:
    err = error_of(http.get(f"{API}/nope"), 404)
    assert err["code"] == "NOT_FOUND" and "/api/v1/nope" in err["message"]
    error_of(http.put(f"{API}/experiments"), 405)


def test_list_and_get_experiments(http: httpx.Client, finished: Experiment) -> None:
    body = http.get(f"{API}/experiments").json()
    exps = {e["id"]: e for e in body["experiments"]}
    e = exps[finished.id]
    assert e["state"] == "COMPLETED" and e["progress"] == 1.0
    assert e["labels"] == ["web", "grid"] and e["num_trials"] == 2
    assert e["searcher_metric"] == "loss" and e["smaller_is_better"] is True
    best = min(
        t.summary_metrics["validation_metrics"]["loss"]["min"] for t in finished.list_trials()
    )
    assert e["best_searcher_metric"] == pytest.approx(best)
    assert body["pagination"]["total"] == len(exps)

    got = http.get(f"{API}/experiments/{finished.id}").json()["experiment"]
    assert got["id"] == finished.id and got["config"]["searcher"]["name"] == "grid"

    assert finished.id in ids(http, state="COMPLETED")
    assert finished.id in ids(http, state="active,completed")
    assert finished.id not in ids(http, state="PAUSED")
    assert finished.id in ids(http, label="grid")
    assert finished.id not in ids(http, label="nope")
    assert finished.id in ids(http, name="finish")
    all_ids = ids(http, sort_by="id", order_by="desc")
    assert all_ids == sorted(all_ids, reverse=True)
    page = http.get(f"{API}/experiments", params={"limit": 1, "offset": 0}).json()
    assert len(page["experiments"]) == 1 and page["pagination"]["total"] >= 1


def ids(http: httpx.Client, **params: Any) -> list[int]:
    r = http.get(f"{API}/experiments", params=params)
    assert r.status_code == 200, r.text
    return [e["id"] for e in r.json()["experiments"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sort_by": "color"}, "sort_by"),
        ({"state": "SLEEPING"}, "state"),
        ({"archived": "maybe"}, "archived"),
        ({"order_by": "sideways"}, "order_by"),
        ({"offset": -1}, "offset"),
        ({"limit": "ten"}, "limit"),
    ],
)
def test_list_experiments_bad_input(http: httpx.Client, params: dict[str, Any], field: str) -> None:
    err = error_of(http.get(f"{API}/experiments", params=params), 400)
    assert err["code"] == "INVALID_ARGUMENT" and err["field"] == field, err
    assert err["message"].startswith(f"{field}:"), err


def test_get_experiment_bad_ids(http: httpx.Client) -> None:
    err = error_of(http.get(f"{API}/experiments/9999"), 404)
    assert err["code"] == "NOT_FOUND" and "experiment 9999" in err["message"]
    err = error_of(http.get(f"{API}/experiments/abc"), 400)
    assert err["field"] == "experiment_id" and "'abc'" in err["message"]


def test_patch_experiment_and_labels(
    http: httpx.Client, make_experiment: Callable[..., Experiment]
) -> None:
    exp = make_experiment(name="to-patch", activate=False, labels=["a"])
    url = f"{API}/experiments/{exp.id}"
    e = http.patch(url, json={"name": "patched", "description": "d", "add_labels": ["b"]})
    assert e.status_code == 200, e.text
    got = e.json()["experiment"]
    assert (got["name"], got["description"], got["labels"]) == ("patched", "d", ["a", "b"])
    got = http.patch(url, json={"remove_labels": ["a"]}).json()["experiment"]
    assert got["labels"] == ["b"]
    got = http.patch(url, json={"labels": ["x", "y"]}).json()["experiment"]
    assert got["labels"] == ["x", "y"]
    got = http.put(f"{url}/labels/z").json()["experiment"]
    assert got["labels"] == ["x", "y", "z"]
    got = http.delete(f"{url}/labels/x").json()["experiment"]
    assert got["labels"] == ["y", "z"]
    exp.reload()
    assert exp.name == "patched" and exp.labels == {"y", "z"}

    assert error_of(http.patch(url, json={"name": " "}), 400)["field"] == "name"
    assert error_of(http.patch(url, json={"colour": "red"}), 400)["field"] == "colour"
    assert error_of(http.patch(url, json={"add_labels": "x"}), 400)["field"] == "add_labels"
    assert error_of(http.patch(url, json={"name": 3}), 400)["field"] == "name"
    assert error_of(http.patch(url, json=[1, 2]), 400)["field"] == "body"
    r = http.patch(url, content=b"{not json", headers={"content-type": "application/json"})
    err = error_of(r, 400)
    assert err["field"] == "body" and err["message"].startswith("body: not valid JSON"), err
    assert error_of(http.patch(url), 400)["message"] == "body: required"
    error_of(http.patch(f"{API}/experiments/9999", json={"name": "x"}), 404)


def test_lifecycle_actions(http: httpx.Client, make_experiment: Callable[..., Experiment]) -> None:
    exp = make_experiment(name="lifecycle", hyperparameters={"steps": 400, "sleep": 0.2})
    url = f"{API}/experiments/{exp.id}"
    wait_for(
        lambda: any(t["state"] == "RUNNING" for t in http.get(f"{url}/trials").json()["trials"]),
        120,
        "a running trial",
    )
    assert error_of(http.post(f"{url}/archive"), 409)["code"] == "FAILED_PRECONDITION"
    assert http.post(f"{url}/pause").json()["experiment"]["state"] == "PAUSED"
    wait_for(
        lambda: all(t["state"] == "PAUSED" for t in http.get(f"{url}/trials").json()["trials"]),
        60,
        "trials to pause",
    )
    assert http.post(f"{url}/activate").json()["experiment"]["state"] == "ACTIVE"
    wait_for(
        lambda: any(t["state"] == "RUNNING" for t in http.get(f"{url}/trials").json()["trials"]),
        120,
        "the trial to run again",
    )
    assert error_of(http.delete(url), 409)["code"] == "FAILED_PRECONDITION"
    http.post(f"{url}/kill").raise_for_status()
    wait_for(lambda: http.get(url).json()["experiment"]["state"] == "CANCELED", 60, "CANCELED")
    assert http.post(f"{url}/archive").json()["experiment"]["archived"] is True
    assert exp.id not in ids(http)
    assert exp.id in ids(http, archived="any") and exp.id in ids(http, archived="true")
    assert http.post(f"{url}/unarchive").json()["experiment"]["archived"] is False
    assert http.delete(url).status_code == 200
    error_of(http.get(url), 404)

    err = error_of(http.post(f"{API}/experiments/{exp.id}/explode"), 400)
    assert err["field"] == "action"
    error_of(http.post(f"{API}/experiments/9999/pause"), 404)


def test_cancel_action(http: httpx.Client, make_experiment: Callable[..., Experiment]) -> None:
    exp = make_experiment(name="cancel-me", activate=False)
    got = http.post(f"{API}/experiments/{exp.id}/cancel").json()["experiment"]
    assert got["state"] in ("STOPPING_CANCELED", "CANCELED")
    wait_for(lambda: (exp.reload(), exp.state.value == "CANCELED")[1], 60, "CANCELED")


def test_trials(http: httpx.Client, finished: Experiment) -> None:
    body = http.get(f"{API}/experiments/{finished.id}/trials").json()
    trials = body["trials"]
    assert len(trials) == 2 and body["pagination"]["total"] == 2
    assert sorted(t["hparams"]["lr"] for t in trials) == [0.1, 0.5]
    for t in trials:
        assert t["state"] == "COMPLETED" and t["steps_completed"] == 60
        loss = t["summary_metrics"]["validation_metrics"]["loss"]
        assert t["searcher_metric"] == pytest.approx(loss["min"])
        one = http.get(f"{API}/trials/{t['id']}").json()["trial"]
        assert one["id"] == t["id"] and one["latest_checkpoint_uuid"]
    assert (
        http.get(f"{API}/experiments/{finished.id}/trials", params={"state": "RUNNING"}).json()[
            "trials"
        ]
        == []
    )
    one = http.get(f"{API}/experiments/{finished.id}/trials", params={"limit": 1}).json()
    assert len(one["trials"]) == 1 and one["pagination"]["total"] == 2

    error_of(http.get(f"{API}/trials/9999"), 404)
    error_of(http.get(f"{API}/experiments/9999/trials"), 404)
    err = error_of(http.get(f"{API}/experiments/{finished.id}/trials", params={"state": "x"}), 400)
    assert err["field"] == "state"
    assert error_of(http.get(f"{API}/trials/x"), 400)["field"] == "trial_id"


def test_kill_trial(http: httpx.Client, make_experiment: Callable[..., Experiment]) -> None:
    exp = make_experiment(name="kill-trial", hyperparameters={"steps": 400, "sleep": 0.2})
    tid = wait_for(lambda: [t.id for t in exp.list_trials()], 60, "a trial")[0]
    wait_for(lambda: http.get(f"{API}/trials/{tid}").json()["trial"]["state"] == "RUNNING", 120)
    assert http.post(f"{API}/trials/{tid}/kill").status_code == 200
    ended = wait_for(
        lambda: (
            http.get(f"{API}/trials/{tid}").json()["trial"]["state"] in ("CANCELED", "ERROR")
            and http.get(f"{API}/trials/{tid}").json()["trial"]["state"]
        ),
        60,
        "the trial to stop",
    )
    # Killing an ended trial is a no-op that leaves its state as it is.
    again = http.post(f"{API}/trials/{tid}/kill")
    assert again.status_code == 200 and again.json()["trial"]["state"] == ended
    error_of(http.post(f"{API}/trials/9999/kill"), 404)


def stored(master: Master, trial_id: int, group: str, name: str) -> list[tuple[int, float]]:
    out = []
    for page in master.parts["store"].iter_metrics([trial_id], group):
        out += [(p.steps_completed, p.metrics[name]) for p in page if name in p.metrics]
    return out


def test_trial_metrics(http: httpx.Client, web_master: Master, finished: Experiment) -> None:
    tid = finished.list_trials()[0].id
    body = http.get(f"{API}/trials/{tid}/metrics", params={"group": "validation"}).json()
    assert body["trial_id"] == tid and body["group"] == "validation"
    assert set(body["series"]) == {"loss", "accuracy"}
    loss = body["series"]["loss"]
    assert list(zip(loss["steps"], loss["values"], strict=True)) == stored(
        web_master, tid, "validation", "loss"
    )
    assert loss["total_points"] == 6 and len(loss["times"]) == 6
    only = http.get(f"{API}/trials/{tid}/metrics", params={"group": "training", "names": "loss"})
    assert set(only.json()["series"]) == {"loss"}
    few = http.get(f"{API}/trials/{tid}/metrics", params={"max_points": 4}).json()
    assert len(few["series"]["loss"]["values"]) == 4
    assert few["series"]["loss"]["total_points"] == 6
    names = http.get(f"{API}/trials/{tid}/metric-names").json()["metric_names"]
    assert names == {"training": ["loss"], "validation": ["accuracy", "loss"]}
    empty = http.get(f"{API}/trials/{tid}/metrics", params={"group": "nosuch"}).json()
    assert empty["series"] == {}

    for bad in (-1, 3):
        err = error_of(http.get(f"{API}/trials/{tid}/metrics", params={"max_points": bad}), 400)
        assert err["field"] == "max_points"
    err = error_of(http.get(f"{API}/trials/{tid}/metrics", params={"group": ""}), 400)
    assert err["field"] == "group"
    error_of(http.get(f"{API}/trials/9999/metrics"), 404)


def test_experiment_metrics_one_series_per_trial(
    http: httpx.Client, web_master: Master, finished: Experiment
) -> None:
    url = f"{API}/experiments/{finished.id}/metrics"
    body = http.get(url, params={"group": "validation", "names": "loss"}).json()
    trials = [t.id for t in finished.list_trials()]
    assert [t["trial_id"] for t in body["trials"]] == trials
    for t in body["trials"]:
        s = t["series"]["loss"]
        assert list(zip(s["steps"], s["values"], strict=True)) == stored(
            web_master, t["trial_id"], "validation", "loss"
        )
    one = http.get(url, params={"trial_id": trials[1]}).json()
    assert [t["trial_id"] for t in one["trials"]] == [trials[1]]
    names = http.get(f"{API}/experiments/{finished.id}/metric-names").json()["metric_names"]
    assert names["validation"] == ["accuracy", "loss"]

    err = error_of(http.get(url, params={"trial_id": 9999}), 404)
    assert "trial 9999" in err["message"]
    assert error_of(http.get(url, params={"trial_id": "x"}), 400)["field"] == "trial_id"
    assert error_of(http.get(url, params={"max_points": 10**9}), 400)["field"] == "max_points"
    error_of(http.get(f"{API}/experiments/9999/metrics"), 404)
    error_of(http.get(f"{API}/experiments/9999/metric-names"), 404)


def test_checkpoints_and_download(
    http: httpx.Client, finished: Experiment, tmp_path: pathlib.Path
) -> None:
    cks = http.get(f"{API}/experiments/{finished.id}/checkpoints").json()["checkpoints"]
    assert len(cks) == 6
    best = http.get(
        f"{API}/experiments/{finished.id}/checkpoints",
        params={"sort_by": "searcher_metric", "max_results": 1},
    ).json()["checkpoints"]
    assert best[0]["uuid"] == finished.list_checkpoints(max_results=1)[0].uuid
    tid = finished.list_trials()[0].id
    mine = http.get(
        f"{API}/trials/{tid}/checkpoints", params={"sort_by": "steps_completed", "order_by": "desc"}
    ).json()["checkpoints"]
    assert [c["steps_completed"] for c in mine] == [60, 40, 20]

    c = mine[0]
    got = http.get(f"{API}/checkpoints/{c['uuid']}").json()["checkpoint"]
    assert got["trial_id"] == tid and got["metadata"]["step"] == 6
    assert got["validation_metrics"]["loss"] > 0 and got["size_bytes"] > 3000
    r = http.get(f"{API}/checkpoints/{c['uuid']}/download")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tf:
        tf.extractall(tmp_path, filter="data")
    root = pathlib.Path(got["storage"]["path"]) / c["uuid"]
    for rel, size in got["resources"].items():
        assert (tmp_path / c["uuid"] / rel).read_bytes() == (root / rel).read_bytes()
        assert size == (root / rel).stat().st_size

    error_of(http.get(f"{API}/checkpoints/nope"), 404)
    error_of(http.get(f"{API}/checkpoints/nope/download"), 404)
    err = error_of(http.get(f"{API}/trials/{tid}/checkpoints", params={"sort_by": "size"}), 400)
    assert err["field"] == "sort_by"
    err = error_of(http.get(f"{API}/trials/{tid}/checkpoints", params={"max_results": -2}), 400)
    assert err["field"] == "max_results"
    err = error_of(http.get(f"{API}/trials/{tid}/checkpoints", params={"state": "GONE"}), 400)
    assert err["field"] == "state"
    error_of(http.get(f"{API}/experiments/9999/checkpoints"), 404)


def test_download_of_deleted_checkpoint(http: httpx.Client, finished: Experiment) -> None:
    ck = finished.list_checkpoints()[-1]
    ck.delete()
    err = error_of(http.get(f"{API}/checkpoints/{ck.uuid}/download"), 409)
    assert ck.uuid in err["message"] and "DELETED" in err["message"]


def test_logs(http: httpx.Client, finished: Experiment) -> None:
    tid = finished.list_trials()[0].id
    url = f"{API}/trials/{tid}/logs"
    lines = http.get(url).json()["logs"]
    text = [x["message"] for x in lines]
    assert any("starting trial" in m for m in text) and any(m.startswith("done") for m in text)
    ids_ = [x["id"] for x in lines]
    assert ids_ == sorted(ids_)
    found = http.get(url, params={"search": "plateau"}).json()["logs"]
    assert [x["message"].strip() for x in found] == ["WARNING: loss plateau suspected"]
    err_lines = http.get(url, params={"stream": "stderr"}).json()["logs"]
    assert err_lines and all(x["stream"] == "stderr" for x in err_lines)
    assert len(http.get(url, params={"tail": 2}).json()["logs"]) == 2
    assert len(http.get(url, params={"head": 1}).json()["logs"]) == 1
    after = http.get(url, params={"after_id": ids_[-2]}).json()["logs"]
    assert [x["id"] for x in after] == [ids_[-1]]

    assert error_of(http.get(url, params={"level": "LOUD"}), 400)["field"] == "level"
    assert error_of(http.get(url, params={"stream": "stdin"}), 400)["field"] == "stream"
    assert error_of(http.get(url, params={"tail": -1}), 400)["field"] == "tail"
    assert error_of(http.get(url, params={"rank": "zero"}), 400)["field"] == "rank"
    assert error_of(http.get(url, params={"head": 1, "tail": 1}), 400)["code"] == "INVALID_ARGUMENT"
    error_of(http.get(f"{API}/trials/9999/logs"), 404)
    error_of(http.get(f"{API}/trials/9999/logs", params={"follow": "true"}), 404)


def read_events(resp: httpx.Response) -> list[tuple[str, Any]]:
    """Parse server-sent events until the ``end`` event."""
    events: list[tuple[str, Any]] = []
    event, data = "message", ""
    for line in resp.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            events.append((event, json.loads(data)))
            if event == "end":
                return events
            event, data = "message", ""
    return events


def test_logs_follow_streams_new_lines_until_the_trial_ends(
    http: httpx.Client, make_experiment: Callable[..., Experiment]
) -> None:
    exp = make_experiment(name="follow", hyperparameters={"steps": 8, "sleep": 0.3})
    tid = wait_for(lambda: [t.id for t in exp.list_trials()], 60, "a trial")[0]
    with http.stream("GET", f"{API}/trials/{tid}/logs", params={"follow": "true"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = read_events(r)
    assert events[-1][0] == "end"
    batches = [data for ev, data in events if ev == "logs"]
    messages = [x["message"] for batch in batches for x in batch]
    assert messages[0].startswith("starting trial") or any("starting" in m for m in messages)
    assert any(m.startswith("done") for m in messages)
    assert len(batches) > 1, "lines arrived while the trial ran, in more than one batch"

    # Resuming with Last-Event-ID gives only the lines after it (here: none, then the end).
    last = batches[-1][-1]["id"]
    with http.stream(
        "GET",
        f"{API}/trials/{tid}/logs",
        params={"follow": "true"},
        headers={"Last-Event-ID": str(last)},
    ) as r:
        assert read_events(r) == [("end", {})]


def test_models(http: httpx.Client, det: Determined, finished: Experiment) -> None:
    m = det.create_model("web-model", description="d", labels=["x"], metadata={"a": 1})
    ck = finished.list_checkpoints(max_results=1)[0]
    m.register_version(ck.uuid, name="v1", comment="best")
    models = http.get(f"{API}/models").json()["models"]
    assert [x["name"] for x in models] == ["web-model"]
    assert models[0]["num_versions"] == 1 and models[0]["labels"] == ["x"]
    assert http.get(f"{API}/models", params={"label": "nope"}).json()["models"] == []
    assert http.get(f"{API}/models", params={"name": "web"}).json()["models"][0]["id"] == m.id
    got = http.get(f"{API}/models/web-model").json()["model"]
    assert got["metadata"] == {"a": 1}
    vs = http.get(f"{API}/models/web-model/versions").json()["model_versions"]
    assert [(v["version"], v["name"], v["checkpoint_uuid"]) for v in vs] == [(1, "v1", ck.uuid)]
    assert vs[0]["checkpoint"]["trial_id"] == ck.trial_id
    v = http.get(f"{API}/models/web-model/versions/1").json()["model_version"]
    assert v["comment"] == "best"

    error_of(http.get(f"{API}/models/nope"), 404)
    error_of(http.get(f"{API}/models/nope/versions"), 404)
    error_of(http.get(f"{API}/models/web-model/versions/7"), 404)
    assert error_of(http.get(f"{API}/models/web-model/versions/0"), 400)["field"] == "version"
    assert error_of(http.get(f"{API}/models/web-model/versions/x"), 400)["field"] == "version"


def test_ui_pages_and_static_files(http: httpx.Client) -> None:
    for path in ("/", "/experiments/1", "/trials/1", "/models", "/models/x"):
        r = http.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert '<script type="module"' in r.text
    r = http.get("/static/app.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    error_of(http.get("/static/nope.js"), 404)
    error_of(http.get("/static/../api.py"), 404)
    error_of(http.get("/static/%2e%2e/api.py"), 404)


def test_series_are_read_again_only_for_trials_that_moved(
    http: httpx.Client,
    web_master: Master,
    finished: Experiment,
    make_experiment: Callable[..., Experiment],
) -> None:
    reader = web_master._http.app.state.series_reader
    url = f"{API}/experiments/{finished.id}/metrics"
    first = http.get(url, params={"names": "loss"}).json()
    before = reader.reads
    again = http.get(url, params={"names": "loss"}).json()
    assert again == first and reader.reads == before, "finished trials come from the cache"

    running = make_experiment(name="growing", hyperparameters={"steps": 30, "sleep": 0.2})
    tid = wait_for(lambda: [t.id for t in running.list_trials()], 60, "a trial")[0]
    turl = f"{API}/trials/{tid}/metrics"

    def count() -> int:
        s = http.get(turl, params={"names": "loss"}).json()["series"]
        return len(s["loss"]["values"]) if "loss" in s else 0

    seen = [count()]
    wait_for(lambda: seen.append(count()) or seen[-1] > max(seen[0], 1), 120, "new points")
    wait_for(lambda: running.reload() or running.state.value == "COMPLETED", 120, "COMPLETED")
    assert count() == 30 == len(stored(web_master, tid, "validation", "loss"))
