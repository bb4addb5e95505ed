"""Fixed pixel permutations of the input images: the paper's Fig. 4 study.

``data.permutation`` (with ``data.permutation_seed`` and ``data.permutation_patch``) rearranges the
pixel positions of every image the model sees (pre-training train and val, and the few-shot sets), the
same way for every image:

* ``patch_pixel``: one fixed permutation of the patches (positions on the ``S/p x S/p`` grid) and one
  fixed permutation of the ``p x p`` pixels inside a patch, shared by all patches. A patch stays a
  patch, so Mixer's layers are equivariant to it (permute the stem's kernel pixels and the
  token-mixing weights accordingly and the outputs are identical); a ResNet has no such symmetry.
* ``global``: one fixed permutation of all ``S x S`` pixel positions (patches are destroyed).

Channels move together (a pixel keeps its RGB). Applying it is one gather on the flattened image:

    idx = permutation_index("patch_pixel", 32, patch=4, seed=0)   # LongTensor of S*S source positions
    y = apply_permutation(x, idx)          # x: (..., C, S, S); y.flatten(-2)[..., j] = x.flatten(-2)[..., idx[j]]
    ds = PermutedDataset(ds, idx)          # a Dataset wrapper, batched __getitems__ kept

``data.permutation_patch: null`` means the model's patch size (Mixer, ViT); BiT has none, so a
``patch_pixel`` run of BiT names it explicitly. When the data group is given as a node of a whole run
config (``cfg.data``), :func:`from_data_cfg` reads the model's patch from the registry via
``model.name``; a plain dict must carry ``permutation_patch`` itself (or pass ``model_patch``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from .common import dataset_labels, plain

__all__ = [
    "KINDS",
    "PermutedDataset",
    "apply_permutation",
    "check_permutation_cfg",
    "from_data_cfg",
    "patch_pixel_parts",
    "permutation_index",
]

KINDS = ("patch_pixel", "global")
_SALT = {"patch": 0x9A7C4, "pixel": 0x91E15, "global": 0x610BA1}


def _rng(seed: int, what: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SALT[what]])


def patch_pixel_parts(image_size: int, patch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(patch_perm, pixel_perm)``: output patch ``q`` (row-major on the grid) takes input patch
    ``patch_perm[q]``; output pixel ``r`` of a patch (row-major in the patch) takes pixel ``pixel_perm[r]``."""
    if image_size % patch:
        raise ValueError(f"patch {patch} does not divide image size {image_size}")
    g = image_size // patch
    return _rng(seed, "patch").permutation(g * g), _rng(seed, "pixel").permutation(patch * patch)


