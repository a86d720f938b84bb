"""The web UI in a real browser (Debian's chromium, headless, driven by Playwright) against a
real master with real trials.

Skipped, with the reason, only when chromium or the playwright package is missing; CI installs
both (``apt-get install -y chromium``; never ``playwright install``). Set
``DETSDK_SCREENSHOT_DIR`` to keep a screenshot of every page these tests visit.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from determined_sdk import Determined, Experiment
from master_server.app import Master
from tests.support import wait_for

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("DETSDK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 60_000

if not pathlib.Path(CHROMIUM).exists():
    pytest.skip(
        f"chromium not found at {CHROMIUM} (install it: apt-get install -y chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, web_master: Master, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page on the master's UI; the test fails on any script error in it."""
    ctx = browser.new_context(
        viewport={"width": 1400, "height": 1000}, base_url=web_master.http_url
    )
    ctx.set_default_timeout(TIMEOUT_MS)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))

    def on_console(m: Any) -> None:
        # A 4xx answer is logged by the browser itself; the UI shows those (tested apart).
        if m.type == "error" and not m.text.startswith("Failed to load resource"):
            errors.append(f"console {m.type}: {m.text}")

    pg.on("console", on_console)
    yield pg
    shots = os.environ.get("DETSDK_SCREENSHOT_DIR")
    if shots:
        pathlib.Path(shots).mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(pathlib.Path(shots) / f"{request.node.name}.png"), full_page=True)
    ctx.close()
    assert not errors, errors


def stored_count(master: Master, trial_id: int, group: str, name: str) -> int:
    n = 0
    for batch in master.parts["store"].iter_metrics([trial_id], group):
        n += sum(1 for p in batch if name in p.metrics)
    return n


def test_list_shows_the_experiments_and_filters_and_sorts(
    page: Any, finished: Experiment, make_experiment: Callable[..., Experiment]
) -> None:
    other = make_experiment(name="other-exp", activate=False, labels=["zzz"])
    page.goto("/")
    page.wait_for_selector(f"#experiments tr[data-id='{other.id}']")
    row = page.locator(f"#experiments tr[data-id='{finished.id}']")
    assert row.locator(".exp-name").inner_text() == "finished"
    assert row.locator(".state").inner_text() == "COMPLETED"
    assert "grid" in row.inner_text() and "web" in row.inner_text()

    ids = page.eval_on_selector_all("#experiments tbody tr", "rs => rs.map(r => +r.dataset.id)")
    assert ids == sorted(ids, reverse=True)  # newest first
    page.click("#experiments th[data-key='id']")  # id desc -> asc
    wait_for(
        lambda: (
            page.eval_on_selector_all("#experiments tbody tr", "rs => rs.map(r => +r.dataset.id)")
            == sorted(ids)
        ),
        30,
        "ascending ids",
    )

    page.fill("input[aria-label='label filter']", "zzz")
    page.wait_for_selector(f"#experiments tr[data-id='{finished.id}']", state="detached")
    assert page.locator("#experiments tbody tr").count() == 1
    page.fill("input[aria-label='label filter']", "")
    page.select_option("select[aria-label='state filter']", "COMPLETED")
    page.wait_for_selector(f"#experiments tr[data-id='{other.id}']", state="detached")
    assert page.locator(f"#experiments tr[data-id='{finished.id}']").count() == 1

    page.click(f"#experiments tr[data-id='{finished.id}'] .exp-name")
    page.wait_for_url(f"**/experiments/{finished.id}")
    page.wait_for_selector("#curves path.series")


