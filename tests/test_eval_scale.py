"""Evaluation at ImageNet scale: few-shot features only of the drawn images, validation and few-shot
extraction split across ranks (a real 2-process gloo run on CPU), image verification on rank 0 alone."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from omegaconf import OmegaConf

from mixer_scaling.config import compose
from mixer_scaling.data.fewshot_sets import build_fewshot_sets, dataset_labels
from mixer_scaling.evaluate import downstream
from mixer_scaling.evaluate.classify import ordered_loader, shard, split_top1, top1
from mixer_scaling.evaluate.fewshot import (
    chosen_indices,
    fewshot_accuracies,
    fewshot_eval,
)
from mixer_scaling.models import build_model

CPU = torch.device("cpu")
FEWSHOT = {"datasets": ["digits", "synthetic_heldout"], "shots": [1, 5], "seeds": [0, 1, 2], "l2_reg": 1024.0}
SIZE = 8  # images (and the model) at 8 px, the digits' own size: 4 patches of 4, cheap


def _micro(num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(compose(["model=mixer/micro"]).model, num_classes=num_classes, image_size=SIZE).eval()


@pytest.fixture(scope="module")
def sets():
    return build_fewshot_sets(FEWSHOT, SIZE)


@pytest.fixture(scope="module")
def one_process(sets):
    """The single-process numbers: validation top-1 (on the digits test set) and few-shot accuracies, with
    the sizes of the sets few-shot evaluation read features of."""
    model, digits, read = _micro(), sets["digits"], []
    real = downstream.features
    downstream.features = lambda m, ds, *a, **kw: read.append(len(ds)) or real(m, ds, *a, **kw)
    try:
        fewshot = downstream.evaluate_fewshot(model, sets, OmegaConf.create(FEWSHOT), CPU, batch_size=64)
    finally:
        downstream.features = real
    return {"top1": top1(model, ordered_loader(digits.test, 64, digits.collate_fn), CPU), "fewshot": fewshot,
            "read": read}


def test_few_shot_reads_only_the_drawn_images_and_scores_as_the_whole_pool(sets, one_process):
    model = _micro()
    # The whole pool's features, as the evaluation computed them before it drew first.
    before = {}
    for name, fs in sets.items():
        train_x, train_y = downstream.features(model, fs.train, CPU, 64, fs.collate_fn)
        test_x, test_y = downstream.features(model, fs.test, CPU, 64, fs.collate_fn)
        before[name] = {str(k): v for k, v in fewshot_eval(train_x, train_y, test_x, test_y, shots=(1, 5),
                                                           seeds=(0, 1, 2), l2_reg=1024.0).items()}
    assert one_process["fewshot"] == before  # the same images drawn, the same accuracies
    for (name, fs), pool_read in zip(sets.items(), one_process["read"][::2]):
        classes, pool = fs.num_classes, len(fs.train)
        # at most k x classes x seeds (the 1-shot sets are inside the 5-shot ones), well below the pool
        assert 5 * classes <= pool_read <= 5 * classes * 3 < pool, name
        assert pool_read == len(chosen_indices(dataset_labels(fs.train), (1, 5), (0, 1, 2)))


def test_features_of_the_drawn_rows_give_the_whole_pools_accuracies():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 400)
    pool, test = rng.normal(size=(400, 16)) + labels[:, None], rng.normal(size=(90, 16))
    test_labels = rng.integers(0, 7, 90)
    whole = fewshot_accuracies(pool, labels, test, test_labels, shots=(1, 3, 10), seeds=(0, 4))
    rows = chosen_indices(labels, (1, 3, 10), (0, 4))
    assert len(rows) <= 10 * 7 * 2
    assert fewshot_accuracies(pool[rows], labels, test, test_labels, shots=(1, 3, 10), seeds=(0, 4),
                              pool_index=rows) == whole
    with pytest.raises(ValueError, match="is drawn but has no features"):
        fewshot_accuracies(pool[rows[1:]], labels, test, test_labels, shots=(1, 3, 10), seeds=(0, 4),
                           pool_index=rows[1:])


def test_shards_are_disjoint_and_cover_the_set():
    for n, ranks in ((10, 3), (797, 2), (2, 4)):
        parts = [list(shard(range(n), r, ranks)) for r in range(ranks)]
        assert [i for part in parts for i in part] == list(range(n))


# One rank of a data-parallel job (RANK etc. set by the test): validation top-1 and few-shot accuracies
# split across the ranks, and whether this rank would verify images; rank 0 writes them to argv[1].
RANK_SCRIPT = """
import json, sys, torch
from omegaconf import OmegaConf
from mixer_scaling import distributed
from mixer_scaling.data import folders
from mixer_scaling.data.fewshot_sets import build_fewshot_sets
from mixer_scaling.evaluate.classify import split_top1
from mixer_scaling.evaluate.downstream import evaluate_fewshot
sys.path.insert(0, "tests")
from test_eval_scale import FEWSHOT, SIZE, _micro

with distributed.launched(torch.device("cpu")) as device:
    rank, ranks = distributed.rank(), distributed.world_size()
    sets = build_fewshot_sets(FEWSHOT, SIZE)
    model, digits = _micro(), sets["digits"]
    out = {"top1": split_top1(model, digits.test, device, 64, digits.collate_fn, rank=rank, world_size=ranks),
           "fewshot": evaluate_fewshot(model, sets, OmegaConf.create(FEWSHOT), device, batch_size=64, rank=rank,
                                       world_size=ranks),
           "verifies": distributed.gather(folders._verifies())}
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)
    else:
        assert out["fewshot"] is None
"""


def test_validation_and_few_shot_split_over_two_ranks_equal_one_process(sets, one_process, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.update(OMP_NUM_THREADS="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    out = tmp_path / "ranks.json"
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(out)], cwd=ROOT,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    digits = sets["digits"]
    assert split_top1(_micro(), digits.test, CPU, 64, digits.collate_fn) == one_process["top1"]
    for p in procs:
        text = p.communicate(timeout=240)[0]
        assert p.returncode == 0, text
    two = json.loads(out.read_text())
    assert two["top1"] == one_process["top1"]  # 797 test images: the two shards are 398 and 399
    assert two["fewshot"] == one_process["fewshot"]
    assert two["verifies"] == [True, False]  # image verification: rank 0 alone
