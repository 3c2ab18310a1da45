"""flashhead_core: SoulX-FlashHead inference in plain PyTorch (no ComfyUI import anywhere in this package).

Module map: config (geometry), model (the DiT), attention (backends), checkpoint (loading), verify (reference
parity), bench (timings), cli (the `flashhead` command).
"""

__version__ = "0.1.0"
