"""Parity with the official implementation: replay its golden fixtures and check its key/shape manifests.

`flashhead verify FILE...` takes fixture `.safetensors` files (each with its `.json` beside it) and manifest `.json`
files. Every fixture case and every manifest model has one entry in FIXTURE_CASES / MANIFEST_CASES (at the bottom);
an unknown one fails loudly.
Each result is one JSON line: {"file", "case", "rel": {output: rel error}, "limit", "ok"}.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import Wav2Vec2Model

from ..audio import AudioContextCache, frame_windows, pad_for_once_mode, stream_slices
from ..audio.wav2vec2 import BASE_960H_CONFIG, CTC_PREFIX, build_wav2vec2, wav2vec2_config
from ..audio.wav2vec2 import config_from_shapes as wav2vec2_config_from_shapes
from ..checkpoint import UNUSED_PREFIXES, build_dit, config_from_shapes
from ..errors import CheckpointError
from ..media.image import match_colors, resize_and_centercrop
from ..model import FlashHeadDiT
from ..generation.sampler import SamplerConfig
from ..generation.session import StreamingSession
from ..vae import ltx, wan, vae_from_state_dict
from ..testing.wav2vec2 import STORED_WEIGHT_NORM
from ..weights import DictSource, key_problems

MODULE_LIMIT = 1e-5  # single modules (DiT forward, VAE, audio encoder, colour correction, resize)
PIPELINE_LIMIT = 1e-4  # multi-step pipeline outputs


@dataclass
class Fixture:
    """One golden fixture: tensors from `<case>.safetensors` and the metadata from `<case>.json`."""
    path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]

    @classmethod
    def load(cls, path: str | Path) -> "Fixture":
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        return cls(path=path, meta=meta, tensors=load_file(str(path)))

    @property
    def case(self) -> str:
        return self.meta.get("case", self.path.stem)

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors whose name starts with `prefix`, with the prefix removed (e.g. group('weights.'))."""
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref|| / ||ref|| over the whole tensor, in float64."""
    if tuple(ours.shape) != tuple(ref.shape):
        raise ValueError(f"shape mismatch: ours {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref.norm().item()
    diff = (ours - ref).norm().item()
    return diff / denom if denom > 0 else diff


def compare_state_dict_shapes(manifest: dict, ours: dict[str, torch.Size], ignored_prefixes=()) -> list[str]:
    """Problems between a manifest's `params`+`buffers` and our {key: shape}; manifest keys under
    `ignored_prefixes` (weights the forward never uses) may be absent from ours."""
    theirs = {k: tuple(v[:-1]) for k, v in {**manifest.get("params", {}), **manifest.get("buffers", {})}.items()}
    problems = []
    for key, shape in theirs.items():
        if key not in ours:
            if not key.startswith(tuple(ignored_prefixes)):
                problems.append(f"missing in ours: {key} {list(shape)}")
        elif tuple(ours[key]) != shape:
            problems.append(f"shape of {key}: ours {list(ours[key])} vs manifest {list(shape)}")
    problems += [f"not in manifest: {k} {list(ours[k])}" for k in ours if k not in theirs]
    return problems


def verify_file(path: str | Path) -> dict:
    """Check one fixture (.safetensors) or manifest (.json). Never raises for a failing check: ok=False."""
    path = Path(path)
    if path.suffix == ".safetensors":
        fixture = Fixture.load(path)
        if fixture.case not in FIXTURE_CASES:
            return {"file": path.name, "case": fixture.case, "ok": False,
                    "error": f"unknown fixture case {fixture.case!r}; known: {sorted(FIXTURE_CASES)}"}
        runner, limit = FIXTURE_CASES[fixture.case]
        with torch.no_grad():
            pairs = runner(fixture)
        rel = {name: rel_error(ours, ref) for name, (ours, ref) in pairs.items()}
        ok = bool(rel) and all(math.isfinite(r) and r < limit for r in rel.values())
        return {"file": path.name, "case": fixture.case, "rel": rel, "limit": limit, "ok": ok}
    if path.suffix == ".json":
        manifest = json.loads(path.read_text())
        if "state_dict_keys_in_order" not in manifest:
            return {"file": path.name, "ok": False,
                    "error": "not a manifest; for a fixture pass its .safetensors file"}
        name = path.stem
        if name not in MANIFEST_CASES:
            return {"file": path.name, "case": name, "ok": False,
                    "error": f"unknown manifest {name!r}; known: {sorted(MANIFEST_CASES)}"}
        problems = MANIFEST_CASES[name](manifest)
        return {"file": path.name, "case": name, "keys": len(manifest["state_dict_keys_in_order"]),
                "problems": problems[:20], "ok": not problems}
    return {"file": path.name, "ok": False, "error": "expected a fixture .safetensors or a manifest .json"}


# --- DiT -----------------------------------------------------------------------------------------------------------

def _dit_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One DiT forward: weights through our loader (config from shapes, heads from the JSON), then compare."""
    source = DictSource(fixture.group("weights."))
    config = config_from_shapes(source.shapes, fixture.meta["config"])
    model = build_dit(config, source, attention="sdpa")
    x, y = fixture.tensors["input.x"], fixture.tensors["input.y"]
    audio_tokens = model.audio_proj(fixture.tensors["input.context"])
    flow = model(x, fixture.tensors["input.timestep"], y, audio_tokens)
    return {"flow_pred": (flow, fixture.tensors["output.flow_pred"]),
            "audio_context_tokens": (audio_tokens, fixture.tensors["output.audio_context_tokens"])}


