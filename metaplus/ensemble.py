"""MAML++'s evaluation protocol: an ensemble of the top-k validation checkpoints (``ensemble_top_k``).

Each of the k checkpoints with the best validation metric is loaded into its own copy of the learner
(the learner itself keeps the evaluated checkpoint's weights) and adapted on every fixed test
episode's support set, on the trainer's device; the query predictions are averaged over the k adapted models
(softmax probabilities for classification, outputs for regression) and the averaged prediction is
scored. Reported beside the single best checkpoint's ``test/acc``: ``test/acc_ensemble``,
``test/acc_ensemble_ci95`` (1.96 std / sqrt(n) over the episodes, as every other CI here) and
``test/ensemble_checkpoints`` (file names, best first, with their validation scores).

The k adaptations are independent, so on accelerators, where the learner's evaluation is the plain
adaptation that the batched engine computes (``supports_batched_engine``: MAML, MAML++, ANIL,
Meta-SGD), the members adapt together: one ``torch.vmap`` over the members' stacked parameters and buffers (``functional_call``
of the learner, so each member's learned inner rates and per-step BN weights and statistics are its
own), the episode shared, through the batched engine's :meth:`~metaplus.inner.batched.BatchedAdapt.scored_queries`.
Batch statistics are computed per member, as when the members adapt one after another. The two
paths compute the same function (float64: 1e-11 on a trained MAML++ mini-ImageNet run) but round
differently in float32, and five inner steps can amplify that: on a barely trained checkpoint with
logits ~75 both paths were 0.1-6 away from float64 (the sequential one up to 0.9). Reptile
(whose Adam inner rule keeps state across steps) and pretrain (which resets its episode head before
adapting) adapt the members one after another (``adapted_prediction``), as every learner did
before, and so does every learner on the CPU, where the batched call is slower (:func:`batches_members`).

What it costs: the best checkpoint is the ensemble's first member, and ``trainer.test`` has already
adapted it on every test episode, so a run hands those predictions over (``first_member_predictions``)
and only the other k-1 members are adapted. On the CPU the one-after-another path adapts episodes on
worker threads with one op thread each (:func:`metaplus.threads.map_on_workers`; the same arithmetic
as one thread), which scales better than torch's intra-op threads over one episode's small ops.

The test episodes are the ones ``trainer.test`` scores (same data seed and indices). Under DDP each
rank takes every world-size-th episode and the per-episode results are gathered, so each episode is
counted once; every rank returns the same figures.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metaplus.data.episodes import EpisodeDataset, Task, collate_tasks
from metaplus.errors import ConfigError
from metaplus.evaluation import mean_ci95
from metaplus.inner.batched import BatchedAdapt
from metaplus.threads import map_on_workers


def checkpoint_score(path: Path) -> tuple[float | None, str | None]:
    """(validation score, monitored metric) recorded by ModelCheckpoint in the checkpoint itself."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and state.get("current_score") is not None:
            return float(state["current_score"]), state.get("monitor")
    return None, None


def rank_checkpoints(paths: list[Path], mode: str) -> list[tuple[Path, float]]:
    """Checkpoints with a recorded validation score, best first (``mode``: max or min)."""
    scored = [(p, checkpoint_score(p)[0]) for p in paths]
    scored = [(p, s) for p, s in scored if s is not None]
    return sorted(scored, key=lambda item: item[1], reverse=mode == "max")


def top_k_from_directory(directory: Path, k: int, mode: str) -> list[tuple[Path, float]]:
    """The k best checkpoints of a run's checkpoint directory (``last.ckpt`` only if it is scored
    and not a copy of a best one)."""
    paths = sorted(p for p in Path(directory).glob("*.ckpt") if p.name != "last.ckpt")
    ranked = rank_checkpoints(paths, mode)
    if not ranked:
        raise ConfigError(
            "ckpt_path",
            f"{directory} holds no checkpoint with a recorded validation score "
            f"(best-*.ckpt files written by a metaplus run)",
        )
    return ranked[:k]


def top_k_from_callback(callback, k: int, mode: str) -> list[tuple[Path, float]]:
    """The k best checkpoints a ModelCheckpoint kept during fit (its ``best_k_models``)."""
    kept = {Path(p): float(s) for p, s in callback.best_k_models.items()}
    return sorted(kept.items(), key=lambda item: item[1], reverse=mode == "max")[:k]


def _shard(n: int) -> tuple[range, int]:
    if dist.is_available() and dist.is_initialized():
        return range(dist.get_rank(), n, dist.get_world_size()), dist.get_world_size()
    return range(n), 1


def _gather(values: list[tuple[int, float, float]], world: int) -> list[tuple[int, float, float]]:
    if world == 1:
        return values
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, values)
    return [item for part in gathered for item in part]


