"""Time the MAML++ reference code's training iteration (Antoniou et al. 2019, "How to train your
MAML", github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch) on CPU, on synthetic data of a given
shape.

Why (issue 13): a speed claim against the reference in the README must come from a side-by-side
measurement on the same machine, threads and episode shape, not from numbers quoted from elsewhere.
bench/speed.py runs this script in a child process (it reads peak RSS itself) next to our own rows.

What is timed: ``MAMLFewShotClassifier.run_train_iter(data_batch, epoch=0)``, the reference's whole
meta-iteration (numpy -> tensor, inner loops of every task, outer backward, Adam step), with the
args of its released Omniglot MAML++ config (experiment_config/
omniglot_maml++-omniglot_1_8_0.1_64_5_0.json: per-step BN statistics, learnable per-layer per-step
inner learning rates, multi-step loss on at epoch 0, second order from epoch 0) overridden by the
CLI. ``--warmup`` iterations (default 1) are dropped, then ``--iterations`` timed ones: wall clock,
process CPU time and its system part (at meta-batch 16 x 15 queries the first ~2 iterations
page-fault ~10 GB of fresh memory, seconds of system time, before glibc's malloc reuses it). The
data is one fixed synthetic batch: image content does not change the cost.

Get the code (we import it from outside the repo and never copy or edit it), then run:

    git clone https://github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch /tmp/mamlpp_ref
    # or from a bare mirror: bench.reference_mamlpp.extract_reference(MIRROR_GIT_DIR, DEST)
    OMP_NUM_THREADS=1 python bench/reference_mamlpp.py --code /tmp/mamlpp_ref --ways 5 --shots 1 \
        --queries 15 --meta-batch 16 --steps 5 --filters 64 --image-shape 1,28,28 --iterations 3 \
        --threads 1 --out /tmp/ref.json [--first-order]     # or METAPLUS_MAMLPP_REFERENCE=DIR

bench/parity.py (issue 25) trains the same reference side by side with metaplus through the helpers
below the speed benchmark's: ``released_args`` (a released config as its train_maml_system.py reads it),
``reference_omniglot_split`` (its own Omniglot class split, by its own data provider),
``reference_layout`` (metaplus's episodes in its data provider's layout) and its model's state.

The reference (commit 8696470) runs unchanged on torch 2.14. From outside only: CUDA is hidden
before torch is imported (its constructor moves itself to any visible GPU); stdout goes to stderr
while it builds (it prints every parameter); the UserWarnings its 2019 idioms raise on torch 2.x
(``scheduler.step(epoch=)``, ``scheduler.get_lr()``, ``.grad`` of a non-leaf) are silenced.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

HOW_TO_GET = "git clone https://github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch"


def extract_reference(mirror_git_dir, dest) -> Path:
    """Write the reference's .py files and experiment configs from a (bare) git repo into ``dest``.
    File by file with ``git show``: the mirror may lack the dataset blobs, which ``git archive``
    trips over. The commit goes to dest/REFERENCE_COMMIT."""
    git = ["git", "-C", str(mirror_git_dir)]
    dest = Path(dest)
    names = subprocess.run(
        git + ["ls-tree", "-r", "--name-only", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.split()
    for name in names:
        config = name.startswith("experiment_config/") and name.endswith(".json")
        if name.endswith(".py") or config:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(
                subprocess.run(git + ["show", f"HEAD:{name}"], check=True, capture_output=True).stdout
            )
    commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    (dest / "REFERENCE_COMMIT").write_text(commit.stdout)
    return dest


def code_commit(code: Path):
    """Short commit of the reference code: a git clone's HEAD, else extract_reference's note."""
    out = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if out.returncode == 0:
        return out.stdout.strip()
    note = code / "REFERENCE_COMMIT"
    return note.read_text().strip()[:7] if note.exists() else None


def reference_args(a) -> dict:
    """Every attribute the reference's model code reads (few_shot_learning_system.py,
    meta_neural_network_architectures.py, inner_loop_optimizers.py): the released Omniglot MAML++
    config, plus utils/parser_utils.py defaults for keys that config leaves out (seed,
    task_learning_rate), overridden by the CLI."""
    c, h, w = a.image_shape
    return dict(
        batch_size=a.meta_batch,
        num_classes_per_set=a.ways,
        num_samples_per_class=a.shots,
        num_target_samples=a.queries,
        number_of_training_steps_per_iter=a.steps,
        number_of_evaluation_steps_per_iter=a.steps,
        cnn_num_filters=a.filters,
        image_channels=c,
        image_height=h,
        image_width=w,
        second_order=not a.first_order,
        first_order_to_second_order_epoch=-1,
        use_multi_step_loss_optimization=True,
        multi_step_loss_num_epochs=10,
        per_step_bn_statistics=True,
        learnable_per_layer_per_step_inner_loop_learning_rate=True,
        enable_inner_loop_optimizable_bn_params=False,
        learnable_bn_gamma=True,
        learnable_bn_beta=True,
        norm_layer="batch_norm",
        num_stages=4,
        conv_padding=True,
        max_pooling=True,
        task_learning_rate=0.1,
        meta_learning_rate=0.001,
        min_learning_rate=0.00001,
        total_epochs=100,
        total_iter_per_epoch=500,
        seed=104,
        # meta_update clips meta-gradients when the name holds "imagenet": keep that cost for RGB.
        dataset_name="mini_imagenet_full_size" if c == 3 else "omniglot_dataset",
        use_cuda=False,
    )


# -- driving the reference on metaplus's episodes (bench/parity.py) -----------------------------------
# What the reference's get_args (utils/parser_utils.py) yields for the keys its released configs leave out
# and its model and data code read. task_learning_rate is LSLR's starting rate: the code never reads the
# configs' init_inner_loop_learning_rate. seed seeds the model's initialisation (set_torch_seed); no
# released config sets it, so every released run starts from the same weights.
PARSER_DEFAULTS = dict(
    seed=104,
    task_learning_rate=0.1,
    reverse_channels=False,
    labels_as_int=False,
    reset_stored_filepaths=False,
    num_of_gpus=1,
    samples_per_iter=1,
)
OMNIGLOT_CONFIG = "omniglot_maml++-omniglot_1_8_0.1_64_5_0"
MINIIMAGENET_CONFIG = "mini-imagenet_maml++-mini-imagenet_1_2_0.01_48_5_0"


def check_code(code) -> Path:
    """The reference's directory, or SystemExit naming where it looked and how to get the code."""
    if code is None or not (Path(code) / "few_shot_learning_system.py").is_file():
        where = (
            f"no few_shot_learning_system.py in {code}"
            if code is not None
            else "neither --code nor METAPLUS_MAMLPP_REFERENCE is set"
        )
        sys.exit(
            f"reference_mamlpp: {where}; get the MAML++ reference code with:\n  {HOW_TO_GET}\n"
            "and pass its directory as --code or METAPLUS_MAMLPP_REFERENCE."
        )
    return Path(code).resolve()


