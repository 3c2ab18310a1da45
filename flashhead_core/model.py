"""The FlashHead DiT: a Wan-2.1-style diffusion transformer with per-latent-frame audio cross-attention
(docs/algorithm.md#the-dit).

One evaluation maps (noisy latent z, reference latent, timestep, audio windows) to a flow prediction:

    audio windows [B, 1 + t_stride*(T-1), 5, 12, 768] --AudioProjection--> audio tokens [B, T, 32, dim]
    cat(z, ref) [B, in_dim, T, H, W] --patch embed--> tokens [B, L, dim], L = T * H/ph * W/pw (raster order)
    30 x Block(self-attention with 3-D RoPE, per-frame audio cross-attention, FFN; adaLN from the timestep)
    Head (adaLN from the time embedding) --unpatchify--> flow [B, out_dim, T, H, W]

Precision: the residual stream, norms, modulation and the time MLP run in float32; the Linear/conv layers and
attention run in the model's compute dtype (float32 or bf16). This is our choice, not the official bf16 run's: that
run casts the whole model to bf16 and its blocks have no autocast, so its residual stream is bf16 too. Ours follows
Wan 2.1's float32 residual design so that a bf16 video stays close to the float32 one
(docs/algorithm.md#where-bf16-rounding-happens).
Every Linear, Conv3d and LayerNorm is built by the `operations` namespace (default flashhead_core.layers;
ComfyUI passes comfy.ops.manual_cast) and always called through its forward, which casts the weight to the input's
dtype and device: the weights may be stored in fp8 or offloaded. The compute dtype is the patch embedding's and the
modulation tables' (never stored in fp8; see checkpoint.FP8_DTYPES).
State dict keys are the released ones (`blocks.N.self_attn.q.weight`, `audio_proj.proj1_vf.weight`, ...);
the released files' unused `text_embedding.*` / `audio_emb.*` weights have no module here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import layers
from .attention import attention
from .config import AUDIO_WINDOW, WAV2VEC2_LAYERS, ModelConfig

ROPE_THETA = 10000.0
AUDIO_NORM_EPS = 1e-5  # the audio projector's LayerNorm uses PyTorch's default eps, not the model's 1e-6


def sinusoidal_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """timestep [B] -> [B, dim] float32: [cos(t*w) | sin(t*w)], w_j = 10000^(-j/half), computed in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=timestep.device) / half)
    angles = timestep.double()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


