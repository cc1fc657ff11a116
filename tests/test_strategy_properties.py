"""Property tests of the methods themselves, generated from the registry where the property is
shared: each one checks what defines a strategy's method (docs/strategies.md), beside the shape
and plumbing checks of test_strategy_contract.py."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from fusebench.strategies import STRATEGIES, FusionSpec
from fusebench.strategies.bilinear import LowRankLayer, tensor_product, with_one
from fusebench.strategies.contract_tests import random_inputs
from fusebench.strategies.separate import Stacking, fold_of

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC2 = FusionSpec({"audio": 12, "text": 20}, {"audio": 5, "text": 7}, 4)
SPEC3 = FusionSpec({"audio": 12, "image": 16, "text": 20}, {"audio": 5, "image": 4, "text": 7}, 4)
B = 8
FUSION = [n for n, i in STRATEGIES.items() if i.trainable and not i.per_modality]
TOKEN = [n for n in FUSION if STRATEGIES.get(n).input_kind == "tokens"]
POOLED = [n for n in FUSION if STRATEGIES.get(n).input_kind == "pooled"]


def _inputs(kind: str, spec: FusionSpec, seed: int = 0, pad: bool = False) -> dict[str, torch.Tensor]:
    return random_inputs(kind, spec, B, seed, pad)


def _build(name: str, spec: FusionSpec, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return STRATEGIES.get(name).build(spec).eval()


def _generic(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Move every parameter off its special initial value (zeros, ones, uniform weights) by noise from
    one seed, so that two methods that coincide only at initialisation are told apart."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def test_the_groups_are_not_empty():
    assert {"early_transformer", "mult", "mbt", "coattention"} <= set(TOKEN)
    assert {"gmu", "lmf", "mfb", "stacking", "separate_mean", "product_of_experts"} <= set(POOLED)


# --- token models know the order of their tokens -------------------------------------------------

@pytest.mark.parametrize("name", TOKEN)
@pytest.mark.parametrize("spec", [SPEC2, SPEC3], ids=["2mod", "3mod"])
def test_token_strategies_are_permutation_sensitive(name, spec):
    model = _build(name, spec)
    x = _inputs("tokens", spec)
    base = model(x)
    for m in spec.modalities:  # reversing any one modality's tokens changes the output
        flipped = dict(x, **{m: x[m].flip(1)})
        assert (model(flipped) - base).abs().max() > 1e-4, f"{name} ignores the order of {m} tokens"


@pytest.mark.parametrize("name", TOKEN)
def test_token_strategies_know_which_modality_a_token_is(name):
    """Two modalities of equal size: swapping their contents changes the output (type embedding)."""
    spec = FusionSpec({"a": 8, "b": 8}, {"a": 5, "b": 5}, 3)
    model = _build(name, spec)
    x = _inputs("tokens", spec)
    assert (model({"a": x["b"], "b": x["a"]}) - model(x)).abs().max() > 1e-4


# --- GMU: one gate per hidden unit ---------------------------------------------------------------

@pytest.mark.parametrize("spec", [SPEC2, SPEC3], ids=["2mod", "3mod"])
def test_gmu_gates_each_hidden_unit(spec):
    model = _build("gmu", spec)
    x = _inputs("pooled", spec)
    z, proj = model.gates(x)
    h = model.params.hidden_dim
    assert z.shape == (B, len(spec.modalities), h)
    assert torch.allclose(z.sum(1), torch.ones(B, h), atol=1e-6)  # per-unit softmax over modalities
    assert z.std(dim=2).min() > 1e-3, "the gate is constant across hidden units (a scalar gate)"
    expected = model.head((z * torch.tanh(proj)).sum(1))
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_gmu_two_modalities_is_the_papers_sigmoid_gate():
    """z_v = σ(g_v − g_t) with g = W_z[x_v; x_t]: the paper's bimodal unit."""
    model = _build("gmu", SPEC2)
    x = _inputs("pooled", SPEC2)
    z, proj = model.gates(x)
    g = model.gate(proj.flatten(1)).view_as(proj)
    assert torch.allclose(z[:, 0], torch.sigmoid(g[:, 0] - g[:, 1]), atol=1e-6)


