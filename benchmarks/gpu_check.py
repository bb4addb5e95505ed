"""The GPU check: does the path a real study takes work on this GPU, and how fast is it? One results file.

    bash benchmarks/gpu_check.sh            # on a machine with one NVIDIA GPU (sets up what is missing)
    bash benchmarks/gpu_check.sh --cpu      # the same sections, tiny, on the CPU (a smoke test; no GPU needed)
    python benchmarks/gpu_check.py [--cpu] [--out FILE] [--only train,speed,...]

Sections, each timed and recorded even when another one fails (the file is rewritten after each):

``train``     a short real run of each family through ``python -m mixer_scaling.train`` started by
              ``torch.distributed.run`` as a world of one (NCCL on a GPU, gloo on the CPU), bf16 where
              the device has it: stopped by SIGTERM after its first checkpoint, then resumed to the end;
              checked: the stop saves a checkpoint, the record is ``done`` after two attempts, the second resumed at
              the checkpoint's step.
``speed``     a training step (forward, loss, backward, AdamW, as a run does it) of Mixer-B/16, ViT-B/16
              and BiT-R50x1 at 224, eager and ``torch.compile``-d: img/s and MFU against a bf16 matmul
              peak timed interleaved with the steps in the same run.
``inference`` img/s of the three at 224, batch swept, and the Mixer/ViT ratio beside the paper's 1.61.
``memory``    peak GPU memory of one training step of each (``torch.cuda.max_memory_allocated``) beside
              the micro-batch planner's estimate (:func:`mixer_scaling.memory.estimate`).
``data``      images per second from shards (packed here from generated images at 224) through the
              training loader with the machine's CPU cores as workers.

``--cpu`` runs every section on tiny models at 32 px in seconds (compilation included when a C compiler
is present): it is how the tests keep this script working between the sessions that have a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import date, datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, interleave, machine_info, matmul_fn, median, train_step_fn  # noqa: E402

import torch  # noqa: E402

SECTIONS = ("train", "speed", "inference", "memory", "data")
PAPER_MIXER_OVER_VIT = 1.61  # Mixer-B/16 1384 vs ViT-B/16 861 img/s/core (paper Table 2, TPU-v3)


class Setup:
    """What each section runs on: the GPU at full size, or the CPU smoke at tiny size."""

    def __init__(self, cpu: bool):
        self.cpu = cpu
        self.device = torch.device("cpu" if cpu else "cuda")
        self.image_size = 32 if cpu else 224
        # speed/inference/memory: the paper's Table 2 models (GPU) or their micro twins (CPU smoke)
        self.models = ({"mixer": "mixer/micro", "vit": "vit/micro", "bit": "bit/micro"} if cpu else
                       {"mixer": "mixer/b16", "vit": "vit/b16", "bit": "bit/r50x1"})
        self.batch = 8 if cpu else 128
        self.repeats = 3 if cpu else 10
        self.infer_batches = (8, 32) if cpu else (32, 128, 512)
        self.mm_n = 512 if cpu else 8192
        self.data_images = 256 if cpu else 4096
        # train: enough steps that the stop lands mid-run (GPU steps of a micro model take milliseconds)
        self.train_examples = 512 if cpu else 65536

    @property
    def precision(self) -> str:
        from mixer_scaling import precision

        return precision.resolve("auto", self.device)


# --- train: real runs through the entry point, stopped and resumed ---------------------------------------

def _train_cmd(model: str, runs_dir: Path, s: Setup) -> list[str]:
    overrides = [f"model={model}", f"runs_dir={runs_dir}", f"device={s.device.type}", "wandb.mode=disabled",
                 "progress=false", f"train.examples_seen={s.train_examples}", "train.batch_size=32",
                 "train.log_every=1",
                 "train.checkpoint_every=4", "train.eval_every_examples=0", "train.warmup_steps=4",
                 "fewshot.shots=[1]", "fewshot.seeds=[0]", "eval.throughput_batch_sizes=[8]",
                 "eval.throughput_repeats=1"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
            "-m", "mixer_scaling.train", *overrides]


def _wait_for_checkpoint(run_root: Path, proc: subprocess.Popen, timeout: float) -> Path | None:
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        for ckpt in run_root.glob("*/checkpoint*.pt"):
            return ckpt.parent
        time.sleep(0.05)
    return None


def check_train(s: Setup, work: Path, families: list[str]) -> dict:
    out = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    for family in families:
        model, runs = f"{family}/micro", work / f"runs-{family}"
        t0 = time.time()
        first = subprocess.Popen(_train_cmd(model, runs, s), cwd=work, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
        run_dir = _wait_for_checkpoint(runs, first, timeout=240)
        if run_dir is not None:  # the whole process group: torch.distributed.run forwards it to its worker
            os.killpg(first.pid, signal.SIGTERM)
        log1 = first.communicate(timeout=240)[0]
        second = subprocess.run(_train_cmd(model, runs, s), cwd=work, env=env, capture_output=True, text=True,
                                timeout=600)
        record = json.loads((run_dir / "result.json").read_text()) if run_dir else {}
        logs = log1 + second.stdout + second.stderr
        found = re.search(r"resuming from step (\d+)", second.stdout + second.stderr)
        resumed_at = int(found.group(1)) if found else None
        # torch.distributed.run itself exits 1 when signalled; its worker says how it stopped
        stopped = "checkpoint saved; rerun the same command to resume" in log1
        ok = (run_dir is not None and stopped and second.returncode == 0
              and record.get("status") == "done" and record.get("attempts") == 2 and bool(resumed_at))
        out[model] = {
            "ok": ok, "seconds": round(time.time() - t0, 1), "stopped_with_checkpoint": stopped,
            "resume_exit": second.returncode, "status": record.get("status"), "attempts": record.get("attempts"),
            "resumed_from_step": resumed_at, "steps": record.get("steps"), "precision": record.get("precision"),
            "process_group": "data parallel: rank 0 of 1" in logs, "upstream_top1": record.get("upstream_top1"),
        }
        if not ok:
            out[model]["log_tail"] = logs[-3000:]
    return out


# --- speed: training steps eager and compiled against a matmul peak ------------------------------------

def _model(name: str, s: Setup, num_classes: int = 1000):
    from mixer_scaling.models import build_model
    from mixer_scaling.precision import cpu_attention

    with cpu_attention(s.device):
        return build_model({"name": name}, num_classes=num_classes, image_size=s.image_size).to(s.device)


def _train_cfg():
    from omegaconf import OmegaConf

    return OmegaConf.create({"optimizer": "adamw", "betas": [0.9, 0.999], "lr": 1e-3, "weight_decay": 0.03,
                             "momentum": None, "label_smoothing": 0.0, "grad_clip": 1.0})


def check_speed(s: Setup, backend: str) -> dict:
    from mixer_scaling.models import forward_flops

    prec = s.precision
    mm, mm_flops = matmul_fn(s.device, torch.bfloat16 if prec == "bf16" else torch.float32, s.mm_n)
    out: dict = {"precision": prec, "batch": s.batch, "image_size": s.image_size, "compile_backend": backend}
    for family, name in s.models.items():
        x = torch.randn(s.batch, 3, s.image_size, s.image_size, device=s.device)
        y = torch.randint(0, 1000, (s.batch,), device=s.device)
        flops = 3 * forward_flops(name, s.image_size, 1000) * s.batch
        row: dict = {"train_flops_per_step": flops}
        for mode in ("eager", "compiled"):
            model = _model(name, s)
            t0 = time.time()
            if mode == "compiled":
                model = torch.compile(model, backend=backend)
            step = train_step_fn(model, _train_cfg(), x, y, s.device, prec)
            step()  # the optimizer's state, and the compilation
            warm = time.time() - t0
            times = interleave({"step": step, "mm": mm}, s.repeats, warmup=1, device=s.device)
            peak = mm_flops / median(times["mm"])
            step_s = median(times["step"])
            row[mode] = {"img_per_s": s.batch / step_s, "mfu": flops / step_s / peak,
                         "first_step_s": round(warm, 1)}
            row.setdefault("matmul_peak_tflops", peak / 1e12)
            del model, step
            if s.device.type == "cuda":
                torch.cuda.empty_cache()
        out[name] = row
    return out


# --- inference: the paper's throughput comparison -------------------------------------------------------

def check_inference(s: Setup) -> dict:
    from bench_inference import sweep

    models = {k: _model(n, s).eval() for k, n in s.models.items()}
    per_batch = sweep(models, s.image_size, s.infer_batches, s.device, repeats=s.repeats)
    best = {k: max(v.values()) for k, v in per_batch.items() if v}
    return {"img_per_s": {s.models[k]: v for k, v in best.items()},
            "per_batch": {s.models[k]: v for k, v in per_batch.items()},
            "mixer_over_vit": best["mixer"] / best["vit"], "paper_mixer_over_vit": PAPER_MIXER_OVER_VIT}


# --- memory: measured peak beside the planner's estimate -------------------------------------------------

def check_memory(s: Setup) -> dict:
    """Peak memory of training steps as the loop runs them (gradients set to None before the forward, bf16
    autocast, AdamW) beside :func:`mixer_scaling.memory.estimate` of the same step, which counts the same
    things: weights, gradients, optimizer state, activations and the batch on the device."""
    from mixer_scaling import memory
    from mixer_scaling.engine import build_optimizer
    from mixer_scaling.precision import autocast

    out = {}
    for name in s.models.values():
        est = memory.estimate(name, s.image_size, 1000, s.batch, precision=s.precision, optimizer="adamw")
        row = {"batch": s.batch, "estimate_gb": est.total / 1e9,
               "estimate_parts_gb": {k: v / 1e9 for k, v in est.parts().items()}}
        if s.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(s.device)
            base = torch.cuda.memory_allocated(s.device)
            model = _model(name, s).train()
            x = torch.randn(s.batch, 3, s.image_size, s.image_size, device=s.device)
            y = torch.randint(0, 1000, (s.batch,), device=s.device)
            opt = build_optimizer(model, _train_cfg())
            loss_fn = torch.nn.CrossEntropyLoss()
            for _ in range(3):  # the optimizer's state exists from the first step on
                opt.zero_grad(set_to_none=True)
                with autocast(s.device, s.precision):
                    loss = loss_fn(model(x), y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            torch.cuda.synchronize(s.device)
            row["measured_gb"] = (torch.cuda.max_memory_allocated(s.device) - base) / 1e9
            row["estimate_over_measured"] = row["estimate_gb"] / row["measured_gb"]
            del model, x, y, opt, loss
            torch.cuda.empty_cache()
        else:
            row["measured_gb"] = None  # no allocator statistics on the CPU (tests/test_memory_plan.py measures there)
        out[name] = row
    return out


# --- data: shards through the training loader ----------------------------------------------------------

def check_data(s: Setup, work: Path) -> dict:
    import numpy as np
    from PIL import Image

    src = work / "folder"
    rng = np.random.default_rng(0)
    side = int(s.image_size * 1.15)
    for i in range(s.data_images):
        for split in ("train", "val"):
            if split == "val" and i % 8:
                continue
            d = src / split / f"c{i % 10}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(d / f"{i}.jpg", quality=90)
    shards = work / "shards"
    pack = subprocess.run([sys.executable, "-m", "mixer_scaling.cli", "data", "pack", str(src), str(shards),
                           "--image-size", str(side)], capture_output=True, text=True, timeout=600)
    if pack.returncode:
        raise RuntimeError(f"data pack failed: {(pack.stdout + pack.stderr)[-2000:]}")

    from mixer_scaling.data import build_data

    workers = max(1, (os.cpu_count() or 2) - 1)
    cfg = {"name": "shards", "root": str(shards), "fraction": 1.0, "image_size": s.image_size, "seed": 0,
           "flip": True, "crop_scale": [0.08, 1.0], "crop_pct": 0.875, "randaugment": None,
           "num_workers": workers, "shuffle_buffer": 1000, "permutation": None, "permutation_seed": 0,
           "permutation_patch": None}
    bundle = build_data(cfg)
    batch, steps = 64, max(4, s.data_images // 64 * 2)
    loader = bundle.train.train_loader(batch_size=batch, total_steps=steps, seed=0, start_step=0, rank=0,
                                       world_size=1, num_workers=workers, collate_fn=bundle.collate_fn,
                                       pin_memory=s.device.type == "cuda")
    it = iter(loader)
    next(it)  # workers started
    t0, n = time.perf_counter(), 0
    for x, _ in it:
        n += len(x)
    seconds = time.perf_counter() - t0
    return {"workers": workers, "cpu_cores": os.cpu_count(), "images": n, "img_per_s": n / seconds,
            "img_per_s_per_worker": n / seconds / workers, "image_size": s.image_size}


# --- the run ---------------------------------------------------------------------------------------------

def _write(path: Path, results: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="tiny smoke run on the CPU (no GPU needed)")
    p.add_argument("--out", type=Path, default=None,
                   help="results file (default: benchmarks/results/gpu_check-<date>-<gpu|cpu>.json)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compiled steps (the tests' smoke run: aot_eager, seconds "
                        "instead of a minute of C++ compilation on 2 cores)")
    p.add_argument("--families", default="mixer,vit,bit", help="the families of the train section")
    args = p.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    only = [x for x in args.only.split(",") if x]
    bad = [x for x in only if x not in SECTIONS]
    if bad:
        print(f"--only={args.only} is not allowed; choose among: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --cpu for the smoke version", file=sys.stderr)
        return 2
    s = Setup(args.cpu)
    out = args.out or RESULTS / f"gpu_check-{date.today().isoformat()}-{'cpu' if args.cpu else 'gpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "mode": "cpu" if args.cpu
                     else "gpu", "machine": machine_info(), "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "sections": {}}
    t_all = time.time()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        for name in only:
            t0 = time.time()
            print(f"[gpu_check] {name} ...", flush=True)
            try:
                fn = {"train": lambda: check_train(s, work, families), "speed": lambda: check_speed(s, args.compile_backend),
                      "inference": lambda: check_inference(s), "memory": lambda: check_memory(s),
                      "data": lambda: check_data(s, work)}[name]
                section = {"ok": True, **fn()}
                if name == "train":
                    section["ok"] = all(v["ok"] for v in section.values() if isinstance(v, dict))
            except Exception as exc:  # a section that breaks is recorded with its cause; the others still run
                section = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            section["seconds"] = round(time.time() - t0, 1)
            results["sections"][name] = section
            results["seconds"] = round(time.time() - t_all, 1)
            _write(out, results)
            print(f"[gpu_check] {name}: {'ok' if section['ok'] else 'FAILED ' + section.get('error', '')} "
                  f"({section['seconds']} s)", flush=True)
    print(f"[gpu_check] wrote {out} ({results['seconds']} s)")
    return 0 if all(v["ok"] for v in results["sections"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
