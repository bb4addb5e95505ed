"""A run's identity holds its data, not the data's path (issue 16, item 2).

``data.root`` is not part of a run id; a fingerprint of the files there is (names and sizes, ``stat``
only: :mod:`mixer_scaling.data.fingerprint`). A different tree is a different run; the
same tree moved elsewhere is the same run. The embedded data is defined by its config: its run ids are
pinned here (the committed reference results in ``results/cpu_study`` carry them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, run_cli
from mixer_scaling.config import compose
from mixer_scaling.data.fingerprint import image_folder_fingerprint
from mixer_scaling.errors import DataError
from mixer_scaling.records import identity, read_record, run_id_of, run_identity

SMALL = ["model=mixer/micro", "data.size=2000", "data.val_size=500", "train.examples_seen=512",
         "fewshot.datasets=[digits]", "progress=false"]

# Computed when the schema took evaluation settings and the device out of the identity (they changed once
# then, README "Run identity"); they must never change again.
PINNED = {
    "default": ([], "c6508ca1d1"),
    "issue-16 small": (SMALL, "778e6643ea"),
    "demo cell": (["+sweep=demo", "model=mixer/micro", "data.fraction=0.03", "seed=0"], "0b4932a4cc"),
    "cpu_study cell": (["+sweep=cpu_study", "model=bit/micro", "data.fraction=0.03", "seed=0", "train.lr=0.003"],
                       "2919fa931a"),
    # CIFAR's files are checked against torchvision's MD5 sums at every load: the name is the data set
    "cifar10": (["data=cifar10", "data.root=/no/such/cifar"], "5d26f8ab8f"),
}


@pytest.mark.parametrize("name", PINNED)
def test_run_ids_of_data_defined_by_config_are_unchanged(name):
    overrides, expected = PINNED[name]
    cfg = compose(overrides)
    assert run_id_of(cfg) == expected
    assert run_identity(cfg) == identity(cfg)  # nothing added: no fingerprint for the embedded data


def test_the_committed_reference_results_keep_their_run_ids():
    """A row of results/cpu_study/results.csv names the run id its config had; the same config gives it."""
    import pandas as pd

    table = ROOT / "results" / "cpu_study" / "results.csv"
    if not table.exists():
        pytest.skip("no committed reference results here")
    rows = pd.read_csv(table)
    row = rows[(rows.model == "bit/micro") & (rows.fraction == 0.03) & (rows.seed == 0)
               & (rows["train.lr"] == 0.003)].iloc[0]
    assert row.run_id == PINNED["cpu_study cell"][1]


def make_tree(root: Path, per_class: int = 2, classes=("cat", "dog"), splits=("train", "val")) -> Path:
    for split in splits:
        for c, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (20, 20), (60 * i, 80 * c, 30)).save(root / split / cls / f"{i}.png")
    return root


def imagefolder(root: Path, *extra: str):
    return compose(["data=imagefolder", f"data.root={root}", *extra])


def test_imagefolder_id_follows_the_files_not_the_path(tmp_path):
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "b", per_class=3)  # another data set
    moved = tmp_path / "elsewhere" / "a-copy"
    shutil.copytree(a, moved)  # the same data set, somewhere else
    id_a = run_id_of(imagefolder(a))
    assert run_id_of(imagefolder(b)) != id_a
    assert run_id_of(imagefolder(moved)) == id_a
    assert run_identity(imagefolder(a))["data"]["fingerprint"] == image_folder_fingerprint(
        a, {"train": "train", "val": "val"})["digest"]
    assert "root" not in run_identity(imagefolder(a))["data"]

    def changed(edit) -> str:
        tree = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
        shutil.copytree(a, tree)
        edit(tree)
        return run_id_of(imagefolder(tree))

    ids = {
        "a file added": changed(lambda t: shutil.copy(t / "train/cat/0.png", t / "train/cat/9.png")),
        "a file removed": changed(lambda t: (t / "val/dog/1.png").unlink()),
        "a file relabelled": changed(lambda t: (t / "train/cat/1.png").rename(t / "train/dog/7.png")),
        "a file grown": changed(lambda t: open(t / "train/dog/0.png", "ab").write(b"\0" * 10)),
        "a class added": changed(lambda t: make_tree(t, classes=("emu",), splits=("train",))),
        "splits swapped": changed(lambda t: [(t / "train").rename(t / "x"), (t / "val").rename(t / "train"),
                                             (t / "x").rename(t / "val"), (t / "val/cat/0.png").unlink()]),
    }
    assert len(set(ids.values())) == len(ids) and id_a not in ids.values(), ids
    # Not a file ImageFolder loads: not part of the data set
    assert changed(lambda t: (t / "train/cat/notes.txt").write_text("hello")) == id_a


def test_only_names_and_sizes_are_read(tmp_path):
    """No image byte is read: the same names and sizes with other bytes give the same fingerprint (the
    documented limit), and files nobody may read are fingerprinted all the same."""
    a = make_tree(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for f in b.rglob("*.png"):
        f.write_bytes(b"\xff" * f.stat().st_size)
    assert run_id_of(imagefolder(a)) == run_id_of(imagefolder(b))


def test_few_shot_sets_are_evaluation_not_identity(tmp_path):
    """Which few-shot sets a run is scored on, and where their files are, never changes its id: a new set
    scores the finished run (``mixer-scaling evaluate``), it does not retrain it."""
    a, b = make_tree(tmp_path / "a"), make_tree(tmp_path / "b", per_class=3)
    ids = {run_id_of(compose(["fewshot.datasets=[digits,imagefolder]", f"fewshot.root={r}"])) for r in (a, b)}
    assert ids == {run_id_of(compose(["fewshot.datasets=[digits]"]))}


def test_a_missing_root_or_split_is_the_usual_one_line_error(tmp_path):
    with pytest.raises(DataError, match=r"^data.root='.*nope' does not exist; expected an ImageFolder tree"):
        run_id_of(with_root(imagefolder(tmp_path / "a"), str(tmp_path / "nope")))
    make_tree(tmp_path / "t", splits=("train",))
    with pytest.raises(DataError, match=r"^data.root='.*t' has no val/ folder; expected .*/val/<class>/<image>$"):
        run_id_of(imagefolder(tmp_path / "t"))


def with_root(cfg, root: str) -> dict:
    """The resolved config as plain data with another ``data.root`` (a root removed after composing)."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=True)
    tree["data"]["root"] = root
    return tree


