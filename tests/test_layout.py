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
    code = (f"import json, sys, {', '.join(LEAVES)}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf'))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [], f"importing {LEAVES} loads Hydra/OmegaConf"
