"""The committed stubs in raee/v1 and raee/oip are exactly what scripts/gen_protos.py makes of proto/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    generated = module.generate(tmp_path)
    committed = sorted(path for package in module.PACKAGES for path in (ROOT / package).glob("*.py*"))
    assert [p.relative_to(tmp_path) for p in generated] == [p.relative_to(ROOT) for p in committed]
    stale = [p.name for p, c in zip(generated, committed, strict=True) if p.read_bytes() != c.read_bytes()]
    assert not stale, f"stale stubs {stale}: run `python scripts/gen_protos.py` and commit"
