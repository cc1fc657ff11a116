"""Retrieval: blocked similarity equals the dense computation, memory stays bounded, re-ranking and
the rank statistics behave, the dual encoder learns a planted alignment, the builder checks its rows."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusebench.core.retrieval_math import (
    blocked_ranks,
    blocked_topk,
    recalls,
    rerank_ranks,
    rsum_from_ranks,
    scores_from_ranks,
)


def _dense_ranks(q: torch.Tensor, k: torch.Tensor, qg: torch.Tensor, kg: torch.Tensor) -> torch.Tensor:
    s = q @ k.T
    best = s.masked_fill(qg[:, None] != kg[None, :], float("-inf")).amax(1)
    return (s > best[:, None]).sum(1) + 1


problems = st.tuples(
    st.integers(1, 40), st.integers(1, 60), st.integers(1, 6), st.integers(1, 17), st.integers(0, 2**31 - 1)
)


@settings(max_examples=60, deadline=None)
@given(problems, st.integers(1, 12))
def test_blocked_topk_equals_dense(shape, k):
    nq, nk, dim, block, seed = shape
    g = torch.Generator().manual_seed(seed)
    q, keys = torch.randn(nq, dim, generator=g), torch.randn(nk, dim, generator=g)
    scores, idx = blocked_topk(q, keys, k, block)
    dense = (q @ keys.T).topk(min(k, nk), dim=1)
    torch.testing.assert_close(scores, dense.values)
    torch.testing.assert_close(torch.gather(q @ keys.T, 1, idx), dense.values)  # same scores at the indices


@settings(max_examples=60, deadline=None)
@given(problems, st.integers(1, 5), st.booleans())
def test_blocked_ranks_equal_dense(shape, per_group, quantise):
    nq, _, dim, block, seed = shape
    g = torch.Generator().manual_seed(seed)
    n_groups = nq
    keys = torch.randn(n_groups * per_group, dim, generator=g)
    q = torch.randn(nq, dim, generator=g)
    if quantise:  # ties: a correct key tied with a wrong one ranks first (ties go to the correct key)
        q, keys = q.round(), keys.round()
    qg = torch.arange(nq)
    kg = torch.arange(n_groups).repeat_interleave(per_group)
    torch.testing.assert_close(blocked_ranks(q, keys, qg, kg, block), _dense_ranks(q, keys, qg, kg))


def test_query_without_a_correct_key_is_an_error():
    with pytest.raises(ValueError, match="query 1 .*no correct key"):
        blocked_ranks(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 9]), torch.tensor([0, 0, 1, 1]))


@pytest.mark.slow
def test_blocked_ranking_memory_stays_bounded(tmp_path: Path):
    """20000 × 10000 scores would take 800 MB dense; the blocked passes stay within a few tiles."""
    script = textwrap.dedent("""
        import resource, torch
        from fusebench.core.retrieval_math import blocked_ranks, blocked_topk
        torch.set_num_threads(1)
        q, k = torch.randn(20000, 16), torch.randn(10000, 16)
        qg, kg = torch.arange(20000) % 10000, torch.arange(10000)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ranks = blocked_ranks(q, k, qg, kg, block=512)
        blocked_topk(q, k, 10, block=512)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024, int(ranks.min()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600)
    growth_mb, min_rank = out.stdout.split()
    assert int(min_rank) >= 1
    assert float(growth_mb) < 120, f"peak RSS grew {growth_mb} MB; the dense matrix would be 800 MB"


def test_rerank_ranks():
    cand = torch.tensor([[3, 1, 2], [0, 4, 5]])
    correct = torch.tensor([[False, True, False], [False, False, False]])
    old = torch.tensor([2, 7])
    same = rerank_ranks(cand, torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]), correct, old)
    assert same.tolist() == [2, 7]  # the dual encoder's own order: nothing changes
    better = rerank_ranks(cand, torch.tensor([[0.0, 5.0, 1.0], [9.0, 9.0, 9.0]]), correct, old)
    assert better.tolist() == [1, 7]  # a query whose correct item is not in the top-k keeps its rank


def test_recalls_medr_rsum():
    i2t, t2i = np.array([1, 2, 6, 11]), np.array([1, 1, 5, 20, 3])
    s = scores_from_ranks(i2t, t2i)
    assert recalls(i2t) == {1: 25.0, 5: 50.0, 10: 75.0}
    assert s.t2i == {1: 40.0, 5: 80.0, 10: 80.0}
    assert (s.i2t_medr, s.t2i_medr) == (4.0, 3.0)
    assert s.rsum == pytest.approx(150 + 200) == float(rsum_from_ranks(i2t, t2i))


