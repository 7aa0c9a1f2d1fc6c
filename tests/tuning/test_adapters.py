"""Adapters and deltas that load anywhere: PEFT's AutoPeftModel, a model card naming the base, plain load_state_dict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from midblock.models import load_model
from midblock.models.loading import ADAPTER_META, loadable_base
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.train import TrainConfig, train


def _cfg(model: str, out: Path, tuning: MidBlockConfig) -> TrainConfig:
    return TrainConfig(
        model=model,
        task="arith",
        out=str(out),
        train_rows=8,
        steps=2,
        batch_size=2,
        max_length=256,
        eval_loss_items=2,
        progress=False,
        tuning=tuning,
        lr=5e-3,
    )


def _ids():
    return torch.tensor([[72, 101, 108, 108, 111, 32, 49, 43, 50, 61]])


def _hf_base(tmp_path: Path) -> Path:
    """A random tiny model saved as an ordinary Hugging Face directory (what a hub download gives)."""
    model, tok = load_model("random:llama-tiny")
    d = tmp_path / "base"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_adapter_loads_with_autopeft_and_card_names_base(tmp_path):
    from peft import AutoPeftModelForCausalLM

    base = _hf_base(tmp_path)
    res = train(_cfg(str(base), tmp_path / "run", MidBlockConfig(band="2-3", rank=4)))
    adapter = Path(res.run_dir) / "adapter"
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == str(base.resolve())
    assert f"base_model: {base.resolve()}" in (adapter / "README.md").read_text()
    auto = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).eval()  # no midblock involved
    ours, _ = load_model(str(adapter))
    with torch.no_grad():
        a, b = auto(_ids()).logits, ours(_ids()).logits
        plain = load_model(str(base))[0](_ids()).logits
    assert torch.equal(a, b) and not torch.allclose(a, plain)


def test_random_preset_adapter_keeps_the_spec(tmp_path):
    res = train(_cfg("random:llama-tiny", tmp_path / "run", MidBlockConfig(band="2-3", rank=4)))
    adapter = Path(res.run_dir) / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    assert json.loads((adapter / ADAPTER_META).read_text())["base"] == "random:llama-tiny"
    assert "transformers cannot load by name" in (adapter / "README.md").read_text()
    via_adapter, _ = load_model(str(adapter))
    via_run, _ = load_model(res.run_dir)
    with torch.no_grad():
        assert torch.equal(via_adapter(_ids()).logits, via_run(_ids()).logits)


def test_delta_loads_with_plain_load_state_dict(tmp_path):
    """The route docs/tuning.md gives for deltas: load_state_dict(load_file(delta), strict=False)."""
    base = _hf_base(tmp_path)
    res = train(_cfg(str(base), tmp_path / "run", MidBlockConfig(method="midblock-full", band="2-3")))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    missing, unexpected = model.load_state_dict(load_file(str(Path(res.run_dir) / "delta.safetensors")), strict=False)
    assert not unexpected and missing
    ours, _ = load_model(res.run_dir)
    with torch.no_grad():
        assert torch.equal(model.eval()(_ids()).logits, ours(_ids()).logits)


def test_loadable_base_per_spec(tmp_path):
    assert loadable_base("random:llama-tiny") is None
    assert loadable_base("allenai/OLMo-2-0425-1B") == "allenai/OLMo-2-0425-1B"
    d = _hf_base(tmp_path)
    assert loadable_base(str(d)) == str(d.resolve())


def test_runs_say_what_they_are(caplog):
    """One line with processes and batches; a warning when accelerate's single-process launcher ran."""
    import logging

    from midblock.launch import describe_run, dropped_processes

    simple = {"ACCELERATE_USE_CPU": "False", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert dropped_processes(1, simple)
    assert not dropped_processes(1, {"ACCELERATE_USE_CPU": "False"})  # --num_processes 1
    assert not dropped_processes(2, {**simple, "WORLD_SIZE": "2"})  # torchrun / --multi_gpu
    assert not dropped_processes(1, {"MASTER_ADDR": "x", "WORLD_SIZE": "1"})  # torchrun --nproc-per-node 1
    with caplog.at_level(logging.INFO, logger="midblock.launch"):
        line = describe_run("train", 2, 4, 3, env={})
        assert line == "train: 2 process(es), batch 4 per process x 3 accumulation, global batch 24 per optimizer step"
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        describe_run("train", 1, 4, env=simple)
    assert any("started one" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.slow
def test_embedded_default_records_the_converted_directory():
    """smollm2-135m: the adapter's base is the converted Hugging Face directory under $MIDBLOCK_CACHE."""
    from midblock.errors import MidblockError

    try:
        base = loadable_base("smollm2-135m")  # converts the GGUF once (cached afterwards)
    except MidblockError as e:
        pytest.skip(f"embedded model not installed: {e}")
    assert base is not None and (Path(base) / "config.json").exists() and (Path(base) / "tokenizer.json").exists()
