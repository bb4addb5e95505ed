"""A W&B report comparing architectures, built with W&B's own report API (``wandb-workspaces``).

    mixer-scaling dashboard ENTITY/PROJECT [--group STUDY] [--title TITLE]
                            [--fewshot-dataset NAME] [--k K] [--dry-run FILE]

The report holds the paper's views of a W&B project's runs, each point one run, drawn from the flat
comparison keys every run puts in its config and summary (:mod:`mixer_scaling.columns` names them all;
nothing here spells a key of its own):

* accuracy (summary ``val_top1``) and few-shot accuracy (summary ``fewshot/<set>/<k>shot``) against
  pre-training compute (config ``pretrain_flops``, log x), runs grouped and coloured by config ``family``;
* accuracy against inference throughput (summary ``throughput``, log x), by family;
* few-shot accuracy against the pre-training set size (config ``train_size``, log x), one group per model
  (config ``model_name``);
* the runs table with the comparison columns pinned.

With ``--group`` every run set is filtered to that W&B group (the study). ``--dry-run FILE`` writes the
report's specification, the public report model (``wandb_workspaces.reports.v2.Report``) serialised with
pydantic's public ``TypeAdapter``, to FILE (atomically) and touches no network; without it the report is
saved to W&B (``Report.save``), which needs the network and a W&B login.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..columns import COMPARE_CONFIG, SUMMARY_KEYS, summary_fewshot_key
from ..errors import UserError, one_line
from ..paths import check_file

EXTRA = "dashboard"  # pyproject extra that installs wandb-workspaces
DEFAULT_TITLE = "MLP-Mixer scaling: architectures compared"
TITLE_MAX = 128  # wandb_workspaces.reports.v2.Report.title's max_length
DEFAULT_FEWSHOT_DATASET = "digits"  # conf/fewshot: the first few-shot set, as `figures` defaults
DEFAULT_K = 5


def _config_key(name: str) -> str:
    """A flat comparison config key, checked against :data:`.columns.COMPARE_CONFIG` so a rename there
    fails here at import, never as an empty panel."""
    if name not in COMPARE_CONFIG:
        raise KeyError(f"{name!r} is not a comparison config key (mixer_scaling.columns.COMPARE_CONFIG)")
    return name


# The keys the report draws, all from .columns: config keys are set at wandb.init, summary keys at the end.
FAMILY = _config_key("family")
MODEL = _config_key("model_name")
SIZE = _config_key("size")
FRACTION = _config_key("fraction")
TRAIN_SIZE = _config_key("train_size")
PRETRAIN_FLOPS = _config_key("pretrain_flops")
SEED = _config_key("seed")
VAL_TOP1 = SUMMARY_KEYS["val_top1"]
THROUGHPUT = SUMMARY_KEYS["throughput"]
#: Config keys pinned in the runs table, in order (the summary keys follow).
TABLE_CONFIG = (FAMILY, MODEL, SIZE, FRACTION, TRAIN_SIZE, PRETRAIN_FLOPS, SEED)


def _wr():
    """``wandb_workspaces.reports.v2``, or one line saying how to install it."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as exc:
        raise UserError(f"dashboard needs the optional package wandb-workspaces ({one_line(exc)}); install it with "
                        f"pip install 'mixer-scaling[{EXTRA}]'") from None
    return wr


def parse_entity_project(value: str, arg: str = "dashboard ENTITY/PROJECT") -> tuple[str, str]:
    """``"entity/project"`` → ``("entity", "project")``; :class:`UserError` for anything else (one slash, two
    non-empty names without spaces)."""
    parts = str(value).split("/")
    if len(parts) != 2 or not all(p.strip() for p in parts) or any(p != p.strip() or " " in p for p in parts):
        raise UserError(f"{arg}: {value!r} is not ENTITY/PROJECT; allowed: a W&B entity and project joined by one "
                        f"'/', e.g. my-team/mixer-scaling")
    return parts[0], parts[1]


