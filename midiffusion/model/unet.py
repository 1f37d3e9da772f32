"""The score network: a DDPM-style U-Net conditioned on ``[x_t, cross-LMI, self-LMI]``.

As in the published model, the two LMI maps are concatenated to the noisy
image as extra input channels, the timestep enters every residual block through a sinusoidal
embedding, and the output is the predicted noise epsilon. The source image's intensities never
enter the network, only its LMI maps: that is what makes the prior modality-agnostic.

Condition dropout: ``cond_mask`` marks which batch items are conditioned. Unconditioned items get
zero LMI channels plus a learned "no condition" embedding, so one network serves conditional
sampling, classifier-free guidance and the unconditional SDEdit baseline.

Input kind: a network with ``kinds`` > 0 is also told what it is looking at (``INPUT_KINDS``:
a skull-stripped brain or a whole head) through a learned embedding added to the timestep's.
Whether a scalp surrounds a slice is a fact about the whole image that a small U-Net cannot see
from any one patch, yet it sets the brain's grey level: in a head scaled to its bright fat, white
matter is about 0.6; in a stripped brain scaled to itself, about 1. Kind 0 means "not told"; the
network is trained with the kind dropped now and then, so it serves callers that do not know.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from model_store.card import INPUT_KINDS, known_input_kind


@dataclass(frozen=True)
class UNetConfig:
    base_channels: int = 48
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sizes at the model's grid
    grid_size: int = 128  # the grid the attention resolutions refer to
    dropout: float = 0.1
    cond_channels: int = 2  # cross-LMI and self-LMI
    kinds: int = 0  # input kinds the network can be told (INPUT_KINDS[:kinds]); 0: none
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        d = dict(d)
        d["channel_mults"] = tuple(d["channel_mults"])
        d["attention_resolutions"] = tuple(d["attention_resolutions"])
        return cls(**d)


def kind_index(kind: str | None) -> int:
    """The index a network takes for ``kind`` (one of ``INPUT_KINDS``, or None: not told)."""
    if known_input_kind(kind) is None:
        return 0
    return INPUT_KINDS.index(kind) + 1


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    # up to 32 groups; gcd keeps the count a divisor of any channel width
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = _norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """epsilon-prediction U-Net. Input H and W must be multiples of 2**(levels-1)."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or UNetConfig()
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(
            nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.null_cond = nn.Parameter(torch.zeros(emb_dim))
        if not 0 <= cfg.kinds <= len(INPUT_KINDS):
            raise ValueError(f"kinds {cfg.kinds}: at most {len(INPUT_KINDS)} ({INPUT_KINDS})")
        self.kind_emb: nn.Embedding | None = None
        if cfg.kinds:
            # zero rows: a warm start from a network without kinds begins as that network
            self.kind_emb = nn.Embedding(cfg.kinds + 1, emb_dim)
            nn.init.zeros_(self.kind_emb.weight)
        self.stem = nn.Conv2d(1 + cfg.cond_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips = [ch]
        c, size = ch, cfg.grid_size
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                block = nn.ModuleList([ResBlock(c, ch * mult, emb_dim, cfg.dropout)])
                c = ch * mult
                if size in cfg.attention_resolutions:
                    block.append(SelfAttention(c))
                self.down.append(block)
                skips.append(c)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
                size //= 2

        self.mid = nn.ModuleList(
            [ResBlock(c, c, emb_dim, cfg.dropout), SelfAttention(c), ResBlock(c, c, emb_dim, 0.0)]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(c + skips.pop(), ch * mult, emb_dim, cfg.dropout)])
                c = ch * mult
                if size in cfg.attention_resolutions:
                    block.append(SelfAttention(c))
                self.up.append(block)
            if level > 0:
                self.up.append(
                    nn.ModuleList(
                        [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
                    )
                )
                size *= 2

        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.channel_mults) - 1)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        cond_mask: torch.Tensor | None = None,
        kind: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B,1,H,W) noisy image (VP scale); t: (B,) timesteps; cond: (B,2,H,W) LMI maps;
        cond_mask: (B,) bool, False = drop the condition for that item; kind: (B,) indices of
        :func:`kind_index`, ignored by a network without kinds (None: not told)."""
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.kind_emb is not None and kind is not None:
            emb = emb + self.kind_emb(kind.to(emb.device))
        if cond_mask is not None:
            keep = cond_mask.to(x.dtype)
            cond = cond * keep[:, None, None, None]
            emb = emb + (1 - keep)[:, None] * self.null_cond
        h = self.stem(torch.cat([x, cond], dim=1))
        hs = [h]
        for block in self.down:
            h = self._run(block, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for block in self.up:
            if isinstance(block[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(block, h, emb)
        return self.out(h)

    @staticmethod
    def _run(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
