"""MAML: model-agnostic meta-learning (Finn, Abbeel & Levine 2017, ICML).

Per episode, ``inner_steps`` gradient steps of size ``inner_lr`` on the support loss adapt every trainable
parameter, θ'ᵢ = θ − α ∇θ L_support(θ); the objective is the query loss at θ'ᵢ, differentiated through
the inner steps (second order; ``first_order: true`` is FOMAML). Omniglot in the paper: 5-way 1-shot, conv-4, 1 inner step of 0.4, meta-batch
32, Adam 0.001 outer, 3 steps at test time (Finn et al., appendix A.1).

A meta-batch takes one of two paths (``vectorize``); both give every episode's meta-gradient, kept with its
loss (:func:`~crosstask.methods.meta_learning.with_gradients`), so any weighting of the episodes sees the
same gradients as through the autograd graph:

- the loop (``vectorize: false``): episode after episode, the meta-gradient is taken as soon as the query
  loss is known and the episode's graph is freed, so one episode's graph is in memory at a time instead of
  the whole meta-batch's;
- vmap (``vectorize: true``): ``torch.func.vmap`` over the episodes of ``torch.func.grad_and_value`` of the
  whole episode (inner steps by ``torch.func.grad``, then the query loss), one batched kernel per layer for
  the meta-batch. Batch norm keeps each episode's own batch statistics. The meta-gradient is taken by
  ``torch.func`` itself, not by ordinary autograd around ``vmap``: with batch norm, autograd (or ``grad``)
  over ``vmap(grad(...))`` gives wrong second-order terms in torch 2.14 (tests/test_meta_vectorized.py).
  It holds the whole meta-batch's graph at once, and needs a model without in-place state (no running
  batch-norm statistics).

``auto`` (the default) takes the loop on CPU, where it measured faster than vmap (conv-4, 5-way 1-shot, 5
inner steps, meta-batch 16, one thread, busy cores: 6.1 s against 9.7 s per meta-step, and 130 MB against
3.6 GB of peak memory; benchmarks/results/meta_speed.md, commit 7cdbeae), and vmap on other devices, where one batched kernel per layer
replaces one per episode (not measured in this repository yet); the loop when the model keeps running
statistics, or after vmap failed once. Subclasses that change :meth:`MAML.episode_loss` (Reptile) compute their episodes with the
graph-keeping loop of :class:`~crosstask.methods.meta_learning.MetaLearner`.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from crosstask.data.episodes import Episodes
from crosstask.data.inputs import Inputs
from crosstask.errors import ConfigError
from crosstask.methods.meta_learning import (
    InnerLoopConfig,
    MetaLearner,
    Params,
    detached,
    sgd_steps,
    with_gradients,
)
from crosstask.registry import METHODS

log = logging.getLogger(__name__)


@METHODS.register("maml", config=InnerLoopConfig)
class MAML(MetaLearner):
    """MAML: every parameter adapted by gradient steps on the support set; second-order meta-gradient."""

    def inner_names(self) -> list[str] | None:
        """The parameters the inner loop adapts (``None``: every trainable one)."""
        return None

    def inner_lr(self) -> float | Params:
        return self.config.inner_lr

    def adapt(
        self,
        support: Inputs,
        support_y: Tensor,
        params: Params,
        steps: int,
        lr: float | Params,
        create_graph: bool,
        functional: bool = False,
    ) -> Params:
        inner = params if self.inner_names() is None else {n: params[n] for n in self.inner_names()}
        rest = {n: p for n, p in params.items() if n not in inner}

        def support_loss(fast: Params) -> Tensor:
            return self.loss(self.logits({**rest, **fast}, support), support_y)

        fast = sgd_steps(support_loss, inner, steps, lr, create_graph=create_graph, functional=functional)
        return {**rest, **fast}

    def episode_loss(
        self, support: Inputs, support_y: Tensor, query: Inputs, query_y: Tensor, ways: int
    ) -> tuple[Tensor, Tensor]:
        fast = self.adapt(
            support,
            support_y,
            self.parameters_of(),
            self.config.inner_steps,
            self.inner_lr(),
            not self.config.first_order,
        )
        logits = self.logits(fast, query)
        return self.loss(logits, query_y), logits

    def adapt_and_predict(self, support: Inputs, support_y: Tensor, query: Inputs, ways: int) -> Tensor:
        steps = self.config.inner_steps if self.config.test_steps is None else self.config.test_steps
        lr = self.inner_lr() if self.config.test_lr is None else self.config.test_lr
        if isinstance(lr, dict):
            lr = {n: v.detach() for n, v in lr.items()}
        with torch.enable_grad():
            fast = self.adapt(
                support, support_y, detached(self.parameters_of()), steps, lr, create_graph=False
            )
        with torch.no_grad():
            return self.logits(fast, query)

    # ---- the meta-batch

    def _own_episodes(self) -> bool:
        """Whether episodes are MAML's (a subclass may change what an episode computes: Reptile)."""
        return type(self).episode_loss is MAML.episode_loss

    def vectorize_obstacle(self) -> str | None:
        if not self._own_episodes() or type(self).adapt is not MAML.adapt:
            return "its episodes are not MAML's (it overrides episode_loss or adapt)"
        stateful = [
            n
            for n, m in self.model.named_modules()
            if getattr(m, "track_running_stats", False) and getattr(m, "running_mean", None) is not None
        ]
        if stateful:
            return (
                f"the model updates running statistics in its forward pass ({', '.join(stateful[:3])}"
                f"{', ...' if len(stateful) > 3 else ''}), which vmap cannot batch; use batch statistics only "
                "(conv4's norm: batch)"
            )
        return None

    def _vectorized(self, episodes: Episodes) -> bool:
        choice = self.config.vectorize
        if choice == "auto":
            if getattr(self, "_vmap_failed", False):
                return False
            return episodes.query_y.device.type != "cpu" and self.vectorize_obstacle() is None
        return bool(choice)

    def meta_batch_losses(self, episodes: Episodes) -> tuple[Tensor, Tensor]:
        """Every episode's query loss (T,) with its meta-gradient attached, and the query logits."""
        if not self._own_episodes():
            return super().meta_batch_losses(episodes)
        params = self.parameters_of()
        lr = self.inner_lr()
        rates = {n: r for n, r in lr.items() if r.requires_grad} if isinstance(lr, dict) else {}
        inputs = [*params.values(), *rates.values()]
        try:
            if self._vectorized(episodes):
                try:
                    values, gradients, logits = self._vmap_meta_batch(episodes, params, lr, rates)
                except RuntimeError as exc:
                    if self.config.vectorize is True:
                        raise ConfigError(
                            f"method '{self.name}' could not batch the episodes with vmap (vectorize: true): "
                            f"{str(exc).splitlines()[0]}; set method.vectorize: false"
                        ) from exc
                    log.warning(
                        "%s: vmap over the episodes failed (%s); computing them one by one from now on",
                        self.name,
                        str(exc).splitlines()[0],
                    )
                    self._vmap_failed = True
                    values, gradients, logits = self._loop_meta_batch(episodes, inputs)
            else:
                values, gradients, logits = self._loop_meta_batch(episodes, inputs)
        except NotImplementedError as exc:  # as the Trainer says it for a backward pass
            raise ConfigError(
                f"method '{self.name}' cannot back-propagate through this model: {str(exc).splitlines()[0]}. "
                "Its meta-gradient needs second derivatives: set method.first_order: true"
            ) from None
        return with_gradients(values, gradients, inputs), logits

    def _loop_meta_batch(
        self, episodes: Episodes, inputs: list[Tensor]
    ) -> tuple[Tensor, list[Tensor | None], Tensor]:
        """Episode by episode: the loss, then its gradient to ``inputs`` at once (the graph is freed), written
        into one (episodes, ...) tensor per input."""
        count = len(episodes)
        values, logits = [], []
        gradients: list[Tensor | None] = [None] * len(inputs)
        for i in range(count):
            support, support_y, query, query_y = episodes.episode(i)
            loss, out = self.episode_loss(support, support_y, query, query_y, episodes.ways)
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
            for j, g in enumerate(grads):
                if g is None:
                    continue
                if gradients[j] is None:  # zeros for the episodes before (an input unused until now)
                    gradients[j] = torch.zeros((count, *inputs[j].shape), dtype=g.dtype, device=g.device)
                gradients[j][i] = g
            values.append(loss.detach())
            logits.append(out.detach())
        return torch.stack(values), gradients, torch.stack(logits)

    def _vmap_meta_batch(
        self, episodes: Episodes, params: Params, lr: float | Params, rates: Params
    ) -> tuple[Tensor, list[Tensor | None], Tensor]:
        """All episodes at once: vmap over the episodes of grad_and_value of the whole episode."""
        steps, first_order = self.config.inner_steps, self.config.first_order
        fixed_lr = {n: v.detach() for n, v in lr.items() if n not in rates} if isinstance(lr, dict) else lr

        def episode(
            theta: Params, alpha: Params, support: Inputs, support_y: Tensor, query: Inputs, query_y: Tensor
        ) -> tuple[Tensor, Tensor]:
            step = {**fixed_lr, **alpha} if isinstance(fixed_lr, dict) else fixed_lr
            fast = self.adapt(support, support_y, theta, steps, step, not first_order, functional=True)
            logits = self.logits(fast, query)
            return self.loss(logits, query_y), logits.detach()

        theta = {n: p.detach() for n, p in params.items()}
        alpha = {n: r.detach() for n, r in rates.items()}
        batched = vmap(
            grad_and_value(episode, argnums=(0, 1), has_aux=True),
            in_dims=(None, None, 0, 0, 0, 0),
            randomness="different",
        )
        (g_theta, g_alpha), (values, logits) = batched(
            theta, alpha, episodes.support, episodes.support_y, episodes.query, episodes.query_y
        )
        return values, [*(g_theta[n] for n in theta), *(g_alpha[n] for n in alpha)], logits
