"""The short report table (`export --mode derive --format markdown`): what its sentence says each interval covers."""

from midblock.reporting.compare_report import summary_markdown


def _row(arm, seed="mean(3)", **kw):
    row = {
        "arm": arm,
        "seed": seed,
        "band": "0-29",
        "accuracy": 0.5,
        "ci_low": 0.45,
        "ci_high": 0.55,
        "ci_covers": "seeds x items",
        "n_seeds": 3,
        "approximate": True,
        "ppl_change_pct": 38.8,
        "ppl_change_low": 35.9,
        "ppl_change_high": 42.0,
    }
    return {**row, **kw}


def test_forgetting_interval_names_its_variation_once():
    for covers in ("seeds x texts", "texts"):
        intro = summary_markdown([_row("uniform", ppl_covers=covers)], "uniform").splitlines()[0]
        assert intro.count("seeds x") == 1 + covers.count("seeds x")
        assert f"forgetting: general-text perplexity change against the base model, interval over {covers}." in intro
        assert "seeds x items (approx., 3 seeds)" in intro


def test_rows_without_per_text_loglikelihoods_say_there_is_no_forgetting_interval():
    intro, _, header, _, line = summary_markdown([_row("uniform", ppl_change_low=None)], "uniform").splitlines()
    assert "no interval (the cells hold no per-text log-likelihoods)" in intro
    assert "| vs uniform, points [95% CI] |" in header and "| +38.8% |" in line


def test_forgetting_differences_carry_their_holm_p():
    rows = [
        _row("uniform", ppl_covers="seeds x texts"),
        _row(
            "paper",
            ppl_covers="seeds x texts",
            ppl_diff=-5.2,
            ppl_diff_low=-8.5,
            ppl_diff_high=-1.8,
            ppl_diff_p_holm=0.0064,
            n_comparisons=2,
            diff_p_holm=0.9,
        ),
        _row(
            "auto",
            ppl_covers="seeds x texts",
            ppl_diff=2.5,
            ppl_diff_low=0.6,
            ppl_diff_high=4.8,
            ppl_diff_p_holm=0.0004,
            n_comparisons=2,
            diff_p_holm=1.0,
        ),
    ]
    intro, _, header, _, uniform, paper, auto = summary_markdown(rows, "uniform").splitlines()
    assert "its differences against `uniform`: Holm-adjusted p over 2 arm(s)" in intro
    assert header.endswith("| vs uniform, points [95% CI] | Holm p |")
    assert paper.endswith("| -5.2 [-8.5, -1.8] | 0.006 |") and auto.endswith("| +2.5 [+0.6, +4.8] | <0.001 |")
    assert uniform.endswith("|  |  |")


def test_trained_blocks_do_not_repeat_the_arm_name():
    rows = [
        _row("uniform"),
        _row("cka-select:0.5", selection="cka-select:0.5", band="0-1,3-4"),
        _row("lisa:18/20:blocks", selection="lisa:18/20:blocks (depth 29.6/switch)", band="0-29"),
        _row("mine", selection="spectrum:60:blocks", band="0-29"),
        _row("lisa", selection="lisa:18/20:blocks", band="0-29"),
    ]
    lines = summary_markdown(rows, "uniform").splitlines()[4:]
    assert [line.split(" | ")[1] for line in lines] == [
        "0-29",
        "0-1,3-4",
        "(depth 29.6/switch) 0-29",
        "spectrum:60:blocks 0-29",
        "lisa:18/20:blocks 0-29",
    ]
