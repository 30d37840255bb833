"""dragen1860/MAML-Pytorch (github.com/dragen1860/MAML-Pytorch), Omniglot 5-way 1-shot, driven by
bench/parity.py (``maml_omniglot_dragen``, issue 25): its code runs unchanged from its own directory.

What the harness takes from the reference, as its omniglot_train.py builds it:
* ``reference_args``: omniglot_train.py's argparse defaults (read from the file, not retyped);
  ``network_config``: the ``config`` list of its main() (the strided Conv-4), evaluated for those args.
* ``Meta(args, config)`` (meta.py, with learner.py's Learner): ``meta(x_spt, y_spt, x_qry, y_qry)`` is one
  meta-iteration (inner loops, outer Adam step); ``meta.finetunning(...)`` evaluates one episode
  (``update_step_test`` inner steps on a copy of the network).
* ``OmniglotNShot`` (omniglotNShot.py) samples its training episodes from ``<dir>/omniglot.npy``: the
  first 1,200 characters train (the other 423 are its test set; it has no validation set).

The adapted data loading: the harness writes omniglot.npy itself (``write_omniglot_npy``) from the
shared Omniglot archives as metaplus decodes them (28x28 Lanczos, inverted, x/255), characters in
metaplus's order (background archive, then evaluation; each sorted by alphabet and character), and
makes metaplus read the same split (its first 1,200 characters train, the other 423 validate and test).
Validation and test episodes of both codes are metaplus's fixed ones.

Outside the reference's files: numpy >= 1.24 removed the ``np.int``/``np.float`` aliases its data code
uses (``astype(np.int)``); the child restores them as the builtins they aliased before importing it.
"""

from __future__ import annotations

import ast
import os
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

SCRIPT = "omniglot_train.py"
TRAIN_CHARACTERS = 1200  # OmniglotNShot: self.x[:1200] train, self.x[1200:] test
IMAGES_PER_CHARACTER = 20

# metaplus's settings that make it the reference's algorithm (each with the reason); settings_rows checks them.
METAPLUS_OVERRIDES = [
    "model=strided_conv4",  # its network (omniglot_train.py's config): strided convs, ReLU before BN, no pool
    "algo.first_order=true",  # Meta.forward takes inner gradients without create_graph: a first-order meta-gradient
    "algo.adapt_bn_affine=true",  # its inner loop updates every tensor of net.vars, BN weights and biases included
    "algo.inner_steps=5",  # update_step
    "algo.test_inner_steps=10",  # update_step_test
    "algo.inner_lr=0.4",  # update_lr
    "algo.meta_lr=0.001",  # meta_lr (Adam)
    "data.queries=15",  # k_qry
    "data.meta_batch_size=32",  # task_num
    "trainer.max_epochs=80",  # its 40,000 steps = 80 x 500 (no schedule reads it: the meta lr is constant)
    "data.source.augment_rotations=false",  # no rotation augmentation (and the split has no rotation classes)
]


def reference_args(code: Path) -> Namespace:
    """omniglot_train.py's command-line defaults, read from its argparse calls (and imgc, the input channels)."""
    tree = ast.parse((Path(code) / SCRIPT).read_text())
    args = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            name = ast.literal_eval(node.args[0]).lstrip("-")
            defaults = [k.value for k in node.keywords if k.arg == "default"]
            if defaults:
                args[name] = ast.literal_eval(defaults[0])
    missing = {
        "n_way",
        "k_spt",
        "k_qry",
        "imgsz",
        "imgc",
        "task_num",
        "meta_lr",
        "update_lr",
        "update_step",
        "update_step_test",
        "epoch",
    } - set(args)
    if missing:
        raise ValueError(f"{Path(code) / SCRIPT}: no default for {sorted(missing)}: not the expected reference code")
    return Namespace(**args)