def check_group(group: str | None) -> str | None:
    """``--group``: None (all runs) or a non-blank W&B group name; :class:`UserError` otherwise."""
    if group is not None and not group.strip():
        raise UserError(f"dashboard --group {group!r}: the group is empty; allowed: a W&B group (a study name), "
                        f"or leave --group out for every run of the project")
    return group


def _check_title(title: str) -> str:
    if not title.strip() or len(title) > TITLE_MAX:
        raise UserError(f"dashboard --title {title[:40]!r}{'…' if len(title) > 40 else ''}: "
                        f"{'it is empty' if not title.strip() else f'it is {len(title)} characters long'}; "
                        f"allowed: 1 to {TITLE_MAX} characters")
    return title


def _check_fewshot(dataset: str, k: int) -> tuple[str, int]:
    if not str(dataset).strip() or "/" in str(dataset):
        raise UserError(f"dashboard --fewshot-dataset {dataset!r}: not a few-shot data set name; allowed: a name "
                        f"such as digits or synthetic_heldout (no '/')")
    if int(k) < 1:
        raise UserError(f"dashboard --k {k}: allowed: a number of shots >= 1")
    return str(dataset), int(k)


def _filters(group: str | None) -> str:
    """The run-set filter: the W&B group (``Group`` is W&B's name for a run's group), or none."""
    return "" if group is None else f"Group = {json.dumps(group)}"


def build_report(entity: str, project: str, group: str | None = None, *, title: str = DEFAULT_TITLE,
                 fewshot_dataset: str = DEFAULT_FEWSHOT_DATASET, k: int = DEFAULT_K) -> Any:
    """The report object (``wandb_workspaces.reports.v2.Report``) for ``entity/project``, filtered to W&B
    group ``group`` when given. Pure: builds objects only, touches no network and no file.

    Three panel grids, each with its own run set (grouping is a run set's): compute and throughput views
    grouped by ``family``, the data-scaling view grouped by ``model_name``; every run set pins the
    comparison columns in its runs table. Raises :class:`UserError` for bad arguments (the same checks as
    the command) and when ``wandb-workspaces`` is not installed.
    """
    wr = _wr()
    if not entity or not project:
        raise UserError(f"dashboard: entity {entity!r} and project {project!r} must both be given")
    group = check_group(group)
    _check_title(title)
    fewshot_dataset, k = _check_fewshot(fewshot_dataset, k)
    fewshot = summary_fewshot_key(fewshot_dataset, k)
    shots = f"{k}-shot {fewshot_dataset}"
    pinned = ([f"config:{key}.value" for key in TABLE_CONFIG]
              + [f"summary:{key}" for key in (VAL_TOP1, fewshot, THROUGHPUT)])

    def runset(name: str, by: str) -> Any:
        return wr.Runset(entity=entity, project=project, name=name, filters=_filters(group),
                         groupby=[f"config.{by}"], pinned_columns=pinned)

    where = f"group {group}" if group else f"all runs of {entity}/{project}"
    compute = wr.PanelGrid(
        runsets=[runset("by family", FAMILY)],
        panels=[
            wr.ScatterPlot(title="Upstream top-1 vs pre-training compute", x=wr.Config(PRETRAIN_FLOPS),
                           y=wr.SummaryMetric(VAL_TOP1), log_x=True, layout=wr.Layout(x=0, y=0, w=12, h=8)),
            wr.ScatterPlot(title=f"{shots} accuracy vs pre-training compute", x=wr.Config(PRETRAIN_FLOPS),
                           y=wr.SummaryMetric(fewshot), log_x=True, layout=wr.Layout(x=12, y=0, w=12, h=8)),
            wr.ScatterPlot(title="Upstream top-1 vs inference throughput", x=wr.SummaryMetric(THROUGHPUT),
                           y=wr.SummaryMetric(VAL_TOP1), log_x=True, layout=wr.Layout(x=0, y=8, w=12, h=8)),
        ],
    )
    scaling = wr.PanelGrid(
        runsets=[runset("by model", MODEL)],
        panels=[
            wr.ScatterPlot(title=f"{shots} accuracy vs pre-training set size", x=wr.Config(TRAIN_SIZE),
                           y=wr.SummaryMetric(fewshot), log_x=True, layout=wr.Layout(x=0, y=0, w=24, h=9)),
        ],
    )
    return wr.Report(
        entity=entity, project=project, title=title,
        description=f"Mixer, ViT and BiT compared the way the MLP-Mixer paper does ({where}).",
        blocks=[
            wr.H1(text="Accuracy against compute and throughput"),
            wr.P(text=f"One point per run, coloured by {FAMILY}; x is log scale."),
            compute,
            wr.H1(text="Data scaling"),
            wr.P(text=f"{shots} accuracy against the number of pre-training examples, one group per model."),
            scaling,
        ],
        width="fluid",
    )