def permutation_index(kind: str, image_size: int, patch: int | None = None, seed: int = 0) -> torch.Tensor:
    """The source position (flat, row-major) of every output pixel: a permutation of ``range(S*S)``."""
    s = int(image_size)
    if kind == "global":
        return torch.from_numpy(_rng(seed, "global").permutation(s * s)).long()
    if kind != "patch_pixel":
        raise ValueError(f"unknown permutation {kind!r}; expected one of {KINDS}")
    if not patch:
        raise ValueError("patch_pixel needs a patch size")
    p = int(patch)
    g = s // p
    patch_perm, pixel_perm = patch_pixel_parts(s, p, seed)
    src_patch = patch_perm.reshape(g, g)                   # [out grid row, out grid col] -> input patch id
    src_pix = pixel_perm.reshape(p, p)                     # [out pixel row, out pixel col] -> input pixel id
    rows = (src_patch // g)[:, None, :, None] * p + (src_pix // p)[None, :, None, :]
    cols = (src_patch % g)[:, None, :, None] * p + (src_pix % p)[None, :, None, :]
    return torch.from_numpy((rows * s + cols).reshape(s * s)).long()  # axes (grid row, pix row, grid col, pix col)


def apply_permutation(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rearrange the pixels of ``x`` (``(..., C, S, S)``) by ``index`` with one gather."""
    shape = x.shape
    return x.reshape(*shape[:-2], shape[-2] * shape[-1]).index_select(-1, index.to(x.device)).reshape(shape)


class PermutedDataset(Dataset):
    """``dataset`` with every image rearranged by ``index``; labels and other attributes pass through.
    Batched ``__getitems__`` (the embedded and digits sets) stays one call and one gather per batch."""

    def __init__(self, dataset: Dataset, index: torch.Tensor, kind: str = "") -> None:
        self.dataset = dataset
        self.index = index
        self.kind = kind

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return apply_permutation(x, self.index), y

    def __getitems__(self, indices):
        inner = getattr(self.dataset, "__getitems__", None)
        if inner is None:
            return [self[i] for i in indices]
        batch = inner(indices)
        if isinstance(batch, tuple) and len(batch) == 2 and torch.is_tensor(batch[0]):
            return apply_permutation(batch[0], self.index), batch[1]
        return [(apply_permutation(x, self.index), y) for x, y in batch]

    def labels(self, *args):
        if args:
            return self.dataset.labels(*args)
        return dataset_labels(self.dataset)

    def __getattr__(self, name: str) -> Any:  # targets, classes, num_classes, ... of the wrapped set
        if name.startswith("__") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def check_permutation_cfg(cfg: Mapping, image_size: int) -> None:
    """One-line :class:`ConfigError` for a bad ``data.permutation*`` key (``cfg``: the plain data group): its
    type against the schema, and a patch size that divides ``image_size``."""
    from ..schema import check_value

    for key in ("permutation", "permutation_seed", "permutation_patch"):
        if key in cfg:
            check_value(f"data.{key}", cfg[key])
    patch = cfg.get("permutation_patch")
    if patch is not None and image_size % patch:
        raise ConfigError(f"data.permutation_patch={patch!r} is not allowed; expected null (the model's patch) "
                          f"or an integer that divides data.image_size={image_size}")


def _model_patch_of_root(cfg: Any) -> int | None:
    """The patch size of ``model.name`` when ``cfg`` is the ``data`` node of a whole run config."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if not isinstance(cfg, DictConfig):
            return None
        name = OmegaConf.select(cfg, "..model.name", default=None)  # the run config around this data node
    except Exception:
        return None
    if not name:
        return None
    from ..models.registry import get_spec

    try:
        return get_spec(str(name)).patch
    except Exception:
        return None


def from_data_cfg(cfg: Mapping, image_size: int | None = None, model_patch: int | None = None) -> torch.Tensor | None:
    """The index permutation the data group asks for at ``image_size`` (default ``data.image_size``),
    or None when ``data.permutation`` is null."""

    node = cfg
    cfg = plain(cfg)
    kind = cfg.get("permutation")
    if kind is None:
        return None
    size = int(image_size if image_size is not None else cfg["image_size"])
    check_permutation_cfg(cfg, size)
    seed = int(cfg.get("permutation_seed", 0))
    if kind == "global":
        return permutation_index(kind, size, seed=seed)
    patch = cfg.get("permutation_patch")
    if patch is None:
        patch = model_patch if model_patch is not None else _model_patch_of_root(node)
    if patch is None:
        raise ConfigError("data.permutation=patch_pixel needs data.permutation_patch (no model patch size to default "
                          f"to); allowed: an integer that divides data.image_size={size}")
    if size % int(patch):
        raise ConfigError(f"data.permutation_patch={patch!r} (the model's patch) does not divide the image size {size}; "
                          "allowed: a divisor of the image size")
    return permutation_index(kind, size, patch=int(patch), seed=seed)


def permuted(ds: Dataset, index: torch.Tensor | None, kind: str = "") -> Dataset:
    """``ds`` itself when ``index`` is None, else :class:`PermutedDataset`."""
    return ds if index is None else PermutedDataset(ds, index, kind)
