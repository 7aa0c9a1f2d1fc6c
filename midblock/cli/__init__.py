"""The ``midblock`` command line: each subcommand is a thin wrapper over a library function.

User mistakes (``MidblockError``) print one line and exit 2; ``--debug`` shows the traceback.

Each command's options are generated from its config dataclass (``options.py``); the config modules import no
torch. The library itself is imported inside each command's ``run()``: that is why command modules import
there, so that building the parser (``midblock --help``) loads no model library (tests/cli/test_cli_startup.py).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING

from midblock.errors import MidblockError

if TYPE_CHECKING:
    from typing import TextIO

# Subcommand modules under midblock.cli; each defines register(subparsers).
COMMANDS = [
    "layers",
    "train",
    "merge",
    "monitor",
    "eval",
    "compare",
    "export",
    "analyze",
    "swap",
    "interpolate",
    "earlyexit",
    "correlate",
    "profiles",
    "demo",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would print the usage block too)
        self.exit(2, f"midblock: error: {message} (see '{self.prog} --help')\n")


def seed_arg(text: str) -> int:
    """``--seed``: an integer in [0, 2**32), refused at parsing (one line) rather than by a library later."""
    from midblock.validation import SEED_LIMIT

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} is out of range; seeds are integers in [0, {SEED_LIMIT - 1}]")
    return value


def common_args(p: argparse.ArgumentParser, *, seed: bool = True, out: bool | str = True, models: bool = True) -> None:
    """The conventions every subcommand shares (``models``: the command loads models; ``out="required"``: the
    command cannot run without an output directory, and argparse says so in one line)."""
    if out:
        required = out == "required"
        what = "directory for everything this command writes" + (" (required)" if required else "")
        p.add_argument("--out", required=required, help=what)
    if seed:
        p.add_argument("--seed", type=seed_arg, default=0, help="random seed (data order, init, sampling)")
    if models:
        p.add_argument(
            "--trust-remote-code",
            action="store_true",
            help="allow model directories to run their own Python code (auto_map); off by default",
        )
    p.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="midblock", description="Layer-wise analysis of fine-tuning and Mid-Block Efficient Tuning.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"midblock.cli.{name}").register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"midblock {version('midblock')}"
    except PackageNotFoundError:
        return "midblock (source)"


def _show_renamed(show):
    """``warnings.showwarning`` that prints an old setting name's warning as one line (others as before)."""
    from midblock.aliases import RenamedWarning

    def display(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, RenamedWarning):
            print(f"midblock: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return display


def main(argv: list[str] | None = None) -> int:
    from midblock.aliases import RenamedWarning

    with warnings.catch_warnings():  # an old name of a flag or grid setting: one line on stderr, once per place
        warnings.simplefilter("default", RenamedWarning)
        warnings.showwarning = _show_renamed(warnings.showwarning)
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # the opt-in travels in the environment, so processes this command starts (launchers, workers) inherit it
    from midblock.models.loading import TRUST_REMOTE_CODE_ENV

    saved_trust = os.environ.get(TRUST_REMOTE_CODE_ENV)
    if getattr(args, "trust_remote_code", False):
        os.environ[TRUST_REMOTE_CODE_ENV] = "1"
    try:
        rc = args.func(args)
        return int(rc or 0)
    except MidblockError as e:
        if debug:
            raise
        print(f"midblock: error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("midblock: interrupted", file=sys.stderr)
        return 130
    finally:  # main() also runs in-process (tests, notebooks): leave the environment as it was
        if saved_trust is None:
            os.environ.pop(TRUST_REMOTE_CODE_ENV, None)
        else:
            os.environ[TRUST_REMOTE_CODE_ENV] = saved_trust


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
