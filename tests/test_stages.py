"""Studies in stages (mixer_scaling.stages): a sweep's second stage fine-tunes its finished cells.

On the real one-node SLURM cluster (tests/slurm_cluster.py): one `sweep launch` submits both stages, the
fine-tunes with `afterok` on their parent's job (they start after it ended), a failing parent's children
are blocked, a relaunch submits nothing when all is done and only the child that is missing; `collect`
joins the fine-tunes to their parents and the fine-tuned Pareto figure places them at the parent's
pre-training compute; a parent requeued mid-run (`scontrol requeue`, as submitit requeues) keeps its child
pending until its last attempt succeeds. Locally (debug executor, jobs replaced by stand-ins that write
records): children run after their parents, a failed parent's children are not run. Bad stages: one line,
exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from mixer_scaling import launch, records, stages
from mixer_scaling.errors import ConfigError
from mixer_scaling.sweep import load

CLI = [sys.executable, "-m", "mixer_scaling.cli"]
NO_WANDB = "wandb.mode=disabled"
SWEEP = "smoke_stages"


def cli(args: list[str], env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def main(args: list[str], capsys) -> tuple[int, str]:
    """The command in this process (faster than a subprocess); (exit code, stdout)."""
    from mixer_scaling.cli import main as cli_main

    capsys.readouterr()
    code = cli_main(args)
    return code, capsys.readouterr().out


def status(runs: Path, *axes: str, capsys) -> list[dict]:
    code, out = main(["sweep", "status", SWEEP, f"runs_dir={runs}", NO_WANDB, *axes, "--json"], capsys)
    assert code == 0, out
    return json.loads(out)


# ---------------------------------------------------------------------------------------------
# Expansion: run ids known before the parents ran, and bad stages


def test_children_expand_with_the_run_id_their_fine_tune_gets(tmp_path):
    sweep = load(SWEEP, [f"runs_dir={tmp_path}", NO_WANDB], progress=False)
    stage = sweep.stage
    assert len(sweep.cells) == 2 and len(stage.children) == 4  # every parent x train.lr 0.01, 0.03
    assert {c.parent.run_id for c in stage.children} == {c.run_id for c in sweep.cells}
    child = stage.children[0]
    # The job's config names the parent by run id; once the parent is done, prepare() gives the same run.
    assert child.config["parent"] == child.parent.run_id and child.config["runs_dir"] == str(tmp_path)
    assert records.run_id_of(child.resolved) == child.run_id
    assert child.value("train.lr") in (0.01, 0.03) and child.value("data.num_classes") == 10
    # `stages` is not identity: the first stage's run ids are the smoke sweep's.
    assert {c.run_id for c in load("smoke", [f"runs_dir={tmp_path}", NO_WANDB], progress=False).cells} == \
        {c.run_id for c in sweep.cells}


@pytest.mark.parametrize("override, line", [
    ("+stages.finetune.parents.nope=1", "stages.finetune.parents.nope is not a key of the first stage's cells"),
    ("~stages.finetune.grid", "stages.finetune.grid=null is not allowed; expected a non-empty mapping"),
    ("stages.finetune.grid={train.lr:[]}", "stages.finetune.grid.train.lr=[] is not allowed; expected a non-empty list"),
    ("+stages.finetune.grid.image_size=[40]", "image_size=40 is not K times the pre-training size 32"),
])
def test_bad_stage_is_one_config_error(tmp_path, override, line):
    with pytest.raises(ConfigError) as err:
        load(SWEEP, [f"runs_dir={tmp_path}", NO_WANDB, override], progress=False)
    assert line in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_bad_stage_on_the_command_line_exits_2_and_creates_nothing(tmp_path):
    runs = tmp_path / "runs"
    proc = cli(["sweep", "launch", SWEEP, f"runs_dir={runs}", NO_WANDB, "--executor", "local",
                "+stages.finetune.grid.image_size=[40]"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stages.finetune, parent model=mixer/micro"), lines
    assert "integer" in lines[0] and "Mixer" in lines[0], lines[0]
    assert not runs.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Locally: stage order, blocked children (stand-in jobs: the order is what is tested, not training)


def _stand_in(order: list, fail: set):
    class Job:
        def __init__(self, stage: str):
            self.stage = stage

        def __call__(self, config: dict) -> dict:
            from omegaconf import OmegaConf

            if self.stage == "finetune":  # as FinetuneJob: the parent must be done by now (prepare checks)
                from mixer_scaling.finetune import prepare

                resolved = OmegaConf.to_container(prepare(OmegaConf.create(config)).cfg, resolve=True)
            else:
                resolved = config
            run_id = records.run_id_of(resolved)
            run_dir = Path(resolved["runs_dir"]) / run_id
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
            (run_dir / "checkpoint.pt").write_bytes(b"")
            status = "failed" if resolved.get("model", {}).get("name") in fail and self.stage == "pretrain" else "done"
            record = {"run_id": run_id, "status": status, "image_size": resolved["data"]["image_size"],
                      "num_classes": resolved["data"].get("num_classes", 10), "model": resolved["model"]["name"],
                      "family": resolved["model"]["family"], "early_stopped": False, "metrics": {}}
            if status == "failed":
                record["error"] = {"type": "RuntimeError", "message": "non-finite loss"}
            records.atomic_write_json(run_dir / records.RESULT_FILE, record)
            order.append((self.stage, run_id))
            return {"run_id": run_id, "status": status}
    return Job


def test_local_stages_run_children_after_parents_and_block_a_failed_parents(tmp_path, monkeypatch):
    from mixer_scaling.sweep_cli import run_stages

    sweep = load(SWEEP, [f"runs_dir={tmp_path}", NO_WANDB], progress=False)
    stage = sweep.stage
    order: list = []
    Job = _stand_in(order, fail={"bit/micro"})
    monkeypatch.setattr(launch, "job_for", lambda cell: Job("finetune" if getattr(cell, "stage", None) else "pretrain"))
    said: list[str] = []
    p = launch.plan(sweep, "debug")
    states = run_stages(sweep, p, "debug", 1, None, said.append)
    parents = {c.value("model.name"): c.run_id for c in sweep.cells}
    assert [s for s, _ in order] == ["pretrain", "pretrain", "finetune", "finetune"]  # children after parents
    ran = {r for s, r in order if s == "finetune"}
    # The run ids the fine-tunes got from their finished parents are the ones planned before they ran.
    assert ran == {c.run_id for c in stage.children if c.parent.run_id == parents["mixer/micro"]}
    by_id = {s.cell.run_id: s for s in states}
    blocked = [c for c in stage.children if c.parent.run_id == parents["bit/micro"]]
    assert all(by_id[c.run_id].state == stages.BLOCKED for c in blocked)
    assert all(f"parent {parents['bit/micro']} failed" in by_id[c.run_id].detail for c in blocked)
    assert any("2 finetune cells blocked" in line for line in said), said


# ---------------------------------------------------------------------------------------------
# On SLURM: one launch, afterok, blocked, relaunch; then collect and the fine-tuned figure


def _job(cluster, job_id: str) -> dict:
    return cluster.job_info(job_id)


def _stamp(value: str) -> float:
    return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))


def test_two_stage_study_on_slurm(idle_slurm_cluster, tmp_path, capsys, monkeypatch):
    cluster, runs = idle_slurm_cluster, tmp_path / "runs"
    axes = ["model=mixer/micro", "train.lr=0.003,1e6"]  # lr 1e6 diverges: a parent that fails in its job
    base = [f"runs_dir={runs}", NO_WANDB, "--executor", "slurm", f"hydra.launcher.partition={cluster.partition}"]

    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    monkeypatch.setenv("COLUMNS", "200")
    code, dry = main(["sweep", "launch", SWEEP, *base, *axes, "--dry-run"], capsys)
    assert code == 0, dry
    assert "stage 2, finetune: 4 cells; 4 to run" in dry and "cost of stage 2 (finetune), 4 cells" in dry
    assert "afterok" in dry and "nothing submitted" in dry and not (runs / ".sweeps").exists()

    first = cli(["sweep", "launch", SWEEP, *base, *axes], env=cluster.env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "stage 2: submitted 4 finetune cells, 4 of them after their parent's job" in first.stdout, first.stdout
    manifest = [json.loads(l) for l in (runs / ".sweeps" / f"{SWEEP}.jsonl").read_text().splitlines()]
    sweep = load(SWEEP, [f"runs_dir={runs}", NO_WANDB, *axes], progress=False)
    job_of = {e["run_id"]: e["job_id"] for e in manifest}
    children = sweep.stage.children
    for child in children:  # each child's job waits for its parent's job (an array task: <array>_<task>)
        dep = _job(cluster, job_of[child.run_id]).get("Dependency", "")
        assert dep.startswith(f"afterok:{job_of[child.parent.run_id]}"), dep

    deadline = time.monotonic() + 150
    while cluster.squeue() and time.monotonic() < deadline:
        time.sleep(1)
    assert not cluster.squeue(), cluster.squeue()
    rows = status(runs, *axes, capsys=capsys)
    by_id = {r["run_id"]: r for r in rows}
    good, bad = (next(c for c in sweep.cells if c.value("train.lr") == lr) for lr in (0.003, 1e6))
    assert by_id[good.run_id]["state"] == "done" and by_id[bad.run_id]["state"] == "failed"
    for child in children:
        row = by_id[child.run_id]
        assert row["stage"] == "finetune" and row["parent_run_id"] == child.parent.run_id
        if child.parent is good:  # started only after its parent's job ended successfully
            assert row["state"] == "done", row
            assert _stamp(_job(cluster, job_of[child.run_id])["StartTime"]) >= \
                _stamp(_job(cluster, job_of[good.run_id])["EndTime"])
        else:  # the parent failed: afterok never holds, the job left the queue without running
            assert row["state"] == "blocked" and f"parent {bad.run_id} failed" in row["detail"], row
            assert not Path(row["run_dir"]).exists()

    # Relaunch of the finished part: nothing to submit. One child lost: only it, with no dependency.
    done_axes = ["model=mixer/micro", "train.lr=0.003"]
    again = cli(["sweep", "launch", SWEEP, *base, *done_axes], env=cluster.env)
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout + again.stderr
    lost = next(c for c in children if c.parent is good)
    rec = records.read_record(lost.run_dir)
    records.atomic_write_json(lost.run_dir / records.RESULT_FILE, {**rec, "status": "failed",
                                                                   "error": {"type": "X", "message": "lost"}})
    n = len((runs / ".sweeps" / f"{SWEEP}.jsonl").read_text().splitlines())
    third = cli(["sweep", "launch", SWEEP, *base, *done_axes], env=cluster.env)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "stage 2: submitted 1 finetune cells, 0 of them after their parent's job" in third.stdout, third.stdout
    new = [json.loads(l) for l in (runs / ".sweeps" / f"{SWEEP}.jsonl").read_text().splitlines()[n:]]
    assert [e["run_id"] for e in new] == [lost.run_id]
    cluster.wait_idle(timeout=120)
    assert records.read_record(lost.run_dir)["status"] == "done"

    # collect joins each fine-tune to its parent; the figure puts the best fine-tune at the parent's compute.
    out = tmp_path / "res"
    code, text = main(["collect", str(runs), "-o", str(out / "results.parquet")], capsys)
    assert code == 0 and "2 fine-tunes joined to their parents" in text, text
    import pandas as pd

    ft = pd.read_parquet(out / "results_finetuned.parquet")
    pre = pd.read_parquet(out / "results.parquet").set_index("run_id")
    assert set(ft["parent_run_id"]) == {good.run_id}
    assert (ft["pretrain_flops"] == pre.loc[good.run_id, "pretrain_flops"]).all()
    assert sorted(ft["finetune.train.lr"]) == [0.01, 0.03] and (ft["model"] == "mixer/micro").all()
    figs = tmp_path / "figs"
    code, text = main(["figures", str(out / "results.parquet"), "-o", str(figs), "--boot", "0"], capsys)
    assert code == 0, text
    pts = pd.read_csv(figs / "pareto_finetuned.csv")
    assert len(pts) == 1 and pts.loc[0, "parent_run_ids"] == good.run_id
    assert pts.loc[0, "x"] == pytest.approx(pre.loc[good.run_id, "pretrain_flops"])
    chosen = ft[ft["finetune.train.lr"] == pts.loc[0, "chosen.finetune.train.lr"]].iloc[0]
    assert chosen["select_top1"] == ft["select_top1"].max()  # chosen on the selection half, reported on the other
    assert pts.loc[0, "y"] == pytest.approx(chosen["val_top1"]) and pts.loc[0, "finetune_run_ids"] == chosen["run_id"]
    # the findings name who holds the fine-tuned frontier (the one family here), without a bootstrap (--boot 0)
    frontier = json.loads((figs / "findings.json").read_text())["frontiers"]["fine-tuned compute"]
    assert frontier["holders"] == ["mixer"] and frontier["families"]["mixer"]["labels"] == [pts.loc[0, "label"]]
    assert "**fine-tuned compute**" in (figs / "findings.md").read_text()


def test_requeued_parent_keeps_its_children_waiting(idle_slurm_cluster, tmp_path):
    """What the second stage relies on, on this SLURM: a parent requeued mid-run (as submitit requeues on
    a time limit or preemption: same job id) keeps an `afterok` child pending until its last attempt ends
    well; a parent that fails takes its child out of the queue (--kill-on-invalid-dep)."""
    cluster = idle_slurm_cluster
    params = {"partition": cluster.partition, "cpus_per_task": 1, "timeout_min": 5, "mem_gb": 1, "max_num_timeout": 3}
    parent_ex = launch.make_executor("slurm", params, tmp_path / "logs" / "%j", "stages-requeue")
    parent_ex.update_parameters(slurm_additional_parameters={"requeue": True})
    parent = parent_ex.submit(time.sleep, 4)
    child_ex = launch.make_executor("slurm", launch.dependency(params, parent.job_id), tmp_path / "logs" / "%j",
                                    "stages-requeue")
    child = child_ex.submit(time.sleep, 0)
    cluster.wait_state(parent.job_id, ["RUNNING"], timeout=60)
    time.sleep(1)
    cluster.run("scontrol", "requeue", parent.job_id)  # what submitit does on a time limit or preemption
    cluster.wait_state(parent.job_id, ["PENDING", "REQUEUED", "REQUEUE_HOLD", "RUNNING"], timeout=30)
    info = cluster.job_info(child.job_id)  # still waiting for the requeued parent, dependency intact
    assert info["JobState"] == "PENDING" and info["Dependency"] == f"afterok:{parent.job_id}(unfulfilled)", info
    cluster.wait_state(parent.job_id, ["COMPLETED"], timeout=90)
    assert int(cluster.job_info(parent.job_id)["Restarts"]) >= 1
    cluster.wait_state(child.job_id, ["COMPLETED"], timeout=60)
    assert _stamp(cluster.job_info(child.job_id)["StartTime"]) >= _stamp(cluster.job_info(parent.job_id)["EndTime"])

    failing = parent_ex.submit(time.sleep, "not a number")  # fails at once
    orphan = launch.make_executor("slurm", launch.dependency(params, failing.job_id), tmp_path / "logs" / "%j",
                                  "stages-requeue").submit(time.sleep, 0)
    cluster.wait_idle(timeout=60)
    assert cluster.job_info(orphan.job_id)["JobState"] in ("CANCELLED", "FAILED"), cluster.job_info(orphan.job_id)