def _frame(seeds, i2t_ranks, t2i_ranks, caption_image):
    rows = []
    for s in seeds:
        rows.append(pd.DataFrame({"seed": s, "direction": "i2t", "query": np.arange(len(i2t_ranks)),
                                  "rank": i2t_ranks, "cluster": [f"img{i}" for i in range(len(i2t_ranks))]}))
        rows.append(pd.DataFrame({"seed": s, "direction": "t2i", "query": np.arange(len(t2i_ranks)),
                                  "rank": t2i_ranks, "cluster": [f"img{i}" for i in caption_image]}))
    return pd.concat(rows)


def _records(tmp_path, frames):
    from fusebench.core.retrieval_math import scores_from_ranks
    from fusebench.results.records import Record
    from fusebench.results.retrieval_stats import prediction_path

    recs = []
    for name, frame in frames.items():
        path = prediction_path(tmp_path, "ret", name)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path)
        for s, part in frame.groupby("seed"):
            sc = scores_from_ranks(part[part.direction == "i2t"]["rank"].to_numpy(),
                                   part[part.direction == "t2i"]["rank"].to_numpy())
            recs.append(Record(dataset="ret", task="retrieval", strategy=name, family="early", modalities=["image", "text"],
                               seed=int(s), status="ok", metrics=sc.as_metrics(), main_metric=sc.rsum))
    return recs


def test_stats_aa_and_a_clear_winner(tmp_path: Path):
    from fusebench.reports.retrieval import retrieval_markdown
    from fusebench.results.retrieval_stats import attach_retrieval_stats

    rng = np.random.default_rng(0)
    n = 60
    caption_image = np.repeat(np.arange(n), 5)
    base = _frame([1000, 1001, 1002], rng.integers(1, 30, n), rng.integers(1, 30, 5 * n), caption_image)
    same = base.copy()
    best = _frame([1000, 1001, 1002], np.ones(n, int), np.ones(5 * n, int), caption_image)
    recs = attach_retrieval_stats(_records(tmp_path, {"dual_encoder": base, "rerank:aa": same, "rerank:win": best}),
                                  tmp_path, "ret")
    st_ = {r.strategy: r.stats for r in recs}
    assert st_["rerank:aa"]["p_vs_dual_encoder"] == 1.0 and not st_["rerank:aa"]["beats_dual_encoder"]
    assert st_["rerank:win"]["p_vs_dual_encoder"] < 0.01 and st_["rerank:win"]["beats_dual_encoder"]
    assert st_["rerank:win"]["ci95_low"] == st_["rerank:win"]["ci95_high"] == 600.0
    lo, hi = st_["dual_encoder"]["ci95_low"], st_["dual_encoder"]["ci95_high"]
    assert lo < st_["dual_encoder"]["mean"] < hi
    text = retrieval_markdown(recs)
    assert "1 of 2 fusion re-rankers beat the dual encoder alone" in text and "`rerank:win`" in text


def test_dual_encoder_learns_a_planted_alignment(one_thread):
    """Captions are a noisy linear image of their image's features: the dual encoder must find it
    (chance R@10 over 200 images is 5%)."""
    from fusebench.features.extract import SplitData
    from fusebench.training.loop import TrainConfig
    from fusebench.training.retrieval import DualEncoderParams, RetrievalSplit, rank_split, train_dual_encoder

    g = torch.Generator().manual_seed(0)
    mix = torch.randn(32, 24, generator=g)

    def split(n: int) -> RetrievalSplit:
        img = torch.randn(n, 32, generator=g)
        groups = np.repeat(np.arange(n), 5)
        txt = img[groups] @ mix + 0.5 * torch.randn(5 * n, 24, generator=g)
        data = SplitData({"image": img[groups], "text": txt}, {"image": img[groups, None], "text": txt[:, None]},
                         torch.ones(5 * n, dtype=torch.long))
        return RetrievalSplit.from_split(data, groups, [f"i{i}" for i in groups])

    train, val = split(600), split(200)
    res = train_dual_encoder(train, val, DualEncoderParams(lr=3e-3, embed_dim=128, temperature=0.05),
                             TrainConfig(epochs=15, patience=3, batch_size=128), seed=0)
    scores = rank_split(res.model, val).scores
    assert scores.i2t[10] > 60 and scores.t2i[10] > 60, scores


