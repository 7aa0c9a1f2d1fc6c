"""Named registries: one table from a name to the small unit that implements it.

Whatever a user picks by name (a task, an evaluation protocol, an answer extractor, a metric family, a
comparison preset) is an entry of a :class:`Registry`: a function or a small dataclass with a docstring,
registered once under its name. Code looks an entry up with :meth:`Registry.lookup`, which refuses an
unknown name with one line that lists the known ones; the command line takes its choices and help lists from
the registry (:meth:`Registry.names`, :meth:`Registry.describe`), so a new entry appears there by itself. The
layer-selection strategies (:mod:`midblock.selection`) are the same pattern with a spec language on top.

A registry is a read-only mapping in registration order (``name in R``, ``R[name]``, ``list(R)``,
``", ".join(R)``), so code that held a tuple or a dict of names keeps working.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from midblock.errors import MidblockError

T = TypeVar("T")


def doc_of(entry: Any) -> str:
    """An entry's description: its ``doc`` attribute (a dataclass entry) or its own docstring (a function)."""
    doc = getattr(entry, "doc", None)
    if not doc and (inspect.isfunction(entry) or inspect.ismethod(entry)):
        doc = entry.__doc__
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def summary_of(entry: Any) -> str:
    """The first sentence-line of an entry's description, for a help list (reST literals unwrapped)."""
    first = doc_of(entry).split("\n\n")[0]
    return " ".join(first.replace("``", "").split())


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry, in registration order; ``what`` names the kind in errors ("unknown task 'x'")."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._own: dict[str, T] = {}
        self._view: tuple[Registry[T], Callable[[T], bool]] | None = None  # a subset: (parent, keep)

    @property
    def _entries(self) -> dict[str, T]:
        if self._view is None:
            return self._own
        parent, keep = self._view
        return {n: e for n, e in parent._entries.items() if keep(e)}

    def register(self, name: str, entry: T | None = None) -> Any:
        """Add ``entry`` under ``name``; without ``entry``, a decorator. Every entry must describe itself
        (a docstring, or a ``doc`` field), and a name is registered once."""

        def add(e: T) -> T:
            if self._view is not None:
                raise ValueError(f"register {self.what} '{name}' in the registry this one is a subset of")
            if name in self._entries:
                raise ValueError(f"{self.what} '{name}' is registered twice")
            if not doc_of(e):
                raise ValueError(f"{self.what} '{name}' has no docstring")
            self._own[name] = e
            return e

        return add if entry is None else add(entry)

    def lookup(self, name: str, *, also: tuple[str, ...] = ()) -> T:
        """The entry named ``name``; an unknown name is one MidblockError listing the known names (and
        ``also``: names the caller handles before the registry, e.g. ``eval --task ppl``)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable value from a YAML file
            raise self.unknown(name, also=also) from None

    def unknown(self, name: Any, *, also: tuple[str, ...] = ()) -> MidblockError:
        """The one-line error for a name that is not registered."""
        return MidblockError(f"unknown {self.what} '{name}'", hint="use " + ", ".join([*self._entries, *also]))

    def names(self) -> list[str]:
        return list(self._entries)

    def doc(self, name: str) -> str:
        return doc_of(self.lookup(name))

    def describe(self, indent: str = "  ", width: int = 110) -> str:
        """Each entry's name and summary, for a command's help (summaries wrapped at ``width``)."""
        col = max((len(n) for n in self._entries), default=0) + len(indent) + 2
        return "\n".join(
            textwrap.fill(summary_of(e), width, initial_indent=f"{indent}{n}".ljust(col), subsequent_indent=" " * col)
            for n, e in self._entries.items()
        )

    def subset(self, what: str, keep: Callable[[T], bool]) -> Registry[T]:
        """A view of the entries ``keep`` accepts, in the same order (e.g. the tasks that can be scored); an
        entry registered in this registry later appears in the view too."""
        sub: Registry[T] = Registry(what)
        sub._view = (self, keep)
        return sub

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"
