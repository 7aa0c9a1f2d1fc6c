"""Find the parts of any Hugging Face causal LM by structure, not by a table of class names.

Decoder blocks: the longest ``nn.ModuleList`` of identical modules. Embedding and LM head: the model's
own ``get_input_embeddings`` / ``get_output_embeddings``. Final norm: the normalisation module that sits
beside the blocks in the same parent and is not inside them. Linear modules of a block: ``nn.Linear``
(and GPT-2's ``Conv1D``), grouped as attention or MLP by the block child that holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from midblock.errors import MidblockError

_ATTN_WORDS = ("attn", "attention")
_MLP_WORDS = ("mlp", "feed_forward", "ffn", "ff")


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def _is_norm(m: nn.Module) -> bool:
    name = type(m).__name__.lower()
    return isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or "norm" in name


@dataclass
class ModelLayout:
    """Where the parts of a causal LM live. Names are qualified from the model's root."""

    blocks: nn.ModuleList
    blocks_path: str
    embedding: nn.Module
    final_norm: nn.Module | None
    final_norm_path: str | None
    lm_head: nn.Module
    attn_linears: list[str] = field(default_factory=list)  # names relative to a block
    mlp_linears: list[str] = field(default_factory=list)
    other_linears: list[str] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def block_prefix(self, i: int) -> str:
        return f"{self.blocks_path}.{i}"

    @property
    def linear_names(self) -> list[str]:
        return self.attn_linears + self.mlp_linears + self.other_linears

    def group(self, name: str) -> str:
        """'attn', 'mlp' or 'other' for a linear module name relative to a block."""
        if name in self.attn_linears:
            return "attn"
        if name in self.mlp_linears:
            return "mlp"
        return "other"


def strip_peft(model: nn.Module) -> nn.Module:
    # PeftModel -> LoraModel -> the transformers model; introspection works on the latter.
    inner = model
    for _ in range(3):
        # Only PEFT's own wrappers: a transformers model wrapped by PEFT also gains a `peft_config`
        # attribute, and its `base_model` is the headless backbone, which must not be stepped into.
        if type(inner).__module__.startswith("peft."):
            nxt = getattr(inner, "base_model", None)
            if nxt is None or nxt is inner:
                break
            inner = getattr(nxt, "model", nxt)
        else:
            break
    return inner


def find_layout(model: nn.Module) -> ModelLayout:
    """Locate blocks, embedding, final norm, LM head and the blocks' linear modules."""
    root_name = type(model).__name__
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            kinds = {type(c).__name__ for c in mod}
            if len(kinds) == 1 and any(_is_linear(m) for m in mod[0].modules()):
                if best is None or len(mod) > len(best[1]):
                    best = (name, mod)
    if best is None:
        raise MidblockError(f"cannot find the decoder blocks of {root_name}", hint="this architecture is not supported")
    blocks_path, blocks = best
    embedding = model.get_input_embeddings()
    lm_head = model.get_output_embeddings()
    if embedding is None or lm_head is None:
        raise MidblockError(f"{root_name} has no input embedding or LM head: not a causal language model")

    parent_path = blocks_path.rsplit(".", 1)[0] if "." in blocks_path else ""
    parent = model.get_submodule(parent_path) if parent_path else model
    final_norm, final_norm_path = None, None
    seen_blocks = False
    for cname, child in parent.named_children():
        if child is blocks:
            seen_blocks = True
            continue
        if seen_blocks and _is_norm(child):
            final_norm, final_norm_path = child, f"{parent_path}.{cname}" if parent_path else cname
            break

    attn, mlp, other = [], [], []
    wrappers: list[str] = []
    for name, mod in blocks[0].named_modules():
        if any(name.startswith(f"{w}.") for w in wrappers):
            continue  # inside a PEFT tuner layer: its base_layer and LoRA factors are not the block's linears
        if _is_linear(getattr(mod, "base_layer", None)):
            wrappers.append(name)  # the wrapper (e.g. 'self_attn.q_proj') stands for the linear it wraps
        elif not _is_linear(mod):
            continue
        top = name.split(".")[0].lower()
        if any(w in top for w in _ATTN_WORDS):
            attn.append(name)
        elif any(w in top for w in _MLP_WORDS):
            mlp.append(name)
        else:
            other.append(name)
    if not attn and not mlp:
        raise MidblockError(f"cannot group the linear modules of {root_name}'s blocks into attention and MLP")
    return ModelLayout(blocks, blocks_path, embedding, final_norm, final_norm_path, lm_head, attn, mlp, other)


def get_layout(model: nn.Module) -> ModelLayout:
    """``find_layout`` that sees through a PEFT wrapper."""
    return find_layout(strip_peft(model))


def block_of_param(name: str, layout: ModelLayout) -> int | None:
    """Index of the block a (possibly PEFT-prefixed) parameter name belongs to, or None."""
    key = f"{layout.blocks_path}."
    pos = name.find(key)
    if pos < 0:
        return None
    rest = name[pos + len(key) :]
    head = rest.split(".", 1)[0]
    return int(head) if head.isdigit() else None
