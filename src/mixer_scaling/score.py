"""Score finished runs on evaluation settings they were not scored on, from their weights, without retraining.

    mixer-scaling evaluate runs/ 'fewshot.datasets=[digits,synthetic_heldout]' 'fewshot.shots=[1,5,10,25]'
    mixer-scaling evaluate runs/<run_id> eval.throughput_batch_sizes=[64,256] device=cuda
    python -m mixer_scaling.train <the run's config, other fewshot.*>   # a done run: scored, not retrained

Evaluation settings (``eval.*``, ``fewshot.*``) and the device are not part of a run's identity
(:mod:`.schema`), so a run trained once is scored on as many of them as wanted. A record says which
settings its metrics came from (``evaluation``: per few-shot set its shots, seeds, ridge ``l2_reg`` and,
for a folder of files, its fingerprint; the throughput batch sizes and repeats). :func:`missing` compares
that with what a config asks for; :func:`score_run` computes only what is missing from the weights the
run reported (its early-stopping choice, ``best_step``) and merges it into ``result.json``, holding the
run's lock (:mod:`.locks`) so it never races a writer. A set scored again with other settings (seeds,
``l2_reg``, another tree) replaces its numbers; more shots with the same settings add to them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import locks, records
from .errors import ConfigError, CorruptFile, UserError

log = logging.getLogger(__name__)

#: The config keys ``mixer-scaling evaluate`` takes: the ones that are not identity and change a metric.
EVALUATION_KEYS = ("eval.", "fewshot.", "device")


def requested(tree: Mapping) -> dict:
    """The evaluation a resolved config (plain data) asks for, in the record's ``evaluation`` form."""
    from .data.fingerprint import data_fingerprints

    fewshot, ev = tree.get("fewshot") or {}, tree.get("eval") or {}
    names = fewshot.get("datasets") or []
    fingerprint = data_fingerprints(tree).get("fewshot", {}).get("digest") if "imagefolder" in names else None
    sets = {name: {"shots": sorted(set(fewshot["shots"])), "seeds": list(fewshot.get("seeds", [0, 1, 2])),
                   "l2_reg": float(fewshot.get("l2_reg", 1024.0)),
                   "fingerprint": fingerprint if name == "imagefolder" else None}
            for name in dict.fromkeys(names)}
    return {"fewshot": sets, "throughput": {"batch_sizes": list(ev.get("throughput_batch_sizes", [])),
                                            "repeats": ev.get("throughput_repeats")}}


def provenance(record: Mapping) -> dict:
    """What a record's metrics came from: its ``evaluation``, or for a record written before that field
    existed, the settings of its own config (an ``imagefolder`` few-shot set there is left out: which tree
    it was is not known, so it is scored again when asked for)."""
    if isinstance(record.get("evaluation"), Mapping):
        return record["evaluation"]
    config = record.get("config") if isinstance(record.get("config"), Mapping) else {}
    fewshot, ev = config.get("fewshot") or {}, config.get("eval") or {}
    sets = {name: {"shots": sorted(set(fewshot.get("shots", []))), "seeds": list(fewshot.get("seeds", [0, 1, 2])),
                   "l2_reg": float(fewshot.get("l2_reg", 1024.0)), "fingerprint": None}
            for name in dict.fromkeys(fewshot.get("datasets") or []) if name != "imagefolder"}
    return {"fewshot": sets, "throughput": {"batch_sizes": list(ev.get("throughput_batch_sizes", [])),
                                            "repeats": ev.get("throughput_repeats")}}


def _settings(entry: Mapping) -> tuple:
    return entry.get("seeds"), entry.get("l2_reg"), entry.get("fingerprint")


def missing(record: Mapping, tree: Mapping) -> dict:
    """What of the evaluation ``tree`` asks for the done ``record`` lacks: ``{"fewshot": {set: settings},
    "throughput": settings}``, only the parts to compute; empty when the record has it all, or is not a
    pre-training run's (a fine-tune is scored by its downstream top-1)."""
    if not is_pretraining(record):
        return {}
    want, have = requested(tree), provenance(record)
    got = ((record.get("metrics") or {}).get("fewshot") or {})
    todo: dict[str, Any] = {}
    for name, settings in want["fewshot"].items():
        before = (have.get("fewshot") or {}).get(name)
        scored = got.get(name) or {}
        if before is None or _settings(before) != _settings(settings) or any(str(k) not in scored
                                                                              for k in settings["shots"]):
            todo.setdefault("fewshot", {})[name] = settings
    if want["throughput"] != have.get("throughput"):
        todo["throughput"] = want["throughput"]
    return todo


def is_pretraining(record: Mapping) -> bool:
    return isinstance(record.get("config"), Mapping) and "fewshot" in record["config"]


def describe_missing(todo: Mapping) -> str:
    parts = [f"{name} {','.join(map(str, s['shots']))}-shot" for name, s in (todo.get("fewshot") or {}).items()]
    if "throughput" in todo:
        parts.append("throughput at batch " + ",".join(map(str, todo["throughput"]["batch_sizes"])))
    return "; ".join(parts)


