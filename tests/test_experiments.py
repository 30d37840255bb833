"""The paper settings in conf/experiment (issue 3) and the MAML++ ablation variants (issue 4) compose
to what the papers say and build on the real data (skipped, with the reason, when it is absent)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from metaplus.compose import CONFIG_DIR as CONF
from metaplus.compose import compose_config
from metaplus.mamlpp_switches import SWITCHES
from metaplus.run import build
from metaplus.testing import shared_data_dir

# The MAML paper (Finn et al. 2017, appendix A.1; REFERENCE.md §3-4):
# experiment: (data, ways, shots, meta-batch, train inner steps, inner lr, Conv-4 filters)
MAML_SETTINGS = {
    "omniglot_5w1s": ("omniglot", 5, 1, 32, 1, 0.4, 64),
    "omniglot_5w5s": ("omniglot", 5, 5, 32, 1, 0.4, 64),
    "omniglot_20w1s": ("omniglot", 20, 1, 16, 5, 0.1, 64),
    "omniglot_20w5s": ("omniglot", 20, 5, 16, 5, 0.1, 64),
    "miniimagenet_5w1s": ("miniimagenet", 5, 1, 4, 5, 0.01, 32),
    "miniimagenet_5w5s": ("miniimagenet", 5, 5, 2, 5, 0.01, 32),
}
# MAML++'s released configs (REFERENCE.md §4): (data, ways, shots, meta-batch, queries, filters, msl_epochs)
MAMLPP_SETTINGS = {
    "mamlpp_omniglot_5w1s": ("omniglot", 5, 1, 8, 1, 64, 10),
    "mamlpp_omniglot_5w5s": ("omniglot", 5, 5, 8, 1, 64, 10),
    "mamlpp_omniglot_20w1s": ("omniglot", 20, 1, 8, 1, 64, 10),
    "mamlpp_omniglot_20w5s": ("omniglot", 20, 5, 8, 1, 64, 10),
    "mamlpp_miniimagenet_5w1s": ("miniimagenet", 5, 1, 2, 15, 48, 15),
    "mamlpp_miniimagenet_5w5s": ("miniimagenet", 5, 5, 2, 15, 48, 15),
}
ABLATION_VARIANTS = sorted(p.stem for p in (CONF / "ablation").glob("*.yaml"))


def build_on_shared_data(cfg, tmp_path):
    """Build everything the run would. mini-ImageNet's shared copy has no train split yet: there the
    test split (a few classes, enough for one episode) is built through ``train=false``."""
    root = shared_data_dir()
    if root is None:
        pytest.skip(f"composes; building it needs the shared {cfg.data.name} data (METAPLUS_DATA or ../shared/data)")
    if cfg.data.name == "miniimagenet" and not (root / "miniimagenet" / "train").is_dir():
        placeholder = tmp_path / "placeholder.ckpt"
        placeholder.touch()  # build() only checks that ckpt_path names a file
        needed = cfg.data.shots + cfg.data.queries
        cfg.merge_with(
            OmegaConf.from_dotlist(
                [
                    "train=false",
                    f"ckpt_path={placeholder}",
                    f"data.cache_dir={tmp_path / 'cache'}",
                    f"data.source.max_classes={cfg.data.ways}",
                    f"data.source.max_images_per_class={needed}",
                ]
            )
        )
    return build(cfg)


@pytest.mark.parametrize("experiment", sorted(MAML_SETTINGS))
def test_maml_paper_settings(experiment, tmp_path):
    data, ways, shots, meta_batch, steps, inner_lr, filters = MAML_SETTINGS[experiment]
    cfg = compose_config([f"experiment={experiment}", "logger=none"], tmp_path / "run")
    assert (cfg.algo.name, cfg.data.name, cfg.model._target_) == ("maml", data, "metaplus.nn.Conv4")
    assert (cfg.data.ways, cfg.data.shots, cfg.data.meta_batch_size) == (ways, shots, meta_batch)
    assert (cfg.algo.inner_steps, cfg.algo.inner_lr, cfg.algo.test_inner_steps) == (steps, inner_lr, 10)
    assert (cfg.algo.meta_lr, cfg.algo.first_order) == (0.001, False)
    assert not any(cfg.algo[s] for s in SWITCHES), "MAML: no MAML++ fix"
    assert (cfg.model.filters, cfg.model.activation) == (filters, "relu")
    assert cfg.trainer.max_epochs * cfg.data.batches_per_epoch == 60_000, "60k meta-iterations"
    assert cfg.data.test_episodes == 600
    if data == "miniimagenet":
        assert cfg.data.queries == 15 and cfg.data.image_size == 84
    else:
        assert cfg.data.image_size == 28 and cfg.data.split == "vinyals"
    parts = build_on_shared_data(cfg, tmp_path)
    assert parts["learner"].backbone.head.out_features == ways
    assert parts["learner"].test_inner_steps == 10


@pytest.mark.parametrize("experiment", sorted(MAMLPP_SETTINGS))
def test_mamlpp_released_settings(experiment, tmp_path):
    data, ways, shots, meta_batch, queries, filters, msl_epochs = MAMLPP_SETTINGS[experiment]
    cfg = compose_config([f"experiment={experiment}", "logger=none"], tmp_path / "run")
    assert (cfg.algo.name, cfg.data.name) == ("mamlpp", data)
    assert all(cfg.algo[s] for s in SWITCHES), "MAML++: all six fixes"
    assert (cfg.data.ways, cfg.data.shots, cfg.data.meta_batch_size, cfg.data.queries) == (
        ways,
        shots,
        meta_batch,
        queries,
    )
    assert (cfg.algo.inner_steps, cfg.algo.test_inner_steps, cfg.algo.msl_epochs) == (5, 5, msl_epochs)
    assert (cfg.model.filters, cfg.model.activation) == (filters, "leaky_relu")
    assert cfg.trainer.max_epochs * cfg.data.batches_per_epoch == 50_000, "100 epochs x 500 iterations"
    assert cfg.algo.min_meta_lr == (1e-5 if data == "omniglot" else cfg.algo.meta_lr)
    parts = build_on_shared_data(cfg, tmp_path)
    assert parts["learner"].backbone.head.out_features == ways
    assert parts["learner"].inner_lrs is not None, "lslr built its learned rates"


def test_experiments_tag_their_runs():
    for experiment in [*MAML_SETTINGS, *MAMLPP_SETTINGS]:
        assert experiment in compose_config([f"experiment={experiment}"]).tags


# -- the ablation grid ------------------------------------------------------------------------------
def switches(cfg) -> dict[str, bool]:
    return {s: cfg.algo[s] for s in SWITCHES}


def test_ablation_grid_has_maml_each_fix_alone_mamlpp_and_each_fix_removed():
    expected = {"maml", "mamlpp", *SWITCHES, *(f"mamlpp_no_{s}" for s in SWITCHES)}
    assert set(ABLATION_VARIANTS) == expected
    default_sweep = OmegaConf.load(CONF / "experiment" / "ablation_mamlpp.yaml").hydra.sweeper.params.ablation
    assert default_sweep.split(",") == ["maml", *SWITCHES, "mamlpp"]


@pytest.mark.parametrize("variant", ABLATION_VARIANTS)
def test_each_variant_sets_exactly_its_switches(variant):
    cfg = compose_config(["experiment=ablation_mamlpp", f"ablation={variant}"])
    if variant == "maml":
        on = set()
    elif variant == "mamlpp":
        on = set(SWITCHES)
    elif variant.startswith("mamlpp_no_"):
        on = set(SWITCHES) - {variant.removeprefix("mamlpp_no_")}
    else:
        on = {variant}
    assert switches(cfg) == {s: s in on for s in SWITCHES}
    assert cfg.variant and cfg.algo.name == "maml"


def test_variants_differ_only_in_their_switches_and_label():
    configs = {
        v: OmegaConf.to_container(compose_config(["experiment=ablation_mamlpp", f"ablation={v}"]), resolve=True)
        for v in ("maml", "lslr", "mamlpp")
    }
    for config in configs.values():
        del config["variant"]
        for s in SWITCHES:
            del config["algo"][s]
    assert configs["maml"] == configs["lslr"] == configs["mamlpp"]


def test_ablation_end_points_match_algo_maml_and_algo_mamlpp():
    assert switches(compose_config(["experiment=ablation_mamlpp", "ablation=maml"])) == switches(
        compose_config(["algo=maml"])
    )
    assert switches(compose_config(["experiment=ablation_mamlpp", "ablation=mamlpp"])) == switches(
        compose_config(["algo=mamlpp"])
    )


def test_a_single_ablation_run_is_mamlpp_and_builds(tmp_path):
    cfg = compose_config(["experiment=ablation_mamlpp", "logger=none"], tmp_path / "run")
    assert cfg.variant == "mamlpp" and all(switches(cfg).values())
    build_on_shared_data(cfg, tmp_path)


def test_ablation_runs_carry_their_variant_and_switches_as_wandb_tags():
    from metaplus.loggers import run_name, run_tags

    cfg = compose_config(["experiment=ablation_mamlpp", "ablation=mamlpp_no_lslr", "logger=wandb"])
    tags = run_tags(cfg)
    assert tags[:3] == ["maml", "omniglot", "mamlpp-lslr"]
    assert set(tags) & set(SWITCHES) == set(SWITCHES) - {"lslr"}
    assert "ablation_mamlpp" in tags and len(tags) == len(set(tags))
    assert run_name(cfg.logger.wandb, cfg).startswith("mamlpp-lslr-")
    plain = compose_config(["logger=wandb"])
    assert run_tags(plain) == ["maml", "sinusoid"] and run_name(plain.logger.wandb, plain) == plain.logger.wandb.name
