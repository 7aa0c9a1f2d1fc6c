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
    return d


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
        "eval-limit-zero",
        lambda f: ["eval", "--model", TINY, "--task", "arith", "--limit", "0", "--out", _out(f, "e3")],
        "limit",
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
            "--limit",
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
            "--limit",
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
            "--limit",
            "1",
            "--out",
            _out(f, "i2"),
        ],
        "extrapolate",
    ),
    ("merge-not-a-run", lambda f: ["merge", str(f / "notamodel"), "--out", _out(f, "m1")], "notamodel"),
    ("demo-unknown-profile", lambda f: ["demo", "--profile", "huge", "--out", _out(f, "d1")], "profile"),
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
    assert len({c[0] for c in CASES}) >= 30


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
