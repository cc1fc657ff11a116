import pytest
import torch

from fusebench.strategies import STRATEGIES, FusionSpec
from fusebench.strategies.training_options import GradientBlender, TrainingOptions, drop_modalities
from fusebench.training.loop import Batch, TrainConfig, train_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_drop_modalities_never_drops_everything_and_zeroes_whole_modalities():
    g = torch.Generator().manual_seed(0)
    x = {"a": torch.ones(500, 3), "b": torch.ones(500, 4, 2)}
    out = drop_modalities(x, 0.6, g)
    kept_a = out["a"].abs().sum(1) > 0
    kept_b = out["b"].abs().sum((1, 2)) > 0
    assert (kept_a | kept_b).all()
    assert 0.2 < (~kept_a).float().mean() < 0.6  # roughly p, minus restored examples
    assert torch.equal(out["a"][kept_a], x["a"][kept_a])


def test_drop_modalities_is_identity_at_zero_or_one_modality():
    x = {"a": torch.randn(4, 3)}
    assert torch.equal(drop_modalities(x, 0.9)["a"], x["a"])
    assert torch.equal(drop_modalities({"a": x["a"], "b": x["a"]}, 0.0)["b"], x["a"])


def test_options_validate():
    with pytest.raises(ValueError, match="modality_dropout"):
        TrainingOptions(modality_dropout=1.5)
    with pytest.raises(ValueError, match="modality_dropout"):
        TrainConfig(modality_dropout=-0.1)


SPEC = FusionSpec({"a": 8, "b": 8}, {"a": 1, "b": 1}, 2)


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
    return Batch({"a": a, "b": b}, ((a[:, 0] + b[:, 0]) > 0).long())


def test_gradient_blending_reweights_and_trains():
    torch.manual_seed(0)
    model = STRATEGIES.get("logit_mean").build(SPEC)
    blender = GradientBlender(["a", "b"])
    assert blender.weights == pytest.approx({"fused": 1 / 3, "a": 1 / 3, "b": 1 / 3})
    train, val = _data(256, 0), _data(128, 1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):
        for i in range(0, 256, 32):
            loss = blender.loss(model, {k: v[i : i + 32] for k, v in train.inputs.items()}, train.labels[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
        blender.update(model, (train.inputs, train.labels), (val.inputs, val.labels))
    assert sum(blender.weights.values()) == pytest.approx(1.0)
    assert blender.weights != pytest.approx({"fused": 1 / 3, "a": 1 / 3, "b": 1 / 3})


def test_gradient_blending_needs_unimodal_branches():
    model = STRATEGIES.get("concat").build(SPEC)
    with pytest.raises(ValueError, match="unimodal_logits"):
        GradientBlender(["a", "b"]).loss(model, _data(4, 0).inputs, _data(4, 0).labels)


@pytest.mark.parametrize("options", [{"modality_dropout": 0.3}, {"gradient_blending": True}])
def test_train_model_with_options_learns(options):
    torch.manual_seed(0)
    model = STRATEGIES.get("logit_mean").build(SPEC)
    cfg = TrainConfig(epochs=15, patience=15, batch_size=32, **options)
    result = train_model(model, _data(512, 0), _data(256, 1), cfg, "accuracy", seed=0)
    assert result.val_metric > 0.75


def test_drop_modalities_validates_p_and_is_reproducible():
    x = {"a": torch.randn(8, 3), "b": torch.randn(8, 2, 4)}
    with pytest.raises(ValueError, match="probability"):
        drop_modalities(x, 1.5)
    one = drop_modalities(x, 0.5, torch.Generator().manual_seed(3))
    two = drop_modalities(x, 0.5, torch.Generator().manual_seed(3))
    assert all(torch.equal(one[m], two[m]) for m in x)
    all_dropped = drop_modalities(x, 1.0, torch.Generator().manual_seed(0))  # p = 1 still keeps one each
    kept = torch.stack([all_dropped[m].flatten(1).abs().sum(1) > 0 for m in x], 1)
    assert (kept.sum(1) == 1).all()


def test_gradient_blending_weights_follow_the_ogr_formula(monkeypatch):
    blender = GradientBlender(["b", "a"])
    assert blender.names == ["fused", "a", "b"]
    model = STRATEGIES.get("logit_mean").build(SPEC)
    measured = iter([
        {"fused": 1.0, "a": 1.0, "b": 1.0}, {"fused": 1.0, "a": 1.0, "b": 1.0},  # train, val at call 1
        {"fused": 0.5, "a": 0.8, "b": 0.2}, {"fused": 0.7, "a": 0.9, "b": 1.1},  # train, val at call 2
    ])
    monkeypatch.setattr(blender, "_measure", lambda *a: next(measured))
    blender.update(model, ({}, None), ({}, None))
    assert blender.weights == pytest.approx({"fused": 1 / 3, "a": 1 / 3, "b": 1 / 3})  # no estimate yet
    blender.update(model, ({}, None), ({}, None))
    # fused: dG = 0.3, dO = 0.2 -> 7.5; a: dG = 0.1, dO = 0.1 -> 10; b: val loss rose -> 0
    raw = {"fused": 0.3 / (0.2**2 + 1e-6), "a": 0.1 / (0.1**2 + 1e-6), "b": 0.0}
    total = sum(raw.values())
    assert blender.weights == pytest.approx({k: v / total for k, v in raw.items()})
    assert len(blender.history) == 3


def test_gradient_blending_uses_the_strategy_training_loss():
    torch.manual_seed(0)
    model = STRATEGIES.get("stacking").build(SPEC).eval()  # no dropout noise between the two losses
    data = _data(16, 0)
    blender = GradientBlender(["a", "b"])
    blender.weights = {"fused": 1.0, "a": 0.0, "b": 0.0}
    assert torch.allclose(blender.loss(model, data.inputs, data.labels), model.training_loss(data.inputs, data.labels))


def test_gradient_blending_trains_token_mid_fusion():
    spec = FusionSpec({"a": 6, "b": 5}, {"a": 3, "b": 4}, 2)
    torch.manual_seed(0)
    model = STRATEGIES.get("mbt").build(spec)
    x = {"a": torch.randn(8, 3, 6), "b": torch.randn(8, 4, 5)}
    y = torch.randint(0, 2, (8,))
    blender = GradientBlender(spec.modalities)
    blender.loss(model, x, y).backward()
    assert all(p.grad is not None for p in model.parameters())
    blender.update(model, (x, y), (x, y))
