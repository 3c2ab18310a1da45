"""Everything the nodes need from ComfyUI's internals, in one place: model folders, devices and dtypes, the layer
operations and ModelPatcher wrapping, progress with previews, interrupts and output paths; and whether this ComfyUI is
new enough (`host_problem`).

ComfyUI's internals (comfy.*, folder_paths) are imported here and nowhere else in the pack. The node modules import
only the pinned public node API, comfy_api.v0_0_2 (their V3 schema classes derive from it). Outside ComfyUI (plain
Python, the project's own test environment) the imports fail quietly: the pack imports, and anything that needs the
host raises `HostUnavailable` with a plain message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import torch

try:  # ComfyUI's own modules; present only when the pack runs inside ComfyUI (or its Python has it on sys.path)
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops
    import comfy.utils
    import folder_paths
except ImportError:  # plain Python: the pack imports, its nodes cannot run
    mm = folder_paths = None

IN_COMFYUI = folder_paths is not None

# The oldest ComfyUI the nodes are verified in (tests/test_nodes.py runs in it); it has the pinned node API below.
MINIMUM_COMFYUI = "0.3.64"
PINNED_API = "comfy_api.v0_0_2"

# Where each kind of file lives. "flashhead" is ours (the released folders); the others are ComfyUI's own.
FLASHHEAD_FOLDER = "flashhead"
# Explicit extensions for our folder: the released layouts hold config.json + safetensors, Wan2.1_VAE.pth, and
# the wav2vec2 folder's config/preprocessor json plus model.safetensors (or pytorch_model.bin).
FLASHHEAD_EXTENSIONS = {".safetensors", ".json", ".pth", ".bin"}
DIT_FILE_EXTENSIONS = (".safetensors",)  # single-file DiTs in models/diffusion_models (the loader reads safetensors)
VAE_FILE_EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt", ".sft")
AUDIO_FILE_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth")
SEARCH_DEPTH = 4  # how deep released folders are looked for under a model folder


class HostUnavailable(RuntimeError):
    """A node was called outside ComfyUI."""


def host_problem() -> str | None:
    """None when this is a ComfyUI the nodes run in; else one line saying why not (for the log at import).

    Needed: the pinned V3 node API (comfy_api.v0_0_2: ComfyNode, ComfyExtension, io.Custom) and ModelPatcher.
    CoreModelPatcher (newer hosts) is used when present, plain ModelPatcher otherwise (`make_patcher`)."""
    if not IN_COMFYUI:
        return "the FlashHead nodes run inside ComfyUI (comfy and folder_paths are not importable here)"
    missing = []
    try:
        from comfy_api.v0_0_2 import ComfyExtension, io  # noqa: F401  (the version check only)

        if not all(hasattr(io, name) for name in ("ComfyNode", "Schema", "Custom", "NodeOutput")):
            missing.append(f"{PINNED_API}.io (V3 nodes)")
    except ImportError:
        missing.append(f"{PINNED_API} (the V3 node API)")
    if not hasattr(comfy.model_patcher, "ModelPatcher"):
        missing.append("comfy.model_patcher.ModelPatcher")
    if not hasattr(comfy.ops, "manual_cast"):
        missing.append("comfy.ops.manual_cast")
    if not missing:
        return None
    return (f"ComfyUI-FlashHead needs ComfyUI {MINIMUM_COMFYUI} or newer; this ComfyUI lacks {', '.join(missing)}. "
            f"Update ComfyUI (git pull, or the Manager's 'Update ComfyUI') and restart; the FlashHead nodes are not "
            f"loaded.")


def require_host() -> None:
    if not IN_COMFYUI:
        raise HostUnavailable("the FlashHead nodes run inside ComfyUI (comfy and folder_paths are not importable "
                              "here); for plain Python use flashhead_core or the `flashhead` command")


def register_folders() -> None:
    """Register models/flashhead/ with explicit extensions (keeping paths from extra_model_paths.yaml)."""
    if not IN_COMFYUI:
        return
    default = os.path.join(folder_paths.models_dir, FLASHHEAD_FOLDER)
    paths, extensions = folder_paths.folder_names_and_paths.get(FLASHHEAD_FOLDER, ([], set()))
    paths = [default] + [p for p in paths if p != default]
    folder_paths.folder_names_and_paths[FLASHHEAD_FOLDER] = (paths, set(extensions) | FLASHHEAD_EXTENSIONS)


register_folders()


# --- finding model files --------------------------------------------------------------------------------------------

def _folder_files(folder: str) -> list[str]:
    """Files ComfyUI lists for a registered folder ([] for an unknown one); cached by ComfyUI per mtime."""
    if not IN_COMFYUI or folder not in folder_paths.folder_names_and_paths:
        return []
    return [f.replace(os.sep, "/") for f in folder_paths.get_filename_list(folder)]


def full_path(folder: str, relative: str) -> Path | None:
    """Resolve a file or a directory listed under one of `folder`'s search paths."""
    for base in folder_paths.get_folder_paths(folder):
        candidate = Path(base) / relative
        if candidate.exists():
            return candidate
    return None


