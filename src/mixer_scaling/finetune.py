"""Fine-tune a pre-trained run on a downstream set: ``python -m mixer_scaling.finetune parent=<run> [overrides]``.

A Hydra app on conf/finetune.yaml (paper App. C). The parent must be a finished (``done``) pre-training
run: its ``config.yaml`` names the model, its ``result.json`` the pre-training resolution and classes,
the weights its record reports (``checkpoint.best.pt`` when it stopped early, else ``checkpoint.pt``) are
loaded strictly into the parent's architecture. An interrupted
parent is refused rather than fine-tuned from its last checkpoint: mid-schedule weights would make a
fine-tune that looks like the parent's but is not. Then, at fine-tuning resolution ``image_size``:

* Mixer: K = image_size / parent's size must be an integer; the token-mixing MLPs become block-diagonal
  with K² copies, tokens part-major (:func:`~mixer_scaling.models.expand_token_mixing`).
* ViT: built at the new size, position embeddings resampled (:func:`~mixer_scaling.models.resample_vit_pos_embed`).
* BiT: built at the new size, loaded unchanged (convolutional).

The head is replaced by a zero-initialised one for the downstream classes. Training, evaluation and the
record are :mod:`.train`'s (``run(cfg, build_fn=...)``): the fine-tune gets its own run directory, with
``parent_run_id``/``parent_run_dir``/``finetune_factor`` in its ``result.json`` and job_type ``finetune``
in W&B (group: the parent's study). Its run id hashes its config with ``parent`` set to the parent's run
id, so the same fine-tune resumes or skips whether the parent is named by directory or by id; that config
follows from the parent's config alone (:func:`child_config`), so a sweep's second stage knows it before
the parent has run (:mod:`.stages`).

Everything that can fail on bad input (no such parent, parent not done or without a checkpoint, a model
override that is not the parent's, a non-integer K for Mixer) fails in :func:`prepare`, before anything
is written: one line, exit status 2.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from . import checkpoint, records
from .config import compose, expand, split_argv, validate
from .data import build_data
from .errors import ConfigError, UserError, one_line
from .models import build_model, expand_token_mixing, finetune_factor, forward_flops, get_spec, resample_vit_pos_embed
from .records import DONE
from .train import Built, app_body, guarded_main, run, seed_everything

log = logging.getLogger("mixer_scaling.finetune")

CONFIG_NAME = "finetune"


@dataclass(frozen=True)
class Parent:
    """A finished pre-training run to start from."""

    run_id: str
    run_dir: Path
    config: DictConfig  # its resolved config.yaml
    record: dict        # its result.json
    image_size: int     # pre-training resolution
    num_classes: int    # pre-training classes (the head in its checkpoint)


@dataclass(frozen=True)
class Plan:
    """What :func:`prepare` decided: the fine-tune's run config, its parent and the resolution factor."""

    cfg: DictConfig
    parent: Parent
    factor: int | float  # image_size / parent's image size (an integer for Mixer)


def compose_finetune(overrides=()) -> DictConfig:
    """The fine-tune app's config for ``overrides``, unresolved (the model comes from the parent, see
    :func:`prepare`). No Hydra app runs and nothing is written. Raises ConfigError."""
    return compose(overrides, resolve=False, config_name=CONFIG_NAME)


def find_parent(ref: str, runs_dir: str) -> Parent:
    """The finished run ``ref`` names: a run directory, else a run id under ``runs_dir``. Raises UserError."""
    path = Path(ref).expanduser()
    if not path.is_dir() and "/" not in ref and (Path(runs_dir) / ref).is_dir():
        path = Path(runs_dir) / ref
    if not path.is_dir():
        raise UserError(f"parent={ref!r} is neither a run directory nor a run id under runs_dir={str(runs_dir)!r}")
    try:
        record = records.read_record(path)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"parent={ref!r}: cannot read {path / records.RESULT_FILE}: {one_line(exc)}") from None
    if record is None:
        raise UserError(f"parent={ref!r}: {path} has no {records.RESULT_FILE}; expected a pre-training run directory")
    status = record.get("status")
    if status != DONE:
        raise UserError(f"parent={ref!r} is {status}, not done; finish it first (rerun its command): a fine-tune "
                        f"starts from a finished run's weights")
    if record.get("parent_run_id"):
        raise UserError(f"parent={ref!r} is itself a fine-tune (of {record['parent_run_id']}); allowed: a "
                        f"pre-training run")
    weights = records.BEST_CHECKPOINT_FILE if record.get("early_stopped") else records.CHECKPOINT_FILE
    for name in (records.CONFIG_FILE, weights):
        if not (path / name).is_file():
            raise UserError(f"parent={ref!r}: {path} has no {name}; a fine-tune needs the parent's {name}")
    try:
        config = OmegaConf.load(path / records.CONFIG_FILE)
        image_size, num_classes = int(record["image_size"]), int(record["num_classes"])
        config.model.name  # noqa: B018 - must be there
    except Exception as exc:
        raise UserError(f"parent={ref!r}: unreadable run ({path}): {one_line(exc)}") from None
    return Parent(str(record.get("run_id") or path.name), path.resolve(), config, record, image_size, num_classes)


