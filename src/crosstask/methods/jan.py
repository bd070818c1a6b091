"""JAN: joint adaptation network (Long, Zhu, Wang & Jordan 2017, "Deep Transfer Learning with Joint
Adaptation Networks", ICML).

The objective ``L_source + λ · D_L(P, Q)`` with ``D_L`` the joint maximum mean discrepancy (JMMD) of the
activations of several layers ``L``, here the shared features ``f`` and the softmax outputs ``g``:

    D_L = E k(s, s′) + E k(t, t′) − 2 E k(s, t),     k(z, z′) = k_f(f, f′) · k_g(g, g′)

the kernel of the joint being the product of the layers' kernels. ``k_f``: Gaussian kernels with ``σ² = 2^k ×
the mean squared pairwise distance``, ``k = −3, ..., 1``, summed (TLlib's setting); ``k_g``: one Gaussian of
fixed ``σ = 0.92`` (``2σ² ≈ 1.68``, TLlib and the authors' code). Gradients flow through both layers, so the
classifier takes part in the alignment.

Estimator: ``linear`` by default, the paper's linear-time unbiased estimate; ``unbiased`` (quadratic
U-statistic, what TLlib's default computes) and ``biased`` are the alternatives
(:mod:`crosstask.modules.kernels`). The adversarial variant JAN-A is not implemented. Losses: ``source`` and
``transfer``; ``λ`` (paper and TLlib: 1) is ``weighting: {name: static, weights: {transfer: λ}}``.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from crosstask.methods.adaptation import Adaptation, Views
from crosstask.methods.dan import DANConfig
from crosstask.modules.kernels import GaussianKernels, joint_mmd
from crosstask.registry import METHODS


class JANConfig(DANConfig):
    """DAN's keys (its kernels act on the features here) and the kernel on the softmax outputs."""

    output_sigma: float = Field(
        default=0.92, gt=0.0, description="bandwidth σ of the one Gaussian kernel on the softmax outputs"
    )


@METHODS.register("jan", config=JANConfig)
class JAN(Adaptation):
    """Joint MMD of the features and the softmax outputs (Long et al. 2017)."""

    config: JANConfig

    def __init__(self, config: JANConfig, model, streams):
        super().__init__(config, model, streams)
        self.kernels = [GaussianKernels(tuple(config.bandwidths)), GaussianKernels(sigma=config.output_sigma)]

    def transfer(self, views: Views) -> dict[str, Tensor]:
        source, target = views.source, views.target
        distance = joint_mmd(
            [source.features, source.probabilities],
            [target.features, target.probabilities],
            self.kernels,
            self.config.estimator,
        )
        return {"transfer": self.config.trade_off * distance}
