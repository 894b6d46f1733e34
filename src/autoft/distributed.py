"""Data-parallel training across processes started by torchrun (one per GPU, any number of nodes).

Each rank trains on its shard of every global batch; after backward the gradients of all trainable
parameters are averaged with one flattened all_reduce per step. (We average explicitly rather than
wrapping the model in DistributedDataParallel because the parameter regularisers and the text tower
produce gradients outside the model's forward, which DDP's reducer does not accept.) The contrastive
loss scores each rank's rows against the features gathered from every rank. Only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistEnv()


def from_environment(device_type: str) -> DistEnv:
    """Join the process group torchrun describes in the environment (a no-op without torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    env = DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return env


def average_gradients(params: list[torch.nn.Parameter], env: DistEnv) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if not env.enabled or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= env.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def feature_gatherer(env: DistEnv):
    """For autoft.losses.flyp: (local image, local text) -> (all image, all text, local row offset).
    Other ranks' features carry no gradient; the local rows keep theirs."""
    if not env.enabled:
        return None

    def gather(img: torch.Tensor, txt: torch.Tensor):
        imgs = [torch.empty_like(img) for _ in range(env.world_size)]
        txts = [torch.empty_like(txt) for _ in range(env.world_size)]
        dist.all_gather(imgs, img.detach().contiguous())
        dist.all_gather(txts, txt.detach().contiguous())
        imgs[env.rank], txts[env.rank] = img, txt
        return torch.cat(imgs), torch.cat(txts), env.rank * len(img)

    return gather


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()
