"""A one-feature view reaches every strategy (generated from the registry).

LayerNorm over a single feature maps every value to 0, so before `input_norm` a scalar view (a score,
a measurement) reached `unimodal`, the late heads and the mid/early projections as a constant: an MLP
on the IMDB view's LR score alone scored 0.5. Here the 1-d modality's values are changed and the
output must change with them.
"""

from __future__ import annotations

import pytest
import torch

from fusebench.strategies import STRATEGIES, FusionSpec

SPEC = FusionSpec({"score": 1, "text": 20}, {"score": 1, "text": 7}, 3)
B = 8
NAMES = [n for n in STRATEGIES.names() if STRATEGIES.get(n).trainable]

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(kind: str, score: torch.Tensor, spec: FusionSpec) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = {}
    for m, d in spec.dims.items():
        x = score if m == "score" else torch.randn(B, d, generator=g)
        out[m] = x if kind == "pooled" else x.unsqueeze(1).expand(B, spec.tokens[m], d).contiguous()
    return out


@pytest.mark.parametrize("name", NAMES)
def test_a_one_feature_view_changes_the_output(name: str) -> None:
    info = STRATEGIES.get(name)
    spec = SPEC.restrict(["score"]) if info.per_modality else SPEC
    torch.manual_seed(0)
    model = info.build(spec)
    model.fit_prior(torch.tensor([0, 1, 2, 2]))
    model.eval()
    low = torch.linspace(-2.0, 2.0, B).unsqueeze(1)
    with torch.no_grad():
        a = model(_inputs(info.input_kind, low, spec))
        b = model(_inputs(info.input_kind, -3.0 * low + 1.0, spec))
    assert (a - b).abs().max() > 1e-4, f"{name}: the one-feature view does not reach the output"
