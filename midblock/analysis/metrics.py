"""Layer-wise metrics as pure functions on tensors (definitions, and every deliberate difference from the paper:
``docs/metrics.md``).

Conventions: ``h`` is one sample's T x D hidden states restricted to its real tokens; ``Z`` is the N x D
matrix of pooled (mean over real tokens) vectors. Everything is computed in float64 whatever the input
dtype. Spectra come from ``eigvalsh`` on the smaller of the two Gram forms (``A A^T`` or ``A^T A``), never
from an SVD with singular vectors. Nothing here does I/O or touches a model, except the logit-lens helpers,
which take the final norm and LM head as plain callables.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

NORMALIZATIONS = ("maxEntropy", "logN", "logD", "raw")
_F64 = torch.float64


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(_F64)


# --------------------------------------------------------------------------- spectra and entropy


def _clean(ev: torch.Tensor, size: int | torch.Tensor) -> torch.Tensor:
    """Zero eigenvalues below the solver's round-off (size * eps * largest), as a numerical rank does.

    Without this, round-off eigenvalues of ~1e-16 give a rank-one matrix an entropy of ~1e-8 for alpha < 1.
    ``size`` is the matrix's real size: a tensor (one per matrix, shaped to broadcast against ``ev``) for
    a batch of zero-padded matrices, so that padding does not raise the cutoff.
    """
    ev = ev.clamp_min(0.0)
    tol = size * torch.finfo(ev.dtype).eps * ev.amax(-1, keepdim=True)
    return torch.where(ev > tol, ev, torch.zeros_like(ev))


def gram_eigenvalues(A: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (descending, clamped at 0) of ``A^T A``, computed on the smaller Gram form.

    ``A A^T`` (n x n) and ``A^T A`` (d x d) share their non-zero eigenvalues, the squared singular values
    of ``A``; the smaller matrix is the cheap one to decompose.
    """
    A = _f64(A)
    n, d = A.shape[-2], A.shape[-1]
    G = A @ A.transpose(-1, -2) if n <= d else A.transpose(-1, -2) @ A
    ev = _clean(torch.linalg.eigvalsh(G), G.shape[-1])
    return ev.flip(-1)


def singular_values(A: torch.Tensor) -> torch.Tensor:
    """The min(n, d) singular values of ``A`` (descending) via the smaller Gram form."""
    return gram_eigenvalues(A).sqrt()


def entropy_from_eigenvalues(ev: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Renyi entropy (natural log) of the distribution ``p = ev / sum(ev)`` (last dim); 0 for a zero matrix."""
    ev = _f64(ev).clamp_min(0.0)
    total = ev.sum(-1, keepdim=True)
    p = torch.where(total > 0, ev / total.clamp_min(1e-300), torch.zeros_like(ev))
    if alpha == 1.0:
        # 0 log 0 = 0
        return -(torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))).sum(-1)
    if alpha <= 0:
        raise ValueError(f"Renyi alpha must be > 0, got {alpha}")
    s = (torch.where(p > 0, p.clamp_min(1e-300) ** alpha, torch.zeros_like(p))).sum(-1)
    return torch.where(s > 0, s.clamp_min(1e-300).log() / (1.0 - alpha), torch.zeros_like(s))


def entropy_normalizer(n: int, d: int, normalization: str = "maxEntropy") -> float:
    """The divisor of each normalisation option (``raw`` -> 1)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}")
    if normalization == "raw":
        return 1.0
    m = {"maxEntropy": min(n, d), "logN": n, "logD": d}[normalization]
    return math.log(m) if m > 1 else float("nan")


def renyi_entropy(K: torch.Tensor, alpha: float = 1.0, normalization: str = "raw", dim: int | None = None) -> float:
    """Matrix-based Renyi entropy of a PSD matrix ``K`` (n x n).

    ``dim`` is the feature dimension D behind ``K`` (for ``maxEntropy``/``logD``); defaults to n.
    """
    n = K.shape[0]
    ev = _clean(torch.linalg.eigvalsh(_f64(K)), n)
    h = float(entropy_from_eigenvalues(ev, alpha))
    return h / entropy_normalizer(n, dim or n, normalization)


def _unit_rows(A: torch.Tensor) -> torch.Tensor:
    A = _f64(A)
    return A / A.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def prompt_entropy(
    h: torch.Tensor, alpha: float = 1.0, center: bool = False, normalization: str = "maxEntropy"
) -> float:
    """One sample's token-level entropy: rows L2-normalised, K = h h^T (T x T), normalised by log(min(T, D)).

    ``center=True`` subtracts the mean token first (Skean et al. 2025). NaN for a one-token sample
    (the normaliser log 1 is 0): callers skip it.
    """
    h = _f64(h)
    if center:
        h = h - h.mean(0, keepdim=True)
    T, D = h.shape
    ev = gram_eigenvalues(_unit_rows(h))
    return float(entropy_from_eigenvalues(ev, alpha)) / entropy_normalizer(T, D, normalization)


