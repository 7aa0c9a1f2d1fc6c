"""``analyze(...)``: a base model, variants and datasets -> metrics.csv, results.json, plots and a report section.

Order of work: validate every argument (no file written), load data and models and check they are
comparable, then open the run directory. Extraction streams batches through all models together
(``capture.collect``), checkpointing the accumulators so ``resume=True`` continues; the metric phase
(``rows``) then works on the accumulators alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from midblock.analysis.capture import (
    TOKEN_STATS,
    CaptureSpec,
    ModelStats,
    collect,
    make_batches,
    reduce_across_processes,
)
from midblock.analysis.recommend import RecommendConfig, recommend_band
from midblock.analysis.rows import DEFAULT_METRICS, FAMILIES, pair_rows, per_model_rows
from midblock.errors import MidblockError
from midblock.io import RunDir, atomic_path, fresh_output_dir, provenance, read_json, write_csv, write_json

log = logging.getLogger(__name__)
CSV_COLUMNS = ["variant", "dataset", "layer", "depth", "metric", "value"]
FINGERPRINT = "fingerprint.json"


@dataclass
class AnalyzeConfig:
    """Settings of one analysis run (everything that changes the numbers is in the fingerprint)."""

    base: str = field(metadata={"help": "base model spec"})
    variants: list[str] = field(default_factory=list, metadata={"help": "variant model specs"})
    datasets: list[str] = field(default_factory=lambda: ["gsm8k"], metadata={"help": "gsm8k, arith or a .jsonl"})
    samples: int = field(default=200, metadata={"help": "samples per dataset"})
    max_length: int = field(default=128, metadata={"help": "tokens per sample (longer texts are truncated)"})
    layers: str = field(default="all", metadata={"help": "layer indices 0..L (0 = embedding output)"})
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS), metadata={"help": "families"})
    batch_size: int = field(default=8, metadata={"help": "samples per forward"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ..."})
    dtype: str = field(default="fp32", metadata={"help": "fp32, bf16 or fp16 model weights"})
    split: str = field(default="test", metadata={"help": "dataset split analysed"})
    padding_side: str = field(default="right", metadata={"help": "right or left (results do not depend on it)"})
    alpha: float = field(default=1.0, metadata={"help": "Renyi entropy order"})
    grad_batches: int = field(default=4, metadata={"help": "batches averaged for grad_norm"})
    seed: int = field(default=0, metadata={"help": "seed of random presets and data generation"})
    device_map: str | None = field(default=None, metadata={"help": "e.g. 'auto' to spread big models (accelerate)"})

    def __post_init__(self) -> None:
        if not self.variants and not self.base:
            raise MidblockError("analyze needs a base model")
        if self.samples < 1:
            raise MidblockError(f"--samples must be >= 1, got {self.samples}")
        if self.max_length < 2:
            raise MidblockError(f"--max-length must be >= 2, got {self.max_length}")
        if self.batch_size < 1:
            raise MidblockError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.padding_side not in ("left", "right"):
            raise MidblockError(f"padding side must be left or right, got {self.padding_side!r}")
        if self.dtype not in ("fp32", "float32", "bf16", "bfloat16", "fp16", "float16"):
            raise MidblockError(f"unknown dtype '{self.dtype}'", hint="use fp32, bf16 or fp16")
        if self.alpha <= 0:
            raise MidblockError(f"Renyi alpha must be > 0, got {self.alpha}")
        if not self.datasets:
            raise MidblockError("analyze needs at least one dataset", hint="--data gsm8k")
        self.metrics = parse_metrics(self.metrics)


def parse_metrics(metrics: str | list[str] | None) -> list[str]:
    """Metric families from a list or comma string; ``all`` = every family, ``default`` = the default set."""
    if metrics is None:
        return list(DEFAULT_METRICS)
    items = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    out: list[str] = []
    for m in items:
        if m == "all":
            out.extend(FAMILIES)
        elif m == "default":
            out.extend(DEFAULT_METRICS)
        elif m in FAMILIES:
            out.append(m)
        else:
            owner = next((f for f, names in FAMILIES.items() if m in names), None)
            hint = f"'{m}' is written by family '{owner}'" if owner else "choose from all, " + ", ".join(FAMILIES)
            raise MidblockError(f"unknown metric '{m}'", hint=hint)
    if not out:
        raise MidblockError("no metric selected", hint="--metrics all")
    return list(dict.fromkeys(out))


def _dataset_arg(ds: str) -> tuple[str, str | None, str]:
    """(task, data path or None, display name) of a --data value."""
    if ds in ("gsm8k", "arith"):
        return ds, None, ds
    p = Path(ds)
    if not p.exists():
        raise MidblockError(f"dataset '{ds}' is neither gsm8k, arith nor an existing .jsonl file")
    from midblock.data import resolve_task

    return resolve_task(None, ds), ds, p.stem


def _load_texts(ds: str, cfg: AnalyzeConfig, warnings: list[str]) -> tuple[str, list[str]]:
    from midblock.data import load_examples

    task, data, name = _dataset_arg(ds)
    split = cfg.split if task != "jsonl" else "test"
    exs = load_examples(task, split, data, limit=cfg.samples)
    if not exs:
        raise MidblockError(f"dataset '{ds}' has no samples", hint="check the file or split")
    if len(exs) < cfg.samples:
        warnings.append(f"dataset {name}: {len(exs)} samples available, {cfg.samples} asked; used {len(exs)}")
    return name, [e.text for e in exs]


def _tokenize(texts: list[str], tok, max_length: int) -> tuple[list[list[int]], int]:
    seqs, cut = [], 0
    for t in texts:
        ids = tok(t, add_special_tokens=True, verbose=False)["input_ids"]
        if len(ids) > max_length:
            cut += 1
            ids = ids[:max_length]
        seqs.append(ids)
    return seqs, cut


def _model_name(spec: str, taken: set[str]) -> str:
    name = Path(spec.rstrip("/")).name if Path(spec).exists() or "+" in spec else spec
    name = name.replace(",", "_") or "variant"
    if name == "base":
        name = "variant"
    out, k = name, 2
    while out in taken:
        out, k = f"{name}-{k}", k + 1
    taken.add(out)
    return out


def _check_compatible(base, btok, var, vtok, name: str) -> None:
    from midblock.models.introspect import _strip_peft, get_layout

    cb, cv = type(_strip_peft(base)).__name__, type(_strip_peft(var)).__name__
    if cb != cv:
        raise MidblockError(f"variant {name} is a {cv}, the base a {cb}", hint="compare models of one architecture")
    lb, lv = get_layout(base), get_layout(var)
    if lb.num_layers != lv.num_layers:
        raise MidblockError(f"variant {name} has {lv.num_layers} blocks, the base {lb.num_layers}")
    db, dv = lb.embedding.weight.shape[-1], lv.embedding.weight.shape[-1]
    if db != dv:
        raise MidblockError(f"variant {name} has hidden size {dv}, the base {db}")
    if btok.get_vocab() != vtok.get_vocab():
        raise MidblockError(f"variant {name} uses a different tokenizer from the base (vocabularies differ)")


def _model_identity(model) -> str:
    """A cheap content hash of a model's weights (sums and shapes), so a changed checkpoint is noticed."""
    h = hashlib.sha256()
    with torch.no_grad():
        for n, p in model.named_parameters():
            h.update(f"{n}{tuple(p.shape)}{float(p.detach().double().sum()):.10e}".encode())
    return h.hexdigest()[:16]


