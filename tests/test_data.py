"""The data module: the embedded generator, nested fractions, folders, CIFAR, few-shot sets, bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from mixer_scaling.data import (
    DataBundle,
    FewshotSet,
    SyntheticImages,
    build_data,
    build_fewshot_sets,
    passthrough,
    validate_data_cfg,
)
from mixer_scaling.data.synthetic import FACTORS, NUM_COMBOS, class_factors, splitmix64
from mixer_scaling.errors import ConfigError, DataError


def synth(**kw):
    base = dict(name="synthetic", fraction=1.0, image_size=32, num_classes=100, size=1000, val_size=200, seed=0,
                flip=False, randaugment=None, num_workers=0)
    return OmegaConf.create({**base, **kw})


def batches(ds, batch_size, collate_fn, num_workers=0, order=None):
    order = list(range(len(ds))) if order is None else list(order)
    sampler = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return DataLoader(ds, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers)


def listing(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# -- the embedded generator --------------------------------------------------------------------------


def test_splitmix64_reference_values():
    # splitmix64's first outputs for state 0 (the finaliser applied to 0x9E3779B97F4A7C15 * k)
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        states = np.arange(1, 3, dtype=np.uint64) * golden
    assert [hex(int(v)) for v in splitmix64(states)] == ["0xe220a8397b1dcdaf", "0x6e789e6aa1b965f4"]


def test_same_index_same_pixels_in_any_order_batch_or_instance():
    ds = SyntheticImages(5000, image_size=32, seed=3)
    idx = [4999, 0, 17, 1234, 17, 2500, 3]
    x, y = ds.__getitems__(idx)
    perm = [3, 6, 1, 0, 5, 2, 4]
    xp, yp = ds.__getitems__([idx[i] for i in perm])
    assert torch.equal(xp, x[perm]) and torch.equal(yp, y[perm])
    big, _ = ds.__getitems__(list(range(0, 300)) + idx)  # another batch composition and size
    assert torch.equal(big[300:], x)
    single = torch.stack([ds[i][0] for i in idx])
    assert torch.equal(single, x)
    assert torch.equal(x[2], x[4])  # index 17 twice
    again, _ = SyntheticImages(5000, image_size=32, seed=3).__getitems__(idx)
    assert torch.equal(again, x)
    other, _ = SyntheticImages(5000, image_size=32, seed=4).__getitems__(idx)
    assert not torch.equal(other, x)
    assert torch.equal(ds.__getitems__([-1])[0], ds.__getitems__([4999])[0])
    with pytest.raises(IndexError):
        ds.__getitems__([5000])


def test_large_images_render_in_chunks_with_the_same_pixels():
    ds = SyntheticImages(100, image_size=96)  # 28 images per chunk: 40 spans two
    x, _ = ds.__getitems__(range(40))
    assert x.shape == (40, 3, 96, 96)
    assert torch.equal(torch.stack([ds[i][0] for i in (0, 27, 28, 39)]), x[[0, 27, 28, 39]])
    assert torch.equal(ds.__getitems__(range(30, 40))[0], x[30:])


@pytest.mark.parametrize("size", [32, 20])
def test_items_are_float32_chw_in_range(size):
    ds = SyntheticImages(400, image_size=size, classes=100)
    x, y = ds.__getitems__(range(400))
    assert x.shape == (400, 3, size, size) and x.dtype == torch.float32
    assert y.shape == (400,) and y.dtype == torch.int64
    assert torch.isfinite(x).all() and x.min() >= -1.0 and x.max() <= 1.0
    assert x.min() < -0.9 and x.max() > 0.9  # uses the range
    assert (x.flatten(1).std(1) > 0.05).all()  # no blank images
    xi, yi = ds[7]
    assert xi.shape == (3, size, size) and isinstance(yi, int) and yi == 7


def test_images_are_not_near_duplicates_within_a_class():
    ds = SyntheticImages(1000, image_size=32, classes=100)
    x, y = ds.__getitems__(range(1000))
    same = x[y == 5].flatten(1)
    d = torch.cdist(same, same) + torch.eye(len(same)) * 1e9
    assert d.min() > 5.0  # every sample varies (position, scale, colours, occluder, noise)


def test_classes_are_balanced_prefixes():
    ds = SyntheticImages(10_000, classes=100)
    for n in (100, 333, 10_000):
        counts = np.bincount(ds.labels(np.arange(n)), minlength=100)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n
    assert ds.targets[:3] == [0, 1, 2]


def test_class_combinations_are_distinct_and_heldout_classes_are_new():
    ids = np.arange(NUM_COMBOS)
    f = class_factors(0, ids)
    combos = set(zip(*(f[k].tolist() for k in FACTORS)))
    assert len(combos) == NUM_COMBOS  # a bijection: no two classes look alike by construction
    train = set(zip(*(v[:100].tolist() for v in f.values())))
    held = set(zip(*(v[100:120].tolist() for v in f.values())))
    assert not train & held
    # each factor takes several values among the first 100 classes: no single cue names the class
    assert all(len(set(f[k][:100].tolist())) == n for k, n in FACTORS.items())
    assert class_factors(1, ids[:100])["shape"].tolist() != f["shape"][:100].tolist()  # the seed matters


def test_heldout_images_differ_from_training_images():
    train = SyntheticImages(200, classes=100)
    held = SyntheticImages(200, classes=20, class_offset=100, split="fewshot_train")
    xt, _ = train.__getitems__(range(200))
    xh, yh = held.__getitems__(range(200))
    assert yh.max() == 19 and held.num_classes == 20
    assert torch.cdist(xh.flatten(1), xt.flatten(1)).min() > 1.0


def test_flip_and_randaugment_keep_format():
    base = SyntheticImages(64, image_size=32)
    flip = SyntheticImages(64, image_size=32, flip=True)
    torch.manual_seed(0)
    x0, _ = base.__getitems__(range(64))
    x1, _ = flip.__getitems__(range(64))
    same = (x1 == x0).flatten(1).all(1)
    mirrored = (x1 == x0.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and mirrored.any() and same.any()
    ra = SyntheticImages(16, image_size=32, randaugment="rand-m9-n2")
    x, y = ra.__getitems__(range(16))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1


def test_pickles_for_worker_processes():
    ds = SyntheticImages(100, image_size=16, seed=2)
    ds.__getitems__([0])
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone.__getitems__([5, 6])[0], ds.__getitems__([5, 6])[0])


# -- build_data: synthetic -----------------------------------------------------------------------------


def test_build_synthetic_bundle():
    b = build_data(synth())
    assert isinstance(b, DataBundle)
    assert (b.num_classes, b.image_size, b.train_size, b.full_size, len(b.val)) == (100, 32, 1000, 1000, 200)
    assert b.collate_fn is passthrough


def test_fractions_are_nested_prefixes():
    bundles = {f: build_data(synth(fraction=f)) for f in (0.03, 0.1, 0.3, 1.0)}
    assert [b.train_size for b in bundles.values()] == [30, 100, 300, 1000]
    assert all(b.full_size == 1000 for b in bundles.values())
    fs = list(bundles)
    for small, big in zip(fs, fs[1:]):
        n = bundles[small].train_size
        xs, ys = bundles[small].train.__getitems__(range(n))
        xb, yb = bundles[big].train.__getitems__(range(n))
        assert torch.equal(xs, xb) and torch.equal(ys, yb)
    # the 3% subset is balanced over the 100 classes too (30 images: 30 classes once)
    assert np.bincount(bundles[0.03].train.labels(), minlength=100).max() == 1


def test_validation_is_fixed_and_disjoint_from_training():
    a, b = build_data(synth(fraction=0.1)), build_data(synth(fraction=1.0))
    xa, _ = a.val.__getitems__(range(200))
    xb, _ = b.val.__getitems__(range(200))
    assert torch.equal(xa, xb)  # the validation set does not depend on data.fraction
    xt, _ = b.train.__getitems__(range(1000))
    assert torch.cdist(xa.flatten(1), xt.flatten(1)).min() > 1.0


def test_batch_sampler_loader_for_synthetic_with_workers():
    b = build_data(synth(size=300))
    order = np.random.default_rng(0).permutation(300)
    got = list(batches(b.train, 64, b.collate_fn, num_workers=2, order=order))
    assert [x.shape for x, _ in got] == [(64, 3, 32, 32)] * 4 + [(44, 3, 32, 32)]
    x, y = got[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    ref, ref_y = b.train.__getitems__(order[:64])
    assert torch.equal(x, ref) and torch.equal(y, ref_y)  # workers generate the same pixels
    xv, yv = next(iter(batches(b.val, 50, b.collate_fn)))
    assert xv.shape == (50, 3, 32, 32) and yv.tolist() == list(range(50))


@pytest.mark.parametrize("override,pattern", [
    (dict(fraction=1.5), r"^data\.fraction=1\.5 is not allowed; expected a number in \(0, 1\]$"),
    (dict(fraction=0), r"^data\.fraction=0 is not allowed; expected a number in \(0, 1\]$"),
    (dict(fraction=-0.1), r"data\.fraction=-0\.1 is not allowed; expected a number in \(0, 1\]"),
    (dict(fraction=True), r"data\.fraction=True is not allowed"),
    (dict(fraction="half"), r"data\.fraction='half' is not allowed"),
    (dict(fraction=0.0001), r"data\.fraction=0\.0001 of data\.size=1000 selects no image"),
    (dict(name="jft"), r"data\.name='jft' is not allowed; choose one of: synthetic, imagefolder"),
    (dict(num_classes=1), r"data\.num_classes=1 is not allowed; expected an integer in \[2, "),
    (dict(num_classes=10**6), r"data\.num_classes=1000000 is not allowed"),
    (dict(size=0), r"data\.size=0 is not allowed; expected an integer > 0"),
    (dict(image_size="big"), r"data\.image_size='big' is not allowed"),
    (dict(randaugment="rand-x9"), r"data\.randaugment='rand-x9' is not allowed; expected null or a timm"),
    (dict(flip="yes"), r"data\.flip='yes' is not allowed; expected true or false"),
])
def test_bad_synthetic_config_is_one_line_config_error(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        build_data(synth(**override))
    assert "\n" not in str(info.value)


# -- image folders -------------------------------------------------------------------------------------


def make_tree(root, classes=("cat", "dog", "emu"), per_class=3, modes=("RGB", "L", "RGBA", "P")):
    for split in ("train", "val"):
        for c, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                mode = modes[(i + c) % len(modes)]
                im = Image.new("RGB", (40 + 4 * i, 36), (60 * i, 100 * c % 255, 90))
                im = im.convert(mode)
                im.save(root / split / cls / f"{i}.png")
    return root


def folder_cfg(root, **kw):
    return OmegaConf.create({"name": "imagefolder", "root": str(root), "train_dir": "train", "val_dir": "val",
                             "fraction": 1.0, "image_size": 24, "seed": 0, "flip": True, "randaugment": None,
                             "verify_images": True, "num_workers": 0, **kw})


def test_image_folder_happy_path(tmp_path):
    root = make_tree(tmp_path / "tree")
    before = listing(tmp_path)
    b = build_data(folder_cfg(root))
    assert (b.num_classes, b.full_size, b.train_size, len(b.val), b.image_size) == (3, 9, 9, 9, 24)
    for ds in (b.train, b.val):
        x, y = next(iter(batches(ds, 4, b.collate_fn)))
        assert x.shape == (4, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert -1.0 <= x.min() and x.max() <= 1.0
    assert sorted(y for _, y in b.val.samples) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert listing(tmp_path) == before  # nothing written into the tree


def test_image_folder_fractions_are_nested(tmp_path):
    root = make_tree(tmp_path / "tree", per_class=10)
    sizes, subsets = [], []
    for f in (0.1, 0.3, 1.0):
        b = build_data(folder_cfg(root, fraction=f, verify_images=False))
        sizes.append(b.train_size)
        subsets.append(set(getattr(b.train, "indices", range(b.full_size))))
    assert sizes == [3, 9, 30]
    assert subsets[0] <= subsets[1] <= subsets[2]
    again = build_data(folder_cfg(root, fraction=0.3))
    assert set(again.train.indices) == subsets[1]  # fixed by data.seed
    other = build_data(folder_cfg(root, fraction=0.3, seed=1))
    assert set(other.train.indices) != subsets[1]


def test_validation_folder_uses_training_class_indices(tmp_path):
    root = make_tree(tmp_path / "tree")
    import shutil

    shutil.rmtree(root / "val" / "cat")  # val/ lacks the first class
    b = build_data(folder_cfg(root))
    assert b.val.classes == ["cat", "dog", "emu"]
    assert sorted({y for _, y in b.val.samples}) == [1, 2]
    (root / "val" / "fox").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "fox" / "0.png")
    with pytest.raises(DataError, match="class folder 'fox' that the training split lacks"):
        build_data(folder_cfg(root))


def test_missing_root_is_data_error_and_creates_nothing(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(DataError, match=rf"^data\.root='{missing}' does not exist; expected an ImageFolder tree"):
        build_data(folder_cfg(missing))
    with pytest.raises(DataError, match=r"data\.root is not set"):
        build_data(folder_cfg("???"))
    assert list(tmp_path.iterdir()) == []


def test_unreadable_image_is_named(tmp_path):
    root = make_tree(tmp_path / "tree")
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 certainly not a jpeg")
    before = listing(tmp_path)
    with pytest.raises(DataError, match=r"unreadable image .*broken\.jpg") as info:
        build_data(folder_cfg(root))
    assert "\n" not in str(info.value)
    assert listing(tmp_path) == before
    build_data(folder_cfg(root, verify_images=False))  # the check can be skipped on huge trees


def test_incomplete_trees_are_data_errors(tmp_path):
    root = make_tree(tmp_path / "tree")
    import shutil

    shutil.rmtree(root / "val")
    with pytest.raises(DataError, match=r"has no val/ folder"):
        build_data(folder_cfg(root))
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(DataError, match=r"train/ has no class folders"):
        build_data(folder_cfg(empty))
    (empty / "train" / "cat").mkdir()
    (empty / "train" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"train/ holds no images"):
        build_data(folder_cfg(empty))
    with pytest.raises(DataError, match=r"data\.root=.* has no elsewhere/ folder"):
        build_data(folder_cfg(root, val_dir="elsewhere"))
    with pytest.raises(ConfigError, match=r"data\.train_dir='\.\./x' is not allowed"):
        build_data(folder_cfg(root, train_dir="../x"))
    with pytest.raises(ConfigError, match=r"data\.crop_scale=\[0\.5, 0\.2\] is not allowed"):
        build_data(folder_cfg(root, crop_scale=[0.5, 0.2]))
    with pytest.raises(ConfigError, match=r"data\.crop_pct=0 is not allowed; expected a number in \(0, 1\]"):
        build_data(folder_cfg(root, crop_pct=0))


def test_validate_data_cfg_reads_nothing(tmp_path):
    validate_data_cfg(synth())
    validate_data_cfg(folder_cfg(tmp_path))  # only that the root is a directory
    with pytest.raises(DataError, match="data.root"):
        validate_data_cfg(folder_cfg(tmp_path / "missing"))


# -- CIFAR -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,folder", [("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")])
def test_cifar_missing_without_download_says_how(tmp_path, name, folder):
    cfg = OmegaConf.create({"name": name, "root": str(tmp_path), "download": False, "fraction": 1.0,
                            "image_size": 32, "seed": 0, "flip": True, "randaugment": None, "num_workers": 0})
    with pytest.raises(DataError, match=rf"holds no usable {folder} .*set data\.download=true") as info:
        build_data(cfg)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    cfg.root = str(tmp_path / "absent")
    with pytest.raises(DataError, match=r"does not exist"):
        build_data(cfg)
    assert list(tmp_path.iterdir()) == []


# -- few-shot sets ---------------------------------------------------------------------------------------


def fewshot_cfg(**kw):
    return OmegaConf.create({"datasets": ["digits", "synthetic_heldout"], "shots": [1, 5, 10, 25],
                             "seeds": [0, 1, 2], "l2_reg": 1024.0, "root": None, "download": False, **kw})


@pytest.mark.parametrize("size", [32, 16])
def test_digits_set_shapes_and_split(size):
    d = build_fewshot_sets(fewshot_cfg(datasets=["digits"]), size)["digits"]
    assert isinstance(d, FewshotSet) and d.num_classes == 10
    assert (len(d.train), len(d.test)) == (1000, 797)
    assert np.bincount(d.train.labels()).tolist() == [100] * 10
    assert np.bincount(d.test.labels(), minlength=10).min() >= 70
    x, y = d.test.__getitems__(range(len(d.test)))
    assert x.shape == (797, 3, size, size) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.99 and x.max() > 0.8
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    xi, yi = d.train[3]
    assert xi.shape == (3, size, size) and isinstance(yi, int)
    from sklearn.datasets import load_digits

    assert len(d.train) + len(d.test) == len(load_digits().target)


def test_fewshot_sets_through_batch_sampler_loaders(tmp_path):
    sets = build_fewshot_sets(fewshot_cfg(), 32, synth())
    assert set(sets) == {"digits", "synthetic_heldout"}
    h = sets["synthetic_heldout"]
    assert h.num_classes == 20 and h.train.class_offset == 100 and h.test.class_offset == 100
    assert np.bincount(h.train.labels()).tolist() == [30] * 20
    assert np.bincount(h.test.labels()).tolist() == [50] * 20
    for name, fs in sets.items():
        for ds in (fs.train, fs.test):
            sampler = BatchSampler(SequentialSampler(range(len(ds))), 128, drop_last=False)
            x, y = next(iter(DataLoader(ds, batch_sampler=sampler, collate_fn=fs.collate_fn)))
            assert x.shape == (128, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64, name
    other = build_fewshot_sets(fewshot_cfg(datasets=["synthetic_heldout"]), 32, synth(num_classes=300, seed=5))
    assert other["synthetic_heldout"].train.class_offset == 300 and other["synthetic_heldout"].train.seed == 5


def test_fewshot_user_sets(tmp_path):
    root = make_tree(tmp_path / "tree", per_class=4)
    sets = build_fewshot_sets(fewshot_cfg(datasets=["imagefolder"], shots=[1, 4], root=str(root)), 24)
    fs = sets["imagefolder"]
    assert fs.num_classes == 3 and len(fs.train) == 12
    x, y = next(iter(batches(fs.train, 5, fs.collate_fn)))
    assert x.shape == (5, 3, 24, 24)
    with pytest.raises(DataError, match=r"fewshot\.root=.* does not exist"):
        build_fewshot_sets(fewshot_cfg(datasets=["cifar10"], root=str(tmp_path / "none")), 32)
    with pytest.raises(DataError, match=r"set fewshot\.download=true"):
        build_fewshot_sets(fewshot_cfg(datasets=["cifar100"], root=str(tmp_path)), 32)
    with pytest.raises(DataError, match=r"fewshot\.root is not set"):
        build_fewshot_sets(fewshot_cfg(datasets=["imagefolder"]), 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


@pytest.mark.parametrize("override,pattern", [
    (dict(datasets=["digits", "mnist"]), r"fewshot\.datasets=\['digits', 'mnist'\] is not allowed; expected a non-empty list of few-shot sets, each one of: digits, "),
    (dict(datasets=[]), r"fewshot\.datasets=\[\] is not allowed"),
    (dict(shots=[0, 5]), r"fewshot\.shots=\[0, 5\] is not allowed"),
    (dict(shots=[50]), r"fewshot\.shots=\[50\]: synthetic_heldout has only 30 pool images"),
    (dict(l2_reg=-1.0), r"fewshot\.l2_reg=-1\.0 is not allowed"),
    (dict(seeds=["a"]), r"fewshot\.seeds=\['a'\] is not allowed"),
])
def test_bad_fewshot_config(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_fewshot_sets(fewshot_cfg(**override), 32, synth())


def test_nuisance_scales_the_per_sample_variation():
    """data.nuisance=1 is the documented data set bit for bit; lower values vary less within a class
    (the pixel spread over samples of one class shrinks) and the class stays the same prototype."""
    from mixer_scaling.data.synthetic import SyntheticImages

    idx = [c + 10 * i for i in range(40) for c in (0,)]  # 40 samples of class 0 (10 classes)
    spread = {}
    for amount in (1.0, 0.5, 0.0):
        x, y = SyntheticImages(400, classes=10, nuisance=amount).__getitems__(idx)
        assert set(y.tolist()) == {0}
        spread[amount] = x.std(0).mean().item()
    x_default, _ = SyntheticImages(400, classes=10).__getitems__(idx)
    x_one, _ = SyntheticImages(400, classes=10, nuisance=1.0).__getitems__(idx)
    assert torch.equal(x_default, x_one)
    assert spread[1.0] > spread[0.5] > spread[0.0]


def test_nuisance_is_part_of_a_run_only_when_it_changes_the_data():
    from mixer_scaling.config import compose
    from mixer_scaling.records import run_id_of

    base = compose([])
    assert run_id_of(compose(["data.nuisance=1"])) == run_id_of(base)  # ids of runs made before the key existed
    assert run_id_of(compose(["data.nuisance=0.5"])) != run_id_of(base)
    b = build_data(compose(["data.nuisance=0.5", "data.size=100", "data.val_size=20"]).data)
    assert b.train.nuisance == 0.5 and b.val.nuisance == 0.5