# --- stacking: level-0 predictions are out of fold -----------------------------------------------

def test_stacking_meta_features_come_from_the_fold_that_never_trains_on_the_example():
    torch.manual_seed(0)
    model = STRATEGIES.get("stacking").build(SPEC2).train()
    assert isinstance(model, Stacking)
    x = _inputs("pooled", SPEC2, seed=1)
    labels = torch.arange(B) % 4
    folds = model.folds_of(x)
    for i in range(B):
        one = {m: v[i : i + 1] for m, v in x.items()}
        model.zero_grad(set_to_none=True)
        model.training_loss(one, labels[i : i + 1]).backward()
        for m in SPEC2.modalities:
            k = int(folds[m][i])
            head = model.heads[m]
            for p in (head.w1, head.b1, head.w2, head.b2):
                assert p.grad is not None
                assert p.grad[k].abs().max() == 0, f"fold {k} of {m} learns from example {i}, whose meta-feature it supplies"
                others = [j for j in range(model.folds) if j != k]
                assert p.grad[others].abs().sum() > 0
    # the meta-feature of example i is fold(i)'s prediction
    with torch.no_grad():
        model.eval()  # no dropout, same weights
        feats = model.meta_features(x, out_of_fold=True)
        for j, m in enumerate(SPEC2.modalities):
            lp = F.log_softmax(model.heads[m](x[m]), -1)
            expected = lp[folds[m], torch.arange(B)]
            assert torch.allclose(feats[:, j * 4 : (j + 1) * 4], expected)


def test_stacking_meta_learner_gets_no_gradient_into_the_level0_models():
    torch.manual_seed(0)
    model = STRATEGIES.get("stacking").build(SPEC2).train()
    x = _inputs("pooled", SPEC2)
    F.cross_entropy(model.meta(model.meta_features(x, out_of_fold=True)), torch.arange(B) % 4).backward()
    assert all(p.grad is None for p in model.heads.parameters())
    assert model.meta.weight.grad is not None


def test_stacking_folds_depend_on_the_example_only():
    key = torch.randn(20, generator=torch.Generator().manual_seed(0))
    x = torch.randn(64, 20, generator=torch.Generator().manual_seed(1))  # not the global RNG: order-independent
    whole = fold_of(x, 5, key)
    assert torch.equal(torch.cat([fold_of(x[:10], 5, key), fold_of(x[10:], 5, key)]), whole)  # batch-independent
    assert torch.equal(fold_of(x[torch.arange(63, -1, -1)], 5, key), whole.flip(0))
    assert set(whole.tolist()) == set(range(5)), "every fold is used"
    assert torch.equal(fold_of(x[[3, 3]], 5, key), whole[[3, 3]])  # identical content, same fold


# --- LMF generalises TFN --------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [(3, 4), (2, 3, 2)])
def test_lmf_at_full_rank_represents_the_tfn_product(dims):
    """Any linear map W of TFN's outer product Z is an LMF layer of rank Π_{m<M} d_m: factor r = (i, j, …)
    selects z_1[i]·z_2[j]·… and the last modality's factor carries W[i, j, …, :]."""
    out = 5
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*dims, out, generator=g)
    zs = [with_one(torch.randn(B, d - 1, generator=g)) for d in dims]
    rank = int(torch.tensor(dims[:-1]).prod())
    layer = LowRankLayer(list(dims), out, rank)
    with torch.no_grad():
        for r, idx in enumerate(itertools.product(*[range(d) for d in dims[:-1]])):
            for m, i in enumerate(idx):
                layer.factors[m][r].zero_()
                layer.factors[m][r][i] = 1.0
            layer.factors[-1][r] = w[idx]
        layer.rank_weights.fill_(1.0)
        layer.bias.zero_()
    expected = tensor_product(zs) @ w.reshape(-1, out)
    assert torch.allclose(layer(zs), expected, atol=1e-4)