def _fingerprint(cfg: AnalyzeConfig, models: dict[str, Any], seqs: dict[str, list[list[int]]]) -> dict[str, Any]:
    data_hash = {k: hashlib.sha256(json.dumps(v).encode()).hexdigest()[:16] for k, v in seqs.items()}
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("device", "device_map")}
    fp = {"models": {k: _model_identity(m) for k, m in models.items()}, "data": data_hash, "settings": settings}
    fp["key"] = hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return fp


def _check_cache(out: Path, fp: dict[str, Any]) -> None:
    f = out / FINGERPRINT
    if not f.exists():
        return
    old = read_json(f)
    if old.get("key") == fp["key"]:
        return
    diff = [k for k in ("models", "data") if old.get(k) != fp.get(k)]
    changed = [k for k in fp["settings"] if old.get("settings", {}).get(k) != fp["settings"][k]]
    if changed:
        diff.append(f"settings ({', '.join(changed)})")
    raise MidblockError(
        f"{out} holds an analysis with different {', '.join(diff)}",
        hint="use another --out, or delete that directory to start over",
    )


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        from accelerate import PartialState

        PartialState()  # initialises the process group under `accelerate launch`
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _extract(models, seqs, name, cfg, spec, cache: Path, resume: bool, pad_id: int) -> dict[str, ModelStats]:
    """Stream one dataset through every model, checkpointing accumulators so a resumed run continues."""
    from tqdm.auto import tqdm

    rank, world = _dist()
    done, part = cache / f"{name}.r{rank}.pt", cache / f"{name}.r{rank}.partial.pt"
    start, stats = 0, None
    if resume and done.exists():
        stats = {k: ModelStats.from_state(v) for k, v in torch.load(done, weights_only=False).items()}
        return reduce_across_processes(stats)
    if resume and part.exists():
        ck = torch.load(part, weights_only=False)
        start, stats = ck["next_batch"], {k: ModelStats.from_state(v) for k, v in ck["stats"].items()}
        log.info("resuming %s at batch %d", name, start)
    n_batches = math.ceil(len(seqs) / cfg.batch_size)
    mine = [b for b in make_batches(seqs, cfg.batch_size, pad_id, cfg.padding_side, start=start)]
    mine = [b for i, b in enumerate(mine, start) if i % world == rank]
    bar = tqdm(total=n_batches, initial=start, desc=f"extract {name}", leave=False)

    def checkpoint(i: int, st: dict[str, ModelStats]) -> None:
        bar.update(world)
        if (i + 1) % 10 == 0:
            with atomic_path(part) as tmp:
                torch.save({"next_batch": start + (i + 1) * world, "stats": {k: v.state() for k, v in st.items()}}, tmp)

    stats = collect(models, mine, spec, stats, on_batch=checkpoint)
    bar.close()
    with atomic_path(done) as tmp:
        torch.save({k: v.state() for k, v in stats.items()}, tmp)
    part.unlink(missing_ok=True)
    return reduce_across_processes(stats)


