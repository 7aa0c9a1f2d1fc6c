"""Shared fixtures of the analysis tests: two saved variants of ``random:llama-8l`` and one run over them.

One intra-op thread: on a shared 2-core machine, two spinning threads per process slow tiny models ~50x.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

L, K = 8, 5  # llama-8l; blocks K..L-1 are perturbed


def _save_variant(path: Path, first_block: int, seed: int = 1, tokenizer=None) -> str:
    from midblock.models import load_model
    from midblock.models.presets import byte_tokenizer

    model, _ = load_model("random:llama-8l", seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(first_block, L):
            for p in model.model.layers[i].parameters():
                p.mul_(1 + 0.5 * torch.randn(p.shape, generator=g))
    model.save_pretrained(path)
    (tokenizer or byte_tokenizer()).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def variants(tmp_path_factory):
    d = tmp_path_factory.mktemp("variants")
    return {"tail": _save_variant(d / "tail", K), "late": _save_variant(d / "late", L - 1, seed=2)}


# the shared end-to-end run: every metric family, two variants (data-parallel and one-model-at-a-time runs
# with these settings must give the same metrics.csv)
def run_analyze(base, variants=(), datasets=("gsm8k",), *, out, resume=False, recommend=None, **settings):
    """``analyze`` with its ``AnalyzeConfig`` built from keywords (the tests' shorthand)."""
    from midblock.analysis.analyze import AnalyzeConfig, analyze

    cfg = AnalyzeConfig(base=base, variants=list(variants), datasets=list(datasets), **settings)
    return analyze(cfg, out, resume=resume, recommend=recommend)


RUN_KW = dict(datasets=["arith"], samples=12, max_length=40, batch_size=4, metrics="all", grad_batches=2)


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def run(variants, tmp_path_factory):

    out = tmp_path_factory.mktemp("runs") / "a"
    res = run_analyze("random:llama-8l", [variants["tail"], variants["late"]], out=out, **RUN_KW)
    return out, res, read_rows(out)
