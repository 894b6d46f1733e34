"""Loading CLIP backbones: open_clip registry names with pretrained tags, custom architectures
built offline, and checkpoints written by autoft (config + tokenizer vocabulary + weights).

Every loader returns a `ClipBundle` so the rest of the library never cares where a model came from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import open_clip
import torch
from open_clip.model import CLIP

from autoft.errors import UserError
from autoft.models import hub
from autoft.models.tokenizer import WordTokenizer
from autoft.models.torch_files import read_torch_file, why_unreadable
from autoft.io import atomic_torch_save

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipBundle:
    model: CLIP
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def build_custom_clip(config: dict[str, Any]) -> CLIP:
    """An open_clip CLIP from a plain config: {embed_dim, vision_cfg: {...}, text_cfg: {...}}."""
    cfg = dict(config)
    return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=dict(cfg["vision_cfg"]), text_cfg=dict(cfg["text_cfg"]))


def save_checkpoint(path: str | Path, model: CLIP, config: dict, vocab: Optional[list[str]] = None,
                    image_size: int = 224, mean=OPENAI_MEAN, std=OPENAI_STD, extra: Optional[dict] = None) -> None:
    """Write a self-describing checkpoint atomically (temp file, then rename)."""
    payload = {
        "config": config, "vocab": vocab, "image_size": image_size, "mean": tuple(mean), "std": tuple(std),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "extra": extra or {},
    }
    atomic_torch_save(payload, path)


def load_checkpoint(path: str | Path) -> ClipBundle:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model checkpoint not found: {path}")
    fix = ("point model.checkpoint at a CLIP checkpoint written by autoft.models.clip.save_checkpoint (e.g. by "
           "scripts/build_foundation.py), or rebuild it; a final run's model.pt holds a classifier, not a CLIP checkpoint")
    try:
        payload = read_torch_file(path)  # weights-only: a checkpoint from someone else cannot run code
    except Exception as err:  # truncated, corrupt, carrying code, or not a torch file at all
        raise UserError(f"model checkpoint {path} cannot be read ({why_unreadable(err)}); {fix}") from None
    if not isinstance(payload, dict) or not {"config", "state_dict"} <= set(payload):
        raise UserError(f"model checkpoint {path} is not an autoft CLIP checkpoint (it lacks 'config' and "
                        f"'state_dict'); {fix}")
    try:
        model = build_custom_clip(payload["config"])
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:  # another architecture's weights
        first = " ".join(str(err).split())[:200]
        raise UserError(f"model checkpoint {path} does not match the architecture its config describes "
                        f"({type(err).__name__}: {first}); {fix}") from None
    ctx = payload["config"]["text_cfg"].get("context_length", 77)
    tokenizer = (WordTokenizer(payload["vocab"], ctx) if payload.get("vocab") is not None
                 else open_clip.get_tokenizer("ViT-B-32", context_length=ctx))
    return ClipBundle(model, tokenizer, payload["image_size"], tuple(payload["mean"]), tuple(payload["std"]))


def pretrained_quick_gelu(arch: str, pretrained: Optional[str]) -> Optional[bool]:
    """Whether open_clip's pretrained tag was trained with QuickGELU (None: not a known tag)."""
    cfg = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
    return bool(cfg.get("quick_gelu", False)) if cfg else None


def load_openai_torchscript(model: CLIP, path: Path) -> None:
    """Load OpenAI's original release (`ViT-B-16.pt` as the `clip` package caches it in ~/.cache/clip,
    a TorchScript archive) into `model`. open_clip 3.3's create_model(pretrained=<file>) refuses it:
    its torch.load(weights_only=True) cannot read TorchScript. open_clip's own reader of that format,
    load_openai_model (torch.jit.load: TorchScript, no Python pickle; OpenAI's parameter names, which
    are open_clip's), gives the weights; they must fit `model` exactly."""
    try:
        source = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
        model.load_state_dict(source.state_dict())
    except (RuntimeError, KeyError, ValueError) as err:
        first = " ".join(str(err).split())[:200]
        raise UserError(f"model.pretrained={path}: this TorchScript file is not OpenAI's CLIP release of the "
                        f"model.arch architecture ({type(err).__name__}: {first}); pass OpenAI's file for that arch, "
                        f"a state dict file or a tag") from None


def load_clip(arch: Optional[str] = None, pretrained: Optional[str] = None, custom: Optional[dict] = None,
              checkpoint: Optional[str] = None, cache_dir: Optional[str] = None,
              quick_gelu: Optional[bool] = None) -> ClipBundle:
    """Build a CLIP model from exactly one source.

    - checkpoint: a file written by `save_checkpoint` (our embedded foundation model, or a
      fine-tuned model);
    - arch (+ pretrained): an open_clip registry name such as 'ViT-B-16' with a tag such as 'openai';
      arch alone gives random weights (benchmarks);
    - custom: an open_clip config dict for architectures outside the registry (tests, tiny models).

    quick_gelu: the MLP activation of a registry architecture. None = what the pretrained tag was
    trained with. open_clip 3.x builds `ViT-B-16` with nn.GELU even for `pretrained=openai` (it only
    warns), but OpenAI's weights were trained with QuickGELU: every zero-shot number would be off. A
    setting that contradicts the tag is refused.
    """
    if checkpoint:
        return load_checkpoint(checkpoint)
    if custom:
        cfg = dict(custom)
        model = build_custom_clip(cfg)
        ctx = cfg["text_cfg"].get("context_length", 77)
        image_size = cfg["vision_cfg"].get("image_size", 224)
        return ClipBundle(model, open_clip.get_tokenizer("ViT-B-32", context_length=ctx), image_size, OPENAI_MEAN, OPENAI_STD)
    if not arch:
        raise UserError("model: set one of model.arch (open_clip name), model.custom or model.checkpoint")
    valid = open_clip.list_models()
    if arch not in valid:
        raise UserError(f"unknown model.arch '{arch}'; open_clip knows: {', '.join(valid[:40])}, ...")
    if pretrained:
        tags = [t for a, t in open_clip.list_pretrained() if a == arch]
        if pretrained not in tags and not Path(pretrained).is_file():
            raise UserError(f"unknown model.pretrained '{pretrained}' for {arch}; valid tags: {', '.join(tags)}")
    jit = bool(pretrained) and Path(pretrained).is_file() and hub.is_torchscript(Path(pretrained))
    tag_gelu = True if jit else pretrained_quick_gelu(arch, pretrained)  # OpenAI's releases: QuickGELU
    if quick_gelu is None:
        quick_gelu = bool(tag_gelu)
    elif tag_gelu is not None and bool(quick_gelu) != tag_gelu:
        raise UserError(f"model.quick_gelu={quick_gelu} but the {arch}/{pretrained} weights were trained with "
                        f"quick_gelu={tag_gelu}; remove model.quick_gelu or set it to {tag_gelu}")
    try:
        model = open_clip.create_model(arch, pretrained=None if jit else pretrained, cache_dir=cache_dir,
                                       force_quick_gelu=bool(quick_gelu))
        if jit:
            load_openai_torchscript(model, Path(pretrained))
    except UserError:
        raise
    except Exception as err:  # offline hub, missing or corrupt file, another architecture's weights
        if not pretrained:
            raise
        raise UserError(hub.load_failure(arch, pretrained, cache_dir, err)) from None
    pp = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = tuple(pp.get("mean", OPENAI_MEAN))
    std = tuple(pp.get("std", OPENAI_STD))
    return ClipBundle(model, open_clip.get_tokenizer(arch), int(size), mean, std)
