"""One pre-training run: ``python -m mixer_scaling.train [overrides]`` (a Hydra app, see conf/config.yaml).

Data flows one way: config → build (model, data) → train (:mod:`.engine`) → evaluate (val top-1,
few-shot, throughput) → record (``result.json``, ``metrics.jsonl``, W&B). Everything that can fail on
bad input is built before the run directory exists, so a bad config leaves nothing behind. Started as
several processes it trains data parallel (:mod:`.distributed`): rank 0 alone records; upstream
validation and few-shot feature extraction are split across the ranks (each a disjoint part, combined
exactly), inference throughput is measured on rank 0.

The device options ``train.tf32``, ``train.channels_last`` (:mod:`.precision`) and ``train.compile``
(:mod:`.engine`) change how fast a run computes, not what (up to TF32's rounding of fp32 products); the
record holds each resolved value (``tf32``, ``channels_last``, ``compile``) next to ``precision``.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__, checkpoint, columns, distributed, locks, precision, records, score
from .config import PRIMARY, check_overrides, validate
from .data import build_data, build_fewshot_sets
from .data.fingerprint import data_fingerprints
from .engine import SELECT_KEY, Interrupted, Loop
from .errors import EXIT_USAGE, ConfigError, CorruptFile, UserError
from .evaluate.classify import split_top1
from .evaluate.downstream import evaluate_fewshot
from .evaluate.throughput import inference_throughput
from .models import build_model, count_params, forward_flops, get_spec
from .paths import check_folder
from .stream import total_steps
from .records import DONE, FAILED, INTERRUPTED, RUNNING, MetricsLog, Record, read_record, record_failure, run_id_of
from .tracking import Tracker

log = logging.getLogger("mixer_scaling.train")

EXIT_INTERRUPTED = 75
RANK_EXIT_GRACE_S = 120  # how long ranks > 0 of a stopped SLURM job wait for rank 0's requeue  # EX_TEMPFAIL: stopped by a signal, checkpoint saved, rerun to resume


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
    extra: dict = field(default_factory=dict)  # record fields a variant adds or replaces (a fine-tune: its parent)
    precision: str = "fp32"  # resolved train.precision (bf16 or fp32): training and evaluation alike
    tf32: bool = False       # resolved train.tf32: fp32 matrix products in TF32 (CUDA, fp32 runs)
    channels_last: bool = False  # resolved train.channels_last: the model's weights stored channels-last
    compile: bool = False    # train.compile: training runs torch.compile of the model


def build(cfg: DictConfig, device: torch.device) -> Built:
    seed_everything(cfg.seed)  # the same on every rank: the same initial weights
    data = build_data(cfg.data)
    fewshot_sets = build_fewshot_sets(cfg.fewshot, data.image_size, cfg.data)
    model = build_model(cfg.model, num_classes=data.num_classes, image_size=data.image_size).to(device)
    return Built(model, data, fewshot_sets, device)


def describe(cfg: DictConfig, built: Built, run_id: str) -> dict:
    """The static part of the record: what is trained, on what, for how long.

    ``examples_seen`` is the configured budget; a run trains ``steps`` = ceil(examples_seen / batch)
    whole global batches, so ``examples_trained`` = steps × batch (at least the budget), and ``epochs``
    and ``train_flops`` (3 × forward FLOPs per image × examples_trained) count what was trained."""
    spec = get_spec(cfg.model.name)
    d, t = built.data, cfg.train
    config = OmegaConf.to_container(cfg, resolve=True)
    steps = total_steps(int(t.examples_seen), int(t.batch_size))
    examples_trained = steps * int(t.batch_size)
    fields = {
        "run_id": run_id,
        "run_dir": str(Path(cfg.runs_dir) / run_id),
        "study": cfg.study,
        "config": config,
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
        "examples_trained": examples_trained,
        "batch_size": int(t.batch_size),
        "steps": steps,
        "epochs": examples_trained / d.train_size,
        "data_fingerprint": data_fingerprints(config),
        "seed": int(cfg.seed),
        "precision": built.precision,
        "tf32": built.tf32,
        "channels_last": built.channels_last,
        "compile": built.compile,
        "device": torch.cuda.get_device_name(built.device) if built.device.type == "cuda" else platform.processor() or "cpu",
        "num_devices": distributed.world_size(),  # one device per rank
        "world_size": distributed.world_size(),
        "versions": {"mixer_scaling": __version__, "torch": torch.__version__,
                     "timm": __import__("timm").__version__, "python": platform.python_version()},
        **built.extra,
    }
    fields["train_flops"] = 3.0 * float(fields["flops_per_image"]) * examples_trained  # forward + backward
    return fields


def device_options(cfg: DictConfig, built: Built) -> None:
    """Resolve ``train.tf32``, ``train.channels_last`` and ``train.compile`` for ``built`` (its model on its
    device, its precision resolved) and apply the first two: TF32 process-wide, channels-last to the model
    (training and evaluation alike). Compiling is the training loop's (:class:`.engine.Loop`)."""
    t, device = cfg.train, built.device
    built.tf32 = precision.tf32(t.get("tf32", True), device, built.precision)
    precision.set_tf32(device, built.tf32)
    built.channels_last = precision.channels_last(t.get("channels_last", "auto"), get_spec(cfg.model.name).family,
                                                  device)
    if built.channels_last:
        built.model.to(memory_format=torch.channels_last)
    built.compile = bool(t.get("compile", False))


