"""The embedded data set: procedurally generated, seeded image classification ("SynthShapes").

Nothing is stored or downloaded. Sample ``i`` of a split is a pure function of ``(seed, split, i)``
(and of the image size): every random quantity comes from a counter-based hash (splitmix64 in numpy
``uint64``) of those numbers, never from a stateful RNG, so any index can be generated in any order, in
any batch, in any worker, with the same pixels. Sizes up to billions of images cost nothing.

Classes
    A class is one combination of discrete factors (:data:`FACTORS`): the object's shape (10: disk,
    square, diamond, triangle, ring, plus, half-disk, bar, hexagon, ellipse), its colour (6), a part
    (none, or a small disk at one of 3 places in the object's frame, turning with it), the background
    texture (grating, checks, plaid, slow ramp) and its orientation (4; the frequency follows it).
    A seeded bijection maps class ids to combinations (3,840 in all), so classes never coincide and
    the ids after the pre-training ones are new classes of the same family: the held-out few-shot
    classes. With 100 classes every factor value is shared by many classes; only the combination
    names the class, and the fine cues (part place, texture orientation) take data to learn.

Per-sample nuisance (:data:`NUISANCE`)
    Position, scale, rotation; texture phase, orientation, frequency and contrast jitter; the
    background colour pair (drawn per sample, so it says nothing about the class); colour jitter of
    the object and a random part colour; an occluding rectangle of a random colour (35% of samples);
    brightness, offset and a colour cast; Gaussian pixel noise of a random strength.

Labels are ``index % classes``: every prefix of a split is balanced to within one image per class, and
the nested training fractions are prefixes of the training split. Splits (train, val, fewshot_train,
fewshot_test) are independent hash streams.

Learnability (tiny Mixer, patch 4, 4 layers, C=128, 0.58M params; 500 steps of 128, Adam lr 3e-3,
warmup 50 + linear decay, wd 0.03, 100 classes, 100k images): validation top-1 56% with 100% of the
data (no overfitting yet), 34% with 3% (training accuracy 100%: it overfits); chance is 1%.

Speed: a whole batch is rendered at once (``__getitems__``): per-sample parameters in numpy, pixels
with float32 torch/numpy elementwise ops and one batched matmul that mixes 8 weight planes into RGB.
About 30k images/s at 32x32, batch 256, on one core (:func:`benchmark`); a tiny model trains at
~150-300 images/s on the same core. Pixels are bit-identical for an index in any batch on a given
machine (elementwise ops are exactly rounded; numpy's float32 ``sin`` uses one code path per call);
across CPU types the last bit may differ (BLAS, ``sin``).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "FACTORS",
    "NUISANCE",
    "NUM_COMBOS",
    "SPLITS",
    "class_factors",
    "noise_bank",
    "render_batch",
    "SyntheticImages",
    "NUM_SHAPES",
    "SHAPES",
    "class_prototypes",
    "benchmark",
    "splitmix64",
    "hash_uniforms",
    "scaled_nuisance",
]

#: Split name -> the number mixed into the hash. Different keys give independent streams of images.
SPLITS = {"train": 0, "val": 1, "fewshot_train": 2, "fewshot_test": 3}

SHAPES = ("disk", "square", "diamond", "triangle", "ring", "plus", "half_disk", "bar", "hexagon", "ellipse")
NUM_SHAPES = len(SHAPES)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_CLASS_KEY = 0xC1A55
_CHUNK_PIXELS = 1 << 18  # pixels per plane rendered at once (256 images at 32x32)
_NOISE_BANK = 1 << 20  # floats of shared Gaussian noise, each sample reads a window at a hashed offset


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on a uint64 array (wraps modulo 2^64)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _key(*words) -> np.ndarray:
    """Hash a sequence of integers (scalars or broadcastable int arrays) into uint64 keys."""
    h = np.uint64(0x6A09E667F3BCC909)
    with np.errstate(over="ignore"):
        for w in words:
            w = np.asarray(w).astype(np.uint64)
            h = splitmix64(h ^ splitmix64(w + _GOLDEN))
    return np.asarray(h, dtype=np.uint64)


def hash_uniforms(keys: np.ndarray, n: int) -> np.ndarray:
    """``len(keys) x n`` uniforms in [0, 1) (float64), column j = hash(key, j)."""
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        z = splitmix64(keys + (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)[None, :])
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


#: Discrete factors of a class; a class is one combination (all classes of a seed are distinct).
#: The background colours and the part's colour are nuisance, drawn per sample.
FACTORS = {"shape": NUM_SHAPES, "colour": 6, "part": 4, "texture": 4, "orientation": 4}
NUM_COMBOS = int(np.prod(list(FACTORS.values())))  # 3840: the most classes one seed can have

_PALETTE = np.array(  # object and part colours: red, yellow, orange, blue, green, violet
    [[0.90, 0.20, 0.15], [0.95, 0.85, 0.20], [0.95, 0.55, 0.15], [0.20, 0.35, 0.95], [0.20, 0.75, 0.30], [0.60, 0.30, 0.90]],
    np.float32,
)
_BG_PALETTE = np.array(  # pairs (A, B) of background colours; the texture blends between them
    [
        [[0.15, 0.15, 0.15], [0.55, 0.55, 0.55]],
        [[0.45, 0.25, 0.10], [0.85, 0.60, 0.30]],
        [[0.05, 0.15, 0.40], [0.20, 0.60, 0.60]],
        [[0.35, 0.40, 0.10], [0.85, 0.55, 0.65]],
    ],
    np.float32,
)
# texture = 0.5 + 0.5 * (w0 s1 + w1 s1 s2 + w2 s2): grating, checks, plaid, slow ramp (low frequency)
_TEX_W = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [1.0, 0.0, 0.0]], np.float32)
_TEX_FMUL = np.array([1.0, 1.0, 1.0, 0.3], np.float32)
_FREQS = np.array([1.6, 3.2], np.float32)  # cycles per half image


def _combo_order(seed: int) -> np.ndarray:
    """A seeded bijection class id -> factor combination (rank of a hash: a pure function of the seed)."""
    return np.argsort(_key(seed, _CLASS_KEY, np.arange(NUM_COMBOS)), kind="stable")


_ORDER_CACHE: dict[int, np.ndarray] = {}


def class_factors(seed: int, class_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The discrete factor values (int64 arrays) of the given classes; distinct classes differ in at
    least one factor. Class ids must be below :data:`NUM_COMBOS`."""
    class_ids = np.asarray(class_ids, dtype=np.int64)
    if class_ids.size and (class_ids.min() < 0 or class_ids.max() >= NUM_COMBOS):
        raise ValueError(f"class ids must be in [0, {NUM_COMBOS})")
    if seed not in _ORDER_CACHE:
        if len(_ORDER_CACHE) > 16:
            _ORDER_CACHE.clear()
        _ORDER_CACHE[seed] = _combo_order(seed)
    combo = _ORDER_CACHE[seed][class_ids]
    out = {}
    for name, k in FACTORS.items():  # mixed radix digits
        out[name] = combo % k
        combo = combo // k
    return out


