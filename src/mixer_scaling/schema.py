"""The run config's schema: every key, its type and range, and whether it is part of a run's identity.

One table (:data:`KEYS`) declares each key of the configs in ``conf/`` (the pre-training app's and the
fine-tune app's): what values it takes, the words an error uses for them, and whether the key changes what
a run computes. Three things follow from it and from nothing else:

* :func:`check` — every key of a resolved config is declared and in range, checked before anything is
  built or written; a problem is one :class:`~.errors.ConfigError` line (key, value, what is allowed).
  The checks that need a model spec, timm or the file system stay with the code that knows them
  (:mod:`.models.registry`, :mod:`.data.build`) and run after these.
* :func:`identity` — the part of a config that defines the experiment (dora's rule: what can change the
  result). Paths, logging, W&B, the device and everything of evaluation (``eval.*``, ``fewshot.*``) are
  not identity: a finished run is scored on new evaluation settings without retraining
  (``mixer-scaling evaluate``), and moving a run to another machine keeps its id.
* A key used by some data sets only (``only``) is ignored, and not identity, with the others.
* A key added after runs existed declares a ``neutral`` value (the behaviour before it existed): at that
  value it is left out of the identity, so existing run ids do not change (``companions`` go with it).

The table is tested to cover every key of every config option (``tests/test_schema.py``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from .errors import ConfigError

_ABSENT = object()


# --- value types: does a value hold, and the words an error uses for what is allowed -------------------

@dataclass(frozen=True)
class Type:
    holds: Callable[[Any], bool]
    allowed: str | Callable[[], str]  # a callable: words computed when an error is written

    def words(self) -> str:
        return self.allowed() if callable(self.allowed) else self.allowed

    def __or__(self, other: "Type") -> "Type":
        return Type(lambda v: self.holds(v) or other.holds(v), lambda: f"{self.words()} or {other.words()}")


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    """A finite int or float (not a bool, not inf or nan)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(low: int | None = None, high: int | None = None, why: str = "") -> Type:
    if low is not None and high is not None:
        words = f"an integer in [{low}, {high}]"
    elif low is not None:
        words = "an integer > 0" if low == 1 else f"an integer >= {low}"
    else:
        words = "an integer"
    return Type(lambda v: _int(v) and (low is None or v >= low) and (high is None or v <= high), words + why)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, why: str = "") -> Type:
    """A finite number in the interval given (open or closed at each end)."""
    if low is not None and high is not None:
        words = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        words = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        words = "a finite number"

    def holds(v) -> bool:
        if not _num(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or (v < high if high_open else v <= high)

    return Type(holds, words + why)


def boolean(why: str = "") -> Type:
    return Type(lambda v: isinstance(v, bool), "true or false" + why)


def text(pattern: str | None = None, words: str = "a non-empty string") -> Type:
    return Type(lambda v: isinstance(v, str) and bool(v.strip())
                and (pattern is None or re.fullmatch(pattern, v) is not None), words)


def choice(*options: Any, of: Callable[[], tuple] | None = None) -> Type:
    """One of ``options``, or of what ``of()`` returns (a list owned by a module too heavy to import here)."""
    def opts() -> tuple:
        return tuple(of()) if of is not None else options

    return Type(lambda v: any(v == o and type(v) is type(o) for o in opts()),
                lambda: "choose one of: " + ", ".join("null" if o is None else str(o) for o in opts()))


def null() -> Type:
    return Type(lambda v: v is None, "null")


def listof(item: Type, words: str | Callable[[], str], *, size: int | None = None, nonempty: bool = True) -> Type:
    def holds(v) -> bool:
        return (isinstance(v, (list, tuple)) and (not nonempty or len(v) > 0)
                and (size is None or len(v) == size) and all(item.holds(x) for x in v))

    return Type(holds, words)


def mapping() -> Type:
    return Type(lambda v: isinstance(v, Mapping), "a mapping")


# --- the table ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    """One config key. ``identity``: it can change what a run computes (part of the run id). ``neutral``:
    it was added after runs existed, and at this value (what runs did before) it is left out of the
    identity together with its ``companions`` (sibling keys that only matter when it is used). ``only``:
    the ``data.name`` values the key belongs to (None: all). ``opaque``: a mapping whose inside is not
    checked (a sweep's lookup table, Hydra's own node)."""

    path: str
    type: Type
    doc: str = ""
    identity: bool = True
    neutral: Any = _ABSENT
    companions: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    opaque: bool = False


def _data_names() -> tuple:
    from .data.build import NAMES

    return NAMES


def _fewshot_names() -> tuple:
    from .data.fewshot_sets import NAMES

    return NAMES


def _permutations() -> tuple:
    from .data.permute import KINDS

    return (None, *KINDS)


def _precisions() -> tuple:
    from .precision import PRECISIONS

    return PRECISIONS


def _optimizers() -> tuple:
    from .engine import OPTIMIZERS

    return OPTIMIZERS


def _schedules() -> tuple:
    from .engine import SCHEDULES

    return tuple(SCHEDULES)


FOLDERS = ("imagefolder", "cifar10", "cifar100", "shards")
SHARDS = ("shards",)
RATE = number(0, 1, high_open=True)
PATH = text(words="a path")
NOT_IDENTITY = dict(identity=False)

KEYS_LIST: tuple[Key, ...] = (
    # top level
    Key("seed", Type(integer(0, 2**32 - 1).holds, "an integer in [0, 2**32 - 1] (numpy's seed range)"),
        "the run's seed: initial weights, batch order"),
    Key("runs_dir", PATH, "root of run directories", **NOT_IDENTITY),
    Key("study", text() | null(), "the W&B group; what the run is part of", **NOT_IDENTITY),
    Key("device", text(r"auto|cpu|cuda|cuda:\d+", "auto, cpu, cuda or cuda:N"), "where it runs", **NOT_IDENTITY),
    Key("progress", boolean(), "progress bars", **NOT_IDENTITY),
    Key("wait_for_lock", boolean(" (what a run does when another process is training it: false stops, true "
        "waits)"), "a second writer stops or waits", **NOT_IDENTITY),
    Key("recipe", mapping(), "a sweep's per-model lookup table; what it sets is in train.*", opaque=True, **NOT_IDENTITY),
    Key("stages", mapping() | null(), "a sweep's second stage (fine-tunes of its cells; checked by "
        "mixer_scaling.stages); null: none", opaque=True, **NOT_IDENTITY),
    Key("hydra", mapping(), "Hydra's own settings", opaque=True, **NOT_IDENTITY),
    # the fine-tune app (conf/finetune.yaml): its parent enters the identity by its run id (see .finetune)
    Key("parent", text(words="a run directory or a run id"), "the pre-training run fine-tuned"),
    Key("image_size", integer(1) | null(), "the fine-tuning resolution (null: the parent's)"),
    # model
    Key("model.name", text(words="a model name"), "<family>/<size>, e.g. mixer/b16, or <family>/<timm model name>, "
        "e.g. convnext/convnext_atto (checked against the registry and timm)"),
    Key("model.family", text(r"[a-z][a-z0-9_]*", "a family label: a lowercase identifier (mixer, vit, bit or a timm "
        "family's, e.g. convnext)") | null(), "must agree with model.name (null: read from it)"),
    Key("model.size", text(words="a size name"), "must agree with model.name"),
    Key("model.image_size", integer(1), "the model's default resolution; data.image_size follows it"),
    Key("model.gelu", choice("exact", "tanh") | null(), "mixer only"),
    Key("model.drop_rate", RATE, "dropout before the head"),
    Key("model.drop_path_rate", RATE, "stochastic depth"),
    Key("model.token_groups", integer(1, why=" dividing the model's channels (1: tied, the paper's Mixer)"),
        "mixer only: untied token mixing in G channel groups", neutral=1),
    # data
    Key("data.name", choice(of=_data_names)),
    Key("data.root", PATH | null(), "where the files are (the data enter the identity by fingerprint)",
        only=FOLDERS, **NOT_IDENTITY),
    Key("data.download", boolean(), "torchvision's CIFAR download into data.root", only=("cifar10", "cifar100"),
        **NOT_IDENTITY),
    Key("data.train_dir", text(words="a folder name inside data.root"), only=("imagefolder",)),
    Key("data.val_dir", text(words="a folder name inside data.root"), only=("imagefolder",)),
    Key("data.verify_images", boolean(), "open every image at start-up", only=("imagefolder",), **NOT_IDENTITY),
    Key("data.shuffle_buffer", integer(0, why=" (0: shard order only)"), "samples held for shuffling a stream of "
        "shards (the sample order, so identity)", only=SHARDS),
    Key("data.fraction", number(0, 1, low_open=True), "nested pre-training subset"),
    Key("data.image_size", integer(4), "training resolution"),
    Key("data.num_classes", integer(2, 3820), "classes of the embedded data", only=("synthetic",)),
    Key("data.size", integer(1), "training images at fraction 1", only=("synthetic",)),
    Key("data.val_size", integer(2, why=" (one half chooses, the other is reported)"), only=("synthetic",)),
    Key("data.seed", integer(0), "the data set's identity (subset order), not the run's seed"),
    Key("data.nuisance", number(0, 1, why=" (1: the full per-sample variation, 0: class prototypes)"),
        only=("synthetic",), neutral=1.0),
    Key("data.flip", boolean(), "random horizontal flips"),
    Key("data.crop_scale", listof(number(0, 1, low_open=True), "[low, high] with 0 < low <= high <= 1", size=2),
        only=FOLDERS),
    Key("data.crop_pct", number(0, 1, low_open=True), "evaluation centre crop", only=FOLDERS),
    Key("data.randaugment", text(r"rand(-.*)?", "a timm RandAugment string like rand-m10-n2") | null(),
        "checked by timm's parser too"),
    Key("data.num_workers", integer(0), "loader processes", **NOT_IDENTITY),
    Key("data.permutation", choice(of=_permutations), "paper Fig. 4", neutral=None,
        companions=("data.permutation_seed", "data.permutation_patch")),
    Key("data.permutation_seed", integer(0)),
    Key("data.permutation_patch", integer(1) | null(), "must divide data.image_size"),
    # train
    Key("train.examples_seen", integer(1), "the budget: examples seen (whole global batches are trained)"),
    Key("train.batch_size", integer(1), "global batch"),
    Key("train.optimizer", choice(of=_optimizers)),
    Key("train.betas", listof(number(0, 1, high_open=True),
                              "two numbers in [0, 1) (Adam's beta1, beta2), e.g. [0.9, 0.999]", size=2) | null()),
    Key("train.momentum", number(0, 1, high_open=True) | null(), "sgd, momentum only"),
    Key("train.lr", number(0, low_open=True), "peak learning rate"),
    Key("train.min_lr", number(), "where the decay ends: in [0, train.lr] (checked with train.lr)"),
    Key("train.weight_decay", number(0)),
    Key("train.schedule", choice(of=_schedules)),
    Key("train.warmup_steps", integer(0)),
    Key("train.grad_clip", number(0, low_open=True) | null(), "global norm; null: off"),
    Key("train.label_smoothing", number(0, 1, high_open=True)),
    Key("train.mixup", number(0, 10, why=" (a Beta alpha; 0 turns mixup off)")),
    Key("train.precision", choice(of=_precisions), "auto: bf16 where the device has it natively"),
    # How the memory of one update is spent: the same update (up to float rounding), so not identity; a
    # run moved to a GPU with less memory keeps its id (and resumes) with more accumulation steps.
    Key("train.accum_steps", integer(1, why=" dividing train.batch_size per rank"),
        "micro-batches per update (gradient accumulation)", **NOT_IDENTITY),
    Key("train.grad_checkpointing", boolean(), "activation checkpointing (recompute in backward)", **NOT_IDENTITY),
    # How fast the device runs the same computation (recorded in result.json, not identity): torch.compile,
    # TF32 for fp32 matrix products on Ampere and later, channels-last memory for convolutions.
    Key("train.compile", boolean(), "torch.compile the model", **NOT_IDENTITY),
    Key("train.tf32", boolean(), "TF32 matrix products on CUDA (fp32 runs)", **NOT_IDENTITY),
    Key("train.channels_last", Type(choice("auto", True, False).holds, "choose one of: auto, true, false"),
        "auto: on for convolutional families (BiT) on CUDA",
        **NOT_IDENTITY),
    Key("train.log_every", integer(0, why=" (0: only at the end)"), **NOT_IDENTITY),
    Key("train.checkpoint_every", integer(0, why=" (0: only at the end)"), **NOT_IDENTITY),
    Key("train.eval_every_examples", integer(0, why=" (0: no early stopping, the final weights are reported)"),
        "upstream validation cadence: chooses the reported weights, so it is identity"),
    # evaluation: never identity
    Key("eval.batch_size", integer(1), **NOT_IDENTITY),
    Key("eval.throughput_batch_sizes", listof(integer(1), "a non-empty list of integers > 0 (inference "
        "img/s is measured at each, the best kept), e.g. [1,8,32]"), **NOT_IDENTITY),
    Key("eval.throughput_repeats", integer(1), **NOT_IDENTITY),
    Key("fewshot.datasets", listof(choice(of=_fewshot_names), lambda: "a non-empty list of few-shot sets, each one "
        "of: " + ", ".join(_fewshot_names())),
        **NOT_IDENTITY),
    Key("fewshot.shots", listof(integer(1), "a non-empty list of integers >= 1"), **NOT_IDENTITY),
    Key("fewshot.seeds", listof(integer(0), "a non-empty list of integers >= 0"), **NOT_IDENTITY),
    Key("fewshot.l2_reg", number(0, low_open=True, why=" (big_vision: 1024)"), **NOT_IDENTITY),
    Key("fewshot.root", PATH | null(), **NOT_IDENTITY),
    Key("fewshot.download", boolean(), **NOT_IDENTITY),
    # W&B: where a run is logged, never what it computes
    # the user's cluster (cluster=<name>, mixer_scaling/userconf.py): where and on what a run runs, never what
    # it computes. partition .. additional_parameters feed hydra.launcher (conf/hydra/launcher/slurm.yaml).
    Key("cluster.name", text(), **NOT_IDENTITY),
    Key("cluster.partition", text() | null(), "sbatch --partition", **NOT_IDENTITY),
    Key("cluster.account", text() | null(), "sbatch --account", **NOT_IDENTITY),
    Key("cluster.qos", text() | null(), "sbatch --qos", **NOT_IDENTITY),
    Key("cluster.setup", listof(text(), "a list of shell lines", nonempty=False) | null(),
        "lines run in the sbatch script before srun", **NOT_IDENTITY),
    Key("cluster.additional_parameters", mapping(), "other sbatch options", opaque=True, **NOT_IDENTITY),
    Key("cluster.gpu_type", text() | null(), "a label of the GPU", **NOT_IDENTITY),
    Key("cluster.gpu_memory_gb", number(0, low_open=True) | null(), "one GPU's memory: the GPU presets' "
        "resources.gpu_memory_gb", **NOT_IDENTITY),
    Key("cluster.gpu_tflops", number(0, low_open=True) | null(), "one GPU's peak bf16 dense TFLOP/s: the cost "
        "estimate", **NOT_IDENTITY),
    # a resources preset (conf/resources/): what the micro-batch planner fits a cell into
    Key("resources.gpu_memory_gb", number(0, low_open=True) | null(), "memory of one GPU of the preset (null: "
        "a CPU preset)", **NOT_IDENTITY),
    Key("wandb.mode", choice("auto", "online", "offline", "disabled"), **NOT_IDENTITY),
    Key("wandb.project", text(), **NOT_IDENTITY),
    Key("wandb.entity", text() | null(), **NOT_IDENTITY),
    Key("wandb.group", text() | null(), **NOT_IDENTITY),
    Key("wandb.job_type", text(), **NOT_IDENTITY),
    Key("wandb.tags", listof(text(), "a list of strings", nonempty=False), **NOT_IDENTITY),
    Key("wandb.init_timeout", number(0, low_open=True), "seconds", **NOT_IDENTITY),
)
KEYS: dict[str, Key] = {k.path: k for k in KEYS_LIST}
GROUPS = tuple(dict.fromkeys(p.split(".")[0] for p in KEYS if "." in p))


def _flat(tree: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf, not descending into declared opaque mappings."""
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping) and not (path in KEYS and KEYS[path].opaque):
            yield from _flat(v, path + ".")
        else:
            yield path, v


