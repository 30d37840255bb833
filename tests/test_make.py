"""The two set-up commands of the README: `make train` and `make test` (what `.ci/run` calls).

CI once failed because the training budget (`ARGS`) was handed to pytest as a file name; these
tests read what make would run, without running it.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(*args: str) -> list[str]:
    out = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def _line_running(lines: list[str], program: str) -> str:
    hits = [line for line in lines if program in line and "pip" not in line]
    assert len(hits) == 1, f"expected one line running {program}, got {hits}"
    return hits[0]


def test_make_test_hands_pytest_no_training_overrides():
    line = _line_running(_dry_run("test"), "-m pytest")
    words = line.split()
    overrides = [w for w in words if "=" in w and not w.startswith("WANDB_MODE")]
    assert overrides == [], f"`make test` passes Hydra overrides to pytest: {overrides}"
    assert '"not slow"' in line


def test_make_train_keeps_its_short_budget_and_test_args_reach_pytest():
    assert "trainer.max_epochs=2" in _line_running(_dry_run("train"), "train.py")
    line = _line_running(_dry_run("test", "TEST_ARGS=-x tests/test_make.py"), "-m pytest")
    assert line.endswith("-x tests/test_make.py")


def test_ci_entry_point_calls_make_test():
    script = (ROOT / ".ci" / "run").read_text()
    assert "make test" in script