def upstream_top1(cfg: DictConfig, built: Built, half: str) -> float:
    """Top-1 on one half of the validation split: ``select`` (chooses) or ``report`` (is reported). Split
    across the ranks of a data-parallel run: every rank calls it and gets the same number."""
    data = built.data
    return split_top1(built.model, getattr(data, half), built.device, int(cfg.eval.batch_size), data.collate_fn,
                      bf16=built.precision == "bf16", num_workers=int(cfg.data.get("num_workers", 0)),
                      rank=distributed.rank(), world_size=distributed.world_size())


def evaluate(cfg: DictConfig, built: Built) -> tuple[dict | None, dict | None]:
    """Upstream val top-1 (the report half), few-shot accuracies per set and k, and inference throughput.

    Every rank of a data-parallel run calls it: validation and few-shot features are split across them,
    throughput is measured on rank 0 alone. Rank 0 gets ``(metrics, throughput)``, the others ``(None, None)``."""
    model, data, device = built.model, built.data, built.device
    bf16 = built.precision == "bf16"
    rank, ranks = distributed.rank(), distributed.world_size()
    metrics = {"val_top1": upstream_top1(cfg, built, "report")}
    metrics["fewshot"] = evaluate_fewshot(model, built.fewshot_sets, cfg.fewshot, device,
                                          batch_size=cfg.eval.batch_size, bf16=bf16,
                                          num_workers=int(cfg.data.get("num_workers", 0)), rank=rank,
                                          world_size=ranks) if built.fewshot_sets else {}
    if rank != 0:
        return None, None
    throughput = inference_throughput(model, data.image_size, device, cfg.eval.throughput_batch_sizes,
                                      repeats=cfg.eval.throughput_repeats, bf16=bf16)
    return metrics, throughput


def _evaluate_reported(cfg: DictConfig, built: Built, best: dict | None) -> tuple[dict | None, dict | None]:
    """Every rank, once training is over: rank 0's reported weights (``best``: its choice, see
    :func:`_best_weights`; None on the other ranks) to every rank, the selection-half top-1 where the choice
    has none, then :func:`evaluate`. Rank 0 gets ``(metrics, throughput)`` with ``select_top1`` in the
    metrics, the others ``(None, None)``."""
    # First through the CPU group: a rank 0 that failed before this makes the others fail here at once.
    need_select = distributed.from_main(best is not None and best["select_top1"] is None)
    distributed.share_weights(built.model)
    select = upstream_top1(cfg, built, "select") if need_select else None
    metrics, throughput = evaluate(cfg, built)
    if metrics is not None:
        chosen = best.pop("select_top1")
        metrics["select_top1"] = select if chosen is None else chosen
    return metrics, throughput