def test_builder_rows_and_bad_captions(tmp_path: Path):
    from fusebench.config import catalog
    from fusebench.core.errors import DataError
    from fusebench.data.builders import build_tables

    folder = tmp_path / "flickr8k"
    folder.mkdir()

    def write(name: str, n: int, bad: bool = False) -> None:
        caps = [[f"caption {i}.{j}" for j in range(5)] for i in range(n)]
        if bad:
            caps[1] = caps[1][:4]
        pd.DataFrame({"image_id": [f"{name}{i}.jpg" for i in range(n)], "image_bytes": [bytes([i]) * 8 for i in range(n)],
                      "captions": caps}).to_parquet(folder / f"{name}.parquet")

    write("flickr8k_train-00000-of-00002", 4)
    write("flickr8k_dev", 3)
    write("flickr8k_test", 3)
    cfg = catalog.get_dataset("flickr8k-retrieval")
    tables = build_tables(cfg, tmp_path, "full")
    test = tables.splits["test"]
    assert len(test) == 15 and list(test["group"]) == [i for i in range(3) for _ in range(5)]
    assert set(test["label"]) == {1} and test["caption"][7] == "caption 1.2"
    write("flickr8k_test", 3, bad=True)
    with pytest.raises(DataError, match=r"flickr8k_test0?1?\.jpg|row 1"):
        build_tables(cfg, tmp_path, "full")


def test_calibrate_and_worker_refuse_retrieval_with_exit_2(tmp_path: Path, capsys):
    import optuna

    from fusebench.cli import main

    assert main(["calibrate", "--dataset", "flickr8k-retrieval", "--strategy", "concat", "--repeats", "2"]) == 2
    assert "flickr8k-retrieval is a retrieval task" in capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="flickr8k-retrieval/dual_encoder", storage=url)
    study.set_user_attr("fusebench", {"task": "retrieval", "budget": {"trials": 2, "timeout_s": 1, "seeds": 1, "search_seed": 0}})
    assert main(["worker", "--study", "flickr8k-retrieval/dual_encoder", "--storage", url]) == 2
    assert "belongs to a retrieval task" in capsys.readouterr().err


def test_pick_units_resamples_replicates_then_seeds_within_them():
    from fusebench.results.retrieval_stats import _pick_units

    units = [(r, s) for r in range(3) for s in (1000, 1001)]
    pick = _pick_units(units, 500, np.random.default_rng(0))
    assert pick.shape == (500, 6)
    reps = np.array([r for r, _ in units])[pick].reshape(500, 3, 2)  # [draw, drawn replicate, seed]
    assert (reps == reps[:, :, :1]).all()  # the seeds of a drawn replicate all belong to it
    assert len({tuple(np.unique(row)) for row in reps[:, :, 0]}) > 3  # replicates drawn with replacement
    flat = _pick_units([(0, 1000), (0, 1001)], 50, np.random.default_rng(0))
    assert flat.shape == (50, 2) and set(np.unique(flat)) <= {0, 1}  # one replicate: seeds drawn flat


