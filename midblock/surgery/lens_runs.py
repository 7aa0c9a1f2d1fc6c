"""``run_early_exit`` and ``run_correlate``: validated, resumable runs with CSV, JSON, PNG and a report section.

Early exit loads one model at a time (base, then variant); each finished model is a configuration in
``early_exit_results.jsonl`` (its per-layer rows) plus its top-1 ids in a safetensors file, so a rerun
skips it and the base-vs-variant top-1 agreement can still be computed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from midblock.data import load_examples, resolve_task
from midblock.errors import MidblockError
from midblock.io import (
    RunDir,
    append_jsonl,
    atomic_path,
    fresh_output_dir,
    provenance,
    read_json,
    read_jsonl_tolerant,
    write_csv,
    write_json,
)
from midblock.models import load_model
from midblock.models.loading import check_safetensors, load_tokenizer
from midblock.reporting.report import Section, add_section, esc, table_html
from midblock.surgery.config import EarlyExitConfig  # noqa: F401 (re-exported)
from midblock.surgery.correlate import cluster_order, correlation_matrix, matrix_rows, pivot, read_metrics
from midblock.surgery.earlyexit import EarlyExitResult, early_exit, gold_probe, top1_agreement
from midblock.surgery.plots import plot_depth, plot_heatmap
from midblock.surgery.runs import rewrite_if_torn, validate_pair

log = logging.getLogger(__name__)


def _measure_model(cfg: EarlyExitConfig, which: str, examples, out: Path) -> dict[str, Any]:
    import torch

    spec, seed = (cfg.base, cfg.seed) if which == "base" else (cfg.variant, cfg.variant_seed)
    model, tok = load_model(spec, seed=seed, merge=True)
    if which == "variant":
        # Both models must read identical token ids: the base's tokenizer is used for both.

        tok = load_tokenizer(cfg.base)
    res = early_exit(model, tok, [e.text for e in examples], cfg.batch_size, cfg.max_length)
    probed = [e for e in examples if e.answer not in (None, "")]
    probs = gold_probe(model, tok, [e.prompt for e in probed], [str(e.answer) for e in probed], cfg.batch_size)
    rows = res.rows(which)
    for l, r in enumerate(rows):
        r["gold_prob"] = float(probs[:, l].mean()) if len(probed) else None
        r["n_probe"] = len(probed)
    from safetensors.torch import save_file

    with atomic_path(out / f"early_exit_top1_{which}.safetensors") as tmp:
        save_file({f"layer{l}": t.contiguous() for l, t in enumerate(res.top1)}, str(tmp))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"config": which, "rows": rows}


def run_early_exit(cfg: EarlyExitConfig) -> list[dict[str, Any]]:
    """Per layer, for base and variant: next-token loss, top-1 accuracy, gold-token probability; agreement."""

    validate_pair(cfg.base, cfg.variant)
    task = resolve_task(cfg.task, cfg.data)
    examples = load_examples(task, cfg.split, cfg.data, limit=cfg.samples)
    if not examples:
        raise MidblockError(f"no {task} examples in split {cfg.split}", hint="check --data / --split")
    out = fresh_output_dir(cfg.out)
    fingerprint = {k: v for k, v in asdict(cfg).items() if k != "out"}
    cfg_file = out / "early_exit_config.json"
    _check_same_run(cfg_file, fingerprint)
    results = out / "early_exit_results.jsonl"
    with RunDir(out):
        _check_same_run(cfg_file, fingerprint)  # again under the lock: another run may have started here since
        write_json(cfg_file, {"fingerprint": fingerprint})
        done = {r["config"]: r for r in read_jsonl_tolerant(results)}
        rewrite_if_torn(results, list(done.values()))
        for which in ("base", "variant"):
            if which not in done or not _top1_readable(out / f"early_exit_top1_{which}.safetensors"):
                done[which] = _measure_model(cfg, which, examples, out)
                append_jsonl(results, done[which])
        rows = done["base"]["rows"] + done["variant"]["rows"]
        agree = _agreement(out)
        for r in done["variant"]["rows"]:
            r["top1_agreement"] = agree[r["layer"]]
        _write(cfg, rows, out, len(examples))
    return rows


def _check_same_run(cfg_file: Path, fingerprint: Any) -> None:
    if cfg_file.exists() and read_json(cfg_file, dict).get("fingerprint") != fingerprint:
        raise MidblockError(f"{cfg_file.parent} holds a different early-exit run", hint="choose another --out")


def _top1_readable(path: Path) -> bool:
    """A resumed run recomputes a model whose top-1 file is missing or damaged (killed mid-copy, truncated)."""

    if not path.exists():
        return False
    try:
        check_safetensors(path, "top-1 ids")
    except MidblockError as e:
        log.warning("%s; measuring that model again", e.one_line())
        return False
    return True


def _agreement(out: Path) -> list[float]:
    from safetensors.torch import load_file

    def load(which: str) -> EarlyExitResult:
        d = load_file(str(out / f"early_exit_top1_{which}.safetensors"))
        return EarlyExitResult([], 0, [], [d[f"layer{l}"] for l in range(len(d))])

    return top1_agreement(load("base"), load("variant"))


def _write(cfg: EarlyExitConfig, rows: list[dict[str, Any]], out: Path, n_examples: int) -> None:

    cols = ["model", "layer", "depth", "loss", "top1", "gold_prob", "top1_agreement", "n_tokens", "n_probe"]
    write_csv(out / "early_exit.csv", rows, cols)
    write_json(out / "early_exit.json", {"provenance": provenance(asdict(cfg), cfg.seed), "rows": rows})
    images = []
    if plot_depth(
        rows,
        ["loss", "top1", "gold_prob", "top1_agreement"],
        out / "early_exit.png",
        f"early exit: {cfg.variant} vs {cfg.base}",
    ):
        images.append("early_exit.png")
    body = (
        f"<p>{n_examples} examples; layer 0 = embedding output, layer l = block l-1 output before the final norm; "
        "each state is normed once and decoded by the LM head (the last layer equals the model's logits). "
        "<code>gold_prob</code>: probability of the gold answer's first token at the answer position, from a "
        "prompt without the answer. <code>top1_agreement</code>: fraction of positions where base and variant "
        f"exits predict the same token. Base <code>{esc(cfg.base)}</code>, variant "
        f"<code>{esc(cfg.variant)}</code>.</p>" + table_html(rows, cols)
    )
    add_section(out, Section("early_exit", "Early exit (logit lens) per layer", body, images, order=62))


# --------------------------------------------------------------------------- correlation


def run_correlate(run_dirs: list[str], out: str, min_rows: int = 3) -> dict[str, Any]:
    """Pearson and Spearman matrices of the runs' metrics, clustered heat maps, CSV, JSON, report section."""

    rows = read_metrics(run_dirs)
    keys, names, X = pivot(rows)
    if len(names) < 2:
        raise MidblockError(f"the runs hold {len(names)} metric(s); a correlation needs at least two")
    if len(keys) < min_rows:
        raise MidblockError(f"only {len(keys)} (variant, dataset, layer) rows; need at least {min_rows}")
    out_p = fresh_output_dir(out)
    with RunDir(out_p):  # one writer at a time: the report section is replaced by name
        return _write_correlation(run_dirs, out_p, min_rows, keys, names, X)


