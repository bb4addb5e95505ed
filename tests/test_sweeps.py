"""Every sweep in conf/sweep/ composes into the grid it claims; presets, cost and bad input of `sweep launch`.

The dispatch itself is tested against a real SLURM cluster in tests/test_sweep_slurm.py; here the
local and debug executors run real cells on this machine.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import pandas as pd
import pytest

from conftest import ROOT
from mixer_scaling import cli, train
from mixer_scaling.launch import PRESET_GFLOPS, launcher_params, preset_for
from mixer_scaling.sweep import load, known_sweeps

JFT = 300_000_000


@pytest.fixture
def paper_roots(tmp_path):
    """The paper sweeps read JFT-sized and ImageNet folders; launching lists their split folders (a cell's run
    id holds a fingerprint of the data, see mixer_scaling.data.fingerprint)."""
    for root in ("jft", "imagenet"):
        for split in ("train", "val"):
            (tmp_path / root / split).mkdir(parents=True)
    return [f"data.root={tmp_path / 'jft'}", f"fewshot.root={tmp_path / 'imagenet'}"]


def models(sweep):
    return Counter(c.cfg.model.name for c in sweep.cells)


def test_every_sweep_file_is_tested_here():
    assert set(known_sweeps()) == {"demo", "cpu_study", "smoke", "smoke_stages", "data_scaling", "pareto", "permutation"}
    assert sorted(p.stem for p in (ROOT / "src" / "mixer_scaling" / "conf" / "sweep").glob("*.yaml")) == sorted(known_sweeps())


def test_demo_grid():
    """The demo is the data-scaling experiment in miniature: one size per family, 4 nested fractions,
    2 seeds everywhere, one budget and one recipe for every family, early stopping on."""
    sweep = load("demo", progress=False)
    assert len(sweep.cells) == 24
    assert models(sweep) == {f"{f}/micro": 8 for f in ("mixer", "vit", "bit")}
    assert Counter((float(c.cfg.data.fraction), c.cfg.seed) for c in sweep.cells) == {
        (f, s): 3 for f in (0.03, 0.1, 0.3, 1.0) for s in (0, 1)}
    assert {c.cfg.data.name for c in sweep.cells} == {"synthetic"}
    assert {c.cfg.study for c in sweep.cells} == {"demo"}
    # one protocol: every train.* value is the same for every family (the paper's constant-steps budget too)
    assert len({json.dumps(c.resolved["train"], sort_keys=True) for c in sweep.cells}) == 1
    assert sweep.cells[0].cfg.train.eval_every_examples > 0  # early stopping (paper §3.3)
    assert {tuple(c.cfg.fewshot.datasets) for c in sweep.cells} == {("synthetic_heldout",)}
    assert len({c.run_id for c in sweep.cells}) == 24


def test_cpu_study_is_the_demo_protocol_at_two_sizes_with_a_learning_rate_grid():
    study, demo = load("cpu_study", progress=False), load("demo", progress=False)
    assert len(study.cells) == 96
    assert models(study) == {f"{f}/{s}": 16 for f in ("mixer", "vit", "bit") for s in ("micro", "tiny")}
    assert Counter((float(c.cfg.data.fraction), c.cfg.train.lr, c.cfg.seed) for c in study.cells) == {
        (f, lr, s): 6 for f in (0.03, 0.1, 0.3, 1.0) for lr in (1e-3, 3e-3) for s in (0, 1)}
    assert {c.cfg.study for c in study.cells} == {"cpu_study"}
    # the demo's recipe for every cell but the learning rate, and the demo's cells are among the study's
    assert {json.dumps({**c.resolved["train"], "lr": None}, sort_keys=True) for c in study.cells} == \
        {json.dumps({**c.resolved["train"], "lr": None}, sort_keys=True) for c in demo.cells}
    assert {c.run_id for c in demo.cells} <= {c.run_id for c in study.cells}


def test_permutation_grid_is_fig4():
    sweep = load("permutation", progress=False)
    assert len(sweep.cells) == 6
    assert Counter((c.cfg.model.name, c.cfg.data.permutation) for c in sweep.cells) == {
        (m, p): 1 for m in ("mixer/tiny", "bit/tiny") for p in (None, "patch_pixel", "global")}
    assert {c.cfg.data.name for c in sweep.cells} == {"synthetic"}
    assert {c.cfg.study for c in sweep.cells} == {"permutation"}
    assert {c.cfg.data.permutation_patch for c in sweep.cells} == {4}  # BiT has no patch; mixer/tiny's is 4
    assert len({c.cfg.train.examples_seen for c in sweep.cells}) == 1
    assert {c.cfg.train.examples_seen for c in sweep.cells} == {9600}  # the demo's budget on the cpu recipe
    assert len({c.run_id for c in sweep.cells}) == 6
    assert "digits" in {d for c in sweep.cells for d in c.cfg.fewshot.datasets}


def test_smoke_grid_is_the_smallest_real_grid():
    sweep = load("smoke", progress=False)
    assert len(sweep.cells) == 2
    assert set(models(sweep)) == {"mixer/micro", "bit/micro"}
    assert all(c.cfg.train.examples_seen <= 1024 for c in sweep.cells)


def test_data_scaling_grid_matches_the_paper(paper_roots):
    sweep = load("data_scaling", paper_roots, progress=False)
    assert len(sweep.cells) == 7 * 4
    assert set(models(sweep)) == {"mixer/b32", "mixer/l32", "mixer/l16", "vit/b32", "vit/l32", "vit/l16", "bit/r152x2"}
    fractions = sorted({float(c.cfg.data.fraction) for c in sweep.cells})
    assert fractions == [0.03, 0.1, 0.3, 1.0]
    assert {c.cfg.train.examples_seen for c in sweep.cells} == {7 * JFT}
    epochs = {f: round(7 * JFT / (f * JFT)) for f in fractions}
    assert epochs == {0.03: 233, 0.1: 70, 0.3: 23, 1.0: 7}  # the paper's 233/70/23/7 epochs
    lrs = {c.cfg.model.name: c.cfg.train.lr for c in sweep.cells}
    assert lrs["mixer/b32"] == 3e-3 and lrs["mixer/l16"] == 1e-3 and lrs["vit/l32"] == 6e-4  # see PAPER_RECIPES
    assert all(c.cfg.fewshot.shots == [5] and c.cfg.fewshot.datasets == ["imagefolder"] for c in sweep.cells)


def registry_name(row) -> str:
    """Table 3's model column as a registry name: Mixer-B/16 → mixer/b16, BiT-R50x1 → bit/r50x1."""
    return f"{row.family}/{row.size.lower()}{'' if row.family == 'bit' else int(row.patch)}"


