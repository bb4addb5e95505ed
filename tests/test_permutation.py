"""Input permutations (paper Fig. 4): Mixer's exact equivariance, BiT's lack of it, the permutation
functions, the data hooks (train, val, few-shot), bad input, run ids and the figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from mixer_scaling.analysis.permutation import render_permutation
from mixer_scaling.analysis.results import row_from_record
from mixer_scaling.config import compose, validate
from mixer_scaling.data import SyntheticImages, build_data, build_fewshot_sets
from mixer_scaling.data.permute import (
    PermutedDataset, apply_permutation, from_data_cfg, patch_pixel_parts, permutation_index,
)
from mixer_scaling.errors import ConfigError
from mixer_scaling.models import build_model
from mixer_scaling.records import run_id_of

S, P = 32, 4


def images(n=4, seed=0):
    """Structured images (the embedded generator), not i.i.d. noise: a pixel shuffle must matter."""
    return SyntheticImages(n, image_size=S, classes=10, seed=seed, split="val").__getitems__(range(n))[0]


def randomise(model, seed=0):
    """Random weights everywhere (the heads are zero-initialised) so outputs are not trivially equal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.5 / max(1, p[0].numel()) ** 0.5 + 0.02))
    return model.eval()


# ----------------------------------------------------------------------------------------------
# (a) the key property: Mixer is exactly equivariant to patch + shared in-patch pixel shuffles


def test_mixer_is_equivariant_to_patch_pixel_permutation():
    model = randomise(build_model({"name": "mixer/tiny"}, num_classes=10, image_size=S)).double()
    x = images().double()
    patch_perm, pixel_perm = patch_pixel_parts(S, P, seed=3)
    xp = apply_permutation(x, permutation_index("patch_pixel", S, P, seed=3))
    with torch.no_grad():
        y = model(x)
        y_plain = model(xp)  # the same weights on the shuffled image: a different function of it
        pp, px = torch.from_numpy(patch_perm), torch.from_numpy(pixel_perm)
        w = model.stem.proj.weight  # (C, 3, p, p): kernel pixels follow the in-patch permutation
        w.copy_(w.flatten(2)[:, :, px].view_as(w))
        for block in model.blocks:
            fc1, fc2 = block.mlp_tokens.fc1, block.mlp_tokens.fc2
            fc1.weight.copy_(fc1.weight[:, pp])  # token-mixing inputs: columns by the patch permutation
            fc2.weight.copy_(fc2.weight[pp, :])  # outputs: rows ...
            fc2.bias.copy_(fc2.bias[pp])  # ... and bias
        y_perm = model(xp)
    assert y.abs().max() > 0.1  # not a trivial (zero) output
    assert (y_perm - y).abs().max().item() <= 1e-5
    assert (y_plain - y).abs().max().item() > 1e-2  # the rearranged weights are what makes it exact


# ----------------------------------------------------------------------------------------------
# (b) the contrast: BiT (a ResNet) has no such symmetry


def test_bit_is_not_equivariant():
    """A ResNet's convolutions see pixel neighbourhoods that straddle patch borders and a stride-2
    3x3 stem: no rearrangement of its weights undoes the shuffle. Measured honestly: how far the
    output on the shuffled image is from the output on the original, against how far apart the
    outputs of different images are (random weights, structured images)."""
    model = randomise(build_model({"name": "bit/tiny"}, num_classes=10, image_size=S)).double()
    x = images(8).double()
    with torch.no_grad():
        y = model(x)
        spread = (y - y.mean(0)).norm()  # how much the output varies between different images
        for kind in ("patch_pixel", "global"):
            yp = model(apply_permutation(x, permutation_index(kind, S, P, seed=3)))
            rel = ((yp - y).norm() / spread).item()
            assert rel > 0.5, (kind, rel)  # measured ~1.4: a shuffled image is as far as another image


# ----------------------------------------------------------------------------------------------
# (c) the permutation functions


@pytest.mark.parametrize("kind", ["patch_pixel", "global"])
def test_permutations_are_seeded_bijections(kind):
    idx = permutation_index(kind, S, P, seed=0)
    assert idx.dtype == torch.int64 and sorted(idx.tolist()) == list(range(S * S))
    assert torch.equal(idx, permutation_index(kind, S, P, seed=0))
    assert not torch.equal(idx, permutation_index(kind, S, P, seed=1))
    assert not torch.equal(idx, torch.arange(S * S))
    x = torch.randn(2, 3, S, S)
    y = apply_permutation(x, idx)
    inv = torch.empty_like(idx)
    inv[idx] = torch.arange(S * S)
    assert torch.equal(apply_permutation(y, inv), x)
    assert torch.equal(y[:, 1].flatten(1), x[:, 1].flatten(1)[:, idx])  # channels move together


