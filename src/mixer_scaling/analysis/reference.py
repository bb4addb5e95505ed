"""The paper's published numbers (Tolstikhin et al. 2021, Tables 2 and 3) as results tables.

The raw CSVs ship in ``mixer_scaling/reference/`` (copied from the paper, TPUv3 core-days written
out: 0.41k = 410). :func:`paper_results` maps them onto the results schema of
:mod:`mixer_scaling.analysis.results` where a column applies:

* ``val_top1``: ImageNet top-1 after fine-tuning, as a fraction (the paper's % / 100);
  ``real_top1``, ``avg5``, ``vtab1k`` likewise, as extra columns.
* ``throughput``: inference images/s **per TPUv3 core** (the paper's unit).
* ``core_days``: pre-training compute in TPUv3 core-days (extra column); ``device_hours`` is the
  same in core-hours (× 24). ``pretrain_flops`` is unknown (NaN): the paper does not give FLOPs.
* ``model``: the paper's name (``Mixer-B/16``); ``label`` adds what tells rows of the same model apart
  (fine-tuning resolution, pre-training epochs, pre-training data), e.g. ``Mixer-L/16 448px``.
* ``epochs``: pre-training epochs; ``image_size``: fine-tuning resolution (NA where Table 2 omits it);
  ``pretrain``: the pre-training data set; ``source`` = ``paper``; ``table`` = 2 or 3.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..errors import UserError
from .results import conform

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference"
TABLES = {2: "paper_table2.csv", 3: "paper_table3.csv"}
JFT = "JFT-300M"
COMPUTE_UNIT = "TPUv3 core-days"
THROUGHPUT_UNIT = "img/s/core"
_NAME = re.compile(r"^(?P<fam>Mixer|ViT)-(?P<size>[A-Z]+)/(?P<patch>\d+)$|^BiT-(?P<bit>R\d+x\d+)$")


def raw_table(table: int) -> pd.DataFrame:
    """The paper's table as published (percentages, core-days, img/s/core)."""
    if table not in TABLES:
        raise UserError(f"paper table {table!r} is not available; choose one of: {', '.join(map(str, TABLES))}")
    return pd.read_csv(REFERENCE_DIR / TABLES[table])


def _size_patch(model: str) -> tuple[str | None, int | None]:
    m = _NAME.match(model)
    if not m:
        return None, None
    if m["bit"]:
        return m["bit"].lower(), None
    return f"{m['size'].lower()}{m['patch']}", int(m["patch"])


def _labels(df: pd.DataFrame) -> pd.Series:
    """The model name, plus what distinguishes rows that share it (data, a resolution other than 224, epochs)."""
    labels = df["model"].astype(str).copy()
    for _, idx in df.groupby("model").groups.items():
        if len(idx) < 2:
            continue
        group = df.loc[idx]
        for col, fmt, usual in (("pretrain", "{}", None), ("image_size", "{:.0f}px", 224), ("epochs", "{:.0f}ep", None)):
            values = group[col]
            if values.nunique(dropna=False) > 1:
                labels.loc[idx] = [f"{lab} {fmt.format(v)}" if pd.notna(v) and v != usual else lab
                                   for lab, v in zip(labels.loc[idx], values)]
    return labels


def paper_results(table: int = 3, pretrain: str | None = JFT) -> pd.DataFrame:
    """Table 2 or 3 as a results table (see the module docstring); ``pretrain=None`` keeps every row."""
    raw = raw_table(table)
    if pretrain is not None:
        if pretrain not in set(raw["pretrain"]):
            raise UserError(f"paper table {table} has no {pretrain!r} rows; it has: "
                            f"{', '.join(dict.fromkeys(raw['pretrain']))}")
        raw = raw[raw["pretrain"] == pretrain]
    raw = raw.reset_index(drop=True)
    sizes = [_size_patch(m) for m in raw["model"]]
    image_size = raw["image_size"] if "image_size" in raw else raw["finetune_resolution"]
    df = pd.DataFrame({
        "run_id": [f"paper-table{table}-{i:02d}" for i in range(len(raw))],
        "family": raw["family"],
        "model": raw["model"],
        "size": [s for s, _ in sizes],
        "patch": [p for _, p in sizes],
        "epochs": raw["pretrain_epochs"] if "pretrain_epochs" in raw else float("nan"),
        "device_hours": raw["tpuv3_core_days"] * 24.0,
        "throughput": raw["throughput_img_per_sec_per_core"],
        "val_top1": raw["imagenet_top1"] / 100.0,
        "status": "done",
        "study": f"paper-table{table}",
        "run_dir": f"mixer_scaling/reference/{TABLES[table]}",
        "core_days": raw["tpuv3_core_days"].astype(float),
        "pretrain": raw["pretrain"],
        "image_size": pd.to_numeric(image_size, errors="coerce"),
        "real_top1": raw["real_top1"] / 100.0,
        "avg5": raw["avg5"] / 100.0,
        "vtab1k": (raw["vtab1k"] / 100.0) if "vtab1k" in raw else float("nan"),
        "note": raw["note"] if "note" in raw else None,
        "source": "paper",
        "table": table,
    })
    df["label"] = _labels(df)
    return conform(df)


__all__ = ["COMPUTE_UNIT", "JFT", "TABLES", "THROUGHPUT_UNIT", "paper_results", "raw_table"]