def run(cfg: DictConfig, build_fn: Callable[[DictConfig, torch.device], Built] = build) -> dict:
    """Train and evaluate one config, resuming or skipping as its run directory says. Returns the record.

    ``build_fn`` makes what is trained (default :func:`build`; a fine-tune loads its parent's weights,
    see :mod:`.finetune`); it runs on every rank, before the run directory exists.

    Started as several processes (the tasks of a SLURM job, torchrun) it trains data parallel: rank 0
    writes the run directory, evaluates and returns the record; the other ranks train their share, wait
    for rank 0 and return the record it wrote, read from disk.

    Rank 0 is the run directory's one writer: it holds ``<run_dir>/.lock`` (:mod:`.locks`) from after the
    build to the end of the attempt. Held by another live process, the run is not started
    (:class:`.locks.RunLocked`, one line naming the holder) or, with ``wait_for_lock=true``, starts once
    that process has ended (and returns its record if it finished the run).
    """
    validate(cfg)
    run_id = run_id_of(cfg)
    run_dir = Path(cfg.runs_dir) / run_id
    try:
        previous = read_record(run_dir)
    except CorruptFile:  # rank 0 moves it aside and starts a new record (Record.open)
        previous = None
    if previous and previous.get("status") == DONE:
        return _done(cfg, run_dir, previous)
    check_folder(str(cfg.runs_dir), "runs_dir")  # before anything is built or written

    device = resolve_device(str(cfg.device))
    computes_in = precision.resolve(str(cfg.train.precision), device)
    with distributed.launched(device) as device:
        ranks = distributed.world_size()
        accum = int(cfg.train.get("accum_steps", 1))
        if cfg.train.batch_size % (ranks * accum):
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not allowed; expected a multiple of "
                              f"the {ranks} data-parallel ranks × train.accum_steps={accum}")
        with distributed.main_first(), precision.cpu_attention(device):  # downloads once, not once per rank
            built = build_fn(cfg, device)
        built.precision = computes_in
        device_options(cfg, built)
        # One writer per run directory (see .locks): rank 0 holds <run_dir>/.lock for the whole attempt,
        # taken before anything there is read and rewritten; every rank follows what it found.
        lock, verdict = None, "train"
        if distributed.is_main():
            try:
                lock = locks.hold_run(run_dir, run_id, wait=bool(cfg.get("wait_for_lock", False)))
                verdict = "done" if _is_done(run_dir) else "train"  # the other writer may have finished meanwhile
            except locks.RunLocked as exc:
                verdict = str(exc)
        verdict = distributed.gather(verdict)[0]
        try:
            if verdict == "done":
                return _done(cfg, run_dir, read_record(run_dir), lock)
            if verdict != "train":
                raise locks.RunLocked(verdict)
            if distributed.is_main():
                return _lead(cfg, built, run_id, run_dir, lock)
            return _follow(cfg, built, run_dir)
        finally:
            if lock is not None:
                lock.release()