def _shown(v) -> str:
    return repr(list(v)) if isinstance(v, tuple) else repr(v)


def check_value(path: str, value: Any) -> None:
    """ConfigError (one line) unless ``value`` is allowed for the declared key ``path``."""
    kind = KEYS[path].type
    if not kind.holds(value):
        allowed = kind.words()
        raise ConfigError(f"{path}={_shown(value)} is not allowed; {'' if allowed.startswith('choose') else 'expected '}"
                          f"{allowed}")


def check(tree: Mapping, group: str | None = None) -> None:
    """Check a resolved config given as plain data; with ``group``, ``tree`` is that group's node alone.

    Every key must be declared (a key added with ``+`` that no code reads would change the run id and
    nothing else), be of its type and in its range, and the ranges that involve two keys must hold."""
    flat = dict(_flat(tree, f"{group}." if group else ""))
    data_name = flat.get("data.name")
    for path, value in flat.items():
        key = KEYS.get(path)
        if key is None:
            parent = path.rpartition(".")[0]
            known = sorted(p.rpartition(".")[2] for p in KEYS if p.rpartition(".")[0] == parent)
            under = f"; keys under {parent}: {', '.join(known)}" if parent and known else ""
            raise ConfigError(f"{path} is not a config key{under} (declared in src/mixer_scaling/schema.py)")
        if isinstance(value, str) and value == "???":
            raise ConfigError(f"{path} is required and has no value; set it on the command line ({path}=...)")
        if not applies(key, data_name):
            # A sweep written for one data set may be reused on another: its keys for the first are not
            # used (and not identity). A knob that would change results is refused instead of ignored.
            if key.neutral is not _ABSENT and value != key.neutral:
                raise ConfigError(f"{path}={_shown(value)} is not allowed with data.name={data_name}; it is a key "
                                  f"of data={' and data='.join(key.only)}")
            continue
        check_value(path, value)
    _check_relations(flat)


