"""The fixture runners and manifest checkers behind `flashhead verify`, one section per module.

A fixture runner gets a `Fixture` (its `weights.*`, `input.*`, `output.*` tensors and JSON metadata), builds our own
module from the JSON config, loads `weights.*` through our own loader, runs the case and returns
{output name: (ours, reference)}. A manifest checker builds the full-size model on the meta device with our own
classes and returns the list of key/shape problems.
"""

from __future__ import annotations

import torch

from .verify import Fixture, PIPELINE_LIMIT, compare_state_dict_shapes, fixture_runner, manifest_checker  # noqa: F401


# --- DiT -----------------------------------------------------------------------------------------------------------

def _dit_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One DiT forward: weights through our loader (config from shapes, heads from the JSON), then compare."""
    from .checkpoint import DictSource, build_dit, config_from_shapes

    source = DictSource(fixture.group("weights."))
    config = config_from_shapes(source.shapes, fixture.meta["config"])
    model = build_dit(config, source, attention="sdpa")
    x, y = fixture.tensors["input.x"], fixture.tensors["input.y"]
    audio_tokens = model.audio_proj(fixture.tensors["input.context"])
    flow = model(x, fixture.tensors["input.timestep"], y, audio_tokens)
    return {"flow_pred": (flow, fixture.tensors["output.flow_pred"]),
            "audio_context_tokens": (audio_tokens, fixture.tensors["output.audio_context_tokens"])}


fixture_runner("dit_forward_wan")(_dit_case)
fixture_runner("dit_forward_ltx")(_dit_case)


def _dit_manifest(manifest: dict) -> list[str]:
    """Build the full-size DiT on the meta device from the manifest's config and compare keys/shapes."""
    from .checkpoint import UNUSED_PREFIXES, config_from_shapes
    from .model import FlashHeadDiT

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


manifest_checker("dit_lite")(_dit_manifest)
manifest_checker("dit_pro")(_dit_manifest)


# --- pipeline: two chunks of the streaming session ------------------------------------------------------------------

@fixture_runner("pipeline_chunk", PIPELINE_LIMIT)
def _pipeline_chunk_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """prepare (resize, reference latent) + consecutive chunks through StreamingSession, replaying the recorded
    noise draws. The tiny DiT is of the dit_forward_wan family; its head count comes from that fixture's JSON."""
    import json

    from .audio import frame_windows
    from .checkpoint import DictSource, build_dit, config_from_shapes
    from .sampler import SamplerConfig
    from .session import StreamingSession
    from .vae import vae_from_state_dict

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

@fixture_runner("color_correction")
def _color_correction_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """match_colors at every strength in the JSON; output.strength_1_0 holds strength 1.0."""
    from .image import match_colors

    source, reference = fixture.tensors["input.source"], fixture.tensors["input.reference"]
    pairs = {}
    for strength in fixture.meta["strengths"]:
        name = "strength_" + str(float(strength)).replace(".", "_")
        pairs[name] = (match_colors(source, reference, strength), fixture.tensors[f"output.{name}"])
    return pairs


@fixture_runner("resize_and_centercrop")
def _resize_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every sub-case through the PIL path (uint8 image) and the tensor path (float [3, h, w], nearest)."""
    from PIL import Image

    from .image import resize_and_centercrop

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

@fixture_runner("audio_embedding")
def _audio_embedding_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Tiny wav2vec2 from the JSON config, `weights.*` through our loader; once mode (padding, normalised input,
    features, windows of all frames) and every stream chunk (normalised 8-s buffer, windows)."""
    import numpy as np

    from .audio import build_wav2vec2, frame_windows, pad_for_once_mode
    from .audio_context_cache import AudioContextCache, stream_slices
    from .checkpoint import DictSource

    encoder = build_wav2vec2(fixture.meta["wav2vec2_config"], DictSource(fixture.group("weights.")))
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


@manifest_checker("wav2vec2_base_960h")
def _wav2vec2_manifest(manifest: dict) -> list[str]:
    """Feed the released file's on-disk keys/shapes (meta tensors: `wav2vec2.` prefix, weight_g/weight_v, lm_head,
    no masked_spec_embed) through our loader, once with the manifest's config (folder layout) and once with the config
    inferred from the shapes (single file); the built models must match the manifest's keys and shapes."""
    from .audio import BASE_960H_CONFIG, build_wav2vec2, config_from_shapes
    from .checkpoint import CheckpointError, DictSource

    problems = [f"BASE_960H_CONFIG {k}={v}, manifest config {k}={manifest['config'].get(k)}"
                for k, v in BASE_960H_CONFIG.items() if manifest["config"].get(k) != v]
    disk_shapes = manifest["on_disk"]["disk_keys_model_safetensors"]
    source = DictSource({k: torch.empty(v[:-1], device="meta") for k, v in disk_shapes.items()})
    inferred = config_from_shapes(source.shapes)
    problems += [f"config from shapes {k}={inferred[k]}, base-960h {k}={v}"
                 for k, v in BASE_960H_CONFIG.items() if inferred[k] != v]
    for layout, config in (("folder", manifest["config"]), ("single file", inferred)):
        try:
            encoder = build_wav2vec2(config, source, device="meta")
        except CheckpointError as e:
            problems.append(f"{layout}: our loader rejects the on-disk keys: {e}")
            continue
        ours = {k: v.shape for k, v in encoder.model.state_dict().items()}
        problems += [f"{layout}: {p}" for p in
                     compare_state_dict_shapes(manifest, ours, ignored_prefixes=("masked_spec_embed",))]
    return problems


# --- VAEs: Wan2.1 (Pro) and LTX-Video 0.9.0 (Lite) ------------------------------------------------------------------

@fixture_runner("vae_wan21")
def _vae_wan_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Encode the 5- and 9-frame clips, decode the reference latents (official key layout through our loader).
    Fixture latents carry no batch dimension; ours do."""
    from .vae import vae_from_state_dict

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


@fixture_runner("vae_ltx")
def _vae_ltx_case(fixture: Fixture) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Stochastic encode replaying the recorded eps, the deterministic posterior mean, decodes (no clamp).
    The weights use the original LTX-Video names (res_blocks, norm3.norm, mean_of_means)."""
    from .vae import vae_from_state_dict

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
    from .checkpoint import CheckpointError
    from .vae import vae_from_state_dict

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


@manifest_checker("vae_wan21")
def _vae_wan_manifest(manifest: dict) -> list[str]:
    """The original-layout keys (Wan2.1_VAE.pth) through our loader, every key/shape back in original names, the
    16 latent statistics and the strides."""
    from .vae import wan

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


@manifest_checker("vae_ltx")
def _vae_ltx_manifest(manifest: dict) -> list[str]:
    """The released on-disk diffusers keys with the released config.json through our loader; then the official
    model's keys (original names, plus the statistics buffers) through our converter."""
    from .vae import ltx

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
