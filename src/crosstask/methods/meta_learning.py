"""The meta-learning base: a training step is a meta-batch of few-shot episodes, one objective per episode.

A meta-learner draws ``episodes.tasks`` episodes per step from its one episodic training stream and returns
each episode's query loss, divided by the meta-batch size, as an objective named ``episode0``,
``episode1``, ...: under the default weighting their sum is the mean query loss of the papers, and any
other weighting balances the episodes of a meta-batch (PCGrad or MGDA on the episodes' meta-gradients).

Inner loops are functional: adapted weights are tensors computed from the model's parameters
(``torch.func.functional_call``), never module copies, so nothing but parameters and buffers carries state
from one step to the next and the meta-gradient is ordinary autograd through the inner loop (second order
unless a method says otherwise). Heads: MAML, FOMAML, Meta-SGD and ANIL adapt the task's head, which must
have ``ways`` outputs (``tasks: [{name: ..., num_classes: <ways>}]``); ProtoNet uses no head.

A meta-batch goes through :meth:`MetaLearner.meta_batch_losses` (the query loss of every episode): here a
loop over :meth:`MetaLearner.episode_loss`; MAML and its subclasses take each episode's meta-gradient as
soon as its loss is known (one episode's graph in memory at a time) or batch the episodes with
``torch.func.vmap`` (``vectorize``), and hand the loss back through :func:`with_gradients`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.func import functional_call

from crosstask.data.episodes import EpisodeConfig, Episodes
from crosstask.data.inputs import Inputs
from crosstask.data.streams import Batch
from crosstask.engine.method import Method, StepOutput, StreamSpec
from crosstask.errors import ConfigError
from crosstask.evaluation.losses import task_loss
from crosstask.models.model import MultiTaskModel
from crosstask.registry import ComponentConfig

Params = dict[str, Tensor]


class InnerLoopConfig(ComponentConfig):
    """Keys of the meta-learners that adapt by gradient steps on the support set."""

    inner_steps: int = Field(default=1, ge=1, description="gradient steps on the support set in training")
    inner_lr: float = Field(default=0.4, gt=0, description="step size of the inner loop")
    test_steps: int | None = Field(
        default=None, ge=0, description="inner steps at test time (default: inner_steps)"
    )
    test_lr: float | None = Field(
        default=None, gt=0, description="inner step size at test time (default: inner_lr)"
    )
    first_order: bool = Field(
        default=False, description="treat the inner loop's gradients as constants (no second derivatives)"
    )
    vectorize: bool | Literal["auto"] = Field(
        default="auto",
        description="maml, fomaml, metasgd: batch the episodes of a meta-batch with torch.func.vmap (true), "
        "or loop over them (false); auto: the loop on CPU (faster there), vmap on other devices",
    )


class MetaLearner(Method):
    """Base of the meta-learners: the episodic stream, per-episode objectives, functional forward passes."""

    reads_episodes = True
    uses_head = True  # whether the task's head is adapted per episode (ProtoNet: no)
    supports_regression = True  # regression episodes (sinusoids) as well as classification

    def __init__(self, config: ComponentConfig, model: MultiTaskModel, streams: list[StreamSpec]):
        super().__init__(config, model, streams)
        if getattr(config, "vectorize", "auto") is True:
            obstacle = self.vectorize_obstacle()
            if obstacle is not None:
                raise ConfigError(
                    f"method '{self.name}' cannot batch the episodes of a meta-batch (vectorize: true): "
                    f"{obstacle}; set method.vectorize: false or auto"
                )
        episodic = [s for s in streams if s.episodes is not None]
        if not episodic:
            raise ConfigError(
                f"method '{self.name}' learns from few-shot episodes: give data.train.{streams[0].name} an episodes: "
                "key (ways, shots, queries, tasks)"
            )
        if len(episodic) != 1 or len(model.tasks) != 1:
            raise ConfigError(
                f"method '{self.name}' learns from one episodic training stream and one task; the run has "
                f"{len(episodic)} episodic stream(s) ({', '.join(s.name for s in streams)}) and "
                f"{len(model.tasks)} task(s): give one data.train stream an episodes: key and one task"
            )
        self.stream = episodic[0]
        self.train_streams = [self.stream]
        self.task = model.tasks[0]
        self.episode_config: EpisodeConfig = self.stream.episodes
        regression = self.task.kind == "regression" and self.task.num_outputs == 1
        if self.task.kind != "classification" and not (regression and self.supports_regression):
            raise ConfigError(
                f"method '{self.name}' learns from classification episodes"
                + (" or regression episodes of one target" if self.supports_regression else "")
                + f"; task '{self.task.name}' is {self.task.kind} with {self.task.num_outputs} output(s)"
            )
        if self.uses_head:
            self.check_ways(self.episode_config.ways, f"data.train.{self.stream.name}.episodes.ways")

    def check_ways(self, ways: int, where: str) -> None:
        if self.uses_head and self.task.kind == "classification" and self.task.num_classes != ways:
            raise ConfigError(
                f"method '{self.name}' adapts the head of task '{self.task.name}' to each episode, so the head needs "
                f"one output per way: {where} is {ways} but the task has num_classes {self.task.num_classes}; set "
                f"num_classes: {ways}"
            )

    @property
    def objective_names(self) -> list[str]:
        return [f"episode{i}" for i in range(self.episode_config.tasks)]

    # ---- what a subclass implements

    def episode_loss(
        self, support: Inputs, support_y: Tensor, query: Inputs, query_y: Tensor, ways: int
    ) -> tuple[Tensor, Tensor]:
        """The query loss after adapting to the support set, and the query logits (for the accuracy log)."""
        raise NotImplementedError

    def adapt_and_predict(self, support: Inputs, support_y: Tensor, query: Inputs, ways: int) -> Tensor:
        """Query logits after adapting to the support set at test time."""
        raise NotImplementedError

    def vectorize_obstacle(self) -> str | None:
        """Why this method cannot batch a meta-batch's episodes with ``vmap`` (``None``: it can)."""
        return "it computes its episodes one by one"

    # ---- shared machinery

    def meta_batch_losses(self, episodes: Episodes) -> tuple[Tensor, Tensor]:
        """The query loss of every episode (T,) and the query logits (T, queries, ways), with the losses
        differentiable to the meta-parameters. Here: :meth:`episode_loss` on each episode in turn."""
        losses, logits = [], []
        for i in range(len(episodes)):
            support, support_y, query, query_y = episodes.episode(i)
            loss, out = self.episode_loss(support, support_y, query, query_y, episodes.ways)
            losses.append(loss)
            logits.append(out)
        return torch.stack(losses), torch.stack(logits)

    def training_step(self, batch: dict[str, Batch | Episodes]) -> StepOutput:
        episodes = batch[self.stream.name]
        assert isinstance(episodes, Episodes)
        count = len(episodes)
        losses, outputs = self.meta_batch_losses(episodes)
        objectives = {f"episode{i}": losses[i] / count for i in range(count)}
        if self.task.kind == "regression":
            error = (outputs.detach().reshape(episodes.query_y.shape) - episodes.query_y).pow(2).mean()
            return StepOutput(objectives, logs={"query_mse": float(error)})
        correct = (outputs.detach().argmax(-1) == episodes.query_y).float().mean(-1).sum()
        return StepOutput(objectives, logs={"query_accuracy": 100.0 * float(correct) / count})

    def episode_predictor(self) -> Callable[[Episodes], Tensor]:
        def predict(episodes: Episodes) -> Tensor:
            if self.uses_head:
                self.check_ways(episodes.ways, "an evaluation domain's episodes.ways")
            logits = []
            for i in range(len(episodes)):
                support, support_y, query, _ = episodes.episode(i)
                logits.append(self.adapt_and_predict(support, support_y, query, episodes.ways).detach())
            return torch.stack(logits)

        return predict

    def parameters_of(self, names: Sequence[str] | None = None) -> Params:
        """The model's trainable parameters (all, or those named), as the starting point of an inner loop."""
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        return params if names is None else {n: params[n] for n in names}

    def logits(self, params: Params, x: Inputs) -> Tensor:
        """The task's output with ``params`` in place of the model's parameters of the same names."""
        return functional_call(self.model, params, (x,), strict=False)[self.task.name]

    def loss(self, output: Tensor, y: Tensor) -> Tensor:
        """The task's loss (cross-entropy for classes, squared error for a regression target) on one episode."""
        if self.task.kind == "regression":  # a head called directly (ANIL) keeps its output dimension
            output = output.reshape(y.shape)
        return task_loss(self.task, output, y, masked=False)

    def head_names(self) -> list[str]:
        prefix = f"heads.{self.task.name}."
        return [n for n, p in self.model.named_parameters() if n.startswith(prefix) and p.requires_grad]


