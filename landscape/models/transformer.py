"""A small decoder-only byte-level language model (GPT-2 / Nanodo style).

Token and learned position embeddings, ``n_layer`` pre-LayerNorm blocks (causal self-attention, then
a GELU MLP of width ``mlp_ratio * d_model``), a final LayerNorm and an untied linear head.

Attention is written out explicitly (``q @ k^T / sqrt(d)``, causal ``masked_fill(-inf)``, softmax,
``@ v``) instead of ``F.scaled_dot_product_attention``: forward-mode AD (``torch.func.jvp``), which
the curvature code uses for Hessian- and GGN-vector products, is not implemented by the CPU SDPA
kernels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from landscape.errors import UserError

__all__ = ["CausalSelfAttention", "Block", "TransformerLM"]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention in explicit math (forward-mode AD friendly)."""

    def __init__(self, d_model: int, n_head: int, block_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_head != 0:
            raise UserError(f"transformer d_model={d_model} is not divisible by n_head={n_head}")
        self.n_head = n_head
        self.head_dim = d_model // n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.attn_drop = nn.Dropout(dropout)
        self.resid_drop = nn.Dropout(dropout)
        mask = torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))
        # Not persistent: rebuilt from block_size, so it never appears in checkpoints.
        self.register_buffer("causal_mask", mask.view(1, 1, block_size, block_size), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Attend over ``x`` of shape ``[B, T, d_model]``; position t sees positions <= t only."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        att = att.masked_fill(~self.causal_mask[:, :, :T, :T], float("-inf"))
        att = torch.softmax(att, dim=-1)
        att = self.attn_drop(att)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, d_model: int, n_head: int, block_size: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, block_size, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape ``[B, T, d_model]``."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    """Decoder-only LM: ``forward(idx [B, T] long) -> logits [B, T, vocab_size]``.

    Defaults (byte level, ~44k parameters): ``vocab_size=256, block_size=64, n_layer=2, n_head=2,
    d_model=32, mlp_ratio=4, dropout=0.0``.
    """

    def __init__(
        self,
        vocab_size: int = 256,
        block_size: int = 64,
        n_layer: int = 2,
        n_head: int = 2,
        d_model: int = 32,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for key, value in (
            ("vocab_size", vocab_size),
            ("block_size", block_size),
            ("n_layer", n_layer),
            ("n_head", n_head),
            ("d_model", d_model),
            ("mlp_ratio", mlp_ratio),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"transformer {key} must be a positive integer, got {value!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise UserError(f"transformer dropout must be in [0, 1), got {dropout!r}")
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            [Block(d_model, n_head, block_size, mlp_ratio, dropout) for _ in range(n_layer)]
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 style: N(0, 0.02) for linear and embedding weights, zero biases, residual
        # projections scaled by 1/sqrt(2 * n_layer).
        n_layer = len(self.blocks)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02
                if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                    std = 0.02 / math.sqrt(2 * n_layer)
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def forward(self, idx: Tensor) -> Tensor:
        """Return next-token logits ``[B, T, vocab_size]`` for token ids ``idx`` of shape ``[B, T]``."""
        if idx.dim() != 2:
            raise UserError(f"transformer expects token ids of shape [batch, seq], got {list(idx.shape)}")
        if idx.is_floating_point():
            raise UserError("transformer expects integer token ids, got floating-point inputs")
        T = idx.shape[1]
        if T > self.block_size:
            raise UserError(
                f"sequence length {T} exceeds the transformer block_size {self.block_size} "
                "(use a shorter --seq-len or a larger block_size)"
            )
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))