def class_prototypes(seed: int, class_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The prototype parameters of the given classes (float32 arrays, first axis = class)."""
    f = class_factors(seed, class_ids)
    part = f["part"]
    n = len(part)
    return {
        "shape": f["shape"],
        "colour": f["colour"],
        "tex_w": _TEX_W[f["texture"]],
        "tex_theta": f["orientation"].astype(np.float32) * np.float32(np.pi / 4),
        "tex_freq": _FREQS[f["orientation"] % 2] * _TEX_FMUL[f["texture"]],
        "tex_ratio": np.full(n, 0.55, np.float32),
        "part": (part > 0).astype(np.float32),
        "part_angle": (part.astype(np.float32) - 1) * np.float32(2 * np.pi / 3) + np.float32(np.pi / 2),
        "part_dist": np.full(n, 0.8, np.float32),
        "part_radius": np.full(n, 0.36, np.float32),
        "rot": np.zeros(n, np.float32),
    }


def _shape_norm(kind: int, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """A gauge that is < 1 inside shape ``kind`` (about unit slope at the edge), in local coordinates.

    Only exactly rounded float32 operations (+ - * sqrt abs min max), so every pixel of a sample gets the
    same bits whichever vector lane, thread or batch computes it.
    """
    if kind == 0:  # disk
        return (X * X + Y * Y).sqrt_()
    ax, ay = X.abs(), Y.abs()
    if kind == 1:  # square
        return torch.maximum(ax, ay).mul_(1.15)
    if kind == 2:  # diamond
        return ax.add_(ay).mul_(0.8)
    if kind == 3:  # triangle (equilateral, pointing up in its frame)
        cx = X * 0.8660254
        hy = Y * 0.5
        return torch.maximum(torch.maximum(cx + hy, hy - cx), -Y).mul_(1.8)
    if kind == 4:  # ring
        return (X * X + Y * Y).sqrt_().sub_(0.65).abs_().mul_(1.0 / 0.33)
    if kind == 5:  # plus
        return torch.maximum(torch.minimum(ax, ay).mul_(2.8), torch.maximum(ax, ay))
    if kind == 6:  # half disk
        return torch.maximum((X * X + Y * Y).sqrt_(), Y.mul(-4.0).add_(0.6))
    if kind == 7:  # bar
        return torch.maximum(ax.mul_(0.95), ay.mul_(2.6))
    if kind == 8:  # hexagon
        return torch.maximum(ay, ax.mul_(0.8660254).add_(ay * 0.5)).mul_(1.1)
    if kind == 9:  # ellipse
        return (X * X + Y * Y * 4.0).sqrt_()
    raise ValueError(kind)


#: Per-sample nuisance: the knobs of the task's difficulty (ranges are +- around the prototype unless
#: a (low, high) pair). Tuned so that a ~1M-parameter conv net is far from chance and far from 100%.
NUISANCE = {
    "shift": 0.35,  # object centre, in half-image units
    "scale": (0.35, 0.6),  # object half size
    "rotation": 0.6,  # radians
    "tex_rotation": 0.2,
    "tex_freq": 1.25,  # multiplicative
    "tex_contrast": 0.5,  # lowest texture contrast (highest is 1)
    "fg_jitter": 0.12,
    "bg_jitter": 0.15,
    "colour_cast": 0.12,
    "gain": 0.2,
    "offset": 0.1,
    "noise": (0.02, 0.10),
    "occluder_p": 0.35,
    "occluder_size": (0.1, 0.35),
}


def scaled_nuisance(amount: float) -> dict:
    """:data:`NUISANCE` with every per-sample variation scaled by ``amount`` (``data.nuisance``): 1 is the
    data set as documented, 0 renders each class's prototype (centred, upright, clean) with only the
    class-independent background colours varying. The object's scale range shrinks to its middle, the
    multiplicative frequency jitter goes as a power, the lowest texture contrast rises towards 1."""
    if amount == 1:
        return NUISANCE
    a = float(amount)
    lo, hi = NUISANCE["scale"]
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    out = {k: v * a for k, v in NUISANCE.items() if isinstance(v, float)}
    out.update(
        scale=(mid - half * a, mid + half * a),
        tex_freq=NUISANCE["tex_freq"] ** a,
        tex_contrast=1 - (1 - NUISANCE["tex_contrast"]) * a,
        noise=tuple(v * a for v in NUISANCE["noise"]),
        occluder_size=NUISANCE["occluder_size"],
    )
    return out


_BANK_CACHE: dict[tuple[int, int], np.ndarray] = {}
_BLAS: list = []  # [threadpoolctl controller or None], made on first use


@contextlib.contextmanager
def single_threaded():
    """Render on one core: torch's intra-op threads and numpy's BLAS threads set to 1 meanwhile.

    Generation is cheap; parallel regions only add stalls when the other cores are busy (training,
    other workers). DataLoader workers are one process per core anyway."""
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS.append(ThreadpoolController())
        except Exception:  # threadpoolctl missing: BLAS keeps its threads
            _BLAS.append(None)
    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
    try:
        if _BLAS[0] is None:
            yield
        else:
            with _BLAS[0].limit(limits=1, user_api="blas"):
                yield
    finally:
        if n != 1:
            torch.set_num_threads(n)


def noise_bank(seed: int, n: int) -> np.ndarray:
    """``n`` standard normal float32 values, value ``j`` = Box-Muller of two hashes of (seed, j): a
    table every sample of the data set reads its pixel noise from (at its own hashed offset)."""
    if (seed, n) not in _BANK_CACHE:
        if len(_BANK_CACHE) > 4:
            _BANK_CACHE.clear()
        u = hash_uniforms(_key(seed, 0x4E015E, np.arange(n)), 2)
        z = np.sqrt(-2.0 * np.log1p(-u[:, 0])) * np.cos(2.0 * np.pi * u[:, 1])
        bank = z.astype(np.float32)
        bank.flags.writeable = False
        _BANK_CACHE[(seed, n)] = bank
    return _BANK_CACHE[(seed, n)]


class SyntheticImages(Dataset):
    """``length`` images of split ``split``; item ``i`` has label ``i % classes`` and class id
    ``class_offset + i % classes``. Items are float32 3xSxS tensors in [-1, 1] and int labels.

    ``flip`` and ``randaugment`` are training augmentations drawn from torch's global RNG (so they are
    random per epoch and per worker); the underlying image of an index never changes.
    """

    def __init__(
        self,
        length: int,
        *,
        image_size: int = 32,
        classes: int = 100,
        seed: int = 0,
        split: str = "train",
        class_offset: int = 0,
        flip: bool = False,
        randaugment: str | None = None,
        nuisance: float = 1.0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {sorted(SPLITS)}")
        if int(length) < 0 or int(classes) < 1 or int(image_size) < 4 or int(class_offset) < 0:
            raise ValueError(f"bad SyntheticImages(length={length}, classes={classes}, image_size={image_size})")
        if int(class_offset) + int(classes) > NUM_COMBOS:
            raise ValueError(f"class ids up to {int(class_offset) + int(classes) - 1}; the generator has {NUM_COMBOS}")
        self.length = int(length)
        self.image_size = int(image_size)
        self.classes = int(classes)
        self.num_classes = self.classes
        self.seed = int(seed)
        self.split = split
        self.class_offset = int(class_offset)
        self.flip = bool(flip)
        self.randaugment = randaugment
        if not 0 <= float(nuisance) <= 1:
            raise ValueError(f"nuisance={nuisance} is outside [0, 1]")
        self.nuisance = float(nuisance)
        self._ra: Callable | None = None
        if randaugment:
            from timm.data.auto_augment import rand_augment_transform

            self._ra = rand_augment_transform(randaugment, {"translate_const": int(self.image_size * 0.45)})
        s = self.image_size
        self._grid = ((np.arange(s, dtype=np.float32) + np.float32(0.5)) * np.float32(2.0 / s) - np.float32(1.0))
        self._noise: np.ndarray | None = None  # built lazily (cheap, but not needed to pickle)

    # -- sizes and labels ------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.length

    @property
    def targets(self) -> list[int]:
        return (np.arange(self.length) % self.classes).tolist()

    def labels(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        idx = np.arange(self.length) if indices is None else self._check(indices)
        return idx % self.classes

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_noise"] = None
        return state

    # -- generation -----------------------------------------------------------------------------
    def _check(self, indices) -> np.ndarray:
        if torch.is_tensor(indices):
            indices = indices.cpu().numpy()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size:
            idx = np.where(idx < 0, idx + self.length, idx)
            if idx.min() < 0 or idx.max() >= self.length:
                raise IndexError(f"index out of range for a data set of {self.length} images")
        return idx

    def _noise_bank(self) -> np.ndarray:
        if self._noise is None:
            self._noise = noise_bank(self.seed, _NOISE_BANK + 3 * self.image_size**2)
        return self._noise

    def render(self, indices) -> tuple[torch.Tensor, np.ndarray]:
        """Images ``B x 3 x S x S`` (float32 in [-1, 1]) and labels (int64) of the given indices,
        without training augmentation."""
        idx = self._check(indices)
        labels = idx % self.classes
        args = (self.seed, SPLITS[self.split])
        tail = (self.image_size, self._grid, self._noise_bank(), self.nuisance)
        # Large images are rendered a few at a time so the working planes stay in cache.
        chunk = max(1, _CHUNK_PIXELS // self.image_size**2)
        with single_threaded():
            if len(idx) <= chunk:
                return render_batch(*args, idx, labels + self.class_offset, *tail), labels
            out = torch.empty((len(idx), 3, self.image_size, self.image_size))
            for i in range(0, len(idx), chunk):
                out[i : i + chunk] = render_batch(*args, idx[i : i + chunk], labels[i : i + chunk] + self.class_offset, *tail)
        return out, labels

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        x, labels = self.render(indices)
        if self.flip and len(x):
            m = torch.rand(len(x)) < 0.5
            if bool(m.any()):
                x[m] = x[m].flip(-1)
        if self._ra is not None:
            x = _apply_pil(x, self._ra)
        return x, torch.from_numpy(labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.__getitems__([index])
        return x[0], int(y[0])


def _apply_pil(x: torch.Tensor, tf: Callable) -> torch.Tensor:
    """Apply a PIL transform (timm RandAugment) image by image to a batch in [-1, 1]."""
    from PIL import Image

    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = [np.asarray(tf(Image.fromarray(im)), dtype=np.float32) for im in u8]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous().div_(127.5).sub_(1.0)


def render_batch(
    seed: int,
    split_key: int,
    idx: np.ndarray,
    class_ids: np.ndarray,
    size: int,
    grid: np.ndarray,
    noise: np.ndarray,
    nuisance: float = 1.0,
) -> torch.Tensor:
    """Render samples ``idx`` (of class ``class_ids``) of split ``split_key``: float32 B x 3 x S x S.

    Per-sample parameters are computed in numpy from the hashes; the pixels with torch (broadcasting is
    much faster there) using only exactly rounded elementwise ops, and numpy's float32 ``sin`` (one code
    path for every element) for the texture.
    """
    f32 = np.float32
    B = len(idx)
    if B == 0:
        return torch.empty((0, 3, size, size))
    P = class_prototypes(seed, class_ids)
    shape = P["shape"]
    if B > 1 and np.any(shape[1:] < shape[:-1]):
        # Render in shape order (each shape's pixels are then one contiguous slice), then restore.
        order = np.argsort(shape, kind="stable")
        inv = np.empty_like(order)
        inv[order] = np.arange(B)
        return render_batch(seed, split_key, idx[order], class_ids[order], size, grid, noise,
                            nuisance)[torch.from_numpy(inv)]
    U = hash_uniforms(_key(seed, split_key, idx), 40).astype(np.float32)
    J = scaled_nuisance(nuisance)

    def t(a):  # (B,) numpy -> (B,1,1) float32 tensor
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).view(-1, 1, 1)

    # geometry of the object: centre, scale (half size, in units of half the image), rotation
    cx = (U[:, 0] - f32(0.5)) * f32(2 * J["shift"])
    cy = (U[:, 1] - f32(0.5)) * f32(2 * J["shift"])
    scale = f32(J["scale"][0]) + f32(J["scale"][1] - J["scale"][0]) * U[:, 2]
    rot = P["rot"].astype(np.float64) + (U[:, 3].astype(np.float64) - 0.5) * (2 * J["rotation"])
    cs = (np.cos(rot) / scale).astype(np.float32)
    sn = (np.sin(rot) / scale).astype(np.float32)
    du = torch.from_numpy(grid[None, :] - cx[:, None])  # (B, W)
    dv = torch.from_numpy(grid[None, :] - cy[:, None])  # (B, H)
    px = f32(size / 2.0)  # pixels per unit of image coordinates
    edge = scale * px  # mask slope: pixels per local unit
    # part: small disk at a fixed position in the object's frame (absent: radius^2 < 0, empty mask)
    ox = P["part_dist"] * np.cos(P["part_angle"])
    oy = P["part_dist"] * np.sin(P["part_angle"])
    pr = P["part_radius"]
    pr2 = np.where(P["part"] > 0, pr * pr, f32(-4.0)).astype(np.float32)
    pslope = edge / (f32(2.0) * pr)
    CS, SN = t(cs), t(sn)
    a, b = du.unsqueeze(1), dv.unsqueeze(2)
    X = a * CS + b * SN  # (B, H, W) object frame, in units of the object's half size
    Y = b * CS - a * SN

    # object mask: per shape group, a gauge < 1 inside; then a soft edge about one pixel wide
    n = torch.empty((B, size, size))
    bounds = np.searchsorted(shape, np.arange(NUM_SHAPES + 1)).tolist()  # shape is sorted here
    for k in range(NUM_SHAPES):
        lo, hi = bounds[k], bounds[k + 1]
        if lo < hi:
            n[lo:hi] = _shape_norm(k, X[lo:hi], Y[lo:hi])
    m1 = n.mul_(t(-edge)).add_(t(edge + f32(0.5))).clamp_(0.0, 1.0)
    # part mask from the squared distance d2 to its centre: (pr2 - d2) * slope + 0.5
    d2 = X.sub_(t(ox)).square_().add_(Y.sub_(t(oy)).square_())
    m2 = d2.mul_(t(-pslope)).add_(t(pr2 * pslope + f32(0.5))).clamp_(0.0, 1.0)

    # background texture in image coordinates: tex = 0.5 + 0.5 * (w1 s1 + w2 s1 s2 + w3 s2)
    th1 = P["tex_theta"] + (U[:, 4] - f32(0.5)) * f32(2 * J["tex_rotation"])
    fr1 = P["tex_freq"] * np.exp((U[:, 5] - f32(0.5)) * f32(2 * np.log(J["tex_freq"]))) * f32(np.pi)
    fr2 = fr1 * P["tex_ratio"]
    ph1 = U[:, 6] * f32(2 * np.pi)
    ph2 = U[:, 7] * f32(2 * np.pi)
    gx, gy = torch.from_numpy(grid).view(1, 1, -1), torch.from_numpy(grid).view(1, -1, 1)
    s1 = gx * t(np.cos(th1) * fr1) + (gy * t(np.sin(th1) * fr1) + t(ph1))
    s2 = gx * t(-np.sin(th1) * fr2) + (gy * t(np.cos(th1) * fr2) + t(ph2))
    np.sin(s1.numpy(), out=s1.numpy())
    np.sin(s2.numpy(), out=s2.numpy())
    w = P["tex_w"] * (f32(0.5) * (f32(J["tex_contrast"]) + f32(1 - J["tex_contrast"]) * U[:, 28]))[:, None]
    tex = (s2 * t(w[:, 1])).add_(t(w[:, 0])).mul_(s1).add_(s2.mul_(t(w[:, 2]))).add_(0.5)

    # clutter / occluder: an axis-aligned rectangle of a random colour over half of the samples
    occ = (U[:, 17] < J["occluder_p"]).astype(np.float32)
    ocx = (U[:, 18] - f32(0.5)) * f32(1.6)
    ocy = (U[:, 19] - f32(0.5)) * f32(1.6)
    lo, hi = J["occluder_size"]
    ow = f32(lo) + f32(hi - lo) * U[:, 20]
    oh = f32(lo) + f32(hi - lo) * U[:, 21]
    ex = torch.from_numpy((ow[:, None] - np.abs(grid[None, :] - ocx[:, None])) * px)  # pixels inside the edge
    ey = torch.from_numpy((oh[:, None] - np.abs(grid[None, :] - ocy[:, None])) * px)
    # The image is a per-sample linear map of 8 weight planes to RGB (one matmul for the batch):
    # [1, texture * background weight, object weight, part weight, occluder weight, noise R, G, B]
    hw = size * size
    W = np.empty((B, 8, hw), np.float32)
    Wt = torch.from_numpy(W).view(B, 8, size, size)
    m3 = torch.minimum(ey.unsqueeze(2), ex.unsqueeze(1)).add_(0.5).clamp_(0.0, 1.0)
    torch.mul(m3, t(occ), out=Wt[:, 4])
    m3 = Wt[:, 4]

    # layer weights: background (with its texture), object, part, occluder; they sum to one
    Wt[:, 0].fill_(1.0)
    r3 = 1.0 - m3
    w2 = torch.mul(m2, r3, out=Wt[:, 3])
    r23 = r3.sub_(w2)
    w1 = torch.mul(m1, r23, out=Wt[:, 2])
    torch.mul(r23.sub_(w1), tex, out=Wt[:, 1])  # texture amount times background weight

    # pixel noise: a window of a fixed Gaussian bank at a hashed offset (scaled in the matmul)
    off = (_key(seed, split_key, idx, 0x4E) % np.uint64(len(noise) - 3 * hw + 1)).astype(np.int64)
    W[:, 5:8] = np.lib.stride_tricks.sliding_window_view(noise, 3 * hw)[off].reshape(B, 3, hw)

    # colours with per-sample jitter; brightness gain and offset and the map to [-1, 1] folded in
    def jit(c, u, amount):
        return np.clip(c + (u - f32(0.5)) * f32(2 * amount), 0.0, 1.0).astype(np.float32)

    # colours: object colour of the class; background pair and part colour drawn per sample
    bgp = _BG_PALETTE[np.minimum((U[:, 8] * len(_BG_PALETTE)).astype(np.int64), len(_BG_PALETTE) - 1)]
    swap = U[:, 9] < 0.5
    bg_a = np.where(swap[:, None], bgp[:, 1], bgp[:, 0])
    bg_b = np.where(swap[:, None], bgp[:, 0], bgp[:, 1])
    bg_shift = (U[:, 10:11] - f32(0.5)) * f32(2 * J["bg_jitter"])
    bg_a = np.clip(bg_a + bg_shift, 0.0, 1.0)
    bg_b = np.clip(bg_b + bg_shift, 0.0, 1.0)
    fg_i = P["colour"]
    part_i = np.minimum((U[:, 38] * 6).astype(np.int64), 5)
    part_i = np.where(part_i == fg_i, (part_i + 3) % 6, part_i)
    fg = jit(_PALETTE[fg_i], U[:, 32:35], J["fg_jitter"])
    part_col = jit(_PALETTE[part_i], U[:, 35:38], J["fg_jitter"])
    occ_col = U[:, 22:25]
    gain = (f32(1 - J["gain"]) + f32(2 * J["gain"]) * U[:, 25]) * f32(2.0)
    offset = (U[:, 26] - f32(0.5)) * f32(2 * J["offset"]) - f32(1.0)
    lo, hi = J["noise"]
    sigma = (f32(lo) + f32(hi - lo) * U[:, 27]) * gain
    cast = f32(1.0) + (U[:, 29:32] - f32(0.5)) * f32(2 * J["colour_cast"])  # per-channel gain

    g = gain[:, None] * cast
    C = np.zeros((B, 3, 8), np.float32)
    C[:, :, 0] = bg_a * g + offset[:, None]
    C[:, :, 1] = (bg_b - bg_a) * g
    C[:, :, 2] = (fg - bg_a) * g
    C[:, :, 3] = (part_col - bg_a) * g
    C[:, :, 4] = (occ_col - bg_a) * g
    C[:, [0, 1, 2], [5, 6, 7]] = sigma[:, None]
    out = torch.from_numpy(np.matmul(C, W)).view(B, 3, size, size)
    return out.clamp_(-1.0, 1.0)


def benchmark(batch_size: int = 256, image_size: int = 32, seconds: float = 2.0) -> float:
    """Images per second of ``__getitems__`` on this process (torch threads untouched)."""
    ds = SyntheticImages(10**9, image_size=image_size)
    ds.__getitems__(range(batch_size))
    n, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        ds.__getitems__(np.arange(i, i + batch_size) * 7919 % len(ds))
        n += batch_size
        i += batch_size
    return n / (time.perf_counter() - start)
