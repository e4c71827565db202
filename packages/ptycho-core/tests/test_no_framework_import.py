"""`import ptycho_core` and every submodule imports no deep-learning framework
(``specs/packages.md``)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import textwrap

import ptycho_core

FRAMEWORKS = ("tensorflow", "torch", "keras", "lightning", "jax")


def _submodules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(ptycho_core.__path__, "ptycho_core."))


def test_submodules_are_discovered():
    names = _submodules()
    for expected in (
        "ptycho_core.config",
        "ptycho_core.grouping",
        "ptycho_core.backends",
        "ptycho_core.io",
    ):
        assert expected in names


def test_core_imports_no_framework():
    mods = ["ptycho_core", *_submodules()]
    code = textwrap.dedent(f"""
        import importlib, json, sys
        for m in {mods!r}:
            importlib.import_module(m)
        print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing ptycho_core pulled in {loaded}"
