"""Fingerprints: content identities, changed-field names, and the refuse-or-record rule."""

import json
import os

import pytest
import torch

from midblock.errors import MidblockError
from midblock.fingerprint import (
    FINGERPRINT_FILE,
    changed_fields,
    check_or_record,
    describe_change,
    digest,
    file_digest,
    make,
    rows_digest,
    spec_identity,
    tensors_digest,
    tokenizer_digest,
)


def test_digest_is_canonical_and_make_adds_version_and_key():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
    fp = make(settings={"steps": 3, "bands": ("6-23",)})
    assert fp["version"] and fp["key"] and fp["settings"]["bands"] == ["6-23"]  # JSON-normalised
    assert make(settings={"steps": 3, "bands": ["6-23"]})["key"] == fp["key"]
    assert make(settings={"steps": 4, "bands": ["6-23"]})["key"] != fp["key"]


def test_changed_fields_are_named_with_dotted_paths():
    old = make(model={"weights": "aa", "tokenizer": "t"}, settings={"max_new_tokens": 8})
    new = make(model={"weights": "bb", "tokenizer": "t"}, settings={"max_new_tokens": 8})
    assert changed_fields(old, new) == ["model.weights"]
    assert "model.weights ('aa' != 'bb')" in describe_change(old, new)
    added = make(model={"weights": "aa", "tokenizer": "t"}, settings={"max_new_tokens": 8, "seed": 1})
    assert changed_fields(old, added) == ["settings.seed"]


def test_check_or_record_refuses_other_fingerprints_and_unfingerprinted_results(tmp_path):
    a, b = make(settings={"x": 1}), make(settings={"x": 2})
    check_or_record(tmp_path / "r", a, "results", has_results=False)
    assert json.loads((tmp_path / "r" / FINGERPRINT_FILE).read_text())["key"] == a["key"]
    check_or_record(tmp_path / "r", a, "results", has_results=True)  # same: fine
    with pytest.raises(MidblockError, match=r"different settings.x \(1 != 2\)"):
        check_or_record(tmp_path / "r", b, "results", has_results=True)
    with pytest.raises(MidblockError, match="without a fingerprint"):
        check_or_record(tmp_path / "old", a, "results", has_results=True)


def test_file_digest_follows_contents(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"\x00" * 1000)
    d0 = file_digest(f)
    f.write_bytes(b"\x00" * 999 + b"\x01")  # same size
    os.utime(f, ns=(1, 1))  # and even a stale-looking mtime: the (size, mtime) stamp changed
    assert file_digest(f) != d0


def test_tensors_digest_sees_one_changed_weight(tiny):
    model, tok = tiny()
    d = tensors_digest(model)
    assert tensors_digest(tiny()[0]) == d  # same seed, same weights
    with torch.no_grad():
        next(model.parameters()).view(-1)[7] += 1e-6
    assert tensors_digest(model) != d
    assert tensors_digest(tiny(seed=1)[0]) != d
    assert tokenizer_digest(tok) == tokenizer_digest(tiny()[1])


def test_spec_identity_of_presets_and_adapters(tmp_path):
    assert spec_identity("random:llama-tiny") == {"kind": "random", "preset": "llama-tiny", "seed": 0}
    assert spec_identity("random:llama-tiny", seed=1) != spec_identity("random:llama-tiny")
    ad = tmp_path / "ad"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "random:llama-tiny"}))
    (ad / "adapter_model.safetensors").write_bytes(b"one")
    first = spec_identity(str(ad))
    (ad / "adapter_model.safetensors").write_bytes(b"two")
    assert spec_identity(str(ad))["adapter"] != first["adapter"]


def test_rows_digest_is_order_and_content_sensitive():
    rows = [{"question": "q1", "answer": "#### 1"}, {"question": "q2", "answer": "#### 2"}]
    assert rows_digest(rows) == rows_digest([dict(r) for r in rows])
    assert rows_digest(rows[::-1]) != rows_digest(rows)
    assert rows_digest([rows[0], {"question": "q2", "answer": "#### 3"}]) != rows_digest(rows)
