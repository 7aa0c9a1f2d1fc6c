"""``midblock export`` is generated from ExportConfig like every other command, and says what the module's older
spelling (``python -m midblock.experiments.export``) says."""

from pathlib import Path

from midblock.experiments.export import main as module_main
from tests.conftest import run_cli

PUBLISHED = Path(__file__).resolve().parents[2] / "docs" / "results" / "band-landscape"


def test_derive_prints_the_published_rows_as_the_module_does(capsys):
    rc, out, err = run_cli("export", "--mode", "derive", "--dest", str(PUBLISHED), "--baseline", "paper")
    assert rc == 0, err
    assert module_main(["derive", str(PUBLISHED), "paper"]) == 0
    assert out == capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split("\t")[:3] == ["arm", "band", "lr"] and any(r.startswith("uniform\t") for r in rows)


def test_settings_that_do_not_fit_the_mode_are_one_line_errors(tmp_path):
    cases = [
        (["--mode", "derive", "--dest", str(PUBLISHED), "--from", str(tmp_path)], "drop --from"),
        (["--dest", str(tmp_path / "x")], "--from COMPARE_DIR"),
        (["--mode", "state", "--from", str(tmp_path), "--dest", str(tmp_path / "x"), "--baseline", "a"], "--baseline"),
        (["--from", str(tmp_path)], "required"),
    ]
    for argv, words in cases:
        rc, _, err = run_cli("export", *argv)
        assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, (argv, err)