def test_pareto_grid_is_table_3s_jft_block(paper_roots):
    sweep = load("pareto", paper_roots, progress=False)
    table = pd.read_csv(ROOT / "src/mixer_scaling/reference/paper_table3.csv")
    jft = table[(table.pretrain == "JFT-300M") & (table.image_size == 224)]
    paper_epochs: dict[str, set] = {}
    for row in jft.itertuples():
        paper_epochs.setdefault(registry_name(row), set()).add(int(row.pretrain_epochs))
    assert set(models(sweep)) == set(paper_epochs)
    assert len(sweep.cells) == 14
    for c in sweep.cells:
        assert c.cfg.train.examples_seen / JFT in paper_epochs[c.cfg.model.name], c.cfg.model.name
    big = {"mixer/l32", "mixer/l16", "mixer/h14"}  # Mixer Table 4: 1e-3 for L and H; baselines: PAPER_RECIPES
    assert {c.cfg.model.name for c in sweep.cells if c.cfg.model.family == "mixer" and c.cfg.train.lr == 1e-3} == big


# Each family's JFT-300M pre-training recipe, from its paper (the sweeps' comments quote the passages):
#   Mixer (Tolstikhin et al. 2021, arXiv 2105.01601): §3 "Pre-training" (Adam β=(0.9, 0.999), 10k warmup
#     steps, linear decay, batch 4096, clipping at global norm 1) and App. B Table 4 as given in
#     /work/shared/paper-facts.md: JFT-300M wd 0.03, lr 3e-3 for S and B, 1e-3 for L and H.
#   ViT and its ResNets (BiT) (Dosovitskiy et al. 2021, arXiv 2010.11929): §4.1 (Adam β=(0.9, 0.999), batch
#     4096, wd 0.1 for all models including ResNets), App. B.1 Table 3, JFT-300M rows (10k warmup, linear
#     decay, wd 0.1, lr per model; clipping only stated for ImageNet). The Mixer paper compares to "BiT models
#     pre-trained with Adam" (§3.2), i.e. these, not BiT's own SGD recipe.
MIXER_LR = {"s": 3e-3, "b": 3e-3, "l": 1e-3, "h": 1e-3}  # by scale: mixer/<scale><patch>
VIT_LR = {"vit/b16": 8e-4, "vit/b32": 8e-4, "vit/l32": 6e-4, "vit/l16": 4e-4, "vit/h14": 3e-4}
BIT_LR = {"bit/r50x1": 1e-3, "bit/r50x2": 1e-3, "bit/r101x1": 8e-4, "bit/r152x1": 6e-4, "bit/r152x2": 6e-4,
          "bit/r200x3": 6e-4}  # R200x3 is not in ViT Table 3: the sweep takes R152x{1,2}'s rate (unverified)