def test_retrieval_interval_widens_with_a_search_effect_and_ignores_a_missing_replicate_column(tmp_path):
    """Two replicates whose ranks differ (a search effect) widen the rsum interval over one replicate
    with the same seeds; a predictions file without `replicate` reads as replicate 0."""
    from fusebench.results.retrieval_stats import draws

    rng = np.random.default_rng(0)
    n, caption_image = 40, np.repeat(np.arange(40), 5)

    def ranks(shift: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.integers(1, 8, n) + shift, rng.integers(1, 8, 5 * n) + shift

    one = _frame([1000, 1001], *ranks(0), caption_image)
    assert "replicate" not in one.columns
    base = draws(one)
    assert np.array_equal(base, draws(one.assign(replicate=0)))
    rep1 = _frame([1000, 1001], *ranks(6), caption_image).assign(replicate=1)
    both = pd.concat([one.assign(replicate=0), rep1])
    lo0, hi0 = np.percentile(base, [2.5, 97.5])
    lo2, hi2 = np.percentile(draws(both), [2.5, 97.5])
    assert hi2 - lo2 > 2 * (hi0 - lo0)


def test_time_pipeline_counts_items_per_second_of_the_whole_call(monkeypatch):
    """A fake clock makes the figures exact (a wall-clock bound would flake on a loaded machine):
    warm-up calls are not timed, and items/s is n_items over the median call."""
    import fusebench.measure.pipeline_timing as pipeline_timing
    from fusebench.measure.pipeline_timing import time_pipeline

    clock = [0.0]
    durations = iter([5.0, 0.02, 0.04, 0.03])  # the first call is the warm-up: its 5 s must not count
    monkeypatch.setattr(pipeline_timing.time, "perf_counter", lambda: clock[0])

    def call() -> None:
        clock[0] += next(durations)

    tp = time_pipeline(call, 100, torch.device("cpu"), train_samples_per_s=5.0, batch_size=10, warmup=1, repetitions=3)
    assert tp.repetitions == 3 and tp.warmup == 1 and tp.batch_size == 10
    assert tp.infer_samples_per_s == pytest.approx(100 / 0.03)
    assert tp.batch_ms_p50 == pytest.approx(30.0) and tp.batch_ms_p95 == pytest.approx(39.0)
    assert tp.train_samples_per_s == 5.0  # passed through: retrieval training is timed by the caller
    assert tp.device.startswith("cpu")
    with pytest.raises(ValueError):
        time_pipeline(call, 0, torch.device("cpu"), 1.0, 1)


def test_hard_negatives_are_other_images_captions_from_the_dual_encoders_top_k(one_thread):
    """On a planted alignment, each mined negative pair is mismatched, comes from the dual encoder's
    top k in one of the two directions (both are mined), and scores far higher than a random
    negative (what makes it hard)."""
    from fusebench.features.extract import SplitData
    from fusebench.training.loop import TrainConfig
    from fusebench.training.rerank import hard_matching_pairs, hard_negatives, matching_pairs
    from fusebench.training.retrieval import DualEncoderParams, RetrievalSplit, embed, train_dual_encoder

    g = torch.Generator().manual_seed(1)
    mix = torch.randn(16, 12, generator=g)

    def split(n: int) -> RetrievalSplit:
        img = torch.randn(n, 16, generator=g)
        groups = np.repeat(np.arange(n), 5)
        txt = img[groups] @ mix + 0.8 * torch.randn(5 * n, 12, generator=g)
        data = SplitData({"image": img[groups], "text": txt}, {"image": img[groups, None], "text": txt[:, None]},
                         torch.ones(5 * n, dtype=torch.long))
        return RetrievalSplit.from_split(data, groups, [f"i{i}" for i in groups])

    train, val = split(200), split(60)
    dual = train_dual_encoder(train, val, DualEncoderParams(lr=3e-3, embed_dim=128, temperature=0.05),
                              TrainConfig(epochs=6, patience=3, batch_size=64), seed=0).model
    k = 10
    group = val.caption_group.numpy()
    n = val.n_images
    pos = np.array([np.flatnonzero(group == i)[0] for i in range(n)])
    neg_img, neg_cap = hard_negatives(dual, val, pos, k, seed=3)
    again = hard_negatives(dual, val, pos, k, seed=3)
    assert np.array_equal(neg_img, again[0]) and np.array_equal(neg_cap, again[1])  # seeded
    assert (group[neg_cap] != neg_img).all()  # always a mismatched pair
    img, txt = embed(dual, val)
    sims = (img @ txt.T).numpy()
    i2t = neg_img == np.arange(n)  # image→text negatives: the image's own row, another image's caption
    t2i = ~i2t  # text→image negatives: the positive caption with another image
    assert 0.25 < i2t.mean() < 0.75  # both directions mined
    kth_cap = np.sort(sims, axis=1)[:, -k]
    assert (sims[np.flatnonzero(i2t), neg_cap[i2t]] >= kth_cap[i2t] - 1e-6).all()  # in the image's top k captions
    assert (neg_cap[t2i] == pos[t2i]).all()
    kth_img = np.sort(sims[:, pos].T, axis=1)[:, -k]  # per positive caption, the k-th best image score
    assert (sims[neg_img[t2i], pos[t2i]] >= kth_img[t2i] - 1e-6).all()  # in the caption's top k images
    hard = hard_matching_pairs(val, "pooled", 5, dual, k)
    easy = matching_pairs(val, "pooled", 5)
    assert hard.labels.tolist() == easy.labels.tolist()  # same layout: n true pairs, then n mismatched
    torch.testing.assert_close(hard.inputs["text"][:n], easy.inputs["text"][:n])
    random_neg = np.array([(group == (i + 1) % n).nonzero()[0][0] for i in range(n)])
    assert sims[neg_img, neg_cap].mean() > sims[np.arange(n), random_neg].mean() + 0.2  # harder than random
