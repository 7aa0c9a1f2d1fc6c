import pytest

from midblock.reporting.browser import check_report, find_chromium

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (apt-get install chromium)")


def test_console_errors_are_caught(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>undefinedFn();</script></body></html>")
    errors = check_report(bad, tmp_path / "bad.png")
    assert len(errors) == 1 and "undefinedFn" in errors[0]


def test_clean_page_has_no_errors(tmp_path):
    ok = tmp_path / "ok.html"
    ok.write_text("<!DOCTYPE html><html><body><h1>fine</h1></body></html>")
    assert check_report(ok, tmp_path / "ok.png") == []
    assert (tmp_path / "ok.png").stat().st_size > 1000
