"""Fingerprints: what shaped a stored result, so that a resumed run never reuses a result made otherwise.

A fingerprint is a nested dict of plain values (model identity, data identity, settings, package version)
and its ``key`` is a short hash of the canonical JSON. Result directories store it next to their results
(:func:`check_or_record`); a later run with another fingerprint is refused with one line naming the first
field that changed (``model.weights``, ``settings.max_new_tokens``...), or, where results live in
per-fingerprint directories (``compare`` cells), simply gets a directory of its own.

Identities are content hashes, not names:

- a loaded model: every tensor's bytes (:func:`tensors_digest`), so a spec, an adapter file or a delta that
  changed in place is noticed whatever path it was loaded from; the tokenizer's vocabulary and template;
- a model spec not yet loaded (:func:`spec_identity`): the files behind it (weights, adapter, delta, the
  packaged GGUF), or ``random:<preset>`` plus the seed of its weights;
- data: the rows themselves (:func:`rows_digest`), whatever file or generator they came from.

File digests are cached on disk by (path, size, mtime), like git's index, so a 7B checkpoint is hashed once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midblock import __version__
from midblock.errors import MidblockError
from midblock.io import read_json, write_json
from midblock.models.loading import EMBEDDED, cache_dir, embedded_gguf, parse_spec

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

FINGERPRINT_FILE = "fingerprint.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_CHUNK = 1 << 22


def package_version() -> str:

    return __version__


def digest(obj: Any, n: int = 16) -> str:
    """A short hash of ``obj``'s canonical JSON (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def rows_digest(rows: Iterable[Any]) -> str:
    """The identity of a data set: a hash of its rows, in order."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- files


def _digest_cache_path() -> Path:

    return cache_dir() / "digests.json"


_memo: dict[str, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (first 16 hex digits), cached by (real path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    stamp = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    if stamp in _memo:
        return _memo[stamp]
    disk = _read_disk_cache()
    if stamp not in disk:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        disk[stamp] = h.hexdigest()[:16]
        if st.st_size >= 1 << 24:  # only large files are worth remembering across processes
            _write_disk_cache(disk)
    _memo[stamp] = disk[stamp]
    return disk[stamp]


def _read_disk_cache() -> dict[str, str]:
    try:
        d = json.loads(_digest_cache_path().read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError, MidblockError):  # a cache only (MidblockError: MIDBLOCK_CACHE is unusable)
        return {}


def _write_disk_cache(d: dict[str, str]) -> None:

    try:
        write_json(_digest_cache_path(), dict(list(d.items())[-500:]))
    except (OSError, MidblockError):
        pass  # a cache only: an unwritable cache directory costs time, never correctness


def dir_digest(path: str | os.PathLike, suffixes: tuple[str, ...] = _WEIGHT_SUFFIXES) -> dict[str, str]:
    """Digests of the files in a model directory that decide its outputs: weights, config, tokenizer."""
    p = Path(path)
    out = {}
    for f in sorted(p.iterdir()):
        if f.is_file() and (f.suffix in suffixes or f.suffix == ".json" or f.name.startswith("tokenizer")):
            out[f.name] = file_digest(f)
    return out


# --------------------------------------------------------------------------- models


def tensors_digest(model: nn.Module) -> str:
    """A hash of every tensor of a loaded model (names, dtypes, shapes and bytes).

    CPU tensors are hashed byte for byte. Tensors on an accelerator are summarised on the device (sum,
    sum of squares, a position-weighted sum in float64) rather than copied to the host: cheap for a 7B
    model, and any realistic change of weights moves those sums. Offloaded (meta) tensors enter by shape.
    """
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.device.type == "meta":
                h.update(b"meta")
            elif t.device.type == "cpu":
                h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            else:
                x = t.detach().reshape(-1).double()
                w = torch.arange(1, x.numel() + 1, device=x.device, dtype=torch.float64).remainder_(997)
                h.update(repr([float(x.sum()), float((x * x).sum()), float((x * w).sum())]).encode())
    return h.hexdigest()[:16]


def tokenizer_digest(tok: PreTrainedTokenizerBase) -> str:
    """The identity of a tokenizer: vocabulary, special tokens, padding side and chat template."""
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    return digest(
        {
            "vocab": rows_digest(sorted(vocab.items())),
            "special": {k: str(v) for k, v in sorted(getattr(tok, "special_tokens_map", {}).items())},
            "padding_side": getattr(tok, "padding_side", None),
            "chat_template": getattr(tok, "chat_template", None),
        }
    )


def model_identity(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    return {"weights": tensors_digest(model), "tokenizer": tokenizer_digest(tokenizer)}


def spec_identity(spec: str, seed: int = 0) -> dict[str, Any]:
    """The identity of a model spec without loading it: the files behind it (or preset and seed)."""

    ms = parse_spec(spec)
    ident: dict[str, Any] = {"kind": ms.kind}
    if ms.kind == "random":
        ident |= {"preset": ms.target, "seed": seed}
    elif ms.kind == "embedded":
        ident |= {"name": ms.target, "gguf": file_digest(embedded_gguf(ms.target)), "package": EMBEDDED[ms.target]}
    elif ms.kind == "gguf":
        ident |= {"gguf": file_digest(ms.target)}
    elif Path(ms.target).is_dir():
        ident |= {"files": dir_digest(ms.target)}
    else:
        ident |= {"hub": ms.target, "revision": _hub_revision(ms.target)}
    if ms.adapter:
        ident["adapter"] = dir_digest(ms.adapter)
    if ms.delta:
        ident["delta"] = file_digest(ms.delta)
    return ident


def _hub_revision(repo_id: str) -> str | None:
    """The commit of the locally cached snapshot of a hub model (None when it is not cached)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True)).name
    except Exception:  # not cached, or offline: loading it will say so with its own error
        return None


# --------------------------------------------------------------------------- comparing and recording


def make(**fields: Any) -> dict[str, Any]:
    """A fingerprint: ``fields`` plus the package version, and its ``key``."""
    fp = {"version": package_version(), **fields}
    return json.loads(json.dumps(fp, default=str)) | {"key": digest(fp)}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the fields that differ between two fingerprints (``key`` left out)."""
    a, b = _flat({k: v for k, v in old.items() if k != "key"}), _flat({k: v for k, v in new.items() if k != "key"})
    return [k for k in dict.fromkeys([*b, *a]) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    fields = changed_fields(old, new)
    if not fields:
        return "a different fingerprint"
    f = fields[0]
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    return f"a different {f} ({_flat(old).get(f, '<absent>')!r} != {_flat(new).get(f, '<absent>')!r}){more}"


def check_or_record(directory: str | os.PathLike, fp: dict[str, Any], what: str, has_results: bool) -> None:
    """Refuse (one line) when ``directory`` holds results of another fingerprint; otherwise record ``fp``.

    ``has_results`` tells whether the directory already holds results: results with no fingerprint at all
    (written by an older midblock) are refused too, since nothing says what made them.
    """

    d = Path(directory)
    f = d / FINGERPRINT_FILE
    if f.exists():
        try:
            old = read_json(f)
        except MidblockError:
            old = {}
        if old.get("key") == fp["key"]:
            return
        raise MidblockError(
            f"{d} holds {what} made with {describe_change(old, fp)}",
            hint="choose another --out, or delete that directory to start over",
        )
    if has_results:
        raise MidblockError(
            f"{d} holds {what} without a fingerprint (an older midblock), so they cannot be reused safely",
            hint="choose another --out, or delete that directory to start over",
        )
    d.mkdir(parents=True, exist_ok=True)
    write_json(f, fp)
