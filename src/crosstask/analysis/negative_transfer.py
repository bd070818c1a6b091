"""Negative transfer: does sharing (multi-task) or transfer (adaptation) make a task worse?

Per evaluation metric ``<domain>/<task>/<metric>``: the gain of the runs under test over reference runs
(a multi-task run's single-task baselines, ``--baselines``; or the runs of another method: target-only,
source-only), over seeds, oriented so that a positive gain is better. Welch's t-test (unequal variances)
gives the 95 % confidence interval of the gain (Welch–Satterthwaite degrees of freedom) and the p-value;
the verdict is *positive transfer* when the interval lies above 0, *negative transfer* when it lies below
0, *no evidence* otherwise (equivalently p < 0.05 on the two-sided test). With fewer than 2 runs on a side
a significance test is refused (a verdict needs ≥ 3 seeds to mean much; the report says how many it had).
A run given twice is refused: copies of one run are not independent seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crosstask.engine.run_dir import RunDir
from crosstask.errors import RunError
from crosstask.registry import METRICS

POSITIVE, NEGATIVE, NO_EVIDENCE = "positive transfer", "negative transfer", "no evidence"
NOT_COMPARABLE = "not comparable"  # a NaN or infinite value on a side


@dataclass
class Verdict:
    """The comparison of one metric: values per run, the mean gain (positive: better than the reference),
    its confidence interval, the two-sided p-value and the verdict."""

    key: str
    treated: list[float]
    reference: list[float]
    gain: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str

    @property
    def task(self) -> str:
        return self.key.split("/")[1]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def welch_test(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float, float]:
    """Mean difference ``mean(a) − mean(b)``, its confidence interval and the two-sided p-value of Welch's
    t-test. Both samples constant: p = 0 if the means differ, 1 if not (an exact, noiseless difference)."""
    from scipy import stats

    n1, n2 = len(a), len(b)
    if n1 < 2 or n2 < 2:
        raise RunError(f"a significance test needs at least 2 runs on each side, got {n1} and {n2}")
    m1, m2 = sum(a) / n1, sum(b) / n2
    v1 = sum((x - m1) ** 2 for x in a) / (n1 - 1)
    v2 = sum((x - m2) ** 2 for x in b) / (n2 - 1)
    diff = m1 - m2
    se2 = v1 / n1 + v2 / n2
    if se2 == 0:
        p = 0.0 if diff != 0 else 1.0
        return diff, diff, diff, p
    df = se2**2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
    se = math.sqrt(se2)
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    p = 2 * stats.t.sf(abs(diff) / se, df)
    return diff, diff - half, diff + half, float(p)


def verdicts(
    treated: Sequence[Mapping[str, float]],
    reference: Sequence[Mapping[str, float]],
    *,
    alpha: float = 0.05,
) -> list[Verdict]:
    """One verdict per metric key present in every run on both sides (metrics as ``<domain>/<task>/<metric>``
    mappings, one per seed)."""
    if not treated or not reference:
        raise RunError(
            "negative transfer: no runs to compare (give the runs under test and their references)"
        )
    if not 0 < alpha < 1:
        raise RunError(
            f"the significance level must lie between 0 and 1 (0.05 for 95 % intervals), got {alpha}"
        )
    keys = sorted(set.intersection(*(set(m) for m in (*treated, *reference))))
    keys = [k for k in keys if k.count("/") == 2 and k.rsplit("/", 1)[-1] in METRICS]
    if not keys:
        raise RunError("negative transfer: the runs share no evaluation metric (<domain>/<task>/<metric>)")
    out = []
    for key in keys:
        sign = 1.0 if METRICS.get(key.rsplit("/", 1)[-1]).obj.higher_is_better else -1.0
        a = [float(m[key]) for m in treated]
        b = [float(m[key]) for m in reference]
        if not all(math.isfinite(v) for v in (*a, *b)):
            nan = float("nan")
            out.append(Verdict(key, a, b, nan, nan, nan, nan, NOT_COMPARABLE))
            continue
        diff, low, high, p = welch_test(a, b, 1 - alpha)
        gain, low, high = sign * diff, *sorted((sign * low, sign * high))
        verdict = POSITIVE if low > 0 else NEGATIVE if high < 0 else NO_EVIDENCE
        out.append(Verdict(key, a, b, gain, low, high, p, verdict))
    return out


def baseline_metrics(run_dir: str | Path) -> tuple[dict[str, float], dict[str, float]]:
    """A run made with ``--baselines``: its final metrics and its single-task baselines' final metrics."""
    summary = RunDir(run_dir).read_summary(finished=True)
    if "baselines" not in summary:
        raise RunError(
            f"{run_dir} has no single-task baselines; run it with `crosstask run CONFIG --baselines` (or compare "
            "it against other runs with --against)"
        )
    return dict(summary.get("final") or {}), dict(summary["baselines"])


def final_metrics(run_dir: str | Path) -> dict[str, float]:
    return dict(RunDir(run_dir).read_summary(finished=True).get("final") or {})


def distinct(run_dirs: Sequence[str | Path]) -> list[Path]:
    """The run directories, refusing one given twice (copies of a run are not independent seeds)."""
    seen: dict[Path, str | Path] = {}
    for d in run_dirs:
        resolved = Path(d).resolve()
        if resolved in seen:
            raise RunError(f"{d} is given twice (as {seen[resolved]}): each run must be a separate seed")
        seen[resolved] = d
    return [Path(d) for d in run_dirs]


def multitask_verdicts(run_dirs: Sequence[str | Path], alpha: float = 0.05) -> list[Verdict]:
    """Each task of multi-task runs (one per seed, made with ``--baselines``) against its single-task
    baselines."""
    pairs = [baseline_metrics(d) for d in distinct(run_dirs)]
    return verdicts([p[0] for p in pairs], [p[1] for p in pairs], alpha=alpha)


def transfer_verdicts(
    run_dirs: Sequence[str | Path], against: Sequence[str | Path], alpha: float = 0.05
) -> list[Verdict]:
    """Runs of one method (an adaptation, say) against runs of a reference (target-only where target labels
    exist, source-only where they do not), per evaluation domain, task and metric."""
    runs = distinct([*run_dirs, *against])
    treated, reference = runs[: len(run_dirs)], runs[len(run_dirs) :]
    return verdicts([final_metrics(d) for d in treated], [final_metrics(d) for d in reference], alpha=alpha)
