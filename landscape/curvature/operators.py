"""Curvature operators of a :class:`~landscape.problem.Problem`: H, G and H_F = H - G.

All are exact full-data products, summed over the problem's batches with weight 1/N (N = number
of targets), so no result depends on the batch size.

Hessian-vector products, three exact routes (``method=``):

* ``"reuse"`` - build each batch's gradient graph once (``create_graph=True``) and keep it; every
  product is then one backward pass through it (PyHessian's trick). Costs the memory of all
  batches' graphs, so ``"auto"`` only picks it when the estimated graphs fit the memory budget.
  The graph is built on the problem's own copy of the parameters, so later in-place updates of
  the model cannot corrupt it (PyHessian's graph breaks in that case).
* ``"forward-over-reverse"`` - ``torch.func.jvp(torch.func.grad(f))``, ``vmap``-ed over blocks of
  vectors; streams batches with no retained state.
* ``"double-backward"`` - ``autograd.grad`` twice per batch; works wherever reverse mode does (e.g.
  the CPU SDPA attention kernels that forward-mode AD does not support).

Cost of one product in gradients (forward + backward = 3 forward passes F): the backward of a
retained gradient graph differentiates its forward and backward halves, about 6F = 2x a
gradient; forward-over-reverse recomputes the gradient with tangents (primal 3F + tangent 6F =
3x); double-backward rebuilds the graph (3F) and differentiates it (6F) = 3x, with more
overhead. Measured on GPT-2 shapes, 8 x 64 tokens, CPU: reuse 1.7-1.9x a gradient up to 3.3M
parameters, where forward-over-reverse costs 3.4-4.5x; on the 85M body (2 threads, a machine
shared with other jobs) two runs of ``python -m benchmarks scale`` disagreed on the order: reuse
2.6x and forward-over-reverse 1.2x, then 1.8x and 2.8x. ``"auto"`` therefore, when the graphs
fit the budget, times one product of both on the first chunk and
keeps the retained graphs unless forward-over-reverse is clearly (20 %) faster; otherwise, when forward-mode AD works on the model (probed on one sample), it times one product
of each streaming route on the first chunk and keeps the faster (on small models the
per-operation overhead of ``torch.func`` can make double-backward the faster one), else
double-backward. Never ``torch.func.hessian``/jacrev-of-jacrev: in torch 2.13 it is wrong
across LayerNorm.

GGN-vector products (Schraudolph 2002; Functional-SAM Eq. 8): G v = (1/N) sum_i J_i^T H_out,i J_i v,
with the output Hessian analytic for cross-entropy (diag(p) - p p^T) and mse (2 I); J is never
materialised. With ``"reuse"`` each batch keeps its output graph and a linear ``J^T u`` graph, so
J v is one backward through it (the double-vjp trick) and J^T (H_out J v) one more: no forward
pass per product (about 4F = 1.3x a gradient). ``"stream"`` runs, per vector, one forward pass
with dual numbers (``torch.autograd.forward_ad``: the outputs and J v together, 3F) that also
records the reverse graph, and one backward for J^T (H_out J v) (2F): about 1.7x a gradient;
blocks of three or more vectors share one forward pass with ``vmap``-ed tangents instead.

All products run on the problem's device; its data moves there one chunk at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from landscape.curvature.budget import release_free_memory
from landscape.curvature.linear_operator import LinearOperator, SumOperator
from landscape.curvature.memory import (
    _SavedBytes,
    default_budget,
    forward_over_reverse_bytes,
    shared_storages,
)
from landscape.errors import UserError
from landscape.problem import Batch, Problem, loss_sum, output_hessian_product

HVP_METHODS = ("auto", "reuse", "forward-over-reverse", "double-backward")
# forward-over-reverse replaces a retained graph that fits only when it is clearly faster.
_REUSE_MARGIN = 0.8
# ... and is timed against it only from this size of the first chunk's gradient graph. Below it
# the retained graph won every measurement (GPT-2 shapes of 0.1M-3.3M parameters, 8 x 64 tokens:
# 1.6-1.9x a gradient against 3.4-4.5x), and timing forward-over-reverse, torch.func's first call
# included, cost more than a whole small analysis (the tau split of the digits MLP: 2x slower).
_TIME_ROUTES_BYTES = 256 << 20
# ... and only on accelerators: on a CPU the retained graph won at every size measured (GPT-2
# shapes of 0.1M-85M parameters and a ResNet-18, quiet machine: 1.5-2.0x a gradient against
# 3.3-4.5x), and the two timed products were 6 % of lambda_max's time at 19M.
_TIME_ROUTES_ON_CPU = False
# Products whose output is at least this large return the allocator's free pages after them.
_TRIM_BYTES = 64 << 20
GGN_METHODS = ("auto", "reuse", "stream")


def default_memory_budget(device: torch.device | str = "cpu") -> int:
    """Bytes that ``"auto"`` lets retained graphs take: half of the default budget of the device
    (80 % of its free memory), the other half left to the estimators' vectors."""
    return default_budget(device) // 2


