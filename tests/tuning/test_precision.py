"""`auto` precision follows the hardware; explicit bf16 on a CPU that emulates it warns once."""

import logging

import pytest

from midblock.tuning import precision as P


@pytest.fixture
def cpu(monkeypatch):
    """Simulate a CPU by its flags: cpu(native=True) has avx512_bf16, cpu(native=False) only AVX2."""

    def set_flags(native: bool) -> None:
        flags = {"sse4_2", "avx", "avx2", "fma"} | ({"avx512f", "avx512_bf16"} if native else set())
        monkeypatch.setattr(P, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(P, "_warned_emulated", False)
        monkeypatch.delenv(P.CPU_BF16_ENV, raising=False)  # the suite's conftest pins auto to fp32

    return set_flags


def test_auto_is_fp32_on_a_cpu_without_native_bf16(cpu):
    cpu(native=False)
    assert not P.cpu_native_bf16()
    assert P.resolve_precision("auto", "cpu") == "fp32"


def test_auto_is_bf16_on_a_cpu_with_native_bf16(cpu):
    cpu(native=True)
    assert P.cpu_native_bf16()
    assert P.resolve_precision("auto", "cpu") == "bf16"


def test_amx_counts_as_native(monkeypatch):
    monkeypatch.delenv(P.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx512f", "amx_tile", "amx_bf16"}))
    assert P.resolve_precision("auto", "cpu") == "bf16"


def test_explicit_precisions_are_kept(cpu):
    cpu(native=False)
    assert P.resolve_precision("bf16", "cpu") == "bf16"
    assert P.resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ValueError):
        P.resolve_precision("fp16", "cpu")


def test_auto_on_cuda_asks_the_gpu(monkeypatch):
    monkeypatch.setattr(P, "_cuda_bf16", lambda: True)
    assert P.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(P, "_cuda_bf16", lambda: False)
    assert P.resolve_precision("auto", "cuda") == "fp32"


def test_explicit_bf16_without_native_support_warns_once_naming_cause_and_fix(cpu, caplog):
    cpu(native=False)
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        assert P.warn_if_emulated("bf16", "cpu")
        assert P.warn_if_emulated("bf16", "cpu")  # a second run in the same process: no second warning
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1
    assert "avx512_bf16" in msgs[0] and "--precision fp32" in msgs[0] and "25-35x" in msgs[0]


def test_bf16_with_native_support_or_on_a_gpu_does_not_warn(cpu, caplog):
    cpu(native=True)
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        assert not P.warn_if_emulated("bf16", "cpu")
    cpu(native=False)
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        assert not P.warn_if_emulated("bf16", "cuda")
        assert not P.warn_if_emulated("fp32", "cpu")
    assert caplog.records == []


def test_cpu_flags_are_read_once_and_capability_is_reported():
    P.cpu_flags.cache_clear()
    first = P.cpu_flags()
    assert P.cpu_flags() is first  # cached for the process
    cap = P.cpu_capability()
    assert set(cap) >= {"native_bf16", "bf16_flags", "torch_cpu_capability"}
    assert cap["native_bf16"] == bool(cap["bf16_flags"])


def test_the_environment_overrides_the_flags(cpu, monkeypatch):
    cpu(native=True)
    monkeypatch.setenv(P.CPU_BF16_ENV, "0")
    assert P.resolve_precision("auto", "cpu") == "fp32" and P.emulated_bf16("bf16", "cpu")
    cpu(native=False)
    monkeypatch.setenv(P.CPU_BF16_ENV, "1")
    assert P.resolve_precision("auto", "cpu") == "bf16"


def test_bench_results_record_the_cpu_capability():
    """Every bench script prints bench/machine.py's line next to its timings: native bf16 or not, torch's ISA."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run(
        [sys.executable, str(repo / "bench" / "machine.py")], capture_output=True, text=True, env=env, check=True
    ).stdout
    line = out.splitlines()[0]
    assert line.startswith("Machine: ") and "native bf16: " in line and "torch CPU capability" in line
    for script in (repo / "bench").glob("*.py"):
        if script.name not in ("machine.py", "pool_rounds.py", "procstats.py"):  # these time nothing themselves
            assert "machine_line" in script.read_text(), script.name


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="on a GPU the accelerator follows the GPU")
@pytest.mark.parametrize(("asked", "native", "mixed", "warns"), [
    ("bf16", False, "bf16", True),   # the user's choice is kept, with the warning
    ("bf16", True, "bf16", False),
    ("auto", False, "no", False),    # auto never emulates
    ("auto", True, "bf16", False),
])  # fmt: skip
def test_training_starts_in_the_resolved_precision_and_warns_only_when_emulated(
    cpu, caplog, asked, native, mixed, warns
):
    from midblock.tuning.train import TrainConfig, _start_accelerator

    cpu(native=native)
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        acc = _start_accelerator(TrainConfig(model="random:llama-tiny", out="unused", precision=asked))
    assert acc.mixed_precision == mixed
    assert any("emulated" in r.getMessage() for r in caplog.records) is warns
