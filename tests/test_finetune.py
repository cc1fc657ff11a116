"""Fine-tuning mode on tiny random-initialised encoders and a few dozen generated examples.

What must hold: gradients reach exactly the unfrozen encoder parameters; every registered strategy
runs unchanged on top and sees the frozen path's shapes; best-state restore includes the encoder
weights; accumulation of B/2 micro-batches equals one batch of B; checkpointing does not change
gradients; bf16 autocast runs on CPU; frozen mode is the cached-feature path itself."""

from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
import torch
from torch import nn

from fusebench.config.loader import DatasetConfig, ViewConfig
from fusebench.core.encmode import EncoderMode, FineTuneSettings, split_mode
from fusebench.features.extract import SplitData, TaskData
from fusebench.strategies import STRATEGIES, FusionSpec
from fusebench.training.finetune.model import FineTuneModel
from fusebench.training.finetune.setup import CellSetup, FineTuneData
from fusebench.training.finetune.towers import ImageTower, TextTower
from fusebench.training.loop import Batch, TrainConfig, backward_batch, loss_of, train_model

N, L, T, GRID, SIDE = 24, 10, 4, 2, 32


def tiny_bert(dropout: float = 0.0) -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertModel(cfg, add_pooling_layer=False)


def tiny_effnet() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    return EfficientNet.from_name("efficientnet-lite0", width_coefficient=0.25, depth_coefficient=0.5,
                                  drop_connect_rate=0.0, image_size=SIDE)


def raw_text(n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, L), generator=g)
    lengths = torch.randint(2, L + 1, (n,), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    return torch.stack([ids * mask, mask], 1)


def raw_pixels(n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIDE, SIDE), generator=g, dtype=torch.uint8)


@functools.cache
def _towers(mode: EncoderMode, image: bool, dropout: float) -> dict[str, nn.Module]:
    out = {"text": TextTower(tiny_bert(dropout), T).apply_mode(mode)}
    if image:
        out["image"] = ImageTower(tiny_effnet(), GRID).apply_mode(mode)
    for name, tower in out.items():
        tower.fit_standardisation(raw_text() if name == "text" else raw_pixels())
    return out


def towers(mode: EncoderMode, *, image: bool = True, dropout: float = 0.0) -> dict[str, nn.Module]:
    """Fresh copies of the tiny towers (built and standardised once per mode)."""
    return copy.deepcopy(_towers(mode, image, dropout))


def spec_for(tw: dict, kind: str) -> FusionSpec:
    dims = {v: int(t.pooled_mean.shape[0]) for v, t in tw.items()}
    return FusionSpec(dims, {v: (T if v == "text" else GRID * GRID) for v in tw}, 2)


def model_for(name: str, mode: EncoderMode, head_dropout: float | None = None, **kw) -> FineTuneModel:
    tw = towers(mode, **kw)
    info = STRATEGIES.get(name)
    torch.manual_seed(1)
    params = info.params() if head_dropout is None else info.params(dropout=head_dropout)
    return FineTuneModel(info.build(spec_for(tw, info.input_kind), params), tw, encoder_lr=1e-3)


def batch(n: int = N, image: bool = True, seed: int = 0) -> Batch:
    inputs = {"text": raw_text(n, seed)}
    if image:
        inputs["image"] = raw_pixels(n, seed)
    return Batch(inputs, torch.arange(n) % 2)


def _grads(model: FineTuneModel) -> dict[str, bool]:
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.towers.named_parameters()}


def test_gradients_reach_exactly_the_unfrozen_encoder_parameters():
    model = model_for("concat", EncoderMode.parse("last:1"))
    model.train()
    loss_of(model, batch()).backward()
    got = _grads(model)
    text_last = {n for n in got if n.startswith("text.encoder.encoder.layer.2.")}
    n_blocks = len(model.towers["image"].blocks())
    image_last = {n for n in got if n.startswith((f"image.encoder._blocks.{n_blocks - 1}.", "image.encoder._conv_head",
                                                   "image.encoder._bn1"))}
    assert text_last and image_last
    assert {n for n, g in got.items() if g} == text_last | image_last
    assert all(p.grad is not None for p in model.fusion.parameters() if p.requires_grad)


