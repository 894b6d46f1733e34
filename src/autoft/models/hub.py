"""Where open_clip finds a registry tag's weights, asked of open_clip and huggingface_hub themselves.

`open_clip.create_model(arch, pretrained=tag)` reads the tag's `hf_hub` entry ('org/name/' or
'org/name/file'), then asks huggingface_hub for the file's safetensors alternative first and the file
itself second (`open_clip.pretrained.download_pretrained_from_hf`; for the OpenAI tags
`open_clip_model.safetensors`, then `open_clip_pytorch_model.bin`). huggingface_hub keeps each under
its cache (`model.cache_dir`, else HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub) as
models--org--name/{refs/main, snapshots/<revision>/<file>, blobs/<sha256>}. The pre-flight, the
loader's error message and the test fixtures all name those files with open_clip's own naming and
find them with huggingface_hub's own cache reader, so they agree with open_clip, not with a copy.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Iterable, Optional

import open_clip
import torch
from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.file_download import repo_folder_name
from open_clip import pretrained as oc_pretrained

from autoft.errors import UserError
from autoft.models.torch_files import read_torch_file, why_unreadable

FORMATS = ("safetensors", "bin")


def hub_files(arch: str, tag: str) -> tuple[str, list[str]]:
    """(hub repo, the file names open_clip asks it for, in open_clip's order) for a registry tag.

    The split of `hf_hub` and the default name are open_clip's `download_pretrained`; the
    safetensors alternatives (tried first, when safetensors is installed) its `_get_safe_alternatives`."""
    hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub")
    if not hub:  # every tag of open_clip 3.3 has one; a URL-only tag would download outside the hub
        raise UserError(f"model.pretrained={tag}: open_clip has no Hugging Face hub entry for {arch}/{tag}; "
                        f"pass model.pretrained=/path/to/weights instead")
    repo, name = os.path.split(hub)
    name = name or oc_pretrained.HF_WEIGHTS_NAME
    safe = list(oc_pretrained._get_safe_alternatives(name)) if oc_pretrained._has_safetensors else []
    return repo, [*safe, name]


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """The hub cache open_clip reads: model.cache_dir when set, else huggingface_hub's own
    (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub, read when it is imported)."""
    return Path(cache_dir or constants.HF_HUB_CACHE)


def repo_dir(arch: str, tag: str, cache_dir: Optional[str] = None) -> Path:
    """The folder of the tag's hub repo in the cache (models--org--name)."""
    return cache_root(cache_dir) / repo_folder_name(repo_id=hub_files(arch, tag)[0], repo_type="model")


def cached_weights(arch: str, tag: str, cache_dir: Optional[str] = None) -> Optional[Path]:
    """The file open_clip loads for arch/tag offline: the first of its names the cache holds at
    refs/main (huggingface_hub's `try_to_load_from_cache`, what `hf_hub_download` falls back to
    offline); None when the cache holds none."""
    repo, names = hub_files(arch, tag)
    for name in names:
        hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(hit, str):  # not None, nor the "known not to exist" marker
            return Path(hit)
    return None


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (OpenAI's original `ViT-B-16.pt`): a zip whose records include
    constants.pkl, the test torch.load itself uses to tell one from a torch.save file."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1] == "constants.pkl" for n in z.namelist())


def file_problem(path: Path) -> Optional[str]:
    """Why open_clip could not read this weights file (truncated, corrupt, not weights), else None.

    Cheap, nothing but headers: safetensors parses its header and checks that the tensors it
    declares cover the file exactly; a torch.save zip is unpickled weights-only with its storages
    memory-mapped (the central directory at the end must be intact: a cut-short copy loses it); a
    TorchScript archive needs its zip directory. Flipped bytes inside tensor data pass, as they pass
    open_clip: no weights format carries a checksum."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                f.keys()
            return None
        if is_torchscript(path):
            return None
        obj = read_torch_file(path, mmap=zipfile.is_zipfile(path))
    except Exception as err:
        return f"{path} cannot be read ({why_unreadable(err)})"
    if not isinstance(obj, dict) or not obj:
        return f"{path} holds a {type(obj).__name__}, not a state dict"
    return None


def missing_message(arch: str, tag: str, cache_dir: Optional[str] = None) -> str:
    """What to do when the cache lacks the tag's weights and the hub may not be asked (offline)."""
    repo, names = hub_files(arch, tag)
    where = repo_dir(arch, tag, cache_dir)
    return (f"model.pretrained={tag}: the {arch}/{tag} weights ({' or '.join(names)} of hub repo {repo}) are not in "
            f"the Hugging Face cache {where.parent} and HF_HUB_OFFLINE=1 forbids downloading them; on a machine with "
            f"network access run python -c \"import open_clip; open_clip.create_model('{arch}', pretrained='{tag}')\" "
            f"and copy its {where.name} folder into this node's cache (model.cache_dir, HF_HUB_CACHE or HF_HOME/hub), "
            f"or pass model.pretrained=/path/to/weights")


def check_pretrained(arch: str, pretrained: str, cache_dir: Optional[str] = None) -> Optional[Path]:
    """The weights open_clip will load for arch + model.pretrained, checked without downloading
    anything; returns that file, or None when open_clip will download it (online, not cached).

    A file path: it must be readable (`file_problem`). A tag: offline, the cache must hold one of
    open_clip's names for it, and the one open_clip picks must be readable; online, the cached file
    is checked only if it is open_clip's first choice (else open_clip downloads that one)."""
    if Path(pretrained).is_file():
        problem = file_problem(Path(pretrained))
        if problem:
            raise UserError(f"model.pretrained={pretrained}: {problem}; copy it again or point model.pretrained "
                            f"at another weights file")
        return Path(pretrained)
    found = cached_weights(arch, pretrained, cache_dir)
    offline = constants.is_offline_mode()
    if found is None and offline:
        raise UserError(missing_message(arch, pretrained, cache_dir))
    if found is None or (not offline and found.name != hub_files(arch, pretrained)[1][0]):
        return None
    problem = file_problem(found)
    if problem:
        raise UserError(f"model.pretrained={pretrained}: the cached {arch}/{pretrained} weights file {problem}; "
                        f"delete {repo_dir(arch, pretrained, cache_dir)} and download the weights again")
    return found


def load_failure(arch: str, pretrained: str, cache_dir: Optional[str], err: Exception) -> str:
    """The message for open_clip failing to load arch/pretrained: the precise cause where the cache
    or the file shows one (`check_pretrained`), else open_clip's own error."""
    try:
        check_pretrained(arch, pretrained, cache_dir)
    except UserError as precise:
        return str(precise)
    text = " ".join(str(err).split())[:300]
    if Path(pretrained).is_file():
        return (f"model.pretrained={pretrained}: open_clip cannot load this file into {arch} ({type(err).__name__}: "
                f"{text}); pass {arch}'s state dict (.safetensors, .bin, .pt), OpenAI's TorchScript release or a tag")
    return (f"cannot load pretrained weights {arch}/{pretrained} ({type(err).__name__}: {text}); without network "
            f"access set HF_HUB_OFFLINE=1 and put the weights in the cache: "
            f"{missing_message(arch, pretrained, cache_dir).split('; ', 1)[1]}")


def write_hub_weights(state_dict, arch: str, tag: str, cache_dir: str | None = None,
                      formats: Iterable[str] = ("safetensors",)) -> list[Path]:
    """Write `state_dict` into the Hugging Face cache exactly where open_clip's hub download of
    arch/tag looks (huggingface_hub's layout: models--org--name/{refs/main, snapshots/<rev>/<open_clip's
    file name>, blobs/}), in each format ("safetensors" and/or "bin"), returning the paths written.

    As a download leaves them: each blob is named by the sha256 of its bytes (the etag of an LFS
    file), each snapshot entry is a relative symlink to its blob, and refs/main names the revision
    (kept when the repo folder already has one, so formats written one after the other share it)."""
    formats = list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"write_hub_weights: formats={formats}; allowed: a non-empty subset of {FORMATS}")
    repo, names = hub_files(arch, tag)
    root = repo_dir(arch, tag, cache_dir)
    ref = root / "refs" / "main"
    revision = ref.read_text().strip() if ref.is_file() else hashlib.sha1(f"autoft:{repo}".encode()).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        name = next((n for n in names if n.endswith(".safetensors") == (fmt == "safetensors")), None)
        if name is None:
            raise UserError(f"write_hub_weights: open_clip loads {arch}/{tag} from {names} only, not as {fmt}")
        blob = _write_blob(root / "blobs", state_dict, fmt)
        link = root / "snapshots" / revision / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        written.append(link)
    ref.parent.mkdir(exist_ok=True)
    ref.write_text(revision)  # no newline: huggingface_hub reads the file verbatim
    return written


def _write_blob(blobs: Path, state_dict, fmt: str) -> Path:
    """The state dict as one blob, renamed to the sha256 of its bytes once complete."""
    tmp = blobs / f".incomplete-{os.getpid()}.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp), metadata={"format": "pt"})
    else:
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, tmp)
    digest = hashlib.sha256()
    with open(tmp, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    blob = blobs / digest.hexdigest()
    os.replace(tmp, blob)
    return blob
