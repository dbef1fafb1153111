"""What ``dspex serve`` serves and how: one ``ServeConfig`` from a config file or flags.

A config file is TOML (``[serve]`` table, or the whole file), YAML or JSON::

    [serve]
    host = "127.0.0.1"          # loopback by default; any other bind needs an API key
    port = 8000
    api_key_env = "DSPEX_SERVE_KEY"   # the key is read from this variable, never from the file
    max_in_flight = 256         # requests running at once; more get 429 + Retry-After
    max_body_bytes = 1048576    # larger bodies get 413

    [serve.lm]                  # the programs' LM (else config [lm], else the embedded model)
    model = "openai/gpt-4o-mini"

    [[serve.programs]]
    name = "qa"
    signature = "question -> answer"
    state = "qa.json"           # program state saved by Predict.save / DSPy module.save
    module = "Predict"          # or "ChainOfThought"; impl = "dspy" runs it in the dspy pool

    [[serve.programs]]
    name = "rag"
    object = "mypkg.programs:rag"   # any callable / predictor / dspex.Module, imported

    [[serve.programs]]
    name = "ping"
    pool = "dspy"
    handler = "dspy.ping"       # a pool handler, called with the inputs as keyword arguments
    signature = "-> pid: int"   # stream = true: a generator handler, its chunks streamed over SSE

    [[serve.pipelines]]
    name = "triage"
    path = "triage.yaml"        # written by Pipeline.save
    allow = ["mypkg.steps:*"]

Relative paths are relative to the config file. ``[serve.pools.<name>]`` tables add or
override pools (same keys as the project's ``[pools]``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["EndpointConfig", "ServeConfig", "is_loopback", "load_serve_config"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SERVE_KEYS = {
    "host", "port", "api_key_env", "max_in_flight", "max_body_bytes", "retry_after_s",
    "request_timeout_s", "lm", "programs", "pipelines", "pools", "page", "log_level",
}
_PROGRAM_KEYS = {"name", "signature", "state", "module", "impl", "object", "pool", "handler",
                 "description", "timeout_s", "stream"}
_PIPELINE_KEYS = {"name", "path", "allow", "description", "timeout_s"}


@dataclass(frozen=True)
class EndpointConfig:
    """One served program or pipeline, exactly as configured (resolved later by ``targets``)."""

    name: str
    kind: str  # "state" | "object" | "handler" | "pipeline"
    signature: str | None = None
    state: str | None = None
    module: str = "Predict"
    impl: str = "native"
    object: str | None = None
    pool: str | None = None
    handler: str | None = None
    path: str | None = None
    allow: tuple[str, ...] = ()
    description: str = ""
    timeout_s: float | None = None
    stream: bool = False  # handler programs: a generator handler whose chunks /stream sends as they come


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str | None = None
    max_in_flight: int = 256
    max_body_bytes: int = 1 << 20
    retry_after_s: float = 1.0
    request_timeout_s: float | None = None
    lm: dict[str, Any] | None = None
    programs: list[EndpointConfig] = field(default_factory=list)
    pipelines: list[EndpointConfig] = field(default_factory=list)
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    page: bool = True
    log_level: str = "warning"

    @property
    def endpoints(self) -> list[EndpointConfig]:
        return [*self.programs, *self.pipelines]

    def api_key(self) -> str | None:
        """The API key from the environment variable ``api_key_env`` (None when unset)."""
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    def check(self) -> None:
        """Raise ``ConfigError`` for anything that would make a broken or unsafe server."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve port {self.port} is out of range; use 0-65535 (0 = any free port)")
        for key in ("max_in_flight", "max_body_bytes"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"serve {key} must be >= 1, got {getattr(self, key)}")
        if self.retry_after_s <= 0:
            raise ConfigError(f"serve retry_after_s must be > 0, got {self.retry_after_s}")
        if not is_loopback(self.host):
            if not self.api_key_env:
                raise ConfigError(
                    f"refusing to serve on {self.host!r} (not loopback) without an API key: set "
                    "api_key_env (--key-env VAR) and export the key in VAR, or bind 127.0.0.1"
                )
            if not self.api_key():
                raise ConfigError(
                    f"refusing to serve on {self.host!r} (not loopback): the API key variable "
                    f"{self.api_key_env} is empty or unset; export it, or bind 127.0.0.1"
                )
        if self.api_key_env and not self.api_key():
            raise ConfigError(
                f"api_key_env is {self.api_key_env!r} but that variable is empty or unset; "
                "export the key or drop api_key_env"
            )
        seen: set[str] = set()
        for ep in self.endpoints:
            if ep.name in seen:
                raise ConfigError(f"two endpoints are named {ep.name!r}; give each program and pipeline its own name")
            seen.add(ep.name)
        if not self.endpoints:
            raise ConfigError("nothing to serve: add [[serve.programs]] / [[serve.pipelines]] or --program/--pipeline")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read serve config {str(path)!r}: {exc.strerror or exc}; check the path") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except Exception as exc:
        raise ConfigError(f"serve config {str(path)!r} does not parse: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"serve config {str(path)!r} must hold a table/object, not {type(data).__name__}")
    tool = data.get("tool")
    if isinstance(tool, dict) and isinstance(tool.get("dspex"), dict):
        data = tool["dspex"]
    serve = data.get("serve", data)
    if not isinstance(serve, dict):
        raise ConfigError(f"[serve] in {str(path)!r} must be a table")
    return serve


def _rel(base: Path | None, value: Any) -> str:
    p = Path(str(value)).expanduser()
    if base is not None and not p.is_absolute():
        p = base / p
    return str(p)


def _endpoint(raw: Any, kind_of: str, base: Path | None) -> EndpointConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"each serve {kind_of} must be a table with a name, got {raw!r}")
    keys = _PROGRAM_KEYS if kind_of == "program" else _PIPELINE_KEYS
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise ConfigError(f"serve {kind_of} {raw.get('name', '?')!r}: unknown key(s) {unknown}; known: {sorted(keys)}")
    name = str(raw.get("name") or "")
    if not _NAME.match(name):
        raise ConfigError(
            f"serve {kind_of} name {name!r} is not usable in a URL; use letters, digits, '_', '-', '.' (max 64)"
        )
    timeout = raw.get("timeout_s")
    common: dict[str, Any] = {
        "name": name,
        "description": str(raw.get("description") or ""),
        "timeout_s": float(timeout) if timeout is not None else None,
    }
    if kind_of == "pipeline":
        if not raw.get("path"):
            raise ConfigError(f"serve pipeline {name!r} needs path = \"<file written by Pipeline.save>\"")
        allow = raw.get("allow") or ()
        allow = (allow,) if isinstance(allow, str) else tuple(str(a) for a in allow)
        return EndpointConfig(kind="pipeline", path=_rel(base, raw["path"]), allow=allow, **common)
    sig = raw.get("signature")
    sig = str(sig) if sig is not None else None
    if raw.get("object"):
        ref = str(raw["object"])
        if ":" not in ref:
            raise ConfigError(f"serve program {name!r}: object {ref!r} must be 'package.module:attribute'")
        return EndpointConfig(kind="object", object=ref, signature=sig, **common)
    if raw.get("handler"):
        if not sig:
            raise ConfigError(f"serve program {name!r}: a handler program needs signature = \"in -> out\"")
        return EndpointConfig(kind="handler", handler=str(raw["handler"]), pool=str(raw.get("pool") or "dspy"),
                              signature=sig, stream=bool(raw.get("stream", False)), **common)
    if not sig:
        raise ConfigError(
            f"serve program {name!r} needs signature = \"question -> answer\" (saved state does not record "
            "field names), or object = \"pkg.mod:attr\", or handler = \"name\""
        )
    module = str(raw.get("module") or "Predict")
    if module not in ("Predict", "ChainOfThought"):
        raise ConfigError(f"serve program {name!r}: module must be Predict or ChainOfThought, got {module!r}")
    impl = str(raw.get("impl") or "native")
    if impl not in ("native", "dspy"):
        raise ConfigError(f"serve program {name!r}: impl must be native or dspy, got {impl!r}")
    state = _rel(base, raw["state"]) if raw.get("state") else None
    return EndpointConfig(kind="state", signature=sig, state=state, module=module, impl=impl,
                          pool=str(raw.get("pool") or "dspy"), **common)


