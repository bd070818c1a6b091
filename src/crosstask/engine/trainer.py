"""The one training loop, for every method.

Per optimizer step: draw a multi-stream batch (``train.accumulate`` times), let the method compute its named
objectives and penalties under optional bf16 autocast, stop on a NaN/inf value, let the gradient engine turn
them into gradients (with the weighting), clip, step the optimizers and schedules. Around it: events for the
method and callbacks (:mod:`crosstask.engine.events`), logging, evaluation per domain and task,
best-checkpoint selection, early stopping, atomic checkpoints, exact resume, and a graceful stop on
SIGINT/SIGTERM (the current step finishes and is checkpointed).
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from crosstask.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from crosstask.config import TrainConfig
from crosstask.data.streams import Batch, MultiStream
from crosstask.engine.events import Callback
from crosstask.engine.gradients import GradientEngine, StepGradients
from crosstask.engine.logging import MetricsLog, Progress, log
from crosstask.engine.method import Method
from crosstask.engine.run_dir import RunDir
from crosstask.errors import ConfigError, CrosstaskError, RunError, TrainingDiverged
from crosstask.models.model import MultiTaskModel
from crosstask.registry import METRICS
from crosstask.weighting.base import Weighting

if TYPE_CHECKING:  # built by the experiment; the Trainer only calls them
    from crosstask.evaluation.evaluator import Evaluator
    from crosstask.validators.base import Validation

ARCHITECTURE = "architecture"  # the penalty name of the model's own regularization (soft sharing)


class Trainer:
    """Runs a method's steps on a model until ``train.steps``, early stopping, divergence or a stop signal.

    ``optimizers`` and ``schedulers`` are keyed by side (``main``, and the sides of
    :meth:`Method.optimizer_sides`); a plain optimizer and schedule may be passed instead. ``callbacks``
    receive the Trainer's events after the method; ``provenance`` (code revision, config hash) is written
    into the summary.
    """

    def __init__(
        self,
        *,
        model: MultiTaskModel,
        method: Method,
        weighting: Weighting,
        optimizers: Mapping[str, torch.optim.Optimizer] | torch.optim.Optimizer,
        schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler] | torch.optim.lr_scheduler.LRScheduler,
        streams: MultiStream,
        evaluator: Evaluator | None,
        config: TrainConfig,
        run_dir: RunDir,
        device: torch.device,
        progress: Progress | None = None,
        name: str = "run",
        validation: Validation | None = None,
        callbacks: Sequence[Callback] = (),
        provenance: Mapping[str, Any] | None = None,
    ):
        self.model = model
        self.method = method
        self.weighting = weighting
        self.optimizers = dict(optimizers) if isinstance(optimizers, Mapping) else {"main": optimizers}
        self.schedulers = dict(schedulers) if isinstance(schedulers, Mapping) else {"main": schedulers}
        self.streams = streams
        self.evaluator = evaluator
        self.validation = validation
        self.config = config
        self.run_dir = run_dir
        self.device = device
        self.progress = progress or Progress()
        self.name = name
        self.callbacks: list[Callback] = [method, *callbacks]
        self.provenance = dict(provenance or {})
        self.metrics_log = MetricsLog(run_dir.metrics)
        self.objective_names = list(method.objective_names)
        self.penalty_names = list(method.penalty_names)
        self.params = [p for opt in self.optimizers.values() for g in opt.param_groups for p in g["params"]]
        optimized = {id(p) for p in self.params}  # (optim.backbone_lr_mult: 0 leaves the backbone out)
        shared_params = [p for p in model.shared_parameters() if p.requires_grad and id(p) in optimized]
        excluded = {id(p) for p in shared_params} | {id(p) for p in weighting.params.parameters()}
        self.engine = GradientEngine(
            weighting, shared_params, [p for p in self.params if id(p) not in excluded]
        )
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
        self.fresh = True  # False once a checkpoint was loaded (a resume)
        # every code revision that trained this run (a resume at another revision adds one)
        self.revisions: list[Any] = [self.provenance["revision"]] if self.provenance.get("revision") else []
        extra = [ARCHITECTURE] if model.regularization() is not None else []
        self._names = [*self.objective_names, *self.penalty_names, *extra]
        self._loss_sum = torch.zeros(len(self._names), device=device)
        self._weight_sum: dict[str, float | torch.Tensor] = dict.fromkeys(self.objective_names, 0.0)
        self._extra_sum: dict[str, float | torch.Tensor] = {}  # a method's own logs (StepOutput.logs)
        self._logged_steps = 0
        self._stop_requested = False
        self._started = time.perf_counter()
        self.batch: dict[str, Batch] | None = None  # the micro-batch being back-propagated (for readers)

    # ------------------------------------------------------------------ what event handlers use

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The main optimizer."""
        return self.optimizers["main"] if "main" in self.optimizers else next(iter(self.optimizers.values()))

    def draw(self) -> dict[str, Batch]:
        """The next multi-stream training batch (the streams' state, so a resume, counts it)."""
        return next(self.streams)

    def objectives_at(self, batch: Mapping[str, Batch]) -> dict[str, float]:
        """The method's objectives on ``batch`` with the model as it is now, leaving no trace on the run: no
        gradient is accumulated, and the model's buffers (batch-norm statistics), the method's state and the
        random generators are restored afterwards (a lookahead reader, such as task affinity, calls it with
        shifted parameters). Autograd stays on: some steps differentiate inside (IRM's penalty, MLDG)."""
        buffers = [b.detach().clone() for b in self.model.buffers()]
        method_state = copy.deepcopy(self.method.state_dict())
        rng = capture_rng()
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
                output = self.method.training_step(dict(batch))
            return {name: float(output.objectives[name].detach()) for name in self.objective_names}
        finally:
            restore_rng(rng)
            self.method.load_state_dict(method_state)
            with torch.no_grad():
                for live, saved in zip(self.model.buffers(), buffers, strict=True):
                    live.copy_(saved)

    def reset_optimizer_state(self, sides: Sequence[str] | None = None) -> None:
        """Forget the optimizers' state (momentum, Adam's moments), for every side or the named ones."""
        for side, optimizer in self.optimizers.items():
            if sides is None or side in sides:
                optimizer.state.clear()

    def _emit(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

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
                self._emit("on_fit_start")
                self.model.train()
                while self.step < self.config.steps:
                    self._train_step()
                    self.step += 1
                    if self.step % self.config.log_every == 0:
                        self._log_train()
                    if self.config.eval_every and self.step % self.config.eval_every == 0:
                        final, evaluated_at = self._evaluate_or_save(), self.step
                        if self.step < self.config.steps and self._should_stop_early():
                            status = "stopped_early"
                    if self._stop_requested and status == "completed":
                        status = "interrupted"
                    if status != "completed" or self.step % self.checkpoint_every == 0:
                        self._save_last()
                        saved_at = self.step
                    if status != "completed":
                        break
            if saved_at != self.step:
                self._save_last()
            if status != "interrupted" and evaluated_at != self.step:
                final = self._evaluate()
        except TrainingDiverged as exc:
            self._end("diverged", error=str(exc))
            raise
        except BaseException as exc:  # any failure leaves a summary saying so, with the message
            what = str(exc) if isinstance(exc, CrosstaskError) else f"{type(exc).__name__}: {exc}"
            self._end("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", error=what)
            raise
        finally:
            self.progress.close()
            self.batch = None  # the last batch is not kept alive with the trainer
        return self._end(status, final)

    def _evaluate_or_save(self) -> dict[str, float]:
        """A periodic evaluation; when it fails (an evaluation set the model cannot take), the steps trained
        since the last checkpoint are saved first, so a resume after fixing it loses nothing."""
        try:
            return self._evaluate()
        except Exception:
            try:
                self._save_last()
            except Exception as exc:  # the evaluation's error is the one to report
                log.error(
                    "could not checkpoint after the failed evaluation (%s: %s)", type(exc).__name__, exc
                )
            raise

    def _end(
        self, status: str, final: dict[str, float] | None = None, error: str | None = None
    ) -> dict[str, Any]:
        """The fit ends: tell the handlers, write the summary. When the fit already failed, a handler's own
        error is logged and the original one is the one raised."""
        try:
            self._emit("on_fit_end", status)
        except Exception as exc:
            if error is None:
                self._write_summary("failed", final or {}, error=f"{type(exc).__name__}: {exc}")
                raise
            log.error("a handler of on_fit_end failed too (%s: %s)", type(exc).__name__, exc)
        return self._write_summary(status, final or {}, error=error)

    def _train_step(self) -> None:
        accumulate = self.config.accumulate
        self.method.step, self.method.total_steps = self.step, self.config.steps
        self._emit("on_step_start")
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        produced = False
        for micro_step in range(accumulate):
            batch = self.batch = self.draw()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
                output = self.method.training_step(batch)
            objectives, penalties = dict(output.objectives), dict(output.penalties)
            if micro_step == 0 and (objectives or penalties):  # the model's own regularization (soft
                # sharing), once per optimizer step; not for a step that trains nothing (AdaBN)
                regularization = self.model.regularization()
                if regularization is not None:
                    penalties[ARCHITECTURE] = regularization * accumulate
            self._check_names(objectives, penalties)
            terms = [v.detach().float() for v in (*objectives.values(), *penalties.values())]
            values = torch.stack(terms) if terms else None
            if values is not None and not bool(torch.isfinite(values).all()):
                bad = {
                    n: float(v)
                    for n, v in zip([*objectives, *penalties], values.tolist(), strict=True)
                    if not math.isfinite(v)
                }
                what = ", ".join(f"{k}={v}" for k, v in bad.items())
                raise TrainingDiverged(self._diverged_message(self.step + 1, what))
            if accumulate > 1:
                objectives = {n: v / accumulate for n, v in objectives.items()}
                penalties = {n: v / accumulate for n, v in penalties.items()}
            wanted = {c.wants_gradients(self) for c in self.callbacks}
            keep = "parameters" if "parameters" in wanted else any(wanted)
            try:
                gradients = self.engine.backward(
                    objectives,
                    penalties,
                    output.representation,
                    step=self.step,
                    micro_step=micro_step,
                    accumulate=accumulate,
                    keep_jacobian=keep,
                )
            except NotImplementedError as exc:  # an operation without the derivative this step needs
                raise ConfigError(
                    f"method '{self.method.name}' cannot back-propagate through this model at step "
                    f"{self.step + 1}: {str(exc).splitlines()[0]}. Methods that differentiate their own "
                    "gradients (mldg, maml, metasgd, anil) need second derivatives: set method.first_order: true"
                ) from None
            produced = produced or bool(objectives) or bool(penalties)
            self._accumulate_logs(objectives, penalties, gradients, output.logs, accumulate)
            self._emit("on_after_gradients", gradients)
        if produced:
            self._update()
        else:  # nothing to back-propagate (AdaBN: the forward pass is the update): the schedules still count
            self._step_schedules(stepped=())
        self._logged_steps += 1
        self._emit("on_after_update")

    def _check_names(self, objectives: dict[str, Any], penalties: dict[str, Any]) -> None:
        penalties = {k: v for k, v in penalties.items() if k != ARCHITECTURE}
        if objectives.keys() != set(self.objective_names) or penalties.keys() != set(self.penalty_names):
            raise RunError(
                f"method '{self.method.name}' returned objectives {sorted(objectives)} and penalties "
                f"{sorted(penalties)} but declared {self.objective_names} and {self.penalty_names}"
            )

    def _accumulate_logs(
        self,
        objectives: dict[str, torch.Tensor],
        penalties: dict[str, torch.Tensor],
        gradients: StepGradients,
        logs: Mapping[str, Any],
        accumulate: int,
    ) -> None:
        """Sums on device until the next log line (no host synchronisation per step)."""
        for i, name in enumerate(self._names):
            value = objectives.get(name, penalties.get(name))
            if value is not None:
                self._loss_sum[i] += value.detach().float()
        for n in self.objective_names:  # a weighting may return tensors: keep them on device until logged
            w = gradients.weights.get(n, 0.0)
            self._weight_sum[n] = (
                self._weight_sum[n] + (w.detach() if isinstance(w, torch.Tensor) else w) / accumulate
            )
        for k, v in logs.items():
            value = v.detach().float() if isinstance(v, torch.Tensor) else v
            self._extra_sum[k] = self._extra_sum.get(k, 0.0) + value / accumulate

    def _update(self) -> None:
        """The step's update from the accumulated gradients: clipping, the optimizers of the sides that step
        now, the schedules."""
        resting = set(self.method.resting_sides()) & set(self.optimizers)
        if resting:
            for side in resting:
                for group in self.optimizers[side].param_groups:
                    for param in group["params"]:
                        param.grad = None
        if self.config.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
            if not bool(torch.isfinite(norm)):
                raise TrainingDiverged(self._diverged_message(self.step + 1, f"gradient norm {float(norm)}"))
        for side, optimizer in self.optimizers.items():
            if side not in resting:
                optimizer.step()
        self._step_schedules(stepped=[side for side in self.optimizers if side not in resting])

    def _step_schedules(self, stepped: Sequence[str]) -> None:
        """Every schedule counts every step, so a side's rate follows the step whether it stepped or rested;
        torch's warning about a schedule stepping before its optimizer is meant for another mistake."""
        for side, scheduler in self.schedulers.items():
            if side in stepped:
                scheduler.step()
                continue
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
                scheduler.step()

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
        objectives = set(self.objective_names)
        losses = {
            f"{'loss' if k in objectives else 'penalty'}/{k}": v / n
            for k, v in zip(self._names, self._loss_sum.tolist(), strict=True)
        }
        weights = {f"weight/{k}": float(v) / n for k, v in self._weight_sum.items()}
        extras = {f"log/{k}": float(v) / n for k, v in self._extra_sum.items()}
        lrs = {
            f"lr/{'' if side == 'main' else side + '.'}{g.get('name', i)}": g["lr"]
            for side, optimizer in self.optimizers.items()
            for i, g in enumerate(optimizer.param_groups)
        }
        self.metrics_log.write({"step": self.step, "phase": "train", **losses, **weights, **extras, **lrs})
        self.progress.update(self.step, {k.split("/", 1)[1]: v for k, v in losses.items()})
        self._loss_sum.zero_()
        self._weight_sum = dict.fromkeys(self.objective_names, 0.0)
        self._extra_sum = {}
        self._logged_steps = 0

    def _evaluate(self) -> dict[str, float]:
        if self.evaluator is None and self.validation is None:
            return {}
        metrics = (
            self.evaluator.evaluate(self.model, self.method.predictor(), self.method.episode_predictor())
            if self.evaluator is not None
            else {}
        )
        if self.validation is not None:
            scores = self.validation.scores(self.model)
            metrics.update({f"validator/{name}": value for name, value in scores.items()})
            self._pick(scores, metrics)
        self.metrics_log.write({"step": self.step, "phase": "eval", **metrics})
        self.progress.evaluated(self.step, metrics)
        self._emit("on_evaluation", metrics)
        if self.select is not None and _improves(
            metrics[self.select], self.best and self.best["value"], self.select
        ):
            self.best = {
                "metric": self.select,
                "value": metrics[self.select],
                "step": self.step,
                "metrics": metrics,
            }
            save_checkpoint(self.run_dir.best, self._model_state(metrics))
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
                    self._model_state(metrics),
                )

    def _model_state(self, metrics: dict[str, float]) -> dict[str, Any]:
        """What a picked checkpoint holds: the model, and the method's own modules (what its test-time
        procedure may need: Meta-SGD's step sizes, say)."""
        return {
            "model": self.model.state_dict(),
            "model_spec": self.model.spec(),
            "method": self.method.state_dict(),
            "step": self.step,
            "metrics": metrics,
        }

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
                "format": 2,
                "step": self.step,
                "model": self.model.state_dict(),
                "model_spec": self.model.spec(),
                "optimizers": {side: o.state_dict() for side, o in self.optimizers.items()},
                "schedulers": {side: s.state_dict() for side, s in self.schedulers.items()},
                "weighting": self.weighting.state_dict(),
                "method": self.method.state_dict(),
                "callbacks": [c.state_dict() for c in self.callbacks[1:]],
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
                    "revisions": self.revisions,
                },
            },
        )

    def _load(self, path: Any) -> None:
        state = load_checkpoint(path)
        if state.get("format", 1) == 1 and self.method.name == "mcd":
            raise RunError(
                f"{path} was written before MCD's trade-off moved into its config (it was 0.3 by default then, "
                "method.trade_off is 1.0 by default now, and the classifiers now have their own optimizer): "
                "this run cannot be continued exactly; start a new run"
            )
        try:
            self.model.load_state_dict(state["model"])
            optimizers = state.get("optimizers") or {"main": state["optimizer"]}  # format 1: one optimizer
            schedulers = state.get("schedulers") or {"main": state["scheduler"]}
            if optimizers.keys() != self.optimizers.keys():
                raise KeyError(f"optimizers {sorted(optimizers)}, this run has {sorted(self.optimizers)}")
            for side, optimizer in self.optimizers.items():
                optimizer.load_state_dict(optimizers[side])
                self.schedulers[side].load_state_dict(schedulers[side])
            self.weighting.load_state_dict(state["weighting"])
            self.method.load_state_dict(state["method"])
            for callback, saved in zip(self.callbacks[1:], state.get("callbacks", []), strict=False):
                callback.load_state_dict(saved)
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
            if self._loss_sum.numel() != len(self._names):
                raise ValueError(f"{self._loss_sum.numel()} logged losses, this run has {len(self._names)}")
            self._weight_sum, self._logged_steps = dict(trainer["weight_sum"]), trainer["logged_steps"]
            self._extra_sum = dict(trainer.get("extra_sum", {}))
            current = self.revisions
            self.revisions = list(trainer.get("revisions", [None]))  # None: saved before revisions were kept
            self.revisions += [r for r in current if r not in self.revisions]
            restore_rng(state["rng"])
            self.fresh = False
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
            **self.provenance,
        }
        if len(self.revisions) > 1:  # a resume at another revision: the run mixes code states
            summary["revisions"] = self.revisions
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
