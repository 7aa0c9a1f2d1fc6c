"""The early estimate: a pure decision on made-up timings, and the cause it names."""

import logging

import pytest

from midblock.tuning.slow_run import (
    CORE_CAP,
    MachineFacts,
    Pace,
    expected_seconds,
    likely_cause,
    note_if_slow,
    pace_verdict,
    slow_message,
)

AVX2 = MachineFacts("cpu", "fp32", native_bf16=False, threads=2, cores=2, load_avg=0.5)


def test_on_pace_says_nothing():
    assert pace_verdict([9.0, 5.0, 5.5], 50, expected_unit_s=5.0) is None
    assert pace_verdict([9.0, 19.0, 19.0], 50, expected_unit_s=5.0) is None  # 3.8x: a slower CPU, not alarming


def test_too_few_timed_units_or_nothing_expected_says_nothing():
    assert pace_verdict([180.0, 185.0], 50, expected_unit_s=5.0) is None  # the warm-up step and one more
    assert pace_verdict([180.0, 185.0, 186.0], 50, expected_unit_s=None) is None  # a GPU: not checked


def test_far_beyond_expected_projects_the_whole_run():
    pace = pace_verdict([200.0, 185.0, 187.0], 50, expected_unit_s=5.0)
    assert isinstance(pace, Pace)
    assert pace.measured_s == pytest.approx(186.0)  # median of the timed steps, the warm-up skipped
    assert pace.ratio == pytest.approx(37.2)
    assert pace.projected_s == pytest.approx(572.0 + 186.0 * 47)


def test_the_warm_up_step_alone_does_not_decide():
    assert pace_verdict([300.0, 5.0, 5.2], 50, expected_unit_s=5.0) is None


def test_cause_emulated_bf16_comes_first():
    facts = MachineFacts("cpu", "bf16", native_bf16=False, threads=1, cores=2, load_avg=9.0)
    assert "emulated" in likely_cause(facts) and "--precision fp32" in likely_cause(facts)


def test_cause_load_and_threads_then_cpu():
    assert likely_cause(MachineFacts("cpu", "fp32", False, 1, 2, 0.1)).startswith("torch uses 1 thread(s) on 2 cores")
    assert "busy" in likely_cause(MachineFacts("cpu", "fp32", False, 2, 2, 6.0))
    both = likely_cause(MachineFacts("cpu", "fp32", False, 1, 2, 6.7))  # a shared machine, one thread: both
    assert both.startswith("the machine is busy (load average 6.7 on 2 cores)") and "also torch uses 1" in both
    assert "slower than the reference" in likely_cause(MachineFacts("cpu", "fp32", False, 2, 2, 1.0))
    # native bf16 is not a cause
    assert "emulated" not in likely_cause(MachineFacts("cpu", "bf16", True, 2, 2, 1.0))


def test_expected_time_counts_cores_up_to_the_cap_and_skips_gpus():
    assert expected_seconds(400.0, 40.0, AVX2) == pytest.approx(5.0)
    many = MachineFacts("cpu", "fp32", False, 64, 64, 0.0)
    assert expected_seconds(400.0, 40.0, many) == pytest.approx(400.0 / (40.0 * CORE_CAP))
    assert expected_seconds(400.0, 40.0, MachineFacts("cuda", "bf16", False, 1, 2, 0.0)) is None


def test_message_names_measured_projection_and_cause(caplog):
    facts = MachineFacts("cpu", "bf16", native_bf16=False, threads=2, cores=2, load_avg=0.5)
    with caplog.at_level(logging.WARNING):
        msg = note_if_slow("training", "step", [190.0, 185.0, 185.0], 50, 5.0, facts)
    assert msg and caplog.records[0].getMessage() == msg
    assert "185.00 s per step" in msg and "5.00 s" in msg and "37x" in msg and "2.6 h" in msg
    assert "emulated" in msg  # projected: (190 + 185 + 185 + 47 x 185) s = 2.6 h
    pace = Pace(10.0, 1.0, 90.0, 10.0)
    assert "90 s in all" in slow_message("generation", "batch of 16", pace, AVX2)


def test_a_short_run_is_not_worth_a_warning():
    """A tiny model: steps 1000x the FLOP estimate (overhead), but the whole run takes seconds."""
    assert pace_verdict([0.5, 0.4, 0.4], 4, expected_unit_s=0.0004) is None
    assert pace_verdict([0.5, 0.4, 0.4], 1000, expected_unit_s=0.0004) is not None  # 400 s: worth saying
