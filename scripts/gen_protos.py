"""Generate the stubs of proto/ into raee/v1 and raee/oip (committed; tests/test_protos.py checks them).

python scripts/gen_protos.py [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGES = ("raee/v1", "raee/oip")  # raee.v1: the native API; raee.oip: KServe's Open Inference Protocol


def generate(out: Path) -> list[Path]:
    protos = sorted(PROTO_DIR.glob("raee/*/*.proto"))
    include = str(files("grpc_tools") / "_proto")
    args = [
        "protoc",
        *(f"--plugin=protoc-gen-{name}={_plugin(name)}" for name in ("mypy", "mypy_grpc")),
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(p.relative_to(PROTO_DIR)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package in PACKAGES:
        (out / package / "__init__.py").write_text(
            f'"""Generated stubs of proto/{package} (scripts/gen_protos.py)."""\n'
        )
    return sorted(path for package in PACKAGES for path in (out / package).iterdir())


def _plugin(name: str) -> Path:
    """mypy-protobuf's protoc plugins, next to this Python (the venv need not be on PATH)."""
    beside = Path(sys.executable).parent / f"protoc-gen-{name}"
    found = beside if beside.exists() else shutil.which(f"protoc-gen-{name}")
    if found is None:
        raise SystemExit(f"protoc-gen-{name} not found: install the dev extras (mypy-protobuf)")
    return Path(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    generated = generate(parser.parse_args().out)
    print("\n".join(str(p) for p in generated), file=sys.stderr)


if __name__ == "__main__":
    main()
