"""Layer-profile figures and the analysis report section."""

from __future__ import annotations

from midblock.analysis.report import analysis_section
from midblock.reporting.plots import plot_profiles
from midblock.reporting.report import add_section


def _rows(L=10):
    rows = []
    for v in ("base", "tuned"):
        for layer in range(L + 1):
            rows.append(
                dict(
                    variant=v,
                    dataset="gsm8k",
                    layer=layer,
                    depth=layer / L,
                    metric="effective_rank",
                    value=0.5 + layer / 40,
                )
            )
            if v != "base":
                rows.append(
                    dict(
                        variant=v,
                        dataset="gsm8k",
                        layer=layer,
                        depth=layer / L,
                        metric="cka",
                        value=1.0 - (layer / L) ** 3,
                    )
                )
                rows.append(
                    dict(
                        variant=v,
                        dataset="gsm8k",
                        layer=layer,
                        depth=layer / L,
                        metric="condition_number",
                        value=float("inf") if layer == 0 else 10.0 + layer,
                    )
                )
    return rows


def test_one_png_per_family_with_data(tmp_path):
    names = plot_profiles(_rows(), tmp_path, 10, band=[2, 3, 4, 5, 6, 7], title="t")
    assert sorted(names) == ["norms.png", "rank.png", "similarity.png"]
    for n in names:
        data = (tmp_path / n).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(tmp_path.glob(".*tmp*"))


def test_report_section_embeds_plots_and_reads_profile(tmp_path):
    rows = _rows()
    names = plot_profiles(rows, tmp_path / "plots", 10, band=[2, 3, 4])
    results = {
        "config": {"base": "random:llama-8l"},
        "models": ["base", "tuned"],
        "datasets": {"gsm8k": 8},
        "num_blocks": 10,
        "layers": list(range(11)),
        "warnings": ["dataset gsm8k: 8 samples available, 9 asked"],
        "plots": [f"plots/{n}" for n in names],
        "recommended_band": {
            "spec": "2-4",
            "indices": [2, 3, 4],
            "rule": "r",
            "evidence": {"mode": "variant", "score": [0.0] * 10},
        },
    }
    html = add_section(tmp_path, analysis_section(results, rows)).read_text()
    assert html.count("data:image/png;base64") == len(names)
    assert "Recommended band: <code>2-4</code>" in html
    assert "largest representation change (1 - CKA = 1) at layer 10" in html
    assert "8 samples available, 9 asked" in html
    assert "Threshold sensitivity" not in html  # an old result without the sensitivity: nothing to show


def test_report_section_shows_the_threshold_sensitivity(tmp_path):
    from midblock.analysis.recommend import recommend_band

    band = recommend_band({"s": [0.0] * 6 + [0.3, 0.52, 1.0, 1.0]}, 10)
    results = {"config": {"base": "b"}, "models": ["base", "t"], "datasets": {"arith": 8}, "num_blocks": 10}
    results |= {"layers": list(range(11)), "warnings": [], "plots": [], "recommended_band": band}
    html = add_section(tmp_path, analysis_section(results, [])).read_text()
    assert "returns <code>2-6</code> for every tau in (0.3, 0.52]" in html
    assert "knife-edge" in html and "band at each threshold" in html and "<td>0.70</td>" in html
