"""Weights found the way open_clip finds them (autoft.models.hub), and torch files read weights-only
(autoft.models.torch_files). The hub caches are written with huggingface_hub's layout and open_clip's
own file names (hub.write_hub_weights), read back with huggingface_hub's own readers, and loaded by
open_clip itself, offline (conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported)."""
import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from huggingface_hub import hf_hub_download, scan_cache_dir
from omegaconf import OmegaConf
from open_clip.pretrained import download_pretrained
from torch import nn

from autoft import cli
from autoft.errors import UserError
from autoft.models import hub
from autoft.models.clip import build_custom_clip, load_checkpoint, load_clip, save_checkpoint
from autoft.models.torch_files import read_torch_file
from conftest import ROOT, TINY_CLIP, offline_env

# every model preset that names an open_clip hub tag
HUB_PRESETS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")
                     if OmegaConf.load(p).get("arch") and OmegaConf.load(p).get("pretrained"))
FORMATS = [("safetensors",), ("bin",), ("safetensors", "bin")]
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # in OpenAI's TorchScript files


def preset(name: str, **override):
    return OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"), override)


@functools.cache
def marked_weights(arch: str) -> dict:
    """open_clip's own state dict of `arch` (its key names and shapes, from a model built on the meta
    device), cheap to make: fp16 zeros, tensor i's first element i + 1, so every tensor that
    arrives is identifiable and none can be the model's random initialisation. Made once per process
    (callers only read it)."""
    meta = open_clip.create_model(arch, device="meta").state_dict()
    weights = {}
    for i, (k, v) in enumerate(meta.items()):
        t = torch.zeros(v.shape, dtype=torch.float16)
        t.view(-1)[0] = i + 1
        weights[k] = t
    return weights


def stub() -> dict:
    """A state dict that is a valid file and nothing more (for checks that read headers only)."""
    return {"logit_scale": torch.tensor(4.6052)}


def assert_loaded(model, written: dict) -> None:
    got = model.state_dict()
    assert all(torch.equal(got[k].half(), v) for k, v in written.items())  # the file's weights, all of them


# ------------------------------------------------------------------------------------------------
# which files, where: open_clip's names, huggingface_hub's layout

def test_the_presets_with_hub_tags_are_the_paper_backbones():
    assert HUB_PRESETS == ["vit_b16", "vit_l14"]


@pytest.mark.parametrize("name,repo", [("vit_b16", "timm/vit_base_patch16_clip_224.openai"),
                                       ("vit_l14", "timm/vit_large_patch14_clip_224.openai")])
def test_open_clips_own_file_names_in_its_order(name, repo):
    m = preset(name)
    assert hub.hub_files(m.arch, m.pretrained) == (repo, ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])


@pytest.mark.parametrize("formats", FORMATS, ids="+".join)
@pytest.mark.parametrize("name", HUB_PRESETS)
def test_the_check_finds_the_file_open_clip_resolves(name, formats, tmp_path):
    """No false refusal: whatever subset of open_clip's files is cached, the check passes, and the
    file it names is the one open_clip's own download resolves offline (safetensors first)."""
    m = preset(name, cache_dir=str(tmp_path))
    written = hub.write_hub_weights(stub(), m.arch, m.pretrained, cache_dir=str(tmp_path), formats=formats)
    cli.check_weights(m)
    theirs = Path(download_pretrained(open_clip.get_pretrained_cfg(m.arch, m.pretrained), cache_dir=str(tmp_path)))
    assert hub.cached_weights(m.arch, m.pretrained, str(tmp_path)) == theirs == written[0]
    assert theirs.name == ("open_clip_model.safetensors" if "safetensors" in formats else "open_clip_pytorch_model.bin")
    # huggingface_hub's own readers see a regular cache: a revision with these files, blobs named by sha256
    repo = hub.hub_files(m.arch, m.pretrained)[0]
    for path in written:
        assert hf_hub_download(repo, path.name, cache_dir=str(tmp_path), local_files_only=True) == str(path)
    info = scan_cache_dir(tmp_path)
    assert not info.warnings
    (entry,) = info.repos
    (revision,) = entry.revisions
    assert entry.repo_id == repo and revision.commit_hash == (hub.repo_dir(m.arch, m.pretrained, str(tmp_path))
                                                              / "refs" / "main").read_text()
    assert {f.file_name for f in revision.files} == {p.name for p in written}
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == p.resolve().name for p in written)