PAPER_RECIPES = {  # family -> (optimizer, betas, weight_decay, warmup_steps, schedule, grad_clip, batch_size)
    "mixer": ("adamw", [0.9, 0.999], 0.03, 10_000, "linear", 1.0, 4096),
    "vit": ("adamw", [0.9, 0.999], 0.1, 10_000, "linear", None, 4096),
    "bit": ("adamw", [0.9, 0.999], 0.1, 10_000, "linear", None, 4096),
}


def paper_lr(model: str) -> float:
    family = model.split("/")[0]
    if family == "mixer":
        return MIXER_LR[model.split("/")[1][0]]
    return {"vit": VIT_LR, "bit": BIT_LR}[family][model]


@pytest.mark.parametrize("name", ["data_scaling", "pareto"])
def test_every_cell_trains_with_its_familys_published_recipe(paper_roots, name):
    """Read from the composed cells (what a run gets), not from the YAML: Mixer cells Table 4's values, ViT cells
    the ViT paper's for their size, BiT cells the ViT paper's ResNet rows — never another family's."""
    sweep = load(name, paper_roots, progress=False)
    families = Counter()
    for c in sweep.cells:
        t, model = c.cfg.train, c.cfg.model.name
        families[c.cfg.model.family] += 1
        got = (t.optimizer, list(t.betas), t.weight_decay, t.warmup_steps, t.schedule, t.grad_clip, t.batch_size)
        assert got == PAPER_RECIPES[c.cfg.model.family], model
        assert t.lr == paper_lr(model), model
        assert c.resolved["train"]["lr"] == t.lr  # what the run id and the job get
    assert set(families) == {"mixer", "vit", "bit"}
    if name == "data_scaling":  # the constant-steps protocol is kept for every family and fraction
        assert {c.cfg.train.examples_seen for c in sweep.cells} == {7 * JFT}
        assert Counter(c.cfg.model.family for c in sweep.cells) == {"mixer": 12, "vit": 12, "bit": 4}


def test_recipes_are_left_out_of_run_ids_but_what_they_set_is_not(paper_roots):
    """A recipe table is a lookup: a Mixer cell's id does not move when a baseline's entry changes, but a
    cell whose own values change gets a new id (it is a different run)."""
    base = {c.cfg.model.name: c.run_id for c in load("data_scaling", paper_roots, progress=False).cells
            if c.cfg.data.fraction == 1.0}
    bumped = {c.cfg.model.name: c.run_id for c in load(
        "data_scaling", [*paper_roots, "recipe.weight_decay.bit=0.2", "recipe.grad_clip.vit=1.0"],
        progress=False).cells if c.cfg.data.fraction == 1.0}
    assert {m for m in base if base[m] != bumped[m]} == {"vit/b32", "vit/l32", "vit/l16", "bit/r152x2"}


def test_command_line_axes_extend_and_replace_the_sweeps():
    assert len(load("smoke", ["seed=0,1,2"], progress=False).cells) == 6
    replaced = load("smoke", ["model=vit/micro"], progress=False)
    assert [c.cfg.model.name for c in replaced.cells] == ["vit/micro"]
    globbed = load("smoke", ["model=glob(*/micro)"], progress=False)
    assert set(models(globbed)) == {"mixer/micro", "vit/micro", "bit/micro"}


def test_cells_share_run_ids_with_plain_runs():
    """A sweep cell is the run a plain `train` with the same overrides would make (same directory)."""
    from mixer_scaling.config import compose
    from mixer_scaling.records import run_id_of

    cell = load("smoke", progress=False).cells[0]
    plain = [o for o in cell.overrides if not o.startswith("+sweep")]
    smoke_values = ["data.size=1000", "data.val_size=128", "train.examples_seen=512", "train.batch_size=64",
                    "train.warmup_steps=2", "fewshot.datasets=[digits]", "fewshot.shots=[1,5]", "fewshot.seeds=[0]",
                    "eval.batch_size=128", "eval.throughput_batch_sizes=[8,32]", "eval.throughput_repeats=1"]
    assert run_id_of(compose([*plain, *smoke_values])) == cell.run_id


