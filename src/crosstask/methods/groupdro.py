"""Group DRO (Sagawa, Koh, Hashimoto & Liang 2020, "Distributionally Robust Neural Networks for Group Shifts:
On the Importance of Regularization for Worst-Case Generalization", ICLR).

Minimizes the worst-case risk over groups (here: the source domains) with the online algorithm of the
paper's Algorithm 1: group weights ``q`` on the simplex, updated by exponentiated gradient ascent with step
size ``η``, then a descent step on the ``q``-weighted risk::

    q_g ← q_g · exp(η · R_g(θ));   q ← q / Σ_g q_g;   loss = Σ_g q_g · R_g(θ)

One loss, ``risk`` (the ``q``-weighted risk). ``q`` starts uniform, is updated on every training step (every
micro-batch with gradient accumulation) with the step's domain risks, and is method state: a buffer
checkpointed with the method, so a resume continues with the same weights. Default ``eta: 0.01`` (DomainBed's;
the paper tunes η_q on its benchmarks).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from crosstask.methods.generalization import DomainView, Generalization, GeneralizationConfig
from crosstask.registry import METHODS


class GroupDROConfig(GeneralizationConfig):
    eta: float = Field(
        default=0.01, gt=0.0, description="step size of the exponentiated-gradient update of q"
    )


class GroupWeights(nn.Module):
    """The group weights ``q`` (a buffer: saved with the method, moved with it, never trained)."""

    def __init__(self, groups: int):
        super().__init__()
        self.register_buffer("q", torch.full((groups,), 1.0 / groups))

    @torch.no_grad()
    def update(self, risks: Tensor, eta: float) -> Tensor:
        """One exponentiated-gradient step ``q ← q · exp(η R) / Σ``; returns the new ``q``."""
        q = self.q * torch.exp(eta * risks.detach().float())
        self.q.copy_(q / q.sum())
        return self.q


@METHODS.register("groupdro", config=GroupDROConfig)
class GroupDRO(Generalization):
    """Group DRO: worst-case risk over domains with online exponentiated-gradient weights (Sagawa et al. 2020)."""

    config: GroupDROConfig

    def __init__(self, config: GroupDROConfig, model, streams):
        super().__init__(config, model, streams)
        self.modules["group_weights"] = GroupWeights(len(self.domains))

    @property
    def q(self) -> Tensor:
        return self.modules["group_weights"].q

    def objective(self, views: list[DomainView]) -> dict[str, Tensor]:
        risks = self.risks(views)
        q = self.modules["group_weights"].update(risks, self.config.eta)
        return {"risk": (q * risks).sum()}
