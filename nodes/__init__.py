"""ComfyUI node adapters over flashhead_core (V3 node API, pinned to comfy_api.v0_0_2). Each module adapts ComfyUI
types and calls the core:

    loaders.py    FlashHeadModelLoader, FlashHeadVAELoader, FlashHeadAudioEncoderLoader
    audio.py      FlashHeadAudioEncode
    sampler.py    FlashHeadSampler, FlashHeadVAEDecode   (the LATENT semantics are written there)
    video.py      FlashHeadTalkingVideo
    extension.py  the ComfyExtension that lists them (`comfy_entrypoint`)
    _io.py        the pinned node API and FlashHead's wire types (io.Custom)
    _host.py      the only module that imports ComfyUI's internals (folders, devices, layer operations,
                  (Core)ModelPatcher, progress, interrupts) and the host check (`host_problem`)
    _wires.py     the objects on FlashHead's own wires
    _inputs.py    numeric input checks

Importing this package imports nothing of ComfyUI's node API (the root __init__ imports `_host` first, everywhere,
and the node modules only where the host can run them).
"""