def ensemble_device(trainer, learner) -> torch.device:
    """Where the ensemble runs: the trainer's root device. Not ``learner.device``: the teardown that
    ends ``trainer.test`` moves the learner back to the CPU, also on a GPU machine."""
    strategy = getattr(trainer, "strategy", None)
    return strategy.root_device if strategy is not None else learner.device


def ensemble_members(learner, checkpoints: list[tuple[Path, float]], device: torch.device) -> list:
    """One evaluation-mode copy of ``learner`` per checkpoint, on ``device``; ``learner`` itself is not
    touched (what runs after the ensemble, e.g. the W&B summary's learned rates, reads it)."""
    members = []
    for path, _ in checkpoints:
        member = copy.deepcopy(learner)
        member.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
        members.append(member.to(device).eval())
    return members


def can_batch_members(learner) -> bool:
    """Whether the members of ``learner``'s ensemble can adapt together (one vmapped call per episode):
    where its evaluation is the adaptation the batched engine computes (``supports_batched_engine``).
    Reptile (a stateful Adam inner rule) and pretrain (its episode head is reset before adapting)
    cannot."""
    return learner.supports_batched_engine


def batches_members(learner, device: torch.device) -> bool:
    """The default path: batched on accelerators, where one-member-at-a-time Conv-4 is launch-bound;
    one member after another on the CPU, where the vmapped call was ~2x slower (1.65-3.1x per
    episode, MAML++ mini-ImageNet 5w1s, bench/results/eval_cost.md): the cost there is memory-bound
    passes over the query maps, which batching does not reduce, plus grouped convolutions and the
    batched engine's batch statistics in plain tensor ops."""
    return can_batch_members(learner) and device.type != "cpu"


class MemberAdaptation(nn.Module):
    """``adapted_prediction`` of one task as a module's forward, so that :func:`torch.func.functional_call`
    can run it with any member's parameters and buffers (``learner.*`` names) and ``torch.vmap`` over
    the members. The update rule is asked of the learner inside the call, so it reads the substituted
    parameters (each member's LSLR / Meta-SGD rates)."""

    def __init__(self, learner, steps: int):
        super().__init__()
        self.learner, self.steps = learner, steps
        # Read on the real parameters: the substituted ones do not carry requires_grad.
        self.adapted = learner.adapted_names()
        self.engine = BatchedAdapt()

    def forward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        learner = self.learner
        _, predictions = self.engine.scored_queries(
            learner.backbone,
            support_x[None],
            support_y[None],
            query_x[None],
            query_y[None],
            loss_fn=learner.loss_fn,
            steps=self.steps,
            adapted=self.adapted,
            rule=learner.inner_rule(),
            first_order=True,
            scored=[self.steps],  # the query pass after the last step, at step max(steps - 1, 0)
        )
        return predictions[0, 0]


def stacked_state(members: list) -> dict[str, Tensor]:
    """Every parameter and buffer of the members, stacked along a new first dimension (member order),
    named as :class:`MemberAdaptation` sees them."""
    states = [{**dict(m.named_parameters()), **dict(m.named_buffers())} for m in members]
    return {f"learner.{name}": torch.stack([state[name].detach() for state in states]) for name in states[0]}


def batched_predictions(adaptation: MemberAdaptation, state: dict[str, Tensor], task: Task) -> Tensor:
    """Query predictions ``(k, Q, ...)`` of the k members in ``state`` adapted on ``task``, in one
    vmapped call (the task shared). randomness="different": random layers (DropBlock, active only in
    training mode) would draw per member, as they do when the members adapt one after another."""
    inputs = (task.support_x, task.support_y, task.query_x, task.query_y)
    with torch.no_grad():  # first order: torch.func.grad still takes the inner gradients
        return vmap(lambda member: functional_call(adaptation, member, inputs), randomness="different")(state)


