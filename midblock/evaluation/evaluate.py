"""``evaluate``: score a model on GSM8K-style tasks under a named protocol, resumable, with intervals.

Protocols (see docs/evaluation.md and the GSM8K spec):

- ``lm-eval``: lm-evaluation-harness ``gsm8k`` (5-shot with the harness's own exemplar draw per item, 256 new
  tokens, stop strings); primary scores ``strict-match`` and ``flexible-extract``.
- ``paper``: the paper's reference code (zero-shot, 64 new tokens, no stop strings); primary ``paper``.
- ``original``: openai/grade-school-math's scorer on zero-shot ``Question/Answer`` prompts (the format
  ``midblock train`` fine-tunes on), 256 new tokens and the harness's stop strings; primary ``original``.

Every extractor is applied to every completion and recorded; ``primary`` names the protocol's own scores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midblock.aliases import renamed_kwargs
from midblock.data import load_rows
from midblock.errors import MidblockError
from midblock.evaluation.config import (  # noqa: F401 (the evaluation API re-exports its config)
    EVAL_TASKS,
    HARNESS_STOPS,
    PROTOCOLS,
    EvalConfig,
    Protocol,
)
from midblock.evaluation.extract import EXTRACTORS, score_all
from midblock.evaluation.generate import generate_completions, generate_vllm
from midblock.evaluation.prompts import (
    chat_prompt,
    fewshot_prompt,
    require_chat_template,
    sample_exemplars,
    zero_shot,
)
from midblock.evaluation.stats import wilson_interval
from midblock.fingerprint import check_or_record, digest, make, model_identity, spec_identity, tokenizer_digest
from midblock.io import RunDir, append_jsonl, fresh_output_dir, provenance, read_jsonl_tolerant, write_json, write_text
from midblock.models import load_model
from midblock.models.loading import load_tokenizer, parse_spec, resolve_base_dir

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

ITEMS_FILE = "items.jsonl"
SUMMARY_FILE = "summary.json"


def load_test_items(cfg: EvalConfig) -> list[dict[str, Any]]:
    """The test rows to score, each with its absolute ``index`` in the split."""

    rows = load_rows(cfg.task, cfg.split, cfg.data, limit=cfg.eval_items, offset=cfg.offset, dev_size=cfg.dev_size)
    if not rows:
        raise MidblockError(f"--offset {cfg.offset} is past the end of the {cfg.task} {cfg.split} split")
    for r in rows:
        if "####" not in str(r.get("answer", "")):
            raise MidblockError(f"a {cfg.task} test row has no '#### N' gold answer", hint="check --data")
    return [{"index": cfg.offset + i, "question": r["question"], "answer": r["answer"]} for i, r in enumerate(rows)]


def build_prompts(cfg: EvalConfig, items: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> list[str]:
    if cfg.chat_template:
        require_chat_template(tokenizer)
    train: list[dict[str, Any]] = []
    if cfg.shots:
        train = load_rows(cfg.task, "train", cfg.data, dev_size=cfg.train_dev_size)  # never a dev item
    prompts = []
    for it in items:  # item k's exemplars depend on k only (lm-eval: the harness's draw for document k)
        ex = sample_exemplars(train, it["index"], cfg.shots, cfg.seed, cfg.fewshot_sampling) if cfg.shots else []
        if cfg.chat_template:
            prompts.append(chat_prompt(tokenizer, it["question"], ex))
        else:
            prompts.append(fewshot_prompt(it["question"], ex) if ex else zero_shot(it["question"]))
    return prompts


def summarize(records: list[dict[str, Any]], primary: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy and Wilson 95% interval per extractor over per-item records."""
    n = len(records)
    scores = {}
    for name in EXTRACTORS:
        k = sum(1 for r in records if r["scores"][name]["correct"])
        lo, hi = wilson_interval(k, n)
        scores[name] = {"accuracy": k / n if n else 0.0, "ci_low": lo, "ci_high": hi, "correct": k, "n": n}
    return {"n": n, "primary": list(primary), "scores": scores}


