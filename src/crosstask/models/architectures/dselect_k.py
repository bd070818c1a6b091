"""DSelect-k: a differentiable gate that selects at most ``k`` of the shared experts per task.

Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong & Chi (2021), "DSelect-k: Differentiable
Selection in the Mixture of Experts with Applications to Multi-Task Learning", NeurIPS.

With ``E`` experts and ``m = ⌈log₂ E⌉``, task ``t`` has ``k`` selectors, each a vector ``z ∈ ℝ^m`` of
logits. A selector is a soft binary code of one expert: with the smooth-step

    S(z) = 0 for z ≤ −γ/2,   −2z³/γ³ + 3z/(2γ) + 1/2 for |z| < γ/2,   1 for z ≥ γ/2,

code ``c`` gets weight ``r_c(z) = Π_l S(z_l)^{bit_l(c)} (1 − S(z_l))^{1 − bit_l(c)}`` (the weights sum to one
and become one-hot once every ``S(z_l)`` reaches 0 or 1). The task's expert weights are
``q = Σ_i softmax(α)_i r(z_i)``. With ``per_example`` the logits ``z`` and ``α`` are linear maps of the
flattened input (the per-example gate), otherwise learned constants of the task (the static gate). When
``E`` is not a power of two, codes ``E .. 2^m − 1`` wrap around to experts ``code − E`` (our choice: it keeps
the weights a distribution without renormalising). The optional entropy penalty (``entropy``) on each
selector's ``r`` pushes it towards a single expert; it is added to every step's objective through
:meth:`DSelectK.regularization`, for a per-example gate on the last training batch seen.

Experts are shared parameters, selectors belong to their task; the shared representation is the stacked
expert outputs ``(n, E, d)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor, nn

from crosstask.data.tasks import Task
from crosstask.models.architectures._blocks import ExpertMixture, gate_input, upcast
from crosstask.models.trunk import Trunk
from crosstask.registry import ARCHITECTURES, ComponentConfig


class DSelectKConfig(ComponentConfig):
    """Keys of DSelect-k."""

    experts: int = Field(
        default=4, ge=2, description="number of experts (copies of the trunk) shared by all tasks"
    )
    k: int = Field(default=2, ge=1, description="selectors per task: at most k experts get a nonzero weight")
    gamma: float = Field(
        default=1.0, gt=0.0, description="γ, the width of the smooth-step's transition region"
    )
    per_example: bool = Field(
        default=True,
        description="compute the selectors from each input (a linear map of the flattened input); false: one "
        "learned selection per task",
    )
    entropy: float = Field(
        default=0.0,
        ge=0.0,
        description="weight of the entropy penalty that pushes each selector towards a single expert (0: off)",
    )

    @field_validator("k")
    @classmethod
    def _k_at_most_experts(cls, k: int, info: ValidationInfo) -> int:
        experts = info.data.get("experts")
        if experts is not None and k > experts:
            raise ValueError(f"k ({k}) must be at most experts ({experts})")
        return k


def smooth_step(z: Tensor, gamma: float) -> Tensor:
    """The cubic smooth-step: 0 below −γ/2, 1 above γ/2, continuously differentiable."""
    t = z.clamp(-gamma / 2, gamma / 2)  # flat (zero gradient) outside the transition region
    return -2 / gamma**3 * t**3 + 3 / (2 * gamma) * t + 0.5


class Selection(nn.Module):
    """One task's DSelect-k gate: ``k`` selectors over ``2^m`` binary codes, folded onto ``experts`` experts."""

    def __init__(self, experts: int, k: int, gamma: float, per_example: bool):
        super().__init__()
        self.k, self.gamma, self.per_example = k, gamma, per_example
        self.bits = max(1, math.ceil(math.log2(experts)))
        codes = torch.arange(2**self.bits)
        # (2^m, m): bit l of every code; (2^m, E): which expert a code selects
        self.register_buffer(
            "code_bits", ((codes[:, None] >> torch.arange(self.bits)) & 1).float(), persistent=False
        )
        self.register_buffer(
            "fold", nn.functional.one_hot(codes % experts, experts).float(), persistent=False
        )
        if per_example:
            self.selectors = nn.LazyLinear(k * self.bits)
            self.mixing = nn.LazyLinear(k)
        else:
            # logits inside the transition region, different per selector (identical selectors stay identical)
            self.z = nn.Parameter(torch.empty(k, self.bits).uniform_(-gamma / 2, gamma / 2))
            self.alpha = nn.Parameter(torch.zeros(k))

    def selector_weights(self, x: Tensor | None) -> Tensor:
        """Every selector's weights over the experts: ``(n, k, E)`` per example, ``(k, E)`` static."""
        if self.per_example:
            if x is None:
                raise ValueError("a per-example DSelect-k gate computes its selectors from an input")
            z = upcast(self.selectors(x.flatten(1))).view(-1, self.k, self.bits)
        else:
            z = self.z
        s = smooth_step(z, self.gamma).unsqueeze(-2)  # (..., k, 1, m)
        per_bit = self.code_bits * s + (1 - self.code_bits) * (1 - s)  # (..., k, 2^m, m)
        # summed, not a matmul: autocast would round the weights to half precision
        return (per_bit.prod(-1).unsqueeze(-1) * self.fold).sum(-2)  # (..., k, E)

    def forward(self, x: Tensor) -> Tensor:
        """The expert weights ``(n, E)`` for input ``x``."""
        r = self.selector_weights(x if self.per_example else None)
        alpha = upcast(self.mixing(x.flatten(1))) if self.per_example else self.alpha.expand(x.shape[0], -1)
        r = r if self.per_example else r.expand(x.shape[0], -1, -1)
        return (torch.softmax(alpha, dim=-1).unsqueeze(-1) * r).sum(-2)

    def entropy(self, x: Tensor | None) -> Tensor:
        """Σ over selectors of the entropy of its expert weights (mean over the batch per example)."""
        r = self.selector_weights(x)
        h = -(r * r.clamp_min(1e-12).log()).sum(-1)  # the clamp keeps the gradient finite at r = 0
        return h.sum(-1).mean() if self.per_example else h.sum()


@ARCHITECTURES.register("dselect_k", config=DSelectKConfig)
class DSelectK(ExpertMixture):
    """Shared experts; each task's DSelect-k gate picks at most k of them through smooth binary codes."""

    config: DSelectKConfig
    legacy_gating = "selection"

    def __init__(self, config: DSelectKConfig, make_trunk: Callable[[], Trunk], tasks: list[Task]):
        super().__init__(config, make_trunk, tasks, config.experts)
        self.gating.extend(
            Selection(config.experts, config.k, config.gamma, config.per_example) for _ in self.task_names
        )
        self._last_input: Tensor | None = None

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        if self.training and self.config.entropy > 0 and self.config.per_example:
            # the penalty is taken after the step's backward pass has freed this graph: keep what the gates read
            self._last_input = gate_input(x, self.experts).detach()
        return super().forward(x)

    def regularization(self) -> Tensor | None:
        """``entropy ·`` the summed entropy of every task's selectors; ``None`` when off."""
        if self.config.entropy == 0:
            return None
        if self.config.per_example and self._last_input is None:
            return None
        x = self._last_input
        total = sum(selection.entropy(x) for selection in self.gating)
        return self.config.entropy * total  # type: ignore[return-value]