def _done(cfg: DictConfig, run_dir: Path, record: dict, lock: locks.Lock | None = None) -> dict:
    """A done run is not retrained. What its config asks to be evaluated on and its record lacks (a new
    few-shot set, more shots: evaluation is not identity) is scored from its weights (:mod:`.score`), by
    rank 0 alone, holding the run's lock (``lock``: already held)."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    todo = score.missing(record, tree)
    if not todo or distributed.launch_rank() != 0:
        log.info("run %s is done (%s); not retraining", run_dir.name, run_dir)
        return record
    log.info("run %s is done (%s); not retraining, scoring it on %s", run_dir.name, run_dir,
             score.describe_missing(todo))
    return score.score_run(run_dir, tree, wait=bool(cfg.get("wait_for_lock", False)), lock_held=lock is not None)[0]


def _is_done(run_dir: Path) -> bool:
    try:
        return (read_record(run_dir) or {}).get("status") == DONE
    except CorruptFile:
        return False


def _loop(cfg: DictConfig, built: Built, run_dir: Path, **callbacks) -> Loop:
    """The training loop of every rank; upstream validation (``on_eval``) is split across them."""
    return Loop(
        model=built.model, train_set=built.data.train, collate_fn=built.data.collate_fn,
        num_classes=built.data.num_classes, cfg=cfg.train, seed=int(cfg.seed), device=built.device,
        precision=built.precision, compile=built.compile,
        on_eval=lambda step: {SELECT_KEY: upstream_top1(cfg, built, "select")},
        ckpt_path=run_dir / records.CHECKPOINT_FILE, num_workers=int(cfg.data.get("num_workers", 0)),
        progress=bool(cfg.progress), rank=distributed.rank(), world_size=distributed.world_size(), **callbacks,
    )


def _lead(cfg: DictConfig, built: Built, run_id: str, run_dir: Path, lock: locks.Lock | None = None) -> dict:
    """Rank 0 (the only rank of a single-process run), holding the run directory's lock: train, evaluate
    and record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    records.atomic_write_bytes(run_dir / records.CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True).encode())
    static = describe(cfg, built, run_id)
    record = Record.open(run_dir, static)
    record.fields.pop("error", None)
    if lock is not None and lock.problem:
        record.note(lock.problem)
    if slurm_job():
        record.update(slurm_jobs=[*record.fields.get("slurm_jobs", []), slurm_job()])
    record.save(RUNNING)
    log.info("run %s: %s on %s (fraction %g, %d examples, %.1f epochs) → %s", run_id, static["model"],
             static["dataset"], static["fraction"], static["examples_trained"], static["epochs"], run_dir)

    tracker = Tracker.start(cfg.wandb, run_id=run_id, run_dir=run_dir, config=static["config"],
                            compare=columns.compare_config(static),
                            name=f"{'ft-' if static.get('parent_run_id') else ''}"
                                 f"{static['family']}-{static['size']}-f{static['fraction']:g}-s{cfg.seed}",
                            tags=[static["family"], static["size"], f"fraction={static['fraction']:g}"])
    record.update(wandb=tracker.info)
    if tracker.problem:
        record.note(tracker.problem)
    metrics_log = MetricsLog(run_dir)

    def on_log(row: dict) -> None:
        metrics_log.append(row)
        tracker.log(columns.history_row(row, static["flops_per_image"]), step=row["step"])  # + flops

    loop = _loop(
        cfg, built, run_dir, on_log=on_log, best_path=run_dir / records.BEST_CHECKPOINT_FILE,
        on_resume=lambda start, problems: _resumed(record, metrics_log, start, problems),
    )
    try:
        counters = loop.run()
        record.update(**_cost(counters, static["num_devices"]))
        best = _best_weights(cfg, built, run_dir, counters, record)
        metrics, throughput = _evaluate_reported(cfg, built, best)
        record.update(metrics=metrics, throughput=throughput["img_per_s"], throughput_detail=throughput,
                      evaluation=score.requested(static["config"]),
                      finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **best)
        record.fields.pop("interrupted_at_step", None)  # an earlier attempt's stop: history, not this state
        record.save(DONE)
    except Interrupted as stop:
        record.update(**_cost(loop.counters, static["num_devices"]), interrupted_at_step=stop.step)
        record.save(INTERRUPTED)
        tracker.finish(0)
        distributed.barrier()  # the other ranks exit once the record is written (see _follow)
        # Inside a submitit job this is its checkpoint-and-requeue handler: the job comes back and resumes.
        stop.hand_over()
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":  # a signal submitit lets pass (scancel's SIGTERM):
            log.warning("interrupted: %s", stop)  # one line, not an exception submitit logs with a traceback
            raise SystemExit(EXIT_INTERRUPTED) from None
        raise
    except BaseException as exc:
        # No barrier: the other ranks fail as soon as this one leaves the process group.
        record.update(**_cost(loop.counters, static["num_devices"]),
                      error={"type": type(exc).__name__, "message": str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                             "traceback": traceback.format_exc()})
        record.save(FAILED)
        tracker.finish(1)
        raise
    tracker.summary(_flat_summary(record.fields))
    tracker.finish(0)
    # The other ranks return the record once it is written (see _follow). After the try: a rank that died
    # meanwhile makes this raise, but cannot turn a done record into a failed one.
    distributed.barrier()
    return record.fields


def _best_weights(cfg: DictConfig, built: Built, run_dir: Path, counters: dict, record: Record) -> dict:
    """Early stopping (paper §3.3): load the weights of the step that was best on the selection half of
    upstream validation, so every reported metric comes from them. Without an evaluation cadence the
    final weights are the only candidates. Returns the record fields that say what was chosen, and its
    ``select_top1`` (None for the final weights: :func:`_evaluate_reported` computes it). Rank 0 alone."""
    steps = int(record["steps"])
    curve = [{"step": s, "examples": e, "select_top1": v} for s, e, v in counters.get("curve", [])]
    if "best_step" in counters:
        state, problems = checkpoint.load_weights_of(run_dir / records.BEST_CHECKPOINT_FILE, counters["best_step"])
        for problem in problems:
            record.note(problem)
        if state is not None:
            built.model.load_state_dict(state["model"])
            return {"best_step": int(state["step"]), "early_stopped": int(state["step"]) < steps,
                    "upstream_curve": curve, "select_top1": float(state["score"])}
        record.note("the final weights are reported instead of the best ones")
    return {"best_step": steps, "early_stopped": False, "upstream_curve": curve, "select_top1": None}


