"""Lightning's ModelCheckpoint, with its record of files kept relative to its own folder.

Lightning stores in every checkpoint the checkpoint callback's state: its folder and the paths of the
best, the k-th best, the top-k and the last checkpoint, all absolute. A checkpoint therefore carried
the path of the machine that wrote it (the committed notebook runs did), and a run directory that was
moved or copied to another machine lost its top-k record on resume (Lightning compares the stored
folder with the new one and, when they differ, drops everything but the best path, with a warning).

:class:`RunCheckpoint` writes those paths relative to its folder (``dirpath`` stored as ``"."``) and
reads them back under the folder it has now, so a run resumes wherever it lies. A checkpoint written
by Lightning's own class (absolute paths) still loads as before. The callback state keeps
Lightning's key (``ModelCheckpoint{...}``), so older runs resume and the ensemble finds the
validation score where it always was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

RELATIVE = "."  # the stored dirpath of a state whose paths are relative to the checkpoint's folder
PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


def relative_state(state: dict[str, Any], folder: str | Path | None) -> dict[str, Any]:
    """``state`` (a ModelCheckpoint state dict) with the paths under ``folder`` made relative to it."""
    if not folder or state.get("dirpath") == RELATIVE:
        return state
    root = Path(folder)

    def relative(path: Any) -> Any:
        if not path:
            return path
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:  # a file outside the folder (a user's choice) keeps its full path
            return path

    state = dict(state)
    for key in PATH_KEYS:
        if key in state:
            state[key] = relative(state[key])
    if state.get("best_k_models") is not None:
        state["best_k_models"] = {relative(path): score for path, score in state["best_k_models"].items()}
    state["dirpath"] = RELATIVE
    return state


def absolute_state(state: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """The inverse of :func:`relative_state`: relative paths placed under ``folder`` (the folder now)."""
    if state.get("dirpath") != RELATIVE:
        return state
    root = Path(folder)

    def absolute(path: Any) -> Any:
        return str(root / path) if path and not Path(path).is_absolute() else path

    state = dict(state)
    for key in PATH_KEYS:
        if key in state:
            state[key] = absolute(state[key])
    if state.get("best_k_models") is not None:
        state["best_k_models"] = {absolute(path): score for path, score in state["best_k_models"].items()}
    state["dirpath"] = str(root)
    return state


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose saved state names its files relative to its folder (module docstring)."""

    @property
    def state_key(self) -> str:
        # Lightning keys a callback's state by its class name; keep ModelCheckpoint's so that
        # checkpoints written before this class existed resume, and readers find the state.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def state_dict(self) -> dict[str, Any]:
        return relative_state(super().state_dict(), self.dirpath)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.dirpath:
            state_dict = absolute_state(state_dict, self.dirpath)
        super().load_state_dict(state_dict)