def test_compose_many_gives_what_compose_gives(paper_roots, tmp_path):
    """The grid composer (defaults composed once per group choice, values applied by Hydra's own
    function) returns exactly compose(cell) for every cell, errors included."""
    from omegaconf import OmegaConf

    from mixer_scaling.config import compose, compose_many, grid
    from mixer_scaling.errors import ConfigError

    # the first cells of every sweep (its group choices and values; the rest of a grid repeats them)
    grids = [grid(["+sweep=" + name, *(paper_roots if name in ("pareto", "data_scaling") else []), "seed=0,1"])[:8]
             for name in known_sweeps()]
    odd = [["+sweep=smoke", "model=vit/micro", "+extra.key=3", "train.lr=${train.weight_decay}"],
           ["data=cifar10", f"data.root={tmp_path}", "~train.mixup", "eval={batch_size: 7}", "seed=4"],
           ["data=imagefolder", "data.fraction=0.3", "study=x", "runs_dir=/tmp/r", "++progress=false"],
           ["model=mixer/tiny", "data.image_size=64", "train.batch_size=32", "hydra.launcher.partition=x"]]
    cells = [c for g in grids for c in g] + odd
    assert len(cells) > 50
    for cell, got in zip(cells, compose_many(cells), strict=True):
        want = compose(cell)
        assert OmegaConf.to_yaml(got) == OmegaConf.to_yaml(want), cell
        assert OmegaConf.is_struct(got) == OmegaConf.is_struct(want)
    for bad in (["train.nope=1"], ["model=mixer/x9"], ["seed=1,2"], ["data.fraction=[1"], ["+train.lr=1"],
                ["~fewshot.root"]):
        with pytest.raises(ConfigError) as want:
            compose(bad)
        with pytest.raises(ConfigError) as got:
            list(compose_many([["seed=0"], bad]))
        assert str(got.value) == str(want.value), bad


def test_fast_missing_keys_match_omegaconf(paper_roots):
    from omegaconf import OmegaConf

    from mixer_scaling.config import compose, missing_keys

    for overrides in ([], ["data=imagefolder"], ["+sweep=pareto", "model=mixer/s32"], ["data=cifar10"]):
        cfg = compose(overrides)
        assert missing_keys(cfg) == OmegaConf.missing_keys(cfg)
    cfg = OmegaConf.create({"a": "???", "b": [1, "???", {"c": "???"}], "d": {"e": None, "f": "${b}"}, "g": None})
    assert missing_keys(cfg) == OmegaConf.missing_keys(cfg) == {"a", "b[1]", "b[2].c"}


# ---------------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------------


def test_presets_grow_with_the_model(paper_roots):
    sweep = load("pareto", paper_roots, progress=False)
    by_model = {c.cfg.model.name: preset_for(c, None) for c in sweep.cells}
    assert by_model["mixer/s32"] == "gpu1" and by_model["mixer/h14"] == "gpu16"
    small, huge = launcher_params("slurm", "gpu1", []), launcher_params("slurm", "gpu16", [])
    assert huge["nodes"] * huge["gpus_per_node"] > small["nodes"] * small["gpus_per_node"]
    assert huge["mem_gb"] > small["mem_gb"] and huge["timeout_min"] >= small["timeout_min"]
    demo = load("demo", progress=False)
    assert {preset_for(c, None) for c in demo.cells} == {"cpu"}
    assert preset_for(demo.cells[0], "gpu8") == "gpu8"  # resources=<preset> wins


def test_every_preset_file_is_in_the_size_table():
    files = sorted(p.stem for p in (ROOT / "src" / "mixer_scaling" / "conf" / "resources").glob("*.yaml"))
    assert files == sorted(name for name, _ in PRESET_GFLOPS)
    for name in files:
        params = launcher_params("slurm", name, [])
        assert params["max_num_timeout"] > 0 and params["signal_delay_s"] > 0  # time limits requeue
        assert params["setup"] == [f"export OMP_NUM_THREADS={params['cpus_per_task']}"]


def test_launcher_overrides_reach_the_params():
    params = launcher_params("slurm", "gpu8", ["hydra.launcher.partition=gpu", "hydra.launcher.account=vision",
                                               "hydra.launcher.array_parallelism=4",
                                               "+hydra.launcher.additional_parameters.mail-type=END"])
    assert params["partition"] == "gpu" and params["account"] == "vision" and params["array_parallelism"] == 4
    assert params["additional_parameters"] == {"mail-type": "END"}


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing created or submitted
# ---------------------------------------------------------------------------------------------