def _write_correlation(run_dirs, out_p: Path, min_rows: int, keys, names, X) -> dict[str, Any]:
    mats = {m: correlation_matrix(X, m, min_rows) for m in ("pearson", "spearman")}
    order = cluster_order(mats["pearson"][0])
    ordered = [names[i] for i in order]
    images = []
    for m, (R, _) in mats.items():
        write_csv(out_p / f"correlation_{m}.csv", matrix_rows(names, R, order), ["metric", *ordered])
        plot_heatmap(ordered, R[order][:, order], out_p / f"correlation_{m}.png", f"{m} correlation of metrics")
        images.append(f"correlation_{m}.png")
    result = {
        "provenance": provenance({"runs": [str(r) for r in run_dirs], "min_rows": min_rows}, None),
        "metrics": names,
        "order": ordered,
        "n_rows": len(keys),
        "pearson": mats["pearson"][0],
        "spearman": mats["spearman"][0],
        "pairwise_n": mats["pearson"][1],
    }
    write_json(out_p / "correlation.json", result)
    body = (
        f"<p>{len(names)} metrics over {len(keys)} (run, variant, dataset, layer) rows of "
        f"{', '.join(esc(r) for r in run_dirs)}; pairwise-complete rows, NaN below {min_rows}. Metrics are ordered "
        "by average-linkage clustering on 1 - |Pearson r|.</p>"
    )
    add_section(out_p, Section("correlation", "Metric correlation", body, images, order=63))
    return result