def load_reference(code: Path, threads: int) -> None:
    """Make the reference importable in this process, CPU only, with ``threads`` torch threads.

    Before torch loads: thread pools are sized at import, and the reference moves itself to any visible
    GPU in its constructor. Its 2019 idioms warn on torch 2.x (scheduler.step(epoch=), get_lr(), .grad of
    a non-leaf in zero_grad); they still run, and each warning is raised once per call site."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings(
        "ignore",
        category=UserWarning,
        module=r"(few_shot_learning_system|"
        r"meta_neural_network_architectures|torch\.optim\.lr_scheduler)",
    )
    if str(code) not in sys.path:
        sys.path.insert(0, str(code))


def released_config(code: Path, name: str) -> dict:
    """One of the reference's released experiment configs (experiment_config/<name>.json)."""
    path = Path(code) / "experiment_config" / f"{name}.json"
    if not path.is_file():
        sys.exit(
            f"reference_mamlpp: {path} not found: the released configs are in the reference's "
            f"experiment_config/ ({HOW_TO_GET})"
        )
    return json.loads(path.read_text())


def released_args(code: Path, name: str, **overrides) -> SimpleNamespace:
    """The args the reference's train_maml_system.py builds from a released config (parser defaults,
    then the config), CPU only, then ``overrides`` (what a harness must change, e.g. seed)."""
    settings = {**PARSER_DEFAULTS, **released_config(code, name), "use_cuda": False, **overrides}
    return SimpleNamespace(**settings)