@pytest.mark.parametrize("formats", FORMATS, ids="+".join)
def test_open_clip_loads_the_written_vit_b16_weights(formats, tmp_path):
    """The check passes and the load succeeds on the preset's own settings (QuickGELU)."""
    m = preset("vit_b16", cache_dir=str(tmp_path))
    written = marked_weights(m.arch)
    hub.write_hub_weights(written, m.arch, m.pretrained, cache_dir=str(tmp_path), formats=formats)
    cli.check_weights(m)
    bundle = load_clip(arch=m.arch, pretrained=m.pretrained, cache_dir=m.cache_dir, quick_gelu=m.quick_gelu)
    assert_loaded(bundle.model, written)
    assert isinstance(bundle.model.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)


@pytest.mark.slow
def test_open_clip_loads_the_written_vit_l14_weights(tmp_path):  # ViT-L/14: 428 M parameters, about 30 s
    m = preset("vit_l14", cache_dir=str(tmp_path))
    written = marked_weights(m.arch)
    hub.write_hub_weights(written, m.arch, m.pretrained, cache_dir=str(tmp_path), formats=("safetensors", "bin"))
    cli.check_weights(m)
    bundle = load_clip(arch=m.arch, pretrained=m.pretrained, cache_dir=m.cache_dir, quick_gelu=m.quick_gelu)
    assert_loaded(bundle.model, written)


ENV_PROGRAM = """
import json, sys
sys.path.insert(0, {tests!r})
from test_weights import hub, cli, download_pretrained, open_clip, preset, stub
out = {{}}
for name in ("vit_b16", "vit_l14"):
    m = preset(name)  # model.cache_dir unset: huggingface_hub's cache, from the environment
    out[name] = [str(p) for p in hub.write_hub_weights(stub(), m.arch, m.pretrained)]
    cli.check_weights(m)
    # the file open_clip's own download resolves (offline, no cache_dir: the environment's) is the one written
    assert str(download_pretrained(open_clip.get_pretrained_cfg(m.arch, m.pretrained))) == out[name][0]
print(json.dumps(out))
"""


