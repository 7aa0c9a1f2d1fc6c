"""Model loading, random presets and architecture introspection."""

from midblock.models.introspect import ModelLayout, get_layout
from midblock.models.loading import DEFAULT_MODEL, apply_delta, load_model, load_tokenizer, parse_spec

__all__ = ["DEFAULT_MODEL", "ModelLayout", "apply_delta", "get_layout", "load_model", "load_tokenizer", "parse_spec"]
