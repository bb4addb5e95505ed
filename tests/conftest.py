"""Shared fixtures: a tiny, fast run config and helpers to run the real entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A real throwaway SLURM cluster (scripts/slurm/) for the tests marked `slurm`.
pytest_plugins = ["slurm_cluster"]

# Tests never talk to the W&B servers; runs that exercise W&B use its real client in offline mode.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# A developer's own config directory (~/.config/mixer-scaling: a default cluster, own sweeps) stays out of the
# tests: they see the shipped configs only, unless a test points this at a folder of its own.
os.environ["MIXER_SCALING_CONFIG"] = str(Path(tempfile.mkdtemp(prefix="mixer-user-config-")) / "none")

# Small enough for seconds on 2 CPU cores, large enough to exercise every stage of a run.
TINY_SYNTHETIC = ["data.size=2000", "data.val_size=256"]
TINY = [
    "train.examples_seen=1024",
    "train.batch_size=64",
    "train.warmup_steps=2",
    "train.log_every=2",
    "train.checkpoint_every=4",
    *TINY_SYNTHETIC,
    "fewshot.shots=[1,5]",
    "eval.batch_size=128",
    "eval.throughput_batch_sizes=[8,32]",
    "eval.throughput_repeats=1",
    "wandb.mode=disabled",
    "progress=false",
]


@pytest.fixture(autouse=True)
def _no_inherited_wandb_service():
    """A W&B run made in this process exports WANDB_SERVICE (its service's socket) for child processes;
    after the test, drop it, so a later test's subprocess (an entry point, a SLURM job) starts its own
    service as a user's would, instead of writing through this process's. W&B's in-process state goes
    too (``wandb.teardown``): it keeps the API key a test's run saw, and a later test's ``wandb.Api()``
    would then try the network with it instead of failing at once for want of a key."""
    yield
    os.environ.pop("WANDB_SERVICE", None)
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()


@pytest.fixture
def tiny(tmp_path):
    """Overrides for a seconds-long run writing under tmp_path/runs."""
    return [*TINY, f"runs_dir={tmp_path / 'runs'}"]


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a real entry point (``python -m ...``) as a user would, in ``cwd``."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def run_cmd(argv: list[str]) -> int:
    """The analysis subcommands as the project's CLI runs them: argparse subparsers, ``fn``, UserError → 2."""
    import argparse

    from mixer_scaling.analysis import cli
    from mixer_scaling.errors import EXIT_USAGE, UserError

    parser = argparse.ArgumentParser(prog="mixer-scaling")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except UserError as exc:
        print(f"error: {exc}")
        return EXIT_USAGE
