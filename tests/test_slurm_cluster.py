"""Tests against the real throwaway SLURM cluster (see tests/slurm_cluster.py).

They need root + apt the first time (install) and FAIL when the cluster cannot start.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
import submitit.helpers

# The jobs unpickle these functions in a fresh interpreter that cannot import this
# test module (tests/ is not on its sys.path): ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.slurm


# ---- functions run inside the jobs ------------------------------------------------
def square_plus(x: int, offset: int) -> dict:
    return {
        "value": x * x + offset,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "cpus": os.environ.get("SLURM_CPUS_PER_TASK"),
    }


def explode(tag: str) -> None:
    raise ValueError(f"boom from the job: {tag}")


class CountTo(submitit.helpers.Checkpointable):
    """Counts to ``total`` in ``step_s`` steps, persisting progress to a file.

    Each (re)start appends ``<count at start> <SLURM_RESTART_COUNT>`` to
    ``<progress_file>.starts`` so the test can see it was resumed.
    """

    def __call__(self, progress_file: str, total: int, step_s: float) -> int:
        progress = Path(progress_file)
        count = int(progress.read_text()) if progress.exists() else 0
        with open(f"{progress_file}.starts", "a") as f:
            f.write(f"{count} {os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
        while count < total:
            time.sleep(step_s)
            count += 1
            tmp = progress.with_suffix(".tmp")
            tmp.write_text(str(count))
            tmp.replace(progress)
        return count


# ---- helpers -------------------------------------------------------------------------
def make_executor(cluster, folder: Path, **params) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(
        slurm_partition=cluster.partition,
        timeout_min=5,
        cpus_per_task=1,
        nodes=1,
        tasks_per_node=1,
        **params,
    )
    return executor


def wait_progress(path: Path, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = int(path.read_text())
        except (FileNotFoundError, ValueError):
            value = 0
        if value >= at_least:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{path} did not reach {at_least} in {timeout}s")


@pytest.fixture
def cluster(idle_slurm_cluster):
    return idle_slurm_cluster


# ---- tests ------------------------------------------------------------------------------
def test_sinfo_shows_partition_and_node(cluster):
    assert os.environ["SLURM_CONF"] == str(cluster.conf)
    out = cluster.run("sinfo", "-h", "-o", "%P|%a|%t|%N|%c").stdout.strip().splitlines()
    assert len(out) == 1, out
    partition, avail, state, node, cpus = out[0].split("|")
    assert (partition, avail, state, node) == (f"{cluster.partition}*", "up", "idle", cluster.node)
    assert int(cpus) >= 2, "two 1-CPU jobs must fit side by side"
    config = cluster.run("scontrol", "show", "config").stdout
    assert f"MaxArraySize            = {cluster.max_array_size}" in config
    assert "JobRequeue              = 1" in config


def test_two_one_cpu_jobs_run_side_by_side(cluster):
    ids = [
        cluster.run("sbatch", "--parsable", "-c", "1", "-o", "/dev/null", "--wrap", "sleep 30").stdout.strip()
        for _ in range(2)
    ]
    for job_id in ids:
        cluster.wait_state(job_id, ["RUNNING"], timeout=30)
    assert {r["state"] for r in cluster.squeue()} == {"RUNNING"}


def test_submitit_map_array(cluster, tmp_path):
    executor = make_executor(cluster, tmp_path / "logs", slurm_array_parallelism=2)
    xs = [1, 2, 3]
    offsets = [10, 20, 30]
    jobs = executor.map_array(square_plus, xs, offsets)
    assert len(jobs) == 3
    array_ids = {job.job_id.split("_")[0] for job in jobs}
    assert len(array_ids) == 1, [job.job_id for job in jobs]  # one sbatch --array

    cluster.wait_submitit(jobs, timeout=90)
    results = [job.result() for job in jobs]
    assert [r["value"] for r in results] == [11, 24, 39]
    assert sorted(r["array_task"] for r in results) == ["0", "1", "2"]
    assert all(r["cpus"] == "1" for r in results)


def test_submitit_exception_is_reported(cluster, tmp_path):
    executor = make_executor(cluster, tmp_path / "logs")
    job = executor.submit(explode, "tag-1234")
    cluster.wait_submitit(job, timeout=60)
    exc = job.exception()
    assert isinstance(exc, submitit.core.utils.FailedJobError), repr(exc)
    assert "ValueError" in str(exc)
    assert "boom from the job: tag-1234" in str(exc)
    with pytest.raises(submitit.core.utils.FailedJobError, match="tag-1234"):
        job.result()


def _run_requeue_case(cluster, tmp_path, interrupt):
    progress = tmp_path / "progress.txt"
    total = 16
    executor = make_executor(cluster, tmp_path / "logs")
    job = executor.submit(CountTo(), str(progress), total, 0.5)

    wait_progress(progress, 3, timeout=60)
    interrupt(job)

    # The job leaves RUNNING (killed, then PENDING until cred_expire has passed) ...
    deadline = time.monotonic() + 30
    while cluster.job_info(job.job_id).get("Restarts", "0") == "0":
        assert time.monotonic() < deadline, cluster.job_info(job.job_id)
        time.sleep(0.2)
    # ... then runs again and finishes the count from where it stopped.
    cluster.wait_submitit(job, timeout=90)
    assert job.result() == total
    starts = [line.split() for line in Path(f"{progress}.starts").read_text().splitlines()]
    assert len(starts) == 2, starts
    assert starts[0] == ["0", "0"], starts
    assert int(starts[1][0]) >= 3 and starts[1][1] == "1", starts  # resumed, not restarted
    # The result pickle is written just before the job exits: let SLURM catch up.
    assert cluster.wait_state(job.job_id, ["COMPLETED", "FAILED", "CANCELLED"], timeout=30) == "COMPLETED"
    assert cluster.job_info(job.job_id)["Restarts"] == "1"
    return job


def test_scontrol_requeue_resumes_checkpointable_job(cluster, tmp_path):
    # External requeue (what an admin or a preempting scheduler does): SLURM sends
    # SIGTERM (submitit ignores it), SIGKILL after KillWait, and requeues the job.
    _run_requeue_case(
        cluster, tmp_path, lambda job: cluster.run("scontrol", "requeue", job.job_id)
    )


def test_submitit_preemption_signal_checkpoints_and_requeues(cluster, tmp_path):
    # submitit's own path: SIGTERM + USR2 (as for --signal=USR2@90 / preemption);
    # its handler calls checkpoint() and runs `scontrol requeue` from inside the job.
    job = _run_requeue_case(cluster, tmp_path, lambda job: job._interrupt())
    assert "Caught signal" in (job.stderr() or "") + (job.stdout() or "")
