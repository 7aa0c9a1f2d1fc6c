"""Issue 15 beyond the one-line CLI faults (those are in test_faults.py): checkpoint fallback, planted
pickles, numeric settings of every config, byte-identical deltas, and numbers that must not depend on
padding or on the Gram form's round-off."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import pkgutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import midblock
from midblock.errors import MidblockError
from midblock.tuning.config import MidBlockConfig
from midblock.tuning.train import TrainConfig, train
from tests.conftest import run_cli

BASE = "random:llama-tiny"


def _cfg(out, **kw) -> TrainConfig:
    d = dict(
        model=BASE,
        task="arith",
        out=str(out),
        train_rows=24,
        steps=4,
        batch_size=2,
        max_length=256,
        eval_loss_items=0,
        progress=False,
        tuning=MidBlockConfig(band="2-3", rank=4),
        lr=5e-3,
        save_every=1,
    )
    d.update(kw)
    return TrainConfig(**d)


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


class _Payload:
    """What a planted checkpoint carries: unpickling it calls ``marker.write_text('ran')``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


# --------------------------------------------------------------------------- checkpoints and resume


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped at step 3 of 4 (checkpoints of steps 2 and 3 kept) and the uninterrupted reference."""
    d = tmp_path_factory.mktemp("ckpt")
    full = train(_cfg(d / "full"))
    assert full.steps == 4
    part = train(_cfg(d / "stopped"), on_step=lambda step, loss: step == 3)
    assert part.stopped
    names = sorted(p.name for p in (d / "stopped" / "checkpoints").glob("step-*.pt"))
    assert names == ["step-0000002.pt", "step-0000003.pt"]  # the newest and the one before
    return d


def _copy(stopped_run: Path, tmp_path: Path) -> Path:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped_run / "stopped", run)
    return run


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_resume_falls_back_to_the_previous_checkpoint(stopped_run, tmp_path, caplog, damage):
    run = _copy(stopped_run, tmp_path)
    newest = run / "checkpoints" / "step-0000003.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2] if damage == "truncated" else b"")
    with caplog.at_level(logging.WARNING, logger="midblock.tuning.train"):
        done = train(_cfg(run, resume=True))
    warned = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(warned) == 1 and "step-0000003.pt" in warned[0] and "step-0000002.pt" in warned[0]
    assert done.steps == 4 and not done.stopped
    a, b = _adapter(stopped_run / "full"), _adapter(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # as if never interrupted


def test_resume_with_no_readable_checkpoint_is_one_line_exit_2(stopped_run, tmp_path):
    run = _copy(stopped_run, tmp_path)
    for ck in (run / "checkpoints").glob("step-*.pt"):
        ck.write_bytes(b"")
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*")}
    rc, _, err = run_cli(
        "train", "--model", BASE, "--task", "arith", "--train-rows", "24", "--steps", "4", "--batch-size", "2",
        "--max-length", "256", "--eval-loss-items", "0", "--band", "2-3", "--rank", "4", "--lr", "5e-3",
        "--save-every", "1", "--no-progress", "--resume", "--out", str(run),
    )  # fmt: skip
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "no readable checkpoint" in lines[0] and "step-0000003.pt" in lines[0] and "step-0000002.pt" in lines[0]
    assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing touched


def test_a_planted_pickle_checkpoint_is_refused_and_never_runs(stopped_run, tmp_path):
    """Resuming a run directory someone handed over must not run their pickle (weights_only=True)."""
    run = _copy(stopped_run, tmp_path)
    marker = tmp_path / "PWNED"
    for ck in (run / "checkpoints").glob("step-*.pt"):
        st = torch.load(ck, weights_only=True)
        st["rng"]["python"] = _Payload(marker)  # a well-formed checkpoint with one poisoned value
        torch.save(st, ck)
    with pytest.raises(MidblockError, match="no readable checkpoint") as e:
        train(_cfg(run, resume=True))
    assert "\n" not in e.value.one_line() and "step-0000003.pt" in str(e.value)
    assert not marker.exists()
    # the same file through torch's unrestricted loader does run the payload: the test can fail
    torch.load(next((run / "checkpoints").glob("step-*.pt")), weights_only=False)
    assert marker.read_text() == "ran"


def test_a_planted_pickle_analysis_cache_is_refused(tmp_path):
    """Analysis caches are read the same way: a planted cache is one line, and its code never runs."""
    out = tmp_path / "an"
    argv = ["analyze", "--base", BASE, "--data", "arith", "--samples", "4", "--metrics", "cka"]
    rc, _, err = run_cli(*argv, "--out", str(out))
    assert rc == 0, err
    caches = sorted((out / "cache").glob("*.pt"))
    assert caches
    marker = tmp_path / "PWNED"
    for c in caches:
        torch.save({"stats": _Payload(marker)}, c)
    rc, _, err = run_cli(*argv, "--resume", "--out", str(out))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "cannot read analysis cache" in lines[0], err
    assert not marker.exists()


def test_keeping_two_checkpoints_drops_those_of_an_abandoned_timeline(tmp_path):
    """After resuming from an older checkpoint, later ones (damaged, or of steps redone) are removed when
    the run checkpoints again, so the run keeps exactly its newest and the one before."""
    run = tmp_path / "run"
    train(_cfg(run, steps=6), on_step=lambda step, loss: step == 4)
    ck = run / "checkpoints"
    (ck / "step-0000004.pt").write_bytes(b"")  # resume falls back to step 3 and redoes step 4 onwards
    train(_cfg(run, steps=6, resume=True), on_step=lambda step, loss: step == 5)
    assert sorted(p.name for p in ck.glob("step-*.pt")) == ["step-0000004.pt", "step-0000005.pt"]
    torch.load(ck / "step-0000004.pt", weights_only=True)  # the rewritten one, readable


# --------------------------------------------------------------------------- numeric settings of every config


def _config_classes() -> list[type]:
    """Every dataclass in the package that validates itself (has ``__post_init__``)."""
    out = {}
    for info in pkgutil.walk_packages(midblock.__path__, "midblock."):
        if info.name.endswith("__main__"):  # importing it runs the CLI
            continue
        try:
            mod = importlib.import_module(info.name)
        except ImportError:  # optional extras (vllm, trl) that are not installed
            continue
        for obj in vars(mod).values():
            if (
                isinstance(obj, type)
                and dataclasses.is_dataclass(obj)
                and obj.__module__ == mod.__name__
                and "__post_init__" in vars(obj)
            ):
                out[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [out[k] for k in sorted(out)]


# values for the required fields of configs that have float fields (by field name), and for fields that
# have a default but are required in fact (by class)
REQUIRED = {
    "out": "unused-out",
    "dest": "unused-dest",
    "base": BASE,
    "variant": BASE,
    "layers": [0],
    "methods": [{"method": "lora"}],
}
NEEDED = {"TrainConfig": {"out": "unused-out"}, "ExportConfig": {"dest": "unused-dest", "mode": "replay", "arm": "x"}}


def _float_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if "float" in str(f.type)]


FLOAT_CONFIGS = [c for c in _config_classes() if _float_fields(c)]


def test_the_float_configs_are_found():
    names = {c.__name__ for c in FLOAT_CONFIGS}
    assert {"TrainConfig", "MidBlockConfig", "AnalyzeConfig", "CaptureSpec", "RecommendConfig"} <= names


@pytest.mark.parametrize("cls", FLOAT_CONFIGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
def test_every_float_field_of_every_config_refuses_non_finite_values(cls, bad):
    required = {
        f.name: REQUIRED[f.name]
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    required.update(NEEDED.get(cls.__name__, {}))
    cls(**required)  # the defaults are valid
    for name in _float_fields(cls):
        with pytest.raises(MidblockError, match=name.replace("_", ".") + "|" + "must be"):
            cls(**required, **{name: bad})


@pytest.mark.parametrize(
    "cls, field, value",
    [
        (TrainConfig, "lr", 0.0),
        (TrainConfig, "lr", -1e-3),
        (TrainConfig, "epochs", 0.0),
        (TrainConfig, "weight_decay", -0.1),
        (TrainConfig, "max_grad_norm", -1.0),
        (MidBlockConfig, "alpha", 0.0),
        (MidBlockConfig, "dropout", 1.0),
        (MidBlockConfig, "dropout", -0.1),
    ],
)
def test_float_fields_out_of_range_are_refused(cls, field, value):
    kw = {"out": "x"} if cls is TrainConfig else {}
    with pytest.raises(MidblockError):
        cls(**kw, **{field: value})


def test_analysis_float_settings_out_of_range_are_refused():
    from midblock.analysis.analyze import AnalyzeConfig
    from midblock.analysis.capture import CaptureSpec
    from midblock.analysis.recommend import RecommendConfig

    for bad in (
        lambda: AnalyzeConfig(base=BASE, alpha=0.0),
        lambda: CaptureSpec(layers=[0], alpha=-1.0),
        lambda: RecommendConfig(tau=0.0),
        lambda: RecommendConfig(tau=1.5),
        lambda: RecommendConfig(head_frac=1.0),
        lambda: RecommendConfig(noise_floor=-1e-9),
    ):
        with pytest.raises(MidblockError):
            bad()


# --------------------------------------------------------------------------- reproducible bytes


def test_save_safetensors_bytes_do_not_depend_on_metadata_order(tmp_path):
    """safetensors orders the metadata by a per-instance random hash: plain save_file differs from call
    to call; save_safetensors gives one byte sequence, which loads back unchanged."""
    from safetensors import safe_open
    from safetensors.torch import save

    from midblock.io import save_safetensors

    tensors = {"b.weight": torch.arange(6.0).view(2, 3), "a.bias": torch.ones(3, dtype=torch.float16)}
    meta = {"method": "midblock-full", "base": "random:llama-tiny", "zeta": "z", "alpha": "a", "mid": "m"}
    plain = {save(tensors, metadata=meta) for _ in range(30)}
    assert len(plain) > 1  # the problem is real in this environment
    ours = set()
    for i in range(30):
        save_safetensors(tmp_path / f"{i}.safetensors", tensors, metadata=meta)
        ours.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(ours) == 1
    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as f:
        assert f.metadata() == meta
        assert all(torch.equal(f.get_tensor(k), v) for k, v in tensors.items())


def test_two_identical_full_parameter_runs_write_identical_delta_bytes(tmp_path):
    kw = dict(steps=2, save_every=0, tuning=MidBlockConfig(method="midblock-full", band="2-3"), lr=1e-3)
    for name in ("a", "b"):
        train(_cfg(tmp_path / name, **kw))
    assert (tmp_path / "a" / "delta.safetensors").read_bytes() == (tmp_path / "b" / "delta.safetensors").read_bytes()


# --------------------------------------------------------------------------- numbers


def test_prompt_entropy_does_not_depend_on_padding():
    """The float32 eigenvalue cutoff scaled with the padded length: the same sample gave smaller and
    smaller entropies the more the batch was padded. Now each padded length gives the unpadded value,
    which is the float64 definition to float32 round-off."""
    from midblock.analysis import metrics as M
    from midblock.analysis.capture import _prompt_entropy_batch

    g = torch.Generator().manual_seed(0)
    n, D = 40, 576  # SmolLM2's width: T <= D, so the Gram matrix is T x T and grows with the padding
    spectrum = torch.logspace(0, -5, D, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0]
    h = (torch.randn(n, D, generator=g, dtype=torch.float64) * spectrum) @ Q + 3 * torch.randn(1, D, generator=g)
    h = h.float()
    ref = M.prompt_entropy(h, alpha=1.0)
    values = []
    for T in (n, 64, 96, 128, 256):
        hz = torch.zeros(1, T, D)
        hz[0, :n] = h
        m = torch.zeros(1, T, dtype=torch.bool)
        m[0, :n] = True
        H, ok = _prompt_entropy_batch(hz, m, torch.tensor([n]), 1.0, False)
        assert bool(ok[0])
        values.append(float(H[0]))
    assert all(v == pytest.approx(values[0], rel=1e-4) for v in values), values
    assert values[0] == pytest.approx(ref, rel=1e-4)


def test_condition_number_is_resolved_far_beyond_the_gram_forms_limit():
    from midblock.analysis.metrics import spectral

    g = torch.Generator().manual_seed(0)
    N, D = 100, 64
    U = torch.linalg.qr(torch.randn(N, D, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0]
    for cond in (1e3, 1e8, 1e11):  # the Gram eigenvalue cutoff made everything above ~1e7 inf
        s = torch.logspace(0, -math.log10(cond), D, dtype=torch.float64)
        assert spectral((U * s) @ V.T)["condition_number"] == pytest.approx(cond, rel=1e-3)
    low_rank = torch.randn(N, 3, generator=g, dtype=torch.float64) @ torch.randn(3, D, generator=g, dtype=torch.float64)
    assert spectral(low_rank)["condition_number"] == float("inf")  # rank deficient: still inf


def test_a_weight_index_naming_files_outside_its_directory_is_refused(tmp_path):
    import json

    from midblock.surgery.sources import SafetensorsSource

    model, _ = __import__("midblock.models", fromlist=["load_model"]).load_model(BASE)
    model.save_pretrained(tmp_path / "m")
    index = tmp_path / "m" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"lm_head.weight": "../../elsewhere.safetensors"}}))
    with pytest.raises(MidblockError, match="points outside"):
        SafetensorsSource(tmp_path / "m")
    index.write_text('{"metadata": {}}')
    with pytest.raises(MidblockError, match="no valid weight_map"):
        SafetensorsSource(tmp_path / "m")


def test_an_adapter_stored_as_a_pickle_is_refused(tmp_path):
    """PEFT would unpickle adapter_model.bin; midblock writes safetensors only and loads no pickle."""
    from midblock.models.loading import check_adapter_dir

    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    torch.save({"x": torch.ones(1)}, tmp_path / "adapter_model.bin")
    with pytest.raises(MidblockError, match="adapter_model.bin"):
        check_adapter_dir(tmp_path)
    (tmp_path / "adapter_model.bin").unlink()
    with pytest.raises(MidblockError, match="no adapter_model.safetensors"):
        check_adapter_dir(tmp_path)
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(MidblockError, match="not a JSON object"):
        check_adapter_dir(tmp_path)


def test_run_directory_json_of_the_wrong_shape_is_one_line(tmp_path):
    from midblock.io import read_json

    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(MidblockError, match="holds list, not an object"):
        read_json(tmp_path / "x.json", dict)
    assert read_json(tmp_path / "x.json") == [1, 2]  # without `expect`, any JSON value
    run = tmp_path / "run"
    run.mkdir()
    (run / "midblock_run.json").write_text('"a string"')
    rc, _, err = run_cli(
        "eval", "--model", str(run), "--task", "arith", "--eval-items", "1", "--out", str(tmp_path / "e")
    )
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "midblock_run.json holds str" in err, err


def test_a_report_section_cannot_embed_files_from_outside_its_run(tmp_path):
    import base64
    import json

    from midblock.reporting.report import SECTIONS_DIR, render_report

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"SECRET-BYTES")
    run = tmp_path / "run"
    (run / "figs").mkdir(parents=True)
    (run / "figs" / "ok.png").write_bytes(b"OWN-FIGURE")
    sdir = run / SECTIONS_DIR
    sdir.mkdir(parents=True)
    body = {"name": "s", "title": "t", "body": "<p>b</p>", "images": ["figs/ok.png", "../secret.png"]}
    (sdir / "s.json").write_text(json.dumps(body))
    html = render_report(run).read_text()
    assert base64.b64encode(b"OWN-FIGURE").decode() in html
    assert base64.b64encode(b"SECRET-BYTES").decode() not in html and "outside the run directory" in html
    (sdir / "s.json").write_text('{"name": "s"}')
    with pytest.raises(MidblockError, match="not a report section"):
        render_report(run)


def test_early_exit_rerun_measures_a_model_again_when_its_saved_ids_are_damaged(tmp_path):
    out = tmp_path / "ee"
    argv = ["early-exit", "--base", BASE, "--variant", BASE, "--task", "arith", "--samples", "3", "--out", str(out)]
    rc, _, err = run_cli(*argv)
    assert rc == 0, err
    before = (out / "early_exit.csv").read_text()
    top1 = out / "early_exit_top1_base.safetensors"
    top1.write_bytes(top1.read_bytes()[:-16])
    rc, _, err = run_cli(*argv)
    assert rc == 0, err
    assert (out / "early_exit.csv").read_text() == before  # measured again, the same numbers
    load_file(str(top1))  # and rewritten whole
