"""MixStyle (Zhou, Yang, Qiao & Xiang 2021, "Domain Generalization with MixStyle", ICLR).

The channel-wise mean and standard deviation of a convolutional feature map carry an image's style. MixStyle
mixes them between two samples of a training batch (the paper's equation 5)::

    MixStyle(x) = γ_mix ⊙ (x − μ(x)) / σ(x) + β_mix,
    γ_mix = λ σ(x) + (1 − λ) σ(x̃),   β_mix = λ μ(x) + (1 − λ) μ(x̃),   λ ~ Beta(α, α)

with ``x̃`` a partner sample: a random one (``mix: random``), or one of another domain (``mix:
crossdomain``; the paper's version splits a two-domain batch in halves, this one picks each sample's partner
uniformly among the samples of the other domains, which is the same for two domains and extends to more).
A layer is active with probability ``p`` per forward pass, only in training; in eval mode it is the
identity. Defaults ``p = 0.5``, ``α = 0.1``, as the paper. As in the authors' code the statistics are
detached (no gradient flows through μ and σ).

Statistics are over the spatial dimensions of ``(n, c, ...)`` maps. Feature vectors ``(n, d)`` have none;
``vectors=True`` then takes one mean and standard deviation per sample over its ``d`` features (a variant
that is not in the paper, for MLP backbones).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from crosstask.errors import ConfigError


class MixStyle(nn.Module):
    """Mixes instance-level feature statistics between samples of a batch (Zhou et al. 2021)."""

    def __init__(
        self,
        p: float = 0.5,
        alpha: float = 0.1,
        mix: Literal["random", "crossdomain"] = "random",
        eps: float = 1e-6,
        vectors: bool = False,
    ):
        super().__init__()
        self.p, self.alpha, self.mix, self.eps, self.vectors = p, alpha, mix, eps, vectors

    def forward(self, x: Tensor, domains: Tensor | None = None) -> Tensor:
        """``x`` with its statistics mixed (with probability ``p``, in training); ``domains`` holds each
        sample's domain index for ``crossdomain`` mixing."""
        if not self.training or self.p == 0 or torch.rand(()).item() >= self.p:
            return x
        dims = self.statistic_dims(x)
        mu = x.mean(dims, keepdim=True).detach()
        sigma = (x.var(dims, keepdim=True) + self.eps).sqrt().detach()
        normalized = (x - mu) / sigma
        partner = self.partners(len(x), domains, x.device)
        shape = (len(x),) + (1,) * (x.ndim - 1)
        beta = torch.distributions.Beta(
            torch.tensor(self.alpha, device=x.device), torch.tensor(self.alpha, device=x.device)
        )
        lam = beta.sample(shape).to(x.dtype)
        mu_mix = lam * mu + (1 - lam) * mu[partner]
        sigma_mix = lam * sigma + (1 - lam) * sigma[partner]
        return normalized * sigma_mix + mu_mix

    def statistic_dims(self, x: Tensor) -> tuple[int, ...]:
        if x.ndim >= 3:
            return tuple(range(2, x.ndim))
        if x.ndim == 2 and self.vectors:
            return (1,)
        raise ConfigError(
            f"mixstyle mixes the statistics of feature maps (n, channels, height, width); this layer's output "
            f"has shape {tuple(x.shape)}. Hook it at a convolutional stage (method.layers), or set "
            "method.vectors: true for the per-sample variant over feature vectors"
        )

    def partners(self, n: int, domains: Tensor | None, device: torch.device) -> Tensor:
        """Each sample's partner: a random permutation, or a random sample of another domain."""
        if self.mix == "random" or domains is None or len(domains) != n:  # one pass per domain: no pairs
            return torch.randperm(n, device=device)
        domains = domains.to(device)
        other = (domains[:, None] != domains[None, :]).float()
        if not bool(other.sum(1).all()):  # one domain only in this batch: fall back to random partners
            return torch.randperm(n, device=device)
        return torch.multinomial(other, 1).squeeze(1)


class MixStyleHooks:
    """Applies a :class:`MixStyle` to the outputs of chosen modules through forward hooks.

    The hooks exist between :meth:`attach` and :meth:`remove` (the method attaches them when training
    starts and removes them when it ends, so a trained, copied or exported model carries none), and act only
    between :meth:`activate` and :meth:`deactivate` (the method's training step) while the hooked module is
    in training mode, so evaluation and any other use of the model are untouched.
    """

    def __init__(self, mixstyle: MixStyle, modules: dict[str, nn.Module]):
        self.mixstyle = mixstyle
        self.modules = modules
        self.domains: Tensor | None = None
        self.enabled = False
        self.handles: list = []

    def attach(self) -> None:
        if not self.handles:
            self.handles = [m.register_forward_hook(self._hook) for m in self.modules.values()]

    def _hook(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        if not (self.enabled and module.training and isinstance(output, Tensor)):
            return None
        return self.mixstyle(output, self.domains)

    def activate(self, domains: Tensor | None) -> None:
        self.enabled, self.domains = True, domains

    def deactivate(self) -> None:
        self.enabled, self.domains = False, None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
