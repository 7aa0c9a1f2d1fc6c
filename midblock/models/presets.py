"""Models built from configurations with seeded random weights: tests, benchmarks, GPU timing.

Tiny presets have a few million parameters and a byte-level tokenizer; ``olmo2-1b`` and ``olmo2-7b``
carry the real shapes of OLMo-2-0425-1B and OLMo-2-1124-7B (weights random) so GPU timing needs no
download. ``smollm2-shape`` is SmolLM2-135M's shape, for CPU benchmarks without the GGUF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from midblock.errors import MidblockError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

# A tiny model (~1.3M parameters): 6 blocks (enough for 5 segments), d=128, 4 heads.
# The vocabulary fits the byte-level tokenizer (256 bytes + specials).
_TINY = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=6,
    num_attention_heads=4,
    max_position_embeddings=512,
    vocab_size=272,
    bos_token_id=256,
    eos_token_id=256,
    pad_token_id=256,
)

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-tiny": ("llama", dict(_TINY, num_key_value_heads=2, tie_word_embeddings=False)),
    "olmo2-tiny": ("olmo2", dict(_TINY, num_key_value_heads=4)),
    "qwen2-tiny": ("qwen2", dict(_TINY, num_key_value_heads=2)),
    "mistral-tiny": ("mistral", dict(_TINY, num_key_value_heads=2, sliding_window=None)),
    "gemma3-tiny": (
        "gemma3_text",
        dict(
            _TINY,
            bos_token_id=259,  # the tokenizer's own BOS (see preset_tokenizer), as Gemma's
            num_key_value_heads=2,
            head_dim=32,
            sliding_window=64,
            layer_types=["sliding_attention"] * 5 + ["full_attention"],
        ),
    ),
    "phi3-tiny": ("phi3", dict(_TINY, num_key_value_heads=4)),
    "gpt2-tiny": (
        "gpt2",
        dict(
            n_embd=128,
            n_inner=384,
            n_layer=6,
            n_head=4,
            n_positions=512,
            vocab_size=272,
            bos_token_id=256,
            eos_token_id=256,
            pad_token_id=256,
        ),
    ),
    "gptneox-tiny": ("gpt_neox", dict(_TINY, rotary_pct=0.25)),
    # 8 blocks: enough depth for bands and segments in tests.
    "llama-8l": ("llama", dict(_TINY, num_hidden_layers=8, num_key_value_heads=2)),
    # ~35M parameters at a realistic width: CPU benchmarks and end-to-end tests.
    "llama-35m": (
        "llama",
        dict(
            hidden_size=512,
            intermediate_size=1280,
            num_hidden_layers=12,
            num_attention_heads=8,
            num_key_value_heads=4,
            vocab_size=8192,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        ),
    ),
    "smollm2-shape": (
        "llama",
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
    ),
    "olmo2-1b": (
        "olmo2",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=16,
            num_key_value_heads=16,
            vocab_size=100352,
            max_position_embeddings=4096,
            rope_theta=500000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
    ),
    "olmo2-7b": (
        "olmo2",
        dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=100352,
            max_position_embeddings=4096,
            rope_theta=500000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
    ),
}

GEMMA_BOS = "<bos>"

TINY_PRESETS = [
    "llama-tiny",
    "olmo2-tiny",
    "qwen2-tiny",
    "mistral-tiny",
    "gemma3-tiny",
    "phi3-tiny",
    "gpt2-tiny",
    "gptneox-tiny",
]


def preset_config(name: str) -> PretrainedConfig:
    """The transformers config of a preset."""
    from transformers import AutoConfig

    if name not in PRESETS:
        raise MidblockError(f"unknown random preset '{name}'", hint="choose one of " + ", ".join(PRESETS))
    model_type, kwargs = PRESETS[name]
    kwargs = dict(kwargs)
    cfg = AutoConfig.for_model(model_type, **kwargs)
    return cfg


def build_random_model(name: str, seed: int = 0, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A model of preset ``name`` with weights drawn from a generator seeded by ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = preset_config(name)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype or torch.float32, trust_remote_code=False)
    finally:
        torch.random.set_rng_state(state)
    model.eval()
    return model


def preset_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The tokenizer of preset ``name``: the byte tokenizer; for Gemma presets one that, like Gemma's,
    starts every encoded text with its own BOS token (id 259)."""
    if name not in PRESETS:
        raise MidblockError(f"unknown random preset '{name}'", hint="choose one of " + ", ".join(PRESETS))
    return byte_tokenizer(bos=GEMMA_BOS if PRESETS[name][0].startswith("gemma") else None)


def byte_tokenizer(bos: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + specials) built offline, with a simple chat template.

    ``bos``: a distinct BOS token put in front of every text by default (``add_special_tokens=True``), as
    Gemma's tokenizer does; without it BOS is ``<|endoftext|>`` and nothing is added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|im_start|>", "<|im_end|>"] + ([bos] if bos else [])
    if bos:  # ids: 256 bytes, <|endoftext|> 256, the two chat markers, then BOS (259)
        tok.add_special_tokens(["<|endoftext|>", *specials])
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos or "<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials,
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.model_max_length = 512
    return fast
