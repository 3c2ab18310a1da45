"""FlashHead Sampler (reference IMAGE + audio embeddings -> IMAGE frames, frame rate, LATENT) and FlashHead VAE Decode
(that LATENT -> the same IMAGE frames).

LATENT semantics. FlashHead generates chunk by chunk; each chunk's 33 frames start with motion frames that repeat the
end of the previous chunk, and colour correction is applied to the decoded pixels. The Sampler's LATENT is therefore
the per-chunk latents, batched along dim 0:

    {"samples": Tensor [chunks, C, T, h, w] float32 (CPU), raw (un-normalised) VAE latents as ComfyUI keeps them,
     "flashhead": {chunk layout needed to rebuild the video (see `latent_layout`)}}

C, T = 128, 5 (LTX, Lite) or 16, 9 (Wan2.1, Pro); h, w = height / 32 or height / 8. FlashHead VAE Decode decodes each
chunk, drops the motion frames, applies the same colour correction and trims to the audio's duration, so its IMAGE
equals the Sampler's. Without the "flashhead" entry (e.g. a LATENT saved with SaveLatent and loaded again) it
decodes every chunk whole, without colour correction. ComfyUI's own VAEDecode with the Wan2.1 VAE also accepts the
Pro LATENT, giving all 33 frames of every chunk (motion frames included).
"""

from __future__ import annotations

import torch

from ..flashhead_core import (FPS, InputError, check_memory, check_size, check_vae_matches_model, chunk_count, ChunkRun,
                              decode_chunk, GenerationCancelled, memory_estimate, new_images, SamplerConfig,
                              StreamingSession, video_to_images)
from . import _host
from ._inputs import check_numbers
from ._io import CATEGORY, advanced, io
from ._wires import AudioEmbeds, Model, Vae

# Trained at 512x512; 1024 is 4x the pixels and, by `session.memory_estimate`, about 4.6 GiB of working memory per
# chunk (2048 would take 18.6 GiB); the pre-flight check refuses what does not fit.
SIZE = {"default": 512, "min": 64, "max": 1024, "step": 16}
SIZE_TOOLTIP = ("Video {}: a multiple of 32 for Lite, of 16 for Pro (an off-grid value is an error naming the "
                "nearest). FlashHead is trained at 512x512.")
COLOR_TOOLTIP = ("Colour correction strength (0 = off, 1 = as released): matches each frame's colours to the "
                 "reference image in Lab space, which keeps long videos from drifting.")


def generation_inputs() -> list:
    """The inputs of one generation run, shared by FlashHead Sampler and FlashHead Talking Video (same order: the UI
    workflows store widget values by position)."""
    return [
        io.Image.Input("image", tooltip="The reference portrait (one image; it is resized and centre-cropped)."),
        io.Int.Input("width", **SIZE, tooltip=SIZE_TOOLTIP.format("width")),
        io.Int.Input("height", **SIZE, tooltip=SIZE_TOOLTIP.format("height")),
        io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip=(
            "The noise seed: the same seed and inputs give the same video.")),
        io.Float.Input("color_correction", default=1.0, min=0.0, max=1.0, step=0.05, tooltip=COLOR_TOOLTIP,
                       **advanced(io.Float.Input)),
    ]


def prepare_models(model, vae, width: int, height: int, also_load=()) -> None:
    """The cheap checks (size, model/VAE pair), then the models onto their device with a chunk's working memory
    freed beside them, then the memory pre-flight (refuses a size that does not fit)."""
    _host.require_host()
    check_size(height, width, model.config.spatial_multiple)
    check_vae_matches_model(vae.vae, model.config)
    # The DiT and the VAE may stay partly offloaded (ComfyUI's casting layers); wav2vec2 loads whole.
    _host.load_to_device(partial=[vae.patcher] + ([model.patcher] if model.offloadable else []),
                         whole=[*also_load] + ([] if model.offloadable else [model.patcher]),
                         memory_required=memory_estimate(height, width))
    check_memory(height, width, _host.free_memory(vae.vae.device))


def cancelled_as_interrupt(run):
    """Run `run()`, turning flashhead_core's GenerationCancelled into ComfyUI's interrupt."""
    try:
        return run()
    except GenerationCancelled as e:
        _host.raise_interrupt(e)


def latent_layout(session, mode: str, total_frames: int) -> dict:
    """What FlashHead VAE Decode needs besides the latents to rebuild the Sampler's frames."""
    identity = session.identities[session.active]
    return {"mode": mode, "motion_frames": session.config.motion_frames, "total_frames": total_frames,
            "variant": session.config.variant, "color_correction": session.sampler.color_correction,
            "color_reference": identity.color_reference.to("cpu", torch.float32)}


