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
