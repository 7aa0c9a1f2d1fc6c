"""What ``analyze`` checks and loads before any file is written: datasets, token ids, models (with their
compatibility and a content hash), and the fingerprint that guards the cache of a run directory."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midblock.analysis.sequential import release_memory
from midblock.analysis.weights import is_lora_model
from midblock.data import load_examples, resolve_task
from midblock.data.tasks import builtin_tasks
from midblock.errors import MidblockError
from midblock.fingerprint import package_version, tensors_digest
from midblock.io import read_json
from midblock.models.introspect import get_layout, strip_peft

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from midblock.analysis.config import AnalyzeConfig

FINGERPRINT = "fingerprint.json"


def dataset_arg(ds: str) -> tuple[str, str | None, str]:
    """(task, data path or None, display name) of a --data value."""
    builtin = builtin_tasks()
    if ds in builtin:
        return ds, None, ds
    p = Path(ds)
    if not p.exists():
        raise MidblockError(f"dataset '{ds}' is neither {', '.join(builtin)} nor an existing .jsonl file")

    return resolve_task(None, ds), ds, p.stem


def load_texts(ds: str, cfg: AnalyzeConfig, warnings: list[str]) -> tuple[str, list[str]]:
    """(display name, analysis texts) of one --data value; fewer samples than asked add a warning."""

    task, data, name = dataset_arg(ds)
    split = cfg.split if task != "jsonl" else "test"
    exs = load_examples(task, split, data, limit=cfg.samples)
    if not exs:
        raise MidblockError(f"dataset '{ds}' has no samples", hint="check the file or split")
    if len(exs) < cfg.samples:
        warnings.append(f"dataset {name}: {len(exs)} samples available, {cfg.samples} asked; used {len(exs)}")
    return name, [e.text for e in exs]


def tokenize(texts: list[str], tok: PreTrainedTokenizerBase, max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of each text (cut at ``max_length``) and how many were cut."""
    seqs, cut = [], 0
    for t in texts:
        ids = tok(t, add_special_tokens=True, verbose=False)["input_ids"]
        if len(ids) > max_length:
            cut += 1
            ids = ids[:max_length]
        seqs.append(ids)
    return seqs, cut


def model_name(spec: str, taken: set[str]) -> str:
    """A variant's name in the CSV (from its spec; never 'base'), made unique against ``taken``."""
    name = Path(spec.rstrip("/")).name if Path(spec).exists() or "+" in spec else spec
    name = name.replace(",", "_") or "variant"
    if name == "base":
        name = "variant"
    out, k = name, 2
    while out in taken:
        out, k = f"{name}-{k}", k + 1
    taken.add(out)
    return out


def signature(model: nn.Module, tok: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What base and variant must share (kept, so one-model-at-a-time runs check without both loaded)."""

    lay = get_layout(model)
    vocab = hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()
    return {
        "cls": type(strip_peft(model)).__name__,
        "blocks": lay.num_layers,
        "hidden": lay.embedding.weight.shape[-1],
        "vocab": vocab,
    }


def check_compatible(base: dict[str, Any], var: dict[str, Any], name: str) -> None:
    """Compare two ``signature`` results; the error names what differs."""
    if base["cls"] != var["cls"]:
        raise MidblockError(
            f"variant {name} is a {var['cls']}, the base a {base['cls']}", hint="compare models of one architecture"
        )
    if base["blocks"] != var["blocks"]:
        raise MidblockError(f"variant {name} has {var['blocks']} blocks, the base {base['blocks']}")
    if base["hidden"] != var["hidden"]:
        raise MidblockError(f"variant {name} has hidden size {var['hidden']}, the base {base['hidden']}")
    if base["vocab"] != var["vocab"]:
        raise MidblockError(f"variant {name} uses a different tokenizer from the base (vocabularies differ)")


def model_identity(model: nn.Module) -> str:
    """A content hash of a model's tensors (see :func:`midblock.fingerprint.tensors_digest`), so a changed
    checkpoint is noticed. Weights that a ``device_map`` offloaded (left on the meta device) enter by shape."""

    return tensors_digest(model)


def fingerprint(cfg: AnalyzeConfig, identities: dict[str, str], seqs: dict[str, list[list[int]]]) -> dict[str, Any]:

    data_hash = {k: hashlib.sha256(json.dumps(v).encode()).hexdigest()[:16] for k, v in seqs.items()}
    # where and how the models run does not change the numbers (sequential = lockstep is tested)
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("device", "device_map", "sequential")}
    fp = {"models": dict(identities), "data": data_hash, "settings": settings, "version": package_version()}
    fp["key"] = hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return fp


def check_cache(out: Path, fp: dict[str, Any]) -> None:
    f = out / FINGERPRINT
    if not f.exists():
        return
    old = read_json(f, dict)
    if old.get("key") == fp["key"]:
        return
    diff = [k for k in ("models", "data", "version") if old.get(k) != fp.get(k)]
    changed = [k for k in fp["settings"] if old.get("settings", {}).get(k) != fp["settings"][k]]
    if changed:
        diff.append(f"settings ({', '.join(changed)})")
    raise MidblockError(
        f"{out} holds an analysis with different {', '.join(diff)}",
        hint="use another --out, or delete that directory to start over",
    )


def load_models(cfg: AnalyzeConfig, seed: int, load_kw: dict) -> tuple[dict[str, Any], Any, list[dict], dict]:
    """Load and check the models. Returns ({'base': model, variants...}, tokenizer, variant info, identities).

    Lockstep: every model stays loaded. One model at a time: each variant is loaded alone to check it
    against the base and fingerprint it (so a bad variant fails before anything is written), then freed;
    only the base is returned loaded, and each variant is loaded again for its own pass.
    """
    from midblock.models import load_model  # looked up when called: tests count the loads

    def load(spec: str) -> tuple[nn.Module, PreTrainedTokenizerBase]:
        return load_model(spec, dtype=cfg.dtype, device=cfg.device, seed=seed, **load_kw)

    taken = {"base"}
    names = cfg.names or [model_name(vs, taken) for vs in cfg.variants]
    var_info = [{"spec": vs, "name": nm} for vs, nm in zip(cfg.variants, names)]
    models: dict[str, Any] = {}
    if cfg.sequential:
        for v in var_info:
            vm, vt = load(v["spec"])
            v.update(signature=signature(vm, vt), identity=model_identity(vm), lora=is_lora_model(vm))
            vm = vt = None
            release_memory()
    base_model, tok = load(cfg.base)
    sig = signature(base_model, tok)
    models["base"] = base_model
    identities = {"base": model_identity(base_model)}
    for v in var_info:
        if not cfg.sequential:
            vm, vt = load(v["spec"])
            v.update(signature=signature(vm, vt), identity=model_identity(vm), lora=is_lora_model(vm))
            models[v["name"]] = vm
        check_compatible(sig, v["signature"], v["name"])
        identities[v["name"]] = v["identity"]
    return models, tok, var_info, identities