def test_full_mode_trains_every_encoder_weight_and_frozen_none():
    model = model_for("concat", EncoderMode.parse("full"), image=False)
    model.train()
    loss_of(model, batch(image=False)).backward()
    used = {n: g for n, g in _grads(model).items() if "position_embeddings" not in n and "token_type" not in n}
    assert all(used.values()), [n for n, g in used.items() if not g]
    frozen = model_for("concat", EncoderMode(), image=False)
    assert not frozen.encoder_parameters()
    assert not any(p.requires_grad for p in frozen.towers.parameters())


def test_frozen_submodules_stay_in_eval_mode():
    model = model_for("concat", EncoderMode.parse("last:1"))
    model.train()
    image = model.towers["image"]
    assert image.encoder._blocks[-1].training and image.encoder._conv_head.training
    assert not image.encoder._blocks[0].training and not image.encoder._bn0.training
    assert not image.encoder._bn1.training and not image.encoder._blocks[-1]._bn0.training  # pretrained statistics
    assert image.encoder._bn1.weight.requires_grad
    x = raw_pixels(8)
    with torch.no_grad():
        train_out = image(x)
        image.eval()
        eval_out = image(x)
    torch.testing.assert_close(train_out, eval_out)  # the head trains on the features it is evaluated on
    image.train()
    before = image.encoder._bn0.running_mean.clone()
    loss_of(model, batch()).backward()
    assert torch.equal(before, image.encoder._bn0.running_mean)  # frozen BatchNorm statistics never move


@pytest.mark.parametrize("name", [n for n in STRATEGIES.names() if STRATEGIES.get(n).trainable])
def test_every_strategy_runs_on_top_and_sees_the_frozen_shapes(name):
    info = STRATEGIES.get(name)
    both = not info.per_modality and info.min_modalities <= 2  # a per-modality strategy gets one view
    model = model_for(name, EncoderMode.parse("last:1"), image=both)
    seen: dict[str, tuple] = {}
    features = model.features

    def spy(inputs):
        out = features(inputs)
        seen.update({k: tuple(v.shape) for k, v in out.items()})
        assert list(out) == sorted(out)  # sorted keys, as the frozen path
        return out

    model.features = spy
    model.train()
    loss_of(model, batch(8, image=both)).backward()
    dims = model.spec.dims
    want = {v: (8, dims[v]) if info.input_kind == "pooled" else (8, T if v == "text" else GRID * GRID, dims[v]) for v in dims}
    assert seen == want
    assert any(p.grad is not None for p in model.encoder_parameters())


def test_tokens_keep_padding_rows_zero_and_real_rows_nonzero():
    tower = towers(EncoderMode(), image=False)["text"].eval()
    x = raw_text()
    _, tokens = tower(x)
    real = x[:, 1, :T].bool()
    assert torch.equal(tokens.abs().amax(-1) > 0, real)


def test_best_state_restore_includes_encoder_weights():
    model = model_for("concat", EncoderMode.parse("last:1"), image=False)
    start = copy.deepcopy(model.state_dict())
    snapshots = []
    cfg = TrainConfig(epochs=4, patience=4, batch_size=8)
    res = train_model(model, batch(image=False), batch(16, image=False, seed=1), cfg, "accuracy", 0,
                      on_epoch=lambda e, s: snapshots.append(copy.deepcopy(model.state_dict())))
    state = model.state_dict()
    key = "towers.text.encoder.encoder.layer.2.output.dense.weight"
    assert key in state and not torch.equal(state[key], start[key])  # it trained
    best = snapshots[res.best_epoch]
    assert all(torch.equal(state[k], best[k]) for k in state)  # the restored state is the best evaluation's, towers included


