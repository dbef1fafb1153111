"""Which model the local server runs, and the GGUF file for it.

The choice, first match wins: the ``model`` argument, ``$DSPEX_LOCAL_MODEL``, config
``[local] model`` or ``[local] model_path``, else :data:`~.models.DEFAULT_MODEL`.
Each is a catalogue name (``qwen2.5-0.5b``, ``qwen2.5-1.5b``, ``smollm2-135m``) or a
path to a ``.gguf`` file. A catalogue model is assembled from its packages (once,
verified); a path is checked for the GGUF magic.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LocalModelError
from .models import DEFAULT_MODEL, MODELS, ModelSpec, assemble, install_command

_SERVER_MODULES = (
    "llama_cpp",
    "uvicorn",
    "fastapi",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)
_OTHERWISE = "or set [lm] in dspex.toml or DSPEX_LM to use a real endpoint"


def local_config() -> dict[str, Any]:
    try:
        from ..settings import load_config

        section = load_config().get("local", {})
    except Exception:  # a broken config must not hide the model; load_config reports it elsewhere
        return {}
    return section if isinstance(section, dict) else {}


@dataclass(frozen=True)
class Selected:
    """The model to serve: its file, the name the server gives it, and its catalogue entry."""

    path: Path
    alias: str
    spec: ModelSpec | None  # None for a GGUF path outside the catalogue

    @property
    def lm_model(self) -> str:
        return f"openai/{self.alias}"


def choice(model: str | os.PathLike[str] | None = None) -> str:
    """The raw choice (a catalogue name or a path), before anything is looked up."""
    cfg = local_config()
    picked = model or os.environ.get("DSPEX_LOCAL_MODEL") or cfg.get("model") or cfg.get("model_path")
    return str(picked) if picked else DEFAULT_MODEL


def spec_for(model: str | os.PathLike[str] | None = None) -> ModelSpec | None:
    """The catalogue entry chosen (None when the choice is a path to a foreign GGUF)."""
    picked = choice(model)
    spec = MODELS.get(picked.strip().lower())
    if spec is not None:
        return spec
    name = Path(picked).name
    return next((s for s in MODELS.values() if s.file == name), None)


def alias_for(model: str | os.PathLike[str] | None = None) -> str:
    """The server's model id for the choice, without assembling or opening anything."""
    picked = choice(model)
    spec = spec_for(picked)
    return spec.alias if spec is not None else Path(picked).stem.lower()


def select(model: str | os.PathLike[str] | None = None) -> Selected:
    """The model to serve, assembling a catalogue model into the cache if needed."""
    picked = choice(model)
    spec = MODELS.get(picked.strip().lower())
    if spec is not None:
        try:
            path = assemble(spec)
        except LocalModelError as exc:
            raise LocalModelError(
                f"the embedded model {spec.name} is not available: {exc}. Install it with: "
                f"{install_command(spec)}; or set DSPEX_LOCAL_MODEL to another model "
                f"({', '.join(MODELS)}) or a .gguf path; {_OTHERWISE}"
            ) from None
        check_gguf(path)
        return Selected(path.resolve(), spec.alias, spec)
    p = Path(picked).expanduser()
    check_gguf(p)
    return Selected(p.resolve(), alias_for(picked), spec_for(picked))


def hint() -> str:
    """What to do when the chosen model file is missing or bad."""
    default = MODELS[DEFAULT_MODEL]
    return (
        f"set DSPEX_LOCAL_MODEL to a model name ({', '.join(MODELS)}) or an existing .gguf file, "
        f"or unset it for the default ({install_command(default)}); {_OTHERWISE}"
    )


def check_gguf(p: Path) -> None:
    if not p.is_file():
        raise LocalModelError(f"local model file {p} does not exist; {hint()}")
    try:
        with p.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise LocalModelError(f"cannot read local model file {p}: {exc}; {hint()}") from exc
    if magic != b"GGUF":
        raise LocalModelError(f"local model file {p} is not a GGUF file (bad magic {magic!r}); {hint()}")


def missing_server_modules() -> list[str]:
    """The modules llama-cpp-python's server needs that are not installed (``dspex doctor`` too)."""
    return [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]


def check_server_installed() -> None:
    missing = missing_server_modules()
    if missing:
        raise LocalModelError(
            f"the embedded model needs llama-cpp-python's server ({', '.join(missing)} not installed): "
            f"pip install 'dspex[local]' (llama-cpp-python[server]); {_OTHERWISE}"
        )
