"""One pre-training run: ``python -m mixer_scaling.train [overrides]`` (a Hydra app, see conf/config.yaml).

Data flows one way: config → build (model, data) → train (:mod:`.engine`) → evaluate (val top-1,
few-shot, throughput) → record (``result.json``, ``metrics.jsonl``, W&B). Everything that can fail on
bad input is built before the run directory exists, so a bad config leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__, records
from .config import CONF_DIR, PRIMARY, check_overrides, validate
from .data import build_data, build_fewshot_sets
from .engine import Interrupted, Loop
from .errors import EXIT_USAGE, UserError
from .evaluate.classify import ordered_loader, top1
from .evaluate.downstream import evaluate_fewshot
from .evaluate.throughput import inference_throughput
from .models import build_model, count_params, forward_flops, get_spec
from .records import DONE, FAILED, INTERRUPTED, RUNNING, MetricsLog, Record, read_record, run_id_of
from .tracking import Tracker

log = logging.getLogger("mixer_scaling.train")

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped by a signal, checkpoint saved, rerun to resume


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name!r} is not available on this machine (no CUDA); use device=cpu or auto")
    return device


@dataclass
class Built:
    """What a run trains and evaluates, built (and so validated) before anything is written."""

    model: torch.nn.Module
    data: object
    fewshot_sets: dict
    device: torch.device


def build(cfg: DictConfig) -> Built:
    seed_everything(cfg.seed)
    device = resolve_device(str(cfg.device))
    data = build_data(cfg.data)
    fewshot_sets = build_fewshot_sets(cfg.fewshot, data.image_size, cfg.data)
    model = build_model(cfg.model, num_classes=data.num_classes, image_size=data.image_size).to(device)
    return Built(model, data, fewshot_sets, device)


def describe(cfg: DictConfig, built: Built, run_id: str) -> dict:
    """The static part of the record: what is trained, on what, for how long."""
    spec = get_spec(cfg.model.name)
    d, t = built.data, cfg.train
    return {
        "run_id": run_id,
        "run_dir": str(Path(cfg.runs_dir) / run_id),
        "study": cfg.study,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model": spec.name,
        "family": spec.family,
        "size": spec.size,
        "patch": spec.patch,
        "image_size": d.image_size,
        "params": count_params(built.model),
        "params_backbone": count_params(built.model, head=False),
        "flops_per_image": forward_flops(spec.name, d.image_size, num_classes=d.num_classes),
        "dataset": cfg.data.name,
        "num_classes": d.num_classes,
        "fraction": float(cfg.data.fraction),
        "train_size": d.train_size,
        "full_size": d.full_size,
        "examples_seen": int(t.examples_seen),
        "batch_size": int(t.batch_size),
        "steps": -(-int(t.examples_seen) // int(t.batch_size)),
        "epochs": t.examples_seen / d.train_size,
        "seed": int(cfg.seed),
        "device": torch.cuda.get_device_name(built.device) if built.device.type == "cuda" else platform.processor() or "cpu",
        "num_devices": 1,
        "versions": {"mixer_scaling": __version__, "torch": torch.__version__,
                     "timm": __import__("timm").__version__, "python": platform.python_version()},
    }


def evaluate(cfg: DictConfig, built: Built) -> tuple[dict, dict]:
    """Upstream val top-1, few-shot accuracies per set and k, and inference throughput."""
    model, data, device = built.model, built.data, built.device
    bf16 = device.type == "cuda"
    val_loader = ordered_loader(data.val, cfg.eval.batch_size, data.collate_fn)
    metrics = {"val_top1": top1(model, val_loader, device, bf16)}
    metrics["fewshot"] = evaluate_fewshot(model, built.fewshot_sets, cfg.fewshot, device,
                                          batch_size=cfg.eval.batch_size, bf16=bf16)
    throughput = inference_throughput(model, data.image_size, device, cfg.eval.throughput_batch_sizes,
                                      repeats=cfg.eval.throughput_repeats, bf16=bf16)
    return metrics, throughput


def run(cfg: DictConfig) -> dict:
    """Train and evaluate one config, resuming or skipping as its run directory says. Returns the record."""
    validate(cfg)
    run_id = run_id_of(cfg)
    run_dir = Path(cfg.runs_dir) / run_id
    previous = read_record(run_dir)
    if previous and previous.get("status") == DONE:
        log.info("run %s is done (%s); not retraining", run_id, run_dir)
        return previous

    built = build(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    records.atomic_write_bytes(run_dir / records.CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True).encode())
    static = describe(cfg, built, run_id)
    record = Record.open(run_dir, static)
    record.fields.pop("error", None)
    if slurm_job():
        record.update(slurm_jobs=[*record.fields.get("slurm_jobs", []), slurm_job()])
    record.save(RUNNING)
    log.info("run %s: %s on %s (fraction %g, %d examples, %.1f epochs) → %s", run_id, static["model"],
             static["dataset"], static["fraction"], static["examples_seen"], static["epochs"], run_dir)

    tracker = Tracker.start(cfg.wandb, run_id=run_id, run_dir=run_dir, config=static["config"],
                            name=f"{static['family']}-{static['size']}-f{static['fraction']:g}-s{cfg.seed}",
                            tags=[static["family"], static["size"], f"fraction={static['fraction']:g}"])
    record.update(wandb=tracker.info)
    metrics_log = MetricsLog(run_dir)

    def on_log(row: dict) -> None:
        metrics_log.append(row)
        tracker.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    loop = Loop(
        model=built.model, train_set=built.data.train, collate_fn=built.data.collate_fn,
        num_classes=built.data.num_classes, cfg=cfg.train, seed=int(cfg.seed), device=built.device,
        ckpt_path=run_dir / records.CHECKPOINT_FILE, on_log=on_log,
        on_eval=lambda step: {"val/top1": top1(built.model, ordered_loader(
            built.data.val, cfg.eval.batch_size, built.data.collate_fn), built.device)},
        # lines logged after the checkpoint by an attempt that was cut off are dropped
        on_resume=metrics_log.truncate_after,
        num_workers=int(cfg.data.get("num_workers", 0)), progress=bool(cfg.progress),
    )
    try:
        counters = loop.run()
        record.update(**_cost(counters, static["num_devices"]))
        metrics, throughput = evaluate(cfg, built)
        record.update(metrics=metrics, throughput=throughput["img_per_s"], throughput_detail=throughput,
                      finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        record.save(DONE)
        tracker.summary(_flat_summary(record.fields))
        tracker.finish(0)
        return record.fields
    except Interrupted as stop:
        record.update(**_cost(loop.counters, static["num_devices"]), interrupted_at_step=stop.step)
        record.save(INTERRUPTED)
        tracker.finish(0)
        # Inside a submitit job this is its checkpoint-and-requeue handler: the job comes back and resumes.
        stop.hand_over()
        raise
    except BaseException as exc:
        record.update(**_cost(loop.counters, static["num_devices"]),
                      error={"type": type(exc).__name__, "message": str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                             "traceback": traceback.format_exc()})
        record.save(FAILED)
        tracker.finish(1)
        raise


def slurm_job() -> dict | None:
    """Which SLURM job (array task, restart) this attempt runs in, for the record; None outside SLURM."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return None
    keys = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID",
            "restart_count": "SLURM_RESTART_COUNT", "node": "SLURMD_NODENAME", "ntasks": "SLURM_NTASKS"}
    return {k: env[v] for k, v in keys.items() if v in env}