def network_config(code: Path, args: Namespace) -> list:
    """The ``config`` list main() builds (layer name, parameters), for ``args``."""
    tree = ast.parse((Path(code) / SCRIPT).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["config"]:
            return eval(compile(ast.Expression(node.value), SCRIPT, "eval"), {"args": args})  # noqa: S307 (its code)
    raise ValueError(f"{Path(code) / SCRIPT}: no 'config = [...]' network list found")


def load(code: Path, threads: int) -> None:
    """Make the reference importable in this process (CPU, ``threads`` threads, numpy's old aliases)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    for alias, builtin in (("int", int), ("float", float)):  # removed in numpy 1.24; its data code uses them
        if alias not in np.__dict__:
            setattr(np, alias, builtin)
    if str(code) not in sys.path:
        sys.path.insert(0, str(code))


def omniglot_characters(data_root: Path, cache_dir: str | None) -> tuple[list[str], Any]:
    """Every Omniglot character as metaplus decodes it: names and uint8 images [1623, 20, 1, 28, 28]
    (background archive first, then evaluation, each in metaplus's order)."""
    import torch

    from metaplus.data.omniglot import PARTS, load_part

    names, images = [], []
    for part in PARTS:
        data = load_part(data_root, part, 28, cache_dir)
        for c, name in enumerate(data.class_names):
            pixels = data.of_class(c)
            if len(pixels) != IMAGES_PER_CHARACTER:
                raise ValueError(f"{data_root}/{part}: {name} has {len(pixels)} drawings, the reference needs 20")
            names.append(name)
            images.append(pixels)
    return names, torch.stack(images)


def write_omniglot_npy(data_root: Path, cache_dir: str | None, folder: Path) -> dict[str, list[str]]:
    """``folder/omniglot.npy`` in OmniglotNShot's layout ([characters, 20, 1, 28, 28] floats) holding
    metaplus's input pixels, and the class split both codes then use: {train: the first 1,200
    characters, val and test: the other 423}."""
    import numpy as np

    from metaplus.data.omniglot import preprocessing

    names, pixels = omniglot_characters(data_root, cache_dir)
    inputs = preprocessing(28).normalise(pixels.flatten(0, 1)).view(pixels.shape)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "omniglot.tmp.npy"
    np.save(tmp, inputs.numpy())
    tmp.replace(folder / "omniglot.npy")
    return {"train": names[:TRAIN_CHARACTERS], "val": names[TRAIN_CHARACTERS:], "test": names[TRAIN_CHARACTERS:]}


def settings_rows(cfg, args: Namespace, config: list) -> list[tuple]:
    """(setting, reference key, its value, metaplus key, its value) for every setting both codes have."""
    from omegaconf import OmegaConf
    from torch import nn

    from metaplus.nn.init_from import build_backbone

    convs = [p for name, p in config if name == "conv2d"]
    names = [name for name, _ in config]
    model = OmegaConf.select(cfg, "model._target_", default="")
    strided = model.endswith("StridedConv4")
    backbone = build_backbone(cfg.model)
    # (out channels, kernel, stride, padding) of each convolution, theirs from config, ours from the module
    their_convs = [(p[0], p[2], p[4], p[5]) for p in convs]
    our_convs = [
        (m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
        for m in backbone.modules()
        if isinstance(m, nn.Conv2d)
    ]
    return [
        ("ways", "n_way", args.n_way, "data.ways", cfg.data.ways),
        ("shots", "k_spt", args.k_spt, "data.shots", cfg.data.shots),
        ("queries per class", "k_qry", args.k_qry, "data.queries", cfg.data.queries),
        ("meta-batch", "task_num", args.task_num, "data.meta_batch_size", cfg.data.meta_batch_size),
        ("inner steps (training)", "update_step", args.update_step, "algo.inner_steps", cfg.algo.inner_steps),
        (
            "inner steps (evaluation)",
            "update_step_test",
            args.update_step_test,
            "algo.test_inner_steps",
            cfg.algo.test_inner_steps,
        ),
        ("inner lr", "update_lr", args.update_lr, "algo.inner_lr", cfg.algo.inner_lr),
        ("meta lr (Adam, constant)", "meta_lr", args.meta_lr, "algo.meta_lr", cfg.algo.meta_lr),
        ("meta lr schedule", "none", "constant", "algo.lr_schedule", "cosine" if cfg.algo.ca else cfg.algo.lr_schedule),
        (
            "first-order meta-gradient",
            "autograd.grad without create_graph",
            True,
            "algo.first_order",
            cfg.algo.first_order,
        ),
        (
            "BN affine adapted in the inner loop",
            "all net.vars adapted",
            True,
            "algo.adapt_bn_affine",
            cfg.algo.adapt_bn_affine,
        ),
        ("BN normalises with", "F.batch_norm(training=True)", "batch", "algo.bn_stats", cfg.algo.bn_stats),
        ("multi-step loss", "last step's query loss only", False, "algo.msl", cfg.algo.msl),
        ("learned inner lrs", "none", False, "algo.lslr", cfg.algo.lslr),
        (
            "meta-gradient clipping",
            "none",
            None,
            "algo.grad_clip_value / grad_clip_norm",
            cfg.algo.grad_clip_value or cfg.algo.grad_clip_norm,
        ),
        ("convolutions (channels, kernel, stride, padding)", "config conv2d", their_convs, "model", our_convs),
        (
            "block order",
            "config",
            ",".join(names[:3]),
            "model._target_",
            "conv2d,relu,bn" if strided else model,
        ),  # StridedBlock.forward: conv, ReLU, BN
        ("max-pool", "config", "max_pool2d" in names, "model._target_", not strided),
        (
            "head",
            "config linear",
            tuple(config[-1][1]),
            "backbone.head (out, in)",
            (backbone.head.out_features, backbone.head.in_features),
        ),
        (
            "init",
            "kaiming_normal_ weights, zero biases (learner.py)",
            "kaiming_normal",
            "model.init",
            cfg.model.get("init"),
        ),
        (
            "image size",
            "imgsz",
            f"{args.imgsz}x{args.imgsz}",
            "data.image_size",
            f"{cfg.data.image_size}x{cfg.data.image_size}",
        ),
        (
            "rotation augmentation",
            "none",
            False,
            "data.source.augment_rotations",
            bool(cfg.data.source.augment_rotations),
        ),
        ("ensemble of checkpoints", "none", 0, "ensemble_top_k", cfg.ensemble_top_k),
    ]


class DragenDriver:
    """The reference's Meta learner, trained on its own OmniglotNShot episodes (from the harness's
    omniglot.npy) and evaluated on metaplus's fixed episodes with its finetunning()."""

    keep = 1  # it has no checkpoint ensemble: the best validation checkpoint only
    ensemble_rule = None

    def __init__(self, code: Path, spec: dict, cfg, datamodule):
        import numpy as np
        import torch
        from meta import Meta
        from omniglotNShot import OmniglotNShot

        args = reference_args(code)
        args.task_num = spec.get("meta_batch") or args.task_num
        self.args = args
        torch.manual_seed(spec["seed"])  # omniglot_train.py seeds torch and numpy with 222: the harness with seed k
        np.random.seed(spec["seed"])
        self.meta = Meta(args, network_config(code, args))
        self.cache_rng = np.random.get_state()  # the state its first training cache is drawn from
        self.db = OmniglotNShot(
            str(Path(spec["data_root"]).parent / "dragen_npy"),
            batchsz=args.task_num,
            n_way=args.n_way,
            k_shot=args.k_spt,
            k_query=args.k_qry,
            imgsz=args.imgsz,
        )

    def batch(self, iteration: int):
        """Its next training meta-batch (omniglot_train.py: ``db_train.next()``), remembering the numpy
        state each refill of its 10-batch cache starts from, so that a resumed run draws the same episodes."""
        import numpy as np
        import torch

        if self.db.indexes["train"] >= len(self.db.datasets_cache["train"]):
            self.cache_rng = np.random.get_state()
        return [torch.from_numpy(a) for a in self.db.next("train")]

    def train_step(self, batch, iteration: int) -> float:
        accs = self.meta(*batch)
        return float(1.0 - accs[-1])  # it returns query accuracies per step, not the loss: the last step's error

    def evaluate(self, batch) -> list[tuple[float, None]]:
        """Per-episode query accuracy after update_step_test steps (its finetunning, one episode at a time)."""
        scores = []
        for b in range(len(batch)):
            task = batch[b]
            accs = self.meta.finetunning(task.support_x, task.support_y, task.query_x, task.query_y)
            scores.append((float(accs[-1]), None))
        return scores

    def state(self) -> dict:
        import torch

        def rng(state):
            return [state[0], torch.from_numpy(state[1].astype("int64")), *state[2:]]

        import numpy as np

        return {
            "network": self.meta.state_dict(),
            "optimizer": self.meta.meta_optim.state_dict(),
            "cache_rng": rng(self.cache_rng),
            "rng": rng(np.random.get_state()),
            "cache_index": self.db.indexes["train"],
        }

    def load(self, state: dict) -> None:
        import numpy as np

        def rng(saved):
            return (saved[0], saved[1].numpy().astype(np.uint32), *saved[2:])

        self.meta.load_state_dict(state["network"])
        self.meta.meta_optim.load_state_dict(state["optimizer"])
        # its training cache as it was: redrawn from the state it was drawn from, then the generator as it was
        self.cache_rng = rng(state["cache_rng"])
        np.random.set_state(self.cache_rng)
        self.db.datasets_cache["train"] = self.db.load_data_cache(self.db.datasets["train"])
        self.db.indexes["train"] = state["cache_index"]
        np.random.set_state(rng(state["rng"]))


def reference_index(name: str, blocks: int = 4) -> int:
    """The position in the reference's ``net.vars`` (conv weight, conv bias, BN weight, BN bias per block,
    then the linear weight and bias, as its Learner builds them from config) of a metaplus StridedConv4
    parameter."""
    import re

    block = re.fullmatch(r"backbone\.blocks\.(\d+)\.(conv|norm)\.(weight|bias)", name)
    if block:
        i, layer, kind = int(block[1]), block[2], block[3]
        return 4 * i + (0 if layer == "conv" else 2) + (0 if kind == "weight" else 1)
    head = re.fullmatch(r"backbone\.head\.(weight|bias)", name)
    if head:
        return 4 * blocks + (0 if head[1] == "weight" else 1)
    raise KeyError(f"no parameter of the reference's Learner for metaplus's {name}")


def same_weights_step(code: Path, cfg, datamodule) -> dict:
    """Both codes from the SAME weights (metaplus's initialisation copied into the reference's Learner) on
    metaplus's first training meta-batch: every meta-gradient (Meta.forward with its optimizer's step
    made a no-op for this check, so that its gradients stay readable; metaplus's per-task accumulation),
    the last step's query accuracy of training, and the accuracy after its finetunning and after
    metaplus's evaluation on the first validation episodes."""
    import torch

    from metaplus.benchmarking.parity import compare_gradients, metaplus_meta_gradient, training_batch
    from metaplus.config import instantiate_group
    from metaplus.nn.init_from import build_backbone

    spec = {"seed": 0, "data_root": str(cfg.data.root), "meta_batch": cfg.data.meta_batch_size}
    meta = DragenDriver(code, spec, cfg, datamodule).meta
    torch.manual_seed(0)
    learner = instantiate_group(cfg.algo, "algo", backbone=build_backbone(cfg.model), task_type=datamodule.task)
    theirs = list(meta.net.parameters())
    pairs = []
    with torch.no_grad():
        for name, param in learner.named_parameters():
            target = theirs[reference_index(name, cfg.model.blocks)]
            target.copy_(param)
            pairs.append((name, param, target))
    if len(pairs) != len(theirs):
        raise ValueError(f"metaplus has {len(pairs)} parameters, the reference's Learner {len(theirs)}")
    batch = training_batch(datamodule, 0)
    meta.meta_optim.step = lambda: None  # keep the weights (and their gradients) as they are
    their_accs = meta(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    our_results = metaplus_meta_gradient(learner, cfg, batch, metrics=True)
    our_losses = [loss for loss, _ in our_results]
    gradients = compare_gradients([(name, param.grad, target.grad) for name, param, target in pairs])
    val = next(iter(datamodule.val_dataloader()))
    gaps = []
    learner.eval()
    for b in range(len(val)):
        task = val[b]
        theirs_acc = float(meta.finetunning(task.support_x, task.support_y, task.query_x, task.query_y)[-1])
        ours = learner.adapted_prediction(task, learner.test_inner_steps)
        gaps.append(abs(float((ours.argmax(1) == task.query_y).float().mean()) - theirs_acc))
    worst = max(gradients, key=lambda n: gradients[n]["relative_difference"])
    return {  # Meta.forward returns query accuracies, not its loss: the losses are metaplus's only
        "meta_loss": {"metaplus": float(torch.stack(our_losses).mean())},
        "train_query_accuracy_last_step": {
            "metaplus": float(torch.stack([m for _, m in our_results]).mean()),
            "reference": float(their_accs[-1]),
        },
        "max_relative_gradient_difference": gradients[worst]["relative_difference"],
        "worst_parameter": worst,
        "zero_by_construction": sorted(n for n, g in gradients.items() if g["zero_by_construction"]),
        "gradients": gradients,
        "max_abs_accuracy_difference_evaluation": max(gaps),
        "episodes": {"train": len(batch), "val": len(val)},
    }
