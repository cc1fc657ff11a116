"""`fusebench report RUN_DIR --html`: one self-contained report.html (PNGs embedded as data URIs)
plus plots/*.png. It reads only the run directory: records, run.json, and the trial histories the run
exported to history/ (never the optuna storage)."""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fusebench.core.io import atomic_write_bytes
from fusebench.reports import plots
from fusebench.reports.leaderboard import _stars, device_note, leaderboard, row_flags, trials_text
from fusebench.reports.ranking import rank
from fusebench.reports.retrieval import HEADER, NOTE, retrieval_rows
from fusebench.reports.verdicts import DUAL_ENCODER, fmt_p, is_retrieval, mean_digits, ranking_sentence, task_verdict
from fusebench.results.provenance import machines
from fusebench.results.provisional import provisional_stats
from fusebench.results.records import Record, load_records
from fusebench.search.history import read_histories

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1400px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;font-size:13px;margin:.6rem 0 1rem} \
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3} td.l,th.l{text-align:left} tr.unimodal td{background:#f7f7f7} tr.failed td{color:#a00}
.verdict{background:#f4f8ff;border-left:4px solid #2a6fdb;padding:.5rem .8rem;margin:.6rem 0;line-height:1.45;max-width:75rem}
.yes{color:#137333;font-weight:600} .no{color:#a50e0e} .meta td{text-align:left;white-space:normal} \
.meta th{white-space:nowrap;vertical-align:top} \
img{max-width:100%;height:auto;border:1px solid #eee;margin:.3rem 0}
.grid{display:flex;flex-wrap:wrap;gap:.8rem;align-items:flex-start} .grid>div{flex:0 1 auto;max-width:100%} code{font-size:12px}
nav a{margin-right:.8rem} .tw{overflow-x:auto;max-width:100%} .note{color:#555;font-size:13px}
@media (max-width:600px){body{margin:1rem auto;padding:0 .6rem} \
h1{font-size:1.5rem} h2{font-size:1.2rem} .verdict{font-size:14px}}
"""


def _img(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    from PIL import Image

    with Image.open(path) as im:
        width = im.width * 110 // plots.DPI  # drawn at 2×: shown at the layout's size, sharp on dense screens
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" width="{width}" src="data:image/png;base64,{data}">'


def _fmt(x: object, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return html.escape(str(x))


def _words(text: str) -> str:
    """A verdict sentence (Markdown backticks) as HTML."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _delta(r: pd.Series) -> str:
    d, lo, hi = (r.get(k, np.nan) for k in ("delta_vs_best_unimodal", "delta_ci95_low", "delta_ci95_high"))
    if d is None or not np.isfinite(d):
        return ""
    ci = f" [{lo:+.4f}, {hi:+.4f}]" if lo is not None and np.isfinite(lo) else ""
    return f"{d:+.4f}{ci}"


def _p(p: object) -> str:
    return f"{fmt_p(p)} {_stars(float(p))}" if p is not None and np.isfinite(float(p)) else ""  # type: ignore[arg-type]


COLUMN_NOTE = ("<b>mean ± std</b>: main test metric over evaluation seeds (and search replicates); <b>95% CI</b>: "
               "interval of the mean; <b>Δ vs best unimodal</b>: difference from the best unimodal baseline (chosen on "
               "validation) with its 95% interval; <b>p</b>: paired test against it, <b>p Holm</b>: Holm-adjusted over "
               "the task's fusion strategies (* &lt; 0.05, ** &lt; 0.01, *** &lt; 0.001); <b>beats</b>: Δ &gt; 0 and "
               "p Holm &lt; 0.05; <b>runs</b>: replicates × seeds; <b>trials</b>: completed/budgeted optuna trials "
               "summed over the search replicates (pruned, failed when recorded; –: a fixed baseline, not searched); "
               "<b>search s</b>: search seconds (CPU seconds on a CPU run, wall on a GPU); <b>flags</b>: "
               "<i>degenerate</i> = a trainable row whose mean lies "
               "inside the <code>random</code> floor's 95% interval, <i>cap bound</i> = the search cap stopped the "
               "search before its trial budget (an unequal comparison); samples/s measured on the run's device; grey rows: "
               "unimodal baselines and floors. Details: leaderboard.md and docs/statistics.md.")


RETRIEVAL_NOTE = ("A retrieval task: each re-ranker is compared with the dual encoder alone in the retrieval detail "
                  "below. <b>mean ± std</b>: test rsum over evaluation seeds and search replicates; <b>95% CI</b>: "
                  "hierarchical bootstrap interval (replicates, seeds, images); <b>runs</b>: replicates × seeds; "
                  "<b>trials</b>: completed/budgeted optuna trials summed over the search replicates (pruned, failed); "
                  "<b>search s</b>: search seconds (CPU seconds on a CPU run, wall on a GPU); <b>infer samples/s</b>: "
                  "test queries ranked per second by the whole pipeline; <b>flags</b>: <i>cap bound</i> = the search "
                  "cap stopped the search before its trial budget (an unequal comparison); grey row: the dual "
                  "encoder. Details: leaderboard.md and docs/retrieval.md.")
HEAD = ("rank", "strategy", "family", "mean ± std", "95% CI", "Δ vs best unimodal [95% CI]", "p", "p Holm",
        "beats best unimodal", "runs", "trials", "search s", "train samples/s", "infer samples/s", "params", "flags")
VS_UNIMODAL, BEATS = range(5, 9), 8  # the comparison with the best unimodal baseline: not a retrieval task's (its detail table)


def _table(g: pd.DataFrame) -> str:
    retrieval = is_retrieval(g)
    keep = [i for i in range(len(HEAD)) if not (retrieval and i in VS_UNIMODAL)]
    digits = mean_digits(retrieval)
    head = "<tr>" + "".join(f"<th{' class=l' if HEAD[i] in ('strategy', 'family', 'flags') else ''}>{HEAD[i]}</th>"
                            for i in keep) + "</tr>"
    rows = []
    for _, r in g.iterrows():
        beats = {True: '<span class=yes>yes</span>', False: '<span class=no>no</span>'}.get(r.get("beats_best_unimodal"), "")
        lo, hi = r.get("ci95_low", np.nan), r.get("ci95_high", np.nan)
        ci = f"[{_fmt(lo, digits)}, {_fmt(hi, digits)}]" if np.isfinite(lo) else f"± {_fmt(r.get('ci95'), digits)}"
        cls = "failed" if r.status != "ok" else ("unimodal" if r.family in ("unimodal", "baseline") else "")
        cells = ["–" if not np.isfinite(r["rank"]) else str(int(r["rank"])), f"<code>{html.escape(r.strategy)}</code>",
                 html.escape(r.family), f"{_fmt(r['mean'], digits)} ± {_fmt(r['std'], digits)}", ci, _delta(r),
                 _p(r.get("p_vs_best_unimodal", np.nan)), _p(r.get("p_adj_vs_best_unimodal", np.nan)),
                 beats if r.status == "ok" else "failed", str(int(r.n_seeds)), html.escape(trials_text(r)),
                 _fmt(r.search_seconds, 1), _fmt(r.train_samples_per_s, 0), _fmt(r.infer_samples_per_s, 0),
                 f"{int(r.params_count):,}", html.escape(row_flags(r, symbols=False))]
        if r.status != "ok" and BEATS not in keep:  # "failed" is in the beats column, left out on a retrieval task
            cells[-1] = "failed" + (f"; {cells[-1]}" if cells[-1] else "")
        rows.append(f"<tr class='{cls}'>" + "".join(
            f"<td{' class=l' if HEAD[i] in ('strategy', 'family', 'flags') else ''}>{cells[i]}</td>" for i in keep) + "</tr>")
    note = COLUMN_NOTE if len(keep) == len(HEAD) else RETRIEVAL_NOTE
    return f"<div class=tw><table>{head}{''.join(rows)}</table></div><p class=note>{note}</p>"


def _retrieval_table(records: list[Record], dataset: str) -> str:
    """A retrieval task's detail: R@k of both directions, median ranks, and each re-ranker against the dual
    encoder alone (Δ rsum, paired-bootstrap p, beats), the cells of the Markdown leaderboard's detail table."""
    rows = retrieval_rows(records, dataset)
    if not rows:
        return ""
    head = "".join(f"<th{' class=l' if i == 0 else ''}>{html.escape(h)}</th>" for i, h in enumerate(HEADER))
    body = []
    for row in rows:
        beats = {"yes": "<span class=yes>yes</span>", "no": "<span class=no>no</span>"}.get(row[5], html.escape(row[5]))
        cells = [f"<td class=l><code>{html.escape(row[0])}</code></td>",
                 *(f"<td>{beats if i == 5 else html.escape(c)}</td>" for i, c in enumerate(row) if i)]
        body.append(f"<tr class='{'unimodal' if row[0] == DUAL_ENCODER else ''}'>{''.join(cells)}</tr>")
    return (f"<h3>Retrieval detail: each re-ranker against the dual encoder alone</h3><div class=tw><table><tr>{head}</tr>"
            f"{''.join(body)}</table></div><p class=note>{html.escape(NOTE)}</p>")


def _histories(run_dir: Path, dataset: str) -> dict[str, list[float]]:
    """Trial histories exported at run time (bench.search.history); a report never opens a storage."""
    hist = read_histories(run_dir, dataset)
    if not hist:
        log.warning("no trial history in %s/history/%s: the report has no optimisation history "
                    "(runs before the export existed: re-run the same command to export it)", run_dir, dataset)
    return hist


def _registered_family(name: str) -> str:
    """The family of a cell's strategy from the registry, as its records would say: `mbt`, `unimodal:audio`,
    `concat+ft:last:2` and the re-ranker `rerank:concat` name their registered strategy; the retrieval
    `dual_encoder` is a baseline; "other" for a name the registry does not hold (a plugin not loaded)."""
    from fusebench.strategies.base import STRATEGIES

    if name == "dual_encoder":
        return "baseline"
    base = name.split("+ft:", 1)[0].removeprefix("rerank:").split(":", 1)[0]
    return STRATEGIES.get(base).family if base in STRATEGIES else "other"


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
    head = ("<tr><th class=l>strategy</th><th>all present</th>"
            + "".join(f"<th>without {html.escape(c)}</th>" for c in miss.columns) + "</tr>")
    body = "".join(
        f"<tr><td class=l><code>{html.escape(s)}</code></td><td>{_fmt(clean.get(s))}</td>"
        + "".join(f"<td>{_fmt(row[c]) if np.isfinite(row[c]) else 'n/a'}</td>" for c in miss.columns) + "</tr>"
        for s, row in miss.iterrows()
    )
    return f"<h3>Missing modality at test time</h3><table>{head}{body}</table>"


def _kv(d: dict) -> str:
    """A nested dict as `key: value` lines (readable, unlike raw JSON)."""
    return "<br>".join(f"{html.escape(str(k))}: " + (
        ", ".join(f"{html.escape(str(a))}={html.escape(str(b))}" for a, b in v.items()) if isinstance(v, dict)
        else html.escape(", ".join(map(str, v)) if isinstance(v, list) else str(v))) for k, v in d.items())


def device_names(records: list[Record]) -> str:
    """The real devices the cells ran on, from the records (`cpu:<CPU model>` / `cuda:<GPU name>`)."""
    names = sorted({r.device for r in records if r.device})
    return ", ".join(n.replace("cpu:", "CPU: ").replace("cuda:", "GPU: ") for n in names)


def _metadata(meta: dict, records: list[Record]) -> str:
    suite = (meta.get("config") or {}).get("suite", {})
    machine = meta.get("machine") or {}
    ran_on = machines(meta)  # more than one when the run was resumed on other machines
    items = {
        "device": device_names(records) or machine.get("gpu") or machine.get("processor"),
        "git sha": html.escape(str(meta.get("git_sha") or "")),
        "started / finished": html.escape(f"{meta.get('started_at')} / {meta.get('finished_at')}"),
        "machine": _kv({k: v for k, v in machine.items() if v not in (None, "")}),
        "machines": html.escape(" → ".join(ran_on)) if len(ran_on) > 1 else None,
        "versions": html.escape(", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items() if v)),
        "suite": None if not suite else html.escape(
            f"{suite.get('name')}: {', '.join(suite.get('datasets') or [])}; size {suite.get('size')}"),
        "budget": None if not suite else html.escape(
            f"{suite.get('trials')} trials per strategy, timeout {suite.get('timeout_s')} s, {suite.get('seeds')} "
            f"evaluation seeds, {suite.get('epochs')} epochs max, patience {suite.get('patience')}"),
        "protocol": _kv(meta["protocol"]) if meta.get("protocol") else None,
        "data fingerprints": _kv({k: v.get("fingerprint") for k, v in (meta.get("data") or {}).items()}),
        "encoders": _kv({k: v.get("encoders") for k, v in (meta.get("data") or {}).items()}),
        "storage": html.escape(str((meta.get("config") or {}).get("storage") or "")),
        "time to leaderboard": _phases(meta),
    }
    rows = "".join(f"<tr><th class=l>{html.escape(k)}</th><td>{v if k != 'device' else html.escape(str(v))}</td></tr>"
                   for k, v in items.items() if v not in (None, "", "None / None"))
    return f"<div class=tw><table class=meta>{rows}</table></div>"


def _phases(meta: dict) -> str | None:
    """Wall seconds per phase of the run (run.json `phases`), and process-seconds inside cells."""
    phases, cells = meta.get("phases") or {}, meta.get("cell_seconds") or {}
    if not phases:
        return None
    wall = " · ".join(f"{k} {v:,.1f} s" for k, v in phases.items())
    inside = " · ".join(f"{k} {v:,.1f}" for k, v in cells.items())
    total = f"total {meta['seconds']:,.1f} s (run) · " if meta.get("seconds") else ""
    return html.escape(f"{total}{wall}" + (f"; inside cells, process-seconds: {inside}" if inside else ""))


def _class_warnings(meta: dict, dataset: str) -> str:
    """Classes the task dropped (`data.min_groups_per_class`) or that a split lacks (run.json `data`)."""
    info = (meta.get("data") or {}).get(dataset) or {}
    lines = [f"class {c} excluded: {why}" for c, why in (info.get("excluded_classes") or {}).items()]
    lines += [f"{len(cs)} class(es) have no {split} example: {', '.join(cs)}"
              for split, cs in (info.get("missing_classes") or {}).items()]
    return "".join(f"<p class=note><b>Warning.</b> {html.escape(ln)}</p>" for ln in lines)


def _grid(*imgs: str) -> str:
    cells = "".join(f"<div>{i}</div>" for i in imgs if i)
    return f"<div class=grid>{cells}</div>" if cells else ""


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    records = provisional_stats(load_records(run_dir / "results.jsonl"), run_dir)  # as the leaderboard's
    meta = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    board = leaderboard(records)
    ranking = rank(board)
    plot_dir = run_dir / "plots"
    parts = [f"<h1>fusebench report</h1><p class=note>{html.escape(str(run_dir))} — {len(records)} records, "
             f"{board.dataset.nunique() if not board.empty else 0} task(s) on "
             f"{html.escape(device_names(records) or 'an unrecorded device')}. "
             "Each task opens with its verdict; the notes under each table explain every column.</p>"]
    if not board.empty:
        links = "".join(f"<a href='#{html.escape(d)}'>{html.escape(d)}</a>" for d in sorted(board.dataset.unique()))
        parts.append(f"<nav class=note>Tasks: {links}<a href='#metadata'>run metadata</a></nav>")
    cd = plots.critical_difference(ranking, plot_dir)
    if not ranking.average_rank.empty:
        parts.append("<h2>Overall ranking</h2>")
        parts.append(f"<p class=verdict><b>Verdict.</b> {_words(ranking_sentence(ranking))}</p>")
        cd_md = [ln for ln in ranking.to_markdown().splitlines() if ln.startswith(("Average rank", "CD comparison"))]
        parts.append("".join(f"<p class=note>{html.escape(ln).replace('`', '')}</p>" for ln in cd_md))
        rows = "".join(f"<tr><td>{i}</td><td class=l><code>{html.escape(n)}</code></td><td>{r:.2f}</td></tr>"
                       for i, (n, r) in enumerate(ranking.average_rank.items(), 1))
        parts.append(f"<table><tr><th>#</th><th class=l>strategy</th><th>average rank</th></tr>{rows}</table>{_img(cd)}")
    for dataset, g in (board.groupby("dataset", sort=True) if not board.empty else []):
        metric = next((m for m in g.metric if m), "")
        parts.append(f"<h2 id='{html.escape(dataset)}'>{html.escape(dataset)} — {html.escape(metric)}</h2>")
        parts.append(f"<p class=verdict><b>Verdict.</b> {_words(task_verdict(g))}</p>")
        if note := device_note(g):
            parts.append(f"<p class=note><b>Devices.</b> {_words(note)}</p>")
        parts.append(_class_warnings(meta, dataset))
        parts.append(_table(g))
        retrieval = is_retrieval(g)
        if retrieval:
            parts.append(_retrieval_table(records, str(dataset)))
        pareto = plots.quality_vs_throughput(board, dataset, plot_dir)
        fam = plots.family_bars(board, dataset, plot_dir)
        parts.append(_grid(_img(pareto), _img(fam)))
        histories = _histories(run_dir, dataset)
        objective = metric
        if retrieval:  # the re-rankers search on the AUROC of their pair scores, the dual encoder
            histories.pop(DUAL_ENCODER, None)  # on rsum: one shared axis would flatten the re-rankers' lines
            objective = "pair AUROC"
        # a cell still searching has a history but no record yet: its family from the registry, not "other"
        families = {**{name: _registered_family(name) for name in histories}, **dict(zip(g.strategy, g.family))}
        hist = plots.optimisation_history(histories, dataset, objective, plot_dir, families)
        curves, miss = _robustness(records, dataset)
        rob = plots.robustness_curves(curves, dataset, metric, plot_dir, families)
        parts.append(_grid(_img(hist), _img(rob)))
        parts.append(_missing_table(miss, g.set_index("strategy")["mean"]))
    parts.append("<h2 id=metadata>Run metadata</h2>" + _metadata(meta, records))
    doc = ("<!doctype html><html lang=en><head><meta charset=utf-8>"
           "<meta name=viewport content='width=device-width, initial-scale=1'><title>fusebench report</title>"
           f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = run_dir / "report.html"
    atomic_write_bytes(path, doc.encode("utf-8"))
    return path
