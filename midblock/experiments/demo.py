"""``midblock demo``: the main job, end to end, on one machine.

1. analyse the base model alone (gradient norms on the tuning data, consecutive-layer CKA) and record
   the band it recommends;
2. ``compare()`` the two-arm preset of the profile: uniform LoRA on every block against mid-block LoRA on
   the paper's band (``seg2-4/5``: the middle three of five segments) with matched rank units and equal
   alpha/r, the same data order, seeds and number of steps, then the base and both arms evaluated on
   held-out problems and on a general-text corpus (forgetting). The demo's numbers are ``compare``'s
   numbers: same cells, same statistics;
3. analyse base vs each tuned model, layer by layer;
4. write one self-contained ``report.html`` and print a summary table.

The run directory records the demo's fingerprint (every setting, the base model's files, the version): a
rerun with other settings into the same ``--out`` is refused with one line naming what changed, and a rerun
with the same settings skips every finished stage.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from midblock.aliases import stored_grid
from midblock.analysis.config import DEFAULT_METRICS, AnalyzeConfig
from midblock.errors import MidblockError
from midblock.evaluation.config import EVAL_TASKS
from midblock.experiments.grid import PROFILES, two_arm_grid
from midblock.experiments.table import pooled_rows
from midblock.fingerprint import check_or_record, make, spec_identity
from midblock.io import RunDir, fresh_output_dir, provenance, read_json, write_json
from midblock.layers import PAPER_BAND
from midblock.tuning.trainconfig import PRECISIONS, Precision

log = logging.getLogger(__name__)

ARMS = ("lora", "midblock")
DEMO_TASKS = tuple(EVAL_TASKS)  # the tasks whose held-out problems the demo scores
# problems the layer analyses run on (base alone, then base vs the tuned arms); quick: a few minutes' share
ANALYSIS_SAMPLES = {"quick": 24, "full": 200, "smoke": 8}


@dataclass
class DemoConfig:
    """The demo's settings: a profile plus optional overrides."""

    model: str = field(default="smollm2-135m", metadata={"help": "model spec (default: the embedded SmolLM2-135M)"})
    task: str = field(
        default="arith",
        metadata={"help": "arith (built in) or gsm8k (needs a local copy)", "choices": DEMO_TASKS},
    )
    data: str | None = field(default=None, metadata={"help": "GSM8K directory/file when --task gsm8k"})
    profile: str = field(
        default="quick",
        metadata={
            "help": "quick (20 steps per arm, 64 problems: minutes on 2 CPU cores), full (the two-arm band "
            "landscape, 3 seeds), smoke (tests)",
            "choices": tuple(PROFILES),
        },
    )
    band: str = field(
        default=PAPER_BAND,
        metadata={"help": "the mid-block band; default the paper's middle three of five segments (seg2-4/5)"},
    )
    out: str = field(default="runs/demo", metadata={"help": "run directory"})
    seed: int = field(default=0, metadata={"help": "first seed (the full profile adds seed+1, seed+2)"})
    steps: int | None = field(default=None, metadata={"help": "override the profile's training steps per arm"})
    eval_items: int | None = field(default=None, metadata={"help": "override the number of held-out items"})
    lr: float | None = field(
        default=None,
        metadata={
            "help": "override the profile's learning rate, both arms (quick: 4e-3, chosen for SmolLM2; not with "
            "the full profile, which chooses each arm's rate on a dev split)"
        },
    )
    precision: Precision | None = field(
        default=None,
        metadata={
            "help": "training precision (default: the profile's, auto; smoke: fp32); auto: bf16 where the "
            "hardware has it (a GPU, a CPU with avx512_bf16 or AMX), fp32 elsewhere; bf16 on other CPUs is "
            "emulated, ~30x slower"
        },
    )
    threads: int | None = field(
        default=None, metadata={"help": "CPU threads for torch (default: torch's own choice, or OMP_NUM_THREADS)"}
    )

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise MidblockError(f"unknown profile '{self.profile}'", hint="use " + ", ".join(PROFILES))
        if self.task not in DEMO_TASKS:
            raise MidblockError(f"the demo runs task {' or '.join(DEMO_TASKS)}, not '{self.task}'")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise MidblockError(f"unknown precision '{self.precision}'", hint="use " + ", ".join(PRECISIONS))
        for name in ("steps", "eval_items", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise MidblockError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise MidblockError(f"--lr must lie in (0, 1), got {self.lr}", hint="e.g. --lr 1e-3")
        if self.lr is not None and "lr_search" in self.grid():
            raise MidblockError(
                f"--lr does not apply to the {self.profile} profile: it chooses each arm's rate on a dev split",
                hint="drop --lr, or use --profile quick",
            )

    def grid(self) -> dict[str, Any]:
        """The comparison the demo runs, as a ``compare`` grid."""
        return two_arm_grid(
            self.profile,
            model=self.model,
            task=self.task,
            data=self.data,
            band=self.band,
            seed=self.seed,
            steps=self.steps,
            eval_items=self.eval_items,
            precision=self.precision,
            lr=self.lr,
        )


def _fingerprint(config: DemoConfig) -> dict[str, Any]:
    """Every setting but where it runs (``out``) and how many threads compute it; the precision as resolved
    on this machine (``auto`` is bf16 on one machine, fp32 on another)."""
    from midblock.tuning.precision import resolve_precision

    # lr: the grid below holds the rate either way (and demo runs made before --lr existed keep their key)
    settings = {k: v for k, v in asdict(config).items() if k not in ("out", "threads", "lr")}
    settings["precision"] = resolve_precision(config.grid()["train"]["precision"])
    # the grid in the spelling demo runs were first keyed under (see midblock.aliases)
    return make(settings=settings, grid=stored_grid(config.grid()), model=spec_identity(config.model))


def rate_note(config: DemoConfig) -> str | None:
    """A line for the log when the demo trains another model at a rate chosen on SmolLM2 (the quick profile's
    4e-3 is too high for Gemma-3-270m, for one: docs/results.md); None where the rate was given or searched."""
    grid = config.grid()
    if config.lr is not None or "lr_search" in grid or config.model == DemoConfig.model:
        return None
    return (
        f"the {config.profile} profile trains both arms at lr {grid['train']['lr']:g}, the rate chosen for "
        f"SmolLM2-135M; another model may need another (--lr; on gemma3-270m --lr 2e-3 did better, see docs/results.md)"
    )


def apply_threads(threads: int | None) -> int:
    """Set torch's CPU threads when ``threads`` is given; returns the number torch uses."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the whole demo into ``config.out``; returns the summary (also in ``demo_summary.json``)."""
    # imported here, not at the top: `midblock demo --help` builds its options from DemoConfig without torch
    from midblock.data import load_gsm8k
    from midblock.experiments.runner import compare
    from midblock.models.loading import parse_spec
    from midblock.tuning.precision import default_device_type, resolve_precision, warn_if_emulated

    parse_spec(config.model)
    apply_threads(config.threads)
    # before any work: bf16 asked for on a CPU that emulates it (auto never picks it there)
    device = default_device_type()
    warn_if_emulated(resolve_precision(config.grid()["train"]["precision"], device), device)
    if config.task == "gsm8k":
        load_gsm8k("test", config.data)  # fail now, not after an hour, when GSM8K is not available
    if note := rate_note(config):
        log.info(note)
    out = fresh_output_dir(config.out)
    t_start = time.perf_counter()
    with RunDir(out) as run:
        has_results = (out / "analysis-base").exists() or (out / "compare").exists()
        check_or_record(out, _fingerprint(config), "a demo run", has_results=has_results)
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        base_analysis = _analyze(config, out / "analysis-base", [])
        timings["analyze base"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        res = compare(config.grid(), out / "compare", progress=True)
        timings["train and evaluate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        first_seed = min(c["seed"] for c in res["cells"])
        runs = {c["label"]: c["run_dir"] for c in res["cells"] if c["seed"] == first_seed}
        variant_analysis = _analyze(config, out / "analysis", [runs[a] for a in ARMS])
        timings["analyze tuned"] = time.perf_counter() - t0

        from midblock.reporting.demo_report import write_demo_report

        summary = {
            "comparison": pooled_rows(res["rows"]),
            "band": {"spec": config.band, "why": "the paper's band: the middle three of five segments of depth"},
            "recommended_band": base_analysis.get("recommended_band"),
            "variant_recommended_band": variant_analysis.get("recommended_band"),
            # the analysis names variants by their directory (every cell's run is ".../train"): say which arm
            "variant_arms": dict(zip(variant_analysis.get("models", [])[1:], ARMS)),
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
            "wall_s": round(time.perf_counter() - t_start, 1),
            "settings": config.grid(),
            "provenance": provenance(asdict(config), config.seed),
        }
        write_json(out / "demo_summary.json", summary)
        write_demo_report(out, config, summary, res["cells"])
        run.mark_completed()
    return summary


def _analyze(config: DemoConfig, out: Path, variants: list[str]) -> dict[str, Any]:
    """The base alone (``variants`` empty: gradient norms, consecutive-layer similarity) or base vs tuned."""
    from midblock.analysis.analyze import analyze  # torch: only when the demo runs (see run_demo)

    if RunDir(out).completed:
        return read_json(out / "results.json")
    # grad_norm is a property of the base alone and was measured in the base analysis already
    metrics = [m for m in DEFAULT_METRICS if m != "grad_norm"] if variants else list(DEFAULT_METRICS)
    cfg = AnalyzeConfig(
        base=config.model,
        variants=variants,
        names=list(ARMS) if variants else [],  # figures name the arms, not the run directories
        datasets=[config.data if (config.task == "gsm8k" and config.data) else config.task],
        samples=ANALYSIS_SAMPLES[config.profile],
        max_length=256,
        metrics=metrics,
        seed=config.seed,
    )
    return analyze(cfg, out, resume=True)
