"""`fusebench dashboard`: every storage URL `--storage` takes reaches optuna-dashboard (journal URLs are
translated to what its command line takes), and the dashboard's own API lists the run's studies."""

from __future__ import annotations

import io
import json
from pathlib import Path

import optuna
import pytest

from fusebench.cli import main
from fusebench.core.errors import UsageError
from fusebench.search import dashboard
from fusebench.search.storage import default_url, open_storage


def _studies_via_dashboard(url: str) -> list[str]:
    """Ask the real optuna-dashboard WSGI app, given the storage fusebench opens, for its study list."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(open_storage(url, heartbeat=False))
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/studies", "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
           "SERVER_PORT": "0", "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
    status: list[str] = []
    body = b"".join(app(env, lambda s, h, exc=None: status.append(s)))
    assert status[0].startswith("200"), status
    return sorted(s["study_name"] for s in json.loads(body)["study_summaries"])


def _make_run(run_dir: Path, url: str | None = None) -> str:
    run_dir.mkdir(parents=True, exist_ok=True)
    url = url or default_url(run_dir)
    for name in ("toy/concat", "toy/unimodal:lexical"):
        study = optuna.create_study(study_name=name, storage=open_storage(url, heartbeat=False), direction="maximize")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    (run_dir / "run.json").write_text(json.dumps({"config": {"storage": url}}))
    return url


@pytest.mark.parametrize("scheme", ["journal", "sqlite"])
def test_run_storage_reaches_the_dashboard(tmp_path, scheme):
    run_dir = tmp_path / "run"
    url = None if scheme == "journal" else f"sqlite:///{tmp_path / 'elsewhere.db'}"
    url = _make_run(run_dir, url)
    found = dashboard.run_storage_url(run_dir)
    assert found == url
    assert _studies_via_dashboard(found) == ["toy/concat", "toy/unimodal:lexical"]
    t = dashboard.target(found)
    if scheme == "journal":  # optuna-dashboard's own CLI takes the bare file path, not journal:///
        assert t.cli_argument == str(run_dir.resolve() / "optuna.journal")
    else:
        assert t.cli_argument == url


def test_a_moved_run_directory_finds_its_own_journal(tmp_path):
    _make_run(tmp_path / "a")
    (tmp_path / "a").rename(tmp_path / "b")
    url = dashboard.run_storage_url(tmp_path / "b")
    assert url == default_url(tmp_path / "b")
    assert len(_studies_via_dashboard(url)) == 2


def test_redacted_postgres_url_asks_for_storage(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"config": {"storage": "postgresql+psycopg://u:***@h:5432/db"}}))
    with pytest.raises(UsageError, match="pass --storage"):
        dashboard.run_storage_url(tmp_path)


def test_dashboard_on_a_directory_without_storage_exits_2(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path)]) == 2
    assert "no optuna storage" in capsys.readouterr().err
    assert main(["dashboard", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
