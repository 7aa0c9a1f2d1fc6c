"""Fixtures for layer surgery: a tiny base, variants of it saved in every form the commands accept."""

from __future__ import annotations

import json

import pytest
import torch

from midblock.models import load_model


def perturb_blocks(model, blocks, scale: float = 0.05, seed: int = 123, head: bool = True) -> None:
    """Add seeded noise to the given blocks (and the final norm + LM head): a stand-in for a tuned model."""
    from midblock.models import get_layout

    lay = get_layout(model)
    g = torch.Generator().manual_seed(seed)
    mods = [lay.blocks[i] for i in blocks] + ([lay.final_norm, lay.lm_head] if head else [])
    with torch.no_grad():
        for m in mods:
            for p in m.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def pair(tmp_path):
    """base = random:llama-tiny seed 0 (in memory and saved); variant = base with every block, the final
    norm and the LM head perturbed, saved as a model directory."""
    base, tok = load_model("random:llama-tiny", seed=0)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    var, _ = load_model("random:llama-tiny", seed=0)
    perturb_blocks(var, range(6))
    var.save_pretrained(tmp_path / "variant")
    tok.save_pretrained(tmp_path / "variant")
    return base, var, tok, tmp_path


def write_delta_run(tmp_path, base_dir, variant, blocks) -> str:
    """A `midblock train`-style run directory: manifest + delta.safetensors of the given blocks only."""
    from safetensors.torch import save_file

    from midblock.surgery.swap import block_param_names

    run = tmp_path / "run"
    run.mkdir()
    sd = dict(variant.named_parameters())
    save_file(
        {n: sd[n].detach().clone().contiguous() for n in block_param_names(variant, blocks)},
        str(run / "delta.safetensors"),
    )
    (run / "midblock_run.json").write_text(
        json.dumps({"base": str(base_dir), "adapter": None, "delta": "delta.safetensors"})
    )
    return str(run)