def _write_flat(out: Tensor, tensors: Sequence[Tensor]) -> None:
    """Copy ``tensors`` (parameter order) into the flat vector ``out`` (a view may be strided)."""
    offset = 0
    for t in tensors:
        size = t.numel()
        out[offset : offset + size].copy_(t.reshape(-1))
        offset += size


def _add_flat(total: Tensor, tensors: Sequence[Tensor]) -> None:
    """``total [k, n] += flatten(tensors)`` tensor by tensor (each ``[k, *shape]``), in place."""
    offset = 0
    k = total.shape[0]
    for t in tensors:
        size = t[0].numel() if t.dim() else 1
        total[:, offset : offset + size].add_(t.reshape(k, size))
        offset += size


class _CurvatureOperator(LinearOperator):
    """Shared plumbing: a problem, flat <-> dict conversion and column blocking."""

    def __init__(self, problem: Problem, block_size: int = 16) -> None:
        super().__init__(problem.num_params, problem.dtype, problem.device)
        self.problem = problem
        self.block_size = max(1, int(block_size))

    def _leaves(self) -> dict[str, Tensor]:
        # the problem's own copy of the parameters (never the model's), shared, not copied again
        return {n: p.detach().requires_grad_(True) for n, p in self.problem.params.items()}

    def _matmat(self, V: Tensor) -> Tensor:
        if V.shape[1] <= self.block_size:  # one block: its result is the output (no copy)
            out = self._block(V)
            if not out.is_contiguous():
                out = out.contiguous()
            return self._finish(out)
        out = torch.empty_like(V)
        self._matmat_into(V, out)
        return out

    def _matmat_into(self, V: Tensor, out: Tensor) -> None:
        for start in range(0, V.shape[1], self.block_size):
            stop = min(start + self.block_size, V.shape[1])
            self._block_into(V[:, start:stop], out[:, start:stop])
        self._finish(out)

    def _finish(self, out: Tensor) -> Tensor:
        """The summed product ``out`` (in place) as the mean over all targets of all processes."""
        if self.device.type == "cpu" and out.numel() * self.dtype.itemsize >= _TRIM_BYTES:
            release_free_memory()  # the product's freed activations back to the system
        # this process's batches give a partial sum; the full-data sum is over all processes
        return self.problem.all_reduce_(out).div_(self.problem.num_targets)

    def _block(self, V: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Sum over batches of the *summed* (not averaged) product with the columns of V."""
        raise NotImplementedError

    def _block_into(self, V: Tensor, out: Tensor) -> None:
        """:meth:`_block` written into ``out`` (a view of any dtype); routes that produce the
        product piece by piece override it to write the pieces there directly."""
        out.copy_(self._block(V))


class HessianOperator(_CurvatureOperator):
    """The Hessian H = grad^2 L(theta) of the full-data mean loss.

    Args:
        problem: the model, loss and data.
        method: ``"auto"``, ``"reuse"``, ``"forward-over-reverse"`` or ``"double-backward"``.
            ``"auto"`` keeps the retained gradient graphs when they fit the budget (on an
            accelerator, from a 256 MiB graph, forward-over-reverse replaces them when one timed
            product says it is clearly faster; on a CPU the graphs won at every size measured)
            and otherwise takes the faster streaming route, timed on the first chunk.
        block_size: columns per vmapped block (forward-over-reverse).
        memory_budget: bytes that ``"auto"`` lets retained graphs take, with one product's
            transient (default: :func:`default_memory_budget` of the problem's device).
    """

    def __init__(
        self,
        problem: Problem,
        method: str = "auto",
        block_size: int = 16,
        memory_budget: int | None = None,
    ) -> None:
        super().__init__(problem, block_size)
        if method not in HVP_METHODS:
            raise UserError(f"unknown HVP method '{method}' (choose from {', '.join(HVP_METHODS)})")
        self.requested_method = method
        self._graphs: list[tuple[dict[str, Tensor], tuple[Tensor, ...]]] | None = None
        # Model outputs of the retained graphs (reuse route): a GGN operator built with
        # ``GGNOperator(problem, hessian=H)`` linearises the model on them without a new forward.
        self._outputs: list[Tensor] | None = None
        self.route_seconds: dict[str, float] = {}
        budget = default_memory_budget(problem.device) if memory_budget is None else memory_budget
        if method == "auto":
            method = self._choose_method(budget)
        elif method == "reuse":
            self._build_graphs()
        self.method = method

    def _choose_method(self, budget: int) -> str:
        probe = _SavedBytes(shared_storages(self.problem))
        with probe:
            leaves, grads, outputs = self._gradient_graph(self.problem.batches[0])
        # every batch's graph with its outputs and gradient, plus one product's transient (about
        # one graph again): the memory model of landscape.curvature.memory
        per_batch = probe.bytes + outputs.numel() * outputs.element_size() + self.n * outputs.element_size()
        if per_batch * len(self.problem.batches) + probe.bytes <= budget:
            self._graphs, self._outputs = [(leaves, grads)], [outputs]
            # timing forward-over-reverse next to the first retained graph must fit the budget too
            # (on the 85M GPT-2 body it needs 4x the graph); when it does not, the graphs stay
            timed = per_batch + forward_over_reverse_bytes(probe.bytes, self.n * outputs.element_size())
            worth_timing = (
                probe.bytes >= _TIME_ROUTES_BYTES
                and timed <= budget
                and (self.device.type != "cpu" or _TIME_ROUTES_ON_CPU)
            )
            if worth_timing and self._forward_mode_works() and self._forward_beats_reuse():
                self._graphs, self._outputs = None, None
                return "forward-over-reverse"
            self._build_graphs()
            return "reuse"
        del leaves, grads, outputs
        if not self._forward_mode_works():
            return "double-backward"
        return self._fastest_streaming_route()

    def _forward_beats_reuse(self) -> bool:
        """Time one single-vector product through the first chunk's retained graph and one by
        forward-over-reverse on the same chunk; forward-over-reverse is kept only when it takes at most ``_REUSE_MARGIN`` of the reuse time (a clear win, so
        that the choice does not flip between runs near the crossover). The retained graph wins
        on small models (measured 1.7x against 4.5x a gradient on a 0.1M GPT-2); on an 85M GPT-2
        body (2 CPU threads, shared machine) two runs gave 2.6x against 1.2x and 1.8x against
        2.8x, so the order is measured where it runs. The timings are kept in ``route_seconds``."""
        assert self._graphs is not None
        first = self.problem.batches[:1]
        v = torch.zeros(self.n, 1, dtype=self.dtype, device=self.device)
        leaves, grads = self._graphs[0]
        runs = {
            "reuse": lambda: self._grad_of_grad(leaves, grads, v, retain=True),
            "forward-over-reverse": lambda: self._block_forward_over_reverse(v, first),
        }
        timings = self._time_routes(runs)
        return timings["forward-over-reverse"] <= _REUSE_MARGIN * timings["reuse"]

    def _fastest_streaming_route(self) -> str:
        """Time one single-vector product of each streaming route on the first chunk and keep the
        faster: forward-over-reverse wins on large models (measured 3.2x against 4.7x a gradient
        on an 85M GPT-2 body), double-backward can win on small ones, where the per-operation
        overhead of ``torch.func`` dominates. The timings are kept in ``route_seconds``."""
        first = self.problem.batches[:1]
        v = torch.zeros(self.n, 1, dtype=self.dtype, device=self.device)
        timings = self._time_routes(
            {
                "forward-over-reverse": lambda: self._block_forward_over_reverse(v, first),
                "double-backward": lambda: self._block_double_backward(v, first),
            }
        )
        return min(timings, key=timings.__getitem__)

    def _time_routes(self, runs: dict[str, Callable[[], Any]]) -> dict[str, float]:
        """Seconds of one call of each route (device synchronised around it), kept in ``route_seconds``."""
        timings = {}
        for route, run in runs.items():
            _synchronize(self.device)
            start = time.perf_counter()
            run()
            _synchronize(self.device)
            timings[route] = time.perf_counter() - start
            if self.device.type == "cpu" and self.n * self.dtype.itemsize >= _TRIM_BYTES:
                # a timed product's freed activations back to the system: left in the heap, they
                # stay resident under the Krylov basis allocated next (85M GPT-2 body: 1 GB more)
                release_free_memory()
        self.route_seconds = timings
        return timings

    def _gradient_graph(self, batch: Batch) -> tuple[dict[str, Tensor], tuple[Tensor, ...], Tensor]:
        """Leaves, the batch's summed-loss gradient WITH its graph, and the model outputs."""
        leaves = self._leaves()
        batch = self.problem.device_batch(batch)
        outputs = self.problem.outputs(leaves, batch.inputs)
        loss = loss_sum(outputs, batch.targets, self.problem.loss)
        grads = torch.autograd.grad(loss, [leaves[n] for n in self.problem.param_names], create_graph=True)
        return leaves, grads, outputs

    def _build_graphs(self) -> None:
        graphs = self._graphs or []
        outputs = self._outputs or []
        for batch in self.problem.batches[len(graphs) :]:
            leaves, grads, z = self._gradient_graph(batch)
            graphs.append((leaves, grads))
            outputs.append(z)
        self._graphs, self._outputs = graphs, outputs

    def gradient(self) -> Tensor:
        """The full-data gradient grad L (flat), as ``problem.gradient()`` computes it.

        With retained graphs (``"reuse"``) it is read off them for free: they were built by
        differentiating the loss, so no forward or backward pass is needed (tau_* needs the
        gradient, one HVP and one GGN product; this saves the gradient's passes).
        """
        if self._graphs is None:
            return self.problem.gradient()
        total = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        for _, grads in self._graphs:
            total += self.problem.flatten([g.detach() for g in grads])
        return self.problem.all_reduce_(total) / self.problem.num_targets

    def loss_value(self) -> float:
        """The full-data mean loss L, as ``problem.loss_value()`` computes it.

        With retained graphs (``"reuse"``) it is read off their model outputs: the loss function
        only, no forward pass. Otherwise it is ``problem.loss_value()``.
        """
        if self._graphs is None or self._outputs is None:
            return self.problem.loss_value()
        problem = self.problem
        with torch.no_grad():
            return problem.mean_loss(
                loss_sum(outputs.detach(), batch.targets.to(self.device), problem.loss)
                for batch, outputs in zip(problem.batches, self._outputs, strict=True)
            )

    def _forward_mode_works(self) -> bool:
        """Whether forward-over-reverse runs on this model, tried on one sample (cheap at any size)."""
        first = self.problem.batches[0]
        one = Batch(_head(first.inputs, 1), first.targets[:1], 0, 1)
        try:
            v = torch.zeros(self.n, 1, dtype=self.dtype, device=self.device)
            self._block_forward_over_reverse(v, [one])
            return True
        except (NotImplementedError, RuntimeError):
            return False

    def _block(self, V: Tensor) -> Tensor:
        if self.method == "reuse":
            return self._block_reuse(V)
        if self.method == "forward-over-reverse":
            return self._block_forward_over_reverse(V, self.problem.batches)
        return self._block_double_backward(V)

    def _grad_of_grad(
        self,
        leaves: dict[str, Tensor],
        grads: tuple[Tensor, ...],
        V: Tensor,
        retain: bool,
        out: Tensor | None = None,
        add: bool = False,
    ) -> Tensor:
        """Backward of the gradient graph with each column of ``V``; written into (or, with
        ``add``, added to) ``out`` tensor by tensor as the pieces come out of the backward pass."""
        names = self.problem.param_names
        if out is None:
            out = torch.empty_like(V)
        for j in range(V.shape[1]):
            vdict = self.problem.unflatten(V[:, j])
            keep = retain or j < V.shape[1] - 1
            hv = torch.autograd.grad(
                grads, [leaves[n] for n in names], [vdict[n] for n in names], retain_graph=keep
            )
            if add:
                _add_flat(out[:, j].unsqueeze(0), [h.unsqueeze(0) for h in hv])
            else:
                _write_flat(out[:, j], hv)
            del hv
        return out

    def _block_reuse(self, V: Tensor, out: Tensor | None = None) -> Tensor:
        """Through the retained graphs: the first chunk's product written into ``out``, each
        later chunk's added to it piece by piece."""
        assert self._graphs is not None
        out = torch.empty_like(V) if out is None else out
        for index, (leaves, grads) in enumerate(self._graphs):
            self._grad_of_grad(leaves, grads, V, retain=True, out=out, add=index > 0)
        return out

    def _block_into(self, V: Tensor, out: Tensor) -> None:
        if self.method == "reuse":
            self._block_reuse(V, out)
        else:
            out.copy_(self._block(V))

    def _block_double_backward(self, V: Tensor, batches: list[Batch] | None = None) -> Tensor:
        total = torch.zeros_like(V)
        for batch in self.problem.batches if batches is None else batches:
            leaves, grads, _ = self._gradient_graph(batch)
            total += self._grad_of_grad(leaves, grads, V, retain=False)
        return total

    def _block_forward_over_reverse(self, V: Tensor, batches: list[Batch]) -> Tensor:
        problem = self.problem
        params = {n: p.detach() for n, p in problem.params.items()}
        tangents = problem.unflatten(V.T.contiguous())  # each [k, *shape]
        total: Tensor | None = None
        for host_batch in batches:
            batch = problem.device_batch(host_batch)

            def batch_loss(p: dict[str, Tensor], batch: Batch = batch) -> Tensor:
                return problem.batch_loss_sum(p, batch)

            grad_fn = torch.func.grad(batch_loss)

            def hvp(t: dict[str, Tensor], grad_fn: Any = grad_fn) -> dict[str, Tensor]:
                return torch.func.jvp(grad_fn, (params,), (t,))[1]

            parts = torch.func.vmap(hvp)(tangents)  # each [k, *shape]
            if total is None:  # the first chunk's product is the running sum
                total = problem.flatten(parts)
            else:  # added in place, tensor by tensor: no flat copy of the chunk's product
                _add_flat(total, [parts[n] for n in problem.param_names])
            del parts
        if total is None:
            return torch.zeros_like(V)
        return total.T

    def diagonal_block_matmat(self, block: slice, V: Tensor) -> Tensor | None:
        """``H[block, block] @ V`` by a backward pass confined to the block; ``None`` where unsupported.

        For a block made of whole parameter tensors, on the routes that differentiate a gradient
        graph (``reuse``, ``double-backward``), the product is the backward of only those tensors'
        gradients, with the vector as their cotangent, with respect to only those tensors. It is
        the same quantity as the block of a full product (``H_bb v_b``: the other cotangents are
        zero and their outputs are not asked for), but the autograd engine skips every node that
        does not lead from those gradients to those tensors, which for the upper layers is most of
        the graph (about 3.6x fewer seconds over the built-in transformer's 28 tensors). Per-layer
        lambda_max (Lanczos on each block) is the user. Counted as ``V.shape[1]`` products.
        """
        if self.method not in ("reuse", "double-backward"):
            return None
        V = V.to(device=self.device, dtype=self.dtype)
        start, stop, _ = block.indices(self.n)
        offsets = self.problem.offsets
        if start >= stop or start not in offsets or stop not in offsets:
            return None
        first, last = offsets.index(start), offsets.index(stop)
        names = self.problem.param_names[first:last]
        shapes = self.problem.shapes[first:last]
        sizes = [offsets[i + 1] - offsets[i] for i in range(first, last)]
        out = torch.zeros_like(V)
        batches = self._graphs if self.method == "reuse" else None
        for index in range(len(self.problem.batches)):
            if batches is not None:
                leaves, grads = batches[index]
            else:
                leaves, grads, _ = self._gradient_graph(self.problem.batches[index])
            wanted = [(g, k) for k, g in enumerate(grads[first:last]) if g.requires_grad]
            if not wanted:  # these gradients do not depend on any parameter: the block is zero
                continue
            inputs = [leaves[n] for n in names]
            for j in range(V.shape[1]):
                pieces = [
                    piece.view(shape) for piece, shape in zip(V[:, j].split(sizes), shapes, strict=True)
                ]
                keep = batches is not None or j < V.shape[1] - 1
                hv = torch.autograd.grad(
                    [g for g, _ in wanted],
                    inputs,
                    [pieces[k] for _, k in wanted],
                    retain_graph=keep,
                    allow_unused=True,
                )
                out[:, j] += torch.cat(
                    [
                        torch.zeros(size, dtype=V.dtype, device=V.device) if h is None else h.reshape(-1)
                        for h, size in zip(hv, sizes, strict=True)
                    ]
                )
        self.products += V.shape[1]
        return self.problem.all_reduce_(out) / self.problem.num_targets

    def release(self) -> None:
        """Drop retained graphs (memory); later products fall back to streaming routes."""
        self._graphs = None
        self._outputs = None
        if self.method == "reuse":
            self.method = "double-backward"


class GGNOperator(_CurvatureOperator):
    """The generalized Gauss-Newton matrix G = (1/N) sum_i J_i^T H_out,i J_i (Functional-SAM Eq. 8).

    ``method="reuse"`` keeps per-batch output graphs (two backward passes per product, no forward);
    ``"stream"`` recomputes them per product with ``torch.func`` (jvp, output Hessian, vjp).

    ``hessian``: a :class:`HessianOperator` of the same problem that holds retained graphs
    (``"reuse"``); the GGN then linearises the model on that operator's forward passes instead of
    running its own (same values, one forward pass per batch less; ``"auto"`` then reuses).
    """

    def __init__(
        self,
        problem: Problem,
        method: str = "auto",
        block_size: int = 16,
        memory_budget: int | None = None,
        hessian: HessianOperator | None = None,
    ) -> None:
        super().__init__(problem, block_size)
        self._dual_works: bool | None = None
        if method not in GGN_METHODS:
            raise UserError(f"unknown GGN method '{method}' (choose from {', '.join(GGN_METHODS)})")
        self._graphs: list[tuple[dict[str, Tensor], Tensor, Tensor, Tensor]] | None = None
        budget = default_memory_budget(problem.device) if memory_budget is None else memory_budget
        shared = hessian is not None and hessian.problem is problem and hessian._outputs is not None
        if shared and method in ("auto", "reuse"):
            assert hessian is not None and hessian._graphs is not None and hessian._outputs is not None
            # The Hessian's graphs already fit the budget and hold the forward graph; the
            # linear J^T u graph added here is about one backward pass more.
            self._graphs = [
                self._linearise(leaves, z)
                for (leaves, _), z in zip(hessian._graphs, hessian._outputs, strict=True)
            ]
            method = "reuse"
        elif method == "auto":
            probe = _SavedBytes(shared_storages(problem))
            with probe:
                graph = self._linearisation(problem.batches[0])
            if probe.bytes * (len(problem.batches) + 1) <= budget:
                self._graphs = [graph]
                method = "reuse"
            else:
                method = "stream"
        if method == "reuse":
            graphs = self._graphs or []
            for batch in problem.batches[len(graphs) :]:
                graphs.append(self._linearisation(batch))
            self._graphs = graphs
        self.method = method

    def _linearisation(self, batch: Batch) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        """Leaves, outputs z (with graph), dummy u and J^T u (graph linear in u) for one batch."""
        leaves = self._leaves()
        return self._linearise(leaves, self.problem.outputs(leaves, self.problem.device_batch(batch).inputs))

    def _linearise(
        self, leaves: dict[str, Tensor], z: Tensor
    ) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        """Add the linear ``J^T u`` graph to outputs ``z`` computed (with graph) from ``leaves``."""
        u = torch.zeros_like(z, requires_grad=True)
        jtu = torch.autograd.grad(z, [leaves[n] for n in self.problem.param_names], u, create_graph=True)
        return leaves, z, u, self.problem.flatten(jtu)

    def _block(self, V: Tensor) -> Tensor:
        if self.method == "reuse":
            return self._block_reuse(V)
        return self._block_stream(V)

    def _block_reuse(self, V: Tensor) -> Tensor:
        assert self._graphs is not None
        names = self.problem.param_names
        total = torch.zeros_like(V)
        for (leaves, z, u, jtu), host_batch in zip(self._graphs, self.problem.batches, strict=True):
            batch = self.problem.device_batch(host_batch)
            zd = z.detach()
            for j in range(V.shape[1]):
                # J v = d<J^T u, v>/du: one backward through the linear J^T u graph.
                (jv,) = torch.autograd.grad(jtu, u, V[:, j], retain_graph=True)
                hjv = output_hessian_product(zd, batch.targets, jv, self.problem.loss)
                jt = torch.autograd.grad(z, [leaves[n] for n in names], hjv, retain_graph=True)
                total[:, j] += self.problem.flatten(jt)
        return total

    def _block_stream(self, V: Tensor) -> Tensor:
        if V.shape[1] <= 2 and self._dual_works is not False:
            try:
                out = torch.stack([self._column_dual(V[:, j]) for j in range(V.shape[1])], dim=1)
                self._dual_works = True
                return out
            except (NotImplementedError, RuntimeError):
                if self._dual_works:  # it worked before: a genuine error
                    raise
                self._dual_works = False
        return self._block_stream_vmap(V)

    def _column_dual(self, v: Tensor) -> Tensor:
        """G v summed over batches: one dual-number forward pass (outputs and J v together, with
        the reverse graph recorded on the primal) and one backward per batch."""
        problem = self.problem
        names = problem.param_names
        tangents = problem.unflatten(v)
        total = torch.zeros_like(v)
        for host_batch in problem.batches:
            batch = problem.device_batch(host_batch)
            leaves = self._leaves()
            with forward_ad.dual_level():
                duals = {n: forward_ad.make_dual(leaves[n], tangents[n]) for n in names}
                z, jv = forward_ad.unpack_dual(problem.outputs(duals, batch.inputs))
                if jv is None:  # outputs do not depend on the parameters
                    continue
                jv = jv.detach()
            hjv = output_hessian_product(z.detach(), batch.targets, jv, problem.loss)
            grads = torch.autograd.grad(z, [leaves[n] for n in names], hjv, allow_unused=True)
            total += problem.flatten(
                [torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(names, grads, strict=True)]
            )
        return total

    def _block_stream_vmap(self, V: Tensor) -> Tensor:
        problem = self.problem
        params = {n: p.detach() for n, p in problem.params.items()}
        tangents = problem.unflatten(V.T.contiguous())
        total = torch.zeros(V.shape[1], V.shape[0], dtype=V.dtype, device=V.device)
        for host_batch in problem.batches:
            batch = problem.device_batch(host_batch)

            def f(p: dict[str, Tensor], batch: Batch = batch) -> Tensor:
                return problem.outputs(p, batch.inputs)

            z, vjp_fn = torch.func.vjp(f, params)
            zd = z.detach()

            def jvp(t: dict[str, Tensor], f: Any = f) -> Tensor:
                return torch.func.jvp(f, (params,), (t,))[1]

            try:
                jv = torch.func.vmap(jvp)(tangents)
            except (NotImplementedError, RuntimeError):
                jv = torch.stack(
                    [
                        self._jvp_double_vjp(f, params, {n: t[i] for n, t in tangents.items()})
                        for i in range(V.shape[1])
                    ]
                )
            hjv = output_hessian_product(zd, batch.targets, jv, problem.loss)
            jt = torch.func.vmap(vjp_fn)(hjv)[0]
            total += problem.flatten(jt)
        return total.T

    def _jvp_double_vjp(self, f: Any, params: dict[str, Tensor], t: dict[str, Tensor]) -> Tensor:
        """J t by the double-vjp trick (reverse mode only): d/du <J^T u, t> = J t."""
        leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        z = f(leaves)
        u = torch.zeros_like(z, requires_grad=True)
        names = self.problem.param_names
        jtu = torch.autograd.grad(z, [leaves[n] for n in names], u, create_graph=True)
        (jv,) = torch.autograd.grad(jtu, u, [t[n] for n in names])
        return jv

    def release(self) -> None:
        """Drop retained graphs (memory); later products stream."""
        self._graphs = None
        self.method = "stream"


def functional_hessian_operator(
    problem: Problem,
    hessian: HessianOperator | None = None,
    ggn: GGNOperator | None = None,
) -> LinearOperator:
    """The functional Hessian H_F = H - G = (1/N) sum_i sum_k [grad_f l_i]_k grad^2 f^k(x_i)
    (Functional-SAM Eq. 8; the "nonlinear modelling error" of Dauphin et al. 2024)."""
    H = hessian if hessian is not None else HessianOperator(problem)
    G = ggn if ggn is not None else GGNOperator(problem)
    return SumOperator([(1.0, H), (-1.0, G)])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _head(inputs: Any, k: int) -> Any:
    if isinstance(inputs, dict):
        return {key: v[:k] for key, v in inputs.items()}
    return inputs[:k]


class BlockOperator(LinearOperator):
    """The diagonal block A[idx, idx] of an operator for a slice of the flat parameter vector
    (per-layer Hessians: e.g. the largest eigenvalue of one weight matrix's Hessian block)."""

    def __init__(self, op: LinearOperator, block: slice) -> None:
        start, stop, _ = block.indices(op.n)
        super().__init__(stop - start, op.dtype, op.device)
        self.op, self.start, self.stop = op, start, stop

    def _matmat(self, V: Tensor) -> Tensor:
        # an operator that can confine the product to the block (HessianOperator on whole
        # parameter tensors) does so; otherwise the block of a full product
        confined = getattr(self.op, "diagonal_block_matmat", None)
        if confined is not None:
            out = confined(slice(self.start, self.stop), V)
            if out is not None:
                return out
        full = torch.zeros(self.op.n, V.shape[1], dtype=V.dtype, device=V.device)
        full[self.start : self.stop] = V
        return self.op.matmat(full)[self.start : self.stop]