def released_dirs(folder: str, is_match: Callable[[str, set[str]], bool]) -> list[str]:
    """Directories (relative, '/'-separated) under `folder` whose listed file names satisfy is_match(dir, names).

    Built from ComfyUI's own cached file list, so symlinked folders and extra_model_paths.yaml entries count."""
    by_dir: dict[str, set[str]] = {}
    for file in _folder_files(folder):
        parent, _, name = file.rpartition("/")
        if parent.count("/") < SEARCH_DEPTH:
            by_dir.setdefault(parent, set()).add(name)
    return sorted(d for d, names in by_dir.items() if is_match(d, names))


def option_label(path: str) -> str:
    """'<folder>/<relative path>' -> its COMBO text, the name first: 'Model_Lite (flashhead/SoulX-FlashHead-1_3B)',
    so the part that tells the options apart shows at any node width."""
    parent, _, name = path.rpartition("/")
    return f"{name} ({parent})"


def option_path(option: str) -> str:
    """A COMBO value -> '<folder>/<relative path>': an `option_label`, or that path itself (as workflows saved before
    the labels hold it)."""
    name, separator, parent = option.rpartition(" (")
    if separator and option.endswith(")") and "/" not in name:
        return f"{parent[:-1]}/{name}"
    return option


def model_options(sources: Iterable[tuple[str, list[str]]]) -> list[str]:
    """COMBO options (`option_label`s of '<folder>/<relative path>') from (folder, entries) pairs, in order, without
    duplicates."""
    options: list[str] = []
    for folder, entries in sources:
        options += [option_label(f"{folder}/{e}") for e in entries if option_label(f"{folder}/{e}") not in options]
    return options


def files_in(folder: str, extensions: tuple[str, ...], exclude_dirs: Iterable[str] = ()) -> list[str]:
    """Single files under a ComfyUI folder with one of `extensions`, leaving out those inside the sub-folders
    `exclude_dirs` (folders that are listed as one entry)."""
    excluded = tuple(d + "/" for d in exclude_dirs if d)
    return [f for f in _folder_files(folder) if f.lower().endswith(extensions) and not f.startswith(excluded)]


def resolve_option(option: str, kind: str, where: str) -> Path:
    """A COMBO value (label or '<folder>/<relative>') -> the path on disk, or FileNotFoundError saying where the file
    goes."""
    require_host()
    folder, _, relative = option_path(option).partition("/")
    known = folder in folder_paths.folder_names_and_paths
    path = full_path(folder, relative) if known and relative else None
    if path is None:
        searched = f" (searched: {', '.join(folder_paths.get_folder_paths(folder))})" if known else ""
        raise FileNotFoundError(f"{kind} {option!r} not found{searched}. Put it in {where}, then refresh ComfyUI "
                                f"(press R) and pick it in the list. The FlashHead README lists every file and "
                                f"where it goes.")
    return path


