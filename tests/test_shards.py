"""Sharded data (data=shards): pack (resumable), nested prefixes, the training order (epochs, ranks, workers,
resume), the fingerprint, a real run on shards, and bad shards as one line each."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli
from PIL import Image

from mixer_scaling.data import shards as sh
from mixer_scaling.data.build import build_data, nested_subset
from mixer_scaling.data.fingerprint import data_fingerprints
from mixer_scaling.data.pack import pack
from mixer_scaling.errors import DataError, UserError

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 75, 10  # 300 train, 40 val
SHARD = 40  # 8 train shards (the last of 20), 1 val shard


def _tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c in range(CLASSES):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):  # class c: brightness level c, noise on top; one grayscale image per class
                pixels = (rng.random((36, 44, 3)) * 50 + 60 * c).astype(np.uint8)
                image = Image.fromarray(pixels) if i else Image.fromarray(pixels[..., 0])
                image.save(folder / f"{i}.png")
    return root


def _cfg(root, **kw) -> dict:
    cfg = dict(name="shards", root=str(root), fraction=1.0, image_size=16, seed=0, shuffle_buffer=32, flip=True,
               crop_scale=[0.5, 1.0], crop_pct=1.0, randaugment=None, num_workers=0, permutation=None,
               permutation_seed=0, permutation_patch=None)
    return {**cfg, **kw}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return _tree(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def packed(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    proc = run_cli(["-m", "mixer_scaling.cli", "data", "pack", str(src), str(out), "--image-size", "20",
                    "--shard-size", str(SHARD), "--workers", "2"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "pack: 100%" in proc.stderr and "340/340" in proc.stderr  # the progress bar
    assert "train 300 images in 8 shards" in proc.stdout
    return out


@pytest.fixture
def copy(packed, tmp_path) -> Path:
    """A throwaway copy of the packed folder to damage."""
    return Path(shutil.copytree(packed, tmp_path / "copy"))


def test_pack_writes_shards_and_an_index(packed):
    index = json.loads((packed / "index.json").read_text())
    assert index["format"] == sh.FORMAT and index["classes"] == [f"c{c}" for c in range(CLASSES)]
    train = index["splits"]["train"]
    assert [s["samples"] for s in train["shards"]] == [SHARD] * 7 + [20] and train["samples"] == 300
    assert [s["name"] for s in index["splits"]["val"]["shards"]] == ["val-000000.tar"]
    assert all(s["bytes"] == (packed / s["name"]).stat().st_size for s in train["shards"])
    with tarfile.open(packed / "train-000000.tar") as tar:
        names = tar.getnames()
        image = Image.open(tar.extractfile(names[0]))
        assert names[:4] == ["0000000000.jpg", "0000000000.cls", "0000000001.jpg", "0000000001.cls"]
        assert image.mode == "RGB" and min(image.size) == 20  # shorter side resized
    # the fixed order is shuffled: the first 40 samples hold every class
    reader = sh.ShardReader(packed, "train", index)
    assert len({reader.label(i) for i in range(SHARD)}) == CLASSES


def test_pack_resumes_after_an_interruption(packed, copy, capsys):
    before = json.loads((packed / "index.json").read_text())
    (copy / "index.json").unlink()
    last = copy / "train-000005.tar"
    with open(last, "r+b") as f:  # a damaged shard is redone ...
        f.truncate(last.stat().st_size // 2)
    (copy / "train-000006.tar").rename(copy / ".train-000006.tar.tmp")  # ... so is one being written
    kept = (copy / "train-000001.tar").stat().st_mtime_ns
    with pytest.raises(DataError, match="index.json is missing.*interrupted"):
        sh.read_index(copy)
    index = pack(_src_of(packed), copy, image_size=20, shard_size=SHARD, progress=True)
    assert "pack" in capsys.readouterr().err
    assert index == {**before, "source": index["source"]} and index["fingerprint"] == before["fingerprint"]
    assert (copy / "train-000001.tar").stat().st_mtime_ns == kept  # complete shards are kept
    assert not list(copy.glob(".*.tmp"))
    with pytest.raises(UserError, match="image_size=20.*image_size=24"):
        pack(_src_of(packed), copy, image_size=24, shard_size=SHARD, progress=False)


def _src_of(packed: Path) -> Path:
    return Path(json.loads((packed / "index.json").read_text())["source"]["path"])


def test_nested_prefixes_and_the_fingerprint(packed):
    sizes = {}
    for f in (0.03, 0.1, 0.3, 1.0):
        data = build_data(_cfg(packed, fraction=f))
        sizes[f] = (len(data.train), data.full_size, len(data.val), data.num_classes)
    assert sizes == {0.03: (9, 300, 40, 4), 0.1: (30, 300, 40, 4), 0.3: (90, 300, 40, 4), 1.0: (300, 300, 40, 4)}
    order = build_data(_cfg(packed, fraction=0.1)).train.order(seed=0)
    epoch = order.global_batch(0, 30)
    assert sorted(epoch.tolist()) == list(range(30))  # an epoch of the 10% subset: exactly its prefix
    fp = data_fingerprints({"data": _cfg(packed)})["data"]
    assert fp["kind"] == "shards" and fp["splits"]["train"]["files"] == 300
    assert fp["digest"] == json.loads((packed / "index.json").read_text())["fingerprint"][:16]
    data = build_data(_cfg(packed))
    assert data.val.labels().tolist() == [data.val.reader.label(i) for i in range(40)]
    x, y = data.select[0]
    assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1 and 0 <= y < CLASSES


def test_epochs_are_shuffled_permutations_fixed_by_the_seed(packed):
    train = build_data(_cfg(packed, fraction=0.5)).train  # 150 samples: 3 shards + 30 of the 4th
    order = train.order(seed=3)
    stream = order.global_batch(0, 450).tolist()  # three epochs
    epochs = [stream[i * 150:(i + 1) * 150] for i in range(3)]
    assert all(sorted(e) == list(range(150)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(150))
    assert train.order(seed=3).global_batch(0, 450).tolist() == stream
    assert train.order(seed=4).global_batch(0, 450).tolist() != stream
    # batches straddle epoch ends: step 1 of batch 100 holds the last 50 of epoch 0 and the first 50 of epoch 1
    assert order.global_batch(1, 100).tolist() == stream[100:200]
    plain = build_data(_cfg(packed, fraction=0.5, shuffle_buffer=0)).train.order(seed=3).global_batch(0, 150)
    runs = np.split(plain, np.flatnonzero(np.diff(plain) != 1) + 1)  # shard order only: whole runs of shards
    assert len(runs) == 4 and sorted(len(r) for r in runs) == [30, 40, 40, 40]


def _labels_of(loader):
    return [y.tolist() for _, y in loader]


def test_ranks_read_disjoint_equal_shares_of_the_global_batch(packed):
    train = build_data(_cfg(packed, fraction=0.4)).train  # 120 samples
    steps, bs = 7, 24  # 168 samples: the batch of step 5 straddles the epoch end
    whole = np.concatenate([train.order(seed=1).global_batch(s, bs) for s in range(steps)])
    for world in (2, 3):
        shares = []
        for rank in range(world):
            sampler = sh.ShardBatchSampler(train.order(seed=1), bs, steps, rank=rank, world_size=world)
            shares.append(list(sampler))
        for s in range(steps):
            parts = [shares[r][s] for r in range(world)]
            assert {len(p) for p in parts} == {bs // world}
            assert sorted(sum(parts, [])) == sorted(whole[s * bs:(s + 1) * bs].tolist())
    with pytest.raises(ValueError, match="not divisible"):
        sh.ShardBatchSampler(train.order(seed=1), 25, 1, world_size=2)


def test_workers_and_resume_keep_the_order(packed):
    data = build_data(_cfg(packed, fraction=0.5))
    train = data.train
    kw = dict(batch_size=16, total_steps=12, seed=5, collate_fn=None)
    torch.manual_seed(0)
    base = _labels_of(train.train_loader(**kw))
    assert len(base) == 12 and all(len(b) == 16 for b in base)
    assert _labels_of(train.train_loader(**kw, num_workers=2)) == base
    assert _labels_of(train.train_loader(**kw, start_step=7)) == base[7:]
    # the same augmented images too: each drawn from its position in the stream
    a = [x for x, _ in train.train_loader(**kw, start_step=9)]
    b = [x for x, _ in train.train_loader(**kw, num_workers=2)][9:]
    assert len(a) == 3 and all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], [x for x, _ in train.train_loader(**{**kw, "seed": 6}, start_step=9)][0])


def test_nested_subset_of_folder_sets_keeps_its_indices(src):
    from mixer_scaling.data.folders import image_folder

    ds = image_folder(src, "train", 16, True, {"verify_images": False})
    sub = nested_subset(ds, 0.1, 0)
    expected = torch.randperm(300, generator=torch.Generator().manual_seed(0))[:30].tolist()
    assert [int(i) for i in sub.indices] == expected and sub.indices.dtype == np.int64
    assert sub[3][1] == ds[expected[3]][1] and [y for _, y in sub.__getitems__([0, 1])] == \
        [ds[expected[0]][1], ds[expected[1]][1]]


def _train_args(root, runs_dir, *extra):
    return ["data=shards", f"data.root={root}", "model=mixer/micro", "data.image_size=16", "model.image_size=16",
            "train.examples_seen=256", "train.batch_size=32", "train.warmup_steps=1", "train.log_every=2",
            "train.checkpoint_every=2", "train.eval_every_examples=128", "train.precision=fp32",
            "data.shuffle_buffer=64", "data.fraction=0.3", "fewshot.datasets=[digits]", "fewshot.shots=[1]",
            "eval.batch_size=64", "eval.throughput_batch_sizes=[8]", "eval.throughput_repeats=1",
            "wandb.mode=disabled", "progress=false", f"runs_dir={runs_dir}", *extra]


def _losses(run_dir: Path) -> list:
    from mixer_scaling.records import MetricsLog

    return [(r["step"], r["train/loss"]) for r in MetricsLog(run_dir).read() if "train/loss" in r]


def _two_ranks(args: list[str]) -> list[tuple[int, str]]:
    """``python -m mixer_scaling.train`` as two gloo ranks (as torchrun starts them; see test_distributed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env.update(OMP_NUM_THREADS="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    procs = [subprocess.Popen([sys.executable, "-m", "mixer_scaling.train", *args], cwd=ROOT,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    out = []
    for p in procs:
        try:
            out.append((p.wait(timeout=240), p.stdout.read()))
        except subprocess.TimeoutExpired:
            p.kill()
            out.append((-9, p.stdout.read()))
    return out


def test_a_run_on_two_ranks_and_a_stopped_one_resumed_train_alike(packed, tmp_path, monkeypatch):
    """The entry point on 2 gloo ranks (1 worker each) and, in this process, the same run on one rank with
    no workers, cut at step 4 and resumed with 1 worker: the same samples and augmentations in every step,
    so the same losses (to float tolerance: DDP averages two half-batch gradients)."""
    from mixer_scaling.config import compose
    from mixer_scaling.engine import Interrupted
    from mixer_scaling.records import MetricsLog, read_record
    from mixer_scaling.train import run

    for rc, out in _two_ranks(_train_args(packed, tmp_path / "ddp", "data.num_workers=1")):
        assert rc == 0, out[-3000:]
    (run_dir,) = (tmp_path / "ddp").iterdir()
    rec = read_record(run_dir)
    assert rec["status"] == "done" and rec["world_size"] == 2
    assert rec["train_size"] == 90 and rec["examples_seen"] == 256
    assert rec["data_fingerprint"]["data"]["kind"] == "shards"

    cfg = compose(_train_args(packed, tmp_path / "cut", "data.num_workers=0"))
    append = MetricsLog.append

    def stop_at_step_4(self, row):
        append(self, row)
        if row.get("step") == 4 and "train/loss" in row:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(MetricsLog, "append", stop_at_step_4)
    with pytest.raises(Interrupted):
        run(cfg)
    monkeypatch.setattr(MetricsLog, "append", append)
    resumed = run(compose(_train_args(packed, tmp_path / "cut", "data.num_workers=1")))
    assert resumed["attempts"] == 2 and Path(resumed["run_dir"]).name == run_dir.name
    one, two = _losses(Path(resumed["run_dir"])), _losses(run_dir)
    assert [s for s, _ in one] == [s for s, _ in two] == [2, 4, 6, 8]
    assert [v for _, v in one] == pytest.approx([v for _, v in two], rel=1e-4)


def test_the_permutation_applies_to_the_stream(packed):
    from mixer_scaling.data.permute import apply_permutation

    plain = build_data(_cfg(packed, fraction=0.5)).train
    mixed = build_data(_cfg(packed, fraction=0.5, permutation="global")).train
    kw = dict(batch_size=8, total_steps=2, seed=0, start_step=1)
    (xp, yp), = list(plain.train_loader(**kw))
    (xm, ym), = list(mixed.train_loader(**kw))
    assert torch.equal(yp, ym) and not torch.equal(xp, xm)
    assert torch.equal(apply_permutation(xp, mixed.permutation), xm)


# --------------------------------------------------------------------------------------------- bad shards

def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_a_truncated_shard_is_found_at_start_up(copy):
    shard = copy / "train-000003.tar"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 700)
    with pytest.raises(DataError, match=r"shard .*train-000003.tar is \d+ bytes, index.json says \d+ \(truncated"):
        build_data(_cfg(copy))


def test_a_missing_shard_and_a_bad_index_are_found_at_start_up(copy):
    good = (copy / "index.json").read_text()
    index = json.loads(good)
    index["splits"]["val"]["samples"] = 41
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="val shards' sample counts sum to 40, the index says 41"):
        sh.read_index(copy)
    (copy / "index.json").write_text(good)
    (copy / "train-000002.tar").unlink()
    with pytest.raises(DataError, match="train-000002.tar is listed in index.json but missing") as e:
        build_data(_cfg(copy))
    _one_line(e)
    (copy / "index.json").write_text("{")
    with pytest.raises(DataError, match="index.json is not readable JSON"):
        build_data(_cfg(copy))


