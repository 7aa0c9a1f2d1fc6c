"""`midblock eval` through the CLI: output, files, and one-line errors with exit 2 and nothing written."""

import json

import pytest

from tests.conftest import run_cli


def test_eval_cli_prints_scores_and_writes_files(tmp_path):
    out = tmp_path / "e"
    rc, stdout, err = run_cli(
        "eval",
        "--model",
        "random:llama-tiny",
        "--task",
        "arith",
        "--protocol",
        "lm-eval",
        "--num-fewshot",
        "0",
        "--eval-items",
        "2",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
        "--no-progress",
    )
    assert rc == 0, err
    assert "strict-match" in stdout and "flexible-extract" in stdout and "95% CI" in stdout
    assert (out / "items.jsonl").exists()
    assert json.loads((out / "summary.json").read_text())["n"] == 2


def test_eval_cli_ppl(tmp_path):
    data = tmp_path / "c.txt"
    data.write_text("Some text here.\n\nAnother document follows.\n")
    rc, stdout, err = run_cli(
        "eval",
        "--model",
        "random:llama-tiny",
        "--task",
        "ppl",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "p"),
        "--no-progress",
    )
    assert rc == 0, err
    assert "perplexity" in stdout
    saved = json.loads((tmp_path / "p" / "ppl.json").read_text())
    assert saved["n_texts"] == 2 and saved["ppl"] > 1 and "provenance" in saved


@pytest.fixture
def no_template_model(tmp_path, tiny):
    model, tok = tiny("llama-tiny")
    tok.chat_template = None
    d = tmp_path / "plain"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def _bad(tmp_path, *argv):
    out = tmp_path / "never"
    rc, stdout, err = run_cli("eval", *argv, "--out", str(out), "--no-progress")
    assert rc == 2, (stdout, err)
    assert err.startswith("midblock: error:") and err.strip().count("\n") == 0 and "Traceback" not in err
    assert not out.exists()
    return err


def test_eval_cli_bad_input(tmp_path, no_template_model):
    assert "unknown task 'mmlu'" in _bad(tmp_path, "--model", "random:llama-tiny", "--task", "mmlu")
    assert "unknown protocol" in _bad(tmp_path, "--model", "random:llama-tiny", "--protocol", "lm-evl")
    assert "--eval-items must be >= 1" in _bad(
        tmp_path, "--model", "random:llama-tiny", "--task", "arith", "--eval-items", "0"
    )
    assert "no chat template" in _bad(tmp_path, "--model", no_template_model, "--task", "arith", "--chat-template")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    assert "needs text" in _bad(tmp_path, "--model", "random:llama-tiny", "--task", "ppl", "--data", str(bad))
    noans = tmp_path / "test.jsonl"
    noans.write_text('{"question": "q?"}\n')
    assert "missing key 'answer'" in _bad(tmp_path, "--model", "random:llama-tiny", "--data", str(noans))
    assert "needs --data" in _bad(tmp_path, "--model", "random:llama-tiny", "--task", "ppl")
    assert "unknown backend" in _bad(tmp_path, "--model", "random:llama-tiny", "--task", "arith", "--backend", "x")
