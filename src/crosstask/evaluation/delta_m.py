"""Δm%: the multi-task performance relative to single-task baselines (Maninis, Radosavovic & Kokkinos 2019,
"Attentive Single-Tasking of Multiple Tasks", CVPR).

    Δm = 100 · (1/T) Σ_i (−1)^{l_i} (M_m,i − M_b,i) / M_b,i

over all T metrics, with l_i = 1 when a higher value of metric i is better: the mean signed relative change,
**lower is better** (negative: the multi-task model beats its single-task baselines on average).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from crosstask.errors import RunError
from crosstask.registry import METRICS


def delta_m(metrics: Mapping[str, float], baselines: Mapping[str, float]) -> float:
    """Δm% of ``metrics`` against ``baselines`` over the keys ``<domain>/<task>/<metric>`` both hold."""
    terms = []
    for key, baseline in baselines.items():
        if key not in metrics:
            continue
        higher_is_better = METRICS.get(key.rsplit("/", 1)[-1]).obj.higher_is_better
        if not (math.isfinite(baseline) and math.isfinite(metrics[key])) or baseline == 0:
            continue
        change = (metrics[key] - baseline) / abs(baseline)
        terms.append(-change if higher_is_better else change)
    if not terms:
        raise RunError("Δm%: the multi-task run and its baselines share no finite, non-zero metric")
    return 100.0 * sum(terms) / len(terms)