def _resumed(record: Record, metrics_log: MetricsLog, start: int, problems: list[str]) -> None:
    # Lines logged after the checkpoint by an attempt that was cut off are dropped.
    metrics_log.truncate_after(start)
    for problem in problems:
        record.note(problem)
    if problems:
        record.save()


def _follow(cfg: DictConfig, built: Built, run_dir: Path) -> dict | None:
    """Any other rank: train its share, evaluate its share of rank 0's reported weights, then wait until
    rank 0 has written the record."""
    try:
        _loop(cfg, built, run_dir).run()
    except Interrupted as stop:
        distributed.barrier()  # rank 0 records the interruption
        stop.hand_over()  # submitit's handler does nothing on these ranks; requeueing is rank 0's
        if "SLURM_JOB_ID" in os.environ:
            # Exiting now could make srun kill rank 0 before it has requeued the job (KillOnBadExit):
            # wait for SLURM to end this step instead, as submitit does on its non-zero ranks.
            time.sleep(RANK_EXIT_GRACE_S)
        raise
    _evaluate_reported(cfg, built, None)
    distributed.barrier()
    return read_record(run_dir)


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
    device_seconds = float(counters.get("device_seconds", seconds * num_devices))  # older checkpoints lack it
    return {"train_seconds": seconds, "device_hours": device_seconds / 3600.0,
            "train_img_per_s": counters.get("examples", 0) / seconds if seconds else None,
            "eval_seconds": float(counters.get("eval_seconds", 0.0))}


def _flat_summary(fields: dict) -> dict:
    """The record's scalars and metrics under the names :mod:`.columns` gives them, so a W&B
    project alone can rebuild the results table (:func:`.analysis.results.row_from_wandb`)."""
    return columns.wandb_summary(fields)


def app_body(job: Callable[[], object], config_of_failure: Callable[[], DictConfig | None]) -> None:
    """What a Hydra app does with its run ``job``. In a multirun a cell raises rather than exits, so Hydra
    records it as failed and goes on with the other cells (failing the sweep at the end), and its
    result.json says why even if it failed before training; a cell whose run directory another live
    process holds is not a failure (one line; Hydra counts the job as completed). A single run turns bad
    input into one line and exit 2, a stop signal into exit 75, a run held by another process into one
    line and exit 69 (:data:`.locks.EXIT_BUSY`)."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        try:
            job()
        except locks.RunLocked as exc:  # running elsewhere: not this cell's failure, and its record is not ours
            print(f"error: {exc}", file=sys.stderr)
            return
        except Interrupted:  # checkpointed and recorded as interrupted: it resumes, it did not fail
            raise
        except Exception as exc:
            cfg = config_of_failure()
            if cfg is not None:
                record_failure(cfg, exc)
            raise
        return
    try:
        job()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except Interrupted as stop:
        print(f"interrupted: {stop}; rerun the same command to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except locks.RunLocked as exc:  # another live process is this run's writer
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(locks.EXIT_BUSY)


@hydra.main(version_base="1.3", config_path="pkg://mixer_scaling.conf", config_name=PRIMARY)
def _app(cfg: DictConfig) -> None:
    app_body(lambda: run(cfg), lambda: cfg)


HYDRA_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                    "--version", "--resolve", "-p", "--package"}


def guarded_main(app, check) -> None:
    """Run a Hydra ``app`` after ``check`` has composed and validated its command line: bad input is one
    line and exit 2 before Hydra creates anything (Hydra's own info flags go straight through)."""
    args = sys.argv[1:]
    if not HYDRA_INFO_FLAGS.intersection(args):
        try:
            check(args)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
    app()


def main() -> None:
    guarded_main(_app, check_overrides)


if __name__ == "__main__":
    main()
