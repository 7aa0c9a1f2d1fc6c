"""The analysis section of ``report.html``: the recommended band, a short reading of the profile, the plots."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from midblock.reporting.report import Section, esc, table_html


def _reading(results: dict[str, Any], rows: list[dict]) -> list[str]:
    """Plain sentences on where the change concentrates, from the 1 - CKA profile of each variant."""
    L = results["num_blocks"]
    out = []
    by: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if r["metric"] == "cka" and r["variant"] != "base":
            by[(r["variant"], r["dataset"])].append((r["layer"], 1.0 - float(r["value"])))
    for (v, ds), pts in sorted(by.items()):
        pts.sort()
        peak_layer, peak = max(pts, key=lambda p: p[1])
        mid = [c for layer, c in pts if 0.2 <= layer / L <= 0.8]
        tail = [c for layer, c in pts if layer / L > 0.8]
        m = sum(mid) / len(mid) if mid else float("nan")
        t = sum(tail) / len(tail) if tail else float("nan")
        out.append(
            f"{v} on {ds}: largest representation change (1 - CKA = {peak:.3g}) at layer {peak_layer} "
            f"(depth {peak_layer / L:.2f}); mean 1 - CKA {m:.3g} over the middle (20-80% depth) vs {t:.3g} "
            f"over the last 20%."
        )
    return out


def _sensitivity_html(band: dict[str, Any]) -> list[str]:
    """How the band depends on the threshold: the range of tau that gives the same band, and the band at
    each tau from 0.3 to 0.7."""
    ev = band.get("evidence", {})
    if "sensitivity" not in ev:
        return []
    tau = ev.get("params", {}).get("tau")
    lo, hi = ev["stable_tau"]
    out = [
        f"<p>Threshold sensitivity: the rule returns <code>{esc(band['spec'])}</code> for every tau in "
        f"({lo:.4g}, {hi:.4g}] (tau = {tau:g} here)"
        + (
            "; <strong>a knife-edge choice</strong>: a threshold within 0.05 gives another band.</p>"
            if tau is not None and (tau - lo < 0.05 or hi - tau < 0.05)
            else ".</p>"
        )
    ]
    tab = [
        {"tau": f"{r['tau']:.2f}", "band": r["spec"], "blocks": r["blocks"], "fallback": "yes" if r["fallback"] else ""}
        for r in ev["sensitivity"]
    ]
    out.append("<details><summary>band at each threshold</summary>" + table_html(tab) + "</details>")
    return out


def analysis_section(results: dict[str, Any], rows: list[dict]) -> Section:
    band = results["recommended_band"]
    ev = band.get("evidence", {})
    parts = [
        f"<p>Base <code>{esc(results['config']['base'])}</code>; models: {esc(', '.join(results['models']))}; "
        f"datasets: {esc(', '.join(f'{k} ({n})' for k, n in results['datasets'].items()))}; "
        f"{results['num_blocks']} blocks, layer indices {esc(results['layers'][0])}..{esc(results['layers'][-1])}"
        " (0 = embedding output, l = output of block l-1 before the final norm).</p>",
        f"<p><strong>Recommended band: <code>{esc(band['spec'])}</code></strong> "
        f"({len(band['indices'])} of {results['num_blocks']} blocks, {esc(ev.get('mode', ''))} profile). "
        f"Rule: {esc(band['rule'])}.</p>",
    ]
    if ev.get("fallback"):
        parts.append(f"<p class='note'>Fallback to the paper's default band: {esc(ev['fallback'])}.</p>")
    parts += _sensitivity_html(band)
    reading = _reading(results, rows)
    if reading:
        parts.append("<ul>" + "".join(f"<li>{esc(s)}</li>" for s in reading) + "</ul>")
    if "score" in ev:
        tab = [
            {"block": b, "change score": s, "in band": "yes" if b in band["indices"] else ""}
            for b, s in enumerate(ev["score"])
        ]
        parts.append("<details><summary>per-block change score</summary>" + table_html(tab) + "</details>")
    for w in results.get("warnings", []):
        parts.append(f"<p class='note'>{esc(w)}</p>")
    return Section(
        name="analysis",
        title="Layer-wise analysis",
        body="\n".join(parts),
        images=list(results.get("plots", [])),
        order=20,
    )
