"""Streaming capture: forward hooks on the decoder blocks, statistics accumulated batch by batch.

Layer index 0 is the input of block 0 (the embedding output, after any embedding scaling the model does);
index l >= 1 is the output of block l-1 itself, so the last index is the last block's output *before* the
final norm. Nothing keeps every layer of every sample: each hook turns a batch's states into

- pooled vectors (mean of real tokens), the only thing that grows with the sample count (N x D per layer);
- per-sample token statistics (prompt entropy, curvature, sparsity, token norm), summed with a count;
- for base-vs-variant token metrics, D x D moment sums (token-level CKA) and logit-lens sums, for which the
  base's real-token states of the *current batch* are held while the variants run the same batch.

Padding is excluded with ``torch.where`` (not a multiplication, which would let a NaN in a padded position
leak). Every accumulator is a sum or a keyed row set, so shards computed by different processes merge
exactly (``ModelStats.merge``; ``reduce_across_processes`` under ``torch.distributed``/``accelerate``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from midblock.analysis import metrics as M
from midblock.errors import MidblockError
from midblock.models.introspect import get_layout
from midblock.validation import check_number

if TYPE_CHECKING:
    from midblock.analysis.sequential import BasePair

TOKEN_STATS = ("prompt_entropy", "prompt_entropy_centered", "curvature", "sparsity", "token_norm")
DEFAULT_TOKEN_STATS = ("prompt_entropy", "curvature", "sparsity", "token_norm")
_F64 = torch.float64


@dataclass
class CaptureSpec:
    """What the hooks compute. ``layers`` are layer indices 0..L."""

    layers: list[int] = field(metadata={"help": "layer indices 0..L to hook"})
    token_stats: tuple[str, ...] = field(default=DEFAULT_TOKEN_STATS, metadata={"help": "per-sample statistics"})
    pooled: bool = field(default=True, metadata={"help": "keep pooled (mean real-token) rows per layer"})
    token_cka: bool = field(default=False, metadata={"help": "D x D moment sums for token-level CKA"})
    logit_lens: bool = field(default=False, metadata={"help": "final norm + LM head at every layer"})
    alpha: float = field(default=1.0, metadata={"help": "Renyi entropy order"})
    lens_chunk: int = field(default=1024, metadata={"help": "real tokens per LM-head call (bounds V-wide logits)"})

    def __post_init__(self) -> None:
        bad = [s for s in self.token_stats if s not in TOKEN_STATS]
        if bad:
            raise MidblockError(f"unknown token statistic '{bad[0]}'", hint="choose from " + ", ".join(TOKEN_STATS))
        if not self.layers:
            raise MidblockError("no layer selected for capture")
        check_number("Renyi alpha", self.alpha, low=0, low_open=True)
        if self.lens_chunk < 1:
            raise MidblockError(f"lens_chunk must be >= 1, got {self.lens_chunk}")


@dataclass
class Batch:
    """One batch: global sample indices (so shards and caches pair rows), ids and the real-token mask."""

    idx: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


@dataclass
class ModelStats:
    """Every accumulator of one model on one dataset; all fields are sums, counts or index-keyed rows."""

    sums: dict[str, float] = field(default_factory=dict)  # "metric@layer" -> sum over samples/positions
    counts: dict[str, float] = field(default_factory=dict)
    pooled: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    moments: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # token-CKA sums per layer

    def add(self, key: str, total: float, count: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(total)
        self.counts[key] = self.counts.get(key, 0.0) + float(count)

    def mean(self, key: str) -> float:
        c = self.counts.get(key, 0.0)
        return self.sums[key] / c if c else float("nan")

    def add_pooled(self, layer: int, idx: torch.Tensor, Z: torch.Tensor) -> None:
        self.pooled.setdefault(layer, []).append((idx.cpu(), Z.float().cpu()))

    def Z(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sample indices, N x D pooled rows) sorted by sample index."""
        chunks = self.pooled[layer]
        idx = torch.cat([c[0] for c in chunks])
        Z = torch.cat([c[1] for c in chunks])
        order = torch.argsort(idx)
        return idx[order], Z[order]

    def add_moments(self, layer: int, X: torch.Tensor, Y: torch.Tensor) -> None:
        new = M.token_moments(X, Y)
        cur = self.moments.get(layer)
        self.moments[layer] = new if cur is None else {k: cur[k] + new[k].to(cur[k].device) for k in cur}

    def merge(self, other: ModelStats) -> ModelStats:
        """Combine two shards (different samples) into one; exact because everything is a sum or keyed."""
        out = ModelStats(dict(self.sums), dict(self.counts), {k: list(v) for k, v in self.pooled.items()})
        for k in other.sums:
            out.add(k, other.sums[k], other.counts[k])
        for layer, chunks in other.pooled.items():
            out.pooled.setdefault(layer, []).extend(chunks)
        out.moments = {k: dict(v) for k, v in self.moments.items()}
        for layer, m in other.moments.items():
            cur = out.moments.get(layer)
            out.moments[layer] = dict(m) if cur is None else {k: cur[k] + m[k] for k in cur}
        return out

    def compact(self) -> ModelStats:
        """One pooled chunk per layer (smaller checkpoints)."""
        for layer in list(self.pooled):
            idx, Z = self.Z(layer)
            self.pooled[layer] = [(idx, Z)]
        return self

    def state(self) -> dict[str, Any]:
        self.compact()
        return {"sums": self.sums, "counts": self.counts, "pooled": self.pooled, "moments": self.moments}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> ModelStats:
        return cls(s["sums"], s["counts"], s["pooled"], s["moments"])


