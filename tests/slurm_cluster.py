"""pytest plugin: a real, throwaway one-node SLURM cluster for the test session.

Register it from ``tests/conftest.py``::

    pytest_plugins = ["slurm_cluster"]

and ask for the session-scoped ``slurm_cluster`` fixture (or ``idle_slurm_cluster``,
the same cluster with its queue emptied before and after the test)::

    def test_something(slurm_cluster, tmp_path):
        ex = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="slurm")
        ex.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=2)
        ...

The first test that asks for it installs SLURM + munge when missing
(``scripts/slurm/install.sh``, apt, needs root), starts munged/slurmctld/slurmd
under a fresh temp dir (``scripts/slurm/start.sh``) and points ``SLURM_CONF``
at it for the rest of the session, so ``sbatch``/``squeue``/``scontrol`` and
submitit (and its subprocesses) talk to this cluster. The cluster is stopped
(``scripts/slurm/stop.sh``) when the session ends.

If the cluster cannot be installed or started, every test using the fixture
FAILS (pytest.fail, with the daemons' log tails) -- it is never skipped.
Tests using the fixture are marked ``slurm`` automatically, so ``-m "not slurm"``
deselects them.

Things to know when writing tests against it:
  * no slurmdbd: ``sacct`` fails, submitit logs "Bypassing sacct error" and can
    never see a job's final state, so ``job.result()`` on a job that died without
    a result pickle waits forever. Use ``slurm_cluster.wait_submitit(jobs, timeout)``
    before ``.result()``.
  * job functions are unpickled in a fresh interpreter that cannot import test
    modules: ``cloudpickle.register_pickle_by_value(sys.modules[__name__])`` in
    the test module (or submit functions from the installed package).
  * a requeued job waits ``cred_expire`` (10 s here, 120 s by default) before it
    may start again; ``scontrol requeue`` kills the running job (SIGTERM, which
    submitit ignores, then SIGKILL after KillWait=3 s) without calling
    ``checkpoint()``; submitit's own USR2 path does call it.

Under pytest-xdist every worker gets its own cluster (own dir, own ports).
Environment knobs: ``MIXER_SLURM_DIR`` (use this state dir instead of a pytest
temp dir), ``MIXER_SLURM_KEEP=1`` (leave the cluster running after the session).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts" / "slurm"
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 90
MAX_SOCKET_PATH = 100  # AF_UNIX limit is 108 bytes; munge.socket lives in <state>/munge/

# Variables a surrounding SLURM job/allocation would leak into sbatch/srun.
_LEAKY_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SUBMITIT_")


class SlurmClusterError(RuntimeError):
    pass


@dataclasses.dataclass
class SlurmCluster:
    """Handle on the running test cluster (what the ``slurm_cluster`` fixture yields)."""

    state_dir: Path
    conf: Path
    partition: str
    node: str
    max_array_size: int
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)

    # ---- plumbing ------------------------------------------------------------
    @property
    def env(self) -> Dict[str, str]:
        """os.environ with SLURM_CONF pointing at this cluster."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client command (``cluster.run("scontrol", "show", "job", "3")``)."""
        proc = subprocess.run(
            list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise SlurmClusterError(
                f"{shlex.join(cmd)} failed (rc={proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc

    # ---- queries ---------------------------------------------------------------
    def sinfo(self) -> str:
        return self.run("sinfo").stdout

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-n", self.node, "-o", "%t").stdout.strip()

    def squeue(self, *args: str) -> List[Dict[str, str]]:
        """Jobs still queued/running/completing on the cluster, one dict per row.

        Keys: ``id`` (e.g. ``"7_2"`` for an array task), ``job_id`` (the unique
        numeric id), ``array_job_id``, ``state``, ``reason``, ``name``.
        Extra args go to squeue (e.g. ``"-j", "7"``).
        """
        out = self.run("squeue", "-h", "-r", "-o", "%i|%A|%F|%T|%r|%j", *args).stdout
        rows = []
        for line in out.splitlines():
            if not line.strip():
                continue
            parts = line.split("|", 5)
            rows.append(dict(zip(("id", "job_id", "array_job_id", "state", "reason", "name"), parts)))
        return rows

    def job_info(self, job_id: str) -> Dict[str, str]:
        """``scontrol show job -o`` as a dict (JobState, Restarts, Reason, ...).

        Finished jobs stay visible for MinJobAge (600 s) after they end.
        """
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        info: Dict[str, str] = {}
        for line in out.splitlines()[:1]:
            for tok in line.split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    info[k] = v
        return info

    def log_tail(self, lines: int = 25) -> str:
        return _log_tail(self.state_dir, lines)

    # ---- waiting ---------------------------------------------------------------
    def wait_idle(self, timeout: float = 60, poll: float = 0.5) -> None:
        """Block until no job is left in the queue; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        rows: List[Dict[str, str]] = []
        while time.monotonic() < deadline:
            rows = self.squeue()
            if not rows:
                return
            time.sleep(poll)
        raise TimeoutError(f"jobs still queued after {timeout}s: {rows}")

    def wait_state(self, job_id: str, states: Iterable[str], timeout: float = 60, poll: float = 0.3) -> str:
        """Block until ``scontrol show job`` reports one of ``states``; returns it."""
        wanted = {s.upper() for s in states}
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.job_info(job_id).get("JobState", "")
            if state in wanted:
                return state
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} not in {sorted(wanted)} after {timeout}s (last: {state!r})")

    def wait_submitit(self, jobs: Any, timeout: float = 90, poll: float = 0.5) -> None:
        """Wait until submitit job(s) are done, with a timeout.

        Without slurmdbd ``sacct`` fails, so submitit never learns that a job died
        without writing its result pickle and ``job.result()`` would wait forever.
        This waits for ``job.done()`` or for the job to have left the queue for a
        few seconds (then ``job.result()`` raises an UncompletedJobError quickly).
        """
        if not isinstance(jobs, (list, tuple)):
            jobs = [jobs]
        deadline = time.monotonic() + timeout
        gone_since: Dict[str, float] = {}
        pending = list(jobs)
        while pending:
            rows = self.squeue()
            queued = {r["id"] for r in rows} | {r["job_id"] for r in rows}
            still = []
            for job in pending:
                if job.done():
                    continue
                if job.job_id in queued:
                    gone_since.pop(job.job_id, None)
                    still.append(job)
                    continue
                first = gone_since.setdefault(job.job_id, time.monotonic())
                if time.monotonic() - first < 5:
                    still.append(job)
            pending = still
            if not pending:
                return
            if time.monotonic() > deadline:
                details = "\n".join(
                    f"--- {j.job_id}: stdout ---\n{_tail_text(j.stdout())}\n--- stderr ---\n{_tail_text(j.stderr())}"
                    for j in pending
                )
                raise TimeoutError(
                    f"submitit jobs {[j.job_id for j in pending]} not done after {timeout}s; "
                    f"squeue: {self.squeue()}\n{details}"
                )
            time.sleep(poll)

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job of this cluster and wait until the queue is empty."""
        ids = sorted({r["job_id"] for r in self.squeue()})
        if ids:
            self.run("scancel", *ids, check=False)
        self.wait_idle(timeout)


def _tail_text(text: Optional[str], lines: int = 30) -> str:
    if not text:
        return "(empty)"
    return "\n".join(text.splitlines()[-lines:])


def _log_tail(state_dir: Path, lines: int = 25) -> str:
    chunks = []
    for name in ("munged.log", "slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
        path = Path(state_dir) / "log" / name
        if path.is_file() and path.stat().st_size:
            text = path.read_text(errors="replace").splitlines()[-lines:]
            chunks.append(f"---- {path} ----\n" + "\n".join(text))
    return "\n".join(chunks) or f"(no daemon logs under {state_dir}/log)"


def _script(name: str, *args: str, timeout: float, env: Optional[Dict[str, str]] = None):
    return subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _parse_env_file(path: Path) -> Dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            out[key] = value
    return out


def _pick_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    override = os.environ.get("MIXER_SLURM_DIR")
    if override:
        return Path(override)
    state_dir = tmp_path_factory.mktemp("slurm", numbered=True)
    if len(str(state_dir / "munge" / "munge.socket")) > MAX_SOCKET_PATH:
        state_dir = Path(tempfile.mkdtemp(prefix="mixer-slurm-", dir="/tmp"))
    return state_dir


def install_slurm() -> None:
    """Install slurm-wlm + munge if missing (pytest.fail on error)."""
    try:
        proc = _script("install.sh", timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/slurm/install.sh did not finish in {INSTALL_TIMEOUT_S}s", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(
            "could not install SLURM for the slurm tests (scripts/slurm/install.sh, needs root + apt):\n"
            + proc.stdout + proc.stderr,
            pytrace=False,
        )


def start_cluster(state_dir: Path, port_base: int) -> SlurmCluster:
    """Run start.sh; returns the handle or raises SlurmClusterError with the log tails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_PREFIXES)}
    env["SLURM_PORT_BASE"] = str(port_base)
    env.setdefault("SLURM_START_TIMEOUT", "60")
    try:
        proc = _script("start.sh", str(state_dir), timeout=START_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        raise SlurmClusterError(
            f"start.sh {state_dir} hung for {START_TIMEOUT_S}s\n{_log_tail(state_dir)}"
        ) from exc
    if proc.returncode != 0:
        raise SlurmClusterError(
            f"start.sh {state_dir} failed (rc={proc.returncode}):\n{proc.stdout}{proc.stderr}\n"
            f"{_log_tail(state_dir)}"
        )
    values = _parse_env_file(state_dir / "env")
    return SlurmCluster(
        state_dir=Path(values["SLURM_TEST_STATE_DIR"]),
        conf=Path(values["SLURM_CONF"]),
        partition=values["SLURM_TEST_PARTITION"],
        node=values["SLURM_TEST_NODE"],
        max_array_size=int(values["SLURM_TEST_MAX_ARRAY_SIZE"]),
    )


def stop_cluster(state_dir: Path) -> subprocess.CompletedProcess:
    return _script("stop.sh", str(state_dir), timeout=120)


# ---- pytest hooks -------------------------------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slurm: runs against the throwaway one-node SLURM cluster (scripts/slurm); "
        "fails, never skips, when it cannot be started",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        uses = "slurm_cluster" in names or "idle_slurm_cluster" in names
        if uses and not item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running one-node SLURM cluster; SLURM_CONF points at it for the session."""
    t0 = time.monotonic()
    install_slurm()
    t_install = time.monotonic() - t0

    state_dir = _pick_state_dir(tmp_path_factory)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    worker_idx = int("".join(ch for ch in worker if ch.isdigit()) or 0)
    cluster = None
    errors = []
    for attempt in range(2):  # a second try covers a port grabbed between check and bind
        port_base = 16817 + 200 * (worker_idx % 40) + 2 * random.randrange(100)
        try:
            cluster = start_cluster(state_dir, port_base)
            break
        except SlurmClusterError as exc:
            errors.append(f"attempt {attempt + 1}: {exc}")
    if cluster is None:
        pytest.fail("could not start the test SLURM cluster:\n" + "\n".join(errors), pytrace=False)
    t_start = time.monotonic() - t0 - t_install

    mp = pytest.MonkeyPatch()
    for key in list(os.environ):
        if key.startswith(_LEAKY_PREFIXES):
            mp.delenv(key)
    mp.setenv("SLURM_CONF", str(cluster.conf))
    cluster.timings.update(install_s=round(t_install, 2), start_s=round(t_start, 2))
    try:
        yield cluster
    finally:
        mp.undo()
        if os.environ.get("MIXER_SLURM_KEEP") != "1":
            proc = stop_cluster(cluster.state_dir)
            if proc.returncode != 0:
                import warnings

                warnings.warn(f"stop.sh {cluster.state_dir} failed: {proc.stdout}{proc.stderr}")


@pytest.fixture
def idle_slurm_cluster(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The session cluster with an empty queue before and after the test."""
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all()
