"""metaplus.compose.compose_config: the config train.py composes, built in-process."""

from pathlib import Path

import pytest

from metaplus.compose import CONFIG_DIR, compose_config


def test_compose_config_is_the_job_config_with_its_run_directory(tmp_path):
    cfg = compose_config(["algo=mamlpp", "data=omniglot", "data.ways=20"], tmp_path / "run")
    assert "hydra" not in cfg  # train.py's job config has no hydra node
    assert cfg.preset.name == "mamlpp_omniglot" and cfg.data.ways == 20
    assert Path(cfg.paths.output_dir) == tmp_path / "run"  # ${hydra:runtime.output_dir} resolves
    kept = compose_config(["hydra/launcher=submitit_local"], keep_hydra=True, cwd=tmp_path)
    assert kept.hydra.launcher._target_.endswith("LocalLauncher") and Path(kept.paths.root_dir) == tmp_path


def test_a_folder_without_the_config_tree_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no Hydra config tree at {tmp_path}"):
        compose_config([], config_dir=tmp_path)
    assert (CONFIG_DIR / "config.yaml").is_file()