def test_a_sweep_over_a_tree_without_val_stops_at_launch_in_one_line(tmp_path):
    """Sweep cells compute their run ids (so their fingerprints) before anything is launched: a tree without
    val/ is the usual line, exit 2, nothing created, in Hydra's multirun and in `sweep launch`."""
    make_tree(tmp_path / "data", splits=("train",))
    runs = tmp_path / "runs"
    for args in (["-m", "mixer_scaling.train", "-m", "+sweep=smoke", "data=imagefolder", "data.image_size=16"],
                 ["-m", "mixer_scaling.cli", "sweep", "launch", "smoke", "data=imagefolder", "data.image_size=16",
                  "--executor", "local"]):
        proc = run_cli([*args, f"data.root={tmp_path / 'data'}", f"runs_dir={runs}"], cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "has no val/ folder" in lines[0] and "data.root=" in lines[0], lines
        assert not runs.exists() and not (tmp_path / "multirun").exists()


TRAIN = ["model=mixer/micro", "data=imagefolder", "data.image_size=16", "train.examples_seen=64",
         "train.batch_size=16", "train.warmup_steps=1", "train.log_every=2", "train.eval_every_examples=0",
         "fewshot.datasets=[digits]", "fewshot.shots=[1]", "fewshot.seeds=[0]", "eval.batch_size=64",
         "eval.throughput_batch_sizes=[8]", "eval.throughput_repeats=1", "wandb.mode=disabled", "progress=false"]


def test_another_tree_is_another_run_and_a_moved_tree_the_same(tmp_path):
    """The issue's reproduction with real processes: `train data.root=A`, then `data.root=B` (a different tree)
    trains B (it printed "done; not retraining" before); A moved elsewhere is A's run, done."""
    a, b = make_tree(tmp_path / "A"), make_tree(tmp_path / "B", per_class=3)
    runs = tmp_path / "runs"

    def train(root: Path):
        proc = run_cli(["-m", "mixer_scaling.train", *TRAIN, f"data.root={root}", f"runs_dir={runs}"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    train(a)
    second = train(b)
    assert "not retraining" not in second.stdout + second.stderr
    run_dirs = sorted(p for p in runs.iterdir() if not p.name.startswith("."))
    assert len(run_dirs) == 2
    recs = {Path(r["config"]["data"]["root"]).name: r for r in map(read_record, run_dirs)}
    assert all(r["status"] == "done" for r in recs.values())
    fa, fb = recs["A"]["data_fingerprint"]["data"], recs["B"]["data_fingerprint"]["data"]
    assert fa["splits"]["train"] == {"classes": 2, "files": 4, "bytes": sum(
        f.stat().st_size for f in (a / "train").rglob("*.png"))}
    assert fb["splits"]["val"]["files"] == 6 and fa["digest"] != fb["digest"]
    assert json.loads((run_dirs[0] / "result.json").read_text())["data_fingerprint"]  # on disk, as returned

    shutil.move(a, tmp_path / "moved-A")
    again = train(tmp_path / "moved-A")
    assert "not retraining" in again.stdout + again.stderr
    assert len([p for p in runs.iterdir() if not p.name.startswith(".")]) == 2
