"""Bad input through the real entry point: one clear line, exit code 2, nothing created."""

import pytest
from PIL import Image

from conftest import TINY, run_cli

CASES = {
    "unknown model size": (["model=mixer/x9"], ["model=", "mixer/x9", "mixer/b16"]),
    "unknown model family": (["model=resnet/r50"], ["model=", "resnet/r50", "bit/r50x1"]),
    "unknown model name key": (["model.name=mixer/q1"], ["model.name", "mixer/q1", "mixer/b16"]),
    "patch does not divide image": (["data.image_size=30"], ["data.image_size", "30", "patch"]),
    "fraction above 1": (["data.fraction=1.5"], ["data.fraction", "1.5", "(0, 1]"]),
    "fraction zero": (["data.fraction=0"], ["data.fraction", "0", "(0, 1]"]),
    "examples_seen zero": (["train.examples_seen=0"], ["train.examples_seen", "0", "> 0"]),
    "examples_seen negative": (["train.examples_seen=-5"], ["train.examples_seen", "-5", "> 0"]),
    "unknown wandb mode": (["wandb.mode=sometimes"], ["wandb.mode", "sometimes", "offline"]),
    "unknown key": (["train.lr_peak=3"], ["train.lr_peak", "keys under train", "lr"]),
    "missing dataset dir": (["data=imagefolder", "data.root=/no/such/dir"], ["data.root", "/no/such/dir"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line_and_creates_nothing(tmp_path, name):
    overrides, must_mention = CASES[name]
    runs = tmp_path / "runs"
    proc = run_cli(["-m", "mixer_scaling.train", *TINY, "wandb.mode=offline", f"runs_dir={runs}", *overrides],
                   cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    for word in must_mention:
        assert word in lines[0], (word, lines[0])
    assert not runs.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no outputs/, wandb/, multirun/ either


def test_unreadable_image_is_named(tmp_path):
    root = tmp_path / "tree"
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (i * 90, 20, 30)).save(root / split / cls / f"{i}.png")
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    runs = tmp_path / "runs"
    proc = run_cli(["-m", "mixer_scaling.train", *TINY, f"runs_dir={runs}", "data=imagefolder",
                    f"data.root={root}", "data.image_size=32"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "broken.jpg" in proc.stderr
    assert not runs.exists()


def test_models_cli_rejects_bad_num_classes(tmp_path):
    proc = run_cli(["-m", "mixer_scaling.cli", "models", "--num-classes", "0"], cwd=tmp_path)
    assert proc.returncode == 2 and "--num-classes=0" in proc.stderr
