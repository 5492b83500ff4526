"""Benchmark workloads: trained models, their data, dtype and what serves as the reference.

Every model is *trained* before it is measured so that its spectrum looks like a real checkpoint
(a freshly initialised net has a very different, much flatter Hessian). The digits MLP follows the
measurement notes exactly (64-64-64-10 tanh, 300 full-batch Adam steps at lr 1e-2, seed 0,
float64), so its reference values can be checked against the figures recorded there.

Trained weights are cached in ``benchmarks/.cache`` (keyed by the workload's recipe), and so are
dense references, which cost minutes to build; nothing is written anywhere else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.data import load_data
from landscape.models import build_model

CACHE_DIR = Path(__file__).resolve().parent / ".cache"


class FlatLogits(nn.Module):
    """``[B, T, V]`` language-model logits reshaped to ``[B*T, V]`` (and HF outputs unwrapped).

    The peers' APIs call ``criterion(model(x), y)`` with a plain classification criterion, so the
    language models are handed to them through this wrapper with targets flattened to ``[B*T]``.
    Our engine gets the unwrapped model and ``[B, T]`` targets (it handles ``[B, T, V]`` itself);
    the loss is the same mean over all tokens either way.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``[B*T, V]``."""
        out = self.inner(x)
        logits = out.logits if hasattr(out, "logits") else out
        return logits.reshape(-1, logits.shape[-1])


@dataclass
class Workload:
    """A trained model with its data, as every library in the benchmark sees it.

    ``model`` is the module our engine analyses; ``peer_model`` is what peers get (the same
    parameters, wrapped with :class:`FlatLogits` for language models) with ``peer_targets``.
    ``reference`` says how the accuracy references are obtained: ``"dense"`` (eigenvalues of
    the assembled Hessian and its exact trace), ``"lanczos"`` (a long Lanczos run) or ``None``.
    """

    name: str
    description: str
    model: nn.Module
    x: Tensor
    y: Tensor
    dtype: torch.dtype
    reference: str | None
    peer_model: nn.Module
    peer_targets: Tensor
    train_loss: float
    notes: list[str] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy over all targets (what every library differentiates)."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _recipe_key(recipe: dict[str, Any]) -> str:
    text = json.dumps(recipe, sort_keys=True) + torch.__version__
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float,
    optimizer: str,
    forward: Callable[[nn.Module, Tensor], Tensor],
) -> float:
    """Full-batch training; returns the final loss."""
    opt_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    opt = opt_cls(model.parameters(), lr=lr)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        logits = forward(model, x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = forward(model, x)
        return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)))


def _plain(model: nn.Module, x: Tensor) -> Tensor:
    return model(x)


def _hf(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).logits


def _trained(
    recipe: dict[str, Any],
    make: Callable[[], nn.Module],
    x: Tensor,
    y: Tensor,
    forward: Callable[[nn.Module, Tensor], Tensor] = _plain,
) -> tuple[nn.Module, float]:
    """Build (seeded) and train the model of ``recipe``, or load it from the cache."""
    dtype = getattr(torch, recipe["dtype"])
    torch.manual_seed(recipe["seed"])
    model = make().to(dtype)
    path = CACHE_DIR / f"{recipe['name']}-{_recipe_key(recipe)}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state"])
        return model.eval(), float(saved["loss"])
    model.train()
    loss = _train(model, x, y, recipe["steps"], recipe["lr"], recipe["optimizer"], forward)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.state_dict(), "loss": loss}, path)
    return model.eval(), loss


def _digits(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    data = load_data("digits", dtype=dtype)
    return data.x, data.y


def mlp() -> Workload:
    """The digits MLP of the measurement notes (dense reference)."""
    recipe = {"name": "mlp", "dtype": "float64", "seed": 0, "steps": 300, "lr": 1e-2, "optimizer": "adam"}
    x, y = _digits(torch.float64)
    model, loss = _trained(recipe, lambda: build_model("mlp"), x, y)
    return Workload(
        "mlp",
        "built-in MLP 64-64-64-10 tanh, all 1797 digits, float64, 300 Adam steps (lr 1e-2)",
        model,
        x,
        y,
        torch.float64,
        "dense",
        model,
        y,
        loss,
    )


def cnn() -> Workload:
    """The digits CNN (float32 like the notes; reference from a long Lanczos run)."""
    recipe = {"name": "cnn", "dtype": "float32", "seed": 0, "steps": 100, "lr": 1e-2, "optimizer": "adam"}
    x, y = _digits(torch.float32)
    model, loss = _trained(recipe, lambda: build_model("cnn"), x, y)
    return Workload(
        "cnn",
        "built-in CNN (2 GELU convs), all 1797 digits, float32, 100 Adam steps (lr 1e-2)",
        model,
        x,
        y,
        torch.float32,
        "lanczos",
        model,
        y,
        loss,
    )


def transformer(num_sequences: int = 64, seq_len: int = 64) -> Workload:
    """The built-in byte-level transformer LM on the text corpus."""
    recipe = {
        "name": "transformer",
        "dtype": "float32",
        "seed": 0,
        "steps": 150,
        "lr": 3e-3,
        "optimizer": "adamw",
        "n": num_sequences,
        "T": seq_len,
    }
    data = load_data("text", samples=num_sequences, seq_len=seq_len)
    x, y = data.x, data.y
    model, loss = _trained(recipe, lambda: build_model("transformer", block_size=seq_len), x, y)
    return Workload(
        "transformer",
        f"built-in transformer LM (2 layers, d 32), {num_sequences} x {seq_len} bytes of the text "
        "corpus, float32, 150 AdamW steps (lr 3e-3)",
        model,
        x,
        y,
        torch.float32,
        "lanczos",
        FlatLogits(model),
        y.reshape(-1),
        loss,
    )


def gpt2(num_sequences: int = 32, seq_len: int = 64) -> Workload:
    """A tiny GPT-2 built from a config (no download), eager attention."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    recipe = {
        "name": "gpt2",
        "dtype": "float32",
        "seed": 0,
        "steps": 60,
        "lr": 3e-3,
        "optimizer": "adamw",
        "n": num_sequences,
        "T": seq_len,
    }
    data = load_data("text", samples=num_sequences, seq_len=seq_len)
    x, y = data.x, data.y

    def make() -> nn.Module:
        # Eager attention: the CPU SDPA kernels have no forward-mode AD (curvlinops, our jvp).
        config = GPT2Config(
            vocab_size=256,
            n_positions=128,
            n_embd=64,
            n_layer=2,
            n_head=4,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="eager",
        )
        return GPT2LMHeadModel(config)

    model, loss = _trained(recipe, make, x, y, forward=_hf)
    return Workload(
        "gpt2",
        f"tiny GPT-2 from a config (2 layers, d 64, 4 heads, eager attention), {num_sequences} x "
        f"{seq_len} bytes, float32, 60 AdamW steps (lr 3e-3)",
        model,
        x,
        y,
        torch.float32,
        "lanczos",
        FlatLogits(model),
        y.reshape(-1),
        loss,
    )


def wide_mlp() -> Workload:
    """A wide digits MLP (150,794 parameters): a dense Hessian (182 GB) is out of reach."""
    recipe = {
        "name": "wide_mlp",
        "dtype": "float32",
        "seed": 0,
        "steps": 200,
        "lr": 3e-3,
        "optimizer": "adam",
    }
    x, y = _digits(torch.float32)
    model, loss = _trained(recipe, lambda: build_model("mlp", hidden=(256, 256, 256)), x, y)
    return Workload(
        "wide_mlp",
        "MLP 64-256-256-256-10 tanh (150,794 params), all 1797 digits, float32, 200 Adam steps (lr 3e-3)",
        model,
        x,
        y,
        torch.float32,
        "lanczos",
        model,
        y,
        loss,
    )


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "mlp": mlp,
    "cnn": cnn,
    "transformer": transformer,
    "gpt2": gpt2,
    "wide_mlp": wide_mlp,
}
