"""The converted-backbone cache is keyed by the GGUF file's content, not its path or mtime.

Image layers keep modification times to the second only, and a baked image's
cache is read-only: the lookup must find the converted folder there and write
nothing. The read-only case runs the real lookup in a child process that cannot
write the cache (when the tests run as root: root without the capabilities that
override file permissions, via util-linux's setpriv).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from raee.backbone import Backbone
from raee.defaults import DEFAULT_BACKBONE
from raee.model_loading import converted_folder, file_sha256, resolve_source

CACHE_ENV = "RAEE_CACHE_DIR"

GGUF_BYTES = b"GGUF" + bytes(range(256)) * 64
# Root ignores file modes unless these capabilities are gone.
AS_READER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "cache"
    folder.mkdir()
    monkeypatch.setenv(CACHE_ENV, str(folder))
    yield folder
    _make_writable(folder)  # so that pytest can remove it


def _make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def _truncate_mtimes(root: Path) -> None:
    """What an image layer does to modification times: whole seconds only."""
    for path in [root, *root.rglob("*")]:
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns // 10**9 * 10**9, stat.st_mtime_ns // 10**9 * 10**9 + 1))


def _make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def _snapshot(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_mtime_ns for path in root.rglob("*")}


def test_key_follows_content_not_path_or_mtime(cache: Path) -> None:
    first = cache / "a" / "model.gguf"
    first.parent.mkdir()
    first.write_bytes(GGUF_BYTES)
    moved = cache / "b" / "model.gguf"
    moved.parent.mkdir()
    shutil.copyfile(first, moved)
    os.utime(moved, (1_700_000_000, 1_700_000_000))
    assert converted_folder(first, torch.float32) == converted_folder(moved, torch.float32)
    # The published digest names the same folder as hashing the file does.
    published = file_sha256(first)
    assert converted_folder(first, torch.float32, published) == converted_folder(moved, torch.float32)
    assert converted_folder(first, torch.float32) != converted_folder(first, torch.bfloat16)
    moved.write_bytes(GGUF_BYTES + b"\0")
    assert converted_folder(first, torch.float32) != converted_folder(moved, torch.float32)


def _lookup_as_reader(cache: Path, gguf: Path) -> subprocess.CompletedProcess[str]:
    """``_converted_gguf`` (the loader's real lookup) in a process that cannot write the cache."""
    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from raee.model_loading import _converted_gguf\n"
        "print(_converted_gguf(Path(sys.argv[1]), torch.float32))\n"
    )
    env = {**os.environ, CACHE_ENV: str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [*AS_READER, sys.executable, "-c", code, str(gguf)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_read_only_cache_with_truncated_mtimes_is_found(cache: Path) -> None:
    gguf = cache / "gguf" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(GGUF_BYTES)
    folder = converted_folder(gguf, torch.float32)  # as a conversion at image build time left it
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    _truncate_mtimes(cache)
    _make_read_only(cache)
    before = _snapshot(cache)

    found = _lookup_as_reader(cache, gguf)

    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == folder
    assert _snapshot(cache) == before


def test_read_only_cache_refuses_a_conversion(cache: Path) -> None:
    """The other side: a file with no converted folder would be converted, and the read-only cache refuses."""
    gguf = cache / "gguf" / "other.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(GGUF_BYTES + b"other")
    _make_read_only(cache)

    refused = _lookup_as_reader(cache, gguf)

    assert refused.returncode != 0
    assert "PermissionError" in refused.stderr or "Read-only" in refused.stderr
    assert not converted_folder(gguf, torch.float32).exists()


@pytest.mark.slow
def test_the_converted_backbone_is_readable_by_every_user(gemma: Backbone) -> None:
    """A cache converted by root at image build time is read by uid 10001 at run time."""
    source = resolve_source(DEFAULT_BACKBONE)
    folder = converted_folder(Path(source.path), torch.float32, source.sha256)
    assert (folder / "config.json").is_file()
    for path in [folder, *folder.rglob("*")]:
        wanted = 0o555 if path.is_dir() else 0o444
        assert path.stat().st_mode & wanted == wanted, f"{path} is {oct(path.stat().st_mode)}"
