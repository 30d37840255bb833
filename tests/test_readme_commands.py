"""Every ``python ...`` command of the README's ```bash blocks runs as written, from a scratch directory.

Only budget is added: ``debug=fast`` (conf/debug/fast.yaml) to every training command (a value the
command sets that debug=fast also sets takes debug's value), ``hydra.sweeper.n_trials=2`` to an Optuna
search. No path or plumbing override: the outputs land where the user's would, under
``<cwd>/outputs/``. Placeholders (``<run>``, ``<date>``) name the directories earlier commands made.
Commands on the real image datasets are slow (and skip without them); the multirun grid is fast.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from metaplus.compose import CONFIG_DIR as CONF
from metaplus.testing import REPO, commands, shared_data_dir

README = REPO / "README.md"
DEBUG = "fast"
DEBUG_VALUES = {}
for _key, _value in OmegaConf.to_container(OmegaConf.load(CONF / "debug" / f"{DEBUG}.yaml")).items():
    for _sub, _v in _value.items():
        DEBUG_VALUES[f"{_key}.{_sub}"] = _v
HEAVY = ("data=omniglot", "data=miniimagenet", "experiment=ablation_mamlpp")


def readme_commands(text: str) -> list[list[str]]:
    """The ``python ...`` lines of the ```bash blocks, split as a shell would (comments dropped)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["python"]:
                found.append(words[1:])
    return found


def with_budget(args: list[str]) -> list[str]:
    """``args`` with only the budget changed (see the module docstring)."""
    if args[:1] != ["train.py"] or "--cfg" in args:
        return args
    budgeted = [
        f"{a.split('=', 1)[0]}={DEBUG_VALUES[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in DEBUG_VALUES else a
        for a in args
    ]
    if any(a.startswith("hparams_search=") for a in args):
        budgeted.append("hydra.sweeper.n_trials=2")
    return [*budgeted, f"debug={DEBUG}"]


COMMANDS = readme_commands(README.read_text())


def command_id(args: list[str]) -> str:
    return re.sub(r"[^A-Za-z0-9=_.,+-]+", "_", " ".join(args))[:80]


def needs_data(args: list[str]) -> bool:
    return any(a in HEAVY for a in args) and "--cfg" not in args


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One directory for all the README's commands, as a user would run them one after the other."""
    return tmp_path_factory.mktemp("readme")


def directories(parent: Path) -> set[Path]:
    return {p for p in parent.iterdir() if p.is_dir()} if parent.is_dir() else set()


def ensure(parent: Path, args: list[str], cwd: Path) -> Path:
    """The oldest directory under ``parent``; when there is none, made by running ``python args``."""
    if not directories(parent):
        proc = commands.python(with_budget(args), cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted(directories(parent))[0]


def fill_placeholders(args: list[str], cwd: Path) -> list[str]:
    filled = []
    for arg in args:
        if "<run>" in arg:
            arg = arg.replace("<run>", ensure(cwd / "outputs" / "runs", ["train.py"], cwd).name)
        if "<date>" in arg:
            grid = next(c for c in COMMANDS if "-m" in c and not needs_data(c) and not any("hparams" in a for a in c))
            arg = arg.replace("<date>", ensure(cwd / "outputs" / "multiruns", grid, cwd).name)
        filled.append(arg)
    return filled


def test_readme_has_the_headline_commands():
    lines = [" ".join(c) for c in COMMANDS]
    assert any(line.startswith("train.py -m algo=maml") and "algo.msl=true,false" in line for line in lines)
    assert "train.py -m experiment=ablation_mamlpp" in lines
    assert any(line.startswith("train.py train=false ckpt_path=") for line in lines)
    assert any("hparams_search=" in line for line in lines)


@pytest.mark.parametrize(
    "args", [pytest.param(c, id=command_id(c), marks=[pytest.mark.slow] if needs_data(c) else []) for c in COMMANDS]
)
def test_readme_command_runs_as_written(args, workdir):
    if needs_data(args) and shared_data_dir() is None:
        pytest.skip("needs the image datasets ($METAPLUS_DATA or ../shared/data)")
    args = fill_placeholders(args, workdir)
    runs, sweeps = directories(workdir / "outputs" / "runs"), directories(workdir / "outputs" / "multiruns")
    proc = commands.python(with_budget(args), cwd=workdir, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stderr[-3000:]}"
    if args[:1] != ["train.py"]:
        assert "written:" in proc.stdout, proc.stdout[-2000:]  # metaplus.report names what it wrote
        return
    if "--cfg" in args:
        assert "algo:" in proc.stdout and "name: mamlpp" in proc.stdout
        return
    if "-m" in args:
        [sweep] = directories(workdir / "outputs" / "multiruns") - sweeps
        results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
        swept = [a for a in args if "," in a.split("=", 1)[-1] and "=" in a]
        expected = 2 if any("hparams_search" in a for a in args) else 8 if "experiment=ablation_mamlpp" in args else 1
        for override in swept:
            expected *= len(override.split("=", 1)[1].split(","))
        assert len(results) == expected, (sweep, len(results))
        if any("hparams_search" in a for a in args):
            assert "best_params" in (sweep / "optimization_results.yaml").read_text()
        for override in swept:  # each job ran its own point of the grid
            key = override.split("=", 1)[0]
            values = {str(OmegaConf.select(OmegaConf.create(r["config"]), key)).lower() for r in results}
            assert values == set(override.split("=", 1)[1].split(",")), (key, values)
        return
    [run] = directories(workdir / "outputs" / "runs") - runs
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] >= 0 and (run / "train.log").is_file()
    if "train=false" in args:  # evaluated with the config of the run that wrote the checkpoint
        ckpt = Path(next(a for a in args if a.startswith("ckpt_path=")).split("=", 1)[1])
        trained = json.loads((workdir / ckpt.parents[1] / "results.json").read_text())
        assert results["config"]["algo"] == trained["config"]["algo"]
        assert results["config"]["data"]["name"] == trained["config"]["data"]["name"]


def test_readme_api_snippet_runs(tmp_path, monkeypatch):
    """The README's ```python block, on a tiny image-folder run: ``<run>`` names it, and a.png ... q3.png
    are images of its test classes in the working directory."""
    from PIL import Image

    from metaplus.compose import compose_config
    from metaplus.run import run
    from metaplus.testing import QUICK
    from metaplus.testing.zoo import pattern_folder

    monkeypatch.chdir(tmp_path)  # results.json names data.root relative to the working directory
    root = pattern_folder(tmp_path / "images")
    out = tmp_path / "outputs" / "runs" / "tiny"
    run(
        compose_config(
            [
                *QUICK,
                "data=imagefolder",
                f"data.root={root}",
                "data.image_size=16",
                "data.source.channels=1",
                "data.shots=1",
                "data.queries=2",
                f"data.cache_dir={tmp_path / 'cache'}",
                "model.filters=8",
                "data.meta_batch_size=2",
            ],
            out,
        )
    )
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    for name, folder in zip(["a", "b", "c", "d", "e"], classes):
        Image.open(next(folder.iterdir())).save(tmp_path / f"{name}.png")
    for name, folder in zip(["q1", "q2", "q3"], classes):
        Image.open(sorted(folder.iterdir())[1]).save(tmp_path / f"{name}.png")
    [snippet] = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(snippet.replace("outputs/runs/<run>", str(out)), "README.md", "exec"), namespace)
    assert namespace["labels"].shape == (3,) and namespace["labels"].dtype == torch.long