def _grad_batches(seqs: list[list[int]], pad_id: int, cfg: AnalyzeConfig) -> list[dict[str, torch.Tensor]]:
    """The first few batches of the analysed texts, loss on every real token (the paper trains on whole texts)."""
    out = []
    for b in make_batches(seqs[: cfg.grad_batches * cfg.batch_size], cfg.batch_size, pad_id, sort_by_length=False):
        labels = torch.where(b.attention_mask.bool(), b.input_ids, torch.full_like(b.input_ids, -100))
        out.append(
            {
                "input_ids": b.input_ids,
                "attention_mask": b.attention_mask,
                "labels": labels,
                "position_ids": (b.attention_mask.cumsum(-1) - 1).clamp_min(0),
            }
        )
    return out


def analyze(
    base: str,
    variants: list[str] | tuple[str, ...] = (),
    datasets: list[str] | tuple[str, ...] = ("gsm8k",),
    samples: int = 200,
    max_length: int = 128,
    layers: str = "all",
    metrics: str | list[str] | None = None,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str = "fp32",
    out: str | os.PathLike | None = None,
    seed: int = 0,
    resume: bool = False,
    recommend: RecommendConfig | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Analyse where ``variants`` differ from ``base``, layer by layer; returns the results dict.

    Writes ``metrics.csv``, ``results.json``, ``plots/*.png`` and a report section into ``out``.
    ``options`` are further ``AnalyzeConfig`` fields (split, padding_side, alpha, grad_batches).
    """
    cfg = AnalyzeConfig(
        base=base,
        variants=list(variants),
        datasets=list(datasets),
        samples=samples,
        max_length=max_length,
        layers=layers,
        metrics=parse_metrics(metrics),
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        seed=seed,
        **options,
    )
    from midblock.layers import resolve_layers
    from midblock.models import load_model
    from midblock.models.introspect import get_layout
    from midblock.models.loading import parse_spec

    if out is None:
        raise MidblockError("analyze needs an output directory", hint="--out DIR")
    out = fresh_output_dir(out)
    for s in [cfg.base, *cfg.variants]:
        parse_spec(s)
    for ds in cfg.datasets:
        _dataset_arg(ds)
    rec_cfg = recommend or RecommendConfig()
    warnings: list[str] = []
    texts = dict(_load_texts(ds, cfg, warnings) for ds in cfg.datasets)
    if len(texts) != len(cfg.datasets):
        raise MidblockError("two --data values have the same name", hint="rename one of the files")

    load_kw = {"device_map": cfg.device_map} if cfg.device_map else {}
    base_model, tok = load_model(cfg.base, dtype=cfg.dtype, device=cfg.device, seed=seed, **load_kw)
    L = get_layout(base_model).num_layers
    layer_idx = resolve_layers(cfg.layers, L + 1)  # layer indices 0..L (0 = embedding output)
    models: dict[str, Any] = {"base": base_model}
    taken = {"base"}
    for vs in cfg.variants:
        vm, vt = load_model(vs, dtype=cfg.dtype, device=cfg.device, seed=seed, **load_kw)
        name = _model_name(vs, taken)
        _check_compatible(base_model, tok, vm, vt, name)
        models[name] = vm
    seqs, truncated = {}, {}
    for name, tx in texts.items():
        seqs[name], truncated[name] = _tokenize(tx, tok, cfg.max_length)
    fams = set(cfg.metrics)
    fp = _fingerprint(cfg, models, seqs)
    _check_cache(out, fp)  # before anything is written: a cache from other settings is never reused

    names = list(models)
    spec = CaptureSpec(
        layers=layer_idx,
        token_stats=tuple(
            s
            for s in TOKEN_STATS
            if (s.startswith("prompt") and "prompt_entropy" in fams)
            or (s == "token_norm" and "l2_norm" in fams)
            or s in fams
        ),
        pooled=bool(
            fams
            & {
                "dataset_entropy",
                "effective_rank",
                "l2_norm",
                "spectral",
                "cka",
                "cosine",
                "mean_shift",
                "change_intensity",
            }
        ),
        token_cka="cka_token" in fams and len(models) > 1,
        logit_lens="logit_lens" in fams,
        alpha=cfg.alpha,
    )
    rank, _ = _dist()
    # only the main process owns the run directory; other data-parallel ranks just contribute shards
    with RunDir(out) if rank == 0 else contextlib.nullcontext() as run:
        if rank == 0:
            write_json(out / FINGERPRINT, fp)
        cache = out / "cache"
        cache.mkdir(exist_ok=True)
        csv_rows: list[dict[str, Any]] = []

        def emit(variant: str, ds: str, rows) -> None:
            for layer, metric, value in rows:
                csv_rows.append(
                    {
                        "variant": variant,
                        "dataset": ds,
                        "layer": layer,
                        "depth": round(layer / L, 6),
                        "metric": metric,
                        "value": value,
                    }
                )

        weight_rows = _weight_rows(models, fams)
        for ds, sq in seqs.items():
            stats = _extract(models, sq, ds, cfg, spec, cache, resume, tok.pad_token_id)
            for nm in names:
                emit(nm, ds, per_model_rows(stats[nm], layer_idx, fams, cfg.alpha))
                if nm != "base":
                    emit(nm, ds, pair_rows(stats["base"], stats[nm], layer_idx, fams))
                    emit(nm, ds, [(k[0], k[1], v) for k, v in sorted(weight_rows.get(nm, {}).items())])
            if "grad_norm" in fams:
                g = _grad_cached(cache, ds, resume, base_model, _grad_batches(sq, tok.pad_token_id, cfg))
                emit("base", ds, [(k[0], k[1], v) for k, v in sorted(g.items())])
        band = _recommend(csv_rows, L, names, rec_cfg)
        if rank != 0:
            return {"recommended_band": band}
        for ds in seqs:
            if truncated[ds]:
                warnings.append(f"dataset {ds}: {truncated[ds]} samples truncated to {cfg.max_length} tokens")
        results = _write_outputs(out, cfg, csv_rows, band, warnings, names, L, layer_idx, seqs, fp)
        run.mark_completed()
    return results


def _grad_cached(cache: Path, ds: str, resume: bool, model, batches) -> dict:
    from midblock.analysis.weights import grad_norm

    f = cache / f"{ds}.grad.pt"
    if resume and f.exists():
        return torch.load(f, weights_only=False)
    from tqdm.auto import tqdm

    g = grad_norm(model, tqdm(batches, desc=f"grad_norm {ds}", leave=False))
    with atomic_path(f) as tmp:
        torch.save(g, tmp)
    return g


def _weight_rows(models: dict[str, Any], fams: set[str]) -> dict[str, dict]:
    from midblock.analysis.weights import is_lora_model, lora_delta, weight_delta

    out = {}
    for nm, m in models.items():
        if nm == "base":
            continue
        rows = {}
        if is_lora_model(m):
            if fams & {"lora_delta", "weight_delta"}:
                rows.update(lora_delta(m))
        elif "weight_delta" in fams:
            rows.update(weight_delta(models["base"], m))
        out[nm] = rows
    return out


def _recommend(rows: list[dict], L: int, names: list[str], cfg: RecommendConfig) -> dict:
    """Per-block signals (averaged over datasets) per variant, or the base's own profile, -> the band rule."""
    from collections import defaultdict

    acc: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    variant_mode = len(names) > 1
    for r in rows:
        v, layer, metric, who = r["value"], r["layer"], r["metric"], r["variant"]
        if not isinstance(v, (float, int)) or not math.isfinite(v) or not 1 <= layer <= L:
            continue
        b = layer - 1  # block b's output
        if variant_mode and who != "base":
            if metric == "cka":
                acc[who]["1-cka"][b].append(1.0 - v)
            elif metric in ("weight_delta_rel", "lora_delta_rel"):
                acc[who]["weight_delta_rel"][b].append(v)
            elif metric == "logit_kl":
                acc[who]["logit_kl"][b].append(v)
        elif not variant_mode and who == "base":
            if metric == "grad_norm_rel":
                acc[who]["grad_norm_rel"][b].append(v)
            elif metric == "cka_consecutive":
                acc[who]["1-cka_consecutive"][b].append(1.0 - v)
    profiles = {
        who: {k: [sum(d[b]) / len(d[b]) if d.get(b) else float("nan") for b in range(L)] for k, d in sig.items()}
        for who, sig in acc.items()
    }
    return recommend_band(profiles, L, cfg, mode="variant" if variant_mode else "base-only")


def _write_outputs(out, cfg, csv_rows, band, warnings, names, L, layer_idx, seqs, fp) -> dict[str, Any]:
    from midblock.analysis.report import analysis_section
    from midblock.reporting.plots import plot_profiles
    from midblock.reporting.report import add_section

    for r in csv_rows:
        r["value"] = float(r["value"])
    write_csv(out / "metrics.csv", csv_rows, CSV_COLUMNS)
    plots = plot_profiles(csv_rows, out / "plots", L, band["indices"], title=f"{cfg.base}:")
    results = provenance(asdict(cfg), cfg.seed)
    results.update(
        models=names,
        num_blocks=L,
        layers=layer_idx,
        datasets={k: len(v) for k, v in seqs.items()},
        fingerprint=fp["key"],
        warnings=warnings,
        recommended_band=band,
        plots=[f"plots/{p}" for p in plots],
        rows=len(csv_rows),
    )
    write_json(out / "results.json", results)
    add_section(out, analysis_section(results, csv_rows))
    for w in warnings:
        log.warning(w)
    return results
