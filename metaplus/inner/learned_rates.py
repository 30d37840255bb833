"""Learned inner learning rates: a ParameterDict of rates that is also an inner-loop update rule.

One component for every algorithm whose inner step is ``param - rate * grad`` with learned rates:
- per tensor and per step (MAML++'s LSLR): each adapted tensor has a vector of ``steps`` rates, and
  step k uses rate k (evaluation with more steps reuses the last one);
- per element (Meta-SGD): each adapted tensor has a rate tensor of its own shape (the rate also
  learns a direction: it may turn negative).
The rates are ordinary parameters of the learner that registers the dict, so the outer optimizer
trains them and checkpoints carry them under ``<attribute>.<key>``, the key being the parameter's
name made a valid ParameterDict key by :func:`parameter_key`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from metaplus.inner.clone_adapt import UpdateRule


def parameter_key(name: str, separator: str = "__") -> str:
    """A parameter or module name as a ParameterDict key (module keys may not contain dots):
    ``blocks.0.conv.weight`` -> ``blocks__0__conv__weight`` (with ``separator="-"``:
    ``blocks-0-conv-weight``, the keys MAML++'s LSLR checkpoints have always used)."""
    return name.replace(".", separator)


class LearnedRates(nn.ParameterDict):
    """Learned rates keyed by :func:`parameter_key`; ``key_of`` maps each parameter name to its key.

    Build it with :meth:`per_step_rates` or :meth:`per_element_rates`. As every ParameterDict built
    from a plain dict, the entries are sorted by key (the outer optimizer's parameter order, hence
    its checkpointed state, depends on it)."""

    def __init__(self, rates: Mapping[str, Tensor], separator: str = "__", per_step: bool = False):
        super().__init__({parameter_key(name, separator): nn.Parameter(rate) for name, rate in rates.items()})
        self.key_of = {name: parameter_key(name, separator) for name in rates}
        self.per_step = per_step

    @classmethod
    def per_step_rates(cls, names: Iterable[str], steps: int, init: float, separator: str = "__") -> LearnedRates:
        """One rate per tensor and per inner step (at least one step), all starting at ``init``."""
        return cls({name: torch.full((max(steps, 1),), float(init)) for name in names}, separator, per_step=True)

    @classmethod
    def per_element_rates(cls, params: Mapping[str, Tensor], init: float, separator: str = "__") -> LearnedRates:
        """One rate per element of each tensor in ``params`` (name -> tensor), all starting at ``init``."""
        return cls({name: torch.full_like(param.detach(), init) for name, param in params.items()}, separator)

    def rate(self, name: str, step: int) -> Tensor:
        """The rate(s) applied to parameter ``name``'s gradient at inner step ``step``."""
        rates = self[self.key_of[name]]
        if self.per_step:
            return rates[min(step, rates.shape[0] - 1)]  # more test steps than trained ones reuse the last rate
        return rates

    def rule(self) -> UpdateRule:
        """The update rule for the inner-loop engines: ``-rate * grad``."""
        return lambda name, param, grad, step: -self.rate(name, step) * grad

    def table(self) -> dict[str, Tensor]:
        """Parameter name -> its rates, detached, on the CPU (for logging)."""
        return {name: self[key].detach().cpu() for name, key in self.key_of.items()}