def _model_node(cfg: DictConfig, parent: Parent) -> dict:
    """The parent's model config, or the user's ``model=...`` if it is the parent's architecture."""
    own = OmegaConf.to_container(parent.config.model, resolve=True)
    if cfg.get("model") is None:
        return own
    given = OmegaConf.to_container(cfg.model, resolve=True)
    if given.get("name") != own["name"] or given.get("gelu") != own.get("gelu"):
        spec = get_spec(own["name"])
        raise ConfigError(
            f"model={given.get('name')}{'' if given.get('gelu') == own.get('gelu') else ' gelu=' + str(given.get('gelu'))} "
            f"is not the parent's model {own['name']} (family {spec.family}, patch {spec.patch}"
            f"{', gelu ' + str(own.get('gelu')) if own.get('gelu') else ''}); a fine-tune keeps its parent's "
            f"architecture: leave model unset or use model={own['name']}")
    return given


def prepare(cfg: DictConfig) -> Plan:
    """From the composed (unresolved) fine-tune config to the run config: parent found and checked, model
    and resolution fixed, the whole validated. Reads the parent's files, writes nothing. Raises UserError."""
    if OmegaConf.is_missing(cfg, "parent") or cfg.parent in (None, ""):
        raise ConfigError("parent is required; set it to a finished pre-training run: parent=<run directory or run id>")
    parent = find_parent(str(cfg.parent), str(cfg.runs_dir))
    final, factor = child_config(cfg, parent.run_id, parent.config, parent.image_size)
    return Plan(final, parent, factor)


def child_config(cfg: DictConfig, parent_run_id: str, parent_config: DictConfig,
                 parent_image_size: int) -> tuple[DictConfig, int | float]:
    """(the fine-tune's resolved, validated run config, its resolution factor) from the composed fine-tune
    config and what it takes of the parent: its run id, its resolved config and its pre-training resolution.
    Needs none of the parent's files, so a sweep's second stage knows a child's run id (a hash of this
    config) before the parent has finished (:mod:`.stages`); :func:`prepare` gives the same config once the
    parent is done. Raises ConfigError."""
    parent = Parent(parent_run_id, Path("."), parent_config, {}, parent_image_size, 0)
    model = _model_node(cfg, parent)
    spec = get_spec(model["name"])
    size = parent.image_size if cfg.image_size is None else cfg.image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"image_size={size!r} is not allowed; expected a positive integer (null: the parent's "
                          f"{parent.image_size})")
    if not OmegaConf.is_interpolation(cfg.data, "image_size") and cfg.data.image_size != size:
        raise ConfigError(f"data.image_size={cfg.data.image_size} is set directly; set the fine-tuning resolution "
                          f"with image_size={cfg.data.image_size} instead")
    if spec.family == "mixer":
        try:
            factor: int | float = finetune_factor(parent.image_size, size)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (Mixer's token-mixing MLPs are expanded K² times, paper App. C)") from None
    else:
        factor = size // parent.image_size if size % parent.image_size == 0 else size / parent.image_size
    tree = OmegaConf.to_container(cfg, resolve=False)
    model["image_size"] = size
    tree.update(parent=parent.run_id, image_size=size, model=model,
                study=cfg.study if cfg.study is not None else parent.config.get("study", "default"))
    tree["data"]["image_size"] = size
    final = OmegaConf.create(tree)
    try:
        OmegaConf.resolve(final)
    except Exception as exc:
        raise ConfigError(f"cannot resolve the config: {one_line(exc)}") from None
    OmegaConf.set_struct(final, True)
    validate(final)
    return final, factor


def _fresh_head(model: torch.nn.Module, num_classes: int) -> None:
    """A new zero-initialised classifier for ``num_classes`` (the paper and big_vision fine-tune so)."""
    model.reset_classifier(num_classes)
    head = model.get_classifier()
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)


