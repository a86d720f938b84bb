"""The master under load: N simulated live trials plus M SDK clients, on SQLite and PostgreSQL.

Run: ``python benchmarks/load_bench.py [--trials 100,1000,10000] [--clients 0,100] [--duration 30]
[--db sqlite,postgres] [--procs 2]``.

For each database and each N it starts a master in its own process (port 0, a fresh SQLite file or
PostgreSQL schema), registers N unmanaged trials, then for ``--duration`` seconds:

- every simulated trial makes the RPCs a real trial makes: it holds the preemption long poll
  (30 s, re-armed when it times out), asks once for its searcher operation, reports one metric
  batch a second and a checkpoint a minute (trials are spread over ``--procs`` load processes, on
  ``grpc.aio``, so the load generator is not the bottleneck);
- M clients loop over create (a paused experiment), list (one page of 100), get, and
  ``StreamMetrics`` of one trial, each on its own channel;
- a probe kills one extra waiting trial at a time and times how long the master takes to wake its
  preemption long poll.

It prints, per run: reports offered and served (a report is served when it is answered OK within
5 s), their ratio, p50/p99 per RPC, long-poll wake-up p50/p99, and the master's peak RSS. Goals
(issue 14): served/offered >= 0.99, report p99 <= 50 ms, wake-up p99 <= 100 ms, create p99 <= 200
ms, list/get p99 <= 50 ms, RSS <= 1 GiB. The load processes share the machine's cores with the
master, so on a small machine the figures include their cost.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from determined_sdk.metrics_wire import pack_reports  # noqa: E402
from determined_sdk.proto import (  # noqa: E402
    checkpoint_pb2,
    checkpoint_pb2_grpc,
    common_pb2,
    experiment_pb2,
    experiment_pb2_grpc,
    master_pb2,
    master_pb2_grpc,
    searcher_pb2,
    searcher_pb2_grpc,
    trial_pb2,
    trial_pb2_grpc,
)

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PAUSED_CONFIG = (
    "name: load\nentrypoint: python3 train.py\n"
    "searcher: {name: single, metric: loss, max_length: 10}\n"
)
REPORT_DEADLINE_S = 5.0
ERRORS: dict[str, set[str]] = {}  # per SDK call: the distinct errors seen (printed at the end)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def ms(x: float) -> str:
    return "   n/a" if x != x else f"{x * 1000:6.1f}"


# -- the master ---------------------------------------------------------------------------------
class MasterProc:
    def __init__(self, db: str, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.schema = ""
        url = None
        if db == "postgres":
            import psycopg

            self.schema = f"load_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(
                "host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True
            ) as c:
                c.execute(f'CREATE SCHEMA "{self.schema}"')
            url = f"{PG_URL}?options=-csearch_path%3D{self.schema}"
        port_file = tmp / "port"
        cmd = [sys.executable, "-m", "master_server", "--data-dir", str(tmp / "data"),
               "--port", "0", "--port-file", str(port_file), "--slots", "1",
               "--log-level", "WARNING"]  # fmt: skip
        if url:
            cmd += ["--db", url]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(cmd, env=env, cwd=tmp)
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("master did not start")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port_file.read_text().strip()}"

    def rss_mib(self) -> float:
        try:
            for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.schema:
            import psycopg

            with psycopg.connect(
                "host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True
            ) as c:
                c.execute(f'DROP SCHEMA "{self.schema}" CASCADE')


class _Bearer(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds the session token to every call (the master needs one on every RPC but Login)."""

    def __init__(self, token: str) -> None:
        self.md = (("authorization", f"Bearer {token}"),)

    def _details(self, d: Any) -> Any:
        return grpc.aio.ClientCallDetails(
            d.method, d.timeout, tuple(d.metadata or ()) + self.md, d.credentials, d.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _BearerStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


def channel(address: str, token: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        address,
        options=[("grpc.use_local_subchannel_pool", 1)],
        interceptors=[_Bearer(token), _BearerStream(token)],
    )


def login(address: str) -> str:
    """A session token of the loopback quick start's admin (the empty password)."""
    with grpc.insecure_channel(address) as ch:
        stub = master_pb2_grpc.MasterServiceStub(ch)
        return str(stub.Login(master_pb2.LoginRequest(username="admin", password="")).token)


async def register_trials(address: str, token: str, n: int) -> tuple[int, list[int]]:
    """One unmanaged experiment with ``n`` trials; returns (experiment id, trial ids)."""
    async with channel(address, token) as ch:
        stub = experiment_pb2_grpc.ExperimentServiceStub(ch)
        first = await stub.CreateUnmanagedTrial(
            experiment_pb2.CreateUnmanagedTrialRequest(config="name: load-trials")
        )
        exp_id = first.experiment.id
        ids = [first.trial.id]
        sem = asyncio.Semaphore(16)

        async def one() -> int:
            async with sem:
                r = await stub.CreateUnmanagedTrial(
                    experiment_pb2.CreateUnmanagedTrialRequest(experiment_id=exp_id)
                )
                return int(r.trial.id)

        ids += await asyncio.gather(*(one() for _ in range(n - 1)))
        return exp_id, ids


# -- simulated trials (in load processes) -------------------------------------------------------
async def _trials_main(
    address: str, token: str, trial_ids: list[int], duration: float
) -> dict[str, Any]:
    # A few channels per process, as many trial processes would open many connections.
    chans = [channel(address, token) for _ in range(4)]
    out: dict[str, Any] = {"report": [], "offered": 0, "served": 0, "ckpt": [], "op": []}
    start = time.monotonic()
    end = start + duration

    async def trial(tid: int, ch: grpc.aio.Channel) -> None:
        tstub = trial_pb2_grpc.TrialServiceStub(ch)
        sstub = searcher_pb2_grpc.SearcherServiceStub(ch)
        cstub = checkpoint_pb2_grpc.CheckpointServiceStub(ch)

        async def preemption() -> None:
            while time.monotonic() < end:
                try:
                    await sstub.WatchPreemption(
                        searcher_pb2.WatchPreemptionRequest(trial_id=tid, timeout_seconds=30),
                        timeout=35,
                    )
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(1)

        poll = asyncio.create_task(preemption())
        t0 = time.perf_counter()
        try:
            await sstub.GetSearcherOperation(
                searcher_pb2.GetSearcherOperationRequest(trial_id=tid, timeout_seconds=1),
                timeout=REPORT_DEADLINE_S,
            )
            out["op"].append(time.perf_counter() - t0)
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(random.random())  # spread the reports over each second
        step = 0
        next_ckpt = time.monotonic() + random.random() * 60
        while True:
            now = time.monotonic()
            if now >= end:
                break
            step += 1
            out["offered"] += 1
            req = pack_reports(
                tid, uuid.uuid4().hex, [("training", step, {"loss": 1.0}, time.time())]
            )
            t0 = time.perf_counter()
            try:
                await tstub.ReportMetrics(req, timeout=REPORT_DEADLINE_S)
                out["served"] += 1
                out["report"].append(time.perf_counter() - t0)
            except grpc.aio.AioRpcError:
                pass
            if now >= next_ckpt:
                next_ckpt += 60
                t0 = time.perf_counter()
                try:
                    await cstub.ReportCheckpoint(
                        checkpoint_pb2.ReportCheckpointRequest(
                            trial_id=tid, uuid=str(uuid.uuid4()), steps_completed=step,
                            resources={"model.pt": 10}, metadata_json="{}",
                        ),
                        timeout=REPORT_DEADLINE_S,
                    )  # fmt: skip
                    out["ckpt"].append(time.perf_counter() - t0)
                except grpc.aio.AioRpcError:
                    pass
            # Next report one second after this one was due (the trial does not speed up to
            # catch up after a slow call, as a training loop would not).
            await asyncio.sleep(max(0.0, now + 1.0 - time.monotonic()))
        poll.cancel()

    await asyncio.gather(*(trial(t, chans[i % len(chans)]) for i, t in enumerate(trial_ids)))
    for ch in chans:
        await ch.close()
    return out


def _trials_proc(address: str, token: str, trial_ids: list[int], duration: float, q: Any) -> None:
    q.put(asyncio.run(_trials_main(address, token, trial_ids, duration)))


# -- SDK clients and the wake-up probe (in the main process) -----------------------------------
async def _clients_main(
    address: str, token: str, clients: int, duration: float, exp_id: int, trial_ids: list[int]
) -> dict[str, list[float]]:
    lat: dict[str, list[float]] = {"create": [], "list": [], "get": [], "iter_metrics": []}
    end = time.monotonic() + duration

    async def timed(name: str, call: Callable[[], Awaitable[Any]]) -> None:
        t0 = time.perf_counter()
        try:
            await call()
            lat[name].append(time.perf_counter() - t0)
        except grpc.aio.AioRpcError as e:
            lat.setdefault(f"{name} errors", []).append(float(e.code().value[0]))
            ERRORS.setdefault(name, set()).add(f"{e.code().name}: {(e.details() or '')[:80]}")

    async def client() -> None:
        async with channel(address, token) as ch:
            es = experiment_pb2_grpc.ExperimentServiceStub(ch)
            ts = trial_pb2_grpc.TrialServiceStub(ch)
            await asyncio.sleep(random.random())
            while time.monotonic() < end:
                await timed("create", lambda: es.CreateExperiment(
                    experiment_pb2.CreateExperimentRequest(config=PAUSED_CONFIG, activate=False)
                ))  # fmt: skip
                await timed("list", lambda: es.ListExperiments(
                    experiment_pb2.ListExperimentsRequest(
                        pagination=common_pb2.Pagination(limit=100)
                    )
                ))  # fmt: skip
                await timed("get", lambda: es.GetExperiment(
                    experiment_pb2.GetExperimentRequest(experiment_id=exp_id)
                ))  # fmt: skip

                async def stream() -> None:
                    tid = random.choice(trial_ids)
                    req = trial_pb2.StreamMetricsRequest(
                        trial_ids=[tid], group="training", columnar=True, json_columns=True
                    )  # as the SDK asks
                    auth = (("authorization", f"Bearer {token}"),)
                    async for _ in ts.StreamMetrics(req, metadata=auth):
                        pass

                await timed("iter_metrics", stream)
                await asyncio.sleep(0.5)  # a person's script does something between calls

    await asyncio.gather(*(client() for _ in range(clients)))
    return lat


async def _probe_main(address: str, token: str, exp_id: int, duration: float) -> list[float]:
    """Kill a waiting trial every two seconds; time the master's wake-up of its long poll."""
    wakes: list[float] = []
    end = time.monotonic() + duration
    async with channel(address, token) as ch:
        es = experiment_pb2_grpc.ExperimentServiceStub(ch)
        ts = trial_pb2_grpc.TrialServiceStub(ch)
        ss = searcher_pb2_grpc.SearcherServiceStub(ch)
        await asyncio.sleep(2)
        while time.monotonic() + 5 < end:
            r = await es.CreateUnmanagedTrial(
                experiment_pb2.CreateUnmanagedTrialRequest(experiment_id=exp_id)
            )
            tid = r.trial.id
            poll = asyncio.ensure_future(ss.WatchPreemption(
                searcher_pb2.WatchPreemptionRequest(trial_id=tid, timeout_seconds=30)
            ))  # fmt: skip
            await asyncio.sleep(0.5)  # let the poll park on the master
            await ts.KillTrial(trial_pb2.KillTrialRequest(trial_id=tid))
            t0 = time.perf_counter()
            resp = await poll
            if resp.preempt:
                wakes.append(time.perf_counter() - t0)
            await asyncio.sleep(1.5)
    return wakes


async def _main_side(
    address: str, token: str, clients: int, duration: float, exp_id: int, trial_ids: list[int]
) -> tuple[dict[str, list[float]], list[float]]:
    lat, wakes = await asyncio.gather(
        _clients_main(address, token, clients, duration, exp_id, trial_ids),
        _probe_main(address, token, exp_id, duration),
    )
    return lat, wakes


# -- one run ------------------------------------------------------------------------------------
def run(db: str, n: int, clients: int, duration: float, procs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="detsdk-load-") as d:
        master = MasterProc(db, pathlib.Path(d))
        try:
            t0 = time.perf_counter()
            token = login(master.address)
            exp_id, ids = asyncio.run(register_trials(master.address, token, n))
            setup_s = time.perf_counter() - t0
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            workers = [
                ctx.Process(
                    target=_trials_proc,
                    args=(master.address, token, ids[i::procs], duration, q),
                )
                for i in range(procs)
            ]
            for w in workers:
                w.start()
            rss = [master.rss_mib()]
            stop_rss = time.monotonic() + duration

            async def sample_rss() -> None:
                while time.monotonic() < stop_rss:
                    rss.append(master.rss_mib())
                    await asyncio.sleep(1)

            async def main_side() -> tuple[dict[str, list[float]], list[float]]:
                res = await asyncio.gather(
                    _main_side(master.address, token, clients, duration, exp_id, ids), sample_rss()
                )
                return res[0]

            lat, wakes = asyncio.run(main_side())
            results = [q.get(timeout=duration + 120) for _ in workers]
            for w in workers:
                w.join(30)
        finally:
            master.stop()
    reports = [x for r in results for x in r["report"]]
    offered = sum(r["offered"] for r in results)
    served = sum(r["served"] for r in results)
    ckpts = [x for r in results for x in r["ckpt"]]
    ops = [x for r in results for x in r["op"]]
    print(
        f"\n== {db}, N={n} live trials, M={clients} clients, {duration:.0f} s"
        f" (registering the trials took {setup_s:.1f} s)"
    )
    print(
        f"reports served/offered: {served}/{offered} = {served / max(1, offered):.3f}"
        f"  ({served / duration:.0f} reports/s)    master RSS max {max(rss):.0f} MiB"
    )
    print(f"{'rpc':<22}{'n':>8}{'p50 ms':>9}{'p99 ms':>9}")
    rows = [
        ("ReportMetrics", reports),
        ("ReportCheckpoint", ckpts),
        ("GetSearcherOperation", ops),
        ("long-poll wake-up", wakes),
        *((k, v) for k, v in lat.items() if not k.endswith("errors")),
    ]
    for name, xs in rows:
        print(f"{name:<22}{len(xs):>8}{ms(pct(xs, 0.5)):>9}{ms(pct(xs, 0.99)):>9}")
    for k, v in lat.items():
        if k.endswith("errors"):
            print(f"{k}: {len(v)} ({'; '.join(sorted(ERRORS.get(k[:-7], ())))})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", default="100,1000", help="comma-separated N (e.g. 100,1000,10000)")
    p.add_argument("--clients", default="100", help="comma-separated M (e.g. 0,10,100)")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--db", default="sqlite", help="sqlite, postgres or sqlite,postgres")
    p.add_argument("--procs", type=int, default=2, help="load-generator processes for the trials")
    a = p.parse_args()
    print(f"load benchmark: {os.cpu_count()} cores; master and load generator share them")
    for db in a.db.split(","):
        for n in (int(x) for x in a.trials.split(",")):
            for m in (int(x) for x in a.clients.split(",")):
                run(db, n, m, a.duration, a.procs)


if __name__ == "__main__":
    main()
