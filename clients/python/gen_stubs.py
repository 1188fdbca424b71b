"""Copy the raee.v1 stubs (scripts/gen_protos.py) into raee_client/_v1 with their imports rewritten.

The copies register the same proto files (``raee/v1/*.proto``) in protobuf's pool, so
raee_client and raee.v1 share descriptors and classes when both are imported.
tests/test_client.py fails when the copies are stale.

python clients/python/gen_stubs.py [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent / "raee" / "v1"
NAMES = [f"{proto}_pb2{kind}" for proto in ("common", "retrieval", "inference") for kind in ("", "_grpc")]


def generate(out: Path) -> list[Path]:
    package = out / "raee_client" / "_v1"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""raee.v1 stubs, copied by clients/python/gen_stubs.py."""\n')
    for name in NAMES:
        for suffix in (".py", ".pyi"):
            text = (SOURCE / f"{name}{suffix}").read_text()
            text = text.replace("from raee.v1 import", "from raee_client._v1 import")
            text = text.replace("import raee.v1.", "import raee_client._v1.")
            text = text.replace(" raee.v1.", " raee_client._v1.")
            (package / f"{name}{suffix}").write_text(text)
    return sorted(package.iterdir())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE)
    for path in generate(parser.parse_args().out):
        print(path)