@renamed_kwargs(out_dir="out")
def evaluate(
    model_spec: str,
    cfg: EvalConfig | None = None,
    *,
    out: str | Path | None = None,
    dtype: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Load ``model_spec`` and evaluate it per ``cfg`` (default: ``EvalConfig()``, GSM8K as lm-eval scores it);
    returns the summary (plus ``items``, the per-item records).

    Every input is validated (task, protocol, limits, data file, model spec, output directory) before
    the model is loaded; with ``out`` the per-item file is written as it goes and a rerun resumes.
    """

    t0 = time.perf_counter()
    cfg = cfg or EvalConfig()
    ms = parse_spec(model_spec)
    items = load_test_items(cfg)
    if out is not None:
        fresh_output_dir(out)
    if cfg.chat_template:  # a missing template is a user error: say so before loading weights
        require_chat_template(load_tokenizer(ms))
    if cfg.backend == "vllm":
        return _evaluate_vllm(ms, cfg, items, out, progress, t0)

    model, tok = load_model(model_spec, dtype=dtype)
    return evaluate_model(model, tok, cfg, out=out, model_spec=model_spec, progress=progress, items=items, _t0=t0)


@renamed_kwargs(out_dir="out")
def evaluate_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    cfg: EvalConfig | None = None,
    *,
    out: str | Path | None = None,
    model_spec: str | None = None,
    progress: bool = True,
    items: list[dict[str, Any]] | None = None,
    _t0: float | None = None,
) -> dict[str, Any]:
    """Evaluate an already-loaded model (e.g. one with swapped layers); same outputs as ``evaluate``."""
    t0 = _t0 if _t0 is not None else time.perf_counter()
    cfg = cfg or EvalConfig()
    if cfg.backend != "hf":
        raise MidblockError("evaluate_model runs loaded models with the hf backend only", hint="use evaluate()")
    items = items if items is not None else load_test_items(cfg)
    prompts = build_prompts(cfg, items, tokenizer)
    identity = None
    if out is not None:  # hashing every tensor costs about a second per GB: only to key stored results
        identity = model_identity(model, tokenizer)
    job = _Job(cfg, items, prompts, out, model_spec, identity, progress, t0)
    return _run(job, lambda todo, cb: generate_completions(model, tokenizer, todo, cfg.decode_config(progress), cb))


def _evaluate_vllm(ms, cfg: EvalConfig, items, out, progress: bool, t0: float) -> dict[str, Any]:

    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise MidblockError("--backend vllm needs vLLM installed", hint="pip install vllm, or use --backend hf") from e
    if ms.delta:
        raise MidblockError("--backend vllm cannot apply a mid-block delta", hint="use --backend hf")
    tok = load_tokenizer(ms)
    prompts = build_prompts(cfg, items, tok)
    path = resolve_base_dir(ms)

    def gen(todo: list[str], cb: Callable[[int, str], None]) -> list[str]:
        outs = generate_vllm(path, tok, todo, cfg.decode_config(progress), adapter=ms.adapter)
        for i, o in enumerate(outs):
            cb(i, o)
        return outs

    identity = {"files": spec_identity(ms.original), "tokenizer": tokenizer_digest(tok)} if out else None
    return _run(_Job(cfg, items, prompts, out, ms.original, identity, progress, t0), gen)


# Settings that do not change an item's result: which items are run, and how many at once.
_NOT_IN_FINGERPRINT = ("eval_items", "offset", "batch_size", "data")


def eval_fingerprint(cfg: EvalConfig, identity: dict[str, Any]) -> dict[str, Any]:
    """What shapes every per-item result: the model (its tensors and tokenizer), the protocol and decoding
    settings, the package version. The data enter per item (prompt and item hash), so ``--eval-items`` can grow."""

    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    if cfg.split != "dev":  # which train rows form the dev split matters to dev evaluations only
        settings.pop("dev_size")
    settings["max_new_tokens"] = cfg.decode_config(False).max_new_tokens
    settings["stop"] = list(cfg.spec.stop)
    settings["num_fewshot"] = cfg.shots
    return make(model=identity, settings=settings)


def _item_hash(it: dict[str, Any]) -> str:

    return digest([it["question"], it["answer"]])


def _load_saved(cfg, items, prompts, out: Path, identity: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The finished items of an earlier run into ``out``: only if everything that shaped them is equal."""

    items_path = out / ITEMS_FILE
    saved = read_jsonl_tolerant(items_path)
    check_or_record(out, eval_fingerprint(cfg, identity), "evaluation results", has_results=bool(saved))
    by_index = {it["index"]: (it, p) for it, p in zip(items, prompts)}
    records = {}
    for r in saved:
        if r.get("index") not in by_index:
            continue
        it, prompt = by_index[r["index"]]
        if r.get("prompt") != prompt or r.get("item_hash") != _item_hash(it):
            what = "prompt" if r.get("prompt") != prompt else "test item (question or answer)"
            raise MidblockError(
                f"{items_path} holds results for another {what} at item {r['index']}",
                hint="the data changed: choose another --out",
            )
        records[r["index"]] = r
    _rewrite_if_torn(items_path, saved)
    return records


@dataclass
class _Job:
    """One evaluation: what to score, where to store it, and what the stored results are keyed on."""

    cfg: EvalConfig
    items: list[dict[str, Any]]
    prompts: list[str]
    out: str | Path | None
    model_spec: str | None
    identity: dict[str, Any] | None  # the model's fingerprint (None when nothing is stored)
    progress: bool = True
    t0: float = field(default_factory=time.perf_counter)


def _run(job: _Job, gen) -> dict[str, Any]:
    """Generate the items not yet stored (``gen(prompts, on_result)``), score them, and summarise."""

    cfg, out = job.cfg, job.out
    records: dict[int, dict[str, Any]] = {}
    run = None
    if out is not None:
        run = RunDir(out).acquire()
        try:
            records = _load_saved(cfg, job.items, job.prompts, Path(out), job.identity)
        except BaseException:
            run.release()
            raise
    try:
        todo = [(it, p) for it, p in zip(job.items, job.prompts) if it["index"] not in records]
        if records:
            log.info("resuming: %d of %d items already done", len(job.items) - len(todo), len(job.items))

        def on_result(j: int, completion: str) -> None:
            it, prompt = todo[j]
            records[it["index"]] = rec = _record(cfg, it, prompt, completion)
            if out is not None:
                append_jsonl(Path(out) / ITEMS_FILE, rec)

        g0 = time.perf_counter()
        if todo:
            gen([p for _, p in todo], on_result)
        summary = _summary(job, [records[it["index"]] for it in job.items], len(todo), time.perf_counter() - g0)
        if out is not None:
            write_json(Path(out) / SUMMARY_FILE, {k: v for k, v in summary.items() if k != "items"})
            run.mark_completed()
        return summary
    finally:
        if run is not None:
            run.release()


def _record(cfg: EvalConfig, it: dict[str, Any], prompt: str, completion: str) -> dict[str, Any]:
    return {
        "index": it["index"],
        "item_hash": _item_hash(it),
        "protocol": cfg.protocol,
        "prompt": prompt,
        "completion": completion,
        "gold": it["answer"].split("####")[-1].strip(),
        "scores": score_all(completion, it["answer"]),
    }


def _summary(job: _Job, ordered: list[dict[str, Any]], generated: int, gen_s: float) -> dict[str, Any]:

    cfg = job.cfg
    summary = summarize(ordered, cfg.spec.primary)
    summary.update(
        task=cfg.task,
        protocol=cfg.protocol,
        chat_template=cfg.chat_template,
        num_fewshot=cfg.shots,
        fewshot_sampling=cfg.fewshot_sampling if cfg.shots else None,
        max_new_tokens=cfg.decode_config(False).max_new_tokens,
        model=job.model_spec,
        seed=cfg.seed,
        first_index=job.items[0]["index"],
        generated_now=generated,
        generation_s=round(gen_s, 3),
        items_per_s=round(generated / gen_s, 4) if generated and gen_s > 0 else None,
        wall_s=round(time.perf_counter() - job.t0, 3),
        fingerprint=eval_fingerprint(cfg, job.identity)["key"] if job.identity else None,
        provenance=provenance(asdict(cfg) | {"model": job.model_spec}, cfg.seed),
    )
    return summary | {"items": ordered}


def _rewrite_if_torn(path: Path, saved: list[dict[str, Any]]) -> None:
    """Drop a torn last line (a killed run) so appends start on a clean line; every whole line is kept."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        import json

        write_text(path, "".join(json.dumps(r) + "\n" for r in saved))


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable lines: each primary score with its interval, then the other extractors."""
    head = (
        f"{summary['task']} ({summary['protocol']}, {summary['num_fewshot']}-shot"
        f"{', chat template' if summary['chat_template'] else ''}) on {summary['model']}: n={summary['n']}"
    )
    lines = [head]
    names = summary["primary"] + [k for k in summary["scores"] if k not in summary["primary"]]
    for name in names:
        s = summary["scores"][name]
        tag = "" if name in summary["primary"] else "  (other extractor)"
        lines.append(
            f"  {name:17s} {100 * s['accuracy']:6.2f}%  95% CI [{100 * s['ci_low']:.2f}, {100 * s['ci_high']:.2f}]"
            f"  ({s['correct']}/{s['n']}){tag}"
        )
    if summary.get("items_per_s"):
        lines.append(
            f"  {summary['generated_now']} items generated at {summary['items_per_s']:.2f} items/s; "
            f"wall {summary['wall_s']:.1f}s"
        )
    return "\n".join(lines)
