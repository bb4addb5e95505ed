"""Bad input through the train entry point: one clear line, exit code 2, nothing created."""

import sys

import pytest
from PIL import Image

from conftest import TINY, TINY_SYNTHETIC, run_cli
from mixer_scaling import train

NOT_DATA = [o for o in TINY if o not in TINY_SYNTHETIC]

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
    "unknown recipe": (["train=jft300m"], ["train=", "jft300m", "cpu, finetune, imagenet, jft"]),
    "sweep value unknown": (["-m", "model=mixer/tiny,mixer/b99"], ["model=", "mixer/b99"]),
}


def run_main(monkeypatch, capsys, args):
    """The entry point in-process (the same code path as the console script, without interpreter start-up)."""
    monkeypatch.setattr(sys, "argv", ["mixer_scaling.train", *args])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_is_one_clear_line_and_creates_nothing(tmp_path, monkeypatch, capsys, name):
    overrides, must_mention = CASES[name]
    monkeypatch.chdir(tmp_path)
    code, err = run_main(monkeypatch, capsys, [*TINY, "wandb.mode=offline", f"runs_dir={tmp_path / 'runs'}", *overrides])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    for word in must_mention:
        assert word in lines[0], (word, lines[0])
    assert list(tmp_path.iterdir()) == []  # no runs/, outputs/, multirun/ or wandb/


def test_missing_dataset_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(monkeypatch, capsys, [*NOT_DATA, f"runs_dir={tmp_path / 'runs'}", "data=imagefolder",
                                               "data.root=/no/such/dir"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "data.root='/no/such/dir' does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_unreadable_image_is_named_by_the_real_cli(tmp_path):
    root = tmp_path / "tree"
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (i * 90, 20, 30)).save(root / split / cls / f"{i}.png")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg")
    runs = tmp_path / "runs"
    proc = run_cli(["-m", "mixer_scaling.train", *NOT_DATA, f"runs_dir={runs}", "data=imagefolder",
                    f"data.root={root}", "data.image_size=32", "wandb.mode=offline"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "broken.jpg" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_bad_override_through_the_console_script(tmp_path):
    proc = run_cli(["-m", "mixer_scaling.cli", "train", "data.fraction=2", f"runs_dir={tmp_path / 'runs'}"],
                   cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: data.fraction=2 is not allowed; expected a number in (0, 1]"
    assert list(tmp_path.iterdir()) == []


def test_models_cli_rejects_bad_num_classes(tmp_path):
    proc = run_cli(["-m", "mixer_scaling.cli", "models", "--num-classes", "0"], cwd=tmp_path)
    assert proc.returncode == 2 and "--num-classes=0" in proc.stderr


def test_hydra_value_flags_are_not_taken_for_overrides(tmp_path, monkeypatch, capsys):
    """`--config-dir DIR` (and -cn/-cp/-cd) take a value; the precheck must not read it as an override."""
    from mixer_scaling.config import CONF_DIR, check_overrides

    assert check_overrides(["--config-dir", str(CONF_DIR), "-cn", "config", "seed=3"]) == 1
