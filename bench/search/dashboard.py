"""`fusebench dashboard RUN_DIR`: optuna-dashboard on a run's studies (optional extra `dashboard`).

optuna-dashboard's own command line takes a journal *file path* or an SQLAlchemy URL, not the
`journal:///abs/file` URL that `--storage` takes. Here the storage is opened by fusebench's
`open_storage` (so every form `--storage` accepts works: journal, sqlite, PostgreSQL) and the
storage object is handed to optuna-dashboard's server; `cli_argument` says what to pass to the
stand-alone `optuna-dashboard` command instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fusebench.core.errors import UsageError
from fusebench.search.storage import _journal_path, default_url, kind, open_storage, redact


@dataclass(frozen=True)
class DashboardTarget:
    url: str  # the storage URL as --storage takes it
    cli_argument: str  # the same storage as the stand-alone `optuna-dashboard` command takes it


def run_storage_url(run_dir: Path, storage: str | None = None) -> str:
    """The storage of a run: `storage` when given, else RUN_DIR/optuna.journal when the run has one, else
    the one its run.json names (a PostgreSQL server, or a journal passed with --storage).

    run.json keeps PostgreSQL URLs without their password: pass `--storage` with the password then."""
    if storage:
        kind(storage)
        return storage
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: not a directory; pass the --out directory of a `fusebench run`")
    meta_path = run_dir / "run.json"
    url = None
    if meta_path.is_file():
        try:
            url = (json.loads(meta_path.read_text()).get("config") or {}).get("storage")
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"{meta_path}: unreadable ({exc}); pass --storage URL instead") from None
    if url and "***" in url:
        raise UsageError(f"{meta_path} names the storage {url} without its password; "
                         "pass --storage with the full URL")
    own = run_dir / "optuna.journal"
    if url and kind(url) == "journal" and (not _journal_path(url).is_file() or (
            own.is_file() and _journal_path(url).resolve() != own.resolve())):
        # the run directory was moved (its journal moved with it) or copied / restored elsewhere (a
        # journal of its own beside run.json): run.json's URL names another run's journal, which a
        # `forget` would edit under that run's feet (stop 29 did so to the live standard run)
        url = None
    url = url or default_url(run_dir)
    if kind(url) == "journal" and not _journal_path(url).is_file():
        raise UsageError(f"{run_dir}: no optuna storage (no optuna.journal); was it run with --storage? pass it here")
    return url


def target(url: str) -> DashboardTarget:
    """The URL and the form the stand-alone optuna-dashboard command accepts (a journal's bare file path)."""
    if kind(url) == "journal":
        path = str(_journal_path(url))
        return DashboardTarget(url, "/" + path.lstrip("/"))  # journal:///abs parses to "//abs"
    return DashboardTarget(url, url)


def serve(url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard for the storage at `url` until interrupted (blocks)."""
    try:
        import optuna_dashboard
    except ImportError:
        raise UsageError("fusebench dashboard needs optuna-dashboard: pip install 'fusebench[dashboard]' "
                         "(or pip install optuna-dashboard)") from None
    storage = open_storage(url, heartbeat=False)
    optuna_dashboard.run_server(storage, host=host, port=port)


def describe(url: str, host: str, port: int) -> str:
    t = target(url)
    return (f"fusebench: optuna-dashboard for {redact(url)} at http://{host}:{port}/ (Ctrl-C stops it); "
            f"stand-alone: optuna-dashboard {redact(t.cli_argument)}")
