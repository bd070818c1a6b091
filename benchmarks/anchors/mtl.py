"""LibMTL 1.1.5 and torchjd 0.18 as anchors of the ``mtl_speed`` suite: one training step of theirs, on the
encoder, heads and batch that crosstask's step uses.

Both libraries are installed for the benchmark only, never as a crosstask dependency:
``pip install --target runs/benchmarks/anchor-packages --no-deps`` with the pinned versions below (the two
libraries plus the solvers their methods import: cvxpy and ECOS for torchjd's NashMTL and CAGrad, quadprog
and qpsolvers for its UPGrad projector). :func:`activate` puts that folder first on ``sys.path`` of this
process only. Nothing of theirs is copied here: the steps only call them, driven as ``shared/ANCHORS.md``
records:

- torchjd: ``mtl_backward(losses, features=z)`` then ``jac_to_grad(encoder.parameters(), aggregator)`` for
  its aggregators; a plain ``backward`` of the scalarized loss for its scalarizers (FAMO then ``update``s
  its logits on the losses recomputed after the step, as its documentation shows).
- LibMTL: only ``LibMTL.weighting`` and ``LibMTL.architecture`` are used, the model is built as its Trainer
  builds it (``class MTLmodel(HPS, Weighting)``) and stepped as its Trainer steps it. Two workarounds, in
  this process only: ``torchvision.models.utils`` (removed in torchvision 0.13, imported by LibMTL's
  package ``__init__``) is stubbed, and ``zero_grad_share_params`` zeroes with ``set_to_none=False`` (the
  one-line fix without which PCGrad, MGDA and GradNorm crash in ``_reset_grad`` on current torch).
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ROOT / "runs" / "benchmarks" / "anchor-packages"
LIBRARIES = ("LibMTL==1.1.5", "torchjd==0.18.0")
# what their methods import and crosstask's environment lacks; numpy and scipy come from that environment
SOLVERS = (
    "cvxpy==1.9.3",
    "sparsediffpy==0.6.1",
    "ecos==2.0.14",
    "quadprog==0.1.14",
    "qpsolvers==4.13.0",
    "clarabel==0.11.1",
    "highspy==1.16.0",
    "osqp==1.1.3",
    "qdldl==0.1.9.post1",
    "scs==3.3.1",
    "cffi==2.1.1",
    "pycparser==3.12",
    "cloudpickle==3.1.3",
)

Step = Callable[[], None]
LossFn = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------- installing and importing


def install() -> str | None:
    """Install the pinned packages into :data:`PACKAGES` unless there; ``None``, or why it failed."""
    wanted = [*LIBRARIES, *SOLVERS]
    missing = [r for r in wanted if not list(PACKAGES.glob(r.replace("==", "-", 1) + ".dist-info"))]
    if not missing:
        return None
    log.info("installing the anchors for the benchmark only: %s", " ".join(missing))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(PACKAGES)]
    try:
        subprocess.run([*command, *missing], check=True, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        return f"pip install --target {PACKAGES} failed: {detail.strip().splitlines()[-1:]}"
    return None


def activate() -> None:
    """Put :data:`PACKAGES` first on ``sys.path`` (once) and stub what LibMTL imports from old torchvision."""
    if str(PACKAGES) not in sys.path:
        sys.path.insert(0, str(PACKAGES))
    try:
        importlib.import_module("torchvision.models.utils")
    except ImportError:
        stub = types.ModuleType("torchvision.models.utils")
        stub.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
        sys.modules["torchvision.models.utils"] = stub


def versions() -> dict[str, str | None]:
    """The installed versions of the two libraries (``None`` where absent)."""
    found: dict[str, str | None] = {}
    for requirement in LIBRARIES:
        name = requirement.split("==")[0]
        infos = sorted(PACKAGES.glob(f"{name}-*.dist-info"))
        found[name] = infos[0].name.removeprefix(f"{name}-").removesuffix(".dist-info") if infos else None
    return found


# ----------------------------------------------------------------------------- which methods they share


@dataclass(frozen=True)
class Anchor:
    """One anchor method: the library, the crosstask weighting it corresponds to and how it is driven.

    ``variant`` matches crosstask's ``on`` for gradient methods (LibMTL's ``rep_grad=True`` works on the
    shared representation; torchjd's Jacobian is on the shared parameters), ``None`` for loss weightings.
    ``compare``: whether it is the same method as crosstask's (not torchjd's Jacobian-path mean, which is
    timed as context only: crosstask's ``equal`` is one backward pass of the summed loss).
    """

    library: str
    weighting: str
    variant: str | None
    build: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    compare: bool = True

    @property
    def label(self) -> str:
        suffix = f"[{self.variant}]" if self.variant else ""
        return f"{self.library}:{self.weighting}{suffix}"


LIBMTL: tuple[Anchor, ...] = (
    Anchor("libmtl", "equal", None, "EW"),
    Anchor("libmtl", "uncertainty", None, "UW"),
    Anchor("libmtl", "dwa", None, "DWA", {"T": 2.0}),
    Anchor("libmtl", "rlw", None, "RLW", {"dist": "Normal"}),
    Anchor("libmtl", "gls", None, "GLS"),
    Anchor("libmtl", "gradnorm", "parameters", "GradNorm", {"alpha": 1.5}),
    Anchor("libmtl", "gradnorm", "representation", "GradNorm", {"alpha": 1.5}),
    Anchor("libmtl", "pcgrad", "parameters", "PCGrad"),
    Anchor("libmtl", "gradvac", "parameters", "GradVac", {"beta": 0.5}),
    Anchor("libmtl", "graddrop", "representation", "GradDrop", {"leak": 0.0}),
    Anchor("libmtl", "mgda", "parameters", "MGDA", {"mgda_gn": "none"}),
    Anchor("libmtl", "mgda", "representation", "MGDA", {"mgda_gn": "none"}),
    Anchor("libmtl", "cagrad", "parameters", "CAGrad", {"calpha": 0.5, "rescale": 1}),
    Anchor("libmtl", "imtl", "parameters", "IMTL"),
    Anchor("libmtl", "imtl", "representation", "IMTL"),
)

# torchjd: aggregators act on the Jacobian of the shared parameters; scalarizers combine the loss values
TORCHJD: tuple[Anchor, ...] = (
    Anchor("torchjd", "equal", None, "scalarization.Sum"),
    Anchor("torchjd", "equal", "parameters", "aggregation.Mean", compare=False),
    Anchor("torchjd", "uncertainty", None, "scalarization.UW"),
    Anchor("torchjd", "dwa", None, "scalarization.DWA", {"temperature": 2.0}),
    Anchor("torchjd", "rlw", None, "scalarization.Random"),
    Anchor("torchjd", "gls", None, "scalarization.GeometricMean"),
    Anchor("torchjd", "famo", None, "scalarization.FAMO"),
    Anchor("torchjd", "stch", None, "scalarization.STCH", {"mu": 1.0}),
    Anchor("torchjd", "upgrad", "parameters", "aggregation.UPGrad"),
    Anchor("torchjd", "pcgrad", "parameters", "aggregation.PCGrad"),
    Anchor("torchjd", "mgda", "parameters", "aggregation.MGDA"),
    Anchor("torchjd", "cagrad", "parameters", "aggregation.CAGrad", {"c": 0.4}),
    Anchor("torchjd", "nash_mtl", "parameters", "aggregation.NashMTL"),
    Anchor("torchjd", "imtl", "parameters", "aggregation.IMTLG"),
    Anchor("torchjd", "aligned_mtl", "parameters", "aggregation.AlignedMTL"),
    Anchor("torchjd", "fairgrad", "parameters", "aggregation.FairGrad", {"alpha": 1.0}),
    Anchor("torchjd", "gradvac", "parameters", "aggregation.GradVac"),
    Anchor("torchjd", "graddrop", "parameters", "aggregation.GradDrop"),
)

NEEDS_TASK_COUNT = {
    "scalarization.UW": "shape",
    "scalarization.FAMO": "shape",
    "aggregation.NashMTL": "n_tasks",
}


# ----------------------------------------------------------------------------- one training step of theirs


@dataclass
class Problem:
    """What every step trains: an encoder, one head per task, one batch, and the loss of a head."""

    encoder: nn.Module
    heads: dict[str, nn.Module]
    x: Tensor
    targets: Sequence[Tensor]
    loss: LossFn
    lr: float
    momentum: float


def libmtl_step(anchor: Anchor, problem: Problem) -> Step:
    """A step of LibMTL's Trainer: forward, its ``_compute_loss``, ``zero_grad``, ``model.backward``, step."""
    activate()
    weighting_module = importlib.import_module("LibMTL.weighting")
    architecture_module = importlib.import_module("LibMTL.architecture")
    weighting_class = getattr(weighting_module, anchor.build)
    names = list(problem.heads)
    count = len(names)
    encoder = problem.encoder

    class MTLmodel(architecture_module.HPS, weighting_class):  # as LibMTL's Trainer._prepare_model
        def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device, kwargs):
            super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
            self.init_param()

        def zero_grad_share_params(self) -> None:
            self.encoder.zero_grad(set_to_none=False)  # the one-line fix (benchmark only)

    model = MTLmodel(
        names,
        lambda: encoder,
        nn.ModuleDict(problem.heads),
        anchor.variant == "representation",
        False,
        torch.device("cpu"),
        {},
    )
    model.epoch = 2  # past the first epochs, where DWA and GradNorm fall back to equal weights
    model.train_loss_buffer = np.ones((count, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=problem.lr, momentum=problem.momentum)
    model.train()

    def step() -> None:
        preds = model(problem.x)
        losses = torch.zeros(count)
        for i, name in enumerate(names):
            losses[i] = problem.loss(preds[name], problem.targets[i])
        optimizer.zero_grad()
        model.backward(losses, **anchor.kwargs)
        optimizer.step()

    return step


def _torchjd_object(anchor: Anchor, count: int) -> Any:
    module_name, class_name = anchor.build.split(".")
    module = importlib.import_module(f"torchjd.{module_name}")
    kwargs = dict(anchor.kwargs)
    if anchor.build in NEEDS_TASK_COUNT:
        kwargs[NEEDS_TASK_COUNT[anchor.build]] = count
    return getattr(module, class_name)(**kwargs)


def torchjd_step(anchor: Anchor, problem: Problem) -> Step:
    """A torchjd step: an aggregator on the Jacobian of the shared parameters, or a scalarizer."""
    activate()
    autojac = importlib.import_module("torchjd.autojac")
    heads = list(problem.heads.values())
    method = _torchjd_object(anchor, len(heads))
    # UW's log-variances are trained with the model; FAMO's logits by FAMO itself (kept out of the optimizer)
    extra = list(method.parameters()) if anchor.build == "scalarization.UW" else []
    params = [*problem.encoder.parameters(), *(p for h in heads for p in h.parameters()), *extra]
    optimizer = torch.optim.SGD(params, lr=problem.lr, momentum=problem.momentum)
    shared = list(problem.encoder.parameters())
    problem.encoder.train()
    for head in heads:
        head.train()

    def losses() -> list[Tensor]:
        z = problem.encoder(problem.x)
        return [problem.loss(head(z), y) for head, y in zip(heads, problem.targets, strict=True)]

    if anchor.variant == "parameters":  # Jacobian descent

        def step() -> None:
            z = problem.encoder(problem.x)
            values = [problem.loss(head(z), y) for head, y in zip(heads, problem.targets, strict=True)]
            optimizer.zero_grad()
            autojac.mtl_backward(values, features=z)
            autojac.jac_to_grad(shared, method)
            optimizer.step()

        return step

    calls = [0]

    def scalarized_step() -> None:
        loss = method(torch.stack(losses()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if hasattr(method, "update"):  # FAMO: the losses recomputed on the same batch after the step
            with torch.no_grad():
                method.update(torch.stack(losses()))
        calls[0] += 1
        if hasattr(method, "step") and calls[0] % 10 == 0:  # DWA: an "epoch" of 10 steps
            method.step()

    return scalarized_step
