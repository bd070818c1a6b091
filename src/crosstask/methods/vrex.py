"""V-REx: variance risk extrapolation (Krueger, Caballero, Jacobsen, Zhang, Binas, Zhang, Le Priol &
Courville 2021, "Out-of-Distribution Generalization via Risk Extrapolation (REx)", ICML).

Penalizing the variance of the training domains' risks makes the model equally good on all of them, which
extrapolates to domains further out (the paper's equation 5)::

    R_V-REx(θ) = β · Var({R_1(θ), ..., R_m(θ)}) + Σ_e R_e(θ)

Objective ``risk`` (the mean of the domain risks, as in DomainBed; the paper's sum is ``m`` times it) and
penalty ``penalty`` (β times the population variance of the domain risks; β = ``penalty_weight``, added
as it is under every weighting).

Anneal: as IRM (the paper follows IRM's schedule), the penalty is multiplied by ``anneal_scale`` before
``anneal_steps`` and counts fully after (effective weight ``β · anneal_scale``, then ``β``). Defaults are
DomainBed's: β = 10, ``anneal_steps: 500``, ``anneal_scale: 0.1`` (weight 1
before the switch). At the switch the optimizer's state is cleared (``reset_optimizer``), as in DomainBed.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from crosstask.methods.generalization import (
    DomainView,
    Generalization,
    GeneralizationConfig,
    PenaltyAnnealConfig,
)
from crosstask.registry import METHODS


class VRExConfig(GeneralizationConfig, PenaltyAnnealConfig):
    penalty_weight: float = Field(default=10.0, ge=0.0, description="β: the weight of the variance penalty")
    anneal_scale: float = Field(
        default=0.1,
        ge=0.0,
        description="multiplier on the penalty before anneal_steps; 1/β gives the papers' weight 1 before",
    )


def risk_variance(risks: Tensor) -> Tensor:
    """The population variance of the domain risks, ``mean((R_e - mean R)²)``."""
    return (risks - risks.mean()).pow(2).mean()


@METHODS.register("vrex", config=VRExConfig)
class VREx(Generalization):
    """V-REx: mean domain risk plus β times the variance of the domain risks (Krueger et al. 2021)."""

    config: VRExConfig
    objective_losses = ("risk",)
    penalty_losses = ("penalty",)

    def objective(self, views: list[DomainView]) -> dict[str, Tensor]:
        risks = self.risks(views)
        return {"risk": risks.mean(), "penalty": risk_variance(risks) * self.config.penalty_factor(self.step)}
