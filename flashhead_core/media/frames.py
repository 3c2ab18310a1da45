"""Frame conversions between the model's frames ([B, 3, T, H, W] in [-1, 1]), ComfyUI IMAGE batches (float
[T, H, W, 3] in 0..1) and uint8 pixels. Pure torch: they live here and nowhere else."""

from __future__ import annotations

import numpy as np
import torch


def video_to_images(video: torch.Tensor) -> torch.Tensor:
    """Model frames [1, 3, T, H, W] or [3, T, H, W] in [-1, 1] -> float32 [T, H, W, 3] in 0..1 on the CPU (the
    ComfyUI IMAGE layout). Values outside [-1, 1] (the LTX VAE does not clamp) are clamped."""
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise ValueError(f"expected one video [1, 3, T, H, W], got a batch of {video.shape[0]}")
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected frames [1, 3, T, H, W] or [3, T, H, W], got {list(video.shape)}")
    return ((video.detach().float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).contiguous().cpu()


def images_to_uint8(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8, or float in 0..1 (clamped, rounded), of any shape (numpy or torch) -> uint8 numpy, same shape.
    uint8 numpy input is returned as is (no copy)."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        return images
    images = torch.as_tensor(images).detach()
    if images.dtype == torch.uint8:
        return images.cpu().numpy()
    if not images.is_floating_point():
        raise ValueError(f"pixels must be uint8 (0..255) or float (0..1), got {images.dtype}")
    if images.numel() and bool(torch.isnan(images).any()):
        raise ValueError("pixels contain NaN")
    if images.numel() and images.max().item() > 1.5:
        raise ValueError(f"float pixels must be in 0..1, got values up to {images.max().item():g} "
                         f"(for 0..255 values divide by 255 or pass uint8)")
    return images.float().clamp(0, 1).mul_(255).round_().to(torch.uint8).cpu().numpy()
