"""Checkpoints: written atomically, read with ``weights_only=True``, holding everything a resume needs.

``last.pt`` holds the full training state (model, optimizer, scheduler, weighting, method, streams, RNG
states, step, early-stopping state); ``best.pt`` holds the model selected by ``train.select``. Both carry the
model's spec, so a model can be rebuilt from either without the config file.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crosstask.errors import RunError


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a killed process leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(dict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise RunError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors vary
        raise RunError(
            f"{path}: cannot read the checkpoint ({exc}); it may be damaged or from another program"
        ) from None


def resolve_checkpoint(path: str | os.PathLike, prefer: str = "best") -> Path:
    """A checkpoint file: ``path`` itself, or in a run directory ``checkpoints/<prefer>.pt`` (for ``best`` and
    ``last``, then the other; a validator's pick, ``best_<validator>``, exactly)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        order = [prefer, "last" if prefer == "best" else "best"] if prefer in ("best", "last") else [prefer]
        for name in order:
            candidate = path / "checkpoints" / f"{name}.pt"
            if candidate.is_file():
                return candidate
        if prefer not in ("best", "last"):
            found = sorted(p.stem for p in (path / "checkpoints").glob("*.pt"))
            raise RunError(f"{path} has no checkpoints/{prefer}.pt; it has: {', '.join(found) or 'none'}")
        raise RunError(
            f"{path} holds no checkpoints/best.pt or checkpoints/last.pt; is it a crosstask run directory?"
        )
    raise RunError(f"no such run directory or checkpoint file: {path}")


def read_model_checkpoint(
    path: str | os.PathLike, prefer: str = "best"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The model spec and weights stored in a checkpoint file or run directory."""
    file = resolve_checkpoint(path, prefer)
    state = load_checkpoint(file)
    if "model" not in state or "model_spec" not in state:
        raise RunError(f"{file} is not a crosstask checkpoint (no model or model_spec)")
    return state["model_spec"], state["model"]


def capture_rng() -> dict[str, Any]:
    """The states of every random generator a training step may use."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": [list(part) if isinstance(part, tuple) else part for part in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["key"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
