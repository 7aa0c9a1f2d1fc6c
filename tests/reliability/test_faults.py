"""The fault suite: bad input across every command gives one line, exit status 2, no traceback, and
leaves no partial output behind."""

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

TINY = "random:llama-tiny"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    (d / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    (d / "empty.jsonl").write_text("")
    (d / "wrong_fields.jsonl").write_text('{"q": "1+1?", "a": "2"}\n')
    (d / "gsm_missing_answer.jsonl").write_text('{"question": "1+1?"}\n')
    (d / "empty.txt").write_text("\n\n")
    (d / "bad.yaml").write_text("grid: [unclosed\n")
    (d / "a_file").write_text("not a directory")
    (d / "trunc.safetensors").write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    (d / "notamodel").mkdir()
    (d / "notamodel" / "readme.txt").write_text("hi")
    # a model directory whose tokenizer has no chat template
    from midblock.models import load_model

    m, tok = load_model("random:gpt2-tiny")
    tok.chat_template = None
    m.save_pretrained(d / "nochat")
    tok.save_pretrained(d / "nochat")
    _hardening_files(d)
    return d


def _hardening_files(d: Path) -> None:
    """Inputs of issue 15's probes: wrongly typed JSONL, damaged model and run directories, custom code."""
    import shutil

    # JSONL fields of the wrong type: each would have been turned into text ("None") or crashed
    (d / "null_completion.jsonl").write_text(
        '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": null}\n'
    )
    (d / "number_prompt.jsonl").write_text('{"prompt": 12, "completion": "b"}\n')
    (d / "messages_str.jsonl").write_text('{"messages": "hello"}\n')
    (d / "messages_bad_item.jsonl").write_text('{"messages": [{"role": "user", "content": ["x"]}]}\n')
    (d / "text_number.jsonl").write_text('{"text": "fine"}\n{"text": 5}\n')
    (d / "gsm_answer_number.jsonl").write_text('{"question": "1+1?", "answer": 2}\n')
    (d / "qa_question_list.jsonl").write_text('{"question": ["1+1?"], "answer": "#### 2"}\n')
    # a Hugging Face directory whose weights file is cut short
    shutil.copytree(d / "nochat", d / "trunc_hf")
    w = d / "trunc_hf" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    # a directory that ships Python: config.json auto_map (an unknown model type needs the code)
    (d / "custom_code").mkdir()
    cfg = json.loads((d / "nochat" / "config.json").read_text())
    cfg.update(model_type="midblock-evil", auto_map={"AutoConfig": "evil.EvilConfig"})
    (d / "custom_code" / "config.json").write_text(json.dumps(cfg))
    (d / "custom_code" / "evil.py").write_text(f"open({str(d / 'EVIL_RAN')!r}, 'w').write('ran')\n")
    # training runs (LoRA and full-parameter), then damaged copies of them
    for name, method in (("lora_run", "midblock"), ("full_run", "midblock-full")):
        rc, _, err = run_cli(
            "train", "--model", TINY, "--method", method, "--steps", "1", "--batch-size", "2", "--train-rows", "8",
            "--no-progress", "--out", str(d / name),
        )  # fmt: skip
        assert rc == 0, err
    shutil.copytree(d / "lora_run", d / "run_trunc_adapter")
    a = d / "run_trunc_adapter" / "adapter" / "adapter_model.safetensors"
    a.write_bytes(a.read_bytes()[: a.stat().st_size - 64])
    shutil.copytree(d / "lora_run", d / "run_no_adapter_config")
    (d / "run_no_adapter_config" / "adapter" / "adapter_config.json").unlink()
    shutil.copytree(d / "full_run", d / "run_empty_delta")
    (d / "run_empty_delta" / "delta.safetensors").write_bytes(b"")
    shutil.copytree(d / "lora_run", d / "run_bad_train_config")
    (d / "run_bad_train_config" / "train_config.json").write_text('{"plan": {}}')
    for name, src, key, value in (
        ("run_adapter_escape", "lora_run", "adapter", "../../../../../../etc"),
        ("run_delta_absolute", "full_run", "delta", "/etc/passwd"),
    ):
        shutil.copytree(d / src, d / name)
        man = d / name / "midblock_run.json"
        m = json.loads(man.read_text())
        m[key] = value
        man.write_text(json.dumps(m))


def _out(files, name):
    return str(files / "out" / name)


# (id, argv builder, expected message fragment)
CASES = [
    ("layers-unknown-model", lambda f: ["layers", "no-such-model"], "unknown model"),
    ("layers-band-out-of-range", lambda f: ["layers", TINY, "--band", "3-9"], "selects block 6"),
    ("layers-band-empty", lambda f: ["layers", TINY, "--band", "0.95:1.0"], "selects no block"),
    ("layers-too-many-segments", lambda f: ["layers", TINY, "--band", "seg1/9"], "segments"),
    ("layers-band-garbage", lambda f: ["layers", TINY, "--band", "banana"], "cannot parse band"),
    ("layers-not-a-model-dir", lambda f: ["layers", str(f / "notamodel")], "not a model"),
    (
        "train-unknown-method",
        lambda f: ["train", "--model", TINY, "--method", "magic", "--out", _out(f, "t1")],
        "invalid choice",
    ),
    ("train-rank-zero", lambda f: ["train", "--model", TINY, "--rank", "0", "--out", _out(f, "t2")], "rank"),
    (
        "train-absent-targets",
        lambda f: ["train", "--model", TINY, "--targets", "foo_proj", "--steps", "1", "--out", _out(f, "t3")],
        "foo_proj",
    ),
    (
        "train-auto-without-analysis",
        lambda f: ["train", "--model", TINY, "--band", "auto", "--out", _out(f, "t4")],
        "analysis",
    ),
    (
        "train-band-out-of-range",
        lambda f: ["train", "--model", TINY, "--band", "2-40", "--steps", "1", "--out", _out(f, "t5")],
        "selects block",
    ),
    (
        "train-malformed-jsonl",
        lambda f: [
            "train",
            "--model",
            TINY,
            "--task",
            "jsonl",
            "--data",
            str(f / "bad.jsonl"),
            "--steps",
            "1",
            "--out",
            _out(f, "t6"),
        ],
        "bad.jsonl:2",
    ),
    (
        "train-empty-data",
        lambda f: [
            "train",
            "--model",
            TINY,
            "--task",
            "jsonl",
            "--data",
            str(f / "empty.jsonl"),
            "--steps",
            "1",
            "--out",
            _out(f, "t7"),
        ],
        "empty",
    ),
    (
        "train-wrong-fields",
        lambda f: [
            "train",
            "--model",
            TINY,
            "--task",
            "jsonl",
            "--data",
            str(f / "wrong_fields.jsonl"),
            "--steps",
            "1",
            "--out",
            _out(f, "t8"),
        ],
        "wrong_fields.jsonl:1",
    ),
    (
        "train-segments-with-lora",
        lambda f: ["train", "--model", TINY, "--method", "lora", "--segments", "-1,4,4,4,-1", "--out", _out(f, "t9")],
        "segments",
    ),
    ("train-out-is-a-file", lambda f: ["train", "--model", TINY, "--steps", "1", "--out", str(f / "a_file")], "a_file"),
    (
        "train-out-under-a-file",
        lambda f: ["train", "--model", TINY, "--steps", "1", "--out", str(f / "a_file" / "run")],
        "a_file",
    ),
    ("train-unknown-model", lambda f: ["train", "--model", "random:nope", "--out", _out(f, "t10")], "preset"),
    ("eval-unknown-task", lambda f: ["eval", "--model", TINY, "--task", "nope", "--out", _out(f, "e1")], "task"),
    (
        "eval-unknown-protocol",
        lambda f: ["eval", "--model", TINY, "--task", "arith", "--protocol", "nope", "--out", _out(f, "e2")],
        "protocol",
    ),
    (
        "eval-items-zero",
        lambda f: ["eval", "--model", TINY, "--task", "arith", "--eval-items", "0", "--out", _out(f, "e3")],
        "--eval-items",
    ),
    (
        "eval-no-chat-template",
        lambda f: [
            "eval",
            "--model",
            str(f / "nochat"),
            "--task",
            "arith",
            "--chat-template",
            "--eval-items",
            "1",
            "--out",
            _out(f, "e4"),
        ],
        "chat template",
    ),
    (
        "eval-gsm8k-missing-field",
        lambda f: [
            "eval",
            "--model",
            TINY,
            "--task",
            "gsm8k",
            "--data",
            str(f / "gsm_missing_answer.jsonl"),
            "--out",
            _out(f, "e5"),
        ],
        "answer",
    ),
    (
        "eval-ppl-empty-corpus",
        lambda f: ["eval", "--model", TINY, "--task", "ppl", "--data", str(f / "empty.txt"), "--out", _out(f, "e6")],
        "empty",
    ),
    (
        "eval-truncated-delta",
        lambda f: [
            "eval",
            "--model",
            f"{TINY}+{f / 'trunc.safetensors'}",
            "--task",
            "arith",
            "--eval-items",
            "1",
            "--out",
            _out(f, "e7"),
        ],
        "trunc.safetensors",
    ),
    (
        "analyze-block-count-mismatch",
        lambda f: [
            "analyze",
            "--base",
            TINY,
            "--variant",
            "random:llama-8l",
            "--data",
            "arith",
            "--samples",
            "4",
            "--out",
            _out(f, "a1"),
        ],
        "block",
    ),
    (
        "analyze-arch-mismatch",
        lambda f: [
            "analyze",
            "--base",
            TINY,
            "--variant",
            "random:gpt2-tiny",
            "--data",
            "arith",
            "--samples",
            "4",
            "--out",
            _out(f, "a2"),
        ],
        "gpt2-tiny",
    ),
    (
        "analyze-unknown-metric",
        lambda f: ["analyze", "--base", TINY, "--metrics", "vibes", "--data", "arith", "--out", _out(f, "a3")],
        "vibes",
    ),
    (
        "analyze-empty-dataset",
        lambda f: ["analyze", "--base", TINY, "--data", str(f / "empty.jsonl"), "--out", _out(f, "a4")],
        "empty",
    ),
    (
        "compare-unknown-method",
        lambda f: ["compare", "--model", TINY, "--methods", "lora,nope", "--out", _out(f, "c1")],
        "nope",
    ),
    ("compare-bad-yaml", lambda f: ["compare", "--config", str(f / "bad.yaml"), "--out", _out(f, "c2")], "bad.yaml"),
    (
        "swap-too-many-segments",
        lambda f: ["swap", "--base", TINY, "--variant", "random:llama-tiny", "--segments", "9", "--out", _out(f, "s1")],
        "segments",
    ),
    (
        "swap-arch-mismatch",
        lambda f: ["swap", "--base", TINY, "--variant", "random:gpt2-tiny", "--segments", "2", "--out", _out(f, "s2")],
        "gpt2",
    ),
    (
        "swap-empty-corpus",
        lambda f: [
            "swap",
            "--base",
            TINY,
            "--variant",
            TINY,
            "--segments",
            "2",
            "--corpus",
            str(f / "empty.txt"),
            "--out",
            _out(f, "s3"),
        ],
        "empty",
    ),
    (
        "interpolate-more-weights-than-blocks",
        lambda f: [
            "interpolate",
            "--base",
            TINY,
            "--variant",
            TINY,
            "--weights",
            "0,1,1,1,1,1,1,1",
            "--task",
            "arith",
            "--out",
            _out(f, "i1"),
        ],
        "segments",
    ),
    (
        "interpolate-out-of-range",
        lambda f: [
            "interpolate",
            "--base",
            TINY,
            "--variant",
            TINY,
            "--weights",
            "0,1.5,0",
            "--task",
            "arith",
            "--eval-items",
            "1",
            "--out",
            _out(f, "i2"),
        ],
        "extrapolate",
    ),
    ("merge-not-a-run", lambda f: ["merge", str(f / "notamodel"), "--out", _out(f, "m1")], "notamodel"),
    ("demo-unknown-profile", lambda f: ["demo", "--profile", "huge", "--out", _out(f, "d1")], "profile"),
]


def _train_jsonl(f, name, out):
    return ["train", "--model", TINY, "--task", "jsonl", "--data", str(f / name), "--steps", "1", "--out", _out(f, out)]


def _train_flag(flag, value, out):
    return lambda f: ["train", "--model", TINY, "--steps", "1", f"{flag}={value}", "--out", _out(f, out)]


def _eval(model, out):
    return lambda f: ["eval", "--model", model(f), "--task", "arith", "--eval-items", "1", "--out", _out(f, out)]


# Issue 15: each probe, plus its neighbours (every JSONL reader, every float flag, every command that reads a
# run directory or a model directory).
CASES += [
    # JSONL fields of the wrong type: training, chat rows, perplexity corpora, GSM8K files, analysis data
    ("train-null-completion", lambda f: _train_jsonl(f, "null_completion.jsonl", "h1"), "null_completion.jsonl:2"),
    ("train-number-prompt", lambda f: _train_jsonl(f, "number_prompt.jsonl", "h2"), "number_prompt.jsonl:1"),
    ("train-messages-not-a-list", lambda f: _train_jsonl(f, "messages_str.jsonl", "h3"), "messages_str.jsonl:1"),
    (
        "train-message-content-not-text",
        lambda f: _train_jsonl(f, "messages_bad_item.jsonl", "h4"),
        "messages_bad_item.jsonl:1",
    ),
    (
        "eval-ppl-text-not-a-string",
        lambda f: [
            "eval",
            "--model",
            TINY,
            "--task",
            "ppl",
            "--data",
            str(f / "text_number.jsonl"),
            "--out",
            _out(f, "h5"),
        ],
        "text_number.jsonl:2",
    ),
    (
        "eval-gsm8k-answer-not-a-string",
        lambda f: [
            "eval",
            "--model",
            TINY,
            "--task",
            "gsm8k",
            "--data",
            str(f / "gsm_answer_number.jsonl"),
            "--out",
            _out(f, "h6"),
        ],  # fmt: skip
        "gsm_answer_number.jsonl:1",
    ),
    (
        "analyze-question-not-a-string",
        lambda f: [
            "analyze",
            "--base",
            TINY,
            "--data",
            str(f / "qa_question_list.jsonl"),
            "--samples",
            "2",
            "--out",
            _out(f, "h7"),
        ],  # fmt: skip
        "qa_question_list.jsonl:1",
    ),
    (
        "swap-corpus-text-not-a-string",
        lambda f: [
            "swap",
            "--base",
            TINY,
            "--variant",
            TINY,
            "--segments",
            "2",
            "--corpus",
            str(f / "text_number.jsonl"),
            "--out",
            _out(f, "h8"),
        ],  # fmt: skip
        "text_number.jsonl:2",
    ),
    # float flags: inf and nan pass a plain `x > 0`; refused before a run directory exists
    ("train-lr-inf", _train_flag("--lr", "inf", "h9"), "learning rate"),
    ("train-lr-nan", _train_flag("--lr", "nan", "h10"), "learning rate"),
    ("train-lr-negative", _train_flag("--lr", "-1e-3", "h11"), "learning rate"),
    ("train-epochs-inf", _train_flag("--epochs", "inf", "h12"), "--epochs"),
    ("train-weight-decay-nan", _train_flag("--weight-decay", "nan", "h13"), "--weight-decay"),
    ("train-weight-decay-negative", _train_flag("--weight-decay", "-0.1", "h14"), "--weight-decay"),
    ("train-max-grad-norm-inf", _train_flag("--max-grad-norm", "inf", "h15"), "--max-grad-norm"),
    ("train-max-grad-norm-negative", _train_flag("--max-grad-norm", "-1", "h16"), "--max-grad-norm"),
    ("train-alpha-inf", _train_flag("--alpha", "inf", "h17"), "alpha"),
    ("train-alpha-nan", _train_flag("--alpha", "nan", "h18"), "alpha"),
    ("train-dropout-nan", _train_flag("--dropout", "nan", "h19"), "dropout"),
    ("train-dropout-one", _train_flag("--dropout", "1", "h20"), "dropout"),
    # the loss turns non-finite at step 2: the new run directory goes, so the same --out works again
    (
        "train-loss-diverges",
        lambda f: [
            "train",
            "--model",
            TINY,
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--lr",
            "1e30",
            "--no-progress",
            "--out",
            _out(f, "h21"),
        ],
        "loss is nan at step 2",
    ),
    # damaged model and run directories: every command that loads them
    ("eval-truncated-model-weights", _eval(lambda f: str(f / "trunc_hf"), "h22"), "model.safetensors"),
    (
        "analyze-truncated-model-weights",
        lambda f: [
            "analyze",
            "--base",
            str(f / "trunc_hf"),
            "--data",
            "arith",
            "--samples",
            "2",
            "--out",
            _out(f, "h37"),
        ],  # fmt: skip
        "model.safetensors",
    ),
    (
        "merge-truncated-base-weights",
        lambda f: ["merge", f"{f / 'trunc_hf'}+{f / 'full_run' / 'delta.safetensors'}", "--out", _out(f, "h38")],
        "model.safetensors",
    ),
    ("eval-run-truncated-adapter", _eval(lambda f: str(f / "run_trunc_adapter"), "h23"), "adapter_model.safetensors"),
    (
        "merge-run-truncated-adapter",
        lambda f: ["merge", str(f / "run_trunc_adapter"), "--out", _out(f, "h24")],
        "adapter_model",
    ),
    ("eval-run-no-adapter-config", _eval(lambda f: str(f / "run_no_adapter_config"), "h25"), "adapter_config.json"),
    (
        "merge-run-no-adapter-config",
        lambda f: ["merge", str(f / "run_no_adapter_config"), "--out", _out(f, "h26")],
        "adapter_config.json",
    ),
    (
        "analyze-run-no-adapter-config",
        lambda f: [
            "analyze",
            "--base",
            TINY,
            "--variant",
            str(f / "run_no_adapter_config"),
            "--data",
            "arith",
            "--samples",
            "2",
            "--out",
            _out(f, "h27"),
        ],  # fmt: skip
        "adapter_config.json",
    ),
    ("eval-run-empty-delta", _eval(lambda f: str(f / "run_empty_delta"), "h28"), "delta.safetensors"),
    ("merge-run-empty-delta", lambda f: ["merge", str(f / "run_empty_delta"), "--out", _out(f, "h29")], "delta"),
    (
        "train-resume-config-without-train-config",
        lambda f: ["train", "--model", TINY, "--steps", "1", "--resume", "--out", str(f / "run_bad_train_config")],
        "holds no train_config",
    ),
    # a run manifest's paths stay inside the run directory
    ("eval-manifest-adapter-escapes", _eval(lambda f: str(f / "run_adapter_escape"), "h30"), "outside the run"),
    (
        "merge-manifest-delta-absolute",
        lambda f: ["merge", str(f / "run_delta_absolute"), "--out", _out(f, "h31")],
        "outside the run",
    ),
    (
        "swap-manifest-adapter-escapes",
        lambda f: [
            "swap",
            "--base",
            TINY,
            "--variant",
            str(f / "run_adapter_escape"),
            "--segments",
            "2",
            "--out",
            _out(f, "h32"),
        ],  # fmt: skip
        "outside the run",
    ),
    # a model directory with its own Python is refused without a prompt, on every command that loads models
    ("layers-custom-code", lambda f: ["layers", str(f / "custom_code")], "trust-remote-code"),
    ("eval-custom-code", _eval(lambda f: str(f / "custom_code"), "h33"), "trust-remote-code"),
    (
        "train-custom-code",
        lambda f: ["train", "--model", str(f / "custom_code"), "--steps", "1", "--out", _out(f, "h34")],
        "trust-remote-code",
    ),
    (
        "analyze-custom-code-variant",
        lambda f: [
            "analyze",
            "--base",
            TINY,
            "--variant",
            str(f / "custom_code"),
            "--data",
            "arith",
            "--samples",
            "2",
            "--out",
            _out(f, "h35"),
        ],  # fmt: skip
        "trust-remote-code",
    ),
    # an option's path that is a file: the error names the option given
    (
        "interpolate-save-is-a-file",
        lambda f: [
            "interpolate",
            "--base",
            TINY,
            "--variant",
            TINY,
            "--weights",
            "0,1,0",
            "--task",
            "arith",
            "--eval-items",
            "1",
            "--save",
            str(f / "a_file"),
            "--out",
            _out(f, "h36"),
        ],  # fmt: skip
        "--save",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(files, case):
    name, argv, fragment = case
    args = argv(files)
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    before = set((files / "out").rglob("*")) if (files / "out").exists() else set()
    rc, stdout, stderr = run_cli(*args)
    assert rc == 2, (rc, stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("midblock: error:") and "Traceback" not in stderr
    assert fragment.lower() in lines[0].lower(), lines[0]
    if out is not None and out.parent == files / "out":
        assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))
    after = set((files / "out").rglob("*")) if (files / "out").exists() else set()
    assert after <= before | ({out} if out else set())


def test_there_are_at_least_thirty_distinct_faults():
    assert len({c[0] for c in CASES}) == len(CASES) >= 70


def test_custom_code_never_runs_and_nobody_is_asked(files, monkeypatch):
    """transformers asks on the terminal whether to run a directory's code when trust_remote_code is unset;
    midblock refuses such a directory itself, and behind that check passes trust_remote_code=False to
    transformers (tested by switching the check off): no question, no code run, one line."""
    import midblock.models.loading as loading

    asked = []
    monkeypatch.setattr("builtins.input", lambda *a: asked.append(a) or "y")
    eval_argv = ["eval", "--model", str(files / "custom_code"), "--task", "arith", "--eval-items", "1"]
    for check in (True, False):
        if not check:
            monkeypatch.setattr(loading, "check_remote_code", lambda path: None)
        for argv in (["layers", str(files / "custom_code")], [*eval_argv, "--out", _out(files, f"cc{check}")]):
            rc, _, err = run_cli(*argv)
            assert rc == 2 and len(err.strip().splitlines()) == 1, err
            assert ("trust-remote-code" if check else "custom code") in err, err
    assert not asked and not (files / "EVIL_RAN").exists()


def test_trust_remote_code_is_an_explicit_opt_in(files, monkeypatch):
    """With --trust-remote-code the directory's code does run (so the refusal above is the flag's doing),
    and the opt-in does not outlive the command."""
    from midblock.models.loading import TRUST_REMOTE_CODE_ENV

    monkeypatch.delenv(TRUST_REMOTE_CODE_ENV, raising=False)
    try:
        run_cli("layers", str(files / "custom_code"), "--trust-remote-code")
    except Exception:  # whatever the planted code does after it ran is not the point
        pass
    assert (files / "EVIL_RAN").exists()
    (files / "EVIL_RAN").unlink()
    assert TRUST_REMOTE_CODE_ENV not in __import__("os").environ


def test_debug_shows_the_traceback(files, capsys):
    from midblock.cli import main
    from midblock.errors import MidblockError

    with pytest.raises(MidblockError):
        main(["layers", TINY, "--band", "banana", "--debug"])


def test_resume_with_a_different_config_is_refused(files):
    out = _out(files, "resume-mismatch")
    rc, _, err = run_cli("train", "--model", TINY, "--steps", "2", "--batch-size", "2", "--no-progress", "--out", out)
    assert rc == 0, err
    summary = json.loads((Path(out) / "train_summary.json").read_text())
    rc, _, err = run_cli(
        "train",
        "--model",
        TINY,
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--rank",
        "16",
        "--resume",
        "--no-progress",
        "--out",
        out,
    )
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "rank" in err
    assert json.loads((Path(out) / "train_summary.json").read_text()) == summary  # untouched
