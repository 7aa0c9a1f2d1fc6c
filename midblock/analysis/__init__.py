"""Layer-wise analysis: streaming capture, metrics, weight-space deltas and a recommended tuning band."""

from midblock.analysis.recommend import RecommendConfig, recommend_band

__all__ = ["RecommendConfig", "analyze", "recommend_band"]


def __getattr__(name: str):
    if name == "analyze":
        from midblock.analysis.analyze import analyze  # lazy export: the package stays light

        return analyze
    raise AttributeError(name)