def _dit_manifest(manifest: dict) -> list[str]:
    """Build the full-size DiT on the meta device from the manifest's config and compare keys/shapes."""
    shapes = {k: tuple(v[:-1]) for k, v in manifest["params"].items()}
    config = config_from_shapes(shapes, manifest["config"])
    with torch.device("meta"):
        model = FlashHeadDiT(config)
    ours = {k: v.shape for k, v in model.state_dict().items()}
    problems = compare_state_dict_shapes(manifest, ours, ignored_prefixes=UNUSED_PREFIXES)
    unused = set(manifest.get("unused_in_forward", []))
    if unused != {p + "*" for p in UNUSED_PREFIXES}:
        problems.append(f"manifest lists unused weights {sorted(unused)}, we skip {list(UNUSED_PREFIXES)}")
    return problems


# --- pipeline: two chunks of the streaming session ------------------------------------------------------------------

def _pipeline_chunk_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """prepare (resize, reference latent) + consecutive chunks through StreamingSession, replaying the recorded
    noise draws. The tiny DiT is of the dit_forward_wan family; its head count comes from that fixture's JSON."""


    params = fixture.meta["params"]
    family = fixture.path.with_name("dit_forward_wan.json")
    heads = json.loads(family.read_text())["config"]["num_heads"] if family.exists() else None
    source = DictSource(fixture.group("weights.dit."))
    model = build_dit(config_from_shapes(source.shapes, num_heads=heads), source, attention="sdpa")
    vae = vae_from_state_dict(fixture.group("weights.vae."))
    height, width = params["target_size_hw"]
    sampler = SamplerConfig(steps=params["sampling_steps"], shift=params["shift"],
                            num_timesteps=params["num_timesteps"],
                            color_correction=params["color_correction_strength"])
    session = StreamingSession(model, vae, height=height, width=width, sampler=sampler,
                               chunk_frames=params["frame_num"])
    session.add_identity("reference", fixture.tensors["input.cond_image_uint8_hwc"].numpy())
    out = fixture.tensors
    pairs = {"cond_image_tensor": (session.identities["reference"].color_reference, out["output.cond_image_tensor"]),
             "ref_img_latent": (session.identities["reference"].ref_latent[0], out["output.ref_img_latent"]),
             "timesteps": (session.timesteps, out["output.timesteps"])}
    chunk = 0
    while f"input.chunk{chunk}.audio_features" in out:
        features = out[f"input.chunk{chunk}.audio_features"]
        draws = iter(out[f"output.chunk{chunk}.noise_draw{i}"][None].clone() for i in range(sampler.steps + 1))
        video = session.generate_chunk(frame_windows(features, 0, len(features)), draw_noise=lambda: next(draws))
        pairs[f"chunk{chunk}.video"] = (video[0], out[f"output.chunk{chunk}.video"])
        pairs[f"chunk{chunk}.motion_latents_after"] = (session.motion_latents[0],
                                                       out[f"output.chunk{chunk}.motion_latents_after"])
        chunk += 1
    return pairs


