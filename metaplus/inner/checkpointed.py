"""Activation checkpointing through the inner loop (``algo.checkpoint_steps=true``): second order in less memory.

Second-order MAML keeps, for every inner step, the activations of the support forward and of its
backward (the backward is differentiated again in the meta-backward), and the activations of every
query forward: one per inner step with MAML++'s multi-step loss. In 5-way 1-shot the query set
(75 images) is 15 times the support set, so the query passes hold most of it. This engine keeps
only each step's parameters (theta_k, and the inner gradient the update rule needs) and recomputes
the rest during the meta-backward, one step at a time:

- an inner step's gradient is :class:`InnerGradient`, a custom autograd function
  theta_k -> grad L_S(theta_k). Its forward takes the gradient without keeping a graph; its backward
  recomputes the support pass with ``create_graph=True`` and returns the vector-Jacobian product
  (H v for theta_k; the mixed second derivative for the meta-learned parameters the support loss
  reads, e.g. BNWB's per-step weights). The update rule (SGD, LSLR's or Meta-SGD's learned rates)
  is applied outside, in ordinary autograd, so its own parameters get their gradients as always.
  First order needs no function: the gradient is a constant of the meta-backward anyway.
- the adapted model's forward (the query passes) runs under :func:`torch.utils.checkpoint.checkpoint`
  (non-reentrant): only its inputs are kept, the pass is redone in the backward.

A recomputation replays the random state (ResNet-12's DropBlock) and the autocast state of the
original pass, and leaves the model's buffers as they were: batch norm's running statistics (BNRS)
are updated once, by the original pass, as without checkpointing. The meta-gradient is the same as
the default engine's (the tests compare every parameter in float64). Cost: one more support
forward+backward per inner step and one more forward per query pass.

Evaluation (the backbone in eval mode: validation, test, ``adapt_to``) adapts first order and scores
the query set under ``no_grad``; it keeps no graph to save, so it runs the default engine unchanged.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext

import learn2learn as l2l
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint, get_device_states, set_device_states

from metaplus.inner.clone_adapt import CloneAdapt, LossFn, StepHook, UpdateRule


@contextmanager
def kept_buffers(model: nn.Module) -> Iterator[None]:
    """Within this block ``model``'s buffers may change; on leaving, they are as they were. A
    recomputed pass must not update batch norm's running statistics a second time."""
    saved = [(buffer, buffer.clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


class Replay:
    """The state a pass depends on besides its inputs, recorded before it runs, so that its
    recomputation in the backward (possibly on another thread: CUDA's backward runs on a device
    thread, where autocast is off) computes exactly the same tensors."""

    def __init__(self, model: nn.Module, tensors: Sequence[Tensor]):
        self.model = model
        self.cpu_rng = torch.get_rng_state()
        self.devices, self.device_rng = get_device_states(*tensors)
        self.device_type = next((t.device.type for t in tensors if t.device.type != "cpu"), None)
        self.autocast = {
            kind: (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
            for kind in {"cpu", *(t.device.type for t in tensors)}
            if torch.amp.is_autocast_available(kind)
        }

    @contextmanager
    def __call__(self) -> Iterator[None]:
        """The recorded random and autocast state inside the block; the model's buffers and the random
        state as they were after it."""
        with ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=self.devices, device_type=self.device_type))
            stack.enter_context(kept_buffers(self.model))
            torch.set_rng_state(self.cpu_rng)
            if self.devices:
                set_device_states(self.devices, self.device_rng, device_type=self.device_type)
            for kind, (enabled, dtype) in self.autocast.items():
                stack.enter_context(torch.autocast(kind, dtype=dtype, enabled=enabled))
            yield


def leaves(tensors: Sequence[Tensor], count: int) -> list[Tensor]:
    """Fresh graph leaves with the values of ``tensors``; the first ``count`` (the adapted parameters,
    which the inner gradient is taken of) always require grad."""
    return [t.detach().requires_grad_(i < count or t.requires_grad) for i, t in enumerate(tensors)]


class InnerGradient(torch.autograd.Function):
    """``apply(support_loss, count, model, *tensors)``: the gradient of ``support_loss(tensors)`` with
    respect to the first ``count`` tensors (None where the loss does not use one), keeping no
    activations; ``model`` is the module whose buffers the recomputation must leave unchanged.

    Backward, given v (one vector per gradient): recompute the support pass, differentiate with
    ``create_graph=True`` and return d<grad, v>/d tensors, for every tensor that requires grad."""

    @staticmethod
    def forward(ctx, support_loss, count: int, replay_of: nn.Module, *tensors: Tensor):
        ctx.support_loss, ctx.count = support_loss, count
        ctx.replay = Replay(replay_of, tensors)
        ctx.save_for_backward(*tensors)
        with torch.enable_grad():  # autograd.Function.forward runs under no_grad
            inputs = leaves(tensors, count)
            grads = torch.autograd.grad(support_loss(inputs), inputs[:count], allow_unused=True)
        return tuple(grads)

    @staticmethod
    @once_differentiable  # the meta-gradient is differentiated once; nothing takes a third derivative
    def backward(ctx, *vectors: Tensor | None):
        tensors, count = ctx.saved_tensors, ctx.count
        wanted = [i for i in range(len(tensors)) if ctx.needs_input_grad[3 + i]]
        result: list[Tensor | None] = [None] * len(tensors)
        with torch.enable_grad(), ctx.replay():
            inputs = leaves(tensors, count)
            grads = torch.autograd.grad(ctx.support_loss(inputs), inputs[:count], create_graph=True, allow_unused=True)
            pairs = [(g, v) for g, v in zip(grads, vectors) if g is not None and g.requires_grad and v is not None]
            if pairs and wanted:
                products = torch.autograd.grad(
                    [g for g, _ in pairs],
                    [inputs[i] for i in wanted],
                    grad_outputs=[v for _, v in pairs],
                    allow_unused=True,
                )
                for i, product in zip(wanted, products):
                    result[i] = product
        return (None, None, None, *result)


def recomputed_clone(model: nn.Module, parameters: dict[str, Tensor]) -> nn.Module:
    """A learn2learn clone of ``model`` that runs with ``parameters`` (name -> tensor: the adapted ones
    at their current value) and whose forward, with grad enabled, keeps only its inputs: the
    activations are recomputed in the backward. What the checkpointed engine hands to ``on_step`` and
    returns; an ordinary module otherwise (``named_parameters``, hooks, ``forward(x, step=k)``)."""
    clone = l2l.clone_module(model)
    for name, value in parameters.items():
        owner, _, leaf = name.rpartition(".")
        clone.get_submodule(owner)._parameters[leaf] = value  # as l2l.update_module sets an updated tensor
    # The clone's own forward, reached through a weak reference: a strong one from this instance
    # attribute back to the clone would be a reference cycle, holding the step's tensors (and the
    # task's graph) until the garbage collector runs instead of freeing them after the backward.
    plain_forward, clone_ref = type(clone).forward, weakref.ref(clone)

    def checkpointed_forward(x: Tensor, step: int = 0) -> Tensor:
        forward = functools.partial(plain_forward, clone_ref())
        if not torch.is_grad_enabled():
            return forward(x, step=step)
        # The recomputation must not update the running statistics again (the first pass did).
        return checkpoint(
            forward, x, step=step, use_reentrant=False, context_fn=lambda: (nullcontext(), kept_buffers(model))
        )

    clone.forward = checkpointed_forward  # an instance attribute: nn.Module.__call__ runs it
    return clone


class CheckpointedAdapt(CloneAdapt):
    """The default engine's inner loop (same steps, same update rule, same meta-gradient) with each
    step's activations recomputed in the meta-backward instead of kept: ``algo.checkpoint_steps=true``."""

    def adapt(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        loss_fn: LossFn,
        steps: int,
        adapted: Collection[str],
        rule: UpdateRule,
        first_order: bool,
        on_step: StepHook | None = None,
    ) -> nn.Module:
        """As :meth:`CloneAdapt.adapt`; in training mode ``on_step`` receives and the call returns a
        :func:`recomputed_clone` at the current parameters."""
        if not model.training:  # evaluation: first order, query under no_grad, nothing to recompute
            return super().adapt(
                model, x, y, loss_fn=loss_fn, steps=steps, adapted=adapted, rule=rule,
                first_order=first_order, on_step=on_step,
            )  # fmt: skip
        params = dict(model.named_parameters())
        names = [n for n in params if n in adapted]
        others = [n for n in params if n not in adapted]
        current = {n: params[n] for n in names}
        for step in range(steps):

            def support_loss(values: Sequence[Tensor], step: int = step) -> Tensor:
                """The support loss at step ``step`` with the adapted parameters, then the others, at ``values``."""
                return loss_fn(functional_call(model, dict(zip(names + others, values)), (x,), {"step": step}), y)

            values = [*current.values(), *(params[n] for n in others)]
            if not names:  # nothing to adapt: the support pass still runs (it updates BN statistics)
                support_loss(values)
            elif first_order:  # the gradient is a constant of the meta-backward: nothing to recompute
                grads = torch.autograd.grad(support_loss(values), list(current.values()), allow_unused=True)
            else:
                grads = InnerGradient.apply(support_loss, len(names), model, *values)
            if names:
                current = {n: p if g is None else p + rule(n, p, g, step) for (n, p), g in zip(current.items(), grads)}
            if on_step is not None:
                on_step(recomputed_clone(model, current), step)
        return recomputed_clone(model, current)
