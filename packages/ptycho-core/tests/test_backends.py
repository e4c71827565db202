"""Backend registry, backend table and default backend (``specs/packages.md``).

Never imports torch or TensorFlow in the pytest process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from ptycho_core import backends
from ptycho_core.backends import BACKEND_NAMES, available_backends, load_backend
from ptycho_core.errors import BackendUnavailableError

FRAMEWORKS = ("torch", "tensorflow", "keras", "lightning")

# A meta-path finder that makes the backends and their frameworks look uninstalled.
BLOCKER = textwrap.dedent("""
    import sys
    BLOCKED = {"torch", "lightning", "tensorflow", "keras", "ptycho_torch", "ptycho_tf"}
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by test)")
            return None
    sys.meta_path.insert(0, _Block())
""")


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_unknown_name_lists_valid_names():
    for bad in ("jax", "torch", "", None, "PyTorch"):
        with pytest.raises(ValueError) as info:
            load_backend(bad)  # type: ignore[arg-type]
        assert not isinstance(info.value, BackendUnavailableError)
        assert "pytorch" in str(info.value) and "tensorflow" in str(info.value)


@pytest.mark.parametrize(
    ("name", "label", "dist"),
    [
        ("pytorch", "PyTorch backend selected", "pip install ptycho-torch"),
        ("tensorflow", "TensorFlow backend selected", "pip install ptycho-tf"),
    ],
)
def test_hidden_backend_raises_unavailable(name, label, dist):
    code = BLOCKER + textwrap.dedent(f"""
        import json
        from ptycho_core.backends import load_backend, available_backends
        from ptycho_core.errors import BackendUnavailableError
        try:
            load_backend({name!r})
            out = {{"raised": None}}
        except BackendUnavailableError as e:
            out = {{"raised": type(e).__name__, "msg": str(e),
                   "runtime": isinstance(e, RuntimeError), "backend": e.backend}}
        out["available"] = available_backends()
        out["frameworks"] = [m for m in {FRAMEWORKS!r} if m in sys.modules]
        print(json.dumps(out))
    """)
    out = _run(code)
    assert out["raised"] == "BackendUnavailableError"
    assert out["runtime"] and out["backend"] == name
    assert label in out["msg"] and dist in out["msg"]
    assert out["available"] == []
    assert out["frameworks"] == []


def test_available_backends_imports_nothing():
    code = textwrap.dedent(f"""
        import json, sys
        from ptycho_core.backends import available_backends
        names = available_backends()
        print(json.dumps({{"names": names,
                          "frameworks": [m for m in {FRAMEWORKS!r} if m in sys.modules],
                          "backends": [m for m in ("ptycho_torch", "ptycho_tf")
                                       if m in sys.modules]}}))
    """)
    out = _run(code)
    assert set(out["names"]) <= set(BACKEND_NAMES)
    assert out["frameworks"] == [] and out["backends"] == []


def _fake_entry_points(monkeypatch, tmp_path, name, module_name, source):
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name=name, value=module_name, group=backends.ENTRY_POINT_GROUP)
    monkeypatch.setattr(backends, "_entry_points", lambda: {name: ep})


def test_load_backend_returns_registered_module(monkeypatch, tmp_path):
    _fake_entry_points(
        monkeypatch,
        tmp_path,
        "pytorch",
        "fake_backend_ok",
        """
        NAME = "pytorch"
        def train(config, execution=None, **kw): return {"backend": NAME}
        def reconstruct(config, execution=None, **kw): return {"backend": NAME}
    """,
    )
    mod = load_backend("pytorch")
    assert mod.__name__ == "fake_backend_ok" and mod.train(None)["backend"] == "pytorch"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("raise RuntimeError('CUDA libraries broken')", "CUDA libraries broken"),
        ("import not_a_module_xyz", "not_a_module_xyz"),
        ("NAME = 'tensorflow'\ntrain = reconstruct = print", "expected 'pytorch'"),
        ("NAME = 'pytorch'\ntrain = print", "reconstruct"),
    ],
)
def test_broken_backend_module_is_unavailable(monkeypatch, tmp_path, source, reason):
    modname = f"fake_backend_{abs(hash(source)) % 10**8}"
    _fake_entry_points(monkeypatch, tmp_path, "pytorch", modname, source)
    with pytest.raises(BackendUnavailableError) as info:
        load_backend("pytorch")
    assert "PyTorch backend selected" in str(info.value)
    assert reason in str(info.value)


def test_missing_entry_point_is_unavailable(monkeypatch):
    monkeypatch.setattr(backends, "_entry_points", lambda: {})
    with pytest.raises(BackendUnavailableError, match="TensorFlow backend selected") as info:
        load_backend("tensorflow")
    assert "pip install ptycho-tf" in str(info.value)
    assert "entry point" in str(info.value)
    assert available_backends() == []


# ----------------------------------------------------------------------------- the table
def test_every_listing_of_backends_reads_the_table():
    from ptycho_core import bundle, config

    names = tuple(info.name for info in backends.BACKENDS)
    assert BACKEND_NAMES == names and len(set(names)) == len(names)
    assert config.BACKEND_NAMES == names
    assert tuple(bundle._BACKENDS) == names
    for info in backends.BACKENDS:
        assert backends.backend_info(info.name) is info
        assert info.distribution in bundle._CREATOR_DISTS
        assert bundle._FRAMEWORK_DISTS[info.name] == info.framework_distributions
        err = BackendUnavailableError(info.name)
        assert f"{info.display_name} backend selected" in str(err)
        assert info.install_command in str(err)
    with pytest.raises(ValueError, match="valid backends"):
        backends.backend_info("jax")


def _repo_packages():
    root = Path(__file__).resolve().parents[3] / "packages"
    if not (root / "ptycho-cli" / "pyproject.toml").is_file():
        pytest.skip("not run from a source checkout")
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return {p.parent.name: tomllib.loads(p.read_text()) for p in root.glob("*/pyproject.toml")}


def test_table_matches_the_distributions_metadata():
    """Each backend's distribution registers the entry point of its name, depends on the
    framework distributions the table records, and the ptycho-cli extra installs it."""
    projects = {p["project"]["name"]: p["project"] for p in _repo_packages().values()}
    registered = {
        ep_name: dist
        for dist, proj in projects.items()
        for ep_name in proj.get("entry-points", {}).get(backends.ENTRY_POINT_GROUP, {})
    }
    assert set(registered) == set(BACKEND_NAMES)
    extras = projects["ptycho-cli"]["optional-dependencies"]
    for info in backends.BACKENDS:
        assert registered[info.name] == info.distribution
        deps = " ".join(projects[info.distribution]["dependencies"])
        for framework in info.framework_distributions:
            assert framework in deps, (info.name, framework)
        assert any(req.startswith(info.distribution) for req in extras[info.cli_extra])


# ----------------------------------------------------------------------------- default backend
def _registered(monkeypatch, names, missing_modules=()):
    eps = {
        n: EntryPoint(name=n, value=f"fake_{n}", group=backends.ENTRY_POINT_GROUP) for n in names
    }
    monkeypatch.setattr(backends, "_entry_points", lambda: eps)
    monkeypatch.setattr(backends, "_findable", lambda module: module not in missing_modules)


@pytest.mark.parametrize("only", ["pytorch", "tensorflow"])
def test_the_only_installed_backend_is_the_default(monkeypatch, only):
    _registered(monkeypatch, [only])
    assert available_backends() == [only]
    assert backends.default_backend() == only


@pytest.mark.parametrize("installed", [["pytorch", "tensorflow"], ["tensorflow", "pytorch"], []])
def test_default_backend_with_both_or_none_is_pytorch(monkeypatch, installed):
    """specs/packages.md: with both installed, or none, the default is pytorch."""
    _registered(monkeypatch, installed)
    assert backends.default_backend() == "pytorch" == backends.DEFAULT_BACKEND


def test_a_backend_without_its_framework_is_not_installed(monkeypatch):
    tf = backends.backend_info("tensorflow")
    _registered(monkeypatch, BACKEND_NAMES, missing_modules={tf.framework_modules[-1]})
    assert available_backends() == ["pytorch"]
    assert backends.default_backend() == "pytorch"
    torch = backends.backend_info("pytorch")
    _registered(monkeypatch, BACKEND_NAMES, missing_modules={torch.framework_modules[0]})
    assert backends.default_backend() == "tensorflow"


def test_default_backend_takes_an_explicit_list():
    assert backends.default_backend(["tensorflow"]) == "tensorflow"
    assert backends.default_backend(list(BACKEND_NAMES)) == "pytorch"
