"""Shallow, feature-level domain adaptation with the scikit-learn API, registered in ``crosstask.registry.SHALLOW``.

Every adapter is a scikit-learn classifier with ``fit(Xs, ys, Xt)`` (labeled source, unlabeled target),
``transform(X, domain="target"|"source")`` and ``predict(X)`` (target samples, through a final estimator:
1-NN by default, or the ``estimator`` you give)::

    from sklearn.linear_model import LogisticRegression
    from crosstask.shallow import build_adapter
    adapter = build_adapter({"name": "jda", "n_components": 100}, estimator=LogisticRegression(max_iter=1000))
    adapter.fit(Xs, ys, Xt).predict(Xt)

Adapters: ``coral``, ``tca``, ``jda``, ``subspace_alignment`` (feature maps), ``kmm``, ``kliep`` (source
sample weights, ``sample_weight_``) and ``no_adaptation``; ``crosstask list shallow`` lists them.

Why our own code and not skada (0.6.0, evaluated for this package): skada has no JDA; it adds POT and
pandas (about 260 MB installed) for what is here a few hundred lines of linear algebra; its API packs both
domains into one X with ``sample_domain`` and target labels masked as -1, so it would need a wrapper of
about the same size anyway; its 1-NN pipelines ignore KMM/KLIEP weights silently; and its TCA calls the
symmetric solver ``eigh`` on (I + μKLK)⁻¹KHK, which is not symmetric in general. Our TCA and JDA reproduce
the published Office-Caltech rows to the second decimal (benchmarks/suites/office_caltech.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crosstask.errors import ConfigError
from crosstask.registry import SHALLOW


def build_adapter(config: Mapping[str, Any] | str, estimator: Any = None) -> Any:
    """An unfitted adapter from ``{"name": ..., **hyperparameters}`` (or a bare name), checked by its config."""
    from pydantic import ValidationError

    config = {"name": config} if isinstance(config, str) else dict(config)
    if "name" not in config:
        raise ConfigError(f"a shallow adapter config needs a name; choices: {', '.join(SHALLOW.names())}")
    entry = SHALLOW.get(config["name"])
    try:
        validated = entry.config.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"shallow adapter '{config['name']}': {problems}") from None
    params = validated.model_dump(exclude={"name"})
    return entry.obj(**params, estimator=estimator)


__all__ = ["build_adapter"]
