"""`mixer-scaling weights <run>`: the paper's Fig. 5 from a real (tiny) Mixer run's checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from mixer_scaling import cli
from mixer_scaling.analysis.weights import pair_units, token_mixing_weights
from mixer_scaling.config import compose
from mixer_scaling.train import run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
    from conftest import TINY

    root = tmp_path_factory.mktemp("weights")
    out = {}
    for model in ("mixer/tiny", "bit/tiny"):
        record = run(compose([*TINY, f"runs_dir={root / 'runs'}", f"model={model}", "fewshot.shots=[1]"]))
        out[model] = record["run_dir"]
    return root, out


def test_pairs_opposite_units_and_orders_global_before_local():
    side = 8
    yy, xx = np.mgrid[:side, :side]
    smooth = np.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / 20).ravel()  # a global blob
    checker = ((yy + xx) % 2 * 2 - 1).astype(float).ravel()         # the most local pattern
    w = np.stack([checker, smooth, -checker * 0.9, -smooth * 0.8])
    order = pair_units(w)
    assert order == [1, 3, 0, 2]  # (smooth, -smooth) first, then (checker, -checker)


def test_weights_figure_from_a_tiny_mixer_run(runs, tmp_path, capsys):
    root, run_dirs = runs
    blocks, side = token_mixing_weights(__import__("pathlib").Path(run_dirs["mixer/tiny"]))
    assert side == 8 and sorted(blocks) == [0, 1, 2, 3] and blocks[0].shape == (64, 64)  # D_S x S
    run_id = run_dirs["mixer/tiny"].rsplit("/", 1)[-1]
    code = cli.main(["weights", run_id, "--runs-dir", str(root / "runs"), "-o", str(tmp_path / "fig"),
                     "--blocks", "0,3", "--units", "32"])
    assert code == 0
    files = sorted(p.name for p in (tmp_path / "fig").iterdir())
    assert files == [f"token_mixing_{run_id}.pdf", f"token_mixing_{run_id}.png"]
    assert (tmp_path / "fig" / files[1]).stat().st_size > 10_000


@pytest.mark.parametrize("args, words", [
    (["no-such-run"], ["no-such-run", "not found"]),
    (["BIT", "-o", "x"], ["bit model", "only for Mixer"]),
    (["MIXER", "--blocks", "0,9"], ["--blocks 9", "blocks 0..3"]),
    (["MIXER", "--blocks", "first"], ["--blocks='first'"]),
    (["MIXER", "--units", "1"], ["--units=1"]),
])
def test_bad_input_is_one_line(runs, tmp_path, monkeypatch, capsys, args, words):
    root, run_dirs = runs
    monkeypatch.chdir(tmp_path)
    args = [{"BIT": run_dirs["bit/tiny"], "MIXER": run_dirs["mixer/tiny"]}.get(a, a) for a in args]
    code = cli.main(["weights", *args, "--runs-dir", str(root / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and all(w in err[0] for w in words), err
    assert not (tmp_path / "x").exists() and not (tmp_path / "figures").exists()
