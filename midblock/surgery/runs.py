"""``run_swap`` and ``run_interpolate``: validated, resumable grids written as CSV, JSON, PNG and a report section.

Order of work: every input is checked first on configurations and meta-device skeletons (specs, shapes,
segments, bands, weights, corpus, test items, output directory), so a mistake costs no model load and
leaves nothing behind. Then the recipient model is loaded once, the donor opened as a tensor source, and
each configuration not yet in ``<kind>_results.jsonl`` is patched in, measured and restored. The pure
base and pure variant are measured as reference rows of the same grid.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midblock.aliases import stored
from midblock.data import load_rows
from midblock.errors import MidblockError
from midblock.fingerprint import describe_change, file_digest, make, rows_digest, spec_identity
from midblock.io import (
    RunDir,
    append_jsonl,
    fresh_output_dir,
    provenance,
    read_json,
    read_jsonl_tolerant,
    write_csv,
    write_json,
    write_text,
)
from midblock.models import load_model
from midblock.models.loading import parse_spec
from midblock.models.skeleton import load_config, load_skeleton
from midblock.reporting.report import Section, add_section, esc, table_html
from midblock.surgery.config import InterpolateConfig, SurgeryConfig, SwapConfig, parse_weights  # noqa: F401 (re-exported)
from midblock.surgery.interpolate import check_save_dir, interpolation_configuration, save_interpolation
from midblock.surgery.measure import build_measurer
from midblock.surgery.plots import plot_configurations
from midblock.surgery.sources import open_source, tied_aliases
from midblock.surgery.swap import (
    Configuration,
    check_compatible_configs,
    check_source,
    reference_configurations,
    run_configurations,
    swap_configurations,
)

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from midblock.surgery.sources import TensorSource

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shared machinery


def validate_pair(base: str, variant: str) -> PreTrainedModel:
    """Parse and compare both specs from their configurations; returns the base's meta skeleton."""

    parse_spec(base)
    parse_spec(variant)
    check_compatible_configs(load_config(base), load_config(variant), base, variant)
    return load_skeleton(base)


