#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests under k8s/ (no cluster, no network).

The entry point: the checks live in the ``k8s_checks`` package next to this file
(``k8s_checks/checker.py`` says what they are). Exit status: 0 all good, 1 problems
found, 2 unusable set-up (no kubectl).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as ``python scripts/check_k8s.py`` scripts/ is on sys.path already; loaded from a file
# (the tests) it is not, and the package beside this file must still import.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from k8s_checks.checker import Report, check, main  # noqa: E402
from k8s_checks.model import SetupError  # noqa: E402
from k8s_checks.render import DEFAULT_K8S_VERSION, find_kubectl  # noqa: E402
from k8s_checks.source import Dockerfile, check_dockerfile  # noqa: E402

__all__ = [
    "DEFAULT_K8S_VERSION",
    "Dockerfile",
    "Report",
    "SetupError",
    "check",
    "check_dockerfile",
    "find_kubectl",
    "main",
]

if __name__ == "__main__":
    sys.exit(main())
