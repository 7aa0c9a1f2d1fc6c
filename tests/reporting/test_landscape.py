"""The accuracy-and-forgetting-by-depth figure of a comparison, from synthetic pooled rows."""

import matplotlib.pyplot as plt

from midblock.reporting.compare_report import plot_landscape


def _row(arm, band, acc):
    return {"arm": arm, "seed": "mean(3)", "band": band, "accuracy": acc, "ci_low": acc - 0.05,
            "ci_high": acc + 0.05, "ci_covers": "seeds x items", "ppl_change_pct": 30.0,
            "ppl_change_low": 28.0, "ppl_change_high": 32.0}  # fmt: skip


def test_each_run_of_consecutive_trained_blocks_is_its_own_segment(tmp_path, monkeypatch):
    """A scattered selection (CKA-select) is drawn over the blocks it trained, gaps included; a band is one
    segment; the legend names each arm once, outside the axes."""
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)  # keep the figure the function would close
    rows = [_row("uniform", "0-9", 0.5), _row("cka", "0-1,4,7-9", 0.45)]
    out = tmp_path / "landscape.png"
    plot_landscape(rows, 10, out, "synthetic")
    assert out.read_bytes()[:4] == b"\x89PNG"
    (fig,) = figs
    top, bottom = fig.axes
    spans = {color: [] for color in ("C0", "C1")}
    for line in top.lines:
        spans[line.get_color()].append(tuple(round(x, 6) for x in line.get_xdata()))
    assert spans == {"C0": [(0.0, 1.0)], "C1": [(0.0, 0.2), (0.4, 0.5), (0.7, 1.0)]}
    assert len(bottom.lines) == 1 + 4  # the zero line and the four segments' forgetting
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["uniform (blocks 0-9)", "cka (blocks 0-1,4,7-9)"]
    assert not top.get_legend()
    monkeypatch.undo()
    plt.close(fig)
