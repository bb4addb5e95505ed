"""The model families: one entry per family, read by the registry, the FLOP counter and the analysis.

A family is a label (the ``<family>`` of model names ``<family>/<size>``) with how it is drawn and
how it is built. Three are built into :mod:`.registry` with their own sizes (``mixer``, ``vit``,
``bit``); every other label names models from timm: ``<label>/<timm model name>``, e.g.
``convnext/convnext_atto``, built with ``timm.create_model`` (randomly initialised). A timm model
can be trained under any label that is a lowercase identifier, registered here or not:

* registered (an entry of :data:`FAMILIES`): its display name, colour, marker and colormap, whether
  it is convolutional (channels-last on CUDA), and optionally the timm names it accepts;
* not registered: the label is its display name, and it gets a colour and marker of its own
  (:func:`styles`), not convolutional, any timm model name.

To add a family for good, add one :class:`Family` to :data:`FAMILIES`. This module imports neither
torch nor timm (the analysis reads it).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from collections.abc import Iterable

from ..errors import ConfigError

__all__ = ["BUILTIN", "FAMILIES", "LABEL", "OTHER", "Family", "check_label", "display_name", "get_family",
           "is_convolutional", "styles"]

#: A family label: what ``model.family`` and the part of ``model.name`` before the ``/`` may be.
LABEL = r"[a-z][a-z0-9_]*"
#: The families whose sizes the registry's own table defines (every other label is a timm family).
BUILTIN = ("mixer", "vit", "bit")
#: What the analysis calls a row without a usable family.
OTHER = "other"


@dataclass(frozen=True)
class Family:
    """One family. ``color`` (any matplotlib colour), ``marker`` (one of :data:`MARKERS`) and ``cmap``
    (a matplotlib colormap name, for per-model shades in the data-scaling figure) are how figures and the
    dashboard draw it. ``convolutional``: channels-last memory pays off on CUDA. ``timm``: the timm model
    names accepted under this label (empty: any; built-in families have their own table instead)."""

    label: str
    display: str
    color: str
    marker: str
    cmap: str
    convolutional: bool = False
    timm: tuple[str, ...] = ()


FAMILIES: dict[str, Family] = {f.label: f for f in (
    Family("mixer", "Mixer", "#d62728", "o", "Reds"),
    Family("vit", "ViT", "#1f77b4", "s", "Blues"),
    Family("bit", "BiT", "#2ca02c", "^", "Greens", convolutional=True),
    Family("convnext", "ConvNeXt", "#9467bd", "P", "Purples", convolutional=True),
    Family("resnet", "ResNet", "#8c564b", "v", "YlOrBr", convolutional=True),
    Family("deit", "DeiT", "#17becf", "X", "GnBu"),
    Family("resmlp", "ResMLP", "#ff7f0e", "h", "Oranges"),
)}

#: Style of rows without a usable family.
_OTHER = Family(OTHER, "other", "#7f7f7f", "D", "Greys")
#: Markers a family may use (those the dashboard can draw too).
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "*", "p", "<", ">")
#: Colours (with a colormap of the same hue) for labels that are not registered.
_PALETTE = (("#e377c2", "RdPu"), ("#bcbd22", "YlGn"), ("#ff7f0e", "Oranges"), ("#9467bd", "Purples"),
            ("#8c564b", "YlOrBr"), ("#17becf", "GnBu"), ("#393b79", "PuBu"), ("#637939", "BuGn"))


def check_label(label: object, key: str = "model.family") -> str:
    """``label`` if it is a family label (a lowercase identifier); else a one-line :class:`ConfigError`."""
    if not isinstance(label, str) or re.fullmatch(LABEL, label) is None:
        raise ConfigError(f"{key}={label!r} is not a family label; allowed: a lowercase identifier ([a-z][a-z0-9_]*), "
                          f"e.g. {', '.join(FAMILIES)}")
    return label


def get_family(label: str) -> Family | None:
    """The registered entry of ``label`` (None when it is not registered)."""
    return FAMILIES.get(label)


def is_convolutional(family: str) -> bool:
    """Whether models of ``family`` are convolutional (channels-last on CUDA); False for unregistered labels."""
    entry = FAMILIES.get(family)
    return bool(entry and entry.convolutional)


def display_name(family: object) -> str:
    """How figures and findings name ``family``: the registered display name, else the label itself."""
    entry = FAMILIES.get(family) if isinstance(family, str) else None
    return entry.display if entry else str(family)


def _is_label(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(LABEL, value) is not None and value != OTHER


def styles(labels: Iterable[object]) -> dict[str, Family]:
    """A style for each family among ``labels``, in drawing order: registered families in table order,
    then the other labels sorted, then :data:`OTHER` for anything that is not a label (None, NaN).

    An unregistered label's colour and marker are chosen from its name (a CRC, the same in every run and
    table), with a marker that no registered family nor :data:`OTHER` uses; a label whose choice another
    label of ``labels`` took moves to the next free one, so no two families of one figure look alike."""
    seen = {v for v in labels if _is_label(v)}
    others_present = any(not _is_label(v) for v in labels)
    out = {f: FAMILIES[f] for f in FAMILIES if f in seen}
    used_markers = {f.marker for f in FAMILIES.values()} | {_OTHER.marker}
    markers = [m for m in MARKERS if m not in used_markers] or list(MARKERS)
    combos = [(c, m) for m in markers for c in _PALETTE]
    taken: set[int] = set()
    for label in sorted(seen - set(FAMILIES)):
        slot = zlib.crc32(label.encode()) % len(combos)
        while slot in taken and len(taken) < len(combos):
            slot = (slot + 1) % len(combos)
        taken.add(slot)
        (color, cmap), marker = combos[slot]
        out[label] = Family(label, label, color, marker, cmap)
    if others_present:
        out[OTHER] = _OTHER
    return out
