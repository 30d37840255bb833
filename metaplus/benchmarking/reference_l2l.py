"""learn2learn's example examples/vision/maml_miniimagenet.py (github.com/learnables/learn2learn),
driven by bench/parity.py (``maml_miniimagenet_l2l``, issue 25): the example file is imported unchanged
from the clone's directory; the learn2learn library is the installed one (setup: learn2learn 0.2.0).

What the harness takes from the example: its ``main()``'s default arguments (ways, shots, meta_lr,
fast_lr, meta_batch_size, adaptation_steps, num_iterations: read from its signature, not retyped) and
its ``fast_adapt`` (adaptation on the support half, loss and accuracy on the other half), run inside
the loop body of its main(), repeated here statement for statement (``ExampleDriver.train_step``):
``maml.clone()`` and ``fast_adapt(...).backward()`` per task, the gradients scaled by 1/meta_batch_size,
one Adam step; model ``l2l.vision.models.MiniImagenetCNN(ways)``, ``l2l.algorithms.MAML(model,
lr=fast_lr, first_order=False)``, ``optim.Adam(maml.parameters(), meta_lr)``. main() itself cannot
be called: it has no checkpoints, no fixed evaluation episodes and no timing.

The adapted data loading: main() reads l2l's mini-ImageNet pickles (``get_tasksets('mini-imagenet',
root='~/data')``); the harness feeds it metaplus's episodes from METAPLUS_DATA/miniimagenet instead
(``example_batch``: a task's 2*shots images per class with the support ones at the even positions,
as ``fast_adapt`` splits them), the same training episodes for both codes, pixels as metaplus's.

Left out of main()'s loop: its per-iteration "meta-validation" on 32 random validation tasks
(printed, never used for training) and its final test on 32 random test tasks; the harness evaluates
both codes on the same fixed episodes instead (``evaluate``: ``fast_adapt`` on a clone, in train mode
as main() always is).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from pathlib import Path

EXAMPLE = "examples/vision/maml_miniimagenet.py"

# metaplus's settings that make it the example's algorithm (each with the reason); settings_rows checks them.
METAPLUS_OVERRIDES = [
    "data.shots=5",  # main(shots=5)
    "data.queries=5",  # fast_adapt: 2*shots images per class, half adapt, half evaluate
    "algo.inner_steps=1",  # adaptation_steps=1 ...
    "algo.test_inner_steps=1",  # ... in training and evaluation alike (fast_adapt)
    "algo.inner_lr=0.5",  # fast_lr
    "algo.meta_lr=0.003",  # meta_lr (Adam, constant)
    "algo.adapt_bn_affine=true",  # MAML.adapt updates every parameter of the clone, BN weights and biases included
    "model.filters=64",  # MiniImagenetCNN(ways): CNN4's hidden_size default, 64 (not 32)
    "model.init=xavier",  # its maml_init_: Xavier-uniform conv and linear weights, zero biases
    "data.meta_batch_size=32",  # meta_batch_size (--meta-batch changes it for both codes)
    "trainer.max_epochs=120",  # its 60,000 iterations = 120 x 500 (no schedule reads it: the meta lr is constant)
]


def load(code: Path, threads: int) -> None:
    """CPU only, ``threads`` torch threads (main() moves the model to CUDA when one is visible)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    torch.set_num_threads(threads)


