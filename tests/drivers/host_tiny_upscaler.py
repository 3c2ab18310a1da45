#!/usr/bin/env python3
"""Write a tiny random-weight Real-ESRGAN x2plus upscaler (RRDBNet, the published `xinntao/Real-ESRGAN` key layout:
conv_first / body.N.rdbM.convK / conv_body / conv_up1 / conv_up2 / conv_hr / conv_last, pixel-unshuffle input so
conv_first takes 12 channels) and check that spandrel, which ComfyUI's UpscaleModelLoader uses, recognises it.

Not a test module: tests/test_comfy_host.py runs it with the host venv's Python (torch + spandrel). Usage:
  host_tiny_upscaler.py OUT.pth  ->  prints {"architecture", "scale", "tags", "input_channels", "out_shape"} as JSON
Few blocks and filters (1 block, 8 filters; growth 32, which spandrel assumes) keep the file ~0.3 MB.
"""
import json
import sys

import torch


def tiny_realesrgan_x2(filters: int = 8, growth: int = 32, blocks: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, out_ch, in_ch):
        state[f"{name}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=g) * 0.05
        state[f"{name}.bias"] = torch.zeros(out_ch)

    conv("conv_first", filters, 3 * 4)          # x2plus: 2x pixel-unshuffle in front of a 4x RRDBNet
    for b in range(blocks):
        for r in (1, 2, 3):
            for k in range(1, 5):
                conv(f"body.{b}.rdb{r}.conv{k}", growth, filters + (k - 1) * growth)
            conv(f"body.{b}.rdb{r}.conv5", filters, filters + 4 * growth)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, filters, filters)
    conv("conv_last", 3, filters)
    return state


def main() -> int:
    import spandrel

    out = sys.argv[1]
    torch.save(tiny_realesrgan_x2(), out)
    state = torch.load(out, map_location="cpu", weights_only=True)
    model = spandrel.ModelLoader().load_from_state_dict(state)
    with torch.no_grad():
        shape = list(model.model(torch.rand(1, 3, 16, 16)).shape)
    print(json.dumps({"architecture": model.architecture.id, "scale": model.scale, "tags": list(model.tags),
                      "input_channels": model.input_channels, "out_shape": shape}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