def build_model(args: SimpleNamespace):
    """The reference's MAMLFewShotClassifier for ``args`` (its printing goes to stderr)."""
    import torch
    from few_shot_learning_system import MAMLFewShotClassifier

    with contextlib.redirect_stdout(sys.stderr):  # it prints every layer and parameter
        return MAMLFewShotClassifier(
            im_shape=(2, args.image_channels, args.image_height, args.image_width),
            device=torch.device("cpu"),
            args=args,
        )


def reference_layout(support_x, support_y, query_x, query_y, ways: int):
    """A metaplus TaskBatch's tensors ([tasks, ways*k, C, H, W] images, [tasks, ways*k] labels) in the
    layout the reference's data provider yields (data.py get_set, stacked over the meta-batch):
    x [tasks, ways, k, C, H, W] float32 with class i in row i, y [tasks, ways, k] float32."""
    import torch

    def rows(x, y):
        order = torch.argsort(y, dim=1, stable=True)  # examples of class 0, then class 1, ...
        x = torch.take_along_dim(x, order.view(*order.shape, *[1] * (x.dim() - 2)), dim=1)
        y = torch.take_along_dim(y, order, dim=1)
        tasks, n = y.shape
        if n % ways or not torch.equal(
            y.view(tasks, ways, n // ways), torch.arange(ways).view(1, ways, 1).expand(tasks, ways, n // ways)
        ):
            raise ValueError(f"episodes must hold the same number of examples of each of {ways} classes")
        return (
            x.reshape(tasks, ways, n // ways, *x.shape[2:]).float().numpy(),
            y.view(tasks, ways, n // ways).float().numpy(),
        )

    xs, ys = rows(support_x, support_y)
    xq, yq = rows(query_x, query_y)
    return xs, xq, ys, yq


def episode_predictions(model, batch) -> list:
    """The reference's evaluation of a batch of episodes (run_validation_iter: 5 inner steps, batch
    statistics, running statistics restored after each episode): per-episode query logits."""
    with contextlib.redirect_stdout(sys.stderr):
        _, logits = model.run_validation_iter(data_batch=batch)
    return logits


def state_of(model) -> dict:
    """What the reference's save_model stores (network and optimizer; its scheduler is re-set from the
    epoch at every iteration), without its experiment dict."""
    return {"network": model.state_dict(), "optimizer": model.optimizer.state_dict()}


def load_state(model, state: dict) -> None:
    """The reference's load_model on a state of :func:`state_of` (optimizer, then network)."""
    model.optimizer.load_state_dict(state["optimizer"])
    model.load_state_dict(state["network"])


OMNIGLOT_MEMBER = re.compile(r"^(images_background|images_evaluation)/([^/]+)/(character\d+)/([^/]+\.png)$")


def reference_omniglot_split(code: Path, omniglot_root: Path, work: Path, config: str = OMNIGLOT_CONFIG) -> dict:
    """The reference's own Omniglot class split, computed by its own data provider: its split shuffles
    the 1,623 characters (background and evaluation alike) with a seed of the config and cuts them by
    the config's train_val_test_split. It only needs the class folders, so it runs on a skeleton of the
    official archives (one drawing per character) in ``work``; returns {split: ["Alphabet/characterNN"]}."""
    work = Path(work)
    skeleton = work / "omniglot_dataset"
    for part in ("images_background", "images_evaluation"):
        archive, folder = Path(omniglot_root) / f"{part}.zip", Path(omniglot_root) / part
        if archive.is_file():
            with zipfile.ZipFile(archive) as zf:
                names = zf.namelist()
                read = zf.read
                for name in sorted(names):
                    match = OMNIGLOT_MEMBER.match(name)
                    target = skeleton.joinpath(*match.groups()[:3]) if match else None
                    if target is not None and not target.exists():
                        target.mkdir(parents=True, exist_ok=True)
                        (target / match.group(4)).write_bytes(read(name))
        elif folder.is_dir():
            for character in sorted(folder.glob("*/character*")):
                target = skeleton / part / character.parent.name / character.name
                if not target.exists():
                    target.mkdir(parents=True)
                    first = sorted(character.glob("*.png"))[0]
                    (target / first.name).write_bytes(first.read_bytes())
        else:
            sys.exit(f"reference_mamlpp: Omniglot not found: neither {archive} nor {folder}/")
    datasets = work / "datasets"  # its path and label maps are written here (DATASET_DIR)
    datasets.mkdir(parents=True, exist_ok=True)
    os.environ["DATASET_DIR"] = str(datasets)
    if str(code) not in sys.path:
        sys.path.insert(0, str(code))
    from data import FewShotLearningDatasetParallel

    args = released_args(code, config, dataset_path=str(skeleton), load_into_memory=False)
    with contextlib.redirect_stdout(sys.stderr):
        provider = FewShotLearningDatasetParallel(args=args)
    return {
        split: sorted(provider.get_label_from_index(index) for index in provider.datasets[split])
        for split in ("train", "val", "test")
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--code",
        type=Path,
        default=os.environ.get("METAPLUS_MAMLPP_REFERENCE"),
        help="directory of the reference's .py files (env METAPLUS_MAMLPP_REFERENCE)",
    )
    for name, default in [
        ("ways", 5),
        ("shots", 1),
        ("queries", 15),
        ("meta-batch", 16),
        ("steps", 5),
        ("filters", 64),
        ("iterations", 3),
        ("warmup", 1),
        ("threads", 1),
    ]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument(
        "--image-shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=(1, 28, 28), help="C,H,W"
    )
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    code = check_code(a.code)
    load_reference(code, a.threads)
    import numpy as np
    import torch

    settings = reference_args(a)
    c, h, w = a.image_shape
    model = build_model(SimpleNamespace(**settings))
    # The layout its data loader yields (data.py get_set, stacked over the meta-batch):
    # x [batch, ways, shots, C, H, W] float32, y [batch, ways, shots] with class i in row i.
    rng = np.random.default_rng(0)
    labels = np.arange(a.ways, dtype=np.float32)[None, :, None]
    batch = (
        rng.random((a.meta_batch, a.ways, a.shots, c, h, w), dtype=np.float32),
        rng.random((a.meta_batch, a.ways, a.queries, c, h, w), dtype=np.float32),
        np.broadcast_to(labels, (a.meta_batch, a.ways, a.shots)).copy(),
        np.broadcast_to(labels, (a.meta_batch, a.ways, a.queries)).copy(),
    )

    walls, cpus, syss = [], [], []
    for i in range(a.warmup + a.iterations):  # warm-up: allocator, autograd and Adam state
        w0, c0, s0 = time.perf_counter(), time.process_time(), os.times().system
        losses, _ = model.run_train_iter(data_batch=batch, epoch=0)
        wall = time.perf_counter() - w0
        if i >= a.warmup:
            walls.append(wall)
            cpus.append(time.process_time() - c0)
            syss.append(os.times().system - s0)  # page faults of a fresh allocation show here
        print(
            f"iteration {i}{' (warm-up)' if i < a.warmup else ''}: {wall:.2f} s, "
            f"loss {float(losses['loss'].detach()):.4f}",
            file=sys.stderr,
        )

    result = {
        "train_times": walls,
        "train_cpu_times": cpus,
        "train_sys_times": syss,
        "warmup": a.warmup,
        "threads": a.threads,
        "code_commit": code_commit(code),
        "code_dir": str(code),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "torch": torch.__version__,
        "args": settings,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("train_times", "train_cpu_times", "train_sys_times", "peak_rss_gb")}))


if __name__ == "__main__":
    main()
