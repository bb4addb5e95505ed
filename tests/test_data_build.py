"""Data builders: nested fractions, disjoint validation, users' folders, few-shot sets, bad input."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from mixer_scaling.data import build_data, build_fewshot_sets
from mixer_scaling.errors import ConfigError, DataError
from mixer_scaling.stream import StreamSampler


def synth(**kw):
    base = dict(name="synthetic", fraction=1.0, image_size=32, num_classes=100, size=3000, val_size=200, seed=0,
                flip=False, randaugment=None, num_workers=0)
    return OmegaConf.create({**base, **kw})


def test_synthetic_fractions_are_nested_and_balanced():
    sets = {f: build_data(synth(fraction=f)) for f in (0.03, 0.1, 0.3, 1.0)}
    assert [b.train_size for b in sets.values()] == [90, 300, 900, 3000]
    small, big = sets[0.1].train, sets[1.0].train
    xs, ys = small.__getitems__(list(range(len(small))))
    xb, yb = big.__getitems__(list(range(len(small))))
    assert torch.equal(xs, xb) and torch.equal(ys, yb)  # the 10% subset is inside the 100% set
    assert np.bincount(ys.numpy(), minlength=100).min() == 3
    assert all(b.full_size == 3000 for b in sets.values())


def test_validation_split_is_disjoint_from_training():
    b = build_data(synth())
    xt, _ = b.train.__getitems__(list(range(100)))
    xv, _ = b.val.__getitems__(list(range(100)))
    assert not any(torch.equal(xt[i], xv[j]) for i in range(100) for j in range(100))


def test_loader_yields_batches_through_the_stream_sampler():
    b = build_data(synth())
    loader = DataLoader(b.train, batch_sampler=StreamSampler(b.train_size, 64, 3, seed=0), collate_fn=b.collate_fn)
    batches = list(loader)
    assert len(batches) == 3
    x, y = batches[0]
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert -1.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize("cfg,message", [
    (dict(fraction=1.5), r"data.fraction=1.5 is not allowed; expected a number in \(0, 1\]"),
    (dict(fraction=0.0), r"data.fraction=0.0 is not allowed"),
    (dict(fraction=0.0001), r"selects no image"),
    (dict(num_classes=1), r"data.num_classes=1"),
])
def test_bad_synthetic_configs(cfg, message):
    with pytest.raises(ConfigError, match=message):
        build_data(synth(**cfg))


def make_tree(root, classes=("cat", "dog"), per_class=4, size=40, mode="RGB"):
    for split in ("train", "val"):
        for c, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                color = (40 * i, 120 * c, 90) if mode == "RGB" else 40 * i
                Image.new(mode, (size, size + 8), color).save(root / split / cls / f"{i}.png")
    return root


def folder_cfg(root, **kw):
    return OmegaConf.create({"name": "imagefolder", "root": str(root), "train_dir": "train", "val_dir": "val",
                             "fraction": 1.0, "image_size": 32, "seed": 0, "flip": True, "randaugment": None,
                             "verify_images": True, "num_workers": 0, **kw})


def test_image_folder_happy_path_with_grayscale_and_fractions(tmp_path):
    root = make_tree(tmp_path / "tree", mode="L")  # 1-channel files become 3-channel tensors
    b = build_data(folder_cfg(root))
    x, y = next(iter(DataLoader(b.train, batch_size=8)))
    assert x.shape == (8, 3, 32, 32) and b.num_classes == 2 and -1 <= x.min() and x.max() <= 1
    half = build_data(folder_cfg(root, fraction=0.5))
    quarter = build_data(folder_cfg(root, fraction=0.25))
    assert half.train_size == 4 and set(quarter.train.indices) <= set(half.train.indices)


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="data.root='/no/such' does not exist"):
        build_data(folder_cfg("/no/such"))
    root = make_tree(tmp_path / "tree")
    (root / "train" / "dog" / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"unreadable image .*bad.jpg"):
        build_data(folder_cfg(root))
    (root / "train" / "dog" / "bad.jpg").unlink()
    import shutil
    shutil.rmtree(root / "val")
    with pytest.raises(DataError, match="has no val/ folder"):
        build_data(folder_cfg(root))


def test_cifar_missing_without_download_says_how(tmp_path):
    cfg = OmegaConf.create({"name": "cifar10", "root": str(tmp_path), "download": False, "fraction": 1.0,
                            "image_size": 32, "seed": 0, "flip": True, "randaugment": None})
    with pytest.raises(DataError, match="set data.download=true"):
        build_data(cfg)
    assert list(tmp_path.iterdir()) == []


def test_fewshot_sets():
    sets = build_fewshot_sets(OmegaConf.create({"datasets": ["digits", "synthetic_heldout"], "shots": [1, 25]}),
                              32, synth())
    d = sets["digits"]
    assert d.num_classes == 10 and len(d.train) == 1000 and len(d.test) == 797
    x, y = d.train[0]
    assert x.shape == (3, 32, 32) and -1 <= x.min() and x.max() <= 1
    h = sets["synthetic_heldout"]
    assert h.num_classes == 20 and h.train.class_offset == 100  # classes pre-training never sees
    with pytest.raises(ConfigError, match="fewshot.datasets"):
        build_fewshot_sets(OmegaConf.create({"datasets": ["mnist"], "shots": [1]}), 32)
    with pytest.raises(ConfigError, match="synthetic_heldout has only 30"):
        build_fewshot_sets(OmegaConf.create({"datasets": ["synthetic_heldout"], "shots": [50]}), 32, synth())
