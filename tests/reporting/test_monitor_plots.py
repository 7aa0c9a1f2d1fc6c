"""``midblock monitor RUN``: the heatmaps of a monitor.jsonl, and its one-line errors."""

from __future__ import annotations

from tests.conftest import run_cli


def _write_run(run, readings, band=(2, 3)):
    from midblock.tuning.monitor import MonitorLog

    log = MonitorLog(run, tensorboard=False)
    log.begin({"kind": "meta", "num_blocks": 6, "band": list(band), "probe_rows": 8})
    for r in readings:
        log.write(r)


def _reading(step, c, alarms=()):
    return {
        "step": step,
        "cka_change": c,
        "weight_change": [0.0, 0.0, 0.01 * step, 0.02 * step, 0.0, 0.0],
        "grad_share": None if step == 0 else [0.0, 0.0, 0.4, 0.6, 0.0, 0.0],
        "outside_share": None if step == 0 else 0.6,
        "alarms": list(alarms),
    }


def test_monitor_command_draws_heatmaps(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _write_run(
        run,
        [
            _reading(0, [0.0] * 6),
            _reading(10, [0.0, 0.0, 0.01, 0.02, 0.04, 0.05]),
            _reading(15, [0.0, 0.0, 0.02, 0.03, 0.06, None], alarms=["step 15: 60% ... outside"]),
        ],
    )
    rc, out, err = run_cli("monitor", str(run))
    assert rc == 0, err
    png = run / "monitor.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "3 readings up to step 15" in out and "trained blocks 2-3" in out and "1 alarm(s)" in out
    assert "largest CKA change at the last reading: block 4" in out  # block 5's last value is missing
    rc, _, _ = run_cli("monitor", str(run), "--out", str(tmp_path / "elsewhere.png"))
    assert rc == 0 and (tmp_path / "elsewhere.png").exists()


def test_monitor_command_bad_input_is_one_line(tmp_path):
    rc, _, err = run_cli("monitor", str(tmp_path))
    assert rc == 2 and "holds no monitor.jsonl" in err and "--monitor-every" in err and "Traceback" not in err
    run = tmp_path / "run"
    run.mkdir()
    _write_run(run, [_reading(0, [0.0] * 6)])
    rc, _, err = run_cli("monitor", str(run), "--out", str(tmp_path / "x.pdf"))
    assert rc == 2 and "not a .png" in err
