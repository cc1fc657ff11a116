"""Distributed search on a real PostgreSQL server.

`FUSEBENCH_PG_URL` (e.g. a CI `postgres` service container:
`postgresql+psycopg://postgres:postgres@localhost:5432/postgres`) names a running server; the test
creates a fresh database on it. Otherwise the test starts its own server from `FUSEBENCH_PG_BIN`, else
the newest `/usr/lib/postgresql/*/bin` (any version), with initdb + pg_ctl in a temporary directory on
127.0.0.1 and a free port: as the current user, or as the `postgres` OS user when running as root
(the server refuses to run as root). The study is created by the run's own code path
(`fusebench run --prepare-only --storage URL`), two `fusebench worker` processes share it, then the
owning `fusebench run` evaluates the best params. Missing server binaries are a FAILURE, not a skip.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.killed_search import search_script, suspended_script, trained_past_commit
from tests.killpoint import LoggedPopen, kill_at

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]

def _pg_bin() -> Path:
    if os.environ.get("FUSEBENCH_PG_BIN"):
        return Path(os.environ["FUSEBENCH_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
TRIALS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(*cmd: str) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:  # a normal user (a hosted CI runner) runs its own server
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return proc
    runner = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else ["su", "postgres", "-c"]
    # `su -c` takes one shell string: quote it (pg_ctl's `-o "-p PORT -k DIR ..."` is one argument)
    full = [*runner, *cmd] if runner[0] == "runuser" else [*runner, shlex.join(cmd)]
    proc = subprocess.run(full, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _start_on_a_free_port(pgdata: Path, log: Path, socket_dir: Path, attempts: int = 5) -> int:
    """`pg_ctl start` on a port that was free a moment ago; another process may take it in between
    (the port is only reserved by binding it), so a start refused for a port in use retries on another."""
    for _ in range(attempts):
        port = _free_port()
        try:
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(pgdata), "-l", str(log), "-w", "-t", "60", "-o",
                         f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
                         "start")
            return port
        except AssertionError:
            if "already in use" not in (log.read_text() if log.is_file() else ""):
                raise
            log.write_text("")  # a fresh log for the next port
    raise AssertionError(f"PostgreSQL found no free port in {attempts} attempts; see {log}")


def _given_server(url: str):
    """A fresh database on the server of `url` (dropped afterwards)."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    name = f"fusebench_test_{os.getpid()}_{int(time.time())}"
    admin = dict(host=u.host or "localhost", port=u.port or 5432, user=u.username, password=u.password,
                 dbname=u.database or "postgres", autocommit=True)
    with psycopg.connect(**admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield u.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(**admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _with_optuna_schema(url: str) -> str:
    """Create optuna's tables in the fresh database before a test's processes open it: a parent polling a
    child's study (tests.killpoint.kill_at) and the child both creating them at once raced on PostgreSQL's
    catalog (IntegrityError: duplicate key ... pg_type_typname_nsp_index, alembic_version), about one run in three."""
    storage = optuna.storages.RDBStorage(url)
    storage.engine.dispose()
    return url


@pytest.fixture()
def postgres_url():
    if os.environ.get("FUSEBENCH_PG_URL"):
        for url in _given_server(os.environ["FUSEBENCH_PG_URL"]):
            yield _with_optuna_schema(url)
        return
    missing = [b for b in ("initdb", "pg_ctl") if not (PG_BIN / b).is_file()]
    if missing:
        pytest.fail(f"PostgreSQL server binaries {missing} not found in {PG_BIN}: install PostgreSQL (e.g. apt-get "
                    "install postgresql-15), set FUSEBENCH_PG_BIN, or point FUSEBENCH_PG_URL at a running server; "
                    "this test must not be skipped")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and no `postgres` OS user to run the server as (the postgresql package adds it)")
    started = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="fusebench-pg-"))
    os.chmod(base, 0o755)
    if as_root:
        shutil.chown(base, "postgres", "postgres")
    pgdata = base / "data"
    log = base / "server.log"
    _as_postgres(str(PG_BIN / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
    running = False
    try:
        port = _start_on_a_free_port(pgdata, log, base)
        running = True
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE fusebench")
        print(f"\npostgres ({PG_BIN}) up on 127.0.0.1:{port} in {time.perf_counter() - started:.1f}s")
        yield _with_optuna_schema(f"postgresql+psycopg://postgres@127.0.0.1:{port}/fusebench")
    finally:
        if running:
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture()
def toy(synthetic_bundle, monkeypatch):
    data, cfg = synthetic_bundle
    monkeypatch.setenv("FUSEBENCH_CONFIG_DIR", str(cfg))
    return data, cfg


def test_two_workers_share_one_study_on_postgres_and_the_owner_uses_its_best_params(toy, postgres_url, tmp_path):
    from fusebench.cli import main
    from fusebench.results.records import load_records
    from fusebench.search.storage import has_heartbeat, open_storage

    data, _ = toy
    started = time.perf_counter()
    out = tmp_path / "run"
    args = ["run", "--datasets", "toy", "--strategies", "concat", "--size", "small", "--trials", str(TRIALS),
            "--seeds", "2", "--epochs", "60", "--patience", "60", "--data-dir", str(data), "--out", str(out),
            "--storage", postgres_url]
    assert main([*args, "--prepare-only"]) == 0  # the run's own code path creates the study + user attrs
    storage = open_storage(postgres_url)
    assert has_heartbeat(storage)
    study = optuna.load_study(study_name="toy/concat", storage=storage)
    attrs = study.user_attrs["fusebench"]
    assert attrs["dataset"] == "toy" and attrs["budget"]["trials"] == TRIALS and attrs["size"] == "small"
    assert attrs["data_fingerprint"] and attrs["train"]["epochs"] == 60 and study.trials == []

    cmd = [sys.executable, "-m", "fusebench", "worker", "--study", "toy/concat", "--storage", postgres_url]
    workers = [subprocess.Popen(cmd, cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (stdout, stderr) in zip(workers, outputs):
        assert w.returncode == 0, f"worker failed ({w.returncode}):\n{stdout}\n{stderr[-3000:]}"
        assert f"{TRIALS}/{TRIALS} finished in all" in stdout
    workers_s = time.perf_counter() - started

    trials = optuna.load_study(study_name="toy/concat", storage=storage).get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == TRIALS, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    starts = [t.datetime_start for t in finished]
    assert len(starts) == len(set(starts))
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(params) == len(set(params)), "two trials ran the same params"
    per_worker = {}
    for t in finished:
        per_worker[t.user_attrs["pid"]] = per_worker.get(t.user_attrs["pid"], 0) + 1
    assert set(per_worker) <= {w.pid for w in workers}

    assert main(args) == 0  # the owner: the budget is done, so it only evaluates the best params
    study = optuna.load_study(study_name="toy/concat", storage=storage)
    assert len([t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == TRIALS
    records = load_records(out / "results.jsonl")
    assert len(records) == 2 and all(r.status == "ok" and r.n_trials == TRIALS for r in records)
    for r in records:
        assert {k: r.params[k] for k in study.best_params} == study.best_params
        assert r.sampler["name"] == "TPESampler" and r.pruner["name"] == "MedianPruner" and r.stats
    wall = time.perf_counter() - started
    print(f"postgres: {TRIALS} trials by 2 workers {per_worker} (pid → finished trials), "
          f"{len(trials) - len(finished)} surplus/failed; workers done in {workers_s:.1f}s; test wall-clock {wall:.1f}s")


_KILLED_ON_POSTGRES = search_script("pg/k", trials=4, hang_at=1, heartbeat_s=1)


def test_a_killed_worker_s_trial_failed_by_optuna_s_own_heartbeat_check_is_not_charged_to_the_cap(
        postgres_url, monkeypatch, tmp_path):
    """On PostgreSQL optuna's `optimize` itself fails stale trials (heartbeat older than the grace period)
    before each trial it starts, not only `fail_stale_running`. A real process is killed (SIGKILL) in its
    trial 1 after telling trial 0; a process resumes at once, within the grace period, so its first
    `fail_stale_running` finds nothing stale; its first trial outlasts the grace, and its next trial's start
    (inside optuna) fails trial 1 and re-enqueues it. The killed process's seconds in trial 1 must not count:
    they are set back to its committed (told) ones. Before the fix only `fail_stale_running` dropped them, so
    a stale trial failed inside optuna's loop (in any worker) kept its seconds in the cap, charged twice."""

    import fusebench.search.clock as clock_module
    import fusebench.search.storage as storage_module
    from fusebench.search.clock import COMMITTED_PREFIX, KEY_PREFIX, LOST_PREFIX, search_time
    from fusebench.search.study import Budget, open_study, run_search, trial_counts

    monkeypatch.setattr(storage_module, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(storage_module, "GRACE_PERIOD_S", 3)
    proc = LoggedPopen([sys.executable, "-c", _KILLED_ON_POSTGRES, postgres_url], tmp_path / "child.log", cwd=REPO)
    # trial 0 told, and trial 1 has trained for 0.5 s and saved it
    attrs = kill_at(proc, lambda: trained_past_commit(postgres_url, "pg/k", 0.5, told=True), 90, poll_s=0.1)
    (key,) = [k for k in attrs if k.startswith(KEY_PREFIX)]
    ident = key[len(KEY_PREFIX):]

    slept: list[int] = []

    def outlasts_the_grace(trial: optuna.Trial) -> float:
        if not slept:
            slept.append(trial.number)
            time.sleep(4.5)
        return trial.suggest_float("x", 0.0, 1.0)

    study, _ = run_search(open_study("pg/k", storage_module.open_storage(postgres_url), 0), outlasts_the_grace,
                          Budget(trials=4, timeout_s=1000, seeds=1))
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "stale" not in failed[0].user_attrs, "failed by optuna's heartbeat check"
    assert (trial_counts(study, 4).spent, trial_counts(study, 4).retried) == (4, 1)
    assert study.user_attrs[key] == pytest.approx(study.user_attrs[COMMITTED_PREFIX + ident])
    assert study.user_attrs[LOST_PREFIX + ident] >= 0.5 and search_time(study).lost >= 0.5
    resumer = sum(v for k, v in study.user_attrs.items() if k.startswith(KEY_PREFIX) and k != key)
    assert clock_module.search_time(study).seconds == pytest.approx(study.user_attrs[COMMITTED_PREFIX + ident] + resumer)
    assert study.user_attrs[COMMITTED_PREFIX + ident] >= 0.3, "trial 0 (0.3 s) was told: its seconds count"


_KILLED_BATCHED_ON_POSTGRES = """
import sys, time
import fusebench.search.storage as storage_module
from fusebench.search.study import Budget, open_study
from fusebench.search.trial_batch import BatchObjective, run_batched_search
storage_module.HEARTBEAT_INTERVAL_S = 1

def train(trials, xs, may_start):
    if trials[0].number >= 2:
        time.sleep(120)  # round 2: killed while it trains
    return [0.5 for _ in trials]

study = open_study("pg/b", storage_module.open_storage(sys.argv[1]), 0)
run_batched_search(study, BatchObjective(lambda t: t.suggest_float("x", 0.0, 1.0), train),
                   Budget(trials=4, timeout_s=1000, seeds=1), 2)
"""


def test_a_killed_worker_s_batched_round_is_failed_and_retried_on_postgres(postgres_url, monkeypatch, tmp_path):
    """A batched round's trials are asked (`study.ask`), not run by optuna's `optimize`, so optuna records
    no heartbeat for them; its stale check only fails trials whose heartbeat is old, so the trials of a
    worker killed mid-round stayed RUNNING for ever, and every other process waited for them. A real
    worker is SIGKILLed in round 2 (trials 2-3); after the grace period the next process fails both and
    retries them: 4 of 4 trials spent, 2 retried. Before the fix `fail_stale_running` failed none."""

    import fusebench.search.storage as storage_module
    from fusebench.search.stale import fail_stale_running
    from fusebench.search.study import Budget, open_study, trial_counts
    from fusebench.search.trial_batch import BatchObjective, run_batched_search

    monkeypatch.setattr(storage_module, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(storage_module, "GRACE_PERIOD_S", 3)
    proc = LoggedPopen([sys.executable, "-c", _KILLED_BATCHED_ON_POSTGRES, postgres_url], tmp_path / "child.log",
                       cwd=REPO)
    round_2_since: list[float] = []

    def round_2_trained_a_while() -> bool | None:
        """Round 1 told and round 2 training for 1.5 s (its heartbeats, if any, recorded)."""
        try:
            seen = optuna.load_study(study_name="pg/b", storage=postgres_url)
        except KeyError:
            return None
        if len(seen.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) != 2 or \
                len(seen.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) != 2:
            return None
        round_2_since[:] = round_2_since or [time.monotonic()]
        return True if time.monotonic() - round_2_since[0] >= 1.5 else None

    kill_at(proc, round_2_trained_a_while, 90, poll_s=0.2)
    time.sleep(4.0)  # past the grace period
    study = open_study("pg/b", storage_module.open_storage(postgres_url), 0)
    assert fail_stale_running(study) == 2, "the killed worker's round is failed as stale"
    study, _ = run_batched_search(study, BatchObjective(lambda t: t.suggest_float("x", 0.0, 1.0),
                                                        lambda trials, xs, may_start: [0.5 for _ in trials]),
                                  Budget(trials=4, timeout_s=1000, seeds=1), 2)
    counts = trial_counts(study, 4)
    assert (counts.spent, counts.retried) == (4, 2)


def test_forget_refuses_a_study_whose_trial_a_live_worker_runs_and_forgets_it_once_the_heartbeat_stops(
        postgres_url, monkeypatch, tmp_path):
    """`fusebench forget` holds the run directory's lock, which a worker on another machine never takes: a
    trial with a fresh heartbeat is a live worker's, and its study is not deleted under it (before: it was).
    Once the heartbeat is older than the grace period the trial is a killed worker's and the cell goes."""
    import json

    import fusebench.search.storage as storage_module
    from fusebench.core.errors import UsageError
    from fusebench.run.forget import forget_cells

    monkeypatch.setattr(storage_module, "GRACE_PERIOD_S", 2)
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.jsonl").write_text(json.dumps({"dataset": "toy", "strategy": "concat"}) + "\n", encoding="utf-8")
    storage = storage_module.open_storage(postgres_url)
    trial = optuna.create_study(study_name="toy/concat", storage=storage).ask()
    storage.record_heartbeat(trial._trial_id)  # what a worker's heartbeat thread writes every interval
    with pytest.raises(UsageError, match=r"trials running in the studies to forget \(toy/concat: trial\(s\) 0\)"):
        forget_cells(out, ["toy/concat"], postgres_url)
    assert "toy/concat" in {s.study_name for s in storage.get_all_studies()}
    time.sleep(3)  # the worker is gone: no heartbeat for longer than the grace period
    assert [f.studies for f in forget_cells(out, ["toy/concat"], postgres_url)] == [["toy/concat"]]
    assert "toy/concat" not in {s.study_name for s in storage.get_all_studies()}
    # a worker killed between `ask` (its host and pid written) and its first heartbeat left no heartbeat,
    # which optuna never calls stale (review of stop 30: forget was refused for ever); its pid is gone here
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = optuna.create_study(study_name="toy/concat", storage=storage).ask()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", dead.pid)
    assert [f.studies for f in forget_cells(out, ["toy/concat"], postgres_url)] == [["toy/concat"]]


_SUSPENDED_ON_POSTGRES = suspended_script("pg/stall", heartbeat_s=1)


def test_a_suspended_worker_whose_heartbeat_went_stale_wakes_and_finishes_its_search(postgres_url, monkeypatch,
                                                                                     tmp_path):
    """A live worker SIGSTOPped in a trial for longer than the heartbeat's grace has that trial failed by
    another process (optuna's heartbeat check; its retry callback re-enqueues the params). When it wakes,
    its next `trial.report` hits a finished trial: before, `ValueError: Cannot tell a FAIL trial` crashed
    its whole search (review of stop 31). It must finish its budget, the failed trial retried."""
    import signal

    import fusebench.search.storage as storage_module
    from fusebench.search.stale import fail_stale_running
    from fusebench.search.study import open_study, trial_counts

    monkeypatch.setattr(storage_module, "GRACE_PERIOD_S", 3)
    owner = LoggedPopen([sys.executable, "-c", _SUSPENDED_ON_POSTGRES, postgres_url], tmp_path / "owner.log", cwd=REPO)

    def in_a_trial() -> bool | None:
        try:
            seen = optuna.load_study(study_name="pg/stall", storage=postgres_url)
        except KeyError:
            return None
        return any(t.intermediate_values for t in seen.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) or None

    deadline = time.monotonic() + 90
    while in_a_trial() is None:
        assert owner.poll() is None and time.monotonic() < deadline, owner.output_tail()
        time.sleep(0.05)
    owner.send_signal(signal.SIGSTOP)
    try:
        time.sleep(4.5)  # past the grace: its heartbeat is stale
        assert fail_stale_running(open_study("pg/stall", storage_module.open_storage(postgres_url), 0)) == 1
    finally:
        owner.send_signal(signal.SIGCONT)
    assert owner.wait(90) == 0, owner.output_tail()
    assert "FINISHED" in owner.output_tail()
    counts = trial_counts(optuna.load_study(study_name="pg/stall", storage=postgres_url), 3)
    assert (counts.spent, counts.complete, counts.retried) == (3, 3, 1)


def test_on_postgres_the_heartbeat_alone_judges_another_hosts_trial(postgres_url, monkeypatch, tmp_path):
    """Review of stop 31: `live_running` also applied the journal's clock test (another host's trial is
    stale once its owner's search clock has not moved for `FOREIGN_GRACE_S`), and `forget` watched such
    trials for that long. On PostgreSQL the heartbeat decides: a beating worker whose clock is quiet is
    live (before: forgotten under it, once the watch ran out), and a trial whose heartbeat is stale is a
    killed worker's at once (before: `forget` waited the whole watch first)."""
    import json
    import threading

    import fusebench.search.stale as stale
    import fusebench.search.storage as storage_module
    from fusebench.core.errors import UsageError
    from fusebench.run.forget import forget_cells
    from fusebench.search.clock import KEY_PREFIX, TRIAL_CLOCK_ATTR

    monkeypatch.setattr(storage_module, "GRACE_PERIOD_S", 2)
    monkeypatch.setattr(stale, "_watched", {})
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.jsonl").write_text(json.dumps({"dataset": "toy", "strategy": "concat"}) + "\n", encoding="utf-8")
    storage = storage_module.open_storage(postgres_url)
    study = optuna.create_study(study_name="toy/concat", storage=storage)
    trial = study.ask()
    for attr, value in (("host", "machine-b"), ("pid", 4242), (TRIAL_CLOCK_ATTR, "machine-b:4242:abcd")):
        trial.set_user_attr(attr, value)
    study.set_user_attr(KEY_PREFIX + "machine-b:4242:abcd", 12.0)  # a quiet clock: the owner saves it rarely
    stop = threading.Event()

    def beat() -> None:  # the worker on machine-b is alive
        while not stop.is_set():
            storage.record_heartbeat(trial._trial_id)
            stop.wait(0.3)

    beating = threading.Thread(target=beat)
    beating.start()
    monkeypatch.setattr(stale, "FOREIGN_GRACE_S", 0.5)
    try:
        time.sleep(1.0)
        with pytest.raises(UsageError, match=r"toy/concat: trial\(s\) 0"):
            forget_cells(out, ["toy/concat"], postgres_url)
    finally:
        stop.set()
        beating.join()
    monkeypatch.setattr(stale, "FOREIGN_GRACE_S", 30.0)
    time.sleep(2.5)  # the worker is gone: its heartbeat is older than the grace
    t0 = time.monotonic()
    assert [f.studies for f in forget_cells(out, ["toy/concat"], postgres_url)] == [["toy/concat"]]
    assert time.monotonic() - t0 < 10, "decided by the heartbeat, not after a watch of FOREIGN_GRACE_S"