def reduce_across_processes(stats: dict[str, ModelStats]) -> dict[str, ModelStats]:
    """Merge every process's shard under ``torch.distributed`` (e.g. ``accelerate launch``); no-op otherwise."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {k: v.state() for k, v in stats.items()})
    out: dict[str, ModelStats] = {}
    for shard in gathered:
        for name, st in shard.items():
            s = ModelStats.from_state(st)
            out[name] = s if name not in out else out[name].merge(s)
    return out


class _Stop(Exception):
    """Raised by the last needed hook: the rest of the forward (and the LM head) is not needed."""


class Tap:
    """Hooks on one model that hand each selected layer's states to ``callback(layer, hidden)``."""

    def __init__(self, model: torch.nn.Module, layers: list[int], callback, stop_early: bool = True):
        self.layout = get_layout(model)
        L = self.layout.num_layers
        bad = [i for i in layers if i < 0 or i > L]
        if bad:
            raise MidblockError(f"layer index {bad[0]} does not exist: the model has layer indices 0..{L}")
        self.layers = sorted(set(layers))
        self.callback = callback
        self.stop_early = stop_early
        self.handles: list[Any] = []
        last = self.layers[-1]
        if 0 in self.layers:
            self.handles.append(
                self.layout.blocks[0].register_forward_pre_hook(self._pre_hook(last == 0), with_kwargs=True)
            )
        for layer in self.layers:
            if layer >= 1:
                hook = self._post_hook(layer, layer == last)
                self.handles.append(self.layout.blocks[layer - 1].register_forward_hook(hook))

    def _pre_hook(self, is_last: bool):
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            h = args[0] if args else kwargs["hidden_states"]
            self.callback(0, h)
            if is_last and self.stop_early:
                raise _Stop

        return hook

    def _post_hook(self, layer: int, is_last: bool):
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            h = output[0] if isinstance(output, (tuple, list)) else output
            self.callback(layer, h)
            if is_last and self.stop_early:
                raise _Stop

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def position_ids_for(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded sample sees the positions it has alone."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


@torch.no_grad()
def forward(model: torch.nn.Module, batch: Batch, device: torch.device | str | None = None) -> None:
    """Run the model on a batch (hooks do the work); stops at the last hooked block."""
    dev = device or next(model.parameters()).device
    mask = batch.attention_mask.to(dev)
    try:
        model(
            input_ids=batch.input_ids.to(dev),
            attention_mask=mask,
            position_ids=position_ids_for(mask),
            use_cache=False,
        )
    except _Stop:
        pass


def _masked(h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(m.unsqueeze(-1), h, torch.zeros((), dtype=h.dtype, device=h.device))


def _prompt_entropy_batch(hz: torch.Tensor, m: torch.Tensor, n: torch.Tensor, alpha: float, center: bool):
    """Per-sample normalised prompt entropy of a padded batch (padded rows are zero, adding zero eigenvalues).

    The Gram matrices and their eigenvalues are float32 (this is the hot spot of the hooks: one batched
    eigensolve per layer); the entropy itself is summed in float64.
    """
    x = hz.float()
    if center:
        mu = x.sum(1, keepdim=True) / n.view(-1, 1, 1)
        x = _masked(x - mu, m)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    T, D = x.shape[1], x.shape[2]
    G = x @ x.transpose(1, 2) if T <= D else x.transpose(1, 2) @ x
    # The round-off cutoff scales with the size of each sample's own Gram matrix, min(real tokens, D), as
    # in the float64 reference (metrics.prompt_entropy), not with the padded size: with G.shape[-1] the
    # same sample lost more small eigenvalues the more the batch was padded (0.001906 alone, 0 at 256).
    k = torch.minimum(n, torch.full_like(n, D)).to(_F64)
    ev = M._clean(torch.linalg.eigvalsh(G), k.to(G.dtype).view(-1, 1))
    H = M.entropy_from_eigenvalues(ev, alpha)
    ok = k > 1
    return torch.where(ok, H / k.clamp_min(2).log(), torch.zeros_like(H)), ok


def _curvature_batch(hz: torch.Tensor, m: torch.Tensor):
    x = hz.to(_F64)
    v = x[:, 1:] - x[:, :-1]
    vm = m[:, 1:] & m[:, :-1]
    a, b = v[:, :-1], v[:, 1:]
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    ok = vm[:, :-1] & vm[:, 1:] & (na > 0) & (nb > 0)
    cos = ((a * b).sum(-1) / (na * nb).clamp_min(1e-300)).clamp(-1.0, 1.0)
    ang = torch.where(ok, torch.arccos(cos), torch.zeros_like(cos))
    cnt = ok.sum(1)
    per = ang.sum(1) / cnt.clamp_min(1) / math.pi
    return per, cnt > 0


class StatsCollector:
    """The callback of one model's ``Tap`` for one batch at a time; fills a ``ModelStats``.

    ``role='base'`` keeps the batch's real-token states (when paired token metrics are on) in ``self.keep``
    for the variants; a variant collector gets the base's kept states and lens modules via ``pair``.
    """

    def __init__(self, stats: ModelStats, spec: CaptureSpec, model: torch.nn.Module, role: str):
        self.stats, self.spec, self.role = stats, spec, role
        lay = get_layout(model)
        self.norm, self.head = lay.final_norm, lay.lm_head
        self.keep: dict[int, torch.Tensor] = {}
        self.pair: StatsCollector | None = None
        self.batch: Batch | None = None

    def start(self, batch: Batch, mask: torch.Tensor, pair: StatsCollector | None = None) -> None:
        self.batch, self.pair = batch, pair
        self.m = mask.bool()
        self.n = self.m.sum(1)
        self.keep = {}

    def __call__(self, layer: int, h: torch.Tensor) -> None:
        sp, st, m = self.spec, self.stats, self.m.to(h.device)
        if layer not in sp.layers:
            return
        h = h.detach().float()
        self._check_finite(layer, h, m)
        hz = _masked(h, m)
        n = self.n.to(h.device)
        names = sp.token_stats
        # one float64 copy shared by the float64 statistics (pooled rows, curvature, token norms)
        h64 = hz.to(_F64) if sp.pooled or "curvature" in names or "token_norm" in names else None
        if sp.pooled:
            st.add_pooled(layer, self.batch.idx, h64.sum(1) / n.unsqueeze(-1))
        for center in (False, True):
            name = "prompt_entropy_centered" if center else "prompt_entropy"
            if name in names:
                val, ok = _prompt_entropy_batch(hz, m, n, sp.alpha, center)
                st.add(f"{name}@{layer}", float(val[ok].sum()), int(ok.sum()))
        if "curvature" in names:
            val, ok = _curvature_batch(h64, m)
            st.add(f"curvature@{layer}", float(val[ok].sum()), int(ok.sum()))
        if "sparsity" in names:
            a = hz.abs()
            mx = a.amax(dim=(1, 2), keepdim=True)
            small = ((a < 0.01 * mx) & m.unsqueeze(-1)).sum(dim=(1, 2)).to(_F64)
            st.add(f"sparsity@{layer}", float((small / (n * h.shape[-1])).sum()), h.shape[0])
        if "token_norm" in names:
            rn = h64.norm(dim=-1).sum(1) / n
            st.add(f"token_norm@{layer}", float(rn.sum()), h.shape[0])
        if sp.token_cka or sp.logit_lens:
            real = h[m]  # (real tokens, D), same order in base and variants
            if self.role == "base":
                self.keep[layer] = real
            elif self.pair is not None and sp.token_cka:
                st.add_moments(layer, self.pair.keep[layer].to(real.device), real)
        if sp.logit_lens:
            self._lens(layer, h, m)

    def _lens(self, layer: int, h: torch.Tensor, m: torch.Tensor) -> None:
        ids = self.batch.input_ids.to(h.device)
        tgt = torch.full_like(ids, -1)
        valid = m[:, :-1] & m[:, 1:]
        tgt[:, :-1] = torch.where(valid, ids[:, 1:], torch.full_like(ids[:, 1:], -1))
        tgt = tgt[m]
        x = h[m]
        base = self.pair.keep[layer] if (self.role != "base" and self.pair is not None) else None
        if base is not None:  # the base's lens modules may sit on another device (device_map, a spilled base)
            base = base.to(self.pair._device())
        ce = agree = kl = 0.0
        for s in range(0, x.shape[0], self.spec.lens_chunk):
            sl = slice(s, s + self.spec.lens_chunk)
            lp = M.logit_lens_logprobs(x[sl].to(self._dtype()), self.norm, self.head)
            t = tgt[sl]
            ok = t >= 0
            ce -= float(lp[ok].gather(-1, t[ok].unsqueeze(-1)).to(_F64).sum())
            if base is not None:
                lb = M.logit_lens_logprobs(base[sl].to(self.pair._dtype()), self.pair.norm, self.pair.head)
                every = torch.ones(lp.shape[0], dtype=torch.bool, device=lp.device)
                a, k, _ = M.lens_agreement_kl(lb.to(lp.device), lp, every)
                agree, kl = agree + a, kl + k
        self.stats.add(f"logit_ce@{layer}", ce, int((tgt >= 0).sum()))
        if base is not None:
            self.stats.add(f"logit_top1_agreement@{layer}", agree, x.shape[0])
            self.stats.add(f"logit_kl@{layer}", kl, x.shape[0])

    def _dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype

    def _device(self) -> torch.device:
        return next(self.head.parameters()).device

    def _check_finite(self, layer: int, h: torch.Tensor, m: torch.Tensor) -> None:
        bad_rows = ~torch.isfinite(h).all(-1) & m
        if bool(bad_rows.any()):
            b = int(bad_rows.any(-1).nonzero()[0, 0])
            sample = int(self.batch.idx[b])
            raise MidblockError(
                f"non-finite hidden states (NaN/inf) at layer {layer} for sample {sample} ({self.role})",
                hint="try --dtype fp32, or check the model weights",
            )


def collect(
    models: dict[str, torch.nn.Module],
    batches: Iterable[Batch],
    spec: CaptureSpec,
    stats: dict[str, ModelStats] | None = None,
    stop_early: bool = True,
    on_batch: Callable[[int, dict[str, ModelStats]], None] | None = None,
    paired: Callable[[Batch], StatsCollector | BasePair] | None = None,
    on_keep: Callable[[Batch, dict[int, torch.Tensor]], None] | None = None,
) -> dict[str, ModelStats]:
    """Feed every batch to every model (the first is the base), accumulating ``ModelStats`` per model.

    ``on_batch(i, stats)`` is called after each batch (used for checkpoints and progress).
    One model at a time (``midblock.analysis.sequential``): on the base's own pass, ``on_keep(batch, keep)``
    receives the base's kept real-token states of each batch (to spill them); on a variant's pass,
    ``paired(batch)`` returns the stand-in for the base's collector on that batch, and every model in
    ``models`` is a variant paired with it.
    """
    names = list(models)
    stats = stats if stats is not None else {}
    for nm in names:
        stats.setdefault(nm, ModelStats())
    roles = {nm: "base" if i == 0 and paired is None else "variant" for i, nm in enumerate(names)}
    cols = {nm: StatsCollector(stats[nm], spec, models[nm], roles[nm]) for nm in names}
    taps = [Tap(models[nm], spec.layers, cols[nm], stop_early) for nm in names]
    try:
        for i, batch in enumerate(batches):
            pair = paired(batch) if paired is not None else cols[names[0]]
            for nm in names:
                cols[nm].start(batch, batch.attention_mask, pair=pair if roles[nm] == "variant" else None)
                forward(models[nm], batch)
            if on_keep is not None and roles[names[0]] == "base":
                on_keep(batch, cols[names[0]].keep)
            cols[names[0]].keep = {}
            if on_batch is not None:
                on_batch(i, stats)
    finally:
        for t in taps:
            t.remove()
    return stats


def make_batches(
    seqs: list[list[int]],
    batch_size: int,
    pad_id: int,
    padding_side: str = "right",
    sort_by_length: bool = True,
    start: int = 0,
) -> Iterator[Batch]:
    """Batches of token id lists with global indices; length-sorted to waste little compute on padding."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i])) if sort_by_length else list(range(len(seqs)))
    for b in range(start, math.ceil(len(order) / batch_size)):
        ids = order[b * batch_size : (b + 1) * batch_size]
        T = max(len(seqs[i]) for i in ids)
        x = torch.full((len(ids), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), T), dtype=torch.long)
        for r, i in enumerate(ids):
            n = len(seqs[i])
            sl = slice(T - n, T) if padding_side == "left" else slice(0, n)
            x[r, sl] = torch.tensor(seqs[i])
            mask[r, sl] = 1
        yield Batch(torch.tensor(ids), x, mask)
