"""``analyze(...)``: a base model, variants and datasets -> metrics.csv, results.json, plots and a report section.

Order of work: validate every argument (no file written), load data and models and check they are
comparable, then open the run directory. Extraction streams batches through all models together
(``capture.collect``, "lockstep"), or with ``sequential=True`` through one model at a time
(``midblock.analysis.sequential``: the base first, spilling what the pairs need, then each variant),
checkpointing the accumulators so ``resume=True`` continues; the metric phase (``rows``) then works on the
accumulators alone. Under ``torchrun``/``accelerate launch`` the batches are sharded over processes, the
accumulators reduced, and only rank 0 writes outputs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from midblock.analysis import sequential as S
from midblock.analysis.capture import (
    TOKEN_STATS,
    CaptureSpec,
    ModelStats,
    collect,
    make_batches,
    reduce_across_processes,
)
from midblock.analysis.config import FAMILIES, AnalyzeConfig, parse_metrics  # noqa: F401 (re-exported)
from midblock.analysis.inputs import (
    FINGERPRINT,
    check_cache,
    dataset_arg,
    fingerprint,
    load_models,
    load_texts,
    model_identity,
    tokenize,
)
from midblock.analysis.recommend import RecommendConfig, recommend_band
from midblock.analysis.regions import CHANGE_METRICS
from midblock.analysis.report import analysis_section
from midblock.analysis.rows import pair_rows, per_model_rows
from midblock.analysis.sequential import remove_spill
from midblock.analysis.weights import grad_norm, is_lora_model, lora_delta, weight_delta
from midblock.errors import MidblockError
from midblock.io import RunDir, atomic_path, fresh_output_dir, provenance, read_torch_state, write_csv, write_json
from midblock.launch import describe_run
from midblock.layers import resolve_layers
from midblock.models.introspect import get_layout
from midblock.models.loading import parse_spec
from midblock.reporting.plots import plot_profiles
from midblock.reporting.report import add_section

log = logging.getLogger(__name__)
CSV_COLUMNS = ["variant", "dataset", "layer", "depth", "metric", "value"]


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        from accelerate import PartialState

        PartialState()  # initialises the process group under `accelerate launch`
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class _Run:
    """What every phase of one analysis shares: settings, the capture plan, the tokenised data, the cache."""

    cfg: AnalyzeConfig
    spec: CaptureSpec
    seqs: dict[str, list[list[int]]]
    cache: Path
    resume: bool
    pad_id: int
    load_kw: dict[str, Any]

    @property
    def fams(self) -> set[str]:
        return set(self.cfg.metrics)


def _extract(
    run: _Run, models, seqs, name: str, tag: str | None = None, resume=None, **pairing
) -> dict[str, ModelStats]:
    """Stream one dataset through ``models``, checkpointing accumulators so a resumed run continues.

    Lockstep mode passes every model (base first); one-model-at-a-time passes one model, a ``tag`` naming
    its checkpoint files and the ``paired``/``on_keep`` arguments of ``collect``. ``resume`` overrides the
    run's own setting (the base's accumulators are reused only while its spilled states exist).
    """
    from tqdm.auto import tqdm

    cfg, cache = run.cfg, run.cache
    resume = run.resume if resume is None else resume
    rank, world = _dist()
    stem = name if tag is None else f"{name}@{tag}"
    done, part = cache / f"{stem}.r{rank}.pt", cache / f"{stem}.r{rank}.partial.pt"
    start, stats = 0, None
    if resume and done.exists():
        stats = {k: ModelStats.from_state(v) for k, v in _read_cache(done).items()}
        return reduce_across_processes(stats)
    if resume and part.exists():
        ck = _read_cache(part)
        start, stats = ck["next_batch"], {k: ModelStats.from_state(v) for k, v in ck["stats"].items()}
        log.info("resuming %s at batch %d", name, start)
    n_batches = math.ceil(len(seqs) / cfg.batch_size)
    mine = [b for b in make_batches(seqs, cfg.batch_size, run.pad_id, cfg.padding_side, start=start)]
    mine = [b for i, b in enumerate(mine, start) if i % world == rank]
    bar = tqdm(total=n_batches, initial=start, desc=f"extract {stem}", leave=False, disable=rank != 0)

    def checkpoint(i: int, st: dict[str, ModelStats]) -> None:
        bar.update(world)
        if (i + 1) % 10 == 0:
            with atomic_path(part) as tmp:
                torch.save({"next_batch": start + (i + 1) * world, "stats": {k: v.state() for k, v in st.items()}}, tmp)

    stats = collect(models, mine, run.spec, stats, on_batch=checkpoint, **pairing)
    bar.close()
    with atomic_path(done) as tmp:
        torch.save({k: v.state() for k, v in stats.items()}, tmp)
    part.unlink(missing_ok=True)
    return reduce_across_processes(stats)


def _read_cache(path: Path) -> Any:
    """An analysis cache file, read without running code (see ``read_torch_state``); wrong contents are
    refused as a whole: a cache is only ever a dict."""
    st = read_torch_state(path, "analysis cache")
    if not isinstance(st, dict):
        raise MidblockError(f"analysis cache {path} is not a midblock cache", hint="delete it and rerun")
    return st


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
    cfg: AnalyzeConfig, out: str | os.PathLike, *, resume: bool = False, recommend: RecommendConfig | None = None
) -> dict[str, Any]:
    """Analyse where ``cfg.variants`` differ from ``cfg.base``, layer by layer; returns the results dict.

    Writes ``metrics.csv``, ``results.json``, ``plots/*.png`` and a report section into ``out``; with
    ``resume`` a run interrupted in ``out`` continues from its cached accumulators (same fingerprint only).
    """
    out = _check_inputs(cfg, out)
    # load: data, models, tokens; the fingerprint is checked before anything is written
    warnings: list[str] = []
    texts = dict(load_texts(ds, cfg, warnings) for ds in cfg.datasets)
    if len(texts) != len(cfg.datasets):
        raise MidblockError("two --data values have the same name", hint="rename one of the files")
    load_kw = {"device_map": cfg.device_map} if cfg.device_map else {}
    models, tok, var_info, identities = load_models(cfg, cfg.seed, load_kw)
    L = get_layout(models["base"]).num_layers
    names = ["base", *(v["name"] for v in var_info)]
    seqs, truncated = {}, {}
    for name, tx in texts.items():
        seqs[name], truncated[name] = tokenize(tx, tok, cfg.max_length)
    fp = fingerprint(cfg, identities, seqs)
    check_cache(out, fp)  # before anything is written: a cache from other settings is never reused
    spec = _capture_spec(cfg, resolve_layers(cfg.layers, L + 1), multi=len(names) > 1)
    rank, world = _dist()
    if rank == 0:
        describe_run("analyze", world, cfg.batch_size)
    # only the main process owns the run directory; other data-parallel ranks just contribute shards
    with RunDir(out) if rank == 0 else contextlib.nullcontext() as rundir:
        if rank == 0:
            check_cache(out, fp)  # again under the lock: another analysis may have written here meanwhile
            write_json(out / FINGERPRINT, fp)
        run = _Run(cfg, spec, seqs, out / "cache", resume, tok.pad_token_id, load_kw)
        run.cache.mkdir(parents=True, exist_ok=True)
        # measure: every model's accumulators, then rows of metrics per dataset and model
        if cfg.sequential:
            parts, grads = _run_sequential(run, models, var_info)
        else:
            parts, grads = _run_lockstep(run, models)
        csv_rows = _all_rows(parts, grads, names, L)
        band = _recommend(csv_rows, L, names, recommend or RecommendConfig())
        if rank != 0:
            return {"rank": rank, "recommended_band": band, "rows": len(csv_rows), "warnings": []}
        # write: metrics.csv, results.json, plots, the report section
        warnings += [
            f"dataset {ds}: {n} samples truncated to {cfg.max_length} tokens" for ds, n in truncated.items() if n
        ]
        results = _write_outputs(out, run, csv_rows, band, warnings, names, L, fp)
        if cfg.sequential:
            remove_spill(run.cache / _SPILL)
        rundir.mark_completed()
    return results


def _check_inputs(cfg: AnalyzeConfig, out: str | os.PathLike | None) -> Path:
    """Everything checkable before loading a model: the output directory, the specs, the datasets."""
    if out is None:
        raise MidblockError("analyze needs an output directory", hint="--out DIR")
    out = fresh_output_dir(out)
    for s in [cfg.base, *cfg.variants]:
        parse_spec(s)
    for ds in cfg.datasets:
        dataset_arg(ds)
    return out


def _capture_spec(cfg: AnalyzeConfig, layer_idx: list[int], multi: bool) -> CaptureSpec:
    """What to accumulate per layer, from the metric families asked for."""
    fams = set(cfg.metrics)
    return CaptureSpec(
        layers=layer_idx,
        token_stats=tuple(
            s
            for s in TOKEN_STATS
            if (s.startswith("prompt") and "prompt_entropy" in fams)
            or (s == "token_norm" and "l2_norm" in fams)
            or s in fams
        ),
        pooled=any(FAMILIES[f].pooled for f in fams),
        token_cka="cka_token" in fams and multi,
        logit_lens="logit_lens" in fams,
        alpha=cfg.alpha,
    )


def _all_rows(parts: dict, grads: dict, names: list[str], L: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for ds in parts:
        for nm in names:
            rows.extend(_csv_rows(nm, ds, parts[ds][nm], L))
        if ds in grads:
            rows.extend(_csv_rows("base", ds, sorted(grads[ds].items()), L))
    return rows


_SPILL = "spill"  # cache/spill: the one-model-at-a-time mode's base states and weights, deleted on success


def _csv_rows(variant: str, ds: str, rows, L: int) -> list[dict[str, Any]]:
    """(layer, metric, value) tuples (or ((layer, metric), value) pairs) -> CSV dicts with the depth fraction."""
    out = []
    for r in rows:
        (layer, metric), value = (r[0], r[1]) if len(r) == 2 else ((r[0], r[1]), r[2])
        out.append(
            {
                "variant": variant,
                "dataset": ds,
                "layer": layer,
                "depth": round(layer / L, 6),
                "metric": metric,
                "value": value,
            }
        )
    return out


def _model_rows(stats: dict[str, ModelStats], nm: str, layer_idx, fams, alpha, weight_rows=None) -> list:
    """One model's rows on one dataset: per-model metrics, and for a variant its paired and weight rows."""
    rows = per_model_rows(stats[nm], layer_idx, fams, alpha)
    if nm != "base":
        rows += pair_rows(stats["base"], stats[nm], layer_idx, fams)
        rows += [(k[0], k[1], v) for k, v in sorted((weight_rows or {}).items())]
    return rows


def _run_lockstep(run: _Run, models: dict[str, Any]) -> tuple[dict, dict]:
    """Every model loaded; each batch goes through the base and then every variant."""
    cfg, fams, layer_idx = run.cfg, run.fams, run.spec.layers
    weight_rows = _weight_rows(models, fams)
    parts: dict[str, dict[str, list]] = {}
    grads: dict[str, dict] = {}
    for ds, sq in run.seqs.items():
        stats = _extract(run, models, sq, ds)
        parts[ds] = {nm: _model_rows(stats, nm, layer_idx, fams, cfg.alpha, weight_rows.get(nm)) for nm in models}
        if "grad_norm" in fams:
            grads[ds] = _grad_cached(run, ds, models["base"])
    return parts, grads


def _run_sequential(run: _Run, models: dict[str, Any], var_info: list[dict]) -> tuple[dict, dict]:
    """One model resident at a time: the base over every dataset (spilling what the pairs need), then each
    variant in turn on identical batches. ``models`` holds only the base, which is dropped from it here."""

    spec, spill = run.spec, run.cache / _SPILL
    need_states = (spec.token_cka or spec.logit_lens) and bool(var_info)
    wfile = spill / "base_weights.safetensors"
    need_weights = "weight_delta" in run.fams and any(not v["lora"] for v in var_info) and _dist()[0] == 0
    parts: dict[str, dict[str, list]] = {ds: {} for ds in run.seqs}
    grads: dict[str, dict] = {}
    base_stats: dict[str, ModelStats] = {}
    base = models.pop("base")
    if need_weights and not (run.resume and wfile.exists()):
        S.save_base_weights(base, wfile)
    for ds, sq in run.seqs.items():
        # a resumed run reuses the base's accumulators only while its spilled states are still there
        keep_cache = run.resume and (not need_states or (spill / ds).exists())
        writer = S.SpillWriter(spill / ds) if need_states else None
        st = _extract(run, {"base": base}, sq, ds, tag="base", resume=keep_cache, on_keep=writer)
        base_stats[ds] = st["base"]
        parts[ds]["base"] = _model_rows(st, "base", spec.layers, run.fams, run.cfg.alpha)
        if writer is not None and writer.bytes:
            log.info("spilled %.1f MB of base states for %s", writer.bytes / 2**20, ds)
        if "grad_norm" in run.fams:
            grads[ds] = _grad_cached(run, ds, base)
    lay = get_layout(base)
    lens = (S.detached_copy(lay.final_norm), S.detached_copy(lay.lm_head)) if spec.logit_lens and var_info else None
    lay = base = None  # the base is freed before any variant is loaded
    S.release_memory()
    for v in var_info:
        for ds, rows in _one_variant(run, v, base_stats, lens, wfile if need_weights else None, need_states).items():
            parts[ds][v["name"]] = rows
        S.release_memory()
    return parts, grads


def _one_variant(run: _Run, v: dict, base_stats: dict, lens, wfile: Path | None, need_states: bool) -> dict:
    """Load one variant, check it is the one fingerprinted, and measure it against the base's saved state."""
    from midblock.models import load_model  # looked up when called: tests count the loads

    cfg, spill, nm = run.cfg, run.cache / _SPILL, v["name"]
    vm, _ = load_model(v["spec"], dtype=cfg.dtype, device=cfg.device, seed=cfg.seed, **run.load_kw)
    if model_identity(vm) != v["identity"]:
        raise MidblockError(f"variant {nm} changed on disk during the run", hint="rerun when it is stable")
    wrows: dict = {}
    if v["lora"]:
        if run.fams & {"lora_delta", "weight_delta"}:
            wrows = lora_delta(vm)
    elif wfile is not None:
        wrows = weight_delta(S.SavedWeights(wfile), vm)
    rows = {}
    for ds, sq in run.seqs.items():
        paired = S.BasePair(spill / ds, *(lens or (None, None))) if need_states else (lambda batch: None)
        st = _extract(run, {nm: vm}, sq, ds, tag=nm, paired=paired)
        rows[ds] = _model_rows({"base": base_stats[ds], nm: st[nm]}, nm, run.spec.layers, run.fams, cfg.alpha, wrows)
    return rows


def _grad_cached(run: _Run, ds: str, model) -> dict:

    f = run.cache / f"{ds}.grad.pt"
    if run.resume and f.exists():
        return _read_cache(f)
    from tqdm.auto import tqdm

    batches = _grad_batches(run.seqs[ds], run.pad_id, run.cfg)
    g = grad_norm(model, tqdm(batches, desc=f"grad_norm {ds}", leave=False, disable=_dist()[0] != 0))
    with atomic_path(f) as tmp:
        torch.save(g, tmp)
    return g


def _weight_rows(models: dict[str, Any], fams: set[str]) -> dict[str, dict]:

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


# the band rule's per-block signals when variants are analysed (docs/metrics.md, "The recommended band")
VARIANT_SIGNALS = ("1-cka", "weight_delta_rel", "logit_kl")


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
            for name in VARIANT_SIGNALS:  # read as midblock profiles reads them (midblock.analysis.regions)
                sources, similarity = CHANGE_METRICS[name]
                if metric in sources:
                    acc[who][name][b].append(1.0 - v if similarity else v)
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


def _write_outputs(out, run: _Run, csv_rows, band, warnings, names, L, fp) -> dict[str, Any]:

    for r in csv_rows:
        r["value"] = float(r["value"])
    write_csv(out / "metrics.csv", csv_rows, CSV_COLUMNS)
    cfg = run.cfg
    plots = plot_profiles(csv_rows, out / "plots", L, band["indices"], title=f"{cfg.base}:")
    results = provenance(asdict(cfg), cfg.seed)
    results.update(
        models=names,
        num_blocks=L,
        layers=run.spec.layers,
        datasets={k: len(v) for k, v in run.seqs.items()},
        fingerprint=fp["key"],
        warnings=warnings,
        recommended_band=band,
        plots=[f"plots/{p}" for p in plots],
        rows=len(csv_rows),
        world_size=_dist()[1],
    )
    write_json(out / "results.json", results)
    add_section(out, analysis_section(results, csv_rows))
    for w in warnings:
        log.warning(w)
    return results