# --- image: colour correction and the reference resize --------------------------------------------------------------

def _color_correction_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """match_colors at every strength in the JSON; output.strength_1_0 holds strength 1.0."""
    source, reference = fixture.tensors["input.source"], fixture.tensors["input.reference"]
    pairs = {}
    for strength in fixture.meta["strengths"]:
        name = "strength_" + str(float(strength)).replace(".", "_")
        pairs[name] = (match_colors(source, reference, strength), fixture.tensors[f"output.{name}"])
    return pairs


def _resize_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every sub-case through the PIL path (uint8 image) and the tensor path (float [3, h, w], nearest)."""


    pairs = {}
    for case in fixture.meta["cases"]:
        name, (height, width) = case["name"], case["target_hw"]
        pixels = fixture.tensors[f"input.{name}.image_uint8_hwc"]
        inputs = {"pil_path": Image.fromarray(pixels.numpy()), "tensor_path": pixels.permute(2, 0, 1).float()}
        for path, image in inputs.items():
            pairs[f"{name}.{path}"] = (resize_and_centercrop(image, height, width),
                                       fixture.tensors[f"output.{name}.{path}"])
    return pairs


# --- audio: wav2vec2 features, 'once' mode and the Temporal Audio Context Cache --------------------------------------

def _audio_embedding_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Tiny wav2vec2 from the JSON config, `weights.*` through our loader; once mode (padding, normalised input,
    features, windows of all frames) and every stream chunk (normalised 8-s buffer, windows)."""
    encoder = build_wav2vec2(fixture.meta["wav2vec2_config"], fixture.group("weights."))
    new_frames, context = fixture.meta["params"]["slice_len"], fixture.meta["params"]["cached_audio_duration"]
    ref = fixture.tensors
    waveform = ref["input.waveform"].numpy()
    padded = pad_for_once_mode(waveform, new_frames)
    features = encoder.encode(padded)
    pairs = {"once.padded_waveform": (torch.from_numpy(padded), ref["input.once.padded_waveform"]),
             "once.input_values": (torch.from_numpy(encoder.normalize(padded)), ref["output.once.input_values"]),
             "once.audio_emb": (features, ref["output.once.audio_emb"]),
             "once.embedding": (frame_windows(features, 0, len(features)), ref["output.once.embedding"])}
    slices = list(stream_slices(waveform, new_frames))
    pairs["stream.padded_waveform"] = (torch.from_numpy(np.concatenate(slices)), ref["input.stream.padded_waveform"])
    cache = AudioContextCache(encoder, context)
    for chunk in fixture.meta["stream_mode"]["chunks"]:
        index = chunk["chunk"]
        windows = cache.push(slices[index])
        pairs[f"stream.chunk{index}.input_values"] = (torch.from_numpy(encoder.normalize(cache.buffer)),
                                                      ref[f"output.stream.chunk{index}.input_values"])
        pairs[f"stream.chunk{index}.embedding"] = (windows, ref[f"output.stream.chunk{index}.embedding"])
    return pairs


