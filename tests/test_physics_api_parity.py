"""One name and one signature per physics op across the NumPy oracle and both backends.

Read from the sources with :mod:`ast` (this process imports no deep-learning framework). The
backends' ``physics.__all__`` must name the same ops, apart from TF-layout helpers whose names end
in ``_cl``; a shared op takes the same positional arguments in torch and TF, and the same as the
oracle in :mod:`ptycho_core.physics` where the oracle has it. Keyword-only arguments are
framework options (``dtype``; ``device`` exists in torch only).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "core": ROOT / "packages/ptycho-core/src/ptycho_core/physics.py",
    "torch": ROOT / "packages/ptycho-torch/src/ptycho_torch/physics.py",
    "tf": ROOT / "packages/ptycho-tf/src/ptycho_tf/physics.py",
}
FRAMEWORK_ONLY_KWARGS = {"torch": {"device"}, "tf": set(), "core": set()}


def _api(path: Path) -> dict[str, tuple[list[str], set[str]]]:
    """``{name: (positional argument names, keyword-only names)}`` for the names in
    ``__all__`` (each must be a module-level function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    exported: list[str] = []
    funcs: dict[str, ast.FunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            exported = list(ast.literal_eval(node.value))
        elif isinstance(node, ast.FunctionDef):
            funcs[node.name] = node
    assert exported, f"{path} has no __all__"
    missing = sorted(set(exported) - set(funcs))
    assert not missing, f"{path}: __all__ names no function {missing}"
    out = {}
    for name in exported:
        a = funcs[name].args
        out[name] = ([p.arg for p in a.posonlyargs + a.args], {p.arg for p in a.kwonlyargs})
    return out


@pytest.fixture(scope="module")
def apis():
    return {k: _api(p) for k, p in SOURCES.items()}


def test_backends_export_the_same_ops(apis):
    torch_ops = set(apis["torch"])
    tf_ops = set(apis["tf"])
    tf_layout = {n for n in tf_ops if n.endswith("_cl")}
    assert tf_ops - tf_layout == torch_ops
    assert not {n for n in torch_ops if n.endswith("_cl")}


def test_shared_ops_take_the_same_arguments(apis):
    for name, (pos, kw) in apis["torch"].items():
        tf_pos, tf_kw = apis["tf"][name]
        assert tf_pos == pos, f"{name}: tf {tf_pos} vs torch {pos}"
        assert tf_kw - FRAMEWORK_ONLY_KWARGS["tf"] == kw - FRAMEWORK_ONLY_KWARGS["torch"], name


def test_ops_with_an_oracle_match_its_arguments(apis):
    shared = set(apis["core"]) & set(apis["torch"])
    # the ops the backends are tested against must all be in the oracle
    assert {"translate", "extract_patches", "place_patches", "center_mask"} <= shared
    assert {"forward_model", "merge_canvas_size", "object_big_merge"} <= shared
    for name in shared:
        assert apis["core"][name][0] == apis["torch"][name][0], name
