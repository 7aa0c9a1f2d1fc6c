"""``midblock export`` is generated from ExportConfig like every other command, and says what the module's older
spelling (``python -m midblock.experiments.export``) says."""

from pathlib import Path

from midblock.experiments.export import derive
from midblock.experiments.export import main as module_main
from midblock.experiments.table import pooled_rows
from tests.conftest import run_cli

PUBLISHED = Path(__file__).resolve().parents[2] / "docs" / "results" / "band-landscape"


def test_derive_prints_the_published_rows_as_the_module_does(capsys):
    rc, out, err = run_cli("export", "--mode", "derive", "--dest", str(PUBLISHED), "--baseline", "paper")
    assert rc == 0, err
    assert module_main(["derive", str(PUBLISHED), "paper"]) == 0
    assert out == capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split("\t")[:3] == ["arm", "band", "lr"] and any(r.startswith("uniform\t") for r in rows)


def test_derive_as_markdown_quotes_each_pooled_row_in_the_docs_formats():
    """One table row per pooled arm, holding the numbers docs/results.md must quote in the formats its test
    looks for (accuracy, difference, simultaneous interval, Holm p, perplexity change), with what the intervals
    cover said above the table."""
    rc, out, err = run_cli("export", "--mode", "derive", "--dest", str(PUBLISHED), "--format", "markdown")
    assert rc == 0, err
    intro, _, header, _, *lines = out.splitlines()
    assert "seeds x items" in intro and "4 arm(s) against `uniform`" in intro and "no interval" in intro
    assert "| vs uniform, points [95% CI] |" in header
    by_arm = {line.split(" | ")[0].lstrip("| "): line for line in lines}
    rows = pooled_rows(derive(PUBLISHED))
    assert list(by_arm) == [r["arm"] for r in rows]

    def pts(x):
        return f"{100 * x:+.1f}"

    for r in rows:
        line = by_arm[r["arm"]]
        assert f"| {100 * r['accuracy']:.1f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] |" in line
        if r["arm"] in ("base", "uniform"):
            continue
        assert f"| {pts(r['diff_vs_baseline'])} [{pts(r['diff_low'])}, {pts(r['diff_high'])}] |" in line
        assert f"| [{pts(r['diff_sim_low'])}, {pts(r['diff_sim_high'])}] |" in line
        p = "<0.001" if r["diff_p_holm"] < 0.001 else f"{r['diff_p_holm']:.3f}"
        assert f"| {p} |" in line and f"| {r['ppl_change_pct']:+.1f}% |" in line


def test_settings_that_do_not_fit_the_mode_are_one_line_errors(tmp_path):
    cases = [
        (["--mode", "raw", "--from", str(tmp_path), "--dest", str(tmp_path / "x"), "--format", "markdown"], "--format"),
        (["--mode", "derive", "--dest", str(PUBLISHED), "--format", "html"], "invalid choice"),
        (["--mode", "derive", "--dest", str(PUBLISHED), "--from", str(tmp_path)], "drop --from"),
        (["--dest", str(tmp_path / "x")], "--from COMPARE_DIR"),
        (["--mode", "state", "--from", str(tmp_path), "--dest", str(tmp_path / "x"), "--baseline", "a"], "--baseline"),
        (["--from", str(tmp_path)], "required"),
    ]
    for argv, words in cases:
        rc, _, err = run_cli("export", *argv)
        assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, (argv, err)
