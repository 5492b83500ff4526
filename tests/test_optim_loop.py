"""The rules in the user's own training loop: torch.optim semantics, closures, schedulers, AMP.

The acceptance test of the loop: train with a StepLR schedule, save model, optimizer, scheduler
and RNG state mid-run, restore them into fresh objects and continue; losses and weights equal the
uninterrupted run's, for every rule, from a batch and from a closure.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.errors import UserError
from landscape.optim import RULES, SharpnessAwareOptimizer, add_lora, make_rule

LORA_RULES = ("lora", "fmlora", "efmlora")


class Net(nn.Module):
    """A small MLP with dropout; ``forward`` takes a tensor or keyword inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(5, 8), nn.Linear(8, 3), nn.Dropout(0.2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(torch.tanh(self.fc1(x))))


def make_model(rule: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = Net().double()
    if rule in LORA_RULES:
        add_lora(model, rank=2, alpha=4.0, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():  # B away from LoRA's 0
            for name, p in model.named_parameters():
                if "lora_B" in name or name.endswith(".B"):
                    p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(2))
    return model


def batches(n: int = 6) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [
        (torch.randn(8, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (8,), generator=gen))
        for _ in range(n)
    ]


def make_opt(model: nn.Module, rule: str) -> SharpnessAwareOptimizer:
    spec = RULES[rule]
    options = {"m": 4} if rule == "msam" else {}
    base = {"adamw": "adamw", "sgd": "sgd", "sgld": "sgld"}[spec.base_optimizer]
    kwargs = {"lr": 0.05, "beta": 1e6} if base == "sgld" else {"lr": 0.05}
    if base == "sgd":
        kwargs["momentum"] = 0.9
    rho = None if rule in ("sgd", "adamw", "sgld", "fsgld", "lora") else 0.05
    return SharpnessAwareOptimizer(model, base, rule=make_rule(rule, rho=rho, **options), **kwargs)


def one_step(opt: SharpnessAwareOptimizer, model: nn.Module, x: Tensor, y: Tensor, form: str) -> Tensor:
    if form == "batch":
        return opt.step(inputs=x, targets=y)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = opt.loss(model(x), y)
        loss.backward()
        return loss

    return opt.step(closure)


def train(rule: str, form: str, restore_at: int | None) -> tuple[list[float], list[Tensor]]:
    model = make_model(rule)
    opt = make_opt(model, rule)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    torch.manual_seed(11)  # the dropout masks
    losses = []
    for step, (x, y) in enumerate(batches()):
        if step == restore_at:
            saved = copy.deepcopy(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "rng": torch.get_rng_state(),
                }
            )
            model = make_model(rule, seed=5)  # fresh objects, different initial weights
            opt = make_opt(model, rule)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
            torch.set_rng_state(saved["rng"])
        losses.append(float(one_step(opt, model, x, y, form)))
        sched.step()
        assert opt.base_optimizer.param_groups[0]["lr"] == sched.get_last_lr()[0]
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("form", ["batch", "closure"])
@pytest.mark.parametrize("rule", list(RULES))
def test_scheduler_save_restore_continues_bit_for_bit(rule, form):
    whole_losses, whole_params = train(rule, form, restore_at=None)
    resumed_losses, resumed_params = train(rule, form, restore_at=3)
    assert resumed_losses == whole_losses
    assert all(torch.equal(a, b) for a, b in zip(whole_params, resumed_params, strict=True))
    assert len(set(whole_losses)) > 1