def test_experiment_chart_has_one_series_per_trial_with_the_stored_points(
    page: Any, web_master: Master, finished: Experiment
) -> None:
    trials = finished.list_trials()
    page.goto(f"/experiments/{finished.id}")
    page.wait_for_selector("#curves path.series")
    series = page.eval_on_selector_all(
        "#curves path.series",
        "ps => ps.map(p => [p.dataset.label, +p.dataset.points, p.getAttribute('d')])",
    )
    assert sorted(label for label, _, _ in series) == sorted(f"trial {t.id}" for t in trials)
    for label, points, d in series:
        tid = int(label.split()[1])
        assert points == stored_count(web_master, tid, "validation", "loss") == 6
        assert d.count("M") + d.count("L") == points
    legend = page.eval_on_selector_all("#curves-legend a", "as => as.map(a => +a.dataset.trial)")
    assert sorted(legend) == sorted(t.id for t in trials)

    # Another metric and group, x by time: still one series per trial, with its stored points.
    page.select_option("select[name='group']", "training")
    page.wait_for_function(
        'document.querySelector("#curves svg text.axis-label:last-of-type")'
        "?.textContent.startsWith('training')"
    )
    page.select_option("select[name='x']", "time")
    page.wait_for_selector("text=time since the trial's first report")
    pts = page.eval_on_selector_all("#curves path.series", "ps => ps.map(p => +p.dataset.points)")
    assert pts == [stored_count(web_master, t.id, "training", "loss") for t in trials]

    # Trials table: one row per trial, sortable by the searcher metric; the scatter: one dot each.
    rows = page.eval_on_selector_all("#trials tbody tr", "rs => rs.map(r => +r.dataset.trial)")
    assert sorted(rows) == sorted(t.id for t in trials)
    page.click("#trials th[data-key='searcher_metric']")
    best_first = page.eval_on_selector_all(
        "#trials tbody tr", "rs => rs.map(r => +r.dataset.trial)"
    )
    by_metric = sorted(trials, key=lambda t: t.summary_metrics["validation_metrics"]["loss"]["min"])
    assert best_first == [t.id for t in by_metric]
    assert page.locator("#hp-scatter circle.point").count() == len(trials)
    assert "lr" in page.locator("select[name='hparam']").input_value()
    page.select_option("select[name='hpview']", "parallel")
    page.wait_for_selector("#hp-scatter polyline.pc-line")
    lines = page.eval_on_selector_all(
        "#hp-scatter polyline.pc-line", "ls => ls.map(l => l.points.numberOfItems)"
    )
    assert lines == [2] * len(trials)  # axes: lr (the one varying hparam) and the metric


def test_pause_and_activate_buttons(
    page: Any, http: httpx.Client, make_experiment: Callable[..., Experiment]
) -> None:
    exp = make_experiment(name="buttons", hyperparameters={"steps": 400, "sleep": 0.2})
    page.goto(f"/experiments/{exp.id}")
    pause = page.locator("button[data-action='pause']")
    pause.wait_for()
    wait_for(lambda: pause.is_enabled(), 30, "an enabled Pause button")
    pause.click()
    page.wait_for_selector("h1 .state[data-state='PAUSED']")
    assert http.get(f"/api/v1/experiments/{exp.id}").json()["experiment"]["state"] == "PAUSED"
    activate = page.locator("button[data-action='activate']")
    wait_for(lambda: activate.is_enabled(), 30, "an enabled Activate button")
    activate.click()
    page.wait_for_selector("h1 .state[data-state='ACTIVE']")
    assert http.get(f"/api/v1/experiments/{exp.id}").json()["experiment"]["state"] == "ACTIVE"

    page.click("button[data-action='kill']")
    page.wait_for_selector("h1 .state[data-state='CANCELED']")  # the page polls until it ends


