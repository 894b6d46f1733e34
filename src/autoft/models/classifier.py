"""The fine-tuned model: a CLIP backbone plus a linear head initialised as a zero-shot classifier."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@torch.no_grad()
def zeroshot_weights(clip: nn.Module, tokenizer: Callable, prompts: Sequence[Sequence[str]],
                     device: torch.device | str = "cpu", progress: bool = False) -> torch.Tensor:
    """[C, D] class embeddings from each class's prompts (prompts[c], e.g. autoft.data.base.Task.prompts):
    per class, encode every prompt, L2-normalise, average, L2-normalise."""
    rows = []
    for texts in tqdm(prompts, desc="zero-shot head", disable=not progress, leave=False):
        tokens = tokenizer(list(texts)).to(device)
        emb = F.normalize(clip.encode_text(tokens).float(), dim=-1).mean(dim=0)
        rows.append(F.normalize(emb, dim=0))
    return torch.stack(rows)


class CLIPClassifier(nn.Module):
    """CLIP image tower + linear head. The head starts as logit_scale.exp() x zero-shot weights with a
    zero bias, and sees L2-normalised image features, so at step 0 it reproduces zero-shot CLIP."""

    def __init__(self, clip: nn.Module, class_embeddings: torch.Tensor):
        super().__init__()
        self.clip = clip
        num_classes, dim = class_embeddings.shape
        self.head = nn.Linear(dim, num_classes)
        with torch.no_grad():
            self.head.weight.copy_(class_embeddings * clip.logit_scale.exp())
            self.head.bias.zero_()

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits [B, C], normalised image features [B, D])."""
        feats = self.image_features(images)
        return self.head(feats), feats


def freeze_batchnorm_stats(model: nn.Module) -> None:
    """Keep batch-norm running statistics fixed while training (call after model.train()).

    Updating them on the ID domain let a spurious cue in and cost OOD accuracy in every measurement
    we made (docs/design.md section 8). Affine parameters still train."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def trainable_parameters(classifier: CLIPClassifier, trainable: str = "all") -> list[nn.Parameter]:
    """'all': both towers, head and logit scale; 'head': the linear head only (linear probing)."""
    if trainable == "all":
        params = list(classifier.parameters())
    elif trainable == "head":
        params = list(classifier.head.parameters())
    else:
        from autoft.errors import UserError
        raise UserError(f"method.trainable must be 'all' or 'head', got '{trainable}'")
    keep = {id(p) for p in params}
    for p in classifier.parameters():
        p.requires_grad_(id(p) in keep)
    return params
