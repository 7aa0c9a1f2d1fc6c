"""Open a report in headless Chromium: a screenshot, and the console errors the page produced.

Used by the tests and by ``python -m midblock.reporting.browser REPORT.html`` to check that a report
renders in a real browser without a server. Chromium comes from Debian's packages (``chromium``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# Flags that keep Chromium off the network and quiet on a machine without one.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def check_report(
    html: str | Path, screenshot: str | Path, width: int = 1200, height: int = 2400, timeout: float = 90.0
) -> list[str]:
    """Render ``html`` headless, save a PNG screenshot, return the console errors (empty = clean)."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    html, screenshot = Path(html).resolve(), Path(screenshot).resolve()
    with tempfile.TemporaryDirectory(prefix="midblock-chromium-") as profile:
        cmd = [
            exe,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={screenshot}",
            html.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    errors = []
    for line in (proc.stderr or "").splitlines():
        if "CONSOLE" in line or "Uncaught" in line:
            errors.append(line.strip())
    if not screenshot.exists():
        errors.append(f"no screenshot written (exit {proc.returncode}): {proc.stderr[-300:]}")
    return errors


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m midblock.reporting.browser REPORT.html [SCREENSHOT.png]", file=sys.stderr)
        return 2
    shot = argv[1] if len(argv) > 1 else str(Path(argv[0]).with_suffix(".png"))
    errors = check_report(argv[0], shot)
    for e in errors:
        print(e)
    print(f"screenshot: {shot}; console errors: {len(errors)}")
    return 1 if errors else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
