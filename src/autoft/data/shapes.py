"""The embedded default task: a procedural world of coloured shapes in several rendering domains.

Everything is drawn from a seed at run time (no downloads): 32x32 RGB images of 18 shape classes,
each rendered in one of nine domains (scenes and drawing styles) and described by a caption that
names the colour, the shape and the domain ("a photo of a red star in the garden."). The world
serves two purposes:

- `pretraining_corpus`: image-caption pairs over all domains and all 18 shapes, used by
  `scripts/build_foundation.py` to pretrain a small CLIP model contrastively. In a configurable
  share of the captions of the *downstream* shapes the shape word is replaced by the generic word
  "shape" (the extra shapes are always named). The image tower still learns to tell shapes apart
  (the extra shapes force it), but the downstream class names are only weakly grounded in the text
  tower, so zero-shot accuracy sits in the middle regime (docs/design.md section 8) where fine-tuning has
  something to teach.
- `shapes_task`: the downstream `Task` over the first 10 shapes. ID train / ID val / ID test come
  from one domain ("studio": solid shapes on plain backgrounds) in which the background colour
  matches the class most of the time (a spurious cue, like a camera-trap location predicting the
  species); the OOD-val domain feeds the search; the remaining domains are held-out OOD tests.

Images are drawn at 64 px (PIL polygons for the masks, torch for compositing) and box-downsampled
to 32 px, so they come out anti-aliased and already at model resolution (uint8 CHW tensors).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from autoft.data.base import Split, Task
from autoft.data.images import TensorImageDataset
from autoft.errors import UserError
from autoft.io import atomic_torch_save
from autoft.names import SHAPES_DOMAINS

IMAGE_SIZE = 32
_DRAW = 64  # drawing resolution; box-downsampled by 2

SHAPES = ["circle", "square", "triangle", "star", "cross", "pentagon", "hexagon", "ring", "diamond",
          "arrow", "heart", "crescent", "semicircle", "octagon", "trapezoid", "ellipse", "bar", "tee"]
N_DOWNSTREAM = 10
RADIUS = (17.0, 27.0)  # object radius at the 64-px drawing scale
TILT = math.radians(20)  # objects are rotated by at most this much  # the downstream task uses the first 10 shapes; the others exist for pretraining

OBJECT_COLOURS = {
    "red": (0.86, 0.10, 0.10), "green": (0.10, 0.68, 0.16), "blue": (0.10, 0.25, 0.90),
    "yellow": (0.96, 0.86, 0.10), "purple": (0.56, 0.16, 0.72), "orange": (1.00, 0.55, 0.00),
    "white": (0.96, 0.96, 0.96), "black": (0.07, 0.07, 0.07),
}
# plain backgrounds; in the ID domain background k goes with downstream class k (the spurious cue)
BACKGROUNDS = {
    "grey": (0.50, 0.50, 0.50), "beige": (0.87, 0.80, 0.64), "navy": (0.10, 0.13, 0.36),
    "teal": (0.10, 0.50, 0.50), "pink": (0.96, 0.70, 0.76), "olive": (0.46, 0.46, 0.14),
    "maroon": (0.42, 0.08, 0.12), "lavender": (0.76, 0.70, 0.93), "mint": (0.70, 0.93, 0.78),
    "brown": (0.46, 0.30, 0.18),
}
_OBJ = torch.tensor(list(OBJECT_COLOURS.values()))
_BG = torch.tensor(list(BACKGROUNDS.values()))
_OBJ_NAMES = list(OBJECT_COLOURS)
# an object colour must stand out from its plain background (RGB distance)
_CONTRAST = (torch.cdist(_BG, _OBJ) > 0.45).numpy()  # [n_bg, n_obj]


# ---------------------------------------------------------------------------------------------
# shapes: polygons in unit coordinates (radius about 1), as (points, value) layers; value 0 cuts a
# hole (ring, crescent)

def _ngon(n: int, r: float = 1.0, phase: float = 0.0, sx: float = 1.0, sy: float = 1.0):
    return [(sx * r * math.cos(phase + 2 * math.pi * k / n), sy * r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _star():
    return [((1.0 if k % 2 == 0 else 0.42) * math.cos(-math.pi / 2 + math.pi * k / 5),
             (1.0 if k % 2 == 0 else 0.42) * math.sin(-math.pi / 2 + math.pi * k / 5)) for k in range(10)]


def _heart():
    pts = []
    for k in range(40):
        t = 2 * math.pi * k / 40
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17, -y / 17 + 0.1))
    return pts


_W = 0.34  # half-width of arms and bars
_SHAPE_LAYERS: dict[str, list[tuple[list, int]]] = {
    "circle": [(_ngon(40), 1)],
    "square": [(_ngon(4, 1.0, math.pi / 4), 1)],
    "triangle": [(_ngon(3, 1.0, -math.pi / 2), 1)],
    "star": [(_star(), 1)],
    "cross": [([(-_W, -1), (_W, -1), (_W, -_W), (1, -_W), (1, _W), (_W, _W), (_W, 1), (-_W, 1), (-_W, _W),
                (-1, _W), (-1, -_W), (-_W, -_W)], 1)],
    "pentagon": [(_ngon(5, 1.0, -math.pi / 2), 1)],
    "hexagon": [(_ngon(6), 1)],
    "ring": [(_ngon(40), 1), (_ngon(40, 0.55), 0)],
    "diamond": [([(0, -1), (0.58, 0), (0, 1), (-0.58, 0)], 1)],
    "arrow": [([(-1, -0.22), (0.15, -0.22), (0.15, -0.62), (1, 0), (0.15, 0.62), (0.15, 0.22), (-1, 0.22)], 1)],
    "heart": [(_heart(), 1)],
    "crescent": [(_ngon(40), 1), ([(x + 0.45, y - 0.1) for x, y in _ngon(40, 0.85)], 0)],
    "semicircle": [([(math.cos(math.pi * k / 20), 0.35 - math.sin(math.pi * k / 20)) for k in range(21)], 1)],
    "octagon": [(_ngon(8, 1.0, math.pi / 8), 1)],
    "trapezoid": [([(-1, 0.55), (1, 0.55), (0.45, -0.55), (-0.45, -0.55)], 1)],
    "ellipse": [(_ngon(40, 1.0, 0, 1.0, 0.52), 1)],
    "bar": [([(-1, -0.26), (1, -0.26), (1, 0.26), (-1, 0.26)], 1)],
    "tee": [([(-1, -0.9), (1, -0.9), (1, -0.3), (0.3, -0.3), (0.3, 1), (-0.3, 1), (-0.3, -0.3), (-1, -0.3)], 1)],
}
assert list(_SHAPE_LAYERS) == SHAPES


def _draw_masks(shapes: np.ndarray, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, angle: np.ndarray,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Binary masks [N, 64, 64] (float 0/1) of one shape per image, drawn with PIL polygons."""
    n = len(shapes)
    masks = np.zeros((n, _DRAW, _DRAW), dtype=np.uint8)
    for i in range(n):
        img = Image.new("L", (_DRAW, _DRAW), 0)
        draw = ImageDraw.Draw(img)
        c, s = math.cos(angle[i]), math.sin(angle[i])
        for pts, value in _SHAPE_LAYERS[SHAPES[shapes[i]]]:
            poly = [(cx[i] + radius[i] * (c * x - s * y), cy[i] + radius[i] * (s * x + c * y)) for x, y in pts]
            draw.polygon(poly, fill=255 * value)
        masks[i] = np.asarray(img)
    m = torch.from_numpy(masks).float().div_(255.0)
    if out is not None:
        return torch.maximum(out, m)
    return m