def _patch_of(flat: torch.Tensor) -> torch.Tensor:
    r, c = flat // S, flat % S
    return (r // P) * (S // P) + c // P


def test_patch_pixel_moves_whole_patches_with_one_shared_pixel_order():
    idx = permutation_index("patch_pixel", S, P, seed=5).view(S // P, P, S // P, P).permute(0, 2, 1, 3)
    idx = idx.reshape(-1, P * P)  # one row per output patch (row-major on the grid)
    src = _patch_of(idx)
    assert all(len(set(row.tolist())) == 1 for row in src)  # a patch maps to a patch
    assert sorted(src[:, 0].tolist()) == list(range((S // P) ** 2))
    patch_perm, pixel_perm = patch_pixel_parts(S, P, seed=5)
    assert src[:, 0].tolist() == patch_perm.tolist()
    within = (idx // S % P) * P + idx % S % P  # source pixel position inside its patch
    assert all(row.tolist() == pixel_perm.tolist() for row in within)  # the same for every patch


def test_global_does_not_keep_patches_together():
    idx = permutation_index("global", S, seed=5).view(S // P, P, S // P, P).permute(0, 2, 1, 3).reshape(-1, P * P)
    assert sum(len(set(row.tolist())) > 1 for row in _patch_of(idx)) > 0.9 * len(idx)


# ----------------------------------------------------------------------------------------------
# (d) the data hooks: train, val and the few-shot sets, the same permutation


def synth(**kw):
    base = dict(name="synthetic", fraction=0.5, image_size=S, num_classes=10, size=64, val_size=32, seed=0,
                flip=False, randaugment=None, num_workers=0, permutation=None, permutation_seed=0,
                permutation_patch=None)
    return OmegaConf.create({**base, **kw})


@pytest.mark.parametrize("kind", ["patch_pixel", "global"])
def test_build_data_permutes_train_val_and_fewshot_alike(kind):
    idx = permutation_index(kind, S, P, seed=2)
    plain, perm = build_data(synth()), build_data(synth(permutation=kind, permutation_seed=2, permutation_patch=P))
    assert perm.train_size == plain.train_size == 32 and isinstance(perm.train, PermutedDataset)
    for a, b in ((plain.train, perm.train), (plain.val, perm.val)):
        xa, ya = a.__getitems__(list(range(8)))
        xb, yb = b.__getitems__(list(range(8)))
        assert torch.equal(yb, ya) and torch.equal(xb, apply_permutation(xa, idx))
        assert torch.equal(b[3][0], apply_permutation(a[3][0], idx))  # single items too
    loader = torch.utils.data.DataLoader(perm.train, batch_size=8, collate_fn=perm.collate_fn)
    xb, yb = next(iter(loader))
    assert xb.shape == (8, 3, S, S) and torch.equal(xb, apply_permutation(plain.train.__getitems__(range(8))[0], idx))
    fcfg = {"datasets": ["digits", "synthetic_heldout"], "shots": [1, 5]}
    fs_plain = build_fewshot_sets(fcfg, S, synth())
    fs_perm = build_fewshot_sets(fcfg, S, synth(permutation=kind, permutation_seed=2, permutation_patch=P))
    for name in fcfg["datasets"]:
        assert np.array_equal(fs_perm[name].pool_labels(), fs_plain[name].pool_labels())
        for split in ("train", "test"):
            xa, ya = getattr(fs_plain[name], split).__getitems__([0, 5, 9])
            xb, yb = getattr(fs_perm[name], split).__getitems__([0, 5, 9])
            assert torch.equal(yb, ya) and torch.equal(xb, apply_permutation(xa, idx)), (name, split)


def test_null_patch_means_the_model_patch():
    cfg = compose(["data.permutation=patch_pixel", "data.size=64", "data.val_size=32"])
    assert cfg.data.permutation_patch is None
    assert torch.equal(from_data_cfg(cfg.data), permutation_index("patch_pixel", S, 4, seed=0))  # mixer/tiny: /4
    assert torch.equal(from_data_cfg(synth(permutation="patch_pixel"), model_patch=8),
                       permutation_index("patch_pixel", S, 8, seed=0))
    with pytest.raises(ConfigError, match="data.permutation_patch"):
        from_data_cfg(synth(permutation="patch_pixel"))  # a plain dict: no model to default to


def test_wrapper_on_a_set_without_batched_getitems():
    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.full((3, S, S), float(i)) + torch.arange(S * S).view(S, S), i

    idx = permutation_index("global", S, seed=0)
    ds = PermutedDataset(Plain(), idx)
    batch = ds.__getitems__([1, 2])
    assert isinstance(batch, list) and torch.equal(batch[0][0], apply_permutation(Plain()[1][0], idx))


# ----------------------------------------------------------------------------------------------
# (e) bad input: one line naming the key, the value and what is allowed


@pytest.mark.parametrize("overrides, needle", [
    (["data.permutation=shuffle"], "data.permutation='shuffle' is not allowed; choose one of: null, patch_pixel, global"),
    (["data.permutation=patch_pixel", "data.permutation_patch=5"], "data.permutation_patch=5"),
    (["data.permutation=global", "data.permutation_seed=-1"], "data.permutation_seed=-1"),
    (["data.permutation=patch_pixel", "model=bit/tiny"], "set data.permutation_patch"),
])
def test_bad_permutation_config_is_one_line(overrides, needle):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides", [
    ["data.permutation=patch_pixel"],
    ["data.permutation=patch_pixel", "model=bit/tiny", "data.permutation_patch=4"],
    ["data.permutation=global", "model=bit/tiny"],
    ["data.permutation=patch_pixel", "model=vit/tiny"],
])
def test_good_permutation_configs_validate(overrides):
    validate(compose(overrides))


# ----------------------------------------------------------------------------------------------
# run identity: the new keys leave every unpermuted run id unchanged


def test_default_run_ids_are_unchanged_by_the_permutation_keys():
    for overrides in ([], ["model=bit/tiny", "data.fraction=0.1"], ["data.permutation_seed=3"]):
        cfg = compose(overrides)
        tree = OmegaConf.to_container(cfg, resolve=True)
        old = {k: v for k, v in tree["data"].items() if not k.startswith("permutation")}
        assert run_id_of(cfg) == run_id_of({**tree, "data": old})
    ids = {run_id_of(compose(o)) for o in ([], ["data.permutation=global"], ["data.permutation=patch_pixel"],
                                           ["data.permutation=global", "data.permutation_seed=1"])}
    assert len(ids) == 4


# ----------------------------------------------------------------------------------------------
# (f) the figure


def test_render_permutation_writes_png_pdf_csv(tmp_path):
    rows = []
    acc = {("mixer", None): 0.6, ("mixer", "patch_pixel"): 0.6, ("mixer", "global"): 0.35,
           ("bit", None): 0.7, ("bit", "patch_pixel"): 0.4, ("bit", "global"): 0.2}
    for (fam, perm), a in acc.items():
        for seed in (0, 1):
            rec = {"run_id": f"{fam}{perm}{seed}", "family": fam, "model": f"{fam}/tiny", "status": "done",
                   "seed": seed, "config": {"data": {"permutation": perm}},
                   "metrics": {"val_top1": a / 2, "fewshot": {"digits": {"1": a / 3, "5": a + 0.01 * seed}}}}
            rows.append(row_from_record(rec))
    df = pd.DataFrame(rows)
    assert set(df["permutation"]) == {"original", "patch_pixel", "global"}
    files = render_permutation(df, tmp_path / "figs")
    assert sorted(f.name for f in files) == ["permutation.csv", "permutation.pdf", "permutation.png"]
    assert all(f.stat().st_size > 0 for f in files)
    table = pd.read_csv(tmp_path / "figs" / "permutation.csv")
    assert len(table) == 6 and set(table["metric"]) == {"fewshot_digits_5"}
    assert list(table["model"]) == ["mixer/tiny"] * 3 + ["bit/tiny"] * 3  # Mixer first, as the paper
    mixer = table[table["model"] == "mixer/tiny"].set_index("permutation")
    assert mixer.loc["original", "relative_drop"] == pytest.approx(0.0)
    assert mixer.loc["global", "relative_drop"] == pytest.approx(1 - 0.355 / 0.605)
    assert (table["n"] == 2).all() and (table["std"] > 0).all()
    top1 = render_permutation(df, tmp_path / "top1", metric="val_top1")
    assert set(pd.read_csv(top1[-1])["metric"]) == {"val_top1"}


def test_figures_command_adds_the_permutation_bars_when_runs_vary_it(tmp_path, capsys):
    from mixer_scaling import cli
    from mixer_scaling.analysis.results import synthetic_records, write_records

    records = synthetic_records(60, seed=0)
    for i, rec in enumerate(records):
        rec.setdefault("config", {}).setdefault("data", {})["permutation"] = [None, "patch_pixel", "global"][i % 3]
    write_records(records, tmp_path / "runs")
    assert cli.main(["figures", str(tmp_path / "runs"), "-o", str(tmp_path / "figs"), "--boot", "10"]) == 0
    assert (tmp_path / "figs" / "permutation.png").exists() and "permutation.csv" in capsys.readouterr().out
    write_records(synthetic_records(20, seed=1), tmp_path / "plain")  # no permutation axis: no bars
    assert cli.main(["figures", str(tmp_path / "plain"), "-o", str(tmp_path / "plain_figs"), "--boot", "10"]) == 0
    assert not (tmp_path / "plain_figs" / "permutation.png").exists()
