"""SAGAN self-attention for 2-D feature maps.

Zhang, Goodfellow, Metaxas, Odena, "Self-Attention Generative Adversarial Networks", ICML 2019.

Variant: the common PyTorch form (heykeetae/Self-Attention-GAN), chosen over the official
TensorFlow one (brain-research/self-attention-gan, ``non_local.py``) because it is the form
the SAGAN paper's equations describe and it keeps every spatial position on the key path:

- query and key: 1x1 conv to ``C // 8`` channels; value: 1x1 conv to ``C`` channels;
- attention ``softmax_j(q_i . k_j)`` over all ``N = H * W`` key positions (no pooling);
- output ``gamma * (V @ A^T) + x`` with the learnable scalar ``gamma`` initialised to 0, so the
  block starts as the identity and the network learns how much non-local evidence to use.

The official TF variant differs in: value ``C // 2`` + a 1x1 output conv back to ``C``, 2x2
max-pooling on the key/value paths (N/4 keys), and spectral norm on all four 1x1 convs.
``spectral_norm=True`` here applies spectral norm to the three 1x1 convs (used when the block
sits in a spectrally normalised discriminator). Not written by hand for lack of trying:
neither timm nor torchvision ships a SAGAN block (timm's ``NonLocalAttn`` has no zero-init
``gamma`` residual and normalises with batch norm).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn


class SelfAttention2d(nn.Module):
    """SAGAN self-attention block; input and output ``[B, C, H, W]``."""

    def __init__(self,
                 channels: int,            # C of the feature map
                 key_ratio: int = 8,       # query/key channels = C // key_ratio (SAGAN: 8)
                 spectral_norm: bool = False) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        inner = max(1, channels // key_ratio)
        wrap = _sn if spectral_norm else (lambda m: m)
        self.query = wrap(nn.Conv2d(channels, inner, 1))
        self.key = wrap(nn.Conv2d(channels, inner, 1))
        self.value = wrap(nn.Conv2d(channels, channels, 1))
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention map ``[B, N, N]`` (row i: how much query position i reads each key j)."""
        b, _, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # [B, N, C']
        k = self.key(x).flatten(2)                    # [B, C', N]
        return torch.softmax(torch.bmm(q, k), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn = self.attention(x)                      # [B, N, N]
        v = self.value(x).flatten(2)                  # [B, C, N]
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + x