def _outline(mask: torch.Tensor, width: int) -> torch.Tensor:
    """The band of `width` px inside the mask's edge (mask minus its erosion)."""
    k = 2 * width + 1
    eroded = -F.max_pool2d(-mask[:, None], k, stride=1, padding=width)[:, 0]
    return (mask - eroded).clamp_(0, 1)


def _blur(img: torch.Tensor, passes: int = 2, size: int = 5) -> torch.Tensor:
    """Repeated box blur of [N, C, H, W] images (two 5-px passes: about a Gaussian of sigma 2 px).

    avg_pool2d is an order of magnitude faster on CPU than a grouped convolution.
    """
    for _ in range(passes):
        img = F.avg_pool2d(img, size, stride=1, padding=size // 2, count_include_pad=False)
    return img


def _value_noise(n: int, channels: int, cells: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth random fields in [0, 1]: random cells x cells grids upsampled bilinearly."""
    grid = torch.rand(n, channels, cells, cells, generator=gen)
    return F.interpolate(grid, size=(_DRAW, _DRAW), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------
# domains

@dataclass
class _Batch:
    """The random content of a batch of images, shared by every domain's renderer."""

    shapes: np.ndarray  # [N] shape index
    colour: np.ndarray  # [N] object colour index
    background: np.ndarray  # [N] plain background index (used by the domains with plain backgrounds)
    mask: torch.Tensor  # [N, 64, 64]
    gen: torch.Generator
    rng: np.random.Generator
    geometry: tuple  # (cx, cy, radius, angle) for domains that re-draw the shape


def _fill(b: _Batch) -> torch.Tensor:
    return _OBJ[b.colour][:, :, None, None].expand(-1, -1, _DRAW, _DRAW)


def _plain(b: _Batch) -> torch.Tensor:
    return _BG[b.background][:, :, None, None].expand(-1, -1, _DRAW, _DRAW).clone()


def _over(bg: torch.Tensor, fg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[:, None]
    return bg * (1 - m) + fg * m


def _studio(b: _Batch) -> torch.Tensor:
    return _over(_plain(b), _fill(b), b.mask)


def _garden(b: _Batch) -> torch.Tensor:
    n = len(b.shapes)
    base = torch.tensor([0.22, 0.46, 0.16])[None, :, None, None]
    shade = _value_noise(n, 1, 6, b.gen) * 0.5 + 0.6  # patches of light and shade
    grass = _value_noise(n, 3, 24, b.gen) * 0.16 - 0.08
    bg = (base * shade + grass).clamp(0, 1)
    return _over(bg, _fill(b), b.mask)


def _snow(b: _Batch) -> torch.Tensor:
    n = len(b.shapes)
    bg = torch.tensor([0.86, 0.90, 0.96])[None, :, None, None] + _value_noise(n, 1, 8, b.gen) * 0.1 - 0.05
    flakes = (torch.rand(n, 1, _DRAW, _DRAW, generator=b.gen) > 0.97).float()
    img = _over(bg.expand(-1, 3, -1, -1), _fill(b), b.mask)
    img = img * (1 - flakes) + 1.0 * flakes  # snowflakes fall in front of the object too
    return (0.8 * img + 0.2).clamp(0, 1)  # low contrast: glare


def _night(b: _Batch) -> torch.Tensor:
    n = len(b.shapes)
    bg = torch.tensor([0.03, 0.04, 0.12])[None, :, None, None] + _value_noise(n, 1, 6, b.gen) * 0.08
    img = _over(bg.expand(-1, 3, -1, -1), _fill(b) * 0.5 + 0.03, b.mask)
    return (img + torch.randn(img.shape, generator=b.gen) * 0.04).clamp(0, 1)


def _fog(b: _Batch) -> torch.Tensor:
    img = _studio(b)
    img = 0.45 * img + 0.55 * torch.tensor([0.78, 0.78, 0.80])[None, :, None, None]
    return _blur(img)


def _clutter(b: _Batch) -> torch.Tensor:
    n = len(b.shapes)
    bg = _plain(b) + _value_noise(n, 3, 12, b.gen) * 0.2 - 0.1
    # 4 small distractors of random shapes and colours, drawn behind the object
    rng = b.rng
    dmask = torch.zeros(n, _DRAW, _DRAW)
    img = bg
    for _ in range(4):
        ds = rng.integers(0, len(SHAPES), n)
        r = rng.uniform(5, 9, n)
        dmask = _draw_masks(ds, rng.uniform(r, _DRAW - r), rng.uniform(r, _DRAW - r), r,
                            rng.uniform(0, 2 * math.pi, n))
        img = _over(img, _OBJ[rng.integers(0, len(_OBJ), n)][:, :, None, None].expand(-1, -1, _DRAW, _DRAW), dmask)
    return _over(img.clamp(0, 1), _fill(b), b.mask)


def _sketch(b: _Batch) -> torch.Tensor:
    n = len(b.shapes)
    paper = 0.9 + _value_noise(n, 1, 16, b.gen) * 0.08 + torch.randn(n, 1, _DRAW, _DRAW, generator=b.gen) * 0.02
    stroke = _outline(b.mask, 2) * (_value_noise(n, 1, 16, b.gen)[:, 0] > 0.25).float()  # broken pencil strokes
    ink = 0.25 + torch.rand(n, 1, 1, 1, generator=b.gen) * 0.15
    img = paper * (1 - stroke[:, None]) + ink * stroke[:, None]
    return img.clamp(0, 1).expand(-1, 3, -1, -1)


def _outline_style(b: _Batch) -> torch.Tensor:
    return _over(_plain(b), _fill(b), _outline(b.mask, 3))


def _texture(b: _Batch) -> torch.Tensor:
    n = len(b.shapes)
    theta = torch.rand(n, 1, 1, generator=b.gen) * math.pi
    period = 6 + torch.rand(n, 1, 1, generator=b.gen) * 5
    yy, xx = torch.meshgrid(torch.arange(_DRAW).float(), torch.arange(_DRAW).float(), indexing="ij")
    stripes = (torch.sin(2 * math.pi * (xx * torch.cos(theta) + yy * torch.sin(theta)) / period) > 0).float()
    second = torch.where(torch.from_numpy(b.colour >= 6)[:, None, None, None],  # white/black objects
                         torch.tensor([0.5, 0.5, 0.5])[None, :, None, None],
                         torch.tensor([0.96, 0.96, 0.96])[None, :, None, None])
    fg = _fill(b) * stripes[:, None] + second * (1 - stripes[:, None])
    return _over(_plain(b), fg, b.mask)


@dataclass(frozen=True)
class Domain:
    name: str
    phrase: str  # caption words after the object: "a photo of a red star {phrase}."
    render: Callable[[_Batch], torch.Tensor]
    coloured: bool = True  # False: the object's colour is not visible, so captions omit it


# by name, in the order of autoft.names.SHAPES_DOMAINS (studio, garden, snow, night, fog, clutter, sketch,
# outline, texture): each domain's caption phrase and renderer
DOMAINS: dict[str, Domain] = {name: Domain(name, *look) for name, look in zip(SHAPES_DOMAINS, [
    ("in the studio", _studio),
    ("in the garden", _garden),
    ("in the snow", _snow),
    ("at night", _night),
    ("in the fog", _fog),
    ("in a cluttered scene", _clutter),
    ("drawn as a sketch", _sketch, False),
    ("drawn as an outline", _outline_style),
    ("with stripes", _texture),
], strict=True)}


def caption(shape: str, colour: Optional[str], domain: str) -> str:
    d = DOMAINS[domain]
    colour_word = f"{colour} " if (colour and d.coloured) else ""
    return f"a photo of a {colour_word}{shape} {d.phrase}."


def render(domain: str, shapes: np.ndarray, rng: np.random.Generator, cue: Optional[float] = None,
           chunk: int = 2048) -> tuple[torch.Tensor, np.ndarray]:
    """Draw one image per entry of `shapes` in `domain`: uint8 [N, 3, 32, 32] and the object colours.

    cue: if set, the plain background of an image of class k is background k with this probability
    (else a uniformly chosen other one): the spurious ID cue. Only the plain-background domains
    (studio, fog, clutter, outline, texture) show it.
    """
    if domain not in DOMAINS:
        raise UserError(f"unknown shapes domain '{domain}'; valid: {', '.join(DOMAINS)}")
    shapes = np.asarray(shapes, dtype=np.int64)
    n = len(shapes)
    out = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    colours = np.empty(n, dtype=np.int64)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    for lo in range(0, n, chunk):
        s = shapes[lo: lo + chunk]
        m = len(s)
        if cue is None:
            bg = rng.integers(0, len(_BG), m)
        else:
            other = (s + rng.integers(1, len(_BG), m)) % len(_BG)
            bg = np.where(rng.random(m) < cue, s % len(_BG), other)
        # object colour: uniform among those that contrast with the plain background
        u = rng.random((m, len(_OBJ))) * _CONTRAST[bg]
        col = u.argmax(axis=1)
        radius = rng.uniform(*RADIUS, m)
        cx = rng.uniform(radius + 1, _DRAW - 1 - radius)
        cy = rng.uniform(radius + 1, _DRAW - 1 - radius)
        angle = rng.uniform(-TILT, TILT, m)  # objects stand roughly upright, as in photos
        mask = _draw_masks(s, cx, cy, radius, angle)
        batch = _Batch(s, col, bg, mask, gen, rng, (cx, cy, radius, angle))
        img = DOMAINS[domain].render(batch)
        img = F.avg_pool2d(img, 2)  # 64 -> 32 px, anti-aliased
        out[lo: lo + m] = img.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        colours[lo: lo + m] = col
    return out, colours


# ---------------------------------------------------------------------------------------------
# pretraining corpus

def pretraining_corpus(n: int, seed: int, name_fraction: float = 0.3, colour_fraction: float = 0.5,
                       domains: Optional[Sequence[str]] = None,
                       n_shapes: int = len(SHAPES)) -> tuple[torch.Tensor, list[str]]:
    """n image-caption pairs over all domains and all shapes (uint8 [n, 3, 32, 32], captions).

    The downstream shapes (the first `N_DOWNSTREAM`) are named in `name_fraction` of their captions
    and called "shape" in the rest; the extra shapes are always named. `colour_fraction` of the
    captions name the object's colour (so colourless prompts such as "a photo of a star." are in
    the text tower's distribution). Domains are balanced.
    """
    domains = list(domains or DOMAINS)
    rng = np.random.default_rng([seed, 7919])  # a stream of its own: never the task's images
    shapes = rng.integers(0, n_shapes, n)
    dom = np.arange(n) % len(domains)
    rng.shuffle(dom)
    named = (shapes >= N_DOWNSTREAM) | (rng.random(n) < name_fraction)
    coloured = rng.random(n) < colour_fraction
    images = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    captions: list[str] = [""] * n
    for k, d in enumerate(domains):
        idx = np.flatnonzero(dom == k)
        imgs, cols = render(d, shapes[idx], rng)
        images[idx] = imgs
        for j, i in enumerate(idx):
            captions[i] = caption(SHAPES[shapes[i]] if named[i] else "shape",
                                  _OBJ_NAMES[cols[j]] if coloured[i] else None, d)
    return images, captions


def caption_domain(text: str) -> int:
    """Index (in DOMAINS) of the domain a caption names."""
    for k, d in enumerate(DOMAINS.values()):
        if text.endswith(f" {d.phrase}."):
            return k
    raise ValueError(f"caption names no domain: {text!r}")


def all_texts(templates: Sequence[str] = ()) -> list[str]:
    """Every caption the world can produce plus the prompts: the tokenizer's vocabulary source."""
    texts = [caption(s, c, d) for s in SHAPES + ["shape"] for c in _OBJ_NAMES + [None] for d in DOMAINS]
    texts += [t.replace("{}", s) for t in templates for s in SHAPES]
    return texts


# ---------------------------------------------------------------------------------------------
# the downstream task

# zero-shot prompts: one per domain phrase, averaged by the zero-shot head (prompt ensembling).
# Every pretraining caption names a domain, so "a photo of a star." alone is out of the text
# tower's distribution (measured: about 20 points lower zero-shot accuracy).
TEMPLATES = [f"a photo of a {{}} {d.phrase}." for d in DOMAINS.values()]


def _balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    return labels


def _split(name: str, domain: str, n: int, seed: int, stream: int, cue: Optional[float]) -> Split:
    rng = np.random.default_rng([seed, stream])
    labels = _balanced_labels(n, N_DOWNSTREAM, rng)
    images, _ = render(domain, labels, rng, cue=cue)
    return Split(name, TensorImageDataset(images, labels), labels)


def _mixture_split(name: str, domains: Sequence[str], n: int, seed: int, cue: Optional[float]) -> Split:
    """A class-balanced mixture of several domains: every (class, domain) cell holds n / (10 x len)
    images (up to rounding), like the paper's ImageNet OOD-val that mixes several corruptions.

    Image i of class k (in draw order) goes to domain (i + k) mod len(domains); each domain then
    renders its share from its own random stream, so the mixture does not depend on the order of
    `domains` beyond the assignment.
    """
    rng = np.random.default_rng([seed, 4])
    labels = _balanced_labels(n, N_DOWNSTREAM, rng)
    rank = np.zeros(n, dtype=np.int64)  # position of each image among those of its class
    for k in range(N_DOWNSTREAM):
        where = np.flatnonzero(labels == k)
        rank[where] = np.arange(len(where))
    assigned = (rank + labels) % len(domains)
    images = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    for j, d in enumerate(domains):
        idx = np.flatnonzero(assigned == j)
        drawn, _ = render(d, labels[idx], np.random.default_rng([seed, 4, 1 + list(DOMAINS).index(d)]), cue=cue)
        images[torch.from_numpy(idx)] = drawn
    return Split(name, TensorImageDataset(images, labels), labels)


def ood_val_name(ood_val_domain: str | Sequence[str]) -> str:
    """The OOD-val split's name: the domain, or `mix(a+b+c)` for a mixture."""
    return ood_val_domain if isinstance(ood_val_domain, str) else f"mix({'+'.join(ood_val_domain)})"


def shapes_task(seed: int = 0, n_train: int = 2000, n_val: int = 500, n_test: int = 1000,
                ood_val_size: int = 1000, id_domain: str = "studio", ood_val_domain: str | Sequence[str] = "garden",
                test_domains: Sequence[str] = ("snow", "night", "fog", "clutter"), cue: float = 0.75,
                test_cue: Optional[float] = None, cache_dir: Optional[str] = None,
                root: Optional[str] = None) -> Task:
    """The downstream task over the first 10 shapes (see the module docstring).

    seed: the data seed (keep it fixed across training seeds: it defines the benchmark).
    cue: probability that an ID image (train, val and test) has its class's background colour.
    test_cue: the same for the OOD domains (None: backgrounds independent of the class).
    ood_val_domain: one domain, or a list of domains whose class-balanced mixture is the OOD-val
      set (`_mixture_split`); a one-element list is the same as the bare domain.
    root: ignored (the world needs no files); accepted so the dataset config schema stays uniform.
    """
    for k, v in dict(n_train=n_train, n_val=n_val, n_test=n_test, ood_val_size=ood_val_size).items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"dataset.task.{k}={v}: must be an integer >= 1")
    for k, v in dict(cue=cue, test_cue=test_cue).items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0):
            raise UserError(f"dataset.task.{k}={v}: must be a probability in [0, 1]"
                            + (" or null" if k == "test_cue" else ""))
    if not isinstance(ood_val_domain, str):
        ood_val_domain = [str(d) for d in ood_val_domain]
        if not ood_val_domain:
            raise UserError("dataset.task.ood_val_domain=[]: name one domain or a list of domains")
        if len(ood_val_domain) == 1:
            ood_val_domain = ood_val_domain[0]
    val_domains = [ood_val_domain] if isinstance(ood_val_domain, str) else ood_val_domain
    every = [id_domain, *val_domains, *test_domains]
    for d in every:
        if d not in DOMAINS:
            raise UserError(f"dataset.task: unknown shapes domain '{d}'; valid: {', '.join(DOMAINS)}")
    if len(set(every)) != len(every):
        raise UserError("dataset.task: the ID domain, the OOD-val domain(s) and the test domains must all differ")
    settings = dict(seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, ood_val_size=ood_val_size,
                    id=id_domain, ood_val=ood_val_domain, tests=list(test_domains), cue=cue, test_cue=test_cue,
                    version=1)

    def build() -> dict[str, Split]:
        # each split draws from its own random stream, so changing one size leaves the others alone
        splits = {
            "train": _split("train", id_domain, n_train, seed, 1, cue),
            "id_val": _split("id_val", id_domain, n_val, seed, 2, cue),
            "id_test": _split("id_test", id_domain, n_test, seed, 3, cue),
            "ood_val": (_split(ood_val_domain, ood_val_domain, ood_val_size, seed, 4, test_cue)
                        if isinstance(ood_val_domain, str) else
                        _mixture_split(ood_val_name(ood_val_domain), ood_val_domain, ood_val_size, seed, test_cue)),
        }
        for k, d in enumerate(test_domains):
            splits[d] = _split(d, d, n_test, seed, 10 + list(DOMAINS).index(d), test_cue)
        return splits

    splits = _cached(settings, build, cache_dir)
    tests = {"id_test": splits["id_test"]}
    tests.update({d: splits[d] for d in test_domains})
    return Task(name="shapes", classnames=SHAPES[:N_DOWNSTREAM], templates=list(TEMPLATES),
                train=splits["train"], id_val=splits["id_val"], ood_val=splits["ood_val"], tests=tests,
                metric="accuracy", higher_is_better=True)


def _cached(settings: dict, build: Callable[[], dict[str, Split]], cache_dir: Optional[str]) -> dict[str, Split]:
    """Build the splits, or load them from `cache_dir/shapes/<hash>.pt` (written atomically)."""
    if not cache_dir:
        return build()
    key = hashlib.sha1(repr(sorted(settings.items())).encode()).hexdigest()[:12]
    path = Path(cache_dir) / "shapes" / f"task-{key}.pt"
    if path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            return {name: Split(v["name"], TensorImageDataset(v["images"], v["labels"].numpy()), v["labels"].numpy())
                    for name, v in payload.items()}
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    splits = build()
    payload = {name: {"name": s.name, "images": s.dataset.images, "labels": torch.from_numpy(s.labels)}
               for name, s in splits.items()}
    atomic_torch_save(payload, path)
    return splits