def applies(key: Key, data_name: Any) -> bool:
    """Whether ``key`` is used with the data set ``data_name`` (None: not known, taken as used)."""
    return key.only is None or data_name is None or data_name in key.only


def unused(tree: Mapping) -> list[str]:
    """The keys of a resolved config that its data set does not use (ignored; see :func:`check`)."""
    flat = dict(_flat(tree))
    return [p for p in flat if p in KEYS and not applies(KEYS[p], flat.get("data.name"))]


def _check_relations(flat: Mapping[str, Any]) -> None:
    """Ranges that involve two keys."""
    lr, min_lr = flat.get("train.lr"), flat.get("train.min_lr")
    if lr is not None and min_lr is not None and not 0 <= min_lr <= lr:
        raise ConfigError(f"train.min_lr={min_lr!r} is not allowed; expected a number in [0, train.lr={lr}] "
                          "(where the decay ends)")
    batch, accum = flat.get("train.batch_size"), flat.get("train.accum_steps")
    if batch is not None and accum is not None and batch % accum:
        raise ConfigError(f"train.accum_steps={accum!r} is not allowed with train.batch_size={batch}; expected a "
                          "divisor of it (each update is accum_steps equal micro-batches)")
    scale = flat.get("data.crop_scale")
    if scale is not None and scale[0] > scale[1]:
        raise ConfigError(f"data.crop_scale={_shown(scale)} is not allowed; expected [low, high] with "
                          "0 < low <= high <= 1")


def identity(tree: Mapping) -> dict:
    """The part of a resolved config (plain data) that defines the experiment: the keys declared
    ``identity``, less those at their ``neutral`` value (and their companions). Keys the schema does not
    declare (an old record's) are kept: unknown, they may matter."""
    flat = dict(_flat(tree))
    drop = {p for p, v in flat.items() if p in KEYS and not (KEYS[p].identity and applies(KEYS[p], flat.get("data.name")))}
    drop |= {p for p in flat if any(p == k.path or p.startswith(k.path + ".") for k in KEYS_LIST
                                    if k.opaque and not k.identity)}
    for key in KEYS_LIST:
        if key.neutral is not _ABSENT and key.path in flat and flat[key.path] == key.neutral:
            drop |= {key.path, *key.companions}
    out: dict = {}
    for path, value in flat.items():
        if path in drop:
            continue
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
