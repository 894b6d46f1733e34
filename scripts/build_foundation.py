"""Install or pretrain the embedded task's small CLIP foundation model (once; cached outside the git tree).

    python scripts/build_foundation.py                 # writes model.checkpoint, or says it exists
    python scripts/build_foundation.py --rebuild       # pretrain it here instead of copying the shipped one
    python scripts/build_foundation.py cache_dir=/tmp/c model.build.steps=200   # Hydra overrides

The repository ships the checkpoint the README's numbers were measured with
(src/autoft/models/foundation/<name>-<hash>.pt, 20 MB). By default it is verified and copied to
model.checkpoint: pretraining is seeded but not bit-identical across machines (float reductions in
other orders), so a rebuild is a slightly different world. `--rebuild` pretrains it anyway (about
4 minutes on 2 CPU cores); so does any changed build setting, which changes the hash.

The settings live in conf/model/shapes_rn10t.yaml under `build:`; the checkpoint's file name carries
a short hash of them (`settings_hash`), so a changed setting can never silently reuse an old model:
the script refuses to run when the name in the YAML does not match the settings. The model is an
open_clip CLIP (timm resnet10t image tower trained from scratch, a small text transformer over the
world's word vocabulary), trained with open_clip's ClipLoss on image-caption pairs from every domain
and all 18 shapes of `autoft.data.shapes`. Batch-norm statistics are trained here as usual (the
fine-tuning engine freezes them). Reproducible from its seed on a given machine and torch version.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from open_clip.loss import ClipLoss

from autoft.data import shapes
from autoft.errors import UserError
from autoft.models.clip import build_custom_clip, load_checkpoint, save_checkpoint
from autoft.models.tokenizer import WordTokenizer
from autoft.io import atomic_write

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "src" / "autoft" / "models" / "foundation"


def settings_hash(build: dict) -> str:
    """Short hash of the build settings: the checkpoint's file name carries it."""
    return hashlib.sha1(json.dumps(build, sort_keys=True).encode()).hexdigest()[:10]


def cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * t))


def pretrain(build: dict, path: str | Path, device: str = "cpu",
             log: Callable[[str], None] = print) -> Path:
    """Generate the corpus, train the CLIP model contrastively, save a self-describing checkpoint."""
    path = Path(path)
    seed = int(build["seed"])
    torch.manual_seed(seed)
    t0 = time.time()
    images, captions = shapes.pretraining_corpus(int(build["corpus_size"]), seed,
                                                 name_fraction=float(build["name_fraction"]),
                                                 colour_fraction=float(build["colour_fraction"]))
    tokenizer = WordTokenizer.from_texts(shapes.all_texts(shapes.TEMPLATES),
                                         context_length=int(build["config"]["text_cfg"]["context_length"]))
    tokens = tokenizer(captions)
    log(f"corpus: {len(captions)} image-caption pairs, vocabulary {len(tokenizer.words)} words "
        f"({time.time() - t0:.1f} s)")

    x = images.float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    del x
    config = json.loads(json.dumps(build["config"]))  # plain nested dicts
    config["text_cfg"]["vocab_size"] = tokenizer.vocab_size
    model = build_custom_clip(config).to(device)
    model.train()

    steps, bs = int(build["steps"]), int(build["batch_size"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "logit_scale" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(build["weight_decay"])},
                             {"params": no_decay, "weight_decay": 0.0}], lr=float(build["lr"]))
    loss_fn = ClipLoss()
    gen = torch.Generator().manual_seed(seed)
    m = mean.view(1, 3, 1, 1).to(device)
    s = std.view(1, 3, 1, 1).to(device)
    # Each batch mixes only a few domains: with every domain in a batch, colour and domain words
    # alone tell most captions apart and the image tower never has to learn the shapes (a measured
    # failure: 18-way zero-shot accuracy near 12% after 1000 steps).
    dom = torch.tensor([shapes.caption_domain(c) for c in captions])
    pools = [torch.nonzero(dom == k).flatten() for k in range(len(shapes.DOMAINS))]
    per = int(build["domains_per_batch"])
    t1 = time.time()
    for step in range(steps):
        picked = torch.randperm(len(pools), generator=gen)[:per]
        sizes = [bs // per + (i < bs % per) for i in range(per)]
        idx = torch.cat([pools[k][torch.randint(len(pools[k]), (n,), generator=gen)] for k, n in zip(picked.tolist(), sizes)])
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, float(build["lr"]), int(build["warmup_steps"]))
        img = (images[idx].to(device).float().div_(255) - m) / s
        image_features, text_features, logit_scale = model(img, tokens[idx].to(device))[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # CLIP's cap on the temperature
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step:5d}/{steps}  loss {loss.item():.3f}  scale {model.logit_scale.exp().item():.1f}  "
                f"{time.time() - t1:.0f} s")
    model.eval()
    save_checkpoint(path, model.cpu(), config, vocab=tokenizer.words, image_size=shapes.IMAGE_SIZE,
                    mean=tuple(mean.tolist()), std=tuple(std.tolist()),
                    extra={"build": build, "settings_hash": settings_hash(build),
                           "seconds": round(time.time() - t0, 1)})
    log(f"saved {path} ({time.time() - t0:.0f} s in all)")
    return path


def compose(overrides: list[str]):
    from autoft.config_checks import compose_config

    return compose_config(["model=shapes_rn10t", *overrides])


def main(argv: Optional[list[str]] = None) -> Path:
    from omegaconf import OmegaConf
    args = list(sys.argv[1:] if argv is None else argv)
    rebuild = "--rebuild" in args
    cfg = compose([a for a in args if a != "--rebuild"])
    if cfg.model.get("build") is None:
        raise UserError(f"model '{cfg.model.name}' has no build settings: build_foundation.py only builds "
                        "the embedded foundation model (model=shapes_rn10t)")
    build: dict[str, Any] = OmegaConf.to_container(cfg.model.build, resolve=True)
    named = Path(cfg.model.checkpoint)
    # the file name carries the settings' hash, so a changed setting never reuses an old model
    path = named.parent / f"{cfg.model.name}-{settings_hash(build)}.pt"
    if path != named:
        print(f"note: model.build differs from the settings that model.checkpoint was named for; building "
              f"{path}. Pass model.checkpoint={path} to train.py to use it.")
    if path.is_file():
        load_checkpoint(path)  # a damaged file fails loudly here rather than in a search
        print(f"foundation model already built: {path}")
        return path
    shipped = SHIPPED_DIR / path.name
    if shipped.is_file() and not rebuild:
        load_checkpoint(shipped)  # verified before it is installed
        atomic_write(path, lambda tmp: shutil.copyfile(shipped, tmp))  # a killed copy leaves no half file
        print(f"foundation model: installed the shipped {shipped.relative_to(SHIPPED_DIR.parents[3])} -> {path} "
              "(--rebuild pretrains it here instead)")
        return path
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return pretrain(build, path, device=device)


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