def dataset_entropy(Z: torch.Tensor, alpha: float = 1.0, normalization: str = "maxEntropy") -> float:
    """Entropy of the pooled vectors: rows of Z L2-normalised, K = Z Z^T (N x N), normalised by log(min(N, D))."""
    N, D = Z.shape
    ev = gram_eigenvalues(_unit_rows(Z))
    return float(entropy_from_eigenvalues(ev, alpha)) / entropy_normalizer(N, D, normalization)


def effective_rank(Z: torch.Tensor, variant: str = "energy", normalize: bool = True) -> float:
    """exp(Shannon entropy of the singular-value distribution) of raw Z, divided by min(N, D) if ``normalize``.

    ``variant='energy'`` (the paper's code): p = s^2 / sum s^2. ``variant='rankme'`` (Garrido et al. 2023):
    p = s / sum s. They are reported under different names (``effective_rank`` and ``rankme``).
    """
    ev = gram_eigenvalues(Z)
    if variant == "energy":
        w = ev
    elif variant == "rankme":
        w = ev.sqrt()
    else:
        raise ValueError(f"effective_rank variant must be 'energy' or 'rankme', got {variant!r}")
    er = math.exp(float(entropy_from_eigenvalues(w, 1.0)))
    return er / min(Z.shape) if normalize else er


def spectral(Z: torch.Tensor, rel_threshold: float = 0.01) -> dict[str, float]:
    """Largest singular value, condition number s_max / s_min over min(N, D) values, rank deficiency.

    The condition number comes from singular values computed directly (``svdvals``, no vectors): through
    the Gram form a singular value below sqrt(size * eps) * s_max (about 1e-7 s_max) is already round-off,
    so every condition number above ~1e7 read as inf. Directly, s_min is resolved down to ~eps * s_max;
    it is inf only when s_min is below the numerical-rank cutoff max(N, D) * eps * s_max (rank deficient).
    """
    s = singular_values(Z)
    k = s.numel()
    smax = float(s[0])
    sv = torch.linalg.svdvals(_f64(Z))  # min(N, D) values, descending
    smin, cutoff = float(sv[-1]), max(Z.shape[-2], Z.shape[-1]) * torch.finfo(_F64).eps * float(sv[0])
    cond = float(sv[0]) / smin if smin > cutoff else float("inf")
    deficiency = 1.0 - int((s > rel_threshold * smax).sum()) / k if smax > 0 else 1.0
    return {"s_max": smax, "condition_number": cond, "rank_deficiency": deficiency}


# --------------------------------------------------------------------------- per-sample token statistics


def curvature(h: torch.Tensor) -> float:
    """Mean angle between consecutive token steps, divided by pi; NaN when T < 3 (callers skip it).

    v_t = h_{t+1} - h_t; angle_t = arccos(cos(v_t, v_{t+1})) with cos clamped to [-1, 1]. A step of zero
    length has no direction and is left out.
    """
    h = _f64(h)
    if h.shape[0] < 3:
        return float("nan")
    v = h[1:] - h[:-1]
    a, b = v[:-1], v[1:]
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    ok = (na > 0) & (nb > 0)
    if not bool(ok.any()):
        return float("nan")
    cos = ((a * b).sum(-1)[ok] / (na[ok] * nb[ok])).clamp(-1.0, 1.0)
    return float(torch.arccos(cos).mean() / math.pi)


def sparsity(h: torch.Tensor, rel_threshold: float = 0.01) -> float:
    """Fraction of entries with |h| < rel_threshold * max|h| over this sample's real tokens."""
    a = _f64(h).abs()
    return float((a < rel_threshold * a.max()).to(_F64).mean())


def token_norm(h: torch.Tensor) -> float:
    """Mean L2 norm of the sample's token rows."""
    return float(_f64(h).norm(dim=-1).mean())


def l2_norm(Z: torch.Tensor) -> float:
    """Mean L2 norm of the pooled vectors."""
    return float(_f64(Z).norm(dim=-1).mean())


# --------------------------------------------------------------------------- base vs variant