def _cost(counters: dict, num_devices: int) -> dict:
    seconds = float(counters.get("train_seconds", 0.0))
    return {"train_seconds": seconds, "device_hours": seconds * num_devices / 3600.0,
            "train_img_per_s": counters.get("examples", 0) / seconds if seconds else None}


def _flat_summary(fields: dict) -> dict:
    """The record's scalars, so a W&B project alone can rebuild the results table (analysis.collect_wandb)."""
    out = {k: v for k, v in fields.items() if isinstance(v, (int, float, str)) and k != "run_dir"}
    out["val_top1"] = fields["metrics"]["val_top1"]
    for name, per_k in fields["metrics"].get("fewshot", {}).items():
        for k, acc in per_k.items():
            out[f"fewshot/{name}/{k}shot"] = acc
    return out


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=PRIMARY)
def _app(cfg: DictConfig) -> None:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        # Raise, do not exit: Hydra records the cell as failed (its record says why) and goes on with
        # the other cells, then fails the sweep at the end.
        run(cfg)
        return
    try:
        run(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except Interrupted as stop:
        print(f"interrupted: {stop}; rerun the same command to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


HYDRA_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                    "--version", "--resolve", "-p", "--package"}


def main() -> None:
    args = sys.argv[1:]
    if not HYDRA_INFO_FLAGS.intersection(args):
        try:
            check_overrides(args)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
    _app()


if __name__ == "__main__":
    main()
