"""The per-layer monitor: its readings against the analysis code, in midblock's loop and in the real trainers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from midblock.analysis.capture import CaptureSpec, collect, make_batches
from midblock.analysis.rows import pair_rows
from midblock.analysis.weights import lora_delta, weight_delta
from midblock.errors import MidblockError
from midblock.models import load_model
from midblock.tuning.monitor import (
    MonitorConfig,
    alarms,
    outside_share,
    probe_rows,
    read_monitor,
    scalars,
)

BAND = "2-3"  # llama-tiny has 6 blocks: 0-1 below the band, 4-5 above it


def _tensorboard():
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        pytest.skip("TensorBoard is not installed (pip install 'midblock[tensorboard]'); event files untested here")
    return EventAccumulator


def _events(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every event file under ``root``: tag -> [(step, value)]."""
    EventAccumulator = _tensorboard()
    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(root.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def _analysis_cka_change(base, tuned, probe, pad) -> list[float]:
    """What `midblock analyze` computes (its capture and its `cka` rows) for base vs tuned on the probe rows,
    with another batch size than the monitor's."""
    L = base.config.num_hidden_layers
    spec = CaptureSpec(layers=list(range(1, L + 1)), token_stats=(), pooled=True)
    stats = collect({"base": base, "tuned": tuned}, make_batches(probe, 5, pad), spec)
    cka = {layer: v for layer, m, v in pair_rows(stats["base"], stats["tuned"], spec.layers, {"cka"}) if m == "cka"}
    return [1.0 - cka[b + 1] for b in range(L)]


def _train(tmp_path, method="midblock", steps=4, every=2, precision="fp32", **monitor):
    from midblock.tuning.config import MidBlockConfig
    from midblock.tuning.train import TrainConfig, train

    cfg = TrainConfig(
        model="random:llama-tiny",
        task="arith",
        out=str(tmp_path / "run"),
        tuning=MidBlockConfig(method=method, band=BAND, rank=4),
        steps=steps,
        batch_size=4,
        eval_loss_items=12,
        lr=1e-2 if method == "midblock" else 1e-3,
        precision=precision,
        progress=False,
        monitor=MonitorConfig(every=every, **monitor),
    )
    train(cfg)
    return Path(cfg.out)


# --------------------------------------------------------------------------- midblock's loop


def test_loop_monitor_agrees_with_the_analysis(tmp_path):
    # bf16 autocast training: the probe still runs at the weights' precision (float32), as the analysis does
    run = _train(tmp_path, precision="bf16")
    meta, readings = read_monitor(run)
    assert (run / "monitor.png").stat().st_size > 5_000  # the heatmaps, drawn when the run finishes
    assert meta["band"] == [2, 3] and meta["num_blocks"] == 6 and meta["probe_rows"] == 12
    assert [r["step"] for r in readings] == [0, 2, 4]
    first, last = readings[0], readings[-1]
    # step 0: the model is the base
    assert first["cka_change"] == pytest.approx([0.0] * 6, abs=1e-12)
    assert first["weight_change"] == [0.0] * 6 and first["grad_share"] is None
    # after training: the analysis code on the same rows, the base and the saved tuned model
    base, tok = load_model("random:llama-tiny")
    tuned, _ = load_model(str(run))
    want = _analysis_cka_change(base, tuned, meta["probe"], tok.pad_token_id)
    assert last["cka_change"] == pytest.approx(want, abs=1e-6)
    assert last["cka_change"][:2] == pytest.approx([0.0, 0.0], abs=1e-12)  # below the band: unchanged
    assert min(last["cka_change"][2:]) > 1e-6  # the band and everything above it moved
    # weight change from the LoRA factors == the analysis's lora_delta_rel; frozen blocks exactly 0
    rows = lora_delta(tuned)
    assert last["weight_change"] == pytest.approx([rows[(b + 1, "lora_delta_rel")] for b in range(6)], rel=1e-6)
    assert [last["weight_change"][b] for b in (0, 1, 4, 5)] == [0.0] * 4 and min(last["weight_change"][2:4]) > 0
    # gradient shares: zero outside the band (no parameter there gets a gradient), the band's add up to 1
    for r in readings[1:]:
        g = r["grad_share"]
        assert [g[b] for b in (0, 1, 4, 5)] == [0.0] * 4 and min(g[2:4]) > 0
        assert sum(g) == pytest.approx(1.0, abs=1e-9)
    assert all(r["alarms"] == [] for r in readings)  # thresholds are off by default


def test_loop_monitor_full_parameters_weight_change(tmp_path):
    run = _train(tmp_path, method="midblock-full", steps=2, every=1)
    _, readings = read_monitor(run)
    base, _ = load_model("random:llama-tiny")
    tuned, _ = load_model(str(run))
    rows = weight_delta(base, tuned)
    got = readings[-1]["weight_change"]
    assert got == pytest.approx([rows[(b + 1, "weight_delta_rel")] for b in range(6)], rel=1e-6, abs=1e-12)
    assert [got[b] for b in (0, 1, 4, 5)] == [0.0] * 4 and min(got[2:4]) > 0


def test_loop_monitor_writes_tensorboard(tmp_path):
    _tensorboard()
    run = _train(tmp_path, steps=3, every=2)
    ev = _events(run / "tensorboard")
    # every 2 steps and the last one
    assert [s for s, _ in ev["midblock/cka_change/block_03"]] == [0, 2, 3]
    _, readings = read_monitor(run)
    assert ev["midblock/weight_change/block_02"][-1][1] == pytest.approx(readings[-1]["weight_change"][2], rel=1e-6)
    assert "midblock/grad_share/block_02" in ev


def test_monitor_needs_held_out_rows(tmp_path):
    from midblock.tuning.config import MidBlockConfig
    from midblock.tuning.train import TrainConfig, train

    cfg = TrainConfig(
        model="random:llama-tiny",
        task="arith",
        out=str(tmp_path / "run"),
        tuning=MidBlockConfig(band=BAND, rank=4),
        steps=1,
        eval_loss_items=0,
        progress=False,
        monitor=MonitorConfig(every=1),
    )
    with pytest.raises(MidblockError, match="probe batch has 0 usable rows"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # nothing half-written
    with pytest.raises(MidblockError, match="does not support --fsdp"):
        train(TrainConfig(**{**cfg.__dict__, "eval_loss_items": 12, "fsdp": True}))
    assert not (tmp_path / "run").exists()
    assert len(probe_rows([{"input_ids": [5, 6, 7, 0], "attention_mask": [1, 1, 1, 0]}] * 5, 4)[0]) == 3
    with pytest.raises(MidblockError, match="--monitor-rows"):
        MonitorConfig(every=1, rows=2)
    with pytest.raises(MidblockError, match="--monitor-alarm-outside"):
        MonitorConfig(every=1, alarm_outside=1.5)


# --------------------------------------------------------------------------- the alarm, on its own


def test_outside_share_counts_where_change_arises():
    # change arises in block 2 (0.1) and grows in block 4 (0.3 more): 3/4 outside a band of {2}
    assert outside_share([0.0, 0.0, 0.1, 0.1, 0.4, 0.4], [2]) == pytest.approx(0.75)
    assert outside_share([0.0, 0.0, 0.1, 0.1, 0.4, 0.4], [2, 3, 4]) == pytest.approx(0.0)
    assert math.isnan(outside_share([0.0] * 4, [1]))  # nothing changed yet: no share


def test_alarms_off_by_default_and_firing_when_set():
    prev = {"step": 10, "cka_change": [0.0, 0.01, 0.02]}
    now = {"step": 20, "cka_change": [0.0, 0.01, 0.30], "outside_share": 0.9}
    assert alarms(now, prev, [1], MonitorConfig(every=10)) == []
    got = alarms(now, prev, [1], MonitorConfig(every=10, alarm_outside=0.5, alarm_jump=0.1))
    assert len(got) == 2 and "90% of the representation change" in got[0] and "block 2" in got[1]


def test_scalar_names():
    r = {"step": 3, "cka_change": [0.1, 0.2], "weight_change": [0.0, 0.5], "grad_share": None, "outside_share": 0.25}
    s = scalars(r, 12)
    assert s["midblock/cka_change/block_01"] == 0.2 and s["midblock/outside_share"] == 0.25
    assert not any("grad_share" in k for k in s)


# --------------------------------------------------------------------------- the trainers


def _trainer_probe(tok, n=8):
    from midblock.data import load_examples, tokenize_sft

    return [it["input_ids"] for it in tokenize_sft(load_examples("arith", "test", limit=n), tok, 256).items]


def _finite_logs(trainer) -> None:
    """Every number the trainer logged is finite (TRL's entropy included)."""
    for rec in trainer.state.log_history:
        for k, v in rec.items():
            if isinstance(v, float):
                assert math.isfinite(v), f"{k} = {v} at step {rec.get('step')}"


def test_trainer_monitor_logs_to_tensorboard(tiny, tmp_path):
    _tensorboard()
    from transformers import Trainer, TrainingArguments

    from midblock import MidBlockCallback
    from midblock.data import collate, load_examples, tokenize_sft
    from midblock.tuning.config import MidBlockConfig
    from midblock.tuning.monitor import MidBlockMonitor
    from midblock.tuning.prepare import prepare_model

    model, tok = tiny("llama-tiny")
    pm = prepare_model(model, MidBlockConfig(band=BAND, rank=4))
    args = TrainingArguments(
        str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_steps=3,
        remove_unused_columns=False,
        save_strategy="no",
        logging_steps=1,
        report_to=["tensorboard"],
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(
        model=pm,
        args=args,
        train_dataset=tokenize_sft(load_examples("arith", "train", limit=12), tok, 256).items,
        data_collator=lambda b: collate(b, tok.pad_token_id),
        callbacks=[MidBlockCallback()],
    )
    mon = MidBlockMonitor(every=2, probe=_trainer_probe(tok)).attach(trainer)
    trainer.train()
    assert [r["step"] for r in mon.readings] == [0, 2, 3]
    assert mon.readings[0]["cka_change"] == pytest.approx([0.0] * 6, abs=1e-12)
    g = mon.readings[1]["grad_share"]
    assert [g[b] for b in (0, 1, 4, 5)] == [0.0] * 4 and sum(g) == pytest.approx(1.0)
    ev = _events(tmp_path / "out")
    assert [s for s, _ in ev["train/midblock/cka_change/block_03"]] == [0, 2, 3]
    assert ev["train/midblock/cka_change/block_05"][-1][1] == pytest.approx(mon.readings[-1]["cka_change"][5], rel=1e-5)
    assert "train/loss" in ev  # the trainer's own scalars are still there
    # the same readings in OUTPUT_DIR/monitor.jsonl, which `midblock monitor` draws
    _, rd = read_monitor(tmp_path / "out")
    assert [r["step"] for r in rd] == [0, 2, 3] and (tmp_path / "out" / "monitor.png").exists()
    _finite_logs(trainer)


def test_sfttrainer_monitor_and_every_logged_value_finite(tiny, tmp_path):
    pytest.importorskip("trl", reason="TRL is not installed (pip install 'midblock[trl]')")
    _tensorboard()
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from midblock import MidBlockCallback, band_lora_config
    from midblock.data import load_examples
    from midblock.tuning.monitor import MidBlockMonitor

    model, tok = tiny("llama-tiny")
    rows = [{"prompt": e.prompt, "completion": e.completion} for e in load_examples("arith", "train", limit=8)]
    args = SFTConfig(
        str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_steps=2,
        max_length=256,
        bf16=False,
        save_strategy="no",
        logging_steps=1,
        report_to=["tensorboard"],
        use_cpu=True,
        seed=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=band_lora_config(model, band=BAND, rank=4),
        callbacks=[MidBlockCallback()],
    )
    mon = MidBlockMonitor(every=1, probe=_trainer_probe(tok)).attach(trainer)
    trainer.train()
    assert [r["step"] for r in mon.readings] == [0, 1, 2]
    assert mon.readings[0]["cka_change"] == pytest.approx([0.0] * 6, abs=1e-12)  # the adapter-disabled base
    assert min(mon.readings[-1]["weight_change"][2:4]) > 0 and mon.readings[-1]["weight_change"][:2] == [0.0, 0.0]
    ev = _events(tmp_path / "out")
    assert [s for s, _ in ev["train/midblock/weight_change/block_02"]] == [0, 1, 2]
    # TRL's own metrics still arrive with the loss, and every logged value is finite (entropy included)
    train_logs = [r for r in trainer.state.log_history if "loss" in r]
    assert train_logs and all("entropy" in r and "mean_token_accuracy" in r for r in train_logs)
    _finite_logs(trainer)


def test_monitor_file_lines_are_json(tmp_path):
    run = _train(tmp_path, steps=1, every=1)
    lines = (run / "monitor.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "meta" and all(json.loads(x)["kind"] == "reading" for x in lines[1:])
    assert not any("NaN" in x for x in lines)  # strict JSON: no NaN literals


def test_readme_monitor_example_runs_as_written(tmp_path, monkeypatch):
    """examples/trainer_monitor.py, shown verbatim in the README, on a tiny model: TensorBoard gets the scalars."""
    import re
    import runpy

    pytest.importorskip("trl", reason="TRL is not installed (pip install 'midblock[trl]')")
    _tensorboard()
    repo = Path(__file__).resolve().parents[2]
    code = (repo / "examples" / "trainer_monitor.py").read_text()
    m = re.search(
        r"<!-- example: examples/trainer_monitor.py -->\n```python\n(.*?)```", (repo / "README.md").read_text(), re.S
    )
    assert m and m.group(1) == code  # the README shows exactly the file this test runs
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIDBLOCK_EXAMPLE_MODEL", "random:llama-tiny")
    monkeypatch.setenv("MIDBLOCK_EXAMPLE_STEPS", "5")
    g = runpy.run_path(str(repo / "examples" / "trainer_monitor.py"), run_name="__main__")
    assert [r["step"] for r in g["monitor"].readings] == [0, 5]
    ev = _events(tmp_path / "runs" / "monitor-example")
    # seg2-4/5 of llama-tiny's 6 blocks = blocks 1-3: block 0 below the band never changes
    assert ev["train/midblock/cka_change/block_00"][-1][1] == pytest.approx(0.0, abs=1e-9)
    assert ev["train/midblock/weight_change/block_02"][-1][1] > 0
    meta, _ = read_monitor(tmp_path / "runs" / "monitor-example")
    assert meta["band"] == [1, 2, 3] and meta["probe_rows"] == 32  # the eval_dataset's rows
    _finite_logs(g["trainer"])


def test_alarm_fires_in_a_real_run(tmp_path, caplog):
    """With a threshold set, the loop warns (and records) when the change arises mostly above the band."""
    import logging

    with caplog.at_level(logging.WARNING, logger="midblock.tuning.monitor"):
        run = _train(tmp_path, steps=2, every=1, alarm_outside=0.01)
    _, readings = read_monitor(run)
    assert readings[0]["alarms"] == []  # step 0: nothing changed, no share
    fired = [a for r in readings[1:] for a in r["alarms"]]
    assert fired and all("outside the trained blocks 2-3" in a for a in fired)
    assert all(r["outside_share"] > 0.01 for r in readings[1:])
    assert any("outside the trained blocks" in m for m in caplog.messages)


def test_resume_keeps_the_readings_up_to_the_checkpoint(tmp_path):
    """Stopped at step 3 (checkpoint) and resumed: the readings are those of an uninterrupted run."""
    from dataclasses import replace

    from midblock.tuning.config import MidBlockConfig
    from midblock.tuning.train import TrainConfig, train

    cfg = TrainConfig(
        model="random:llama-tiny",
        task="arith",
        out=str(tmp_path / "stopped"),
        tuning=MidBlockConfig(band=BAND, rank=4),
        steps=4,
        batch_size=4,
        eval_loss_items=12,
        lr=1e-2,
        progress=False,
        monitor=MonitorConfig(every=2),
    )
    assert train(cfg, on_step=lambda step, loss: step == 3).stopped
    assert [r["step"] for r in read_monitor(cfg.out)[1]] == [0, 2]
    train(replace(cfg, resume=True))
    _, resumed = read_monitor(cfg.out)
    _, straight = read_monitor(_train(tmp_path / "straight", steps=4, every=2))
    assert [r["step"] for r in resumed] == [0, 2, 4]
    for a, b in zip(resumed, straight):
        assert a["cka_change"] == pytest.approx(b["cka_change"], abs=1e-9)
        assert a["weight_change"] == pytest.approx(b["weight_change"], rel=1e-6)


def test_monitor_under_two_processes(tmp_path):
    """DDP (torchrun, 2 CPU processes): the main process reads, the other trains on; gradients are the
    all-reduced ones, so the shares are those of the whole step."""
    import os
    import subprocess
    import sys

    torchrun = Path(sys.executable).parent / "torchrun"
    midblock = Path(sys.executable).parent / "midblock"
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--nproc-per-node", "2", "--no-python", str(midblock), "train"]
    cmd += ["--model", "random:llama-tiny", "--task", "arith", "--band", BAND, "--steps", "2", "--batch-size", "2"]
    cmd += ["--train-rows", "16", "--eval-loss-items", "6", "--monitor-every", "1", "--out", str(out), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        cmd, cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=240
    )
    assert p.returncode == 0, p.stderr[-2000:]
    meta, readings = read_monitor(out)
    assert [r["step"] for r in readings] == [0, 1, 2] and meta["probe_rows"] == 6
    for r in readings[1:]:
        g = r["grad_share"]
        assert [g[b] for b in (0, 1, 4, 5)] == [0.0] * 4 and sum(g) == pytest.approx(1.0)
