"""The command line builds every subcommand's options (generated from the config dataclasses) without
importing torch or transformers: `midblock --help` answers at once."""

import subprocess
import sys


def test_building_the_parser_imports_no_model_library():
    code = (
        "import sys, midblock.cli as c; c.build_parser();"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_help_shows_defaults_and_no_rest_markup():
    from midblock.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "``" not in text and ":func:" not in text and ":mod:" not in text, name
        if name in ("train", "eval", "analyze", "demo", "compare"):
            assert "(default:" in text, name


def test_no_on_off_flag_shows_a_default():
    """``--no-progress ... (default: True)`` reads as "progress is hidden by default": an on/off flag's help
    names no default, since the flag's presence is its value."""
    from midblock.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.nargs == 0 and action.option_strings:
                shown = p.formatter_class(prog=name)._get_help_string(action) or ""
                assert "(default:" not in shown, (name, action.option_strings)


def test_required_settings_are_required_flags(capsys):
    """A setting a command cannot do without is a required flag (argparse's one line, exit 2), not an optional
    flag re-checked by hand: the surgery configs' base and variant, and --out where results must go."""
    import pytest

    from midblock.cli import build_parser

    parser = build_parser()
    cases = [
        ["swap", "--variant", "v", "--out", "o"],
        ["swap", "--base", "b", "--out", "o"],
        ["swap", "--base", "b", "--variant", "v"],
        ["train", "--model", "random:llama-tiny"],
        ["correlate", "run"],
    ]
    for argv in cases:
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 2, argv
        err = capsys.readouterr().err
        assert "required" in err and len(err.strip().splitlines()) == 1, (argv, err)
    args = parser.parse_args(["swap", "--base", "b", "--variant", "v", "--out", "o"])
    assert (args.base, args.variant, args.out) == ("b", "v", "o")
    swap_help = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices["swap"]
    assert "(required)" in swap_help.format_help()
