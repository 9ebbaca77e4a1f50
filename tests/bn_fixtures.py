"""Batch norms with non-trivial inference statistics for tests (fresh ones are identities)."""
from __future__ import annotations

import torch


def randomize_batch_norms(model: torch.nn.Module) -> None:
    """Every batch norm of ``model`` gets random scales (about half negative), shifts and running statistics,
    drawn from torch's global generator in a fixed order (weight, bias, mean, var)."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.weight.copy_(torch.randn_like(mod.weight))
                mod.bias.copy_(torch.randn_like(mod.bias))
                mod.running_mean.copy_(torch.randn_like(mod.running_mean))
                mod.running_var.copy_(torch.rand_like(mod.running_var) + 0.5)