def reported_weights(run_dir: Path, record: Mapping) -> dict:
    """The model weights the run's metrics come from: those of ``best_step`` (early stopping's choice;
    the final step without it), from ``checkpoint.best.pt`` or ``checkpoint.pt``, verified."""
    from .checkpoint import load_weights_of

    step = int(record.get("best_step") or record.get("steps") or 0)
    problems: list[str] = []
    for name in (records.BEST_CHECKPOINT_FILE, records.CHECKPOINT_FILE):
        if (run_dir / name).exists():
            state, found = load_weights_of(run_dir / name, step)
            problems += found
            if state is not None:
                return state["model"]
    raise UserError(f"run {run_dir.name}: no verified weights of step {step} (the reported step) in "
                    f"{records.BEST_CHECKPOINT_FILE} or {records.CHECKPOINT_FILE}; it cannot be scored without "
                    f"retraining{': ' + problems[-1] if problems else ''}")


def score_run(run_dir: Path, tree: Mapping, *, wait: bool = False, lock_held: bool = False) -> tuple[dict, dict]:
    """Score the done run in ``run_dir`` on what ``tree`` asks for and it lacks; returns (the record, what
    was computed). Holds the run's lock for the whole of it (``lock_held``: the caller does)."""
    run_dir = Path(run_dir)
    lock = None if lock_held else locks.hold_run(run_dir, run_dir.name, wait=wait)
    try:
        record = records.read_record(run_dir)  # read under the lock: what a finished writer left
        if not record or record.get("status") != records.DONE:
            status = (record or {}).get("status", "no record")
            raise UserError(f"run {run_dir.name} is not done ({status}); train it first")
        todo = missing(record, tree)
        if not todo:
            return record, {}
        computed = _compute(run_dir, record, tree, todo)
        _merge(record, todo, computed)
        records.atomic_write_json(run_dir / records.RESULT_FILE, record)
        log.info("run %s scored: %s", run_dir.name, describe_missing(todo))
        return record, computed
    finally:
        if lock is not None:
            lock.release()


def _compute(run_dir: Path, record: Mapping, tree: Mapping, todo: Mapping) -> dict:
    import torch
    from omegaconf import OmegaConf

    from . import precision
    from .data.fewshot_sets import build_fewshot_sets
    from .evaluate.downstream import evaluate_fewshot
    from .evaluate.throughput import inference_throughput
    from .models import build_model
    from .train import resolve_device

    config = record["config"]
    device = resolve_device(str(tree.get("device", "auto")))
    computes_in = precision.resolve(str(config["train"].get("precision", "auto")), device)
    model = build_model(config["model"], num_classes=int(record["num_classes"]), image_size=int(record["image_size"]))
    model.load_state_dict(reported_weights(run_dir, record))
    model.to(device).eval()
    # the run's device options, as its own evaluation had them (train.evaluate: precision, TF32, layout)
    precision.set_tf32(device, precision.tf32(config["train"].get("tf32", True), device, computes_in))
    if precision.channels_last(config["train"].get("channels_last", "auto"), record.get("family", ""), device):
        model.to(memory_format=torch.channels_last)
    bf16 = computes_in == "bf16"
    out: dict[str, Any] = {}
    batch = int((tree.get("eval") or {}).get("batch_size", 256))
    with precision.cpu_attention(device), torch.no_grad():
        for name, settings in (todo.get("fewshot") or {}).items():
            fcfg = {**(tree.get("fewshot") or {}), "datasets": [name], "shots": settings["shots"]}
            sets = build_fewshot_sets(fcfg, int(record["image_size"]), config["data"], model_patch=record.get("patch"))
            out.setdefault("fewshot", {}).update(evaluate_fewshot(model, sets, OmegaConf.create(fcfg), device,
                                                                  batch_size=batch, bf16=bf16))
        if "throughput" in todo:
            settings = todo["throughput"]
            out["throughput"] = inference_throughput(model, int(record["image_size"]), device,
                                                     settings["batch_sizes"], repeats=int(settings["repeats"]),
                                                     bf16=bf16)
    return out


def _merge(record: dict, todo: Mapping, computed: Mapping) -> None:
    """Put what was computed into the record (in place): more shots with the same settings are added to
    a set's numbers, other settings replace them; ``evaluation`` says what each came from."""
    evaluation = {k: dict(v) if isinstance(v, Mapping) else v for k, v in provenance(record).items()}
    evaluation.setdefault("fewshot", {})
    metrics = record.setdefault("metrics", {})
    scored = metrics.setdefault("fewshot", {})
    for name, settings in (todo.get("fewshot") or {}).items():
        before = evaluation["fewshot"].get(name)
        if before is not None and _settings(before) == _settings(settings):
            scored[name] = {**(scored.get(name) or {}), **computed["fewshot"][name]}
            shots = sorted(set(before.get("shots", [])) | set(settings["shots"]))
        else:
            scored[name] = dict(computed["fewshot"][name])
            shots = list(settings["shots"])
        evaluation["fewshot"][name] = {**settings, "shots": shots}
    if "throughput" in todo:
        record["throughput"] = computed["throughput"]["img_per_s"]
        record["throughput_detail"] = computed["throughput"]
        evaluation["throughput"] = todo["throughput"]
    record["evaluation"] = evaluation
    record.setdefault("evaluated_at", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                  "what": describe_missing(todo)})


