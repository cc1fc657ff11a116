"""Contract tests generated from the strategy registry: every registered strategy, two and three
modalities, readable ids. A new strategy is tested the moment it is registered.

They ship inside the package (not only in tests/) so that `fusebench check-strategy MODULE` runs them
from an installed wheel as well as from a checkout (strategies/plugin_check.py). The project's test
suite collects them through tests/test_strategy_contract.py. They need pytest, which only a test run
imports: nothing else in fusebench imports this module.
"""

from __future__ import annotations

import collections
import dataclasses
import io

import optuna
import pytest
import torch

from fusebench.core import space
from fusebench.strategies import STRATEGIES, FusionSpec
from fusebench.strategies.base import SharedParams
from fusebench.strategies.training_options import drop_modalities

SPECS = {
    "2mod": FusionSpec({"audio": 12, "text": 20}, {"audio": 5, "text": 7}, 3),
    "3mod": FusionSpec({"audio": 12, "image": 16, "text": 20}, {"audio": 5, "image": 4, "text": 7}, 3),
}
B = 6
CASES = [(name, key) for name in STRATEGIES.names() for key in SPECS]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and spin under a loaded machine). Defined here,
    not in a conftest, because an installed wheel has none."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spec(name: str, key: str) -> FusionSpec:
    info = STRATEGIES.get(name)
    spec = SPECS[key]
    return spec.restrict([spec.modalities[0]]) if info.per_modality else spec


def random_inputs(kind: str, spec: FusionSpec, batch: int, seed: int = 0, pad: bool = True) -> dict[str, torch.Tensor]:
    """Seeded inputs of `spec`'s shapes: pooled (batch, dim) or tokens (batch, tokens, dim), the first
    example's last two tokens zero (padding) when `pad` (tests/test_strategy_properties.py uses it too)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, d in spec.dims.items():
        if kind == "pooled":
            out[m] = torch.randn(batch, d, generator=g)
        else:
            x = torch.randn(batch, spec.tokens[m], d, generator=g)
            if pad:
                x[0, -2:] = 0.0
            out[m] = x
    return out


def _inputs(name: str, spec: FusionSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    return random_inputs(STRATEGIES.get(name).input_kind, spec, B, seed)


def _build(name: str, spec: FusionSpec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = STRATEGIES.get(name).build(spec)
    model.fit_prior(torch.tensor([0, 1, 2, 2]))
    return model


@pytest.mark.parametrize("name,key", CASES, ids=[f"{n}-{k}" for n, k in CASES])
class TestStrategyContract:
    def test_output_shape_and_finite(self, name, key):
        spec = _spec(name, key)
        model = _build(name, spec).eval()
        x = _inputs(name, spec)
        out = model(x)
        assert out.shape == (B, 3) and torch.isfinite(out).all()
        branches = getattr(model, "unimodal_logits", None)
        if branches is not None:  # the per-modality hook gradient blending relies on
            per = branches(x)
            assert list(per) == spec.modalities
            assert all(v.shape == (B, 3) and torch.isfinite(v).all() for v in per.values())

    def test_gradients_reach_every_trainable_parameter(self, name, key):
        spec = _spec(name, key)
        info = STRATEGIES.get(name)
        model = _build(name, spec).train()
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not info.trainable:
            assert not params, f"non-trainable baseline {name} has trainable parameters {list(params)}"
            return
        inputs, labels = _inputs(name, spec), torch.tensor([0, 1, 2, 0, 1, 2])
        custom = getattr(model, "training_loss", None)
        loss = custom(inputs, labels) if custom else torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        missing = [n for n, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all()]
        zero = [n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() == 0]
        assert not missing, f"no gradient reaches {missing}"
        assert not zero, f"gradient is exactly zero for {zero}"

    def test_deterministic_under_a_seed(self, name, key):
        spec = _spec(name, key)
        a = _build(name, spec, seed=3).eval()
        b = _build(name, spec, seed=3).eval()
        x = _inputs(name, spec)
        torch.manual_seed(1)
        ya = a(x)
        torch.manual_seed(1)
        yb = b(x)
        assert torch.equal(ya, yb)

    def test_state_dict_round_trip(self, name, key):
        spec = _spec(name, key)
        a = _build(name, spec, seed=1).eval()
        buf = io.BytesIO()
        torch.save(a.state_dict(), buf)
        b = _build(name, spec, seed=2).eval()
        b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
        x = _inputs(name, spec)
        torch.manual_seed(0)
        ya = a(x)
        torch.manual_seed(0)
        assert torch.allclose(ya, b(x))

    def test_missing_modality_at_inference(self, name, key):
        spec = _spec(name, key)
        model = _build(name, spec).eval()
        x = _inputs(name, spec)
        if len(spec.modalities) == 1:  # a unimodal model has nothing left to predict from
            with pytest.raises(ValueError, match="no modality"):
                model({})
            return
        for dropped in spec.modalities:  # every modality in turn (e.g. FiLM's conditioner and the others)
            out = model({m: v for m, v in x.items() if m != dropped})
            assert out.shape == (B, 3) and torch.isfinite(out).all(), f"absent {dropped}"
            if STRATEGIES.get(name).input_kind == "tokens":  # all-padding sequence == absent modality
                zeroed = model({m: v if m != dropped else torch.zeros_like(v) for m, v in x.items()})
                assert torch.allclose(zeroed, out, atol=1e-5), f"zeroed {dropped} differs from absent"
        # zeroed per example, as modality dropout does (token inputs: the whole sequence is padding)
        out = model(drop_modalities(x, 0.7, torch.Generator().manual_seed(0)))
        assert out.shape == (B, 3) and torch.isfinite(out).all()

    def test_search_space_sampling_gives_valid_buildable_params(self, name, key):
        info = STRATEGIES.get(name)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        spec = _spec(name, key)
        for _ in range(3):
            trial = study.ask()
            params = space.sample_params(trial, info.params)
            assert isinstance(params, info.params)
            model = info.build(spec, params).eval()
            assert model(_inputs(name, spec)).shape == (B, 3)
            study.tell(trial, 0.0)

    def test_params_outside_the_space_are_rejected(self, name, key):
        info = STRATEGIES.get(name)
        with pytest.raises(ValueError, match="outside its search space"):
            info.params(lr=10.0)
        with pytest.raises(ValueError, match="hidden_dim"):
            info.params(hidden_dim=7)


def test_registry_has_the_zoo():
    families = collections.Counter(info.family for _, info in STRATEGIES.items())
    assert len(STRATEGIES) >= 16, STRATEGIES.names()
    for fam in ("early", "mid", "late"):
        assert families[fam] >= 3, f"only {families[fam]} {fam} strategies"
    assert families["unimodal"] >= 1 and families["baseline"] >= 2


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_metadata_citation_docstring_and_shared_ranges(name):
    info = STRATEGIES.get(name)
    assert info.citation and "(" in info.citation, "citation must name authors and year"
    doc = info.cls.__doc__ or ""
    assert doc.strip() and "issing" in doc, "docstring must say what it does and how it treats a missing modality"
    assert dataclasses.is_dataclass(info.params) and info.params.__dataclass_params__.frozen  # type: ignore[attr-defined]
    shared = space.search_space(SharedParams)
    mine = space.search_space(info.params)
    for field_name, desc in shared.items():
        assert mine[field_name] == desc, f"{name} changes the shared range of {field_name}"