def rewrite_if_torn(path: Path, rows: list[dict[str, Any]]) -> None:
    """A killed run can leave a torn last line: rewrite the file from the good rows so appends start clean."""
    import json

    if path.exists() and not path.read_text(encoding="utf-8").endswith("\n") and path.stat().st_size:
        write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def surgery_fingerprint(cfg: SurgeryConfig, models: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """Settings, both models' files (or preset and seed) and the data files' contents, plus the version."""

    # in the spelling surgery runs were first keyed under (see midblock.aliases)
    settings = stored({k: v for k, v in asdict(cfg).items() if k not in ("out", "save")}, type(cfg))
    data: dict[str, Any] = {}
    if cfg.task:
        data["test"] = rows_digest(load_rows(cfg.task, "test", cfg.data, limit=cfg.eval_items))
    if cfg.corpus and Path(cfg.corpus).is_file():
        data["corpus"] = file_digest(cfg.corpus)
    identities = {role: spec_identity(spec, seed) for role, (spec, seed) in models.items()}
    return make(settings=settings, models=identities, data=data)


def _check_resume(out: Path, kind: str, fp: dict[str, Any]) -> None:
    """A directory holding another run's rows is refused, naming the first setting that changed."""

    cfg_file = out / f"{kind}_config.json"
    has_rows = (out / f"{kind}_results.jsonl").exists()
    old = read_json(cfg_file, dict).get("fingerprint") if cfg_file.exists() else None
    if (old is None and has_rows) or (old is not None and old.get("key") != fp["key"]):
        change = "no fingerprint (an older midblock)" if old is None else describe_change(old, fp)
        raise MidblockError(
            f"{out} holds a {kind} run made with {change}",
            hint="choose another --out, or delete its " + f"{kind}_* files to start over",
        )


def _grid(
    kind: str,
    cfg: SurgeryConfig,
    configs: list[Configuration],
    models: dict[str, tuple[str, int]],
    measurer,
    after=None,
) -> list[dict[str, Any]]:
    """Load, patch, measure, restore every configuration; returns the rows in grid order.

    ``models``: ``{"recipient": (spec, seed), "donor": (spec, seed)}``: the model patched and the source of
    the blocks patched in."""

    out = fresh_output_dir(cfg.out)
    fingerprint = surgery_fingerprint(cfg, models)
    (recipient, recipient_seed), (donor, donor_seed) = models["recipient"], models["donor"]
    _check_resume(out, kind, fingerprint)
    results = out / f"{kind}_results.jsonl"
    with RunDir(out):
        _check_resume(out, kind, fingerprint)  # again under the lock: another run may have started here since
        write_json(out / f"{kind}_config.json", {"fingerprint": fingerprint})
        done_rows = {r["config"]: r for r in read_jsonl_tolerant(results)}
        rewrite_if_torn(results, list(done_rows.values()))
        todo = [c for c in configs if c.name not in done_rows]
        if done_rows:
            log.info("resuming: %d of %d configurations already done", len(configs) - len(todo), len(configs))
        if todo or after is not None:
            model, tok = load_model(recipient, seed=recipient_seed, merge=True)
            measurer.tokenizer = tok
            needed = list(dict.fromkeys(n for c in configs for n in c.weights))
            source = open_source(donor, needed, tied_aliases(model), seed=donor_seed)
            check_source(model, source, needed)

            def on_result(row: dict[str, Any]) -> None:
                append_jsonl(results, row)
                done_rows[row["config"]] = row

            run_configurations(
                model, source, todo, measurer, on_result=on_result, extrapolate=getattr(cfg, "extrapolate", False)
            )
            if after is not None:
                after(model, tok, source)
        rows = [done_rows[c.name] for c in configs]
        _write_outputs(kind, cfg, rows, measurer.metric_names, out)
    return rows


def _write_outputs(kind: str, cfg: SurgeryConfig, rows: list[dict[str, Any]], metrics: list[str], out: Path) -> None:

    lead = [
        "config",
        "kind",
        "model",
        "direction",
        "blocks",
        "n_blocks",
        "segment",
        "segments",
        "depth",
        "with_head",
        "weights",
        "segment_blocks",
    ]
    present = list(dict.fromkeys(k for r in rows for k in r))
    write_csv(out / f"{kind}.csv", rows, [c for c in lead if c in present] + [c for c in present if c not in lead])
    write_json(out / f"{kind}.json", {"provenance": provenance(asdict(cfg), cfg.seed), "rows": rows})
    images = []
    title = f"{kind}: {cfg.variant} vs {cfg.base}"
    if plot_configurations(rows, metrics, out / f"{kind}.png", title):
        images.append(f"{kind}.png")
    shown = ["config", "kind", "direction", "blocks", "weights", "with_head", "loss", "ppl"]
    for m in metrics:
        if m.startswith("acc_"):
            shown += [m, f"{m}_lo", f"{m}_hi"]
    shown.append("n_items" if cfg.task else "n_tokens")
    shown = [c for c in dict.fromkeys(shown) if any(c in r for r in rows)]
    what = {"swap": "Layer swapping", "interpolate": "Segment-wise weight interpolation"}[kind]
    body = (
        f"<p>base <code>{esc(cfg.base)}</code>, variant <code>{esc(cfg.variant)}</code>; "
        f"task {esc(cfg.task or '-')} ({esc(cfg.protocol)}, {len(rows)} configurations"
        f"{'' if not cfg.task else f', {esc(cfg.eval_items)} items'}), corpus {esc(cfg.corpus or '-')}. "
        "Reference rows: the pure base and the pure variant. Accuracy intervals are Wilson 95%.</p>"
        + table_html(rows, shown)
    )
    add_section(out, Section(kind, what, body, images, order=60 if kind == "swap" else 61))


# --------------------------------------------------------------------------- the two commands


def run_swap(cfg: SwapConfig) -> list[dict[str, Any]]:
    """Swap each configuration's blocks between base and variant and measure it (see module docstring)."""

    skeleton = validate_pair(cfg.base, cfg.variant)
    grid = swap_configurations(skeleton, segments=cfg.segments, bands=cfg.bands, with_head=cfg.with_head)
    measurer = build_measurer(cfg)
    into_base = cfg.direction == "into-base"
    recipient, donor = ("base", "variant") if into_base else ("variant", "base")
    refs = reference_configurations(skeleton, recipient, donor)
    configs = sorted(refs, key=lambda c: c.name != "base") + grid  # base first, then variant, then the grid
    for c in configs:
        if c.info.get("kind") == "swap":
            c.info["direction"] = cfg.direction
    spec = {"base": (cfg.base, cfg.seed), "variant": (cfg.variant, cfg.variant_seed)}
    return _grid("swap", cfg, configs, {"recipient": spec[recipient], "donor": spec[donor]}, measurer)


def run_interpolate(cfg: InterpolateConfig) -> list[dict[str, Any]]:
    """Measure each per-segment interpolation; optionally save the first one as a model directory."""

    skeleton = validate_pair(cfg.base, cfg.variant)
    weights = [parse_weights(w, cfg.extrapolate) for w in cfg.weights]
    grid = [interpolation_configuration(skeleton, w) for w in weights]
    if len({c.name for c in grid}) != len(grid):
        raise MidblockError("the same --weights list is given twice")
    if cfg.save:
        fresh_output_dir(cfg.save, flag="--save")
        check_save_dir(cfg.save, cfg.out)  # before any work: never a directory of files midblock did not write
    measurer = build_measurer(cfg)
    configs = reference_configurations(skeleton, "base", "variant") + grid

    def save(model: nn.Module, tok: PreTrainedTokenizerBase, source: TensorSource) -> None:
        save_interpolation(model, tok, source, weights[0], cfg.save, extrapolate=cfg.extrapolate)
        log.info("saved %s to %s", grid[0].name, cfg.save)

    return _grid(
        "interpolate",
        cfg,
        configs,
        {"recipient": (cfg.base, cfg.seed), "donor": (cfg.variant, cfg.variant_seed)},
        measurer,
        after=save if cfg.save else None,
    )
