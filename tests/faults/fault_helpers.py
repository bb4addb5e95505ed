"""Real training processes for the fault tests: start one, watch its run directory, hit it at a chosen point.

Each attempt is a new process running the train entry point (``mixer_scaling.train.main``, the console
script's code path) with its own argv, cwd and environment. To spare each attempt the interpreter and
torch/timm import time (~5 s here), attempts are forked from a multiprocessing fork server that has
imported the package and nothing else: no run state can carry over from one attempt to the next.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from conftest import TINY
from mixer_scaling import checkpoint, records
from mixer_scaling.config import compose
from mixer_scaling.records import run_id_of


# TINY with a lighter evaluation: these tests are about training state, and every run here evaluates.
QUICK = [*TINY, "fewshot.datasets=[digits]", "fewshot.shots=[1]", "eval.throughput_batch_sizes=[8]"]


class Run:
    """The train entry point with ``overrides`` in ``cwd``, one new process per :meth:`start` (an attempt)."""

    def __init__(self, overrides: list[str], cwd: Path, env: dict | None = None):
        self.overrides, self.cwd = list(overrides), Path(cwd)
        cfg = compose(self.overrides)
        self.run_dir = Path(cfg.runs_dir) / run_id_of(cfg)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: multiprocessing.Process | None = None
        self.attempt = 0

    def start(self) -> "Run":
        self.attempt += 1
        self.log = self.cwd / f"attempt{self.attempt}.log"
        self.proc = _context().Process(target=_train_main, args=(self.overrides, str(self.cwd), str(self.log),
                                                                   self.env))
        self.proc.start()
        return self

    def wait_for(self, condition: Callable[[], bool], timeout: float = 240, poll: float = 0.005) -> None:
        """Return once ``condition()`` holds; fail if the process ends first or the time runs out."""
        deadline = time.monotonic() + timeout
        while not condition():
            if not self.proc.is_alive():
                raise AssertionError(f"attempt {self.attempt} exited ({self.proc.exitcode}) before the "
                                     f"fault point:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"attempt {self.attempt}: fault point not reached in {timeout} s")
            time.sleep(poll)

    def send(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def finish(self, timeout: float = 300) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            self.proc.kill()
            raise AssertionError(f"attempt {self.attempt} still running after {timeout} s")
        return self.proc.exitcode

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    # what is on disk
    def logged_step(self) -> int:
        rows = records.MetricsLog(self.run_dir).read()
        return max((r["step"] for r in rows if "train/loss" in r), default=0)

    def record(self) -> dict | None:
        return records.read_record(self.run_dir)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in records.MetricsLog(run_dir).read() if "train/loss" in r]


def weights(run_dir: Path) -> dict:
    return checkpoint.load(Path(run_dir) / records.CHECKPOINT_FILE)["model"]


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def metrics_lines(run_dir: Path) -> list[str]:
    """metrics.jsonl's training lines without the wall-clock fields (throughput differs between runs)."""
    out = []
    for row in records.MetricsLog(run_dir).read():
        row = {k: v for k, v in row.items() if not k.endswith("img_per_s")}
        out.append(json.dumps(row, sort_keys=True))
    return out


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mixer_scaling.train"])
    return ctx


def _train_main(argv: list[str], cwd: str, log: str, env: dict) -> None:
    """In the child: the console script's entry point with this attempt's argv, cwd, env and output file."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.argv = ["mixer_scaling.train", *argv]
    from mixer_scaling import train

    train.main()


SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


_REFERENCES: dict[tuple, dict] = {}


def reference(overrides: list[str]) -> dict:
    """The record of an uninterrupted run of ``overrides``, trained once per test session (in-process)."""
    key = tuple(overrides)
    if key not in _REFERENCES:
        import atexit
        import shutil
        import tempfile

        from mixer_scaling.train import run

        runs_dir = tempfile.mkdtemp(prefix="mixer-reference-")
        atexit.register(shutil.rmtree, runs_dir, True)
        _REFERENCES[key] = run(compose([*overrides, f"runs_dir={runs_dir}"]))
    return _REFERENCES[key]