def test_lmf_is_tfn_with_its_first_layer_factorised():
    """Same sub-networks and post-fusion head as tensor_fusion (so the two differ only in the weight)."""
    tfn, lmf = _build("tensor_fusion", SPEC2), _build("lmf", SPEC2)
    assert [type(m) for m in tfn.head[1:]] == [type(m) for m in lmf.head]
    assert lmf.proj["audio"][1].out_features == lmf.params.factor_dim == tfn.params.factor_dim


# --- no two strategies compute the same function --------------------------------------------------

def _same_up_to_temperature(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a ≈ s·b + c_i (a positive scale and a per-example shift: the same classifier)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    s = (a * b).sum() / (b * b).sum().clamp_min(1e-12)
    return bool((a - s * b).norm() <= 1e-3 * a.norm())


@pytest.mark.parametrize("group", [POOLED, TOKEN], ids=["pooled", "tokens"])
@pytest.mark.parametrize("spec", [SPEC2, SPEC3], ids=["2mod", "3mod"])
def test_no_two_strategies_compute_the_same_function(group, spec):
    kind = STRATEGIES.get(group[0]).input_kind
    x = _inputs(kind, spec, seed=5)
    outs = {n: _generic(_build(n, spec, seed=0))(x).detach() for n in group}
    for a, b in itertools.combinations(group, 2):
        assert not _same_up_to_temperature(outs[a], outs[b]), f"{a} and {b} give the same outputs"


def test_the_temperature_check_catches_the_old_product_of_experts():
    """The old `product_of_experts` (Σ log-softmax) was `logit_mean` at temperature 1/M."""
    logits = [torch.randn(B, 4) for _ in range(2)]
    mean = torch.stack(logits).mean(0)
    poe = sum(F.log_softmax(x, -1) for x in logits)
    assert _same_up_to_temperature(poe, mean)


def test_product_of_experts_precision_is_per_expert_and_per_example():
    model = _build("product_of_experts", SPEC2)
    with torch.no_grad():
        for net in model.precision.values():
            net[1].weight.normal_()
    alphas = model.alphas(_inputs("pooled", SPEC2))
    assert set(alphas) == set(SPEC2.modalities)
    assert all(a.shape == (B, 1) and (a >= 0).all() and a.std() > 1e-3 for a in alphas.values())


# --- declared missing-modality behaviour -----------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in FUSION if STRATEGIES.get(n).cls.zeroed_is_absent])
@pytest.mark.parametrize("spec", [SPEC2, SPEC3], ids=["2mod", "3mod"])
def test_a_zeroed_modality_is_an_absent_one(name, spec):
    model = _build(name, spec)
    x = _inputs(STRATEGIES.get(name).input_kind, spec, pad=True)
    for dropped in spec.modalities:
        absent = model({m: v for m, v in x.items() if m != dropped})
        zeroed = model(dict(x, **{dropped: torch.zeros_like(x[dropped])}))
        assert torch.allclose(absent, zeroed, atol=1e-5), f"{name}: zeroed {dropped} differs from absent"
        one = {m: v.clone() for m, v in x.items()}  # per example, as modality dropout does
        one[dropped][2] = 0.0
        out = model(one)
        alone = model({m: v[2:3] for m, v in x.items() if m != dropped})
        assert torch.allclose(out[2:3], alone, atol=1e-5), f"{name}: example zeroed in a batch differs"


def _only(x, keep):
    return {keep: x[keep]}


DECLARED = {  # name → expected output with only modality `k` present (two-modality spec)
    "logit_mean": lambda mdl, x, k: mdl.heads[k](x[k]),
    "learned_weights": lambda mdl, x, k: mdl.heads[k](x[k]),
    "product_of_experts": lambda mdl, x, k: mdl.alphas(_only(x, k))[k] * F.log_softmax(mdl.heads[k](x[k]), -1),
    "separate_mean": lambda mdl, x, k: F.log_softmax(mdl.heads[k](x[k]), -1),
    "separate_weights": lambda mdl, x, k: F.log_softmax(mdl.heads[k](x[k]), -1),
    "gmu": lambda mdl, x, k: mdl.head(torch.tanh(mdl.proj[k](x[k]))),
    "attention_weights": lambda mdl, x, k: mdl.head(mdl.proj[k](x[k])),
    "film": lambda mdl, x, k: mdl.head(mdl.proj[k](x[k])),  # conditioner or conditioned alone: unmodulated
    "early_sum": lambda mdl, x, k: mdl.head(mdl.maps[k](x[k])),
    "concat": lambda mdl, x, k: mdl.head(torch.cat(
        [mdl.norms[m](x[m]) if m == k else torch.zeros_like(x[m]) for m in SPEC2.modalities], -1)),
    "tensor_fusion": lambda mdl, x, k: mdl.head(tensor_product(
        [with_one(mdl.proj[m](x[m]) if m == k else torch.zeros(B, mdl.params.factor_dim)) for m in SPEC2.modalities])),
    "lmf": lambda mdl, x, k: mdl.head(mdl.fusion(
        [with_one(mdl.proj[m](x[m]) if m == k else torch.zeros(B, mdl.params.factor_dim)) for m in SPEC2.modalities])),
    "stacking": lambda mdl, x, k: mdl.meta(torch.cat(
        [F.log_softmax(F.log_softmax(mdl.heads[m](x[m]), -1).mean(0), -1) if m == k
         else torch.full((B, 4), -torch.log(torch.tensor(4.0)))
         for m in SPEC2.modalities], -1)),
}


def test_every_fusion_strategy_declares_a_checked_missing_modality_behaviour():
    unchecked = [n for n in FUSION if n not in DECLARED and not STRATEGIES.get(n).cls.zeroed_is_absent
                 and not hasattr(STRATEGIES.get(n).cls, "unimodal_logits")]
    assert not unchecked, f"no missing-modality property checks {unchecked}"


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_declared_missing_modality_behaviour(name):
    model = _build(name, SPEC2)
    x = _inputs("pooled", SPEC2)
    for k in SPEC2.modalities:
        got = model(_only(x, k))
        assert torch.allclose(got, DECLARED[name](model, x, k), atol=1e-5), f"{name} with only {k}"


ALONE = [n for n in FUSION
         if "runs the network on each modality alone" in " ".join((STRATEGIES.get(n).cls.__doc__ or "").split())]


def test_the_models_that_run_alone_are_found():
    assert {"mult", "mbt", "coattention", "early_transformer", "lmf", "tensor_fusion", "mfb"} <= set(ALONE)


@pytest.mark.parametrize("name", ALONE)
def test_unimodal_logits_is_the_model_with_one_modality(name):
    """Where the docstring says `unimodal_logits` runs the network on each modality alone, it does."""
    info = STRATEGIES.get(name)
    model = _build(name, SPEC2)
    x = _inputs(info.input_kind, SPEC2)
    for m, logits in model.unimodal_logits(x).items():
        assert torch.allclose(logits, model({m: x[m]}), atol=1e-5)


# --- FiLM: the conditioner is searched uniformly -----------------------------------------------

@pytest.mark.parametrize("m", [2, 3, 4])
def test_film_conditioner_is_uniform_over_modalities(m):
    """Uniform u over the search range picks each of M modalities equally often (the old index
    modulo M picked modality 0 two times in three for M = 2)."""
    from fusebench.core import space
    from fusebench.strategies.mid import FiLMFusion, FiLMParams

    desc = space.search_space(FiLMParams)["conditioner"]
    low, high = desc["low"], desc["high"]
    names = [f"m{i}" for i in range(m)]
    grid = [low + (high - low) * (i + 0.5) / 6000 for i in range(6000)]
    counts = {n: 0 for n in names}
    for u in grid:
        counts[FiLMFusion.pick_conditioner(names, u)] += 1
    assert max(counts.values()) - min(counts.values()) <= 6000 * 0.01, counts