# --- the command ---------------------------------------------------------------------------------------

def given_settings(overrides: Sequence[str]) -> dict:
    """The evaluation overrides of ``mixer-scaling evaluate`` as plain data, each key and value checked
    against the schema (ConfigError, one line) before any run is touched."""
    from omegaconf import OmegaConf

    from .schema import KEYS, check

    for o in overrides:
        key = o.partition("=")[0].lstrip("+")
        if not key.startswith(EVALUATION_KEYS):
            raise ConfigError(f"{o!r} cannot be given to evaluate: only evaluation settings (eval.*, fewshot.*) and "
                              f"device change for a finished run; anything else is another run (train it)")
        if key not in KEYS:
            check({key: None})  # the schema's one line for a key it does not know
    try:
        given = OmegaConf.to_container(OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]), resolve=True)
    except Exception as exc:
        raise ConfigError(f"cannot read the overrides {' '.join(overrides)!r}: {str(exc).splitlines()[0]}") from None
    for group in ("eval", "fewshot"):
        if group in given:
            check(given[group], group)
    if "device" in given:
        check({"device": given["device"]})
    return given


def evaluation_tree(config: Mapping, given: Mapping) -> dict:
    """A run's resolved config with the evaluation settings ``given`` (:func:`given_settings`) in place."""
    tree = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in config.items()}
    for group in ("eval", "fewshot"):
        tree[group] = {**(tree.get(group) or {}), **(given.get(group) or {})}
    if "device" in given:
        tree["device"] = given["device"]
    return tree


def run_dirs(paths: Sequence[str]) -> list[Path]:
    """The run directories named: a folder with a ``result.json``, or a runs folder (its runs)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / records.RESULT_FILE).exists():
            out.append(p)
        elif p.is_dir():
            found = sorted(d for d in p.iterdir() if (d / records.RESULT_FILE).exists())
            if not found:
                raise UserError(f"{str(p)!r} holds no runs (no <run_id>/{records.RESULT_FILE}); expected a run "
                                "directory or a runs folder")
            out += found
        else:
            raise UserError(f"{str(p)!r} does not exist; expected a run directory or a runs folder")
    return out


def cmd_evaluate(args) -> int:
    """``mixer-scaling evaluate RUN... [eval.*|fewshot.*|device=...]``: exit 0 when every run is scored or
    already had it all, 1 when some could not be (each says why in one line), 2 on bad arguments."""
    paths = [a for a in args.targets if "=" not in a]
    overrides = [a for a in args.targets if "=" in a]
    if not paths:
        raise UserError("no runs given; expected run directories or runs folders, e.g. mixer-scaling evaluate runs/")
    given = given_settings(overrides)
    dirs = run_dirs(paths)
    plans = []
    for d in dirs:  # every argument checked before any run is touched
        try:
            record = records.read_record(d) or {}
        except CorruptFile as exc:
            plans.append((d, None, f"its record is damaged ({exc.problem})"))
            continue
        if not is_pretraining(record):
            plans.append((d, None, "not a pre-training run (no few-shot settings in its config)"))
            continue
        plans.append((d, evaluation_tree(record["config"], given), ""))
    failed = 0
    for i, (d, tree, why) in enumerate(plans, 1):
        prefix = f"[{i}/{len(plans)}] {d.name}"
        if tree is None:
            print(f"{prefix}: skipped: {why}", flush=True)
            failed += 1
            continue
        try:
            record, computed = score_run(d, tree, wait=args.wait)
        except (UserError, locks.RunLocked) as exc:
            print(f"{prefix}: not scored: {exc}", flush=True)
            failed += 1
            continue
        if not computed:
            print(f"{prefix}: up to date", flush=True)
            continue
        shown = [f"{name} {k}-shot {v:.3f}" for name, accs in (computed.get("fewshot") or {}).items()
                 for k, v in accs.items()]
        if "throughput" in computed:
            shown.append(f"{computed['throughput']['img_per_s']:.0f} img/s")
        print(f"{prefix}: {', '.join(shown)}", flush=True)
    return 1 if failed else 0


def register(sub) -> None:
    e = sub.add_parser("evaluate", help="score finished runs on other evaluation settings (eval.*, fewshot.*), "
                                        "without retraining")
    e.add_argument("targets", nargs="+", metavar="RUN_OR_OVERRIDE",
                   help="run directories or runs folders, then eval.*/fewshot.*/device overrides")
    e.add_argument("--wait", action="store_true", help="wait for a run another process is writing, instead of "
                                                       "skipping it")
    e.set_defaults(fn=cmd_evaluate)
