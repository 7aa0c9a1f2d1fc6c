"""One name per concept, and the names some settings had before: the one table every loader reads.

The names, the same in the library, its configs, grid files and on the command line (old names in brackets):

- ``eval_items``: the test (or dev) items an evaluation scores: ``eval``, ``compare`` and its ``lr_search``,
  ``swap``/``interpolate``, ``demo`` (was ``limit`` and ``eval_limit``);
- ``train_rows``: the training rows a run uses, the first N after any dev hold-out (was ``limit``);
- ``eval_loss_items``: the examples of a training run's evaluation-loss set (was ``eval_limit``);
- ``samples``: the texts an analysis reads per dataset (``analyze``, ``earlyexit``, ``auto_analysis``);
- ``labelled_head``: the LM head runs only at labelled positions; ``--no-labelled-head`` runs it at every
  position (was ``head_at_labels`` and ``--full-logits``);
- ``out``: the output directory of a config or a function, flag ``--out`` (was ``out_dir``); a model written
  elsewhere is ``save`` (``--save``).

An old name still works, with one :class:`RenamedWarning` (a ``DeprecationWarning``; the command line prints
it as ``midblock: warning: ...``): in a dict or YAML config (:func:`renamed`), a command-line flag (hidden
from ``--help``, see :mod:`midblock.cli.options`) and the renamed keyword arguments (:func:`renamed_kwargs`).
The old and the new name given together is a one-line :class:`~midblock.errors.MidblockError`.

Stored results keep the spelling they were keyed under: :func:`stored` maps the new names back before a
fingerprint is hashed, so a run made before the rename is found again (nothing is recomputed).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from midblock.errors import MidblockError

# where -> {old name: new name}. ``where`` is a config class (its fields, its from_dict, its flags; a subclass
# inherits its base's entries) or a mapping inside one (``lr_search``).
RENAMED: dict[str, dict[str, str]] = {
    "TrainConfig": {"limit": "train_rows", "eval_limit": "eval_loss_items", "head_at_labels": "labelled_head"},
    "EvalConfig": {"limit": "eval_items"},
    "CompareConfig": {"eval_limit": "eval_items"},
    "lr_search": {"eval_limit": "eval_items"},
    "SurgeryConfig": {"limit": "eval_items"},
}
# Old command-line spellings that were not ``--`` + the old field name (field -> old flag).
OLD_FLAGS: dict[str, dict[str, str]] = {"TrainConfig": {"labelled_head": "--full-logits"}}


class RenamedWarning(DeprecationWarning):
    """An old name of a setting, flag or keyword argument was used (it still works)."""


def warn_renamed(old: str, new: str, where: str, stacklevel: int = 3) -> None:
    """One warning that ``old`` is now ``new`` (``where``: the config or function that took it)."""
    warnings.warn(f"{where}: '{old}' is deprecated, use '{new}'", RenamedWarning, stacklevel=stacklevel)


def table(where: str | type) -> dict[str, str]:
    """The ``{old: new}`` names of a config class (its bases' too) or of a named mapping."""
    if isinstance(where, str):
        return dict(RENAMED.get(where, {}))
    out: dict[str, str] = {}
    for klass in reversed(where.__mro__):
        out |= RENAMED.get(klass.__name__, {})
    return out


def old_flags(cls: type) -> dict[str, str]:
    """``{field: old flag}`` of a config class: the spellings its command line still accepts, hidden."""
    out = {new: "--" + old.replace("_", "-") for old, new in table(cls).items()}
    for klass in reversed(cls.__mro__):
        out |= OLD_FLAGS.get(klass.__name__, {})
    return out


def _name(where: str | type) -> str:
    return where if isinstance(where, str) else where.__name__


def renamed(d: Mapping[str, Any], where: str | type, *, warn: bool = True, label: str | None = None) -> dict[str, Any]:
    """``d`` with every old name replaced by the new one, in place of it (one warning each unless ``warn`` is
    False: a file an earlier version wrote). Both names at once: a one-line MidblockError. ``label``: what the
    messages call ``d`` (default: ``where``)."""
    names = table(where)
    label = label or _name(where)
    if not isinstance(d, Mapping) or not any(k in names for k in d):
        return d if not isinstance(d, Mapping) else dict(d)
    out: dict[str, Any] = {}
    for k, v in d.items():
        new = names.get(k)
        if new is None:
            out[k] = v
            continue
        if new in d:
            raise MidblockError(
                f"{label} has both '{k}' and '{new}'", hint=f"'{k}' is the old name of '{new}': keep only '{new}'"
            )
        if warn:
            warn_renamed(k, new, label, stacklevel=4)
        out[new] = v
    return out


def stored(d: Mapping[str, Any], where: str | type) -> dict[str, Any]:
    """``d`` with the new names mapped back to the spelling results were first keyed under (for fingerprints:
    a key computed after the rename equals the one computed before it)."""
    back = {new: old for old, new in table(where).items()}
    return {back.get(k, k): v for k, v in d.items()}


def stored_grid(grid: Mapping[str, Any]) -> dict[str, Any]:
    """A compare grid (a dict, as a preset gives it) in the stored spelling: its own keys, ``train``,
    every method entry's ``train`` and ``lr_search``."""
    out = stored(grid, "CompareConfig")
    if isinstance(out.get("train"), Mapping):
        out["train"] = stored(out["train"], "TrainConfig")
    if isinstance(out.get("lr_search"), Mapping):
        out["lr_search"] = stored(out["lr_search"], "lr_search")
    if isinstance(out.get("methods"), list):
        out["methods"] = [
            m | {"train": stored(m["train"], "TrainConfig")} if isinstance(m, Mapping) and _has_train(m) else m
            for m in out["methods"]
        ]
    return out


def _has_train(m: Mapping[str, Any]) -> bool:
    return isinstance(m.get("train"), Mapping)


F = TypeVar("F", bound=Callable[..., Any])


def renamed_kwargs(**names: str) -> Callable[[F], F]:
    """A function that still takes its old keyword names (``old="new"``), with one warning each."""

    def wrap(fn: F) -> F:
        where = fn.__qualname__.removesuffix(".__init__") + "()"

        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            for old, new in names.items():
                if old in kwargs:
                    if new in kwargs:
                        raise MidblockError(
                            f"{where} got both '{old}' and '{new}'", hint=f"'{old}' is the old name: pass only '{new}'"
                        )
                    warn_renamed(old, new, where)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


C = TypeVar("C", bound=type)


def accepts_old_names(cls: C) -> C:
    """A config class (decorate it above ``@dataclass``) whose constructor still takes its old field names."""
    cls.__init__ = renamed_kwargs(**table(cls))(cls.__init__)  # type: ignore[misc]
    return cls
