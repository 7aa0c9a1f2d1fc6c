"""Properties of the pure metric functions (their definitions: docs/metrics.md)."""

from __future__ import annotations

import math

import pytest
import torch

from midblock.analysis import metrics as M
from midblock.lora import lora_scaling


def _rot(d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


def _x(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("n", [2, 5, 16])
def test_entropy_identity_is_log_n_and_normalised_one(n):
    K = torch.eye(n)
    assert M.renyi_entropy(K) == pytest.approx(math.log(n), abs=1e-12)
    assert M.renyi_entropy(K, normalization="maxEntropy") == pytest.approx(1.0, abs=1e-12)
    assert M.renyi_entropy(K, normalization="logN") == pytest.approx(1.0, abs=1e-12)
    for alpha in (0.5, 2.0, 3.0):  # uniform spectrum: every Renyi order gives log n
        assert M.renyi_entropy(K, alpha=alpha) == pytest.approx(math.log(n), abs=1e-12)


def test_entropy_rank_one_is_zero():
    v = _x(7, 1)
    K = v @ v.T
    for alpha in (1.0, 2.0, 0.5):
        assert M.renyi_entropy(K, alpha=alpha) == pytest.approx(0.0, abs=1e-10)


def test_entropy_known_spectrum_and_alpha2():
    K = torch.diag(torch.tensor([3.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    assert M.renyi_entropy(K) == pytest.approx(float(-(p * p.log()).sum()), abs=1e-12)
    assert M.renyi_entropy(K, alpha=2) == pytest.approx(-math.log(0.75**2 + 0.25**2), abs=1e-12)
    assert M.renyi_entropy(K, normalization="logD", dim=8) == pytest.approx(
        float(-(p * p.log()).sum()) / math.log(8), abs=1e-12
    )
    with pytest.raises(ValueError):
        M.renyi_entropy(K, normalization="bogus")


def test_gram_eigenvalues_either_form_match_svd_values():
    for n, d in ((5, 9), (9, 5)):
        A = _x(n, d, 1)
        ev = M.gram_eigenvalues(A)
        assert ev.shape[0] == min(n, d)
        torch.testing.assert_close(ev.sqrt(), torch.linalg.svdvals(A), rtol=1e-9, atol=1e-9)


def test_prompt_entropy_orthogonal_tokens_is_one_and_repeated_is_zero():
    h = torch.eye(4, 10) * 3.0  # 4 orthogonal tokens -> K = I after normalisation
    assert M.prompt_entropy(h) == pytest.approx(1.0, abs=1e-12)
    same = torch.ones(6, 10)
    assert M.prompt_entropy(same) == pytest.approx(0.0, abs=1e-10)
    # centring removes the shared offset: a common vector plus orthogonal parts is no longer rank one
    h2 = torch.ones(4, 10) * 5 + torch.eye(4, 10)
    assert M.prompt_entropy(h2, center=True) > M.prompt_entropy(h2) + 0.3
    assert math.isnan(M.prompt_entropy(torch.ones(1, 10)))


def test_dataset_entropy_scale_invariant_rows():
    Z = _x(12, 6, 2)
    scaled = Z * torch.arange(1, 13, dtype=torch.float64)[:, None]  # rows are L2-normalised first
    assert M.dataset_entropy(Z) == pytest.approx(M.dataset_entropy(scaled), abs=1e-12)
    assert 0.0 < M.dataset_entropy(Z) <= 1.0


def test_effective_rank_and_rankme():
    Z = torch.zeros(4, 6, dtype=torch.float64)
    Z[0, 0] = Z[1, 1] = Z[2, 2] = Z[3, 3] = 2.0  # four equal singular values
    assert M.effective_rank(Z) == pytest.approx(1.0, abs=1e-12)
    assert M.effective_rank(Z, "rankme") == pytest.approx(1.0, abs=1e-12)
    Z2 = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    p = torch.tensor([0.8, 0.2], dtype=torch.float64)  # energy: 4/5, 1/5
    assert M.effective_rank(Z2, normalize=False) == pytest.approx(math.exp(float(-(p * p.log()).sum())))
    q = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    assert M.effective_rank(Z2, "rankme", normalize=False) == pytest.approx(math.exp(float(-(q * q.log()).sum())))
    v = _x(5, 1)
    assert M.effective_rank(v @ _x(1, 8, 3)) == pytest.approx(1 / 5, abs=1e-9)  # rank one


def test_curvature_line_zero_reversal_one_short_skipped():
    t = torch.arange(6, dtype=torch.float64)[:, None]
    line = t * torch.tensor([[1.0, 2.0, -1.0]]) + 4.0
    assert M.curvature(line) == pytest.approx(0.0, abs=1e-7)
    zigzag = torch.tensor([[0.0, 0], [1, 0], [0, 0], [1, 0], [0, 0]])
    assert M.curvature(zigzag) == pytest.approx(1.0, abs=1e-12)
    right = torch.tensor([[0.0, 0], [1, 0], [1, 1]])  # one 90-degree turn
    assert M.curvature(right) == pytest.approx(0.5, abs=1e-12)
    assert math.isnan(M.curvature(line[:2]))


def test_sparsity_and_norms():
    h = torch.tensor([[100.0, 0.5, 2.0], [0.0, -0.9, 3.0]])
    assert M.sparsity(h) == pytest.approx(3 / 6)  # |h| < 1: 0.5, 0.0, -0.9
    assert M.token_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0]])) == pytest.approx(3.0)
    assert M.l2_norm(torch.tensor([[3.0, 4.0], [6.0, 8.0]])) == pytest.approx(7.5)


def test_spectral():
    Z = torch.diag(torch.tensor([10.0, 2.0, 0.05], dtype=torch.float64))
    s = M.spectral(Z)
    assert s["s_max"] == pytest.approx(10.0)
    assert s["condition_number"] == pytest.approx(200.0)
    assert s["rank_deficiency"] == pytest.approx(1 / 3)  # 0.05 < 0.01 * 10


def test_cka_self_rotation_scaling_and_forms():
    X = _x(20, 8, 4)
    Y = torch.tanh(X @ _x(8, 6, 5)) + 0.1 * _x(20, 6, 6)
    assert M.cka(X, X) == pytest.approx(1.0, abs=1e-12)
    base = M.cka(X, Y)
    assert 0.0 < base < 1.0
    assert M.cka(X @ _rot(8, 1), Y) == pytest.approx(base, abs=1e-10)
    assert M.cka(X, Y @ _rot(6, 2) * 7.5) == pytest.approx(base, abs=1e-10)
    assert M.cka(X * 0.01, Y) == pytest.approx(base, abs=1e-10)
    assert M.cka(X, Y, form="gram") == pytest.approx(M.cka(X, Y, form="feature"), abs=1e-12)
    # the explicit N x N centred-Gram formula: tr(KcLc) / (||Kc|| ||Lc||)
    H = torch.eye(20, dtype=torch.float64) - 1 / 20
    Kc, Lc = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    assert base == pytest.approx(float((Kc * Lc).sum() / (Kc.norm() * Lc.norm())), abs=1e-12)
    # unbiased: also 1 on itself, rotation invariant, and differs from the biased value
    assert M.cka(X, X, unbiased=True) == pytest.approx(1.0, abs=1e-12)
    ub = M.cka(X, Y, unbiased=True)
    assert M.cka(X @ _rot(8, 3), Y, unbiased=True) == pytest.approx(ub, abs=1e-10)
    assert abs(ub - base) > 1e-4


def test_cka_from_moments_matches_direct():
    X, Y = _x(50, 7, 7) + 3.0, _x(50, 7, 8) + X_offset()
    got = M.cka_from_moments(X.T @ Y, X.T @ X, Y.T @ Y, X.sum(0), Y.sum(0), 50)
    assert got == pytest.approx(M.cka(X, Y), abs=1e-12)


def _sum_moments(X: torch.Tensor, Y: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
    parts = [M.token_moments(X[i : i + chunk], Y[i : i + chunk]) for i in range(0, X.shape[0], chunk)]
    return {k: sum(p[k] for p in parts) for k in M.MOMENT_KEYS}


@pytest.mark.parametrize("n, d, e", [(6, 9, 4), (37, 5, 8), (120, 12, 12)])
def test_cka_unbiased_from_moments_equals_gram_hsic(n, d, e):
    # uncentred rows with an offset: the estimator centres implicitly; streamed in uneven chunks
    X = _x(n, d, 10) + 2.0
    Y = torch.tanh(X @ _x(d, e, 11)) + 0.3 * _x(n, e, 12) - 1.0
    K, L = X @ X.T, Y @ Y.T
    direct = float(M._hsic_unbiased(K, L) / (M._hsic_unbiased(K, K) * M._hsic_unbiased(L, L)).sqrt())
    assert direct == pytest.approx(M.cka(X, Y, unbiased=True), abs=1e-12)
    for chunk in (n, 5, 1):
        assert M.cka_unbiased_from_moments(_sum_moments(X, Y, chunk)) == pytest.approx(direct, abs=1e-9)
    assert abs(direct - M.cka(X, Y)) > 1e-4  # not the biased estimator


def test_cka_unbiased_from_moments_invariances():
    X = _x(60, 8, 13)
    Y = X @ _x(8, 6, 14) + 0.5 * _x(60, 6, 15)
    base = M.cka_unbiased_from_moments(_sum_moments(X, Y, 16))
    assert 0.0 < base < 1.0
    assert M.cka_unbiased_from_moments(_sum_moments(X, X, 7)) == pytest.approx(1.0, abs=1e-12)
    assert M.cka_unbiased_from_moments(_sum_moments(X @ _rot(8, 4), Y, 9)) == pytest.approx(base, abs=1e-10)
    assert M.cka_unbiased_from_moments(_sum_moments(X, 7.5 * Y @ _rot(6, 5), 60)) == pytest.approx(base, abs=1e-10)
    assert M.cka_unbiased_from_moments(_sum_moments(0.01 * X, Y, 11)) == pytest.approx(base, abs=1e-10)
    # the centring is built in: translating either side changes nothing (up to round-off)
    assert M.cka_unbiased_from_moments(_sum_moments(X + 3.0, Y - X_offset()[:6], 13)) == pytest.approx(base, abs=1e-9)
    m = _sum_moments(X[:3], Y[:3], 3)
    assert math.isnan(M.cka_unbiased_from_moments(m))  # needs n > 3


def X_offset() -> torch.Tensor:
    return torch.linspace(-2, 2, 7, dtype=torch.float64)


def test_pairwise_identity_and_shift():
    Z = _x(10, 4, 9)
    assert M.cosine(Z, Z) == pytest.approx(1.0)
    assert M.mean_shift(Z, Z)["mean_shift"] == 0.0
    assert M.change_intensity(Z, Z) == 0.0
    d = torch.tensor([3.0, 4.0, 0.0, 0.0], dtype=torch.float64)
    ms = M.mean_shift(Z, Z + d)
    assert ms["mean_shift"] == pytest.approx(5.0)
    assert ms["mean_shift_rel"] == pytest.approx(5.0 / float(Z.mean(0).norm()))
    assert M.change_intensity(Z, Z + d) == pytest.approx(5.0)
    assert M.cosine(Z, -Z) == pytest.approx(-1.0)


def test_lora_delta_matches_materialised_update():
    A, B = _x(4, 12, 10), _x(9, 4, 11)
    for rs in (False, True):
        s = lora_scaling(16, 4, rslora=rs)
        assert s == (16 / 2 if rs else 16 / 4)
        assert M.lora_delta_sq(A, B, s) == pytest.approx(float((s * B @ A).pow(2).sum()), rel=1e-12)


def test_logit_lens_helpers():
    V = 5
    logits = torch.randn(2, 4, V, generator=torch.Generator().manual_seed(0))
    lp = torch.log_softmax(logits, -1)
    ids = torch.tensor([[1, 2, 3, 0], [4, 4, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    ce, n = M.next_token_ce(lp, ids, mask)
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1), reduction="none")
    keep = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    assert n == 5 and ce == pytest.approx(float(ref[keep].sum()), rel=1e-6)
    agree, kl, m = M.lens_agreement_kl(lp, lp, mask)
    assert (agree, m) == (7.0, 7) and kl == pytest.approx(0.0, abs=1e-6)
    _, kl2, _ = M.lens_agreement_kl(lp, torch.log_softmax(logits * 2, -1), mask)
    assert kl2 > 0