def load_parent_model(plan: Plan) -> torch.nn.Module:
    """The parent's model with the weights its record reports (early stopping: its best step's), at the
    parent's resolution and classes."""
    parent, mcfg = plan.parent, plan.cfg.model
    model = build_model(mcfg, num_classes=parent.num_classes, image_size=parent.image_size)
    state, _, name = checkpoint.reported_weights(parent.run_dir, parent.record)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"parent {parent.run_id}: its {name} does not fit model {mcfg.name} "
                        f"at {parent.image_size}px: {one_line(exc)}") from None
    return model


def adapt(plan: Plan, pretrained: torch.nn.Module, num_classes: int) -> torch.nn.Module:
    """``pretrained`` made ready to fine-tune at ``plan.cfg.image_size`` on ``num_classes`` classes."""
    cfg, family = plan.cfg, get_spec(plan.cfg.model.name).family
    if family == "mixer":
        model = expand_token_mixing(pretrained, int(plan.factor))
    else:
        model = build_model(cfg.model, num_classes=plan.parent.num_classes, image_size=int(cfg.image_size))
        state = pretrained.state_dict()
        model.load_state_dict(resample_vit_pos_embed(state, model) if family == "vit" else state)
    _fresh_head(model, num_classes)
    return model


def finetune_flops(plan: Plan, num_classes: int) -> int:
    """Forward FLOPs per image of the fine-tuned model (Mixer at K > 1: the K²-times wider token mixing)."""
    name, size = plan.cfg.model.name, int(plan.cfg.image_size)
    flops = forward_flops(name, size, num_classes=num_classes)
    spec = get_spec(name)
    if spec.family == "mixer" and plan.factor != 1:
        kw = spec.kwargs  # token mixing per layer: 2 matmuls of 2·C·S·D_S; D_S grows K² times
        s = (size // kw["patch_size"]) ** 2
        flops += kw["num_blocks"] * 4 * kw["embed_dim"] * s * kw["tokens_mlp_dim"] * (int(plan.factor) ** 2 - 1)
    return flops


def build_finetune(cfg: DictConfig, device: torch.device, plan: Plan) -> Built:
    """:func:`mixer_scaling.train.build` for a fine-tune: the downstream data, the adapted parent model."""
    seed_everything(cfg.seed)
    data = build_data(cfg.data)
    model = adapt(plan, load_parent_model(plan), data.num_classes).to(device)
    extra = {"parent_run_id": plan.parent.run_id, "parent_run_dir": str(plan.parent.run_dir),
             "parent_image_size": plan.parent.image_size, "finetune_factor": plan.factor,
             "flops_per_image": finetune_flops(plan, data.num_classes)}
    return Built(model, data, {}, device, extra=extra)


def run_finetune(cfg: DictConfig) -> dict:
    """Prepare, then train, evaluate and record (resuming or skipping as the run directory says)."""
    plan = prepare(cfg)
    return run(plan.cfg, build_fn=partial(build_finetune, plan=plan))


def check_overrides(argv) -> int:
    """Compose and prepare every cell the command line would run (no Hydra app, nothing written)."""
    overrides, multirun = split_argv(argv)
    cells = expand(overrides) if multirun else [overrides]
    for cell in cells:
        prepare(compose_finetune(cell))
    return len(cells)


@hydra.main(version_base="1.3", config_path="pkg://mixer_scaling.conf", config_name=CONFIG_NAME)
def _app(cfg: DictConfig) -> None:
    prepared: list[Plan] = []  # a failure before prepare() has no run directory to record it in

    def job() -> None:
        prepared.append(prepare(cfg))
        run(prepared[0].cfg, build_fn=partial(build_finetune, plan=prepared[0]))  # = run_finetune(cfg)

    app_body(job, lambda: prepared[0].cfg if prepared else None)


def main() -> None:
    guarded_main(_app, check_overrides)


if __name__ == "__main__":
    main()
