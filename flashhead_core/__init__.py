"""flashhead_core: SoulX-FlashHead inference in plain PyTorch (no ComfyUI import anywhere in this package).

Module map (data flows top to bottom):
    config      Lite/Pro geometry and constants        image           reference resize/crop, colour correction
    audio       audio input, wav2vec2, windows         audio_context_cache   the stream-mode ring buffer
    model       the DiT                                attention       SDPA / flash-attn / Sage behind one function
    checkpoint  loading DiT weights                    vae/            Wan2.1 (Pro) and LTX-Video (Lite) VAEs
    sampler     the 4-step flow-matching update        session         the streaming session across chunks
    pipeline    load everything, write the MP4         video_io        PyAV writing and reading
Tooling: verify + verify_cases (reference parity), bench, tiny* (random checkpoints), demo, download, cli.
"""

__version__ = "0.1.0"