def load_serve_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> ServeConfig:
    """Build a ``ServeConfig`` from a file (optional) with ``overrides`` (flags) on top.

    ``overrides`` may carry the scalar keys plus ``programs`` / ``pipelines`` (lists of
    tables like the file's), appended to the file's. Does not call ``check()``."""
    raw: dict[str, Any] = {}
    base: Path | None = None
    if path is not None:
        p = Path(path)
        raw = dict(_read(p))
        base = p.resolve().parent
    unknown = sorted(set(raw) - _SERVE_KEYS)
    if unknown:
        raise ConfigError(f"unknown [serve] key(s) {unknown}; known: {sorted(_SERVE_KEYS)}")
    extra_programs = overrides.pop("programs", None) or []
    extra_pipelines = overrides.pop("pipelines", None) or []
    raw.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("programs", "pipelines"):
        if not isinstance(raw.get(key, []), list):
            raise ConfigError(f"serve {key} must be a list of tables ([[serve.{key}]])")
    try:
        cfg = ServeConfig(
            host=str(raw.get("host", "127.0.0.1")),
            port=int(raw.get("port", 8000)),
            api_key_env=str(raw["api_key_env"]) if raw.get("api_key_env") else None,
            max_in_flight=int(raw.get("max_in_flight", 256)),
            max_body_bytes=int(raw.get("max_body_bytes", 1 << 20)),
            retry_after_s=float(raw.get("retry_after_s", 1.0)),
            request_timeout_s=float(raw["request_timeout_s"]) if raw.get("request_timeout_s") else None,
            lm=dict(raw["lm"]) if raw.get("lm") else None,
            pools={str(k): dict(v) for k, v in (raw.get("pools") or {}).items()},
            page=bool(raw.get("page", True)),
            log_level=str(raw.get("log_level", "warning")),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad [serve] value: {exc}") from None
    cfg.programs = [_endpoint(p, "program", base) for p in raw.get("programs", [])]
    cfg.programs += [_endpoint(p, "program", None) for p in extra_programs]
    cfg.pipelines = [_endpoint(p, "pipeline", base) for p in raw.get("pipelines", [])]
    cfg.pipelines += [_endpoint(p, "pipeline", None) for p in extra_pipelines]
    if cfg.lm is not None and "api_key" in cfg.lm:
        raise ConfigError("[serve.lm] must not hold api_key; name the variable with api_key_env instead")
    return cfg