def test_trial_logs_follow_while_it_runs(
    page: Any, det: Determined, make_experiment: Callable[..., Experiment]
) -> None:
    exp = make_experiment(name="follow-ui", hyperparameters={"steps": 12, "sleep": 0.4})
    tid = wait_for(lambda: [t.id for t in exp.list_trials()], 60, "a trial")[0]
    wait_for(lambda: det.get_trial(tid).state.value == "RUNNING", 120, "a running trial")
    page.goto(f"/trials/{tid}")
    page.wait_for_selector("#log-status.follow-on")
    assert page.locator("input[name='follow']").is_checked()
    page.wait_for_selector("#logs .line")
    first = page.locator("#logs .line").count()
    page.wait_for_selector("#logs .line >> text=done", timeout=120_000)
    assert page.locator("#logs .line").count() > first, "lines arrived after the page opened"
    page.wait_for_selector("#log-status >> text=end of logs")
    ids = page.eval_on_selector_all("#logs .line", "ls => ls.map(l => +l.dataset.id)")
    assert ids == sorted(set(ids)), "each line once, in order"

    # Search and level filter (not following: the trial has finished).
    page.uncheck("input[name='follow']")
    page.fill("input[name='search']", "plateau")
    wait_for(
        lambda: (
            page.locator("#logs .line").count() == 1
            and "plateau" in page.locator("#logs .line").inner_text()
        ),
        30,
        "only the matching line",
    )
    page.fill("input[name='search']", "")
    page.select_option("select[name='level']", "ERROR")
    wait_for(lambda: page.locator("#logs .line").count() == 0, 30, "no ERROR lines")


def test_trial_page_charts_and_checkpoint_download(
    page: Any, finished: Experiment, tmp_path: pathlib.Path
) -> None:
    tid = finished.list_trials()[0].id
    page.goto(f"/trials/{tid}")
    page.wait_for_selector("#trial-charts .chart-box[data-metric='loss'] path.series")
    groups = page.eval_on_selector_all(
        "#trial-charts .chart-box[data-metric='loss'] path.series",
        "ps => ps.map(p => p.dataset.label)",
    )
    assert groups == ["Training", "Validation"]
    page.wait_for_selector("#checkpoints tr[data-uuid]")
    with page.expect_download() as dl:
        page.locator("#checkpoints tr[data-uuid] a", has_text="download").first.click()
    path = tmp_path / "ckpt.tar"
    dl.value.save_as(path)
    assert path.stat().st_size > 3000


def test_model_registry_pages(page: Any, det: Determined, finished: Experiment) -> None:
    m = det.create_model("ui-model", description="for the browser", labels=["prod"])
    ck = finished.list_checkpoints(max_results=1)[0]
    m.register_version(ck.uuid, name="best")
    page.goto("/models")
    page.click("#models a >> text=ui-model")
    page.wait_for_url("**/models/ui-model")
    row = page.locator("#versions tr[data-version='1']")
    assert ck.uuid in row.inner_text() and "best" in row.inner_text()
    row.locator(f"a[href='/trials/{ck.trial_id}']").click()
    page.wait_for_url(f"**/trials/{ck.trial_id}")


def test_an_unknown_experiment_shows_the_servers_error(page: Any) -> None:
    page.goto("/experiments/9999")
    assert "experiment 9999 not found" in page.locator("[role=alert]").inner_text()


def test_login_page_when_the_master_needs_a_password(
    browser: Any, master_factory: Callable[..., Master], tmp_path: pathlib.Path
) -> None:
    m = master_factory(http_port=0, initial_admin_password="s3cret")
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=m.http_url)
    ctx.set_default_timeout(TIMEOUT_MS)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    try:
        # No session: the list sends the browser to the login page, which comes back after.
        pg.goto("/experiments?q=1")
        pg.wait_for_url("**/login?next=%2Fexperiments%3Fq%3D1")
        pg.fill("input[name=username]", "admin")
        pg.fill("input[name=password]", "wrong")
        pg.click("button[type=submit]")
        alert = pg.locator("form.login .error")
        alert.wait_for(state="visible")
        assert "invalid username or password" in alert.inner_text()
        shots = pathlib.Path(os.environ.get("DETSDK_SCREENSHOT_DIR") or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(shots / "login.png"))
        pg.fill("input[name=password]", "s3cret")
        pg.click("button[type=submit]")
        pg.wait_for_url("**/experiments?q=1")
        pg.get_by_text("No experiments match.").wait_for()  # the list, reached with the cookie
        (cookie,) = [c for c in ctx.cookies() if c["name"] == "detsdk_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert pg.evaluate("document.cookie") == ""  # no script can read the session
    finally:
        ctx.close()
    assert not errors, errors
