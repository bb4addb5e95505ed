"""The user config directory ($MIXER_SCALING_CONFIG): a researcher's own cluster, sweeps and model sizes,
found beside the shipped configs by every entry point (mixer_scaling/userconf.py)."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, run_cli
from mixer_scaling import cli
from mixer_scaling.config import compose, group_options
from mixer_scaling.errors import ConfigError
from mixer_scaling.records import run_id_of
from mixer_scaling.userconf import ENV

CLUSTER = """\
name: mine
partition: gpu-long
account: vision
qos: high
setup: [module load cuda/12.4, source ~/envs/mixer/bin/activate]
additional_parameters: {constraint: a100}
gpu_type: a100-40gb
gpu_memory_gb: 40
gpu_tflops: 312
"""


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A user config directory with a cluster `mine` and a sweep `mysweep` (a copy of the shipped smoke)."""
    root = tmp_path / "userconf"
    (root / "cluster").mkdir(parents=True)
    (root / "cluster" / "mine.yaml").write_text(CLUSTER)
    (root / "sweep").mkdir()
    smoke = ROOT / "src" / "mixer_scaling" / "conf" / "sweep" / "smoke.yaml"
    (root / "sweep" / "mysweep.yaml").write_text(smoke.read_text())
    monkeypatch.setenv(ENV, str(root))
    return root


def test_train_app_shows_the_users_cluster(user_dir, tmp_path):
    proc = run_cli(["-m", "mixer_scaling.train", "--cfg", "job", "cluster=mine"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.cluster.partition == "gpu-long" and cfg.cluster.gpu_memory_gb == 40 and cfg.cluster.gpu_tflops == 312


def test_sweep_list_shows_the_users_sweep(user_dir, tmp_path):
    proc = run_cli(["-m", "mixer_scaling.cli", "sweep", "list"], cwd=tmp_path, env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "mysweep" in proc.stdout and "smoke" in proc.stdout
    assert "mysweep" in group_options("sweep") and "mine" in group_options("cluster")


def test_the_cluster_fills_the_launcher_and_the_gpu_memory(user_dir):
    """What `sweep launch` composes per preset (launch._preset_cfg): the cluster's launcher keys and GPU memory;
    the command line still wins; a CPU preset keeps no GPU memory; without a cluster, the shipped defaults."""
    def launcher(*overrides):
        cfg = compose(["hydra/launcher=slurm", *overrides], with_hydra=True, resolve=False)
        return OmegaConf.to_container(cfg.hydra.launcher, resolve=True), OmegaConf.select(cfg, "resources.gpu_memory_gb")

    params, memory = launcher("resources=gpu1", "cluster=mine")
    assert (params["partition"], params["account"], params["qos"]) == ("gpu-long", "vision", "high")
    assert params["setup"] == ["module load cuda/12.4", "source ~/envs/mixer/bin/activate"]
    assert params["additional_parameters"] == {"constraint": "a100"} and memory == 40
    params, memory = launcher("resources=gpu1", "cluster=mine", "hydra.launcher.partition=debug",
                              "+hydra.launcher.additional_parameters.mail-type=END", "resources.gpu_memory_gb=24")
    assert params["partition"] == "debug" and params["additional_parameters"]["mail-type"] == "END" and memory == 24
    assert launcher("resources=cpu", "cluster=mine")[1] is None
    params, memory = launcher("resources=gpu1")
    assert params["partition"] is None and params["setup"] == [f"export OMP_NUM_THREADS={params['cpus_per_task']}"]
    assert params["additional_parameters"] == {} and memory == 80


def test_a_default_cluster_applies_without_naming_it_and_is_not_identity(user_dir):
    before = run_id_of(compose([]))
    (user_dir / "cluster" / "default.yaml").write_text(CLUSTER.replace("name: mine", "name: default"))
    cfg = compose([])
    assert cfg.cluster.name == "default" and run_id_of(cfg) == before
    assert compose(["~cluster"]).cluster.get("name") is None
    assert compose(["cluster=mine"]).cluster.name == "mine"


def test_preset_settings_reads_the_clusters_memory(user_dir):
    """launch.preset_settings composes its launcher overrides: a cluster among them reaches the planner."""
    from mixer_scaling.launch import preset_settings

    params, memory = preset_settings("slurm", "gpu4", ["cluster=mine"])
    assert params["partition"] == "gpu-long" and memory == 40


def test_sweep_launch_routes_cluster_to_the_launcher(user_dir):
    from mixer_scaling import launch
    from mixer_scaling.sweep import split_overrides

    run, launcher = split_overrides(["seed=1", "cluster=mine", "cluster.partition=x"])
    assert "cluster=mine" in launcher and "cluster.partition=x" in launcher
    assert "cluster=mine" in run  # the cells record the cluster they ran on (not identity)
    # the cost estimate takes the cluster's GPU peak unless --gpu-tflops says otherwise
    assert launch.gpu_peak_tflops("slurm", ["cluster=mine", "cluster.gpu_tflops=500"], None)[0] == 500
    assert launch.gpu_peak_tflops("slurm", ["cluster=mine"], 100.0) == (100.0, "--gpu-tflops")
    assert launch.gpu_peak_tflops("slurm", ["~cluster"], None)[0] == launch.GPU_PEAK_TFLOPS


def test_init_writes_a_starter_and_refuses_to_overwrite(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cfg"
    monkeypatch.setenv(ENV, str(root))
    assert cli.main(["init", "--cluster", "mine"]) == 0
    path = root / "cluster" / "mine.yaml"
    text = path.read_text()
    assert all((root / g).is_dir() for g in ("cluster", "sweep", "model")) and "partition:" in text
    assert compose(["cluster=mine"]).cluster.gpu_memory_gb == 80  # the starter composes and validates as written
    path.write_text(text.replace("partition: null", "partition: mine"))
    capsys.readouterr()
    assert cli.main(["init", "--cluster", "mine"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists; not overwritten" in err and str(path) in err
    assert "partition: mine" in path.read_text()
    assert cli.main(["init", "--dir", str(tmp_path / "other")]) == 0
    assert (tmp_path / "other" / "cluster" / "default.yaml").is_file()


@pytest.mark.parametrize("args, words", [
    (["cluster=nope"], ["cluster='nope' is not a known cluster config", "mine", "mixer-scaling init --cluster nope"]),
    (["cluster=null"], ["cluster=null is not allowed", "~cluster"]),
])
def test_bad_cluster_is_one_line(user_dir, args, words):
    with pytest.raises(ConfigError) as err:
        compose(args)
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words)


def test_bad_cluster_from_the_train_app_is_one_line_exit_2(user_dir, tmp_path):
    proc = run_cli(["-m", "mixer_scaling.train", "cluster=nope"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "cluster='nope' is not a known cluster config" in proc.stderr


def test_a_bad_cluster_value_is_one_line(user_dir):
    (user_dir / "cluster" / "bad.yaml").write_text("gpu_memory_gb: -1\n")
    from mixer_scaling.config import validate

    with pytest.raises(ConfigError) as err:
        validate(compose(["cluster=bad"]))
    assert "cluster.gpu_memory_gb" in str(err.value) and "\n" not in str(err.value)


def test_init_bad_name_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV, str(tmp_path / "cfg"))
    assert cli.main(["init", "--cluster", "a b"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cluster='a b' is not allowed" in err
    assert not Path(tmp_path / "cfg").exists()