MISSING_PREFIX = "(no "


def missing_option(kind: str, where: str) -> list[str]:
    """The single COMBO option shown when nothing is installed: its text says where the files go (choosing it
    fails validation with the same advice)."""
    return [f"{MISSING_PREFIX}{kind} found - put it in {where})"]


# --- devices, dtypes, ModelPatcher ------------------------------------------------------------------------------------

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def devices(kind: str) -> tuple[torch.device, torch.device]:
    """(where a model of `kind` computes, where ComfyUI keeps it between runs): "dit" like a diffusion model,
    "vae" like a VAE, "audio" like a text encoder (ComfyUI's own choices, e.g. --cpu, --lowvram, --gpu-only)."""
    return {"dit": lambda: (mm.get_torch_device(), mm.unet_offload_device()),
            "vae": lambda: (mm.vae_device(), mm.vae_offload_device()),
            "audio": lambda: (mm.get_torch_device(), mm.text_encoder_offload_device())}[kind]()


def vae_dtype(device: torch.device) -> torch.dtype:
    """The VAE's dtype on `device`: bf16 where ComfyUI allows it (as released), else float32."""
    return mm.vae_dtype(device, allowed_dtypes=[torch.bfloat16])


def compute_dtype(choice: str, device: torch.device) -> torch.dtype:
    """'auto' follows ComfyUI's judgement of the device: bf16 where it is fast (what the official run uses), then
    fp16, else fp32 (CPU)."""
    if choice != "auto":
        return DTYPES[choice]
    if mm.should_use_bf16(device):
        return torch.bfloat16
    if mm.should_use_fp16(device):
        return torch.float16
    return torch.float32


class PatcherHolder(torch.nn.Module):
    """The nn.Module handed to ComfyUI's ModelPatcher. ModelPatcher writes bookkeeping attributes (device,
    model_loaded_weight_memory, ...) onto the module it manages; this holder takes them, so the flashhead_core
    objects inside stay untouched."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


def patcher_class():
    """ComfyUI's CoreModelPatcher where the host has it (newer hosts; it may be the dynamic-VRAM patcher), plain
    ModelPatcher otherwise."""
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def make_patcher(module: torch.nn.Module, load_device: torch.device, offload_device: torch.device):
    """Wrap a core module (on offload_device) so ComfyUI moves it to load_device and evicts it when it needs memory."""
    return patcher_class()(PatcherHolder(module), load_device=load_device, offload_device=offload_device)


def operations():
    """The layer namespace the DiT is built with: ComfyUI's manual_cast ops. Every Linear/Conv3d/LayerNorm casts its
    weight to the input's dtype and device on each call (the core's layers contract: the time MLP and norms run in
    float32 on bf16 or fp8 weights), and ComfyUI's ModelPatcher can leave any of them on the offload device
    (lowvram / --novram), casting them over per call. (pick_operations would hand back non-casting ops when weight
    and compute dtype agree, which breaks that contract.)"""
    return comfy.ops.manual_cast


def load_to_device(partial=(), whole=(), memory_required: int = 0) -> None:
    """Put every model of one run on its device before inference (ComfyUI frees memory for them, and for
    `memory_required` bytes of working memory, first).

    partial: patchers ComfyUI may load only in part (lowvram, --novram): modules built with `operations()`, whose
    layers cast offloaded weights over per call. They are loaded first, with room kept for the `whole` ones.
    whole: patchers of modules without ComfyUI's casting layers (transformers' wav2vec2, a DiT from a scaled-fp8
    file, built with flashhead_core.layers): loaded with force_full_load; if ComfyUI still left part of one on the offload
    device (--novram puts every model in lowvram mode), that is said plainly instead of failing later on a device
    mismatch."""
    partial, whole = list(partial), list(whole)
    if partial:
        mm.load_models_gpu(partial, memory_required=memory_required + sum(p.model_size() for p in whole))
    if whole:
        mm.load_models_gpu(whole, memory_required=memory_required, force_full_load=True)
    for patcher in whole:
        devices = {p.device for p in patcher.model.parameters()}
        if len(devices) > 1:
            raise RuntimeError(f"ComfyUI loaded {type(patcher.model.inner).__name__} only partly onto "
                               f"{patcher.load_device}; this FlashHead model has to be whole on one device. Start "
                               f"ComfyUI without --novram, or free VRAM.")


def output_device() -> torch.device:
    return mm.intermediate_device()


def free_memory(device: torch.device) -> int:
    """Bytes free on `device` by ComfyUI's count (CUDA: the driver's free memory plus PyTorch's unused cache)."""
    return mm.get_free_memory(device)


