"""The accuracy-against-forgetting figure from synthetic cell records."""

from midblock.reporting.pareto import pareto_front, pareto_point, plot_pareto, x_scale


def _rec(arm, lr, ppl, seed=0):
    return {"label": arm, "seed": seed, "lr": lr, "ppl": {"ppl": ppl, "per_text": [[1.0, 1]]}}


def test_points_front_and_figure(tmp_path):
    pts = [
        pareto_point(_rec("uniform", 1e-3, 11.0), 0.40, "dev", 10.0),
        pareto_point(_rec("uniform", 2e-3, 12.0), 0.50, "dev", 10.0),
        pareto_point(_rec("band", 1e-3, 10.5), 0.30, "dev", 10.0),
        pareto_point(_rec("band", 2e-3, 12.5), 0.45, "dev", 10.0),  # beaten by uniform at 2e-3 on both axes
        pareto_point(_rec("uniform", 2e-3, 12.2, seed=1), 0.55, "test", 10.0),
        pareto_point(_rec("band", 1e-3, 10.4, seed=1), 0.35, "test", 10.0),
    ]
    assert abs(pts[0]["ppl_change_pct"] - 10.0) < 1e-9  # 11 against the base 10: +10%
    assert pareto_point({"label": "x", "ppl": None}, 0.5, "dev", 10.0) is None  # no forgetting measured
    front = pareto_front([p for p in pts if p["split"] == "dev"], "ppl_change_pct")
    assert [(p["arm"], p["lr"]) for p in front] == [("band", 1e-3), ("uniform", 1e-3), ("uniform", 2e-3)]
    out = tmp_path / "pareto.png"
    assert plot_pareto(pts, out, "synthetic")
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 10_000
    # without a base, the raw perplexity is the x axis; with no point, nothing is written
    assert plot_pareto([pareto_point(_rec("u", None, 11.0), 0.4, "test", None)], tmp_path / "raw.png")
    assert not plot_pareto([], tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_a_panel_with_a_diverged_cell_gets_a_symlog_axis(tmp_path):
    assert x_scale([10.5, 12.0, 13.0]) == "linear"
    assert x_scale([80.0, 130.0, 260_000.0]) == "symlog"  # a rate that diverged: 3,000x the others
    assert x_scale([]) == "linear"
    pts = [pareto_point(_rec("u", 8e-3, 260_000.0), 0.01, "dev", 50.0)]
    pts += [pareto_point(_rec("u", 1e-3, 100.0, seed=s), 0.4, "test", 50.0) for s in range(3)]
    assert plot_pareto(pts, tmp_path / "diverged.png")