def sgd_steps(
    loss_of: Callable[[Params], Tensor],
    params: Params,
    steps: int,
    lr: float | Params,
    *,
    create_graph: bool,
    functional: bool = False,
) -> Params:
    """``steps`` plain gradient steps on ``loss_of`` from ``params`` (step size per tensor when ``lr`` is a
    dict). With ``create_graph`` the result stays differentiable through the steps (second-order
    meta-gradients); without, each step's gradient is a constant (first order). ``functional``: the steps
    run inside a ``torch.func`` transform (vmap over episodes), so the gradients come from ``torch.func.grad``."""
    fast = dict(params)
    for _ in range(steps):
        names = list(fast)
        if functional:
            found = torch.func.grad(loss_of)(fast)
            grads = [found[n] if create_graph else found[n].detach() for n in names]
        else:
            grads = torch.autograd.grad(loss_of(fast), [fast[n] for n in names], create_graph=create_graph)
        fast = {
            n: fast[n] - (lr[n] if isinstance(lr, dict) else lr) * g
            for n, g in zip(names, grads, strict=True)
        }
    return fast


class _KnownGradients(torch.autograd.Function):
    """Losses whose gradients are already known: the backward pass is Σᵢ ḡᵢ ∇lossᵢ (ḡ the incoming
    gradient), a weighted sum of the stored gradients, for any weighting of the losses."""

    @staticmethod
    def forward(ctx: Any, values: Tensor, gradients: tuple[Tensor | None, ...], *inputs: Tensor) -> Tensor:
        ctx.gradients = gradients
        return values.detach().clone()

    @staticmethod
    def backward(ctx: Any, upstream: Tensor) -> tuple[Tensor | None, ...]:
        grads = [
            None if g is None else torch.tensordot(upstream.to(g.dtype), g, dims=1) for g in ctx.gradients
        ]
        return (None, None, *grads)


def with_gradients(values: Tensor, gradients: Sequence[Tensor | None], inputs: Sequence[Tensor]) -> Tensor:
    """``values`` (T,) as a tensor whose gradient to ``inputs[j]`` is ``gradients[j]`` (T, *inputs[j].shape),
    row i being value i's gradient: the autograd graph of the losses is gone, their gradients are kept.
    Every reader of the objectives' gradients (a weighting's Jacobian, ``backward``) gets the same numbers as
    through the graph; second derivatives through them are not available (none of crosstask's weightings
    takes them)."""
    return _KnownGradients.apply(values, tuple(gradients), *inputs)


def detached(params: Params) -> Params:
    """Leaf copies of ``params`` that require gradients (a test-time inner loop that leaves the model alone)."""
    return {n: p.detach().requires_grad_(True) for n, p in params.items()}