LAUNCH_CASES = {
    "unknown sweep": (["nope"], ["sweep 'nope'", "demo, pareto, permutation, smoke"]),
    "empty grid": (["smoke", "seed=range(0,0)"], ["seed=range(0,0)", "empty"]),
    "invalid override": (["smoke", "train.lr=="], ["invalid override"]),
    "bad value in one cell": (["smoke", "data.fraction=0.5,7"], ["data.fraction", "7", "(0, 1]"]),
    "unknown key": (["smoke", "train.lr_peak=3"], ["train.lr_peak"]),
    "unknown model in an axis": (["smoke", "model=mixer/micro,mixer/b99"], ["mixer/b99"]),
    "unknown launcher key": (["smoke", "hydra.launcher.partiton=gpu"], ["hydra.launcher.partiton", "partition"]),
    "unknown resources preset": (["smoke", "resources=huge"], ["resources=", "huge", "gpu16"]),
    "unknown executor": (["smoke", "--executor", "pbs"], ["--executor", "pbs", "slurm, local, debug"]),
    "other hydra keys": (["smoke", "hydra.sweep.dir=/x"], ["hydra.sweep.dir", "hydra.launcher"]),
    "paper sweep without its data": (["pareto"], ["data.root", "required"]),
    "bad array size": (["smoke", "--executor", "local", "--max-array-size", "0"], ["--max-array-size", "0"]),
    "batch does not split over tasks": (["smoke", "train.batch_size=63", "hydra.launcher.tasks_per_node=2",
                                         "--executor", "local"], ["train.batch_size=63", "2 tasks", "multiple of 2"]),
    "zero mfu": (["smoke", "--executor", "local", "--mfu", "0"], ["--mfu=0", "(0, 1]"]),
    "zero parallel": (["smoke", "--executor", "local", "--parallel", "0"], ["--parallel=0", ">= 1"]),
}


