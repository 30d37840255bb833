"""Weight initialisation schemes as a backbone option (``model.init``).

``default`` keeps PyTorch's own (Kaiming-uniform with a=sqrt(5) for conv and linear layers).
``xavier`` is the MAML++ reference code's: Xavier-uniform weights and zero biases for every
convolution and linear layer (batch-norm layers keep weight 1, bias 0 either way).
"""

from __future__ import annotations

from torch import nn

from metaplus.errors import check_choice

INIT_SCHEMES = ("default", "xavier")


def initialise(model: nn.Module, scheme: str = "default") -> None:
    check_choice("init", scheme, set(INIT_SCHEMES))
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