@pytest.mark.parametrize("var", ["HF_HOME", "HF_HUB_CACHE"])
def test_the_cache_named_by_the_environment_is_the_one_read(var, tmp_path):
    """HF_HOME=<d> puts the cache in <d>/hub, HF_HUB_CACHE=<d> in <d> (huggingface_hub reads them
    at import: a fresh process), for the check and for open_clip's own download alike (that open_clip
    loads what it resolves is test_open_clip_loads_the_written_vit_b16_weights)."""
    env = offline_env(**{var: str(tmp_path / "hf")})
    for other in {"HF_HOME", "HF_HUB_CACHE"} - {var}:
        env.pop(other, None)
    done = subprocess.run([sys.executable, "-c", ENV_PROGRAM.format(tests=str(ROOT / "tests"))], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    paths = json.loads(done.stdout.strip().splitlines()[-1])
    root = tmp_path / "hf" / ("hub" if var == "HF_HOME" else "")
    assert paths["vit_b16"][0].startswith(str(root / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots"))
    assert paths["vit_l14"][0].startswith(str(root / "models--timm--vit_large_patch14_clip_224.openai" / "snapshots"))


# ------------------------------------------------------------------------------------------------
# absent, truncated, corrupt: refused with one message

@pytest.mark.parametrize("name", HUB_PRESETS)
def test_absent_weights_are_refused_saying_what_to_do(name, tmp_path):
    m = preset(name, cache_dir=str(tmp_path / "hub"))
    with pytest.raises(UserError) as err:
        cli.check_weights(m)
    message = str(err.value)
    repo_folder = hub.repo_dir(m.arch, m.pretrained, m.cache_dir).name
    for part in (f"{m.arch}/openai", "open_clip_model.safetensors or open_clip_pytorch_model.bin", str(tmp_path / "hub"),
                 "HF_HUB_OFFLINE=1", f"open_clip.create_model('{m.arch}', pretrained='openai')", repo_folder,
                 "model.pretrained=/path/to/weights"):
        assert part in message, (part, message)
    assert "\n" not in message
    with pytest.raises(UserError) as loading:  # the loader's error path says the same
        load_clip(arch=m.arch, pretrained=m.pretrained, cache_dir=m.cache_dir, quick_gelu=True)
    assert str(loading.value) == message
    assert not any((tmp_path / "hub").rglob("*.safetensors")) and not any((tmp_path / "hub").rglob("*.bin"))


def truncate(path: Path) -> None:
    data = path.resolve().read_bytes()
    path.resolve().write_bytes(data[: len(data) // 2])


def scramble(path: Path) -> None:
    path.resolve().write_bytes(os.urandom(path.resolve().stat().st_size))


@pytest.mark.parametrize("damage", [truncate, scramble], ids=["truncated", "corrupt"])
@pytest.mark.parametrize("formats", FORMATS, ids="+".join)
def test_a_damaged_cached_file_is_refused_naming_it(formats, damage, tmp_path):
    """No false pass: the file open_clip would load is opened (headers only) and refused if broken;
    with both formats cached, a damaged safetensors file is refused though the .bin is fine."""
    m = preset("vit_b16", cache_dir=str(tmp_path))
    written = hub.write_hub_weights(marked_weights(m.arch) if damage is truncate else stub(), m.arch, m.pretrained,
                                    cache_dir=str(tmp_path), formats=formats)
    damage(written[0])
    with pytest.raises(UserError) as err:
        cli.check_weights(m)
    message = str(err.value)
    assert str(written[0]) in message and "truncated or corrupt" in message and "\n" not in message
    assert str(hub.repo_dir(m.arch, m.pretrained, m.cache_dir)) in message  # what to delete
    if damage is truncate:  # open_clip itself fails on it: the loader names the file the same way
        with pytest.raises(UserError) as loading:
            load_clip(arch=m.arch, pretrained=m.pretrained, cache_dir=m.cache_dir, quick_gelu=True)
        assert str(loading.value) == message


# ------------------------------------------------------------------------------------------------
# model.pretrained=<file>: an open_clip state dict, OpenAI's TorchScript release

@pytest.fixture(scope="module")
def vit_b16_openai_like():
    """ViT-B/16 with random weights, fp16 as OpenAI released them: its open_clip state dict."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", force_quick_gelu=True)
    return {k: v.half() for k, v in model.state_dict().items()}


def openai_torchscript(state_dict: dict, path: Path) -> Path:
    """A TorchScript archive laid out as OpenAI's `ViT-B-16.pt`: the parameters under OpenAI's names
    (which are open_clip's) plus input_resolution, context_length and vocab_size."""
    root = nn.Module()
    sizes = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}
    for key, value in [*state_dict.items(), *((k, torch.tensor(v)) for k, v in sizes.items())]:
        *parents, leaf = key.split(".")
        module = root
        for p in parents:
            if not hasattr(module, p):
                module.add_module(p, nn.Module())
            module = getattr(module, p)
        module.register_buffer(leaf, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(root).save(str(path))
    return path


def outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(1, 3, 224, 224, generator=g)
    texts = open_clip.get_tokenizer("ViT-B-16")(["a camera trap image of a deer"])
    with torch.no_grad():
        return model.eval().encode_image(images), model.encode_text(texts)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_a_state_dict_file_as_model_pretrained_loads(suffix, vit_b16_openai_like, tmp_path):
    path = tmp_path / f"vit_b16{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(vit_b16_openai_like, str(path))
    else:
        torch.save(vit_b16_openai_like, path)
    m = preset("vit_b16", pretrained=str(path))
    cli.check_weights(m)
    assert_loaded(load_clip(arch=m.arch, pretrained=m.pretrained, quick_gelu=m.quick_gelu).model, vit_b16_openai_like)
    truncate(path)
    with pytest.raises(UserError, match=f"model.pretrained={path}: {path} cannot be read"):
        cli.check_weights(m)


# slow (a full-size ViT-B/16 TorchScript file built and read); CI runs it
@pytest.mark.slow
def test_openais_torchscript_file_loads_with_quickgelu_and_the_same_outputs(vit_b16_openai_like, tmp_path):
    jit = openai_torchscript(vit_b16_openai_like, tmp_path / ".cache" / "clip" / "ViT-B-16.pt")
    assert set(torch.jit.load(str(jit)).state_dict()) == set(vit_b16_openai_like) | set(OPENAI_EXTRA_KEYS)
    cli.check_weights(preset("vit_b16", pretrained=str(jit)))
    from safetensors.torch import save_file
    save_file(vit_b16_openai_like, str(tmp_path / "vit_b16.safetensors"))
    reference = load_clip(arch="ViT-B-16", pretrained=str(tmp_path / "vit_b16.safetensors"), quick_gelu=True).model
    m = preset("vit_b16", pretrained=str(jit))
    model = load_clip(arch=m.arch, pretrained=m.pretrained, quick_gelu=m.quick_gelu).model
    acts = {type(b.mlp.gelu).__name__ for t in (model.visual.transformer, model.transformer) for b in t.resblocks}
    assert acts == {"QuickGELU"}
    assert_loaded(model, vit_b16_openai_like)
    for ours, theirs in zip(outputs(model), outputs(reference)):  # image and text embeddings, bit for bit
        assert torch.equal(ours, theirs)
    with pytest.raises(UserError, match="trained with quick_gelu=True"):  # OpenAI's file implies QuickGELU
        load_clip(arch="ViT-B-16", pretrained=str(jit), quick_gelu=False)
    with pytest.raises(UserError, match=f"model.pretrained={jit}: this TorchScript file is not OpenAI's CLIP release"):
        load_clip(arch="ViT-B-32", pretrained=str(jit))  # another architecture's file (quick_gelu: the file's own)
    truncate(jit)
    with pytest.raises(UserError, match=f"{jit} cannot be read"):
        cli.check_weights(preset("vit_b16", pretrained=str(jit)))


# ------------------------------------------------------------------------------------------------
# checkpoints loaded weights-only: a file carrying code is refused and never runs

class RunsCode:
    """Unpickling this runs a shell command (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile(path: Path, payload: dict) -> Path:
    torch.save({**payload, "extra": RunsCode(path.parent / "ran")}, path)
    return path


def test_the_hostile_fixture_does_run_code_when_read_in_full(tmp_path):
    torch.load(hostile(tmp_path / "x.pt", {}), weights_only=False)
    assert (tmp_path / "ran").exists()  # so that its absence below means something


def refused(read, path: Path) -> str:
    with pytest.raises(UserError) as err:
        read(path)
    message = str(err.value)
    assert str(path) in message and "could run code" in message and "posix.system" in message, message
    assert "\n" not in message and not (path.parent / "ran").exists()
    return message


def test_a_clip_checkpoint_carrying_code_is_refused_unread(tmp_path):
    model = build_custom_clip(TINY_CLIP)
    path = hostile(tmp_path / "clip.pt", {"config": TINY_CLIP, "state_dict": model.state_dict()})
    assert refused(load_checkpoint, path).startswith(f"model checkpoint {path} cannot be read")
    refused(lambda p: cli.check_weights(OmegaConf.create({"checkpoint": str(p), "custom": None})), path)


def test_a_last_pt_carrying_code_is_refused_unread(tmp_path):
    from autoft.pipeline import _resume_state

    path = hostile(tmp_path / "last.pt", {"epoch": 1, "settings": {}})
    assert refused(lambda p: _resume_state(p, None), path).startswith(f"cannot resume from {path}")


def test_weights_carrying_code_are_refused_unread(tmp_path):
    path = hostile(tmp_path / "vit_b16.bin", {"logit_scale": torch.tensor(4.6)})
    refused(lambda p: cli.check_weights(preset("vit_b16", pretrained=str(p))), path)


def test_our_own_payloads_read_weights_only(tmp_path):
    """What save_checkpoint and run_final's last.pt hold needs no allow-list."""
    from autoft.pipeline import RunSpec, Workspace, run_final
    from conftest import tiny_task_value

    save_checkpoint(tmp_path / "clip.pt", build_custom_clip(TINY_CLIP), TINY_CLIP, vocab=["a", "b"], image_size=16,
                    extra={"build": {"seed": 0, "lr": 2e-3, "sizes": [1, 2]}, "settings_hash": "ab12"})
    assert load_checkpoint(tmp_path / "clip.pt").image_size == 16

    class Stop(Exception):
        pass

    def stop_after_second(epoch, results):
        if epoch == 2:
            raise Stop

    torch.manual_seed(0)
    ws = Workspace.build(tiny_task_value(), load_clip(custom=TINY_CLIP), torch.device("cpu"))
    spec = RunSpec(weights={"ce": 1.0, "flyp": 0.3}, lr=3e-3, weight_decay=0.1, epochs=3, batch_size=8, seed=0,
                   curve_alphas=(), lp_epochs=1)
    with pytest.raises(Stop):
        run_final(ws, spec, tmp_path / "run", progress=False, on_epoch_end=stop_after_second)
    state = read_torch_file(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1 and set(state) >= {"settings", "model", "tuner", "best_state", "results"}
