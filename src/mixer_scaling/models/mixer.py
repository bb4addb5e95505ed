"""MLP-Mixer (Tolstikhin et al. 2021, arXiv 2105.01601), written for this project.

The network is a per-patch linear embedding ("stem"), ``num_blocks`` Mixer layers, a final
LayerNorm, global average pooling over tokens and a zero-initialised linear head. Each Mixer
layer is pre-norm with two residual MLPs::

    x = x + DropPath(MLP_tokens(LN(x)ᵀ)ᵀ)    # token mixing: one MLP over the S tokens, shared by all C channels
    x = x + DropPath(MLP_channels(LN(x)))    # channel mixing: one MLP over the C channels, shared by all S tokens

Module names follow timm's ``MlpMixer`` exactly (``stem.proj``, ``blocks.{i}.norm1``,
``blocks.{i}.mlp_tokens.fc1/fc2``, ``blocks.{i}.norm2``, ``blocks.{i}.mlp_channels.fc1/fc2``,
``norm``, ``head``), so a timm ``mixer_*`` state dict loads into :class:`MlpMixer` with
``strict=True`` and gives the same logits when ``gelu='exact'`` (tested in ``tests/test_models.py``).

Differences from timm worth knowing:

* ``gelu='tanh'`` selects the tanh approximation of GELU that the official JAX code uses
  (``flax.linen.gelu`` defaults to ``approximate=True``); ``'exact'`` is the erf form timm uses.
* ``drop_path_rate`` rises linearly over blocks from 0 (first block) to ``drop_path_rate`` (last
  block), as the paper's ImageNet recipe describes; timm 1.0 applies the same rate to every block.
* The number of tokens is fixed when the model is built, because the token-mixing MLP's weights
  have shape ``(D_S, S)``. Any image size divisible by the patch size can be chosen at
  construction; feeding another size raises ``ValueError``.

Two options that timm lacks, both off by default (then the state dict and outputs are timm's):

* ``token_groups=G`` unties token mixing (paper App. A): the C channels are split into G
  contiguous groups, each with its own token MLP (``fc1.weight`` becomes ``(G, D_S, S)``).
  G = C gives every channel its own MLP. FLOPs are unchanged; token-MLP parameters grow G-fold.
* ``token_parts=K`` orders the tokens part-major: the image is cut into K×K equal parts and each
  part's tokens are contiguous (row-major within the part, parts row-major). This is the order
  in which a Mixer pre-trained at 1/K of the resolution is fine-tuned (paper App. C, see
  :mod:`mixer_scaling.models.resolution`).
"""

from __future__ import annotations

import math
import numbers
from functools import partial
from typing import Any, Literal

import torch
import torch.nn as nn

from mixer_scaling.errors import ConfigError

__all__ = ["DropPath", "GroupedLinear", "MlpBlock", "MixerBlock", "MlpMixer", "PatchStem", "make_gelu"]

GeluKind = Literal["exact", "tanh"]
GELU_KINDS = ("exact", "tanh")
LN_EPS = 1e-6


def make_gelu(gelu: str) -> nn.GELU:
    """Return ``nn.GELU`` with the erf form (``'exact'``) or the tanh approximation (``'tanh'``)."""
    if gelu == "exact":
        return nn.GELU()
    if gelu == "tanh":
        return nn.GELU(approximate="tanh")
    raise ValueError(f"gelu={gelu!r} is not supported; allowed: exact, tanh")


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability ``drop_prob`` (training only),
    scaling the kept ones by 1 / (1 - drop_prob). timm's ``DropPath`` (same attributes, same random
    draws), with the batch on axis ``batch_dim``: the Mixer's blocks run token-major ``(S, B, C)``."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True, batch_dim: int = 0):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep
        self.batch_dim = batch_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        shape = [1] * x.ndim
        shape[self.batch_dim] = x.shape[self.batch_dim]
        mask = x.new_empty(shape).bernoulli_(keep_prob)
        if keep_prob > 0.0 and self.scale_by_keep:
            mask.div_(keep_prob)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