def test_separate_learning_rates():
    model = model_for("concat", EncoderMode.parse("last:1"), image=False)
    groups = model.param_groups(lr=3e-3, weight_decay=0.01)
    assert [g["lr"] for g in groups] == [3e-3, 1e-3]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.encoder_parameters()}


def test_accumulating_two_half_batches_equals_one_full_batch():
    full = model_for("concat", EncoderMode.parse("last:2"), head_dropout=0.0, image=False)
    half = copy.deepcopy(full)
    b = batch(16, image=False)
    for model, parts in ((full, 1), (half, 2)):
        model.train()
        backward_batch(model, b, dataclasses.replace(TrainConfig(), accumulate=parts), None, model)
    g1 = {n: p.grad for n, p in full.named_parameters() if p.grad is not None}
    g2 = {n: p.grad for n, p in half.named_parameters() if p.grad is not None}
    assert g1.keys() == g2.keys() and len(g1) > 10
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-4, atol=1e-6)
    # and a wrong scale would show: the sum of the micro-batch losses is twice the mean
    assert any(not torch.allclose(2 * g1[n], g1[n]) for n in g1)


def test_accumulation_in_the_training_loop_matches_within_tolerance():
    b, v = batch(16, image=False), batch(8, image=False, seed=1)
    out = []
    for parts in (1, 2):
        model = model_for("concat", EncoderMode.parse("last:1"), head_dropout=0.0, image=False)
        train_model(model, b, v, TrainConfig(epochs=2, patience=2, batch_size=16, accumulate=parts), "accuracy", 0)
        out.append(model.state_dict())
    for k in out[0]:
        torch.testing.assert_close(out[0][k], out[1][k], rtol=1e-4, atol=1e-5)