def _wav2vec2_manifest(manifest: dict) -> list[str]:
    """Wav2Vec2Model built on the meta device, once with the manifest's config (folder layout) and once with the
    config inferred from the on-disk shapes (single file): its keys under the release's names (`wav2vec2.` prefix,
    weight_g/weight_v, which transformers' loader maps) must be the on-disk keys and shapes less lm_head.*, and its
    state dict the manifest's keys and shapes."""
    problems = [f"BASE_960H_CONFIG {k}={v}, manifest config {k}={manifest['config'].get(k)}"
                for k, v in BASE_960H_CONFIG.items() if manifest["config"].get(k) != v]
    disk_shapes = {k: tuple(v[:-1]) for k, v in manifest["on_disk"]["disk_keys_model_safetensors"].items()}
    encoder_on_disk = {k: s for k, s in disk_shapes.items() if not k.startswith("lm_head.")}
    inferred = wav2vec2_config_from_shapes(disk_shapes)
    problems += [f"config from shapes {k}={inferred[k]}, base-960h {k}={v}"
                 for k, v in BASE_960H_CONFIG.items() if inferred[k] != v]
    for layout, config in (("folder", manifest["config"]), ("single file", inferred)):
        try:
            with torch.device("meta"):
                model = Wav2Vec2Model(wav2vec2_config(config))
        except CheckpointError as e:
            problems.append(f"{layout}: our loader refuses the config: {e}")
            continue
        ours = {k: v.shape for k, v in model.state_dict().items()}
        as_stored = {CTC_PREFIX + STORED_WEIGHT_NORM.get(k, k): s for k, s in ours.items()}
        problems += [f"{layout}: {p}" for p in key_problems(as_stored, encoder_on_disk)]
        problems += [f"{layout}: {p}" for p in
                     compare_state_dict_shapes(manifest, ours, ignored_prefixes=("masked_spec_embed",))]
    return problems


# --- VAEs: Wan2.1 (Pro) and LTX-Video 0.9.0 (Lite) ------------------------------------------------------------------

def _vae_wan_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Encode the 5- and 9-frame clips, decode the reference latents (official key layout through our loader).
    Fixture latents carry no batch dimension; ours do."""
    vae = vae_from_state_dict(fixture.group("weights."))
    t = fixture.tensors
    posterior = vae.posterior(t["input.video5"])
    mean, inv_std = vae.statistics()
    return {
        "z5": (vae.encode(t["input.video5"])[0], t["output.z5"]),
        "mu5_unnormalised": (posterior.mean, t["output.mu5_unnormalised"]),
        "logvar5": (posterior.logvar, t["output.logvar5"]),
        "decode_z5": (vae.decode(t["output.z5"][None]), t["output.decode_z5"]),
        "decode_z_random": (vae.decode(t["input.z_random"][None]), t["output.decode_z_random"]),
        "z_long": (vae.encode(t["input.video_long"])[0], t["output.z_long"]),
        "decode_z_long": (vae.decode(t["output.z_long"][None]), t["output.decode_z_long"]),
        "inv_std": (inv_std.flatten(), torch.tensor(fixture.meta["std_inverse_used"])),
        "mean": (mean.flatten(), torch.tensor(fixture.meta["mean"])),
    }


def _vae_ltx_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Stochastic encode replaying the recorded eps, the deterministic posterior mean, decodes (no clamp).
    The weights use the original LTX-Video names (res_blocks, norm3.norm, mean_of_means)."""
    vae = vae_from_state_dict(fixture.group("weights."))
    t = fixture.tensors
    return {
        "z": (vae.encode(t["input.video"], eps=t["output.encode_eps"])[0], t["output.z"]),
        "mean_normalised": (vae.encode(t["input.video"])[0], t["output.mean_normalised"]),
        "logvar": (vae.posterior(t["input.video"]).logvar, t["output.logvar"]),
        "decode_z": (vae.decode(t["output.z"][None]), t["output.decode_z"]),
        "decode_z_random": (vae.decode(t["input.z_random"][None]), t["output.decode_z_random"]),
    }


def _meta_state(params: dict) -> dict[str, torch.Tensor]:
    """Manifest {key: [shape..., dtype]} -> weightless meta tensors of those shapes."""
    return {k: torch.empty(v[:-1], device="meta") for k, v in params.items()}


