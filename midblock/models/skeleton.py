"""A model's structure without its weights (meta device): instant introspection, even for 7B shapes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from midblock.errors import MidblockError
from midblock.models.loading import parse_spec, resolve_base_dir, trust_remote_code
from midblock.models.presets import preset_config

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel


def load_config(spec: str) -> PretrainedConfig:
    from transformers import AutoConfig

    ms = parse_spec(spec)
    if ms.kind == "random":
        return preset_config(ms.target)
    try:
        return AutoConfig.from_pretrained(resolve_base_dir(ms), trust_remote_code=trust_remote_code())
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise MidblockError(
            f"cannot read the configuration of '{spec}': {first}",
            hint="check the name, or pass a local model directory",
        ) from e


def load_skeleton(spec: str) -> PreTrainedModel:
    """The model of ``spec`` built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = load_config(spec)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code())
    except ValueError as e:
        raise MidblockError(f"'{spec}' is not a causal language model ({type(cfg).__name__})") from e
