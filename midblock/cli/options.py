"""Command-line options generated from the config dataclasses: one field, one flag, written once.

Each field's flag, help, choices and default come from the dataclass itself:

- the flag is ``--field-name`` unless ``metadata["flag"]`` names another spelling (``--warmup`` for
  ``warmup_steps``); a bool that defaults to True gets a negative flag (``--no-field-name``, or
  ``metadata["flag"]`` with ``metadata["negate"] = True``);
- the help text is ``metadata["help"]``, and the default is appended to it;
- a ``Literal[...]`` type gives the choices, or ``metadata["choices"]`` (the names of a registry, so a new
  entry is offered without editing the field); ``int``/``float``/``str``/``list[int]``/``list[str]`` the parser
  (a comma list, or with ``metadata["repeat"]`` one value per repeated flag); ``metadata["aliases"]`` adds
  other spellings.

A renamed field (:mod:`midblock.aliases`) also takes its old flag (``--limit`` for ``--eval-items``), hidden
from ``--help``: it sets the same value with one warning, and the old and the new flag together are refused.

Fields a command fills itself (``out``, nested configs, mappings that only a YAML file can express) are
skipped by name. :func:`config_kwargs` reads the parsed values back, by field name, for the config's
constructor, so validation stays in the dataclass's ``__post_init__``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any, Literal

from midblock.aliases import old_flags, warn_renamed

_MISSING = dataclasses.MISSING


def plain_text(doc: str | None) -> str:
    """A docstring as terminal text: reST roles and literals unwrapped (``:func:`x``` -> x, ````x```` -> x)."""
    if not doc:
        return ""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc)
    return re.sub(r"``([^`]+)``", r"\1", text).strip()


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parser_for(tp: Any) -> tuple[Any, dict[str, Any]]:
    """(type callable, extra add_argument kwargs) for a field type."""
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return str, {"choices": list(typing.get_args(tp))}
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (str,)
        return _comma_list(_unwrap_optional(inner)), {"metavar": "A,B,..."}
    if tp in (int, float, str):
        return tp, {}
    return str, {}


def _comma_list(kind):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip() != ""]
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of {kind.__name__}") from None

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def _default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _required(f: dataclasses.Field) -> bool:
    """A field the config cannot do without: no default, or ``metadata["required"]`` (a field that must stay
    optional in Python for the dataclass's field order, but that every command line has to give)."""
    no_default = f.default is _MISSING and f.default_factory is _MISSING  # type: ignore[misc]
    return no_default or bool(f.metadata.get("required"))


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def flag_of(f: dataclasses.Field) -> str:
    """The command-line spelling of a config field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_config_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    only_given: bool = False,
    only: tuple[str, ...] | None = None,
) -> None:
    """Add one flag per field of the dataclass ``cls`` (except ``skip``; with ``only``, just those fields);
    ``defaults`` overrides defaults.

    ``only_given``: a flag the user did not type leaves no attribute at all (so it can override a preset or a
    file only when given); the help still shows the dataclass's default."""
    hints = typing.get_type_hints(cls, include_extras=False)
    olds = old_flags(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or (only is not None and f.name not in only):
            continue
        target = _Renaming(parser, olds[f.name]) if f.name in olds else parser
        default = (defaults or {}).get(f.name, _default(f))
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        tp = _unwrap_optional(hints[f.name])
        if tp is bool:
            negate = f.metadata.get("negate", default is True)
            flag = f.metadata.get("flag") or ("--no-" if negate else "--") + f.name.replace("_", "-")
            action = "store_false" if negate else "store_true"
            value = argparse.SUPPRESS if only_given else default
            target.add_argument(
                flag, *f.metadata.get("aliases", ()), dest=f.name, action=action, default=value, help=help_text
            )
            continue
        if f.metadata.get("repeat"):  # a list given one value per flag: --variant A --variant B
            (inner,) = typing.get_args(tp) or (str,)
            flags = [flag_of(f), *f.metadata.get("aliases", ())]
            shown = f" (default: {_shown(default)})" if "default" not in help_text else ""
            metavar = flag_of(f).lstrip("-").upper().replace("-", "_")
            target.add_argument(
                *flags, dest=f.name, type=inner, action="append", default=None, metavar=metavar, help=help_text + shown
            )
            continue
        if f.metadata.get("nargs"):  # a list as several words: --bands 0-2 3-5
            (inner,) = typing.get_args(_unwrap_optional(hints[f.name])) or (str,)
            target.add_argument(
                flag_of(f), dest=f.name, type=inner, nargs=f.metadata["nargs"], default=default, help=help_text
            )
            continue
        kind, extra = _parser_for(hints[f.name])
        if "choices" in f.metadata:
            extra["choices"] = list(f.metadata["choices"])
        shown = f" (default: {_shown(default)})" if "default" not in help_text else ""
        flag = flag_of(f)
        if "choices" not in extra:
            extra.setdefault("metavar", flag.lstrip("-").upper().replace("-", "_"))
        if _required(f) and f.name not in (defaults or {}):  # no default in the config: argparse asks for it
            extra["required"], shown = True, " (required)"
        value = argparse.SUPPRESS if only_given else default
        target.add_argument(
            flag_of(f), dest=f.name, type=kind, default=value, help=f"{help_text}{shown}".strip(), **extra
        )


_SEEN = "_renamed_flags_seen"


def _renamed_action(base: type[argparse.Action], old: str, new: str) -> type[argparse.Action]:
    """``base`` that notes which spelling of a renamed field was typed: the old one warns, both are refused."""

    class Renamed(base):  # type: ignore[misc, valid-type]
        def __call__(self, parser, namespace, values, option_string=None):
            super().__call__(parser, namespace, values, option_string)
            seen = namespace.__dict__.setdefault(_SEEN, {}).setdefault(self.dest, set())
            seen.add(option_string == old)
            if len(seen) == 2:
                parser.error(f"{old} and {new} both given ({old} is the old name of {new}: keep only {new})")
            if option_string == old:
                warn_renamed(old, new, parser.prog)

    return Renamed


class _Renaming:
    """A parser (or group) whose next field's flag also answers to its old spelling, hidden from --help."""

    def __init__(self, parser: Any, old: str | None) -> None:
        self.parser, self.old = parser, old

    def add_argument(self, *flags: str, **kw: Any) -> argparse.Action:
        base = self.parser._registry_get("action", kw.get("action"), kw.get("action"))
        kw["action"] = _renamed_action(base, self.old, flags[0])
        action = self.parser.add_argument(*flags, **kw)
        hidden = kw | {"help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
        hidden.pop("required", None)  # the new flag says what is required; the old one never is
        self.parser.add_argument(self.old, **hidden)
        return action


def config_kwargs(args: argparse.Namespace, cls: type, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The parsed values of ``cls``'s fields, by field name, for its constructor (a repeatable flag never
    given leaves the field's own default)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if value is None and f.metadata.get("repeat"):
            continue
        out[f.name] = value
    return out


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; every option's default shown, unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.nargs == 0:  # an on/off flag: its presence is the value, so a "default: True" only misleads
            return text
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {_shown(action.default)})".strip()


def add_command(sub: argparse._SubParsersAction, name: str, *, help: str, doc: str | None) -> argparse.ArgumentParser:
    """A subcommand whose description is its module docstring as plain text, defaults shown."""
    return sub.add_parser(name, help=help, description=plain_text(doc), formatter_class=HelpFormatter)
