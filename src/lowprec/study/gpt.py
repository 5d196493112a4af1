"""``gpt_tiny``: a small character-level GPT (nanoGPT-style) for the study's tooling.

For token ids ``t_1..t_T`` (``T <= block_size``) the network computes::

    h_0 = E[t] + P[0:T]                                   token + learned position embedding
    h_l = h_{l-1} + Attn_l(LN1_l(h_{l-1}))                pre-LayerNorm residual blocks,
    h_l = h_l     + MLP_l(LN2_l(h_l))                     l = 1..n_layers
    logits = LN_f(h_L) @ E^T                              LM head tied to the token embedding

``Attn(x) = proj(concat_h softmax(q_h k_h^T / sqrt(d_h) + M) v_h)`` with ``q, k, v`` from one
``qkv`` linear layer, ``n_heads`` heads of ``d_h = d_model / n_heads`` and the causal mask ``M``
(``-inf`` above the diagonal: position ``i`` sees ``j <= i`` only); ``MLP(x) = proj(GELU(fc(x)))``
with a ``4 d_model`` hidden width.  ``attention="sdpa"`` computes the attention with
:func:`torch.nn.functional.scaled_dot_product_attention` (``is_causal=True``); ``"matmul"``
spells it out (``q @ k^T``, mask, softmax, ``@ v``) so each product is a plain tensor op.

Submodule names (for per-layer recipe overrides): ``tok_emb``, ``pos_emb``,
``blocks.<i>.ln1``, ``blocks.<i>.attn.qkv``, ``blocks.<i>.attn.proj``, ``blocks.<i>.ln2``,
``blocks.<i>.mlp.fc``, ``blocks.<i>.mlp.gelu``, ``blocks.<i>.mlp.proj``, ``ln_f``, ``head``
(``head.weight`` *is* ``tok_emb.weight``).  Init as GPT-2: weights N(0, 0.02), the residual
output projections N(0, 0.02 / sqrt(2 n_layers)), biases 0, LayerNorm 1/0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GPT", "ATTENTION_MODES", "gpt_tiny"]

ATTENTION_MODES: tuple[str, ...] = ("sdpa", "matmul")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (see the module docstring)."""

    def __init__(self, d_model: int, n_heads: int, block_size: int, attention: str) -> None:
        """``n_heads`` heads over ``d_model`` features; ``attention`` is sdpa or matmul."""
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        self.n_heads, self.attention = n_heads, attention
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        mask = torch.ones(block_size, block_size, dtype=torch.bool).tril()
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B,T,C] -> [B,T,C]."""
        b, t, c = x.shape
        q, k, v = (
            z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)
            for z in self.qkv(x).split(c, dim=2)
        )
        if self.attention == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
            scores = scores.masked_fill(~self.mask[:t, :t], float("-inf"))
            y = scores.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, c))

    def extra_repr(self) -> str:
        """Show the head count and attention kind."""
        return f"n_heads={self.n_heads}, attention={self.attention!r}"


class MLP(nn.Module):
    """``proj(GELU(fc(x)))`` with a hidden width of ``4 d_model``."""

    def __init__(self, d_model: int) -> None:
        """Build the two linear layers."""
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP."""
        return self.proj(self.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm block: ``x + attn(ln1(x))``, then ``+ mlp(ln2(.))``."""

    def __init__(self, d_model: int, n_heads: int, block_size: int, attention: str) -> None:
        """Build the block."""
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, block_size, attention)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A decoder-only transformer over ``vocab_size`` tokens (see the module docstring)."""

    def __init__(self, vocab_size: int, block_size: int = 64, d_model: int = 128,
                 n_layers: int = 2, n_heads: int = 4, attention: str = "sdpa") -> None:
        """Build and initialise the network."""
        super().__init__()
        for what, value in (("vocab_size", vocab_size), ("block_size", block_size),
                            ("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads)):
            if value < 1:
                raise ValueError(f"{what} must be >= 1, got {value}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.vocab_size, self.block_size = vocab_size, block_size
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, block_size, attention) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layers))
            elif p.ndim == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids ``idx`` [B,T] (int64, ``T <= block_size``) -> logits [B,T,vocab_size]."""
        t = idx.shape[-1]
        if t > self.block_size:
            raise ValueError(f"sequence of {t} tokens exceeds block_size {self.block_size}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def gpt_tiny(vocab_size: int = 256, block_size: int = 64, d_model: int = 128, n_layers: int = 2,
             n_heads: int = 4, attention: str = "sdpa") -> GPT:
    """The small char-level GPT (defaults: 128 wide, 2 layers, 4 heads, 64-token context)."""
    return GPT(vocab_size, block_size, d_model, n_layers, n_heads, attention)