def load_example(code: Path):
    """The example as a module, imported from the clone (its ``if __name__ == '__main__'`` does not run)."""
    path = Path(code) / EXAMPLE
    spec = importlib.util.spec_from_file_location("l2l_maml_miniimagenet_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_defaults(code: Path) -> dict:
    """main()'s keyword defaults, read from the example's own signature."""
    return {
        name: p.default
        for name, p in inspect.signature(load_example(code).main).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def example_batch(task):
    """One metaplus episode as the (data, labels) batch fast_adapt splits: support example i at
    position 2i, query example i at 2i+1 (l2l's tasksets give 2*shots images per class, consecutive by
    class; fast_adapt adapts on the even positions and evaluates on the odd ones). Support and query
    are each ordered by class first, so both halves hold every class in the same order, as l2l's do."""
    import torch

    if task.support_y.shape != task.query_y.shape:
        raise ValueError(
            f"the example splits 2*shots images per class in halves: queries per class must equal shots, "
            f"got {len(task.support_y)} support and {len(task.query_y)} query examples"
        )
    s, q = torch.argsort(task.support_y, stable=True), torch.argsort(task.query_y, stable=True)
    data = torch.stack([task.support_x[s], task.query_x[q]], dim=1).flatten(0, 1)
    labels = torch.stack([task.support_y[s], task.query_y[q]], dim=1).flatten(0, 1)
    return data, labels.long()


def settings_rows(cfg, defaults: dict, meta_batch: int | None) -> list[tuple]:
    """(setting, reference key, its value, metaplus key, its value) for every setting both codes have."""
    return [
        ("ways", "main(ways)", defaults["ways"], "data.ways", cfg.data.ways),
        ("shots", "main(shots)", defaults["shots"], "data.shots", cfg.data.shots),
        (
            "queries per class",
            "fast_adapt: 2*shots split in halves",
            defaults["shots"],
            "data.queries",
            cfg.data.queries,
        ),
        (
            "meta-batch",
            "main(meta_batch_size)" + (" (--meta-batch)" if meta_batch else ""),
            meta_batch or defaults["meta_batch_size"],
            "data.meta_batch_size",
            cfg.data.meta_batch_size,
        ),
        (
            "inner steps (training)",
            "main(adaptation_steps)",
            defaults["adaptation_steps"],
            "algo.inner_steps",
            cfg.algo.inner_steps,
        ),
        (
            "inner steps (evaluation)",
            "main(adaptation_steps)",
            defaults["adaptation_steps"],
            "algo.test_inner_steps",
            cfg.algo.test_inner_steps,
        ),
        ("inner lr", "main(fast_lr)", defaults["fast_lr"], "algo.inner_lr", cfg.algo.inner_lr),
        ("meta lr (Adam)", "main(meta_lr)", defaults["meta_lr"], "algo.meta_lr", cfg.algo.meta_lr),
        ("meta lr schedule", "none", "constant", "algo.lr_schedule", "cosine" if cfg.algo.ca else cfg.algo.lr_schedule),
        ("first-order meta-gradient", "MAML(first_order=False)", False, "algo.first_order", cfg.algo.first_order),
        (
            "BN affine adapted in the inner loop",
            "MAML.adapt: every parameter",
            True,
            "algo.adapt_bn_affine",
            cfg.algo.adapt_bn_affine,
        ),
        ("BN normalises with", "train mode, never eval()", "batch", "algo.bn_stats", cfg.algo.bn_stats),
        ("multi-step loss", "last step's loss only", False, "algo.msl", cfg.algo.msl),
        (
            "meta-gradient clipping",
            "none",
            None,
            "algo.grad_clip_value / grad_clip_norm",
            cfg.algo.grad_clip_value or cfg.algo.grad_clip_norm,
        ),
        (
            "network",
            "MiniImagenetCNN = CNN4",
            "conv4",
            "model._target_",
            str(cfg.model._target_).rsplit(".", 1)[-1].lower(),
        ),
        ("filters", "CNN4(hidden_size=64)", 64, "model.filters", cfg.model.filters),
        ("conv blocks", "CNN4(layers=4)", 4, "model.blocks", cfg.model.blocks),
        ("activation", "ReLU", "relu", "model.activation", cfg.model.activation),
        ("conv and linear init", "maml_init_: xavier_uniform_, zero bias", "xavier", "model.init", cfg.model.init),
        ("image size", "84x84 pickles", "84x84", "data.image_size", f"{cfg.data.image_size}x{cfg.data.image_size}"),
        ("ensemble of checkpoints", "none", 0, "ensemble_top_k", cfg.ensemble_top_k),
    ]


class ExampleDriver:
    """main()'s model, MAML wrapper and optimizer; its loop body as train_step; fast_adapt for evaluation."""

    keep = 1  # no checkpoint ensemble: the best validation checkpoint only
    ensemble_rule = None

    def __init__(self, code: Path, spec: dict, cfg, datamodule):
        import learn2learn as l2l
        import torch
        from torch import nn, optim

        from metaplus.benchmarking.parity import training_batch

        self.example = load_example(code)
        defaults = example_defaults(code)
        self.ways, self.shots = defaults["ways"], defaults["shots"]
        self.steps, self.meta_batch = (
            defaults["adaptation_steps"],
            spec.get("meta_batch") or defaults["meta_batch_size"],
        )
        torch.manual_seed(spec["seed"])  # main() seeds random, numpy and torch with seed=42: the harness with seed k
        self.model = l2l.vision.models.MiniImagenetCNN(self.ways)
        self.maml = l2l.algorithms.MAML(self.model, lr=defaults["fast_lr"], first_order=False)
        self.opt = optim.Adam(self.maml.parameters(), defaults["meta_lr"])
        self.loss = nn.CrossEntropyLoss(reduction="mean")
        self.device = torch.device("cpu")
        self.datamodule, self.training_batch = datamodule, training_batch

    def batch(self, iteration: int):
        batch = self.training_batch(self.datamodule, iteration)
        if len(batch) != self.meta_batch:
            raise ValueError(f"metaplus's meta-batch has {len(batch)} tasks, the example's {self.meta_batch}")
        return batch

    def meta_gradient(self, batch) -> float:
        """main()'s loop body up to its optimizer step (without its meta-validation on random tasks,
        printed only): the meta-gradient in ``.grad``; the mean meta-training error."""
        self.opt.zero_grad()
        meta_train_error = 0.0
        for b in range(len(batch)):
            learner = self.maml.clone()
            evaluation_error, _ = self.example.fast_adapt(
                example_batch(batch[b]), learner, self.loss, self.steps, self.shots, self.ways, self.device
            )
            evaluation_error.backward()
            meta_train_error += evaluation_error.item()
        for p in self.maml.parameters():
            p.grad.data.mul_(1.0 / len(batch))
        return meta_train_error / len(batch)

    def train_step(self, batch, iteration: int) -> float:
        error = self.meta_gradient(batch)
        self.opt.step()
        return error

    def evaluate(self, batch) -> list[tuple[float, None]]:
        scores = []
        for b in range(len(batch)):
            learner = self.maml.clone()
            _, accuracy = self.example.fast_adapt(
                example_batch(batch[b]), learner, self.loss, self.steps, self.shots, self.ways, self.device
            )
            scores.append((float(accuracy), None))
        return scores

    def state(self) -> dict:
        return {"network": self.model.state_dict(), "optimizer": self.opt.state_dict()}

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["network"])
        self.opt.load_state_dict(state["optimizer"])


def reference_parameter(name: str) -> str:
    """The example's model's name of a metaplus Conv-4 parameter (MiniImagenetCNN = CNN4: features.<i>
    are its conv blocks, each .conv and .normalize; classifier is the head)."""
    import re

    for pattern, replacement in (
        (r"backbone\.blocks\.(\d+)\.conv\.(weight|bias)", r"features.\1.conv.\2"),
        (r"backbone\.blocks\.(\d+)\.norm\.(weight|bias)", r"features.\1.normalize.\2"),
        (r"backbone\.head\.(weight|bias)", r"classifier.\1"),
    ):
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    raise KeyError(f"no parameter of the example's model for metaplus's {name}")


def same_weights_step(code: Path, cfg, datamodule) -> dict:
    """Both codes from the SAME weights (metaplus's initialisation copied into the example's
    MiniImagenetCNN, which removes the BN-weight initialisation difference) on the first training
    meta-batch: the meta-loss and every meta-gradient (the example's loop body before its optimizer
    step; metaplus's per-task accumulation), and the adapted query losses of its fast_adapt and of
    metaplus's evaluation on the first validation episodes."""
    import torch
    import torch.nn.functional as F

    from metaplus.benchmarking.parity import compare_gradients, metaplus_meta_gradient, training_batch
    from metaplus.config import instantiate_group
    from metaplus.nn.init_from import build_backbone

    driver = ExampleDriver(code, {"seed": 0, "meta_batch": cfg.data.meta_batch_size}, cfg, datamodule)
    torch.manual_seed(0)
    learner = instantiate_group(cfg.algo, "algo", backbone=build_backbone(cfg.model), task_type=datamodule.task)
    theirs = dict(driver.model.named_parameters())
    pairs = []
    with torch.no_grad():
        for name, param in learner.named_parameters():
            target = theirs[reference_parameter(name)]
            target.copy_(param)
            pairs.append((name, param, target))
    if len(pairs) != len(theirs):
        raise ValueError(f"metaplus has {len(pairs)} parameters, the example's model {len(theirs)}")
    batch = training_batch(datamodule, 0)
    their_error = driver.meta_gradient(batch)
    our_losses = metaplus_meta_gradient(learner, cfg, batch)
    gradients = compare_gradients([(name, param.grad, target.grad) for name, param, target in pairs])
    val = next(iter(datamodule.val_dataloader()))
    gaps = []
    learner.eval()
    for b in range(len(val)):
        error, _ = driver.example.fast_adapt(
            example_batch(val[b]), driver.maml.clone(), driver.loss, driver.steps, driver.shots, driver.ways, "cpu"
        )
        ours = F.cross_entropy(learner.adapted_prediction(val[b], learner.test_inner_steps), val[b].query_y)
        gaps.append(abs(float(ours.detach()) - float(error.detach())))
    worst = max(gradients, key=lambda n: gradients[n]["relative_difference"])
    return {
        "meta_loss": {"metaplus": float(torch.stack(our_losses).mean()), "reference": their_error},
        "max_relative_gradient_difference": gradients[worst]["relative_difference"],
        "worst_parameter": worst,
        "zero_by_construction": sorted(n for n, g in gradients.items() if g["zero_by_construction"]),
        "gradients": gradients,
        "max_abs_loss_difference_evaluation": max(gaps),
        "episodes": {"train": len(batch), "val": len(val)},
    }