def _vae_build_problems(state: dict[str, torch.Tensor], **options):
    """Build the full-size VAE on the meta device through our loader: (vae or None, problems)."""
    try:
        return vae_from_state_dict(state, device="meta", **options), []
    except CheckpointError as e:
        return None, [str(e)]


def _vae_geometry_problems(vae, manifest: dict, latent_channels: int) -> list[str]:
    strides = manifest["strides"]
    problems = []
    if tuple(vae.stride) != (strides["temporal"], strides["spatial"], strides["spatial"]):
        problems.append(f"stride: ours {list(vae.stride)} vs manifest {strides}")
    if vae.latent_channels != latent_channels:
        problems.append(f"latent channels: ours {vae.latent_channels} vs manifest {latent_channels}")
    ours = sum(p.numel() for p in vae.model.parameters())
    if ours != manifest["num_params"]:
        problems.append(f"parameters: ours {ours} vs manifest {manifest['num_params']}")
    return problems


def _vae_wan_manifest(manifest: dict) -> list[str]:
    """The original-layout keys (Wan2.1_VAE.pth) through our loader, every key/shape back in original names, the
    16 latent statistics and the strides."""
    vae, problems = _vae_build_problems(_meta_state(manifest["params"]))
    if vae is None:
        return problems
    ours = {wan.KEYS.to_original(k): v.shape for k, v in vae.model.state_dict().items()}
    problems += compare_state_dict_shapes(manifest, ours)
    problems += _vae_geometry_problems(vae, manifest, manifest["config"]["z_dim"])
    norm = manifest["latent_normalisation"]
    if (list(wan.LATENT_MEAN), list(wan.LATENT_STD)) != (norm["mean"], norm["std"]):
        problems.append("latent mean/std constants differ from the manifest's")
    return problems


def _vae_ltx_manifest(manifest: dict) -> list[str]:
    """The released on-disk diffusers keys with the released config.json through our loader; then the official
    model's keys (original names, plus the statistics buffers) through our converter."""
    disk = manifest["disk_params_diffusers_layout"]
    vae, problems = _vae_build_problems(_meta_state(disk), config_json=manifest["diffusers_config_on_disk"])
    if vae is None:
        return problems
    ours = {k: v.shape for k, v in vae.model.state_dict().items()}
    problems += compare_state_dict_shapes({"params": disk}, ours)
    problems += _vae_geometry_problems(vae, manifest, manifest["strides"]["latent_channels"])
    statistics = {"latents_mean", "latents_std"}
    ours_original = {ltx.KEYS.to_original(k): s for k, s in ours.items() if k not in statistics}
    problems += compare_state_dict_shapes(manifest, ours_original)
    channels = manifest["strides"]["latent_channels"]
    original = {**_meta_state(manifest["params"]), "mean_of_means": torch.empty(channels, device="meta"),
                "std_of_means": torch.empty(channels, device="meta")}
    problems += [f"original layout: {p}" for p in _vae_build_problems(original)[1]]
    return problems


# Every fixture case: (runner returning {output: (ours, reference)}, limit); every manifest: its checker.
FIXTURE_CASES = {
    "pipeline_chunk": (_pipeline_chunk_case, PIPELINE_LIMIT),
    "color_correction": (_color_correction_case, MODULE_LIMIT),
    "resize_and_centercrop": (_resize_case, MODULE_LIMIT),
    "audio_embedding": (_audio_embedding_case, MODULE_LIMIT),
    "vae_wan21": (_vae_wan_case, MODULE_LIMIT),
    "vae_ltx": (_vae_ltx_case, MODULE_LIMIT),
    "dit_forward_wan": (_dit_case, MODULE_LIMIT),
    "dit_forward_ltx": (_dit_case, MODULE_LIMIT),
}
MANIFEST_CASES = {
    "wav2vec2_base_960h": _wav2vec2_manifest,
    "vae_wan21": _vae_wan_manifest,
    "vae_ltx": _vae_ltx_manifest,
    "dit_lite": _dit_manifest,
    "dit_pro": _dit_manifest,
}
