"""The short commands mean the papers: ``algo=A data=D`` composes the published setting of the pair
(conf/preset/<algo>_<data>.yaml), checked field by field against a table written from the papers and
the released configs (../shared/REFERENCE.md §2, §4, §6, §7), independently of the preset files."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from metaplus.compose import CONFIG_DIR as CONF
from metaplus.compose import compose_config
from metaplus.presets import describe, preset_info

# (algo, data, ways, shots) -> the published setting.
#   mb: meta-batch  steps: inner steps train/test  lr: inner lr  meta: (meta lr, schedule, floor)
#   budget: (epochs, meta-iterations per epoch)  conv: (filters, activation, init)  q: queries per class
#   msl: MSL epochs (None = MSL off)  order: derivative order  extra: protocol details
MAML_OMNI = dict(
    meta=(1e-3, "constant", None),
    budget=(120, 500),
    conv=(64, "relu", "default"),
    msl=None,
    order="second",
    test_steps=10,
    clip=None,
    ensemble=0,
    rotations=False,
    train_shots=None,
)
MAML_MINI = dict(MAML_OMNI, conv=(32, "relu", "default"), steps=5, lr=0.01, q=15)
MAMLPP_OMNI = dict(
    mb=8,
    steps=5,
    test_steps=5,
    lr=0.1,
    meta=(1e-3, "cosine", 1e-5),
    budget=(100, 500),
    conv=(64, "leaky_relu", "xavier"),
    q=1,
    msl=10,
    order="second",
    clip=None,
    ensemble=5,
    rotations=True,
    train_shots=None,
)
MAMLPP_MINI = dict(
    MAMLPP_OMNI,
    mb=2,
    meta=(1e-3, "cosine", 1e-3),
    conv=(48, "leaky_relu", "xavier"),
    q=15,
    msl=15,
    clip=10.0,
    rotations=None,
)
REPTILE_OMNI = dict(
    mb=5,
    steps=5,
    test_steps=50,
    lr=1e-3,
    meta=(1.0, "linear", 0.0),
    budget=(200, 500),
    conv=(64, "relu", "default"),
    q=1,
    msl=None,
    order="first",
    clip=None,
    ensemble=0,
    rotations=False,
    train_shots=10,
)
SINUSOID = dict(
    mb=25,
    steps=1,
    test_steps=10,
    lr=0.01,
    meta=(1e-3, "constant", None),
    budget=(70, 1000),
    conv=None,
    msl=None,
    order="second",
    clip=None,
    ensemble=0,
    rotations=None,
    train_shots=None,
)
PUBLISHED = {
    ("maml", "omniglot", 5, 1): dict(MAML_OMNI, mb=32, steps=1, lr=0.4, q=1),
    ("maml", "omniglot", 5, 5): dict(MAML_OMNI, mb=32, steps=1, lr=0.4, q=5),
    ("maml", "omniglot", 20, 1): dict(MAML_OMNI, mb=16, steps=5, lr=0.1, q=1),
    ("maml", "omniglot", 20, 5): dict(MAML_OMNI, mb=16, steps=5, lr=0.1, q=5),
    ("maml", "miniimagenet", 5, 1): dict(MAML_MINI, mb=4, rotations=None),
    ("maml", "miniimagenet", 5, 5): dict(MAML_MINI, mb=2, rotations=None),
    ("fomaml", "omniglot", 5, 1): dict(MAML_OMNI, mb=32, steps=1, lr=0.4, q=1, order="first"),
    ("fomaml", "miniimagenet", 5, 1): dict(MAML_MINI, mb=4, order="first", rotations=None),
    ("anil", "omniglot", 20, 1): dict(MAML_OMNI, mb=16, steps=5, lr=0.1, q=1),
    ("anil", "miniimagenet", 5, 5): dict(MAML_MINI, mb=2, rotations=None),
    ("mamlpp", "omniglot", 5, 1): MAMLPP_OMNI,
    ("mamlpp", "omniglot", 5, 5): MAMLPP_OMNI,
    ("mamlpp", "omniglot", 20, 1): MAMLPP_OMNI,
    ("mamlpp", "omniglot", 20, 5): MAMLPP_OMNI,
    ("mamlpp", "miniimagenet", 5, 1): MAMLPP_MINI,
    ("mamlpp", "miniimagenet", 5, 5): MAMLPP_MINI,
    ("reptile", "omniglot", 5, 1): REPTILE_OMNI,
    ("reptile", "omniglot", 20, 5): REPTILE_OMNI,
    ("reptile", "miniimagenet", 5, 1): dict(
        REPTILE_OMNI, steps=8, conv=(32, "relu", "default"), train_shots=15, rotations=None
    ),
    ("maml", "sinusoid", None, 5): dict(SINUSOID, q=5),
    ("maml", "sinusoid", None, 10): dict(SINUSOID, q=10),
    ("fomaml", "sinusoid", None, 5): dict(SINUSOID, q=5, order="first"),
    ("metasgd", "sinusoid", None, 5): dict(SINUSOID, q=5, test_steps=1),
    ("mtnet", "omniglot", 5, 1): dict(MAML_OMNI, mb=32, steps=1, lr=0.4, q=1, budget=(80, 500)),
}


def composed(cfg) -> dict:
    """The same fields, read from a composed config."""
    algo, data = cfg.algo, cfg.data
    if algo.get("first_order") or algo.name == "reptile":
        order = "first"
    elif algo.get("da") and algo.get("da_epochs", 0) > 0:
        order = f"first for {algo.da_epochs} epochs, then second"
    else:
        order = "second"
    schedule = "cosine" if algo.get("ca") else algo.lr_schedule
    conv = (
        None if cfg.model._target_ != "metaplus.nn.Conv4" else (cfg.model.filters, cfg.model.activation, cfg.model.init)
    )
    return dict(
        mb=data.meta_batch_size,
        steps=algo.get("inner_steps", 0),
        test_steps=algo.test_inner_steps,
        lr=algo.inner_lr,
        meta=(algo.meta_lr, schedule, None if schedule == "constant" else algo.min_meta_lr),
        budget=(cfg.trainer.max_epochs, data.batches_per_epoch),
        conv=conv,
        q=data.queries,
        msl=algo.msl_epochs if algo.get("msl") else None,
        order=order,
        clip=algo.grad_clip_value,
        ensemble=cfg.ensemble_top_k,
        rotations=data.source.get("augment_rotations"),
        train_shots=data.train_shots,
    )


def pair_overrides(algo, data, ways, shots):
    return [f"algo={algo}", f"data={data}", *([f"data.ways={ways}"] if ways else []), f"data.shots={shots}"]


@pytest.mark.parametrize("pair", sorted(PUBLISHED, key=str), ids=lambda p: "_".join(map(str, p)))
def test_short_command_composes_the_published_setting(pair):
    cfg = compose_config(pair_overrides(*pair))
    OmegaConf.resolve(cfg)
    expected, got = PUBLISHED[pair], composed(cfg)
    mismatched = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
    assert not mismatched, f"{pair}: (composed, published) differ for {mismatched}"
    assert preset_info(cfg)["name"] == f"{pair[0]}_{pair[1]}"


def test_every_preset_file_is_in_the_golden_table():
    tested = {f"{algo}_{data}" for algo, data, _, _ in PUBLISHED}
    untested = {p.stem for p in (CONF / "preset").glob("*.yaml")} - tested
    # T-net presets are MT-net's without masks; MT-net's regression presets are covered by the
    # MT-net experiment tests (tests/test_mtnet.py); FOMAML/ANIL mini-ImageNet inherit MAML's.
    assert (
        untested
        <= {
            "tnet_sinusoid",
            "tnet_polynomial",
            "tnet_omniglot",
            "mtnet_sinusoid",
            "mtnet_polynomial",
            "fomaml_sinusoid",
            "anil_omniglot",
            "anil_miniimagenet",
            "fomaml_miniimagenet",
            "reptile_miniimagenet",
        }
        | tested
    )


@pytest.mark.parametrize(
    "experiment, pair",
    [
        ("mamlpp_miniimagenet_5w1s", ["algo=mamlpp", "data=miniimagenet"]),
        ("omniglot_5w1s", ["algo=maml", "data=omniglot"]),
        ("omniglot_20w1s", ["algo=maml", "data=omniglot", "data.ways=20"]),
        ("miniimagenet_5w5s", ["algo=maml", "data=miniimagenet", "data.shots=5"]),
    ],
)
def test_paper_experiments_equal_the_short_commands(experiment, pair):
    a = OmegaConf.to_container(compose_config([f"experiment={experiment}"]), resolve=True)
    b = OmegaConf.to_container(compose_config(pair), resolve=True)
    assert a.pop("tags") == [experiment] and b.pop("tags") == []
    assert a == b


def test_explicit_overrides_win_over_the_preset():
    cfg = compose_config(
        [
            "algo=mamlpp",
            "data=miniimagenet",
            "data.meta_batch_size=4",
            "model.filters=32",
            "algo.inner_lr=0.01",
            "trainer.max_epochs=3",
            "ensemble_top_k=0",
        ]
    )
    assert (cfg.data.meta_batch_size, cfg.model.filters, cfg.algo.inner_lr) == (4, 32, 0.01)
    assert (cfg.trainer.max_epochs, cfg.ensemble_top_k) == (3, 0)
    assert cfg.model.activation == "leaky_relu"  # the rest of the preset still applies


def test_a_row_the_paper_did_not_publish_uses_the_default_row_and_says_so():
    cfg = compose_config(["algo=maml", "data=omniglot", "data.ways=10"])
    assert (cfg.algo.inner_steps, cfg.algo.inner_lr, cfg.data.meta_batch_size) == (1, 0.4, 32)  # 5w1s values
    line = describe(cfg)
    assert "maml_omniglot" in line and "no published 10w1s row" in line and "5w1s values apply" in line
    assert preset_info(cfg)["row"] == "10w1s" and preset_info(cfg)["applied_row"] == "5w1s"


def test_a_pair_without_a_published_setting_composes_defaults_and_says_none_applied():
    cfg = compose_config(["algo=metasgd", "data=miniimagenet"])
    assert cfg.preset is None
    assert cfg.model._target_ == "metaplus.nn.Conv4" and cfg.model.filters == 64
    assert describe(cfg).startswith("preset: none for algo=metasgd data=miniimagenet")


@pytest.mark.parametrize("data", ["omniglot", "miniimagenet", "imagefolder"])
def test_image_data_selects_conv4_and_model_choice_still_wins(data):
    assert compose_config([f"data={data}"]).model._target_ == "metaplus.nn.Conv4"
    chosen = compose_config([f"data={data}", "algo=mamlpp", "model=mlp"])
    assert chosen.model._target_ == "metaplus.nn.MLP" and "filters" not in chosen.model


def test_default_command_is_the_sinusoid_preset():
    cfg = compose_config([])
    assert preset_info(cfg)["name"] == "maml_sinusoid" and cfg.model._target_ == "metaplus.nn.MLP"