def _rewrite(shard: Path, drop: str | None = None, index_dir: Path | None = None) -> None:
    """Rewrite a shard without the members ending in ``drop``, and the index's size for it."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if not (drop and m.name.endswith(drop))]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data))
    index_path = (index_dir or shard.parent) / "index.json"
    index = json.loads(index_path.read_text())
    for entry in index["splits"]["train"]["shards"] + index["splits"]["val"]["shards"]:
        if entry["name"] == shard.name:
            entry["bytes"] = shard.stat().st_size
    index_path.write_text(json.dumps(index))


@pytest.mark.parametrize("drop,problem", [
    ("0000000121.cls", r"sample 0000000121 has no label \(0000000121.cls missing\)"),
    ("0000000122.jpg", r"sample 0000000122 has no image"),
])
def test_a_sample_without_its_label_or_image_is_named_while_reading(copy, drop, problem):
    _rewrite(copy / "train-000003.tar", drop)
    data = build_data(_cfg(copy))
    with pytest.raises(DataError, match=rf"shard .*train-000003.tar: {problem}") as e:
        for i in range(120, 123):
            data.train[i]
    _one_line(e)


def test_a_shard_that_disagrees_with_the_index_is_named_in_a_worker(copy):
    index = json.loads((copy / "index.json").read_text())
    entries = index["splits"]["train"]["shards"]
    entries[0]["samples"], entries[1]["samples"] = 41, 39  # same total, wrong per shard
    (copy / "index.json").write_text(json.dumps(index))
    train = build_data(_cfg(copy)).train
    with pytest.raises(DataError, match=r"^shard .*train-00000[01].tar holds 40 samples, index.json says (41|39)") as e:
        for _ in train.train_loader(batch_size=30, total_steps=10, seed=0, num_workers=1):
            pass
    _one_line(e)


def test_pack_refuses_bad_sources(tmp_path, src):
    with pytest.raises(UserError, match="has no train/ folder"):
        pack(tmp_path, tmp_path / "out")
    with pytest.raises(UserError, match="--shard-size=0 is not allowed"):
        pack(src, tmp_path / "out", shard_size=0)
