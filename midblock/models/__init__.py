"""Model loading, random presets and architecture introspection.

The public names load lazily: the light parts of this package (spec parsing, the adapter metadata) must not
pull in torch through ``import midblock.models``.
"""

from __future__ import annotations

from midblock._lazy import lazy_getattr

_LAZY = {
    "DEFAULT_MODEL": "midblock.models.loading",
    "ModelLayout": "midblock.models.introspect",
    "apply_delta": "midblock.models.loading",
    "get_layout": "midblock.models.introspect",
    "load_model": "midblock.models.loading",
    "load_tokenizer": "midblock.models.loading",
    "parse_spec": "midblock.models.loading",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
