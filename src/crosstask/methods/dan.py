"""DAN: deep adaptation network (Long, Cao, Wang & Jordan 2015, "Learning Transferable Features with Deep
Adaptation Networks", ICML).

The objective ``L_source + λ · d²_k(D_s, D_t)`` with ``d²_k`` the multi-kernel maximum mean discrepancy
(MK-MMD) between the source and target distributions of the shared features:

    d²_k(p, q) = ‖E_p φ(f_s) − E_q φ(f_t)‖²_H,     k = Σ_u β_u k_u (Gaussian kernels k_u)

Estimator: ``linear`` by default, the linear-time unbiased estimate over quad-tuples that the paper trains
with (TLlib's default is a linear-time variant too); ``unbiased`` (quadratic U-statistic) and ``biased`` (V-statistic, ≥ 0) are the
alternatives (see :mod:`crosstask.modules.kernels`). Kernels: Gaussian with ``σ² = 2^k × the mean squared
pairwise distance of the batch``, ``k = −3, ..., 1`` (TLlib's setting, used for its digits benchmark), summed
with equal weights β (the paper learns β by a quadratic program, over a wider family of bandwidths). The
paper adapts several layers; here the shared representation (the bottleneck, as in TLlib).

Losses: ``source`` and ``transfer`` (the MK-MMD); ``λ`` (paper and TLlib: 1) is ``weighting: {name: static,
weights: {transfer: λ}}``. Any task kind works.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import Tensor

from crosstask.methods.adaptation import Adaptation, AdaptationConfig, Views
from crosstask.modules.kernels import TLLIB_MULTIPLIERS, Estimator, GaussianKernels, mmd
from crosstask.registry import METHODS

Multipliers = list[Annotated[float, Field(gt=0.0)]]


class DANConfig(AdaptationConfig):
    estimator: Estimator = Field(
        default="linear",
        description="MMD estimate: linear (the paper's linear-time one), unbiased (quadratic) or biased",
    )
    bandwidths: Multipliers = Field(
        default_factory=lambda: list(TLLIB_MULTIPLIERS),
        min_length=1,
        description="Gaussian kernel variances as multiples of the batch's mean squared pairwise distance",
    )


@METHODS.register("dan", config=DANConfig)
class DAN(Adaptation):
    """Multi-kernel MMD between source and target features (Long et al. 2015)."""

    config: DANConfig
    classification_only = False

    def __init__(self, config: DANConfig, model, streams):
        super().__init__(config, model, streams)
        self.kernels = GaussianKernels(tuple(config.bandwidths))

    def transfer(self, views: Views) -> dict[str, Tensor]:
        distance = mmd(views.source.features, views.target.features, self.kernels, self.config.estimator)
        return {"transfer": self.config.trade_off * distance}
