"""The one training loop, for every method.

Per optimizer step: draw a multi-stream batch (``train.accumulate`` times), let the method compute its named
losses under optional bf16 autocast, stop on a NaN/inf loss, let the weighting turn the losses into
gradients, clip, step the optimizer and the schedule. Around it: logging, evaluation per domain and task,
best-checkpoint selection, early stopping, atomic checkpoints, exact resume, and a graceful stop on
SIGINT/SIGTERM (the current step finishes and is checkpointed).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

from crosstask.config import TrainConfig
from crosstask.data.streams import MultiStream
from crosstask.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from crosstask.engine.logging import MetricsLog, Progress, log
from crosstask.engine.method import Method
from crosstask.engine.run_dir import RunDir
from crosstask.errors import CrosstaskError, RunError, TrainingDiverged
from crosstask.evaluation.evaluator import Evaluator
from crosstask.models.model import MultiTaskModel
from crosstask.registry import METRICS
from crosstask.validators.base import Validation
from crosstask.weighting.base import BalanceContext, Weighting


class Trainer:
    """Runs a method's steps on a model until ``train.steps``, early stopping, divergence or a stop signal."""

    def __init__(
        self,
        *,
        model: MultiTaskModel,
        method: Method,
        weighting: Weighting,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        streams: MultiStream,
        evaluator: Evaluator | None,
        config: TrainConfig,
        run_dir: RunDir,
        device: torch.device,
        progress: Progress | None = None,
        name: str = "run",
        validation: Validation | None = None,
    ):
        self.model = model
        self.method = method
        self.weighting = weighting
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.streams = streams
        self.evaluator = evaluator
        self.validation = validation
        self.config = config
        self.run_dir = run_dir
        self.device = device
        self.progress = progress or Progress()
        self.name = name
        self.metrics_log = MetricsLog(run_dir.metrics)
        self.loss_names = list(method.loss_names)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.shared_params = [p for p in model.shared_parameters() if p.requires_grad]
        excluded = {id(p) for p in self.shared_params} | {id(p) for p in weighting.params.parameters()}
        self.other_params = [p for p in self.params if id(p) not in excluded]
        self.select = config.select_metric
        self.stopping = config.early_stopping
        self.checkpoint_every = config.checkpoint_every or min(config.eval_every or config.steps, 1000)
        # state that a checkpoint carries
        self.step = 0
        self.best: dict[str, Any] | None = None  # the evaluation that picked best.pt
        self.stop_best: float | None = None  # early stopping: best value of its metric so far
        self.bad_evals = 0
        self.picked: dict[str, dict[str, Any]] = {}  # per validator: the evaluation it picks so far
        self.elapsed = 0.0
        self._loss_sum = torch.zeros(len(self.loss_names), device=device)
        self._weight_sum: dict[str, float | torch.Tensor] = dict.fromkeys(self.loss_names, 0.0)
        self._extra_sum: dict[str, float | torch.Tensor] = {}  # a method's own logs (StepOutput.logs)
        self._logged_steps = 0
        self._stop_requested = False
        self._started = time.perf_counter()

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end (or resume from ``checkpoints/last.pt``) and return the run summary."""
        if resume and self.run_dir.last.exists():
            self._load(self.run_dir.last)
            finished = self._finished_summary()
            if finished is not None:
                log.info(
                    "%s already finished (%s at step %d); nothing to do",
                    self.run_dir,
                    finished["status"],
                    self.step,
                )
                return finished
            log.info("resuming %s from step %d", self.run_dir, self.step)
        elif resume:
            log.warning(
                "nothing to resume in %s (no checkpoints/last.pt yet): starting from step 0", self.run_dir
            )
        self.metrics_log.truncate_after(self.step)
        self._started = time.perf_counter()
        status, final, evaluated_at, saved_at = "completed", {}, None, None
        self.progress.start(self.config.steps, self.step, self.name)
        try:
            with self._stop_on_signals():
                if self.step == 0:  # a fresh run: what the method computes from data before training
                    self.method.prepare(lambda: next(self.streams))
                self.model.train()
                while self.step < self.config.steps:
                    self._train_step()
                    self.step += 1
                    if self.step % self.config.log_every == 0:
                        self._log_train()
                    if self.config.eval_every and self.step % self.config.eval_every == 0:
                        final, evaluated_at = self._evaluate(), self.step
                        if self._should_stop_early():
                            status = "stopped_early"
                    if self._stop_requested and status == "completed":
                        status = "interrupted"
                    if status != "completed" or self.step % self.checkpoint_every == 0:
                        self._save_last()
                        saved_at = self.step
                    if status != "completed":
                        break
            if status != "interrupted" and evaluated_at != self.step:
                final = self._evaluate()
            if saved_at != self.step:
                self._save_last()
        except TrainingDiverged as exc:
            self._write_summary("diverged", {}, error=str(exc))
            raise
        except CrosstaskError as exc:
            self._write_summary("failed", {}, error=str(exc))
            raise
        finally:
            self.progress.close()
        return self._write_summary(status, final)

    def _train_step(self) -> None:
        accumulate = self.config.accumulate
        self.method.step, self.method.total_steps = self.step, self.config.steps
        self.optimizer.zero_grad(set_to_none=True)
        for micro_step in range(accumulate):
            batch = next(self.streams)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
                output = self.method.training_step(batch)
            losses = output.losses
            if losses.keys() != set(self.loss_names):
                raise RunError(
                    f"method '{self.method.name}' returned losses {sorted(losses)} but declared {self.loss_names}"
                )
            values = torch.stack([losses[n].detach().float() for n in self.loss_names])
            if not bool(torch.isfinite(values).all()):
                bad = {
                    n: float(v)
                    for n, v in zip(self.loss_names, values.tolist(), strict=True)
                    if not math.isfinite(v)
                }
                what = f"loss {', '.join(f'{k}={v}' for k, v in bad.items())}"
                raise TrainingDiverged(self._diverged_message(self.step + 1, what))
            if accumulate > 1:
                losses = {n: loss / accumulate for n, loss in losses.items()}
            context = BalanceContext(
                self.step, self.shared_params, output.shared, micro_step, accumulate, self.other_params
            )
            if self.method.updates_parameters:
                weights = self.weighting.backward(losses, context)
            else:
                weights = dict.fromkeys(self.loss_names, 0.0)
            self._loss_sum += values / accumulate
            for n in self.loss_names:  # a weighting may return tensors: keep them on device until logged
                w = weights[n]
                self._weight_sum[n] = (
                    self._weight_sum[n] + (w.detach() if isinstance(w, torch.Tensor) else w) / accumulate
                )
            for k, v in output.logs.items():
                value = v.detach().float() if isinstance(v, torch.Tensor) else v
                self._extra_sum[k] = self._extra_sum.get(k, 0.0) + value / accumulate
        if self.method.updates_parameters:
            self._update()
        self._logged_steps += 1

    def _update(self) -> None:
        """The step's update from the accumulated gradients: regularization, clipping, optimizer, scheduler."""
        penalty = self.model.regularization()  # e.g. soft sharing: outside the balancing, once per step
        if penalty is not None:
            if not bool(torch.isfinite(penalty)):
                raise TrainingDiverged(
                    self._diverged_message(self.step + 1, f"regularization {float(penalty)}")
                )
            penalty.backward()
        if self.config.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
            if not bool(torch.isfinite(norm)):
                raise TrainingDiverged(self._diverged_message(self.step + 1, f"gradient norm {float(norm)}"))
        if self.method.reset_optimizer_state:  # e.g. IRM / V-REx: the penalty's full weight starts now
            self.optimizer.state.clear()
        self.optimizer.step()
        self.scheduler.step()

    def _diverged_message(self, step: int, what: str) -> str:
        kept = (
            f"the last good checkpoint ({self.run_dir.last}) is kept"
            if self.run_dir.last.exists()
            else "no checkpoint was written yet"
        )
        return (
            f"training diverged at step {step}: {what}. Stopped; {kept}. Lower optim.lr, set "
            "train.grad_clip, or check the data for NaN/inf values."
        )

    # ------------------------------------------------------------------ logging, evaluation, early stopping

    def _log_train(self) -> None:
        n = max(1, self._logged_steps)
        losses = {f"loss/{k}": v / n for k, v in zip(self.loss_names, self._loss_sum.tolist(), strict=True)}
        weights = {f"weight/{k}": float(v) / n for k, v in self._weight_sum.items()}
        extras = {f"log/{k}": float(v) / n for k, v in self._extra_sum.items()}
        lrs = {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        self.metrics_log.write({"step": self.step, "phase": "train", **losses, **weights, **extras, **lrs})
        self.progress.update(self.step, {k.removeprefix("loss/"): v for k, v in losses.items()})
        self._loss_sum.zero_()
        self._weight_sum = dict.fromkeys(self.loss_names, 0.0)
        self._extra_sum = {}
        self._logged_steps = 0

    def _evaluate(self) -> dict[str, float]:
        if self.evaluator is None and self.validation is None:
            return {}
        metrics = self.evaluator.evaluate(self.model) if self.evaluator is not None else {}
        if self.validation is not None:
            scores = self.validation.scores(self.model)
            metrics.update({f"validator/{name}": value for name, value in scores.items()})
            self._pick(scores, metrics)
        self.metrics_log.write({"step": self.step, "phase": "eval", **metrics})
        self.progress.evaluated(self.step, metrics)
        if self.select is not None and _improves(
            metrics[self.select], self.best and self.best["value"], self.select
        ):
            self.best = {
                "metric": self.select,
                "value": metrics[self.select],
                "step": self.step,
                "metrics": metrics,
            }
            save_checkpoint(
                self.run_dir.best,
                {
                    "model": self.model.state_dict(),
                    "model_spec": self.model.spec(),
                    "step": self.step,
                    "metrics": metrics,
                },
            )
        if self.stopping is not None:
            value = metrics[self.stopping.metric]
            if _improves(value, self.stop_best, self.stopping.metric, self.stopping.min_delta):
                self.stop_best, self.bad_evals = value, 0
            else:
                self.bad_evals += 1
        return metrics

    def _pick(self, scores: dict[str, float], metrics: dict[str, float]) -> None:
        """Keep, per validator, the best-scoring evaluation so far and its checkpoint."""
        for validator in self.validation.validators:
            value, previous = scores[validator.name], self.picked.get(validator.name)
            better = previous is None or (
                value > previous["score"] if validator.higher_is_better else value < previous["score"]
            )
            if math.isfinite(value) and better:
                self.picked[validator.name] = {
                    "score": value,
                    "higher_is_better": validator.higher_is_better,
                    "step": self.step,
                    "metrics": {k: v for k, v in metrics.items() if not k.startswith("validator/")},
                }
                save_checkpoint(
                    self.run_dir.path / "checkpoints" / f"best_{validator.name}.pt",
                    {
                        "model": self.model.state_dict(),
                        "model_spec": self.model.spec(),
                        "step": self.step,
                        "metrics": metrics,
                    },
                )

    def _should_stop_early(self) -> bool:
        if self.stopping is not None and self.bad_evals >= self.stopping.patience:
            log.info(
                "early stopping at step %d: %s has not improved for %d evaluations",
                self.step,
                self.stopping.metric,
                self.bad_evals,
            )
            return True
        return False

    # ------------------------------------------------------------------ checkpoints and summary

    def _save_last(self) -> None:
        for p in self.model.parameters():
            if not bool(torch.isfinite(p).all()):
                raise TrainingDiverged(self._diverged_message(self.step, "a model parameter became NaN/inf"))
        save_checkpoint(
            self.run_dir.last,
            {
                "format": 1,
                "step": self.step,
                "model": self.model.state_dict(),
                "model_spec": self.model.spec(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "weighting": self.weighting.state_dict(),
                "method": self.method.state_dict(),
                "streams": self.streams.state_dict(),
                "rng": capture_rng(),
                "trainer": {
                    "best": self.best,
                    "stop_best": self.stop_best,
                    "bad_evals": self.bad_evals,
                    "picked": self.picked,
                    "elapsed": self.elapsed_total,
                    "loss_sum": self._loss_sum.cpu(),
                    "weight_sum": {k: float(v) for k, v in self._weight_sum.items()},
                    "extra_sum": {k: float(v) for k, v in self._extra_sum.items()},
                    "logged_steps": self._logged_steps,
                },
            },
        )

    def _load(self, path: Any) -> None:
        state = load_checkpoint(path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.weighting.load_state_dict(state["weighting"])
            self.method.load_state_dict(state["method"])
            self.streams.load_state_dict(state["streams"])
            trainer = state["trainer"]
            self.step = int(state["step"])
            self.best, self.stop_best, self.bad_evals = (
                trainer["best"],
                trainer["stop_best"],
                trainer["bad_evals"],
            )
            self.picked = dict(trainer.get("picked", {}))
            self.elapsed = trainer["elapsed"]
            self._loss_sum = trainer["loss_sum"].to(self.device)
            self._weight_sum, self._logged_steps = dict(trainer["weight_sum"]), trainer["logged_steps"]
            self._extra_sum = dict(trainer.get("extra_sum", {}))
            restore_rng(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise RunError(
                f"{path} does not match this run's model or setup ({type(exc).__name__}: {exc}); "
                "start a new run instead of --resume"
            ) from None

    def _finished_summary(self) -> dict[str, Any] | None:
        """The summary of a run that already ended (stopped early, or completed all of ``train.steps``)."""
        if not self.run_dir.summary.exists():
            return None
        summary = self.run_dir.read_summary()
        done = summary.get("status") == "stopped_early" or (
            summary.get("status") == "completed" and self.step >= self.config.steps
        )
        return summary if done and summary.get("step") == self.step else None

    def _write_summary(
        self, status: str, final: dict[str, float], error: str | None = None
    ) -> dict[str, Any]:
        summary = {
            "name": self.name,
            "status": status,
            "step": self.step,
            "steps": self.config.steps,
            "final": final,
            "best": self.best,
            "elapsed_s": round(self.elapsed_total, 3),
            "method": self.method.name,
            "weighting": self.weighting.config.name,
            "device": str(self.device),
            "run_dir": str(self.run_dir),
        }
        if self.picked:
            summary["validators"] = self.picked
        if error:
            summary["error"] = error
        self.run_dir.write_json(self.run_dir.summary, summary)
        return summary

    @contextmanager
    def _stop_on_signals(self) -> Any:
        """Turn the first SIGINT/SIGTERM into a stop after the current step (with a checkpoint)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Callable | int | None] = {}

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_requested:  # a second signal: stop now
                signal.signal(signum, previous.get(signum) or signal.SIG_DFL)
                raise KeyboardInterrupt
            self._stop_requested = True
            log.warning(
                "stop requested: finishing step %d and writing a checkpoint (signal again to abort)",
                self.step + 1,
            )

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @property
    def elapsed_total(self) -> float:
        """Seconds of training over this run's life, resumes included."""
        return self.elapsed + time.perf_counter() - self._started


def _improves(value: float, best: float | None, metric_key: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in the metric's direction."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    higher_is_better = METRICS.get(metric_key.rsplit("/", 1)[-1]).obj.higher_is_better
    return (value - best if higher_is_better else best - value) > min_delta