def is_positive_int(value: Any) -> bool:
    """True for an integer >= 1 (``bool`` excluded): a count such as ``token_groups`` or K."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


class GroupedLinear(nn.Module):
    """G independent ``Linear(in, out)`` layers on G contiguous groups of rows.

    Input ``(..., N, in)`` with N divisible by G; rows ``[g·N/G, (g+1)·N/G)`` go through layer g.
    Weight ``(G, out, in)``, bias ``(G, out)``. One batched einsum (a bmm over the groups), so
    G = C costs the same FLOPs as a shared ``nn.Linear``.
    """

    def __init__(self, groups: int, in_features: int, out_features: int):
        super().__init__()
        self.groups = groups
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(groups, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(groups, out_features))
        _xavier_uniform_grouped_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, n, _ = x.shape
        x = x.reshape(*lead, self.groups, n // self.groups, self.in_features)
        y = torch.einsum("...gni,goi->...gno", x, self.weight) + self.bias.unsqueeze(-2)
        return y.reshape(*lead, n, self.out_features)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, in_features={self.in_features}, out_features={self.out_features}"


@torch.no_grad()
def _xavier_uniform_grouped_(weight: torch.Tensor) -> None:
    """Xavier-uniform for each ``(out, in)`` slice of a ``(G, out, in)`` weight, i.e. what each
    group's ``nn.Linear`` would get (``nn.init.xavier_uniform_`` would take the fans of a conv)."""
    fan_out, fan_in = weight.shape[-2:]
    bound = math.sqrt(3.0) * math.sqrt(2.0 / float(fan_in + fan_out))  # torch's expression, gain 1
    nn.init.uniform_(weight, -bound, bound)


