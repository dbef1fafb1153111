"""``dspex doctor``: what is installed, what runs, what is missing and the exact fix.

Each check has a status: ``ok``; ``info`` (optional extra absent); ``warn`` (a
feature is unavailable, e.g. ``impl="dspy"`` without DSPy); ``fail`` (the default
path cannot work: a core dependency is missing, the config is invalid, the
configured LM is unreachable, or no LM is usable at all). Exit code 0 without
failures, 3 with at least one. ``--json`` prints::

    {"ok": bool, "version": str, "checks": [{"name", "status", "detail", "fix"}],
     "problems": [{"name", "status", "detail", "fix"}]}   # problems: warn + fail
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from ..cli import EXIT_ENV, EXIT_OK
from .common import emit_json

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
_MARK = {OK: "ok  ", INFO: "--  ", WARN: "warn", FAIL: "FAIL"}


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package(
    name: str, dist: str, module: str, *, required: str | None, fix: str, pin: str | None = None
) -> Check:
    """A package is present when its module is findable (never imported: doctor stays fast)."""
    found = importlib.util.find_spec(module) is not None
    version = _dist_version(dist)
    if found:
        detail = f"{dist} {version or '(version unknown)'}"
        if pin and version and version != pin:
            return Check(name, WARN, f"{detail}, dspex is tested with {pin}", f"pip install '{dist}=={pin}'")
        return Check(name, OK, detail)
    return Check(name, required or INFO, f"{dist} is not installed", fix)


def _installed_checks() -> list[Check]:
    from .. import __version__

    checks = [Check("dspex", OK, f"dspex {__version__} ({os.path.dirname(os.path.dirname(__file__))})")]
    py = sys.version_info
    checks.append(
        Check("python", OK, f"{py.major}.{py.minor}.{py.micro} ({sys.executable})")
        if py >= (3, 11)
        else Check("python", FAIL, f"{py.major}.{py.minor} is too old", "use Python 3.11 or newer")
    )
    checks.append(
        _package("msgpack", "msgpack", "msgpack", required=FAIL, fix="pip install 'msgpack==1.2.4'")
    )
    checks.append(_package("httpx", "httpx", "httpx", required=FAIL, fix="pip install 'httpx==0.28.1'"))
    checks.append(_package("pyyaml", "PyYAML", "yaml", required=FAIL, fix="pip install 'pyyaml==6.0.3'"))
    checks.append(
        _package(
            "dspy",
            "dspy",
            "dspy",
            required=WARN,
            fix="pip install 'dspex[dspy]'  (DSPy 3.4.1: impl=dspy, optimize)",
            pin="3.4.1",
        )
    )
    from ..local._model import missing_server_modules

    missing = missing_server_modules()
    if not missing:
        checks.append(
            Check(
                "llama-cpp-python",
                OK,
                f"llama-cpp-python {_dist_version('llama_cpp_python') or ''} with server".strip(),
            )
        )
    else:
        what = "not installed" if "llama_cpp" in missing else f"server extras missing ({', '.join(missing)})"
        checks.append(
            Check(
                "llama-cpp-python",
                WARN,
                f"llama-cpp-python {what} (the embedded model cannot run)",
                "pip install 'dspex[local]'",
            )
        )
    checks.append(_model_file())
    checks.append(
        _package("rich", "rich", "rich", required=None, fix="pip install 'dspex[cli]'  (progress bars)")
    )
    checks.append(
        _package("ray", "ray", "ray", required=None, fix="pip install 'ray[default]'  (pools on Ray actors)")
    )
    return checks


def _model_file() -> Check:
    """Which embedded model, its file and pinned checksum; never assembles (doctor stays fast)."""
    from ..errors import LocalModelError
    from ..local import _model, models

    spec = _model.spec_for()
    picked = _model.choice()
    if spec is not None and spec.parts and picked.strip().lower() in models.MODELS:
        missing = models.missing_parts(spec)
        path = models.assembled(spec)
        if missing and path is None:
            return Check(
                "model file",
                WARN,
                f"embedded model {spec.name}: {_first_clause(str(missing[0]))}",
                models.install_command(spec),
            )
        state = "assembled, sha256 verified" if path else "parts installed, assembled on first use"
        size = spec.size / 1e6
        return Check(
            "model file",
            OK,
            f"{spec.name} ({spec.alias}, {spec.licence}) {path or models.models_dir() / spec.file} "
            f"({size:.0f} MB, {state}; "
            f"sha256 {spec.sha256})",
        )
    try:
        path = _model.select(picked).path
    except LocalModelError as exc:
        fix = models.install_command(spec) if spec is not None else _model.hint()
        return Check("model file", WARN, f"embedded model GGUF not found: {_first_clause(str(exc))}", fix)
    size = path.stat().st_size / 1e6
    return Check("model file", OK, f"{picked} {path} ({size:.0f} MB)")


def _local_install() -> str:
    from ..local import models

    return models.install_command(models.MODELS[models.DEFAULT_MODEL])


def _first_clause(text: str) -> str:
    return text.split(";")[0]


def _config_checks() -> tuple[list[Check], dict[str, Any] | None]:
    from ..errors import ConfigError
    from ..settings import _find_config_file, load_config

    checks: list[Check] = []
    explicit = os.environ.get("DSPEX_CONFIG")
    found = None if explicit else _find_config_file(__import__("pathlib").Path.cwd())
    where = explicit or (str(found[0]) + (" [tool.dspex]" if found[1] else "") if found else None)
    try:
        cfg = load_config(reload=True)
    except ConfigError as exc:
        checks.append(
            Check("config", FAIL, f"{where}: {' '.join(str(exc).split())}", f"fix or remove {where}")
        )
        return checks, None
    if where:
        checks.append(Check("config", OK, f"{where}{' (DSPEX_CONFIG)' if explicit else ''}"))
    else:
        checks.append(
            Check(
                "config",
                INFO,
                "no dspex.toml or [tool.dspex] found; using the defaults",
                "create dspex.toml to configure [lm] and [pools.*]",
            )
        )
    return checks, cfg


def probe(url: str, timeout: float) -> tuple[bool, str]:
    """Any HTTP answer means reachable; a refused/failed connection does not."""
    req = urllib.request.Request(url, headers={"User-Agent": "dspex-doctor"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return True, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return True, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, str(reason)


def _lm_checks(cfg: dict[str, Any], network: bool, local_ok: bool) -> list[Check]:
    lm = cfg.get("lm") or {}
    model = lm.get("model")
    base = lm.get("api_base")
    if not model and not base:
        if local_ok:
            return [Check("LM", OK, "none configured: the embedded local model is used (started on demand)")]
        return [
            Check(
                "LM",
                FAIL,
                "no LM configured and the embedded model cannot run",
                "pip install 'dspex[local]' && " + _local_install() + "  "
                "(or set DSPEX_LM=openai/<model> DSPEX_API_BASE=<url>)",
            )
        ]
    model = model or "openai/default"
    provider = model.split("/", 1)[0]
    checks: list[Check] = []
    key_env = lm.get("api_key_env") or {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}.get(
        provider
    )
    if not base:
        base = "https://api.anthropic.com/v1" if provider == "anthropic" else "https://api.openai.com/v1"
        if key_env and not os.environ.get(key_env):
            checks.append(
                Check(
                    "API key",
                    FAIL,
                    f"{key_env} is not set (needed by {model})",
                    f"export {key_env}=<your key>",
                )
            )
    elif lm.get("api_key_env") and not os.environ.get(lm["api_key_env"]):
        checks.append(
            Check(
                "API key", WARN, f"{lm['api_key_env']} is not set", f"export {lm['api_key_env']}=<your key>"
            )
        )
    if not network:
        checks.insert(0, Check("LM", INFO, f"{model} @ {base} (reachability not checked: --no-network)"))
        return checks
    reachable, how = probe(base.rstrip("/") + "/models", timeout=3.0)
    if reachable:
        checks.insert(0, Check("LM", OK, f"{model} @ {base} reachable ({how})"))
    else:
        checks.insert(
            0,
            Check(
                "LM",
                FAIL,
                f"{model} @ {base} unreachable ({how})",
                "start that server, or point DSPEX_API_BASE / [lm] api_base at a running one",
            ),
        )
    return checks


def _local_server_check() -> Check:
    from ..errors import DspexError

    try:
        from ..local import server_status

        info = server_status()
    except DspexError:
        return Check("local server", INFO, "not available (model file missing)")
    if info.get("running") and info.get("healthy"):
        return Check("local server", OK, f"running at {info.get('base_url')} (pid {info.get('pid')})")
    if info.get("running"):
        return Check(
            "local server",
            WARN,
            f"pid {info.get('pid')} runs but is not healthy",
            "dspex lm stop && dspex lm serve",
        )
    return Check("local server", INFO, "not running (started on demand, or `dspex lm serve`)")


def _pool_checks(cfg: dict[str, Any]) -> list[Check]:
    checks = []
    for name, pool in sorted((cfg.get("pools") or {}).items()):
        if not isinstance(pool, dict):
            checks.append(Check(f"pool {name}", FAIL, "not a table", f"write [pools.{name}] as a table"))
            continue
        handlers = pool.get("handlers") or []
        missing = [h for h in handlers if isinstance(h, str) and _find_spec(h) is None]
        preload_missing = [
            m for m in pool.get("preload") or [] if isinstance(m, str) and _find_spec(m) is None
        ]
        if pool.get("python"):
            checks.append(
                Check(
                    f"pool {name}",
                    OK,
                    f"size {pool.get('size')}, python {pool['python']} (modules not checked)",
                )
            )
        elif missing or preload_missing:
            absent = ", ".join(missing + preload_missing)
            fix = (
                "pip install 'dspex[dspy]'"
                if "dspy" in absent
                else f"make {absent} importable (PYTHONPATH / pip install)"
            )
            checks.append(
                Check(f"pool {name}", WARN, f"size {pool.get('size')}, cannot import {absent}", fix)
            )
        else:
            checks.append(
                Check(
                    f"pool {name}", OK, f"size {pool.get('size')}, handlers {', '.join(map(str, handlers))}"
                )
            )
    return checks


def _find_spec(module: str) -> Any:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def diagnose(network: bool = True) -> list[Check]:
    checks = _installed_checks()
    config_checks, cfg = _config_checks()
    checks += config_checks
    by_name = {c.name: c for c in checks}
    local_ok = by_name["llama-cpp-python"].status == OK and by_name["model file"].status == OK
    if cfg is not None:
        checks += _lm_checks(cfg, network, local_ok)
        checks += _pool_checks(cfg)
    if by_name["model file"].status == OK:
        checks.append(_local_server_check())
    return checks


def run(args: argparse.Namespace) -> int:
    checks = diagnose(network=not args.no_network)
    problems = [c for c in checks if c.status in (WARN, FAIL)]
    failed = any(c.status == FAIL for c in checks)
    code = EXIT_ENV if failed else EXIT_OK
    if args.json:
        from .. import __version__

        emit_json(
            {
                "ok": not failed,
                "version": __version__,
                "checks": [asdict(c) for c in checks],
                "problems": [asdict(c) for c in problems],
            }
        )
        return code
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"[{_MARK[c.status]}] {c.name.ljust(width)}  {c.detail}")
    if problems:
        print(
            f"\n{len(problems)} problem(s):"
            if failed
            else f"\n{len(problems)} warning(s) (dspex works, with less):"
        )
        for c in problems:
            print(f"  {c.name}: {c.detail}\n    fix: {c.fix}")
    else:
        print("\neverything needed is installed and running")
    if failed:
        sys.stderr.write("dspex: error: doctor found problems — run the fix commands above\n")
    return code
