"""Hugging Face config.json files as `TransformerConfig`s.

Supported `model_type`s (`HF_MODEL_TYPES`): llama, mistral, qwen2, gpt2, bloom, mixtral,
qwen2_moe, qwen3, qwen3_moe, gemma, gemma2, gemma3_text, olmo2, phi, phi3, gpt_neox, opt,
deepseek_v2, deepseek_v3. Each reader (`harness.theory.hf_models`) reads the keys transformers
itself reads for that type, with transformers' defaults where a key is absent, and the
resulting counts equal those of the model transformers builds (pinned by
tests/test_hf_architectures.py). A key that could change the counts is never ignored: a key
that is neither read nor known to be neutral is an error (`harness.theory.hf_keys`), as is a
value `TransformerConfig` cannot describe. Every error is a `ValueError` naming the file, the key
or the model type, and what to do instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.checks import file_problem
from harness.theory.config import TransformerConfig
from harness.theory.hf_keys import ConfigKeys
from harness.theory.hf_models import HF_MODEL_TYPES, read_config

__all__ = ["HF_MODEL_TYPES", "config_from_hf", "load_hf_config"]

CONFIG_FILE_NAME = "config.json"

# Types whose config.json wraps a text model in something else, and where to find the text one.
_WRAPPERS: dict[str, str] = {
    "gemma3": "its vision tower is not modelled; load the text model's settings (the "
              "'text_config' entry, model_type 'gemma3_text') instead",
}


def config_from_hf(data: Mapping[str, Any], *, name: str = "custom",
                   ignore_keys: Iterable[str] = ()) -> TransformerConfig:
    """A `TransformerConfig` from a Hugging Face style config.json dict.

    `ignore_keys` names keys the caller knows to change neither parameters nor FLOPs and that
    this loader does not know; any other unknown key is a `ValueError`.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"data must be the dict of a config.json, got {type(data).__name__}")
    if isinstance(ignore_keys, str) or not all(isinstance(key, str) for key in ignore_keys):
        raise ValueError(f"ignore_keys must be a list of key names, got {ignore_keys!r}")
    model_type = data.get("model_type")
    supported = ", ".join(HF_MODEL_TYPES)
    if model_type is None:
        raise ValueError(f"config.json has no 'model_type' key; supported model types: "
                         f"{supported}")
    if isinstance(model_type, str) and model_type in _WRAPPERS:
        raise ValueError(f"model_type {model_type!r} is not supported: {_WRAPPERS[model_type]}")
    if not isinstance(model_type, str) or model_type not in HF_MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not supported; supported model types: "
                         f"{supported}")
    keys = ConfigKeys(data, model_type)
    cfg = read_config(keys, name)
    keys.check_all_read(ignore_keys)
    return cfg


def _config_file(path: Path) -> Path:
    """`path` itself, or the config.json inside it when it is a directory."""
    if path.is_dir():
        inside = path / CONFIG_FILE_NAME
        if not inside.exists():
            raise ValueError(f"{path}: the directory has no {CONFIG_FILE_NAME}; pass the model "
                             f"directory that holds {CONFIG_FILE_NAME} (as downloaded from the "
                             f"Hugging Face hub) or the file itself")
        return inside
    return path


def load_hf_config(path: str | os.PathLike[str], *,
                   ignore_keys: Iterable[str] = ()) -> TransformerConfig:
    """Read a Hugging Face config.json, given as the file or as the model directory holding
    it; the config is named after that directory. Every error names the path and the fix."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise ValueError(f"path must be a model directory or its {CONFIG_FILE_NAME} as a str "
                         f"or pathlib.Path, got {type(path).__name__} ({path!r})")
    given = Path(path)
    if not str(path).strip():
        raise ValueError("path is empty; pass a model directory or its config.json")
    p = _config_file(given)
    problem = file_problem(p)
    if problem is not None:
        raise ValueError(f"{p} {problem}; pass a model directory or its {CONFIG_FILE_NAME}")
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{p}: no such file; pass a model directory or its "
                         f"{CONFIG_FILE_NAME}") from None
    except OSError as exc:
        raise ValueError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                         f"{exc.start}); a {CONFIG_FILE_NAME} is UTF-8 JSON - is this the "
                         f"right file (not the weights)?") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno}, column "
                         f"{exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a JSON object of model settings, got a JSON "
                         f"{type(data).__name__}")
    folder = p.resolve().parent.name or p.stem
    try:
        return config_from_hf(data, name=folder or "custom", ignore_keys=ignore_keys)
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None