# --- progress, previews, interrupts -----------------------------------------------------------------------------------

PREVIEW_MAX_PX = 512


class Progress:
    """ComfyUI's progress bar (`total` units), optionally with a frame as the preview. Updating the bar is also one
    of ComfyUI's interrupt points."""

    def __init__(self, total: int):
        self.total = max(1, int(total))
        self.bar = comfy.utils.ProgressBar(self.total)

    def update(self, done: int, frames: torch.Tensor | None = None) -> None:
        """done: units finished so far; frames: new frames [n, H, W, 3] float 0..1 (CPU), the last one previewed."""
        preview = None
        if frames is not None and frames.shape[0]:
            from PIL import Image

            pixels = frames[-1].clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
            preview = ("JPEG", Image.fromarray(pixels), PREVIEW_MAX_PX)
        self.bar.update_absolute(min(int(done), self.total), self.total, preview)


class StepProgress:
    """A generation's progress bar counted in denoising steps (chunks x steps), created once the chunk count is
    known; each finished chunk's last frame is the preview."""

    def __init__(self, steps: int):
        self.steps, self.progress, self.chunks_done = steps, None, 0

    def step(self, chunk: int, step: int, chunks: int) -> None:
        """Before denoising step `step` of chunk `chunk` (of `chunks`)."""
        if self.progress is None:
            self.progress = Progress(chunks * self.steps)
        self.progress.update(chunk * self.steps + step)

    def chunk_done(self, frames: torch.Tensor | None) -> None:
        """A chunk finished with these new frames [n, H, W, 3] (None: no preview, e.g. the live player shows it)."""
        self.chunks_done += 1
        self.progress.update(self.chunks_done * self.steps, frames)


def interrupted() -> bool:
    """The should_cancel callback for flashhead_core: True once the user pressed Cancel / POST /interrupt."""
    return mm.processing_interrupted()


INTERRUPT_NAME = "InterruptProcessingException"  # comfy.model_management's interrupt, as stop_reason names it


def raise_interrupt(error: BaseException) -> None:
    """Turn flashhead_core's GenerationCancelled into ComfyUI's own interrupt exception (reported as
    'interrupted', not as an error); re-raise the original if the flag was cleared meanwhile."""
    mm.throw_exception_if_processing_interrupted()
    raise error


def check_interrupt() -> None:
    mm.throw_exception_if_processing_interrupted()


def input_folder() -> Path:
    """ComfyUI's input folder: what LoadImage and LoadAudio list."""
    require_host()
    return Path(folder_paths.get_input_directory())


def output_file(filename_prefix: str, width: int, height: int, extension: str) -> tuple[Path, str, str]:
    """A new numbered file in ComfyUI's output folder -> (path, filename, subfolder), as SaveVideo names them."""
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, folder_paths.get_output_directory(), width, height)
    filename = f"{name}_{counter:05}_.{extension}"
    return Path(folder) / filename, filename, subfolder
