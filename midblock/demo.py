"""``midblock demo``: the main job, end to end, on one machine.

1. analyse the base model alone (gradient norms on the tuning data, consecutive-layer CKA) and record
   the band it recommends;
2. train uniform LoRA on every block and mid-block LoRA on the 20%-80% band with matched rank units
   and equal alpha/r, the same data order, seed and number of steps;
3. evaluate the base and both arms on held-out problems (accuracy with Wilson intervals, paired
   bootstrap of the difference) and on a general-text corpus (forgetting: perplexity change);
4. analyse base vs each tuned model, layer by layer;
5. write one self-contained ``report.html`` and print a summary table.

Every stage writes into its own sub-directory and is skipped when already complete, so an interrupted
demo resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from midblock.errors import MidblockError
from midblock.io import RunDir, fresh_output_dir, provenance, read_json, write_json

log = logging.getLogger(__name__)

PROFILES: dict[str, dict[str, Any]] = {
    # ~10 minutes on 2 CPU cores with SmolLM2-135M.
    "quick": dict(
        steps=50,
        batch_size=8,
        lr=1e-3,
        rank=8,
        eval_items=100,
        analysis_samples=48,
        seeds=(0,),
        ppl_texts=40,
        max_new_tokens=96,
        precision="bf16",
    ),
    # Longer and more trustworthy: more steps, more items, three seeds.
    "full": dict(
        steps=200,
        batch_size=8,
        lr=1e-3,
        rank=8,
        eval_items=500,
        analysis_samples=200,
        seeds=(0, 1, 2),
        ppl_texts=40,
        max_new_tokens=128,
        precision="bf16",
    ),
    # For tests on tiny random models: seconds, not minutes.
    "smoke": dict(
        steps=4,
        batch_size=4,
        lr=1e-3,
        rank=4,
        eval_items=6,
        analysis_samples=8,
        seeds=(0,),
        ppl_texts=6,
        max_new_tokens=24,
        precision="fp32",
    ),
}
ARMS = ("lora", "midblock")


@dataclass
class DemoConfig:
    """The demo's settings: a profile plus optional overrides."""

    model: str = field(default="smollm2-135m", metadata={"help": "model spec (default: the embedded SmolLM2-135M)"})
    task: str = field(default="arith", metadata={"help": "arith (built in) or gsm8k (needs a local copy)"})
    data: str | None = field(default=None, metadata={"help": "GSM8K directory/file when --task gsm8k"})
    profile: str = field(default="quick", metadata={"help": "quick (~10 min CPU) | full (longer, 3 seeds) | smoke"})
    band: str = field(default="0.2:0.8", metadata={"help": "the mid-block band (the paper's 20%-80%)"})
    out: str = field(default="runs/demo", metadata={"help": "run directory"})
    seed: int = field(default=0, metadata={"help": "first seed (the full profile adds seed+1, seed+2)"})
    steps: int | None = field(default=None, metadata={"help": "override the profile's training steps per arm"})
    eval_items: int | None = field(default=None, metadata={"help": "override the number of held-out items"})

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise MidblockError(f"unknown profile '{self.profile}'", hint="use quick, full or smoke")
        if self.task not in ("arith", "gsm8k"):
            raise MidblockError(f"the demo runs task arith or gsm8k, not '{self.task}'")
        for name in ("steps", "eval_items"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise MidblockError(f"--{name.replace('_', '-')} must be >= 1, got {v}")

    @property
    def settings(self) -> dict[str, Any]:
        s = dict(PROFILES[self.profile])
        if self.steps:
            s["steps"] = self.steps
        if self.eval_items:
            s["eval_items"] = self.eval_items
        s["seeds"] = tuple(self.seed + i for i in range(len(s["seeds"])))
        return s


def general_corpus() -> list[str]:
    """The bundled general-text corpus used to measure forgetting (our own sentences, one per line)."""
    text = resources.files("midblock.data").joinpath("corpora/general.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _stage_done(path: Path) -> bool:
    return RunDir(path).completed


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the whole demo into ``config.out``; returns the summary (also in ``demo_summary.json``)."""
    from midblock.models.loading import parse_spec

    parse_spec(config.model)
    if config.task == "gsm8k":
        from midblock.data import load_gsm8k

        load_gsm8k("test", config.data)  # fail now, not after an hour, when GSM8K is not available
    out = fresh_output_dir(config.out)
    s = config.settings
    t_start = time.perf_counter()
    with RunDir(out) as run:
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        base_analysis = _analyze_base(config, s, out / "analysis-base")
        timings["analyze base"] = time.perf_counter() - t0

        arms: dict[str, list[dict[str, Any]]] = {a: [] for a in ARMS}
        t0 = time.perf_counter()
        for seed in s["seeds"]:
            for arm in ARMS:
                arms[arm].append(_train_arm(config, s, arm, seed, out / f"train-{arm}-s{seed}"))
        timings["training"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        evals = {"base": [_evaluate(config, s, config.model, out / "eval-base")]}
        for arm in ARMS:
            evals[arm] = [_evaluate(config, s, r["run_dir"], out / f"eval-{arm}-s{r['seed']}") for r in arms[arm]]
        timings["evaluation"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        variant_specs = [r["run_dir"] for arm in ARMS for r in arms[arm][:1]]
        variant_analysis = _analyze_variants(config, s, variant_specs, out / "analysis")
        timings["analyze tuned"] = time.perf_counter() - t0

        from midblock.reporting.demo_report import build_comparison, write_demo_report

        table = build_comparison(evals, arms)
        summary = {
            "comparison": table,
            "recommended_band": base_analysis.get("recommended_band"),
            "variant_recommended_band": variant_analysis.get("recommended_band"),
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "wall_s": round(time.perf_counter() - t_start, 1),
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
            "provenance": provenance(asdict(config), config.seed),
        }
        write_json(out / "demo_summary.json", summary)
        write_demo_report(out, config, summary, arms, evals)
        run.mark_completed()
    return summary


def _analyze_base(config: DemoConfig, s: dict[str, Any], out: Path) -> dict[str, Any]:
    from midblock.analysis.analyze import analyze

    if _stage_done(out):
        return read_json(out / "results.json")
    return analyze(
        config.model,
        [],
        datasets=[_dataset(config)],
        samples=s["analysis_samples"],
        max_length=256,
        out=out,
        seed=config.seed,
        resume=True,
    )


def _analyze_variants(config: DemoConfig, s: dict[str, Any], variants: list[str], out: Path) -> dict[str, Any]:
    from midblock.analysis.analyze import analyze

    if _stage_done(out):
        return read_json(out / "results.json")
    from midblock.analysis.rows import DEFAULT_METRICS

    # grad_norm is a property of the base alone and was measured in the base analysis already
    return analyze(
        config.model,
        variants,
        datasets=[_dataset(config)],
        samples=s["analysis_samples"],
        max_length=256,
        metrics=[m for m in DEFAULT_METRICS if m != "grad_norm"],
        out=out,
        seed=config.seed,
        resume=True,
    )


def _dataset(config: DemoConfig) -> str:
    return config.data if (config.task == "gsm8k" and config.data) else config.task


def _train_arm(config: DemoConfig, s: dict[str, Any], arm: str, seed: int, out: Path) -> dict[str, Any]:
    from midblock.tuning.config import MidBlockConfig
    from midblock.tuning.train import TrainConfig, train

    if _stage_done(out):
        res = read_json(out / "train_summary.json")
    else:
        if arm == "lora":
            tuning = MidBlockConfig(method="lora", rank=s["rank"])
        else:  # same rank units and alpha/r as the all-block arm
            tuning = MidBlockConfig(method="midblock", band=config.band, rank=s["rank"], budget_baseline_rank=s["rank"])
        cfg = TrainConfig(
            model=config.model,
            task=config.task,
            data=config.data,
            out=str(out),
            tuning=tuning,
            lr=s["lr"],
            steps=s["steps"],
            batch_size=s["batch_size"],
            max_length=384,
            seed=seed,
            precision=s["precision"],
            warmup_steps=max(1, s["steps"] // 10),
            resume=out.exists(),
        )
        res = train(cfg).to_dict()
    return res | {"seed": seed, "arm": arm, "run_dir": str(out)}


def _evaluate(config: DemoConfig, s: dict[str, Any], spec: str, out: Path) -> dict[str, Any]:
    from midblock.evaluation.evaluate import evaluate_model
    from midblock.evaluation.ppl import token_loss
    from midblock.models import load_model

    if _stage_done(out) and (out / "forgetting.json").exists():
        summary = read_json(out / "summary.json")
        summary["items"] = _read_items(out)
        summary["forgetting"] = read_json(out / "forgetting.json")
        return summary
    # One load serves both measurements; a LoRA adapter is merged, which also makes decoding faster.
    model, tok = load_model(spec, merge=True)
    # Zero-shot, in the format the arms were trained on; greedy, stop strings of the harness.
    summary = evaluate_model(
        model,
        tok,
        task=config.task,
        protocol="original",
        limit=s["eval_items"],
        out_dir=out,
        data=config.data,
        max_new_tokens=s["max_new_tokens"],
        batch_size=16,
        model_spec=spec,
    )
    forgetting = token_loss(model, tok, general_corpus()[: s["ppl_texts"]], batch_size=8, max_length=128)
    write_json(out / "forgetting.json", forgetting)
    summary["forgetting"] = forgetting
    return summary


def _read_items(out: Path) -> list[dict[str, Any]]:
    from midblock.evaluation.evaluate import ITEMS_FILE
    from midblock.io import read_jsonl_tolerant

    return read_jsonl_tolerant(out / ITEMS_FILE)