@pytest.mark.parametrize("name", list(LAUNCH_CASES))
def test_bad_launch_is_one_line_and_creates_nothing(tmp_path, monkeypatch, capsys, name):
    args, must_mention = LAUNCH_CASES[name]
    monkeypatch.chdir(tmp_path)
    sweep, rest = args[0], args[1:]
    code = cli.main(["sweep", "launch", sweep, f"runs_dir={tmp_path / 'runs'}", *rest])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    for word in must_mention:
        assert word in lines[0], (word, lines[0])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, words", [
    (["+sweep=nope"], ["sweep=", "nope"]),
    (["+sweep=smoke", "resources=gpu8"], ["resources=gpu8", "hydra/launcher=slurm"]),
    (["+sweep=smoke", "hydra/launcher=slurm", "hydra.launcher.qqos=x"], ["hydra.launcher.qqos", "qos"]),
])
def test_bad_hydra_multirun_is_one_line(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mixer_scaling.train", "-m", f"runs_dir={tmp_path / 'runs'}", *args])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert all(w in err[0] for w in words), err
    assert list(tmp_path.iterdir()) == []


def test_slurm_without_a_cluster_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")  # no sbatch/scontrol on this PATH
    code = cli.main(["sweep", "launch", "smoke", f"runs_dir={tmp_path / 'runs'}", "--executor", "slurm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "SLURM" in err[0], err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# Running cells here
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_debug_executor_runs_the_grid_records_failures_and_relaunches_only_them(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["sweep", "launch", "smoke", f"runs_dir={runs}", "model=mixer/micro", "train.lr=0.003,1e6",
            "wandb.mode=disabled", "--executor", "debug"]
    assert cli.main(args) == 1  # a failed cell fails the launch, after the others ran
    out = capsys.readouterr().out
    assert "1 done" in out and "1 failed" in out

    assert cli.main(["sweep", "status", "smoke", f"runs_dir={runs}", "model=mixer/micro", "train.lr=0.003,1e6",
                     "--json"]) == 0
    rows = {r["train.lr"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["0.003"]["state"] == "done" and rows["0.003"]["val_top1"] is not None
    assert rows["1000000.0"]["state"] == "failed" and "non-finite" in rows["1000000.0"]["detail"]

    assert cli.main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 cells; 1 to run (skipping 1 done)" in out


def test_dry_run_without_slurm_shows_grid_cost_and_launcher_params(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")  # no sbatch/srun: the script itself needs a SLURM machine
    monkeypatch.setenv("COLUMNS", "200")
    for root in ("jft", "imagenet"):
        for split in ("train", "val"):
            (tmp_path / root / split).mkdir(parents=True, exist_ok=True)
    code = cli.main(["sweep", "launch", "pareto", f"data.root={tmp_path / 'jft'}", f"fewshot.root={tmp_path / 'imagenet'}",
                     f"runs_dir={tmp_path / 'runs'}", "hydra.launcher.partition=gpu", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "pareto: 14 cells; 14 to run" in out and "GPU-hours" in out and "no SLURM on this machine" in out
    for preset in ("gpu1", "gpu4", "gpu8", "gpu16"):  # one array per preset the models need
        assert f"{preset} array of" in out
    assert '"partition": "gpu"' in out and '"nodes": 2' in out and "dry run: nothing submitted" in out
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# Cell states: what a relaunch may submit
# ---------------------------------------------------------------------------------------------


def test_a_cell_queued_by_another_sweep_is_not_submitted_again(tmp_path):
    """Sweeps share cells (same config, same run id): the queue entry of one protects it from the other."""
    from mixer_scaling.sweep import Sweep, cell_states

    smoke = load("smoke", [f"runs_dir={tmp_path}"], progress=False)
    Sweep("other", smoke.cells[:1], []).remember(smoke.cells[:1], ["41_0"], "slurm", tmp_path / "logs")
    states = {s.cell.run_id: s for s in cell_states(smoke, queue={"41_0": "RUNNING"})}
    assert states[smoke.cells[0].run_id].state == "running" and states[smoke.cells[1].run_id].state == "new"
    states = {s.cell.run_id: s for s in cell_states(smoke, queue={})}  # it left the queue without a record
    assert states[smoke.cells[0].run_id].state == "lost"


def test_an_unreadable_queue_stops_a_relaunch(tmp_path, monkeypatch, capsys):
    from mixer_scaling.sweep import Sweep

    smoke = load("smoke", [f"runs_dir={tmp_path}"], progress=False)
    Sweep("smoke", smoke.cells, []).remember(smoke.cells, ["42_0", "42_1"], "slurm", tmp_path / "logs")
    conf = tmp_path.parent / "broken-slurm.conf"  # squeue fails for real, at once (a missing file it retries 60 s)
    conf.write_text("ClusterName=broken\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    before = sorted(tmp_path.rglob("*"))
    code = cli.main(["sweep", "launch", "smoke", f"runs_dir={tmp_path}", "--executor", "local"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot read the SLURM queue" in err[0], err
    assert sorted(tmp_path.rglob("*")) == before


def test_record_failure_never_overwrites_a_finished_or_resumable_record(tmp_path):
    from mixer_scaling.config import compose
    from mixer_scaling.records import RESULT_FILE, atomic_write_json, read_record, record_failure, run_id_of

    cfg = compose([f"runs_dir={tmp_path}"])
    run_dir = tmp_path / run_id_of(cfg)
    record_failure(cfg, RuntimeError("before training"))  # no record yet: one is written
    assert read_record(run_dir)["status"] == "failed" and read_record(run_dir)["error"]["message"] == "before training"
    for status in ("done", "interrupted", "failed"):
        atomic_write_json(run_dir / RESULT_FILE, {"status": status})
        record_failure(cfg, RuntimeError("a peer died after the record was written"))
        assert read_record(run_dir) == {"status": status}
    atomic_write_json(run_dir / RESULT_FILE, {"status": "running"})
    record_failure(cfg, RuntimeError("killed mid-run"))
    assert read_record(run_dir)["status"] == "failed"


def test_status_survives_a_metrics_line_cut_by_a_kill(tmp_path, capsys):
    from mixer_scaling.records import RESULT_FILE, atomic_write_json

    cell = load("smoke", [f"runs_dir={tmp_path}"], progress=False).cells[0]
    cell.run_dir.mkdir(parents=True)
    atomic_write_json(cell.run_dir / RESULT_FILE, {"status": "running", "steps": 8})
    (cell.run_dir / "metrics.jsonl").write_text('{"step": 2, "train/loss": 4.6}\n{"step": 4, "train/lo')
    assert cli.main(["sweep", "status", "smoke", f"runs_dir={tmp_path}", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["run_id"] == cell.run_id)
    assert row["state"] == "running" and row["step"] == 2