class FlashHeadSampler(io.ComfyNode):
    """Generates the talking-head frames (all of them in memory; for long audio use FlashHead Talking Video)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashHeadSampler", display_name="FlashHead Sampler", category=CATEGORY,
            description=("Animates the reference portrait with the audio embeddings: chunks of 33 frames, 4 denoising "
                         "steps each, every chunk continuing from the last frames of the one before. Outputs all "
                         "frames as an IMAGE batch (about 3 MB per frame at 512x512: for long audio use FlashHead "
                         "Talking Video, which writes the MP4 as it goes)."),
            inputs=[
                Model.Input("model", tooltip="From FlashHead Model Loader (Lite or Pro)."),
                Vae.Input("vae", tooltip="From FlashHead VAE Loader: LTX for Lite, Wan2.1 for Pro."),
                AudioEmbeds.Input("audio_embeds", tooltip="From FlashHead Audio Encode, made with the same model."),
                *generation_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip=(
                    "The video frames [frames, H, W, 3], exactly as long as the audio at 25 fps.")),
                io.Float.Output(display_name="frame_rate", tooltip="25.0: connect to CreateVideo's fps."),
                io.Latent.Output(display_name="latent", tooltip=(
                    "Per-chunk raw VAE latents (batch = chunks) for FlashHead VAE Decode.")),
            ],
        )

    @classmethod
    def execute(cls, model, vae, audio_embeds, image, width, height, seed, color_correction) -> io.NodeOutput:
        check_numbers(cls, width=width, height=height, seed=seed, color_correction=color_correction)
        config = model.config
        if (audio_embeds.variant, audio_embeds.new_frames) != (config.variant, config.new_frames):
            raise InputError(f"these audio embeddings were made for a FlashHead {audio_embeds.variant} model, but the "
                             f"sampler got a {config.variant} model: connect the same model to FlashHead Audio Encode "
                             f"and to the sampler")
        prepare_models(model, vae, width, height)
        total, sampler = audio_embeds.total_frames, SamplerConfig(color_correction=color_correction)
        chunks = chunk_count(total, audio_embeds.mode, config.new_frames)
        progress = _host.StepProgress(sampler.steps)
        session = StreamingSession(model.dit, vae.vae, height=height, width=width, seed=seed, sampler=sampler,
                                   progress=lambda chunk, step: progress.step(chunk, step, chunks),
                                   should_cancel=_host.interrupted, device=model.patcher.load_device)
        out = torch.empty((total, height, width, 3), dtype=torch.float32, device=_host.output_device())
        latents = []

        def run():
            session.add_identity("reference", image)  # reads the IMAGE; prepares its own resized copy
            done = 0
            for frames in ChunkRun(session, iter(audio_embeds.windows), mode=audio_embeds.mode, total_frames=total):
                out[done:done + len(frames)] = frames
                done += len(frames)
                # Raw (un-normalised) in float32, so FlashHead VAE Decode's normalise gives back the decoded values.
                latents.append(vae.vae.unnormalise(session.last_latents.float()).to("cpu", torch.float32))
                progress.chunk_done(frames)
            return done

        done = cancelled_as_interrupt(run)
        if done != total:
            raise RuntimeError(f"the audio embeddings covered {done} of {total} frames; re-run FlashHead Audio Encode")
        latent = {"samples": torch.cat(latents), "flashhead": latent_layout(session, audio_embeds.mode, total)}
        return io.NodeOutput(out, float(FPS), latent)


class FlashHeadVAEDecode(io.ComfyNode):
    """Decodes the FlashHead Sampler's LATENT into the same frames the sampler output."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FlashHeadVAEDecode", display_name="FlashHead VAE Decode", category=CATEGORY,
            description=("Decodes a FlashHead LATENT (per-chunk raw latents, batch = chunks) with the FlashHead VAE: "
                         "motion frames dropped, colour correction re-applied, trimmed to the audio: the Sampler's "
                         "frames."),
            inputs=[
                Vae.Input("vae", tooltip="From FlashHead VAE Loader: the VAE the latent was made with."),
                io.Latent.Input("latent", tooltip=("FlashHead Sampler's latent (or one saved and loaded again, then "
                                                   "decoded chunk by chunk without colour correction).")),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The decoded frames [frames, H, W, 3].")],
        )

    @classmethod
    def execute(cls, vae, latent) -> io.NodeOutput:
        _host.require_host()
        samples, layout = latent["samples"], latent.get("flashhead")
        run_vae = vae.vae
        if samples.ndim != 5 or samples.shape[1] != run_vae.latent_channels:
            raise InputError(f"FlashHead VAE Decode needs video latents [chunks, {run_vae.latent_channels}, T, h, w] "
                             f"for this VAE, got {list(samples.shape)} (a Lite LATENT has 128 channels and needs the "
                             f"LTX VAE, a Pro LATENT 16 and the Wan2.1 VAE)")
        height, width = samples.shape[-2] * run_vae.stride[1], samples.shape[-1] * run_vae.stride[2]
        _host.load_to_device(partial=[vae.patcher], memory_required=memory_estimate(height, width))
        check_memory(height, width, _host.free_memory(run_vae.device))
        pieces, done = [], 0
        total = layout["total_frames"] if layout else None
        progress = _host.Progress(samples.shape[0])
        for index in range(samples.shape[0]):
            _host.check_interrupt()
            latents = run_vae.normalise(samples[index:index + 1].to(run_vae.device, torch.float32))
            if layout:
                frames = decode_chunk(run_vae, latents, layout["color_reference"], layout["color_correction"],
                                      check_cancel=_host.check_interrupt)
                images = new_images(frames, index, layout["mode"], layout["motion_frames"], total - done)
            else:
                images = video_to_images(decode_chunk(run_vae, latents, None, 0, check_cancel=_host.check_interrupt))
            pieces.append(images.to(_host.output_device()))
            done += len(images)
            progress.update(index + 1, images)
            if total is not None and done >= total:
                break
        return io.NodeOutput(torch.cat(pieces))
