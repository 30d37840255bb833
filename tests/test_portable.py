"""Reports and results never embed absolute paths of the machine that made them."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from metaplus.results import expand_portable, portable, portable_path
from metaplus.run import run
from metaplus.testing import QUICK, REPO

# An absolute path of some machine: a slash-rooted path under one of the usual top-level folders.
ABSOLUTE = re.compile(r"(?<![\w.~$])/(?:work|home|root|tmp|Users|mnt|scratch|check|var|opt|data)/[\w.-]")


def test_portable_path_rules(tmp_path, monkeypatch):
    run_dir, data = tmp_path / "run", tmp_path / "datasets"
    monkeypatch.setenv("METAPLUS_DATA", str(data))
    monkeypatch.chdir(tmp_path)
    assert portable_path(str(run_dir / "checkpoints" / "best.ckpt"), run_dir) == "checkpoints/best.ckpt"
    assert portable_path(str(run_dir), run_dir) == "."
    assert portable_path(str(data / "omniglot"), run_dir) == "$METAPLUS_DATA/omniglot"
    assert portable_path(str(tmp_path / "elsewhere" / "x.yaml"), run_dir) == "elsewhere/x.yaml"
    assert portable_path(f"hydra.sweep.dir={tmp_path / 'sweeps'}") == "hydra.sweep.dir=sweeps"
    assert portable_path("/") == "/" and portable_path("val/acc") == "val/acc" and portable_path(3) == 3
    nested = {"a": [str(run_dir / "f"), {"b": str(data)}], "c": 1.5}
    assert portable(nested, run_dir) == {"a": ["f", {"b": "$METAPLUS_DATA"}], "c": 1.5}
    assert expand_portable({"root": "$METAPLUS_DATA/omniglot", "x": ["$METAPLUS_DATAX"]}) == {
        "root": f"{data}/omniglot",
        "x": ["$METAPLUS_DATAX"],
    }


def strings(obj):
    if isinstance(obj, dict):
        for value in obj.values():
            yield from strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from strings(value)
    elif isinstance(obj, str):
        yield obj


def test_results_json_holds_no_absolute_path_and_loads_back(make_config, tmp_path):
    import metaplus

    out = tmp_path / "run"
    metrics = run(make_config([*QUICK, "ensemble_top_k=0"], output_dir=out))
    saved = json.loads((out / "results.json").read_text())
    absolute = [s for s in strings(saved) if s.startswith(os.sep) and len(s) > 1]
    assert absolute == [], f"results.json embeds absolute paths: {absolute}"
    assert (out / saved["best_checkpoint"]).resolve() == Path(metrics["best_checkpoint"]).resolve()
    learner = metaplus.load(out)  # the run is found from its relative names
    assert learner.checkpoint_path.resolve() == Path(metrics["best_checkpoint"]).resolve()


def test_committed_reports_hold_no_absolute_path():
    tracked = subprocess.run(
        ["git", "ls-files", "bench/results", "docs", "notebooks", "README.md"], cwd=REPO, capture_output=True, text=True
    )
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    offenders = []
    for name in tracked.stdout.split():
        path = REPO / name
        if path.suffix in {".png", ".pt"} or not path.is_file():
            continue
        if path.suffix == ".ckpt":  # a zip of pickles: its strings, as torch reads them back
            import torch

            text = "\n".join(checkpoint_strings(torch.load(path, map_location="cpu", weights_only=False)))
        else:
            text = path.read_text(errors="replace")
        offenders += [f"{name}: {m.group(0)}" for m in ABSOLUTE.finditer(text)]
    assert offenders == [], offenders[:10]


def checkpoint_strings(obj):
    """Every string of a loaded checkpoint, dict keys included (the top-k record keys files by path)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from checkpoint_strings(key)
            yield from checkpoint_strings(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from checkpoint_strings(value)
    elif isinstance(obj, str):
        yield obj


def test_checkpoints_hold_no_absolute_path_and_a_moved_run_resumes_its_top_k(make_config, tmp_path, recwarn):
    import shutil

    import torch

    first, moved = tmp_path / "first", tmp_path / "elsewhere" / "moved"
    budget = [*QUICK, "data=sinusoid", "ensemble_top_k=3", "test=false"]
    run(make_config([*budget, "trainer.max_epochs=2"], output_dir=first))
    for path in sorted((first / "checkpoints").glob("*.ckpt")):
        saved = torch.load(path, map_location="cpu", weights_only=False)
        absolute = [s for s in checkpoint_strings(saved) if str(tmp_path) in s]
        assert absolute == [], f"{path.name} embeds absolute paths: {absolute}"
    shutil.copytree(first, moved)
    shutil.rmtree(first)  # nothing may still point at the old place
    run(make_config([*budget, "trainer.max_epochs=3"], output_dir=moved))
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]
    state = torch.load(moved / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (record,) = [s for k, s in state["callbacks"].items() if k.startswith("ModelCheckpoint")]
    # the two epochs trained before the move are still in the top-k record, under the new folder
    assert sorted(record["best_k_models"]) == [f"best-epoch{e:03d}.ckpt" for e in range(3)]
    assert record["dirpath"] == "."