def _hsic_unbiased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Song et al. (2012) unbiased HSIC of two N x N Gram matrices (N > 3)."""
    n = K.shape[0]
    K = K.clone()
    L = L.clone()
    K.fill_diagonal_(0.0)
    L.fill_diagonal_(0.0)
    k1, l1 = K.sum(0), L.sum(0)
    term = (K * L).sum() + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 * (k1 @ l1) / (n - 2)
    return term / (n * (n - 3))


def cka(X: torch.Tensor, Y: torch.Tensor, unbiased: bool = False, form: str = "auto") -> float:
    """Linear CKA of column-centred X and Y (rows paired): ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F).

    ``form`` ``'auto'`` picks the smaller of the N x N (``'gram'``) and D x D (``'feature'``) forms; both
    give the same number. ``unbiased=True`` uses the unbiased HSIC estimator (Gram form, N > 3).
    """
    X, Y = _f64(X), _f64(Y)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"CKA needs paired rows, got {X.shape[0]} and {Y.shape[0]}")
    n = X.shape[0]
    if unbiased:
        if n <= 3:
            raise ValueError("unbiased CKA needs more than 3 samples")
        K, L = X @ X.T, Y @ Y.T
        hxy, hxx, hyy = _hsic_unbiased(K, L), _hsic_unbiased(K, K), _hsic_unbiased(L, L)
        den = (hxx * hyy).clamp_min(0).sqrt()
        return float(hxy / den) if den > 0 else float("nan")
    X = X - X.mean(0, keepdim=True)
    Y = Y - Y.mean(0, keepdim=True)
    if form == "auto":
        form = "gram" if n <= max(X.shape[1], Y.shape[1]) else "feature"
    if form == "gram":
        K, L = X @ X.T, Y @ Y.T
        num, den = (K * L).sum(), K.norm() * L.norm()
    elif form == "feature":
        num = (Y.T @ X).pow(2).sum()
        den = (X.T @ X).norm() * (Y.T @ Y).norm()
    else:
        raise ValueError(f"form must be 'auto', 'gram' or 'feature', got {form!r}")
    return float(num / den) if den > 0 else float("nan")


def cka_from_moments(
    sxy: torch.Tensor, sxx: torch.Tensor, syy: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, n: int
) -> float:
    """Linear CKA from streamed sums: X^T Y, X^T X, Y^T Y (D x D), column sums and the row count.

    Centring is applied afterwards (X_c^T Y_c = X^T Y - sx sy^T / n), so token rows never need keeping.
    """
    sx, sy = _f64(sx), _f64(sy)
    cxy = _f64(sxy) - torch.outer(sx, sy) / n
    cxx = _f64(sxx) - torch.outer(sx, sx) / n
    cyy = _f64(syy) - torch.outer(sy, sy) / n
    den = cxx.norm() * cyy.norm()
    return float(cxy.pow(2).sum() / den) if den > 0 else float("nan")


# Streaming token-level CKA keeps these sums over paired rows (x_i, y_i); all are additive, so batches and
# data-parallel shards merge by addition. The D x D ones serve both estimators; the D-vectors and scalars
# are what the unbiased HSIC needs on top (O(n D) per batch, against O(n D^2) for the D x D products).
MOMENT_KEYS = ("sxy", "sxx", "syy", "sx", "sy", "n", "x_y2", "y_x2", "x_x2", "y_y2", "q_xy", "q_xx", "q_yy")
UNBIASED_KEYS = ("x_y2", "y_x2", "x_x2", "y_y2", "q_xy", "q_xx", "q_yy")


def token_moments(X: torch.Tensor, Y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The float64 moment sums of paired rows X (n x D) and Y (n x E), uncentred (see ``MOMENT_KEYS``).

    ``x_y2`` = sum_i x_i |y_i|^2, ``q_xy`` = sum_i |x_i|^2 |y_i|^2, and so on.
    """
    X, Y = _f64(X), _f64(Y)
    nx, ny = X.pow(2).sum(-1), Y.pow(2).sum(-1)
    return {
        "sxy": X.T @ Y,
        "sxx": X.T @ X,
        "syy": Y.T @ Y,
        "sx": X.sum(0),
        "sy": Y.sum(0),
        "n": torch.tensor(float(X.shape[0]), dtype=_F64, device=X.device),
        "x_y2": ny @ X,
        "y_x2": nx @ Y,
        "x_x2": nx @ X,
        "y_y2": ny @ Y,
        "q_xy": nx @ ny,
        "q_xx": nx @ nx,
        "q_yy": ny @ ny,
    }


def _hsic_u(tr: torch.Tensor, k1: torch.Tensor, l1: torch.Tensor, kl1: torch.Tensor, n: float) -> torch.Tensor:
    """Song et al.'s unbiased HSIC from tr(K~L~), 1^T K~ 1, 1^T L~ 1 and 1^T K~ L~ 1 (K~ = K, zero diagonal)."""
    return (tr + k1 * l1 / ((n - 1) * (n - 2)) - 2.0 * kl1 / (n - 2)) / (n * (n - 3))


