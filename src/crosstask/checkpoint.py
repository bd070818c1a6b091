"""Checkpoints: written atomically, read with ``weights_only=True``, holding everything a resume needs.

``last.pt`` holds the full training state (model, optimizer, scheduler, weighting, method, streams, RNG
states, step, early-stopping state); ``best.pt`` holds the model selected by ``train.select``. Both carry the
model's spec, so a model can be rebuilt from either without the config file.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crosstask.errors import RunError


def write_text(path: str | os.PathLike, text: str, what: str = "file") -> None:
    """Write ``text`` to ``path`` atomically (a reader never sees half a file); a filesystem fault is one
    :class:`RunError` naming the file and the reason."""
    path = Path(path)
    try:
        fd, tmp = open_temporary(path)
    except OSError as exc:
        raise RunError(
            f"cannot write the {what} {path}: {exc.strerror or exc}; choose another path"
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise RunError(
                f"cannot write the {what} {path}: {exc.strerror or exc}; choose another path"
            ) from None
        raise


def open_temporary(path: Path) -> tuple[int, Path]:
    """A new file ``.<name>.<8 random characters>.tmp`` next to ``path``, opened for writing, for an atomic
    write (then ``os.replace``). Unlike ``tempfile.mkstemp`` it gets the usual permissions (0666 less the
    umask), which the renamed file keeps. A killed writer's leftover is removed by ``remove_stale_temporaries``."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise RunError(f"cannot create a temporary file next to {path}")


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a killed process leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = open_temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(dict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (tensors and plain values only: never arbitrary objects).

    ``mmap=True`` maps the file instead of reading it (cheap when only a few entries are needed)."""
    if not Path(path).is_file():
        raise RunError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # unpickling errors vary
        raise RunError(_unreadable(Path(path), exc)) from None


def _unreadable(path: Path, exc: Exception) -> str:
    """Our own message for a checkpoint torch refuses. Torch's own text for the weights-only refusal advises
    ``weights_only=False``, which runs arbitrary code from the file: it is never repeated."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"{path}: not a crosstask checkpoint: it holds Python objects other than tensors and plain values "
            f"(here {found.group(1)}), so it was written by another program. crosstask reads only the tensors "
            "of checkpoints it wrote and never unpickles other objects; use a checkpoint from a crosstask run "
            "(checkpoints/best.pt or last.pt)."
        )
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        return (
            f"{path}: cannot read the checkpoint: it is damaged, truncated or not a PyTorch checkpoint. "
            "Use a checkpoint from a crosstask run (checkpoints/best.pt or last.pt)."
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return (
        f"{path}: cannot read the checkpoint ({first}); it may be damaged, truncated or from another program. "
        "Use a checkpoint from a crosstask run (checkpoints/best.pt or last.pt)."
    )


# ``save_checkpoint`` and ``RunDir.write_json`` write ``.<file name>.<8 random characters>.tmp`` (``open_temporary``;
# before it, tempfile's names of the same form) and rename it; a killed process leaves one behind.
_TEMPORARY = re.compile(r"\.[A-Za-z0-9_.\-]+\.(pt|json)\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an atomic write left behind when its process was killed
    (``.last.pt.<random>.tmp``, ...); any other file is left alone. Returns the removed paths."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        if _TEMPORARY.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed


def checkpoint_step(path: str | os.PathLike, prefer: str = "best") -> int | None:
    """The training step a checkpoint (a file, or a run directory's ``checkpoints/<prefer>.pt``) was taken at."""
    state = load_checkpoint(resolve_checkpoint(path, prefer), mmap=True)
    step = state.get("step") if isinstance(state, dict) else None
    return int(step) if isinstance(step, int) else None


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


def read_method_state(path: str | os.PathLike, prefer: str = "best") -> dict[str, Any] | None:
    """The method's state stored beside the model in a checkpoint (None in checkpoints without one)."""
    return load_checkpoint(resolve_checkpoint(path, prefer)).get("method")


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
