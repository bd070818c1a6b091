"""Deep embedded validation (You, Wang, Chen, Wang & Long 2019, "Towards Accurate Model Selection in Deep
Unsupervised Domain Adaptation", ICML).

An importance-weighted source validation risk with a control variate. A logistic-regression domain
classifier on the shared features (source validation vs target) estimates the density ratio
``w(x) = p_t(x)/p_s(x) = (n_s/n_t)·d(x)/(1 − d(x))``; with the per-sample validation losses ``ℓ`` and
``L = w·ℓ``:

    η = −Cov(L, w) / Var(w),      DEV = mean(L) + η·mean(w) − η        (paper, eq. 8 and Algorithm 1)

an unbiased estimate of the target risk with lower variance than ``mean(L)``. Lower is better. The domain
classifier is fit on half of each domain's samples and the weights are taken on the other half.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from crosstask.registry import VALIDATORS, ComponentConfig
from crosstask.validators.base import ValidationData, Validator


class DEVConfig(ComponentConfig):
    C: float = Field(default=1.0, gt=0.0, description="inverse L2 strength of the domain classifier")


@VALIDATORS.register("dev", config=DEVConfig)
class DEV(Validator):
    """Importance-weighted source validation loss with a control variate (You et al. 2019); lower is better."""

    config: DEVConfig
    higher_is_better = False
    needs_source = True

    def score(self, data: ValidationData) -> float:
        source, target = data.source, data.target
        labels = source.labels
        known = labels >= 0
        losses = torch.nn.functional.cross_entropy(source.logits[known], labels[known], reduction="none")
        fs, ft = source.features[known].double().numpy(), target.features.double().numpy()
        rng = np.random.default_rng(0)
        fit_s = rng.permutation(len(fs)) < len(fs) // 2  # fit on one half, weigh the other
        fit_t = rng.permutation(len(ft)) < len(ft) // 2
        x = np.concatenate([fs[fit_s], ft[fit_t]])
        y = np.concatenate([np.zeros(fit_s.sum()), np.ones(fit_t.sum())])
        scaler = StandardScaler().fit(x)
        classifier = LogisticRegression(C=self.config.C, max_iter=1000).fit(scaler.transform(x), y)
        d = classifier.predict_proba(scaler.transform(fs[~fit_s]))[:, 1].clip(1e-6, 1 - 1e-6)
        w = (fit_s.sum() / max(1, fit_t.sum())) * d / (1 - d)
        weighted = w * losses[torch.from_numpy(~fit_s)].double().numpy()
        variance = w.var(ddof=1)
        eta = -np.cov(weighted, w, ddof=1)[0, 1] / variance if variance > 0 else 0.0
        return float(weighted.mean() + eta * w.mean() - eta)