@pytest.mark.parametrize("rule", [r for r in RULES if r not in LORA_RULES])
def test_closure_gives_the_gradient_of_the_batch_call(rule):
    """Every rule from a closure (torch.optim style, dropout on) equals the rule on the batch."""
    x, y = batches(1)[0]
    grads = {}
    for form in ("batch", "closure"):
        model = make_model(rule)
        opt = make_opt(model, rule)
        torch.manual_seed(7)
        if form == "batch":
            loss = opt.compute_gradient(inputs=x, targets=y)
        else:

            def closure() -> Tensor:
                opt.zero_grad()
                out = opt.loss(model(x), y)
                out.backward()
                return out

            loss = opt.compute_gradient(closure)
        grads[form] = (float(loss), [p.grad.clone() for p in model.parameters()], torch.get_rng_state())
    assert grads["batch"][0] == pytest.approx(grads["closure"][0], rel=1e-14)
    for a, b in zip(grads["batch"][1], grads["closure"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert torch.equal(grads["batch"][2], grads["closure"][2])  # the RNG advanced alike


@pytest.mark.parametrize("rule", ["func-sam", "logit-sam", "angle-sam", "precond-func-sam"])
def test_output_rules_take_a_closure_with_any_loss_of_the_outputs(rule):
    """No criterion needed: the closure's own loss (here with label smoothing) is captured."""
    x, y = batches(1)[0]
    smoothing = nn.CrossEntropyLoss(label_smoothing=0.1)
    model, twin = make_model(rule), make_model(rule)
    torch.manual_seed(3)
    opt = SharpnessAwareOptimizer(model, "adamw", rule=rule, lr=0.1)

    def closure() -> Tensor:
        loss = smoothing(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    opt.step(closure)
    torch.manual_seed(3)
    reference = SharpnessAwareOptimizer(twin, "adamw", rule=rule, lr=0.1, loss_fn=smoothing)
    reference.step(inputs=x, targets=y)
    reference.step(inputs=x, targets=y)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_closures_that_hide_what_a_rule_needs_get_one_line_errors():
    x, y = batches(1)[0]
    model = make_model("rwsam")

    def plain() -> Tensor:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(UserError, match="opt.loss"):
        SharpnessAwareOptimizer(model, "adamw", rule="rwsam", lr=0.1).step(plain)
    with pytest.raises(UserError, match="opt.loss"):
        SharpnessAwareOptimizer(model, "adamw", rule="msam", lr=0.1).step(plain)

    def penalised() -> Tensor:
        loss = F.cross_entropy(model(x), y) + 1e-3 * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    with pytest.raises(UserError, match="weight_decay"):
        SharpnessAwareOptimizer(model, "adamw", rule="func-sam", lr=0.1).step(penalised)
    other = make_model("sam")

    def elsewhere() -> Tensor:
        loss = F.cross_entropy(other(x), y)
        loss.backward()
        return loss

    with pytest.raises(UserError, match="never called Net"):
        SharpnessAwareOptimizer(model, "adamw", rule="func-sam", lr=0.1).step(elsewhere)
    opt = SharpnessAwareOptimizer(model, "adamw", rule="sam", lr=0.1)
    with pytest.raises(UserError, match="compute_gradient"):
        opt.step()  # no rule gradient formed: a plain backward must not pass as SAM
    opt.compute_gradient(inputs=x, targets=y)
    opt.step()
    with pytest.raises(UserError, match="compute_gradient"):
        opt.step()  # once per formed gradient


# ------------------------------------------------------------------------- torch.optim habits
def test_param_groups_stay_the_base_optimizers_through_load_state_dict():
    model = make_model("sam")
    opt = SharpnessAwareOptimizer(model, "sgd", rule="sam", lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = batches(1)[0]
    opt.step(inputs=x, targets=y)
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt.param_groups is opt.base_optimizer.param_groups and opt.state is opt.base_optimizer.state
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    twin = copy.deepcopy({"model": model, "opt": opt})  # a copy keeps its base optimizer and rule
    assert twin["opt"].param_groups is twin["opt"].base_optimizer.param_groups
    assert twin["opt"].param_groups[0]["params"][0] is next(twin["model"].parameters())


def test_per_group_options_clipping_and_the_two_phase_step_match_a_hand_written_loop():
    x, y = batches(1)[0]
    model, twin = make_model("func-sam"), make_model("func-sam")

    def groups(m: nn.Module) -> list[dict]:
        return [
            {"params": [m.fc1.weight, m.fc2.weight], "weight_decay": 0.1},
            {"params": [m.fc1.bias, m.fc2.bias], "weight_decay": 0.0, "lr": 0.01},
        ]

    opt = SharpnessAwareOptimizer(
        model, "adamw", rule="func-sam", params=groups(model), lr=0.1, max_grad_norm=0.05
    )
    rule, base = make_rule("func-sam"), torch.optim.AdamW(groups(twin), lr=0.1)
    for _ in range(3):
        torch.manual_seed(0)
        opt.step(inputs=x, targets=y)
        torch.manual_seed(0)
        rule.compute_gradient(twin, x, y, optimizer=base)
        norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.05)
        assert norm > 0.05  # the clipping acted
        base.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    assert opt.param_groups[1]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 0.1
    with pytest.raises(ValueError, match="exactly once"):
        SharpnessAwareOptimizer(model, "adamw", params=[model.fc1.weight], lr=0.1)


def test_a_lightning_style_closure_drives_every_rule():
    """Lightning's automatic optimization calls ``optimizer.step(closure=...)`` with a closure that
    zeroes the gradients, runs training_step and backward, and returns the detached loss."""
    x, y = batches(1)[0]
    for rule in ("func-sam", "rwsam", "msam", "sam"):
        model = make_model(rule)
        opt = make_opt(model, rule)

        def training_step() -> Tensor:
            return opt.loss(model(x), y)

        def lightning_closure() -> Tensor:
            opt.zero_grad()
            loss = training_step()
            loss.backward()
            return loss.detach()

        before = [p.detach().clone() for p in model.parameters()]
        loss = opt.step(closure=lightning_closure)
        assert torch.isfinite(loss) and any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


# --------------------------------------------------------------------------- dict batches, HF
class KeywordNet(Net):
    def forward(self, features: Tensor, scale: float = 1.0) -> Tensor:  # type: ignore[override]
        return super().forward(features) * scale


@pytest.mark.parametrize("rule", ["sam", "func-sam", "rwsam", "msam", "angle-sam"])
def test_dict_batches_are_keyword_inputs(rule):
    x, y = batches(1)[0]
    torch.manual_seed(0)
    model = KeywordNet().double()
    twin = copy.deepcopy(model)
    torch.manual_seed(1)
    make_rule(rule).compute_gradient(model, {"features": x, "scale": 2.0}, y)
    torch.manual_seed(1)
    make_rule(rule).compute_gradient(_Positional(twin), x, y)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)


class _Positional(nn.Module):
    def __init__(self, inner: KeywordNet) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(features=x, scale=2.0)


transformers = pytest.importorskip("transformers")


def tiny_gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=13, n_positions=8, n_embd=8, n_layer=1, n_head=2, attn_implementation="eager"
    )
    return transformers.GPT2LMHeadModel(config).double()


@pytest.mark.parametrize("rule", ["func-sam", "rwsam", "sam"])
def test_hugging_face_batches_with_labels_use_the_models_own_loss(rule):
    """``step(inputs=batch)`` and a closure ``model(**batch).loss.backward()`` on a batch with
    ``labels`` and ``attention_mask`` both train with the model's own (shifted) loss."""
    tokens = torch.randint(0, 13, (4, 6), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens), "labels": tokens}
    grads = {}
    for form in ("batch", "closure", "explicit"):
        model = tiny_gpt2()
        torch.manual_seed(4)  # GPT-2's dropout is on: the masks must be replayed alike
        opt = SharpnessAwareOptimizer(model, "adamw", rule=rule, lr=1e-3)
        if form == "batch":
            loss = opt.compute_gradient(inputs=batch)
        elif form == "closure":

            def closure() -> Tensor:
                out = model(**batch)
                out.loss.backward()
                return out.loss

            loss = opt.compute_gradient(closure)
        else:  # the shifted cross-entropy written out
            shifted = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], -100)], 1)
            inputs = {"input_ids": tokens, "attention_mask": batch["attention_mask"]}
            loss = make_rule(rule).compute_gradient(model, inputs, shifted, loss_fn="cross_entropy")
        grads[form] = (float(loss), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    for form in ("closure", "explicit"):
        assert grads[form][0] == pytest.approx(grads["batch"][0], rel=1e-6)
        for a, b in zip(grads[form][1], grads["batch"][1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- AMP, compile
@pytest.mark.parametrize("rule", ["sam", "func-sam", "logit-sam", "rwsam", "msam"])
def test_grad_scaler_and_autocast_take_the_rules_gradient(rule):
    """``compute_gradient(closure)`` with ``scaler.scale(loss).backward()`` in the closure, then
    ``scaler.step(opt)``: the same steps as without a scaler (scaling by 2^k is exact)."""
    x, y = (t.float() if t.is_floating_point() else t for t in batches(1)[0])
    params = {}
    for scaled in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        opt = SharpnessAwareOptimizer(
            model, "adamw", rule=make_rule(rule, **({"m": 4} if rule == "msam" else {})), lr=0.1
        )
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=scaled)

        def closure() -> Tensor:
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
                loss = opt.loss(out, y) if rule in ("rwsam", "msam") else F.cross_entropy(out, y)
            scaler.scale(loss).backward()
            return loss

        for _ in range(2):
            opt.compute_gradient(closure)
            scaler.step(opt)
            scaler.update()
        params[scaled] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(params[True], params[False], strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_compiled_models_train_with_every_kind_of_rule():
    x, y = (t.float() if t.is_floating_point() else t for t in batches(1)[0])
    for rule in ("func-sam", "rwsam"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        twin = copy.deepcopy(model)
        compiled = torch.compile(model)
        opt = SharpnessAwareOptimizer(compiled, "adamw", rule=rule, lr=0.1)
        reference = SharpnessAwareOptimizer(twin, "adamw", rule=rule, lr=0.1)

        def closure() -> Tensor:
            opt.zero_grad()
            loss = opt.loss(compiled(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        opt.step(inputs=x, targets=y)
        reference.step(inputs=x, targets=y)
        reference.step(inputs=x, targets=y)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class SharpnessTrainer(transformers.Trainer):
    """The documented ``training_step`` override (docs/optimizers.md)."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        opt = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps it
        return opt.compute_gradient(inputs=inputs)  # labels in the batch: the model's own loss


class ClosureTrainer(transformers.Trainer):
    """The documented fp16-ready override: a closure through the accelerator's backward."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        opt = getattr(self.optimizer, "optimizer", self.optimizer)

        def closure():
            loss = model(**inputs).loss
            self.accelerator.backward(loss)
            return loss.detach()

        return opt.compute_gradient(closure)


@pytest.mark.parametrize("trainer_class", [SharpnessTrainer, ClosureTrainer])
def test_a_hugging_face_trainer_trains_with_a_rule(tmp_path, trainer_class):
    """The Trainer clips between the rule's gradient and the base step, and its LR schedule writes
    into the base optimizer's groups; without the override it gets our one-line error."""
    gen = torch.Generator().manual_seed(0)
    data = []
    for _ in range(8):
        ids = torch.randint(0, 13, (6,), generator=gen)
        data.append({"input_ids": ids, "labels": ids})
    model = tiny_gpt2().float()
    opt = SharpnessAwareOptimizer(model, "adamw", rule="func-sam", lr=1e-3)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        max_grad_norm=1.0,
        disable_tqdm=True,
    )
    trainer = trainer_class(model=model, args=args, train_dataset=data, optimizers=(opt, None))
    trainer.train()
    assert opt.rule.step == 2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)  # the Trainer's linear schedule, last step
    logged = [h for h in trainer.state.log_history if "grad_norm" in h]
    assert len(logged) == 2 and all(h["loss"] > 0 for h in logged)
    plain = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=data,
        optimizers=(SharpnessAwareOptimizer(model, "adamw", lr=1e-3), None),
    )
    with pytest.raises(UserError, match="compute_gradient"):
        plain.train()
