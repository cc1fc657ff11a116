"""`fusebench report RUN_DIR --html`: one self-contained report.html (PNGs embedded as data URIs)
plus plots/*.png. It reads only the run directory: records, run.json and the optuna storage."""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fusebench.core.io import atomic_write_bytes
from fusebench.results.records import Record, load_records
from fusebench.reports import plots
from fusebench.reports.leaderboard import _stars, leaderboard
from fusebench.reports.ranking import rank

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1300px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;font-size:13px;margin:.6rem 0 1rem} th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3} td.l,th.l{text-align:left} tr.unimodal td{background:#f7f7f7} tr.failed td{color:#a00}
.yes{color:#137333;font-weight:600} .no{color:#a50e0e} .meta td{text-align:left;white-space:normal} .meta th{white-space:nowrap;vertical-align:top} img{max-width:100%;height:auto;border:1px solid #eee;margin:.3rem 0}
.grid{display:flex;flex-wrap:wrap;gap:.8rem;align-items:flex-start} .grid>div{flex:0 1 auto;max-width:100%} code{font-size:12px}
nav a{margin-right:.8rem} .tw{overflow-x:auto;max-width:100%} .note{color:#555;font-size:13px}
"""


def _img(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _fmt(x: object, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return html.escape(str(x))


def _table(g: pd.DataFrame) -> str:
    head = ("<tr><th>rank</th><th class=l>strategy</th><th class=l>family</th><th>mean ± std</th><th>95% CI</th>"
            "<th>p vs best unimodal</th><th>beats best unimodal</th><th>seeds</th><th>train samples/s</th>"
            "<th>infer samples/s</th><th>params</th></tr>")
    rows = []
    for _, r in g.iterrows():
        beats = {True: '<span class=yes>yes</span>', False: '<span class=no>no</span>'}.get(r.get("beats_best_unimodal"), "")
        lo, hi = r.get("ci95_low", np.nan), r.get("ci95_high", np.nan)
        ci = f"[{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) else f"± {_fmt(r.get('ci95'))}"
        p = r.get("p_vs_best_unimodal", np.nan)
        cls = "failed" if r.status != "ok" else ("unimodal" if r.family in ("unimodal", "baseline") else "")
        rank_txt = "–" if not np.isfinite(r["rank"]) else str(int(r["rank"]))
        rows.append(
            f"<tr class='{cls}'><td>{rank_txt}</td><td class=l><code>{html.escape(r.strategy)}</code></td>"
            f"<td class=l>{html.escape(r.family)}</td><td>{_fmt(r['mean'])} ± {_fmt(r['std'])}</td><td>{ci}</td>"
            f"<td>{(_fmt(p, 3) + ' ' + _stars(p)) if np.isfinite(p) else ''}</td><td>{beats if r.status == 'ok' else 'failed'}</td>"
            f"<td>{int(r.n_seeds)}</td><td>{_fmt(r.train_samples_per_s, 0)}</td><td>{_fmt(r.infer_samples_per_s, 0)}</td>"
            f"<td>{int(r.params_count):,}</td></tr>"
        )
    return f"<div class=tw><table>{head}{''.join(rows)}</table></div>"


def _storage_file(url: str) -> Path:
    """The file behind a journal:/// or sqlite:/// URL."""
    return Path(url.split("://", 1)[1][1:] if url.startswith("journal://") else url[len("sqlite:///"):])


def _histories(run_dir: Path, meta: dict, dataset: str) -> dict[str, list[float]]:
    import optuna

    from fusebench.search.storage import default_url, open_storage

    url = (meta.get("config") or {}).get("storage") or default_url(run_dir)
    if "***" in url:  # a redacted PostgreSQL URL cannot be reopened from the run directory
        return {}
    if url.startswith(("journal://", "sqlite://")) and not _storage_file(url).is_file():
        url = default_url(run_dir)  # the run directory was moved or copied: use the file inside it
        if not _storage_file(url).is_file():
            log.warning("no optuna storage in %s: the report has no optimisation history", run_dir)
            return {}
    try:
        storage = open_storage(url, heartbeat=False)
        names = [s for s in optuna.study.get_all_study_names(storage) if s.startswith(f"{dataset}/")]
        out = {}
        for name in names:
            study = optuna.load_study(study_name=name, storage=storage)
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
            out[name.split("/", 1)[1]] = [t.value for t in sorted(done, key=lambda t: t.number)]
        return out
    except Exception as exc:  # noqa: BLE001 - a report without history is still a report
        log.warning("optimisation history unavailable (%s): %s", url, exc)
        return {}


def _robustness(records: list[Record], dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(noise curves: strategy × σ, missing-modality table: strategy × view) — means over seeds."""
    noise, missing = [], []
    for r in records:
        if r.dataset != dataset or r.status != "ok" or not r.robustness:
            continue
        noise.append({"strategy": r.strategy, "sigma": 0.0, "value": r.main_metric})
        for k, v in r.robustness.items():
            kind, _, arg = k.partition(":")
            if kind == "noise" and v is not None:
                noise.append({"strategy": r.strategy, "sigma": float(arg), "value": v})
            elif kind == "missing":
                missing.append({"strategy": r.strategy, "view": arg, "value": np.nan if v is None else v})
    curves = pd.DataFrame(noise).pivot_table(index="strategy", columns="sigma", values="value") if noise else pd.DataFrame()
    miss = pd.DataFrame(missing).pivot_table(index="strategy", columns="view", values="value") if missing else pd.DataFrame()
    return curves, miss


def _missing_table(miss: pd.DataFrame, clean: pd.Series) -> str:
    if miss.empty:
        return ""
    head = "<tr><th class=l>strategy</th><th>all present</th>" + "".join(f"<th>without {html.escape(c)}</th>" for c in miss.columns) + "</tr>"
    body = "".join(
        f"<tr><td class=l><code>{html.escape(s)}</code></td><td>{_fmt(clean.get(s))}</td>"
        + "".join(f"<td>{_fmt(row[c]) if np.isfinite(row[c]) else 'n/a'}</td>" for c in miss.columns) + "</tr>"
        for s, row in miss.iterrows()
    )
    return f"<h3>Missing modality at test time</h3><table>{head}{body}</table>"


def _metadata(meta: dict) -> str:
    suite = (meta.get("config") or {}).get("suite", {})
    machine = meta.get("machine") or {}
    items = {
        "git sha": meta.get("git_sha"),
        "started / finished": f"{meta.get('started_at')} / {meta.get('finished_at')}",
        "device": machine.get("gpu") or " ".join(str(machine[k]) for k in ("device", "processor") if machine.get(k)),
        "machine": ", ".join(f"{k}: {v}" for k, v in machine.items() if v not in (None, "")),
        "versions": ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items() if v),
        "budget": None if not suite else f"{suite.get('trials')} trials per strategy, timeout {suite.get('timeout_s')} s, {suite.get('seeds')} "
                  f"evaluation seeds, {suite.get('epochs')} epochs max, patience {suite.get('patience')}",
        "protocol": json.dumps(meta["protocol"], default=str) if meta.get("protocol") else None,
        "data fingerprints": ", ".join(f"{k}: {v.get('fingerprint')}" for k, v in (meta.get("data") or {}).items()),
        "encoders": "; ".join(f"{k}: {v.get('encoders')}" for k, v in (meta.get("data") or {}).items()),
        "storage": (meta.get("config") or {}).get("storage"),
    }
    rows = "".join(f"<tr><th class=l>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in items.items() if v not in (None, "", "None / None"))
    return f"<table class=meta>{rows}</table>"


def _grid(*imgs: str) -> str:
    cells = "".join(f"<div>{i}</div>" for i in imgs if i)
    return f"<div class=grid>{cells}</div>" if cells else ""


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    records = load_records(run_dir / "results.jsonl")
    meta = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    board = leaderboard(records)
    ranking = rank(board)
    plot_dir = run_dir / "plots"
    parts = [f"<h1>fusebench report</h1><p class=note>{html.escape(str(run_dir))} — {len(records)} records, "
             f"{board.dataset.nunique() if not board.empty else 0} task(s). Means over evaluation seeds; CIs from a "
             "two-level bootstrap (seeds × test examples); p-values from a paired bootstrap against the best "
             "unimodal baseline.</p>"]
    if not board.empty:
        links = "".join(f"<a href='#{html.escape(d)}'>{html.escape(d)}</a>" for d in sorted(board.dataset.unique()))
        parts.append(f"<nav class=note>Tasks: {links}<a href='#metadata'>run metadata</a></nav>")
    cd = plots.critical_difference(ranking, plot_dir)
    if not ranking.average_rank.empty:
        parts.append("<h2>Overall ranking</h2>")
        cd_md = [ln for ln in ranking.to_markdown().splitlines() if ln.startswith(("Average rank", "Friedman", "CD comparison"))]
        parts.append("".join(f"<p class=note>{html.escape(ln).replace('`', '')}</p>" for ln in cd_md))
        rows = "".join(f"<tr><td>{i}</td><td class=l><code>{html.escape(n)}</code></td><td>{r:.2f}</td></tr>"
                       for i, (n, r) in enumerate(ranking.average_rank.items(), 1))
        parts.append(f"<table><tr><th>#</th><th class=l>strategy</th><th>average rank</th></tr>{rows}</table>{_img(cd)}")
    for dataset, g in (board.groupby("dataset", sort=True) if not board.empty else []):
        metric = next((m for m in g.metric if m), "")
        parts.append(f"<h2 id='{html.escape(dataset)}'>{html.escape(dataset)} — {html.escape(metric)}</h2>")
        parts.append(_table(g))
        pareto = plots.quality_vs_throughput(board, dataset, plot_dir)
        fam = plots.family_bars(board, dataset, plot_dir)
        parts.append(_grid(_img(pareto), _img(fam)))
        families = dict(zip(g.strategy, g.family))
        hist = plots.optimisation_history(_histories(run_dir, meta, dataset), dataset, metric, plot_dir, families)
        curves, miss = _robustness(records, dataset)
        rob = plots.robustness_curves(curves, dataset, metric, plot_dir, families)
        parts.append(_grid(_img(hist), _img(rob)))
        parts.append(_missing_table(miss, g.set_index("strategy")["mean"]))
    parts.append("<h2 id=metadata>Run metadata</h2>" + _metadata(meta))
    doc = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>fusebench report</title>"
           f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = run_dir / "report.html"
    atomic_write_bytes(path, doc.encode("utf-8"))
    return path