def cka_unbiased_from_moments(m: dict[str, torch.Tensor]) -> float:
    """Unbiased-HSIC linear CKA of token rows from the streamed sums of ``token_moments`` (no rows kept).

    With K = X X^T and K~ its off-diagonal part (rows x_i uncentred: the estimator does its own centring),
    tr(K~L~) = ||X^T Y||_F^2 - sum_i |x_i|^2 |y_i|^2, 1^T K~ 1 = |s_x|^2 - sum_i |x_i|^2, and with
    a_i = x_i.s_x - |x_i|^2, b_i = y_i.s_y - |y_i|^2:
    1^T K~ L~ 1 = sum_i a_i b_i = s_x^T (X^T Y) s_y - s_x.(sum_i x_i |y_i|^2) - s_y.(sum_i y_i |x_i|^2)
    + sum_i |x_i|^2 |y_i|^2. Equals ``cka(X, Y, unbiased=True)`` (Gram form) to round-off; needs n > 3.
    """
    g = {k: _f64(m[k]) for k in MOMENT_KEYS}
    n = float(g["n"])
    if n <= 3:
        return float("nan")
    sx, sy, sxy, sxx, syy = g["sx"], g["sy"], g["sxy"], g["sxx"], g["syy"]
    k1 = sx @ sx - sxx.diagonal().sum()
    l1 = sy @ sy - syy.diagonal().sum()
    hxy = _hsic_u(sxy.pow(2).sum() - g["q_xy"], k1, l1, sx @ sxy @ sy - sx @ g["x_y2"] - sy @ g["y_x2"] + g["q_xy"], n)
    hxx = _hsic_u(sxx.pow(2).sum() - g["q_xx"], k1, k1, sx @ sxx @ sx - 2.0 * sx @ g["x_x2"] + g["q_xx"], n)
    hyy = _hsic_u(syy.pow(2).sum() - g["q_yy"], l1, l1, sy @ syy @ sy - 2.0 * sy @ g["y_y2"] + g["q_yy"], n)
    den = (hxx * hyy).clamp_min(0).sqrt()
    return float(hxy / den) if den > 0 else float("nan")


def cosine(Zb: torch.Tensor, Zv: torch.Tensor) -> float:
    """Mean over samples of cos(z_base_i, z_var_i)."""
    Zb, Zv = _f64(Zb), _f64(Zv)
    den = (Zb.norm(dim=-1) * Zv.norm(dim=-1)).clamp_min(1e-300)
    return float(((Zb * Zv).sum(-1) / den).mean())


def mean_shift(Zb: torch.Tensor, Zv: torch.Tensor) -> dict[str, float]:
    """||mean(Z_var) - mean(Z_base)||, absolute and relative to ||mean(Z_base)||."""
    mb, mv = _f64(Zb).mean(0), _f64(Zv).mean(0)
    d = float((mv - mb).norm())
    nb = float(mb.norm())
    return {"mean_shift": d, "mean_shift_rel": d / nb if nb > 0 else float("nan")}


def change_intensity(Zb: torch.Tensor, Zv: torch.Tensor) -> float:
    """Mean over samples of ||z_var_i - z_base_i||."""
    return float((_f64(Zv) - _f64(Zb)).norm(dim=-1).mean())


# --------------------------------------------------------------------------- logit lens


def logit_lens_logprobs(
    h: torch.Tensor, final_norm: Callable[[torch.Tensor], torch.Tensor] | None, lm_head: Callable
) -> torch.Tensor:
    """Log-probabilities (float32 or wider) of a layer's states read through the final norm (once) and head."""
    x = final_norm(h) if final_norm is not None else h
    return torch.log_softmax(lm_head(x).float(), dim=-1)


def next_token_ce(logp: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy over positions t whose token t and t+1 are both real, and their count.

    ``logp``: B x T x V log-probabilities; ``ids``/``mask``: B x T.
    """
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    lp = logp[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return float(-lp[valid].to(_F64).sum()), int(valid.sum())


def lens_agreement_kl(logp_base: torch.Tensor, logp_var: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, int]:
    """Summed top-1 agreement and KL(base || variant) over real positions, and the position count."""
    m = mask.bool()
    pb, pv = logp_base[m], logp_var[m]
    agree = (pb.argmax(-1) == pv.argmax(-1)).to(_F64).sum()
    kl = (pb.exp() * (pb - pv)).sum(-1).to(_F64).sum()
    return float(agree), float(kl), int(m.sum())


# --------------------------------------------------------------------------- weight space


def lora_delta_sq(A: torch.Tensor, B: torch.Tensor, scale: float) -> float:
    """||scale * B A||_F^2 = scale^2 tr((B^T B)(A A^T)) without forming the out x in update.

    ``A`` is r x in (PEFT's ``lora_A.weight``), ``B`` out x r (``lora_B.weight``).
    """
    A, B = _f64(A), _f64(B)
    return float(scale**2 * ((B.T @ B) * (A @ A.T)).sum())