def evaluate_ensemble(
    learner,
    datamodule,
    checkpoints: list[tuple[Path, float]],
    device: torch.device | str | None = None,
    forward_context: Callable[[], AbstractContextManager] | None = None,
    batched: bool | None = None,
    first_member_predictions: Mapping[int, Tensor] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Test metrics of the ensemble of ``checkpoints`` on the datamodule's fixed test episodes.

    ``device`` defaults to :func:`ensemble_device` of the datamodule's trainer; ``forward_context``
    to the trainer's precision context (autocast under ``16-mixed``/``bf16-mixed``, as its test steps
    ran). Each episode is built and moved to the device once (uint8 images, asynchronously from pinned
    memory on a GPU, normalised there as training batches are) and scored by every member.
    ``batched``: adapt the members together (see the module docstring); ``None`` (default): where
    :func:`batches_members` says so (accelerators), ``False``: one after another, ``True``: together
    also on the CPU (a learner that cannot be batched is refused).
    ``first_member_predictions``: the first checkpoint's query predictions by test episode index, as
    ``trainer.test`` of that checkpoint computed them (:attr:`EpisodicLearner.test_predictions`); those
    episodes are not adapted again for that member (the best checkpoint is the ensemble's first member:
    without this, its test is computed twice). Episodes missing from it are computed.
    ``workers``: on the CPU's one-after-another path, episodes are adapted on this many threads with one
    op thread each (:func:`metaplus.threads.map_on_workers`, each thread with its own copies of the
    members); default: the process's torch thread count. Elsewhere: one.
    """
    if not learner.supports_checkpoint_ensemble():
        raise ConfigError(
            "ensemble_top_k",
            f"is not supported for algo={learner.hparams.get('name')} "
            f"(its evaluation draws per-batch state); set ensemble_top_k=0",
        )
    if not checkpoints:
        raise ConfigError("ensemble_top_k", "no validation checkpoint was kept: the run saved none")
    if batched and not can_batch_members(learner):
        raise ValueError(
            f"evaluate_ensemble(batched=True): {type(learner).__name__} adapts its members one after "
            f"another only (its evaluation is not the batched engine's adaptation); pass batched=None or False"
        )
    trainer = getattr(datamodule, "trainer", None)
    device = torch.device(device) if device is not None else ensemble_device(trainer, learner)
    if batched is None:
        batched = batches_members(learner, device)
    if forward_context is None:
        forward_context = trainer.precision_plugin.forward_context if trainer is not None else contextlib.nullcontext
    known = first_member_predictions or {}
    source = datamodule.source("test")
    dataset = EpisodeDataset(source, datamodule.test_episodes, keys=(datamodule.eval_seed, "test"), pixels=True)
    episodes, world = _shard(len(dataset))
    steps = learner.test_inner_steps
    members = ensemble_members(learner, checkpoints, device)
    if batched:
        adaptation = MemberAdaptation(members[0], steps)
        state = stacked_state(members)
        # The other members' stack, only where the first member's predictions are handed over (a second
        # copy of k-1 members' parameters on the device otherwise for nothing).
        later_state = stacked_state(members[1:]) if known and len(members) > 1 else None
        workers = 1
    elif workers is None:
        workers = torch.get_num_threads() if device.type == "cpu" else 1
    workers = max(min(workers, len(episodes)), 1)

    def tasks():
        """(episode index, (episode index, task on the device)), built in the calling thread, in order."""
        for i in episodes:
            batch = collate_tasks([dataset[i]])
            if device.type == "cuda":
                batch = batch.pin_memory()
            yield i, (i, datamodule.normalise(move_data_to_device(batch, device), "test")[0])  # non-blocking copies

    def predict(own_members: list, task_of: tuple[int, Task]) -> tuple[list[Tensor], Tensor]:
        """Every member's query predictions on one episode (fp32, member order) and its query labels."""
        i, task = task_of
        reused = [known[i].detach().float()] if i in known else []
        with forward_context():
            if batched:
                rest = later_state if reused else state
                computed = [] if rest is None else list(batched_predictions(adaptation, rest, task).detach().float())
            else:
                computed = [m.adapted_prediction(task, steps).detach().float() for m in own_members[len(reused) :]]
        return reused + computed, task.query_y

    # Workers after the first adapt their own copies (pretrain resets a member's head per episode).
    member_sets = [members] + [[copy.deepcopy(m) for m in members] for _ in range(workers - 1)]
    scored = map_on_workers(predict, tasks(), member_sets)
    summed: dict[int, torch.Tensor] = {}
    targets: dict[int, torch.Tensor] = {}
    classify = learner.task_type == "classification"
    for i in episodes:
        predictions, targets[i] = scored[i]
        for prediction in predictions:  # averaged in fp32, in member order
            prediction = F.softmax(prediction, dim=-1) if classify else prediction
            summed[i] = summed[i] + prediction if i in summed else prediction
    per_episode = []
    for i in episodes:
        mean = summed[i] / len(checkpoints)
        if classify:
            value = (mean.argmax(dim=-1) == targets[i]).float().mean().item()
            loss = F.nll_loss(mean.clamp_min(1e-12).log(), targets[i]).item()
        else:
            value = loss = F.mse_loss(mean, targets[i]).item()
        per_episode.append((i, value, loss))
    rows = sorted(dict((i, (v, l)) for i, v, l in _gather(per_episode, world)).items())
    values = torch.tensor([v for _, (v, _) in rows])
    losses = torch.tensor([l for _, (_, l) in rows])
    metric = learner.metric
    m, ci = mean_ci95(values)
    loss_mean, _ = mean_ci95(losses)
    return {
        f"test/{metric}_ensemble": m,
        f"test/{metric}_ensemble_ci95": ci,
        "test/loss_ensemble": loss_mean,
        "test/ensemble_episodes": float(len(rows)),
        "test/ensemble_checkpoints": [{"file": p.name, "val_score": round(s, 6)} for p, s in checkpoints],
    }