class MlpBlock(nn.Module):
    """Two-layer MLP ``fc2(drop(GELU(fc1(x))))`` applied along the last axis.

    Used twice per Mixer layer: on the token axis (``in_features = S``, hidden ``D_S``; a tied one's
    weights are applied by :class:`MixerBlock` directly, as left products on its token-major layout)
    and on the channel axis (``in_features = C``, hidden ``D_C``). The output has ``in_features``
    features, so the MLP can sit on a residual branch. ``groups > 1`` gives each of that many
    contiguous groups of rows (dim -2) its own weights (:class:`GroupedLinear`).
    """

    def __init__(
        self, in_features: int, hidden_features: int, gelu: GeluKind = "exact", drop: float = 0.0, groups: int = 1
    ):
        super().__init__()
        linear = nn.Linear if groups == 1 else partial(GroupedLinear, groups)
        self.fc1 = linear(in_features, hidden_features)
        self.act = make_gelu(gelu)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class MixerBlock(nn.Module):
    """One Mixer layer: pre-norm token-mixing MLP then pre-norm channel-mixing MLP, each residual.

    Input and output are token-major ``(S, B, C)`` (contiguous), the layout in which both MLPs are
    one plain matrix product each, with no transpose and no copy:

    * token mixing: the normalised ``(S, B·C)`` matrix is multiplied on the left by ``fc1.weight``
      ``(D_S, S)``, GELU, then by ``fc2.weight`` ``(S, D_S)``: the same weights for all B·C columns,
      i.e. shared across the C channels (and the batch);
    * channel mixing: the ``(S·B, C)`` rows go through ``fc1``/``fc2`` as usual, shared across tokens.

    Compared with timm's block, which runs the token MLP on a transposed ``(B, C, S)`` view (a copy into
    and out of that layout around every token product, forward and backward), this saves ~4-6% of a
    training step on the CPU (``benchmarks/ab_mixer.py``). ``token_groups > 1`` (untied token mixing)
    goes through :class:`GroupedLinear` on a ``(B, C, S)`` view. ``drop_path`` is the stochastic-depth
    probability of this block, applied per sample to both residual branches. The computed function and
    the weights (and their names) are timm's ``MixerBlock``; only the order of floating-point operations
    differs.
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        tokens_mlp_dim: int,
        channels_mlp_dim: int,
        gelu: GeluKind = "exact",
        drop: float = 0.0,
        drop_path: float = 0.0,
        token_groups: int = 1,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp_tokens = MlpBlock(num_tokens, tokens_mlp_dim, gelu=gelu, drop=drop, groups=token_groups)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp_channels = MlpBlock(dim, channels_mlp_dim, gelu=gelu, drop=drop)
        self.drop_path = DropPath(drop_path, batch_dim=1) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, b, c = x.shape
        t = self.mlp_tokens
        y = self.norm1(x)
        if isinstance(t.fc1, nn.Linear):  # tied token mixing: (D_S, S) @ (S, B·C), bias added in the product
            h = t.drop1(t.act(torch.addmm(t.fc1.bias.unsqueeze(1), t.fc1.weight, y.view(s, b * c))))
            u = t.drop2(torch.addmm(t.fc2.bias.unsqueeze(1), t.fc2.weight, h)).view(s, b, c)
        else:  # untied: each channel group its own token MLP, on a (B, C, S) view
            u = t(y.permute(1, 2, 0)).permute(2, 0, 1)
        x = x + self.drop_path(u)
        return x + self.drop_path(self.mlp_channels(self.norm2(x).view(s * b, c)).view(s, b, c))


class PatchStem(nn.Module):
    """Per-patch linear embedding: ``Conv2d(kernel=stride=patch)`` then flatten to ``(B, S, C)``.

    Tokens are ordered row-major over the patch grid (``S = (H/P)·(W/P)``), as in timm and the
    official code; with ``parts = K > 1``, part-major: the grid is cut into K×K equal parts
    (row-major), each part's tokens contiguous and row-major within it.
    """

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int, parts: int = 1):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.parts = parts
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"input image size {tuple(x.shape[-2:])} does not match the size this Mixer was built for "
                f"{self.img_size} (the token count is fixed at construction)"
            )
        x = self.proj(x)
        if self.parts == 1:
            return x.flatten(2).transpose(1, 2)
        b, c, gh, gw = x.shape
        k = self.parts
        x = x.reshape(b, c, k, gh // k, k, gw // k).permute(0, 2, 4, 3, 5, 1)  # (B, part row, part col, i, j, C)
        return x.reshape(b, self.num_patches, c)


def check_token_groups(token_groups: Any, embed_dim: int) -> int:
    """``token_groups`` or :class:`ConfigError`: a positive divisor of ``embed_dim``."""
    if not is_positive_int(token_groups) or embed_dim % token_groups:
        raise ConfigError(
            f"token_groups={token_groups!r} does not divide embed_dim={embed_dim}; allowed: a divisor of "
            f"{embed_dim} (1 = tied token mixing, {embed_dim} = one token MLP per channel)"
        )
    return int(token_groups)


def check_token_parts(token_parts: Any, grid_size: tuple[int, int]) -> int:
    """``token_parts`` or :class:`ConfigError`: a positive integer dividing both sides of the patch grid."""
    if not is_positive_int(token_parts) or grid_size[0] % token_parts or grid_size[1] % token_parts:
        raise ConfigError(
            f"token_parts={token_parts!r} does not divide the patch grid {grid_size[0]}x{grid_size[1]}; "
            f"allowed: an integer >= 1 dividing both sides"
        )
    return int(token_parts)


def _to_hw(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(img_size, int):
        return (img_size, img_size)
    h, w = img_size
    return (int(h), int(w))


class MlpMixer(nn.Module):
    """MLP-Mixer classifier.

    Args:
        num_classes: size of the head (>= 1; ``0`` gives ``nn.Identity`` as the head).
        img_size: input resolution, an int or ``(H, W)``; both must be divisible by ``patch_size``.
        patch_size: P; the stem is a P×P conv with stride P.
        num_blocks: number of Mixer layers.
        embed_dim: hidden width C.
        tokens_mlp_dim: D_S, hidden width of the token-mixing MLP.
        channels_mlp_dim: D_C, hidden width of the channel-mixing MLP.
        in_chans: input channels.
        gelu: ``'exact'`` (erf, timm) or ``'tanh'`` (official JAX).
        drop_rate: dropout on the pooled pre-logits, before the head (as timm's ``drop_rate``).
        proj_drop_rate: dropout inside both MLPs (after the GELU and after ``fc2``). The paper
            uses none; kept for experiments.
        drop_path_rate: stochastic depth of the last block; block ``i`` gets
            ``drop_path_rate · i / (num_blocks - 1)``.
        token_groups: G, the number of channel groups with their own token-mixing MLP; 1 (tied,
            the paper's Mixer) to ``embed_dim`` (one per channel); must divide ``embed_dim``.
        token_parts: K; tokens are ordered part-major over K×K parts of the image (1: row-major).
            Both sides of the patch grid must be divisible by K.

    ``forward_features`` returns the pre-logits ``(B, C)`` (final LayerNorm, then mean over
    tokens), which few-shot evaluation uses; ``forward`` returns ``head(dropout(pre-logits))``.
    ``build_kwargs`` holds the constructor arguments other than ``num_classes``, so a variant
    (e.g. at another resolution) can be built from a trained model.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        num_blocks: int = 8,
        embed_dim: int = 512,
        tokens_mlp_dim: int = 256,
        channels_mlp_dim: int = 2048,
        in_chans: int = 3,
        gelu: GeluKind = "exact",
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        token_groups: int = 1,
        token_parts: int = 1,
    ):
        super().__init__()
        hw = _to_hw(img_size)
        if patch_size < 1 or hw[0] % patch_size or hw[1] % patch_size:
            raise ValueError(f"img_size={hw} is not divisible by patch_size={patch_size}")
        if gelu not in GELU_KINDS:
            raise ValueError(f"gelu={gelu!r} is not supported; allowed: exact, tanh")
        check_token_groups(token_groups, embed_dim)
        check_token_parts(token_parts, (hw[0] // patch_size, hw[1] // patch_size))
        self.build_kwargs: dict[str, Any] = dict(
            img_size=hw, patch_size=patch_size, num_blocks=num_blocks, embed_dim=embed_dim,
            tokens_mlp_dim=tokens_mlp_dim, channels_mlp_dim=channels_mlp_dim, in_chans=in_chans, gelu=gelu,
            drop_rate=drop_rate, proj_drop_rate=proj_drop_rate, drop_path_rate=drop_path_rate,
            token_groups=token_groups, token_parts=token_parts,
        )
        self.num_classes = num_classes
        self.img_size = hw
        self.patch_size = patch_size
        self.gelu = gelu
        self.num_features = self.embed_dim = embed_dim

        self.stem = PatchStem(hw, patch_size, in_chans, embed_dim, parts=token_parts)
        self.num_tokens = self.stem.num_patches
        rates = self.drop_path_rates(num_blocks, drop_path_rate)
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(
            *[
                MixerBlock(
                    embed_dim,
                    self.num_tokens,
                    tokens_mlp_dim,
                    channels_mlp_dim,
                    gelu=gelu,
                    drop=proj_drop_rate,
                    drop_path=rate,
                    token_groups=token_groups,
                )
                for rate in rates
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._make_head(num_classes)
        self.init_weights()

    @staticmethod
    def drop_path_rates(num_blocks: int, drop_path_rate: float) -> list[float]:
        """Per-block stochastic-depth rates: linear from 0 at the first block to ``drop_path_rate``."""
        if num_blocks <= 1:
            return [float(drop_path_rate)] * num_blocks
        return [drop_path_rate * i / (num_blocks - 1) for i in range(num_blocks)]

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.embed_dim, num_classes)
        # Zero-init, as the paper and official code: the untrained model predicts uniform logits.
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm-style init: stem LeCun-normal with zero bias; MLP weights Xavier-uniform (per
        group if untied) with N(0, 1e-6) biases; LayerNorm weight 1, bias 0; head zeros."""
        fan_in = self.stem.proj.in_channels * self.patch_size**2
        # LeCun normal = truncated normal with std sqrt(1/fan_in), corrected for the truncation at 2 std.
        std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
        nn.init.trunc_normal_(self.stem.proj.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.stem.proj.bias)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)
            elif isinstance(m, GroupedLinear):
                _xavier_uniform_grouped_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing over the blocks (timm's interface, as its ViT and ResNetV2 have):
        only block inputs are kept for backward, each block's activations recomputed there."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh zero-initialised ``Linear(C, num_classes)`` on the same
        device and dtype as the model (``num_classes = 0`` removes it)."""
        ref = self.norm.weight
        self.num_classes = num_classes
        head = self._make_head(num_classes)
        self.head = head.to(device=ref.device, dtype=ref.dtype)
        self.head.train(self.training)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, in_chans, H, W)`` → token features ``(B, S, C)`` after the final LayerNorm.

        The blocks run token-major (``(S, B, C)``, see :class:`MixerBlock`); the result is returned as a
        ``(B, S, C)`` view of it."""
        x = self.stem(x).transpose(0, 1).contiguous()  # (B, S, C) view of the conv output → (S, B, C)
        if self.grad_checkpointing and torch.is_grad_enabled():
            from timm.models import checkpoint_seq

            x = checkpoint_seq(self.blocks, x)  # each block's activations recomputed in backward
        else:
            x = self.blocks(x)
        return self.norm(x).transpose(0, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images → pre-logits ``(B, C)``: final LayerNorm, then mean over the S tokens."""
        return self.forward_tokens(x).mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pre-logits ``(B, C)`` → logits (or the pre-logits after head dropout if ``pre_logits``)."""
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