@functools.lru_cache(maxsize=16)
def rope_table(grid: tuple[int, int, int], head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [L, 1, head_dim/2] float32 for a (T, H, W) token grid in raster order.

    The head_dim/2 complex pairs are split [c - 2*(c//3), c//3, c//3] over (t, h, w); pair j of an axis with n
    pairs turns by pos * 10000^(-j/n). Angles are computed in float64. Cached per grid shape and device.
    """
    pairs = head_dim // 2
    split = (pairs - 2 * (pairs // 3), pairs // 3, pairs // 3)
    axes = []
    for n_pairs, size in zip(split, grid):
        freqs = torch.pow(ROPE_THETA, -torch.arange(n_pairs, dtype=torch.float64) / n_pairs)
        axes.append(torch.arange(size, dtype=torch.float64)[:, None] * freqs[None, :])  # [size, n_pairs]
    t, h, w = grid
    angles = torch.cat(
        [
            axes[0][:, None, None, :].expand(t, h, w, -1),
            axes[1][None, :, None, :].expand(t, h, w, -1),
            axes[2][None, None, :, :].expand(t, h, w, -1),
        ],
        dim=-1,
    ).reshape(t * h * w, 1, pairs)
    return torch.cos(angles).float().to(device), torch.sin(angles).float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, H, D] with (2j, 2j+1) as complex pairs, rotated by the [L, 1, D/2] tables; float32 math."""
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, over the full width (before the split into heads). Our own rather than
    `operations.RMSNorm`: this exact rounding (normalise in float32, scale in the input dtype) is the release's."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * layers.cast_to(self.weight, x)


class Attention(nn.Module):
    """Multi-head attention with q/k RMSNorm: self-attention (with RoPE) or audio cross-attention (without)."""

    def __init__(self, dim: int, num_heads: int, eps: float, ops):
        super().__init__()
        self.num_heads = num_heads
        self.q = ops.Linear(dim, dim)
        self.k = ops.Linear(dim, dim)
        self.v = ops.Linear(dim, dim)
        self.o = ops.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context [B, Lk, C] -> keys (RMS-normed, before RoPE) and values, each [B, Lk, H, D]."""
        k = self.norm_k(self.k(context)).unflatten(-1, (self.num_heads, -1))
        v = self.v(context).unflatten(-1, (self.num_heads, -1))
        return k, v

    def forward(self, x: torch.Tensor, keys_values: tuple[torch.Tensor, torch.Tensor],
                rope: tuple[torch.Tensor, torch.Tensor] | None, backend: str) -> torch.Tensor:
        """x [B, Lq, C] attends to `keys_values` [B, Lk, H, D] each (self.keys_values(x) for self-attention)
        -> [B, Lq, C]."""
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))  # [B, Lq, H, D]
        k, v = keys_values
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.o(attention(q, k, v, backend).flatten(-2))


class Block(nn.Module):
    """One transformer block: adaLN self-attention, per-latent-frame audio cross-attention, adaLN FFN."""

    def __init__(self, config: ModelConfig, ops):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))
        self.norm1 = ops.LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = Attention(dim, config.num_heads, eps, ops)
        self.norm3 = ops.LayerNorm(dim, eps, elementwise_affine=True)
        self.cross_attn = Attention(dim, config.num_heads, eps, ops)
        self.norm2 = ops.LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(ops.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"),
                                 ops.Linear(config.ffn_dim, dim))

    def audio_keys_values(self, audio_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio_tokens [B, T, N, C] -> this block's cross-attention keys and values [B*T, N, H, D] (one latent frame
        per batch row)."""
        return self.cross_attn.keys_values(audio_tokens.to(self.modulation.dtype).flatten(0, 1))

    # torch.compile traces one block and reuses it for all 30 (compile time: 85 s -> 57 s for the static chunk step
    # of the tiny model on the CPU); no effect in eager mode.
    @torch.compiler.nested_compile_region
    def forward(self, x: torch.Tensor, time_mod: torch.Tensor, audio_kv: tuple[torch.Tensor, torch.Tensor],
                rope: tuple[torch.Tensor, torch.Tensor], backend: str) -> torch.Tensor:
        """x [B, L, C] float32 residual stream; time_mod [B, 6, C] float32; audio_kv from `audio_keys_values`."""
        dtype = self.modulation.dtype  # the compute dtype (Linear weights may be stored in fp8)
        modulation = self.modulation.to(device=x.device, dtype=torch.float32)
        shift1, scale1, gate1, shift2, scale2, gate2 = (modulation + time_mod).unsqueeze(2).unbind(1)

        h = (self.norm1(x) * (1 + scale1) + shift1).to(dtype)
        x = x + self.self_attn(h, self.self_attn.keys_values(h), rope, backend).float() * gate1

        # Each latent frame's tokens attend only to that frame's audio tokens: fold frames into the batch.
        h = self.norm3(x).to(dtype).reshape(audio_kv[0].shape[0], -1, x.shape[-1])
        x = x + self.cross_attn(h, audio_kv, None, backend).reshape(x.shape).float()

        h = (self.norm2(x) * (1 + scale2) + shift2).to(dtype)
        return x + self.ffn(h).float() * gate2


class Head(nn.Module):
    """Final adaLN (modulated by the time embedding) and projection to patch pixels."""

    def __init__(self, config: ModelConfig, ops):
        super().__init__()
        self.modulation = nn.Parameter(torch.zeros(1, 2, config.dim))
        self.norm = ops.LayerNorm(config.dim, config.eps, elementwise_affine=False)
        self.head = ops.Linear(config.dim, math.prod(config.patch_size) * config.out_dim)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        """x [B, L, C] float32, time_emb [B, C] float32 -> [B, L, prod(patch) * out_dim] float32."""
        modulation = self.modulation.to(device=x.device, dtype=torch.float32)
        shift, scale = (modulation + time_emb[:, None]).unsqueeze(2).unbind(1)
        h = self.norm(x) * (1 + scale) + shift
        return self.head(h.to(self.modulation.dtype)).float()


class AudioProjection(nn.Module):
    """Audio windows -> `context_tokens` tokens per latent frame (the released `audio_proj.*`).

    Latent frame 0 takes audio frame 0's full 5-wide window (proj1). Each later latent frame takes its t_stride
    audio frames: positions 0..2 of the first frame's window, position 2 of each middle frame, positions 2..4 of
    the last (t_stride + 4 slots, proj1_vf).
    """

    def __init__(self, t_stride: int, intermediate_dim: int, context_tokens: int, output_dim: int,
                 audio_channels: int, ops):
        super().__init__()
        features = WAV2VEC2_LAYERS * audio_channels
        self.t_stride = t_stride
        self.context_tokens = context_tokens
        self.proj1 = ops.Linear(AUDIO_WINDOW * features, intermediate_dim)
        self.proj1_vf = ops.Linear((t_stride + 4) * features, intermediate_dim)
        self.proj2 = ops.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = ops.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = ops.LayerNorm(output_dim, eps=AUDIO_NORM_EPS)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [B, 1 + t_stride*(T-1), 5, 12, 768] -> audio tokens [B, T, context_tokens, dim] float32.
        (768 = audio_channels, the wav2vec2 hidden size.)"""
        batch, n_audio = windows.shape[:2]
        if (n_audio - 1) % self.t_stride:
            raise ValueError(f"audio windows cover {n_audio} frames; expected 1 + {self.t_stride} * "
                             f"(latent frames - 1)")
        windows = windows.to(self.norm.weight.dtype)  # the compute dtype
        first = windows[:, :1].flatten(2)  # [B, 1, 5*12*768]
        groups = windows[:, 1:].unflatten(1, (-1, self.t_stride))  # [B, T-1, t_stride, 5, 12, 768]
        slots = torch.cat([groups[:, :, 0, :3], groups[:, :, 1:-1, 2], groups[:, :, -1, 2:]], dim=2)
        hidden = torch.cat([F.relu(self.proj1(first)), F.relu(self.proj1_vf(slots.flatten(2)))], dim=1)
        tokens = self.proj3(F.relu(self.proj2(hidden)))  # [B, T, context_tokens * dim]
        return self.norm(tokens.unflatten(-1, (self.context_tokens, -1)).float())


@dataclass(frozen=True)
class AudioContext:
    """A chunk's audio as the blocks read it: per block, cross-attention keys and values [B*T, N, H, D]."""

    frames: int  # T, latent frames covered
    keys_values: list[tuple[torch.Tensor, torch.Tensor]]


class FlashHeadDiT(nn.Module):
    """The FlashHead transformer (`WanModelAudioProject` in the release). See the module docstring.

    operations: a namespace with Linear, Conv3d and LayerNorm classes (torch.nn signatures) whose forward casts the
    weight to the input's dtype and device: flashhead_core.layers (default) or comfy.ops.manual_cast."""

    def __init__(self, config: ModelConfig, attention_backend: str = "sdpa", operations=layers):
        super().__init__()
        self.config = config
        self.attention_backend = attention_backend
        dim, ops = config.dim, operations
        self.patch_embedding = ops.Conv3d(config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.time_embedding = nn.Sequential(ops.Linear(config.freq_dim, dim), nn.SiLU(), ops.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), ops.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(Block(config, ops) for _ in range(config.num_layers))
        self.head = Head(config, ops)
        self.audio_proj = AudioProjection(config.t_stride, config.audio_intermediate_dim,
                                          config.audio_context_tokens, dim, config.audio_channels, ops)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype."""
        return self.head.modulation.dtype

    def compile_blocks(self, mode: str | None = None) -> "FlashHeadDiT":
        """torch.compile each transformer block (regional compilation: the 30 blocks share one compiled graph, so it
        compiles in a fraction of a whole-model compile; RoPE tables, audio keys/values and the head stay eager).
        `mode` is torch.compile's ("max-autotune", "reduce-overhead" = CUDA graphs, ...)."""
        for block in self.blocks:
            block.compile(mode=mode)
        return self

    def audio_context(self, audio_tokens: torch.Tensor) -> AudioContext:
        """audio_tokens [B, T, context_tokens, dim] (from `self.audio_proj(windows)`) -> every block's
        cross-attention keys and values. They are the same at every denoising step of a chunk, so the sampler
        computes them once per chunk instead of once per step."""
        return AudioContext(audio_tokens.shape[1], [block.audio_keys_values(audio_tokens) for block in self.blocks])

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, ref_latents: torch.Tensor,
                audio: torch.Tensor | AudioContext) -> torch.Tensor:
        """One denoising evaluation.

        latents, ref_latents: [B, out_dim, T, H, W]; timestep: [B] or scalar in [0, 1000] (already shifted);
        audio: the audio tokens [B, T, context_tokens, dim] from `self.audio_proj(windows)`, or their
        `self.audio_context(tokens)` (what the sampler passes: computed once per chunk).
        Returns the flow prediction [B, out_dim, T, H, W] float32.
        """
        batch, _, frames, height, width = latents.shape
        pt, ph, pw = self.config.patch_size
        grid = (frames // pt, height // ph, width // pw)
        context = audio if isinstance(audio, AudioContext) else self.audio_context(audio)
        if context.frames != grid[0]:
            raise ValueError(f"audio tokens cover {context.frames} latent frames, latents have {grid[0]}")

        x = self.patch_embedding(torch.cat([latents, ref_latents], dim=1).to(self.dtype))
        x = x.flatten(2).transpose(1, 2).float()  # [B, L, C] in (T, h, w) raster order

        timestep = timestep.reshape(-1).expand(batch)
        time_emb = self.time_embedding(sinusoidal_embedding(timestep, self.config.freq_dim))  # [B, C] float32
        time_mod = self.time_projection(time_emb).unflatten(1, (6, -1))  # [B, 6, C] float32

        rope = rope_table(grid, self.config.head_dim, x.device)
        for block, audio_kv in zip(self.blocks, context.keys_values):
            x = block(x, time_mod, audio_kv, rope, self.attention_backend)

        out = self.head(x, time_emb)  # [B, L, pt*ph*pw*C_out], C_out fastest
        out = out.reshape(batch, *grid, pt, ph, pw, -1)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(batch, -1, frames, height, width)
