"""``midblock merge RUN_DIR --out DIR``: write a standard Hugging Face model directory from a training run.

LoRA runs are merged into the base weights; full-parameter runs have their delta applied. The result
loads with ``AutoModelForCausalLM.from_pretrained(DIR)`` and needs no midblock.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from midblock.cli import common_args
from midblock.cli.options import add_command
from midblock.errors import MidblockError


def merge_run(run_dir: str, out: str) -> Path:
    """Merge ``run_dir`` (a ``midblock train`` run, adapter or ``BASE+EXTRA`` spec) into ``out``."""
    from midblock.io import atomic_path, fresh_output_dir, provenance, write_json
    from midblock.models import load_model
    from midblock.models.loading import parse_spec

    ms = parse_spec(run_dir)
    if not (ms.adapter or ms.delta):
        raise MidblockError(f"{run_dir} holds no adapter or delta to merge", hint="pass a `midblock train` run dir")
    dest = fresh_output_dir(out)
    if dest.exists() and any(dest.iterdir()):
        raise MidblockError(f"--out {dest} is not empty", hint="choose a new directory")
    model, tok = load_model(run_dir, merge=True)
    if dest.exists() and any(dest.iterdir()):  # again, right before the replacement: loading took a while
        raise MidblockError(f"--out {dest} is not empty", hint="choose a new directory")
    with atomic_path(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json(tmp / "midblock_merge.json", provenance({"source": run_dir}, None))
    return dest


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "merge", help="merge a training run into a standard Hugging Face model directory", doc=__doc__)
    p.add_argument("run_dir", help="a `midblock train` run directory (or an adapter dir / BASE+EXTRA spec)")
    common_args(p, seed=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.out:
        raise MidblockError("merge needs an output directory", hint="pass --out DIR")
    dest = merge_run(args.run_dir, args.out)
    print(f"merged model written to {dest}")
    return 0
