"""The backends the command line can send runs to (``steplog replay``), in one registry.

Each :class:`CliBackend` declares its flag, its further options and how to build the
backend from the parsed arguments; the replay command's options, its help text, its
"give at least one of" check and the backends it builds all come from :data:`BACKENDS`,
so adding a backend to the command line is one entry there.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._common import CommandError

if TYPE_CHECKING:
    from ..backends.base import Backend

__all__ = ["BACKENDS", "BackendOption", "CliBackend", "add_options", "chosen", "or_list"]


@dataclasses.dataclass(frozen=True, slots=True)
class BackendOption:
    """A further option of a backend, such as ``--mlflow-experiment NAME``."""

    flag: str
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CliBackend:
    """A backend the command line can target, chosen with ``--NAME VALUE``.

    Attributes:
        name: the flag without its dashes, and the attribute the value lands in.
        title: how the replay command's one-line help names it ("MLflow").
        metavar: what ``--NAME`` takes (URI, PROJECT, LOGDIR).
        help: the help of ``--NAME``.
        build: the backend, from the parsed arguments and the run file being replayed;
            may raise :class:`CommandError`.
        options: further options, listed after ``--NAME``.
        rerun: for the replay command's description: why re-running a replay does not
            duplicate points in this backend, if it does not.
    """

    name: str
    title: str
    metavar: str
    help: str
    build: Callable[[argparse.Namespace, Path], Backend]
    options: tuple[BackendOption, ...] = ()
    rerun: str | None = None

    @property
    def flag(self) -> str:
        """``--NAME``."""
        return f"--{self.name}"


def _mlflow(args: argparse.Namespace, run: Path) -> Backend:
    from ..backends.mlflow import MlflowBackend

    return MlflowBackend(args.mlflow, experiment_name=args.mlflow_experiment)


def _wandb(args: argparse.Namespace, run: Path) -> Backend:
    from ..backends.wandb import WandbBackend

    return WandbBackend(args.wandb, mode=args.wandb_mode)


def _tensorboard(args: argparse.Namespace, run: Path) -> Backend:
    from ..backends.tensorboard import TensorBoardBackend

    return TensorBoardBackend(args.tensorboard)


def _trackio(args: argparse.Namespace, run: Path) -> Backend:
    from ..backends.trackio import TrackioBackend

    return TrackioBackend(args.trackio)


def _jsonl(args: argparse.Namespace, run: Path) -> Backend:
    from ..backends.jsonl import JsonlBackend

    # A run file lives in ROOT/EXPERIMENT/: replaying it into its own root would
    # append the run to itself.
    if Path(args.jsonl).resolve() == run.parent.parent.resolve():
        raise CommandError(f"--jsonl {args.jsonl} is where {run} already is")
    return JsonlBackend(args.jsonl)


#: In the order of the options in ``--help`` and of the backends a replay sends to.
BACKENDS: tuple[CliBackend, ...] = (
    CliBackend(
        "mlflow",
        "MLflow",
        "URI",
        "MLflow tracking server URL",
        _mlflow,
        options=(BackendOption("--mlflow-experiment", "MLflow experiment", metavar="NAME"),),
        rerun="MLflow (the run is found again by its steplog id)",
    ),
    CliBackend(
        "wandb",
        "W&B",
        "PROJECT",
        "W&B project",
        _wandb,
        options=(
            BackendOption(
                "--wandb-mode", "W&B mode (default: W&B's)", choices=("online", "offline")
            ),
        ),
    ),
    CliBackend(
        "tensorboard",
        "TensorBoard",
        "LOGDIR",
        "TensorBoard log directory",
        _tensorboard,
        rerun="TensorBoard (the event file is rewritten)",
    ),
    CliBackend("trackio", "trackio", "PROJECT", "trackio project", _trackio),
    CliBackend("jsonl", "another JSONL root", "ROOT", "another JSONL run directory", _jsonl),
)


def add_options(parser: argparse.ArgumentParser) -> None:
    """Every backend's flag and further options."""
    for backend in BACKENDS:
        parser.add_argument(backend.flag, metavar=backend.metavar, help=backend.help)
        for option in backend.options:
            parser.add_argument(
                option.flag, metavar=option.metavar, choices=option.choices, help=option.help
            )


def chosen(args: argparse.Namespace) -> list[CliBackend]:
    """The backends whose flag was given."""
    return [b for b in BACKENDS if getattr(args, b.name)]


def or_list(words: Sequence[str]) -> str:
    """``a, b or c``."""
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else "".join(words)
