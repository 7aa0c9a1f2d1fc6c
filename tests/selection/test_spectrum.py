"""Spectrum: the SNR on synthetic matrices, and the selection on a tiny model against a brute-force re-implementation.

The synthetic checks pin what the reference estimator (sigma = IQR(S)/1.349) really does; see the module
docstring of midblock.selection.spectrum for why a pure-noise spectrum is not all below its edge.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from midblock.errors import MidblockError
from midblock.models.introspect import get_layout
from midblock.selection import select
from midblock.selection.spectrum import Spectrum, mp_edge, snr, top_by_type


def _noise(n: int, m: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, m, generator=torch.Generator().manual_seed(seed))


def _planted(n: int, m: int, k: int, strength: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    U = torch.linalg.qr(torch.randn(n, k, generator=g))[0]
    V = torch.linalg.qr(torch.randn(m, k, generator=g))[0]
    return _noise(n, m, seed) + strength * U @ V.T


def _reference_snr(W: np.ndarray) -> float:
    """The formula written out again with NumPy: IQR/1.349, MP edge, above/below sums, over max(S)."""
    S = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    q75, q25 = np.percentile(S, [75, 25])
    sigma = (q75 - q25) / 1.349
    n, m = W.shape
    beta = min(n, m) / max(n, m)
    edge = sigma * (1 + math.sqrt(beta))
    signal, noise = S[S > edge].sum(), S[S <= edge].sum()
    return (signal / noise if noise > 0 else math.inf) / S.max()


def test_snr_equals_the_formula_written_out_with_numpy():
    for shape in [(40, 40), (64, 24), (24, 64)]:
        W = _planted(*shape, k=3, strength=12.0)
        assert snr(W)["snr"] == pytest.approx(_reference_snr(W.numpy()), rel=1e-9)


def test_square_gaussian_noise_snr_is_near_zero_with_a_quarter_of_the_spectrum_above_the_edge():
    r = snr(_noise(256, 256))
    assert r["snr"] < 0.05
    assert 0.1 < r["above"] / 256 < 0.4  # the IQR edge lies inside the quarter-circle bulk, not at its end


def test_rectangular_gaussian_noise_lies_wholly_above_the_iqr_edge():
    """IQR(S) measures the bulk's width; a 4:1 bulk sits far from 0, so nothing falls below the edge."""
    r = snr(_noise(256, 64))
    assert r["above"] == 64 and r["snr"] == math.inf


def test_planted_signal_rises_above_the_edge_and_the_undivided_ratio_grows_with_strength():
    k, noise_only = 4, snr(_noise(256, 256))
    ratios, snrs = [], []
    for strength in (0.0, 80.0, 160.0, 320.0, 640.0):
        W = _planted(256, 256, k, strength)
        r = snr(W)
        S = torch.linalg.svdvals(W.double())
        if strength > 0:  # the planted directions stand out above the edge and above the noise bulk
            assert (S[:k] > r["edge"]).all() and S[k - 1] > 1.3 * S[k]
            # the count above the edge is the noise's own count plus (about) the planted rank, not the rank
            assert abs(r["above"] - noise_only["above"]) <= 2
        ratios.append(r["ratio"])
        snrs.append(r["snr"])
    # (at 40 the four signal values barely leave the bulk and the ratio is still the noise's, about 0.8)
    assert ratios == sorted(ratios) and ratios[-1] > 2 * ratios[0]
    # divided by max(S), the score falls as the signal grows: the reference ranks by this number
    assert snrs == sorted(snrs, reverse=True)


def test_mp_edge_uses_the_aspect_ratio():
    S = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    iqr = float(torch.quantile(S, 0.75) - torch.quantile(S, 0.25))
    assert mp_edge(S, 10, 40) == pytest.approx(iqr / 1.349 * 1.5)
    assert mp_edge(S, 40, 10) == mp_edge(S, 10, 40)


def _brute_force(model, percent: float) -> dict[int, list[str]]:
    """Every linear weight of every block, NumPy SNR, top floor(n * P / 100) per module type."""
    lay = get_layout(model)
    chosen: dict[int, list[str]] = {}
    for name in lay.linear_names:
        scores = [_reference_snr(blk.get_submodule(name).weight.detach().numpy()) for blk in lay.blocks]
        k = int(len(scores) * percent / 100)
        for b in sorted(range(len(scores)), key=lambda b: (-scores[b], b))[:k]:
            chosen.setdefault(b, []).append(name)
    return chosen


@pytest.mark.parametrize("percent", [25.0, 50.0, 100.0])
def test_selection_on_a_tiny_model_equals_a_brute_force_re_implementation(tiny, percent):
    model, _ = tiny("llama-tiny")
    sel = select(f"spectrum:{percent:g}", get_layout(model), model=model)
    want = _brute_force(model, percent)
    assert {b: sorted(m) for b, m in sel.modules.items()} == {b: sorted(m) for b, m in want.items()}
    per_type = {n: sum(n in m for m in sel.modules.values()) for n in get_layout(model).linear_names}
    assert set(per_type.values()) == {int(6 * percent / 100)}  # llama-tiny: 6 blocks per type
    assert sel.train_ends and sel.blocks == sorted(sel.modules)


def test_top_by_type_breaks_ties_by_the_lower_block_and_floors_the_count():
    assert top_by_type({"q": [1.0, 3.0, 3.0, 0.5]}, 50) == {1: ["q"], 2: ["q"]}
    assert top_by_type({"q": [1.0, 3.0, 3.0]}, 50) == {1: ["q"]}  # floor(1.5) = 1
    assert top_by_type({"q": [math.inf, 1.0]}, 50) == {0: ["q"]}  # nothing below the edge ranks first


@pytest.mark.parametrize("arg", ["", "0", "101", "abc", "50:all", "nan"])
def test_bad_spectrum_specs_are_one_line_errors(arg):
    with pytest.raises(MidblockError, match="spectrum"):
        Spectrum().parse(arg)


def test_blocks_suffix_keeps_embeddings_and_head_frozen(tiny):
    model, _ = tiny("llama-tiny")
    sel = select("spectrum:50:blocks", get_layout(model), model=model)
    assert not sel.train_ends and sel.modules
