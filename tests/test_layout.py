"""The package's layering: the leaf modules stay free of the application's wiring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


LEAVES = ["metaplus.errors", "metaplus.nn", "metaplus.inner", "metaplus.data"]


def test_leaf_packages_import_no_hydra_or_omegaconf():
    """Backbones, inner loops and data sources check their values with metaplus.errors, which imports
    neither Hydra nor OmegaConf: ``from metaplus.nn import Conv4`` must not pull in the config machinery.
    One fresh interpreter imports them all (none of them may load either)."""
    code = (
        f"import json, sys, {', '.join(LEAVES)}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf'))))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [], f"importing {LEAVES} loads Hydra/OmegaConf"


def test_tests_import_no_other_test_module_and_no_bench_script():
    """Shared helpers live in metaplus.testing / metaplus.compose / metaplus.benchmarking (or are conftest
    fixtures): a test module imported by another, or a bench script imported by a test, couples them
    through sys.path. A test may still run a bench script as a command."""
    import ast

    tests = ROOT / "tests"
    test_modules = {path.stem for path in tests.glob("*.py")}
    offenders = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in test_modules or top == "bench":
                    offenders.append(f"{path.name}:{node.lineno} imports {name}")
    assert offenders == []


def test_the_package_imports_no_bench_script():
    """bench/ is a folder of entry points beside the checkout, absent from an installed package: a
    module of metaplus that imports ``bench.*`` works from a checkout only, and breaks when a bench
    script's helper moves (gpu_check and parity once imported helpers bench/ no longer had)."""
    import ast

    offenders = []
    for path in sorted((ROOT / "metaplus").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "bench"
            ]
    assert offenders == []