def specification(report: Any) -> dict:
    """The report's specification as JSON-ready data: the public report model serialised with pydantic's
    public ``TypeAdapter`` (what ``--dry-run`` writes). Note that a config and a summary axis both serialise
    as ``{"name": ...}``: the library's model does not record the kind; the titles and the runs table do."""
    from pydantic import TypeAdapter

    return TypeAdapter(type(report)).dump_python(report, mode="json")


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (:func:`mixer_scaling.records.atomic_write_bytes`)."""
    from ..records import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())
    return path


def save(report: Any) -> Any:
    """Save the report to W&B (``Report.save``; network and a W&B login). A failure is one line."""
    try:
        return report.save()
    except Exception as exc:  # no network, not logged in, no such entity: the library raises many types
        raise UserError(f"cannot save the report to W&B {report.entity}/{report.project}: {one_line(exc)}") from None


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Build the report; write its specification (``--dry-run``) or save it to W&B. Every argument is
    checked before anything is written or sent."""
    entity, project = parse_entity_project(args.entity_project)
    check_group(args.group)
    if args.dry_run is not None:
        check_file(args.dry_run, "dashboard --dry-run")
    report = build_report(entity, project, args.group, title=args.title, fewshot_dataset=args.fewshot_dataset,
                          k=args.k)
    if args.dry_run is not None:
        path = write_json(specification(report), args.dry_run)
        print(f"wrote the report's specification to {path} (nothing sent to W&B)")
        return 0
    saved = save(report)
    print(f"saved the report: {getattr(saved, 'url', '')}")
    return 0


def register(subparsers) -> None:
    """Add ``dashboard`` to an argparse subparsers object."""
    d = subparsers.add_parser("dashboard", help="build a W&B report comparing architectures (wandb-workspaces)",
                              description="A W&B report of a project's runs: accuracy vs pre-training compute and "
                                          "vs throughput by family, few-shot accuracy vs data size by model, and "
                                          "the runs table. Needs pip install 'mixer-scaling[dashboard]'.")
    d.add_argument("entity_project", metavar="ENTITY/PROJECT", help="the W&B project whose runs the report shows")
    d.add_argument("--group", metavar="STUDY", help="only runs of this W&B group (the study)")
    d.add_argument("--title", default=DEFAULT_TITLE, help=f"report title (default {DEFAULT_TITLE!r})")
    d.add_argument("--fewshot-dataset", default=DEFAULT_FEWSHOT_DATASET,
                   help=f"few-shot set of the few-shot views (default {DEFAULT_FEWSHOT_DATASET})")
    d.add_argument("--k", type=int, default=DEFAULT_K, help=f"shots of the few-shot views (default {DEFAULT_K})")
    d.add_argument("--dry-run", metavar="FILE",
                   help="write the report's specification (JSON) to FILE instead of saving it; no network")
    d.set_defaults(fn=cmd_dashboard)


__all__ = ["PRETRAIN_FLOPS", "THROUGHPUT", "TRAIN_SIZE", "VAL_TOP1", "build_report", "check_group", "cmd_dashboard",
           "parse_entity_project", "register", "save", "specification", "write_json"]