def test_checkpointing_does_not_change_gradients():
    grads = []
    for ckpt in (False, True):
        tw = TextTower(tiny_bert(), T)
        tw.checkpointing = ckpt
        tw.apply_mode(EncoderMode.parse("last:2"))
        im = ImageTower(tiny_effnet(), GRID)
        im.checkpointing = ckpt
        im.apply_mode(EncoderMode.parse("last:2"))
        torch.manual_seed(1)
        fusion = STRATEGIES.get("concat").build(spec_for({"text": tw, "image": im}, "pooled"))
        model = FineTuneModel(fusion, {"text": tw, "image": im}, 1e-3)
        model.train()
        loss_of(model, batch(8)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_trains_on_cpu():
    model = model_for("concat", EncoderMode.parse("last:1"), image=False)
    res = train_model(model, batch(image=False), batch(8, image=False, seed=1),
                      TrainConfig(epochs=2, patience=2, batch_size=8, amp_bf16=True), "accuracy", 0)
    assert res.steps_run == 6 and all(torch.isfinite(p).all() for p in model.parameters())


def _task_data() -> FineTuneData:
    cfg = DatasetConfig(name="gen", task="classification", builder="table", description="", citation="", num_classes=2,
                        main_metric="accuracy", metrics=("accuracy",),
                        views={"text": ViewConfig("t", "minilm", "text"), "audio": ViewConfig("a", "logmel", "audio")})
    g = torch.Generator().manual_seed(0)
    split = SplitData({"text": torch.randn(N, 16, generator=g), "audio": torch.randn(N, 6, generator=g)},
                      {"text": torch.randn(N, T, 16, generator=g), "audio": torch.randn(N, 3, 6, generator=g)},
                      torch.arange(N) % 2)
    base = TaskData(cfg, {s: split for s in ("train", "val", "test")}, "fp", {"text": "minilm:{}", "audio": "logmel:{}"})
    return FineTuneData(**{f.name: getattr(base, f.name) for f in dataclasses.fields(TaskData)},
                        raw={s: {"text": raw_text()} for s in ("train", "val", "test")})


def test_frozen_mode_is_the_cached_feature_path():
    data = _task_data()
    cpu = torch.device("cpu")
    frozen = CellSetup(data, ("audio", "text"), "pooled", EncoderMode(), FineTuneSettings(), cpu)
    fusion = STRATEGIES.get("concat").build(FusionSpec({"audio": 6, "text": 16}, {"audio": 3, "text": T}, 2))
    assert not frozen.fine_tuned and frozen.wrap(fusion) is fusion
    b = frozen.batch("train")
    assert all(torch.equal(b.inputs[v], data.splits["train"].pooled[v]) for v in ("audio", "text"))
    assert frozen.train_config(TrainConfig()) == TrainConfig()
    tuned = CellSetup(data, ("audio", "text"), "tokens", EncoderMode.parse("last:1"), FineTuneSettings(accumulate=2), cpu)
    assert tuned.tower_views == ["text"]  # the log-mel view stays frozen
    tb = tuned.batch("train")
    assert torch.equal(tb.inputs["text"], data.raw["train"]["text"]) and torch.equal(tb.inputs["audio"],
                                                                                     data.splits["train"].tokens["audio"])
    assert tuned.train_config(TrainConfig()).accumulate == 2
    audio_only = CellSetup(data, ("audio",), "pooled", EncoderMode.parse("full"), FineTuneSettings(), cpu)
    assert not audio_only.fine_tuned


def test_modes_parse_and_name_rows():
    assert str(EncoderMode.parse("last:2")) == "last:2" and EncoderMode.parse("frozen").frozen
    assert EncoderMode.parse("full").suffix() == "+ft:full"
    assert split_mode("concat:image+text+ft:last:2") == ("concat:image+text", "last:2")
    assert split_mode("unimodal:text") == ("unimodal:text", "frozen")
    for bad in ("last:0", "last", "partial", "last:-1", "full:2"):
        with pytest.raises(ValueError, match="frozen, last:N|N >= 1"):
            EncoderMode.parse(bad)
    with pytest.raises(ValueError, match="only 3 blocks"):
        TextTower(tiny_bert(), T).apply_mode(EncoderMode.parse("last:4"))


@pytest.mark.parametrize("view", ["image", "text"])
def test_cached_prefix_gives_the_same_outputs_and_gradients(view):
    tower = towers(EncoderMode.parse("last:2"))[view]
    cached = copy.deepcopy(tower)
    cached.start = cached.frozen_prefix()
    assert cached.start == len(tower.blocks()) - 2
    x = raw_pixels(8) if view == "image" else raw_text(8)
    h = tower.prefix(x, cached.start)
    outs = []
    for t, inp in ((tower, x), (cached, h)):
        t.train()
        pooled, tokens = t(inp)
        (pooled.square().mean() + tokens.square().mean()).backward()
        grads = {n: p.grad.clone() for n, p in t.named_parameters() if p.grad is not None}
        outs.append((pooled.detach(), tokens.detach(), grads))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    assert outs[0][2].keys() == outs[1][2].keys() and outs[0][2]
    for n in outs[0][2]:
        torch.testing.assert_close(outs[0][2][n], outs[1][2][n], rtol=1e-4, atol=1e-6)


def test_suite_setting_cli_flag_and_config_hash(tmp_path):
    from fusebench.cli import main
    from fusebench.config.loader import SuiteConfig, load_suite_config
    from fusebench.core.errors import ConfigError
    from fusebench.run.rundir import config_hash

    s = SuiteConfig(name="x", description="", datasets=("imdb",), encoders="frozen, last:2,last:2")
    assert s.encoders == ("frozen", "last:2") and [str(m) for m in s.encoder_modes] == ["frozen", "last:2"]
    plain = SuiteConfig(name="x", description="", datasets=("imdb",))
    legacy = {k: v for k, v in dataclasses.asdict(plain).items() if k not in ("encoders", "finetune")}
    from fusebench.run.rundir import config_hash_of

    assert config_hash(plain) == config_hash_of(legacy)  # older run directories keep their identity
    assert config_hash(s) != config_hash(plain)
    assert config_hash(dataclasses.replace(plain, finetune=FineTuneSettings(encoder_lr=1e-4))) != config_hash(plain)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndescription: d\ndatasets: [imdb]\nencoders: [frozen, last:x]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*last:x"):
        load_suite_config(bad)
    assert main(["run", "--datasets", "imdb", "--strategies", "concat", "--encoders", "partial",
                 "--out", str(tmp_path / "r")]) == 2


def test_cells_per_mode_and_old_records_read_as_frozen():
    from fusebench.results.records import Record
    from fusebench.run.selection import expand_cells

    modes = (EncoderMode(), EncoderMode.parse("last:1"))
    cells = expand_cells("d", ["audio", "text"], ["concat", "unimodal", "majority"], modes, frozenset({"text"}))
    names = [c.strategy for c in cells]
    assert names == ["concat", "unimodal:audio", "unimodal:text", "majority", "concat+ft:last:1", "unimodal:text+ft:last:1"]
    only = expand_cells("d", ["audio", "text"], ["concat"], (EncoderMode.parse("full"),), frozenset({"text"}))
    assert [(c.strategy, str(c.mode)) for c in only] == [("concat+ft:full", "full")]
    old = Record(dataset="d", task="t", strategy="concat", family="early", modalities=["text"], seed=1, status="ok").to_json()
    del old["encoder_mode"]
    assert Record.from_json(old).encoder_mode == "frozen"


def test_finetune_throughput_splits_encoder_and_fusion_time(monkeypatch):
    """The throughput path on tiny towers (the real command builds MiniLM + EfficientNet-Lite0)."""
    from fusebench.measure import finetune_throughput as ft

    def tiny(mode, device, max_length):
        tw = {"text": TextTower(tiny_bert(), ft.TEXT_TOKENS).apply_mode(mode),
              "image": ImageTower(tiny_effnet(), ft.GRID).apply_mode(mode)}
        return tw, 50

    monkeypatch.setattr(ft, "_towers", tiny)
    monkeypatch.setattr(ft, "IMAGE_SIDE", SIDE)
    real = FusionSpec

    def spec(dims, tokens, n):  # the tiny towers' widths
        return real({"text": 16, "image": int(_towers(EncoderMode(), True, 0.0)["image"].pooled_mean.shape[0])}, tokens, n)

    monkeypatch.setattr(ft, "FusionSpec", spec)
    r = ft.measure_finetune("concat", EncoderMode.parse("last:1"), 4, torch.device("cpu"), max_length=L,
                            repetitions=2, warmup=1)
    assert r.strategy == "concat+ft:last:1" and r.train_samples_per_s > 0 and r.infer_samples_per_s > 0
    assert set(r.train_ms) == {"encoder_forward", "fusion_forward", "backward_step"} and all(v > 0 for v in r.train_ms.values())
    assert 0 < r.encoder_share_train < 1 and r.encoder_trainable_params > 0 and r.timer == "perf_counter"
    assert r.peak_mem_kind.startswith("cpu_peak_rss") and not r.amp_bf16


def test_standardisation_floors_constant_dimensions():
    """A dimension constant on the pretrained encoder must not be divided by 1e-6 (its drift during
    fine-tuning would reach the head amplified a million times)."""
    from fusebench.training.finetune.towers import _floored

    # torch.median is the lower median
    assert _floored(torch.tensor([0.0, 1.0, 2.0, 3.0])).tolist() == pytest.approx([0.01, 1.0, 2.0, 3.0])
    tower = towers(EncoderMode(), image=False)["text"]
    assert float(tower.pooled_std.min()) >= 0.01 * float(tower.pooled_std.median()) - 1e-9
