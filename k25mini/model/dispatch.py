"""Token dispatchers: where routed tokens meet their experts (torchtitan-style seam).

* :class:`LocalDispatcher`: every expert lives on this process; hand the tokens to the grouped experts.
* :class:`AllToAllDispatcher`: expert parallelism. The E experts are split into ``world`` contiguous blocks
  (rank r owns experts [r*E/world, (r+1)*E/world)). Each (token, slot) pair travels to the owner of its expert
  with ``all_to_all_single``, the owner runs its local experts with weight 1, the outputs travel back the same
  way, and the sender mixes them with its routing weights. Keeping the routing weights on the sender means their
  gradient never crosses the network; the all-to-all's backward is the reverse all-to-all.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from k25mini.model.experts import GroupedExperts

__all__ = ["LocalDispatcher", "AllToAllDispatcher", "all_to_all_single_autograd"]


class LocalDispatcher:
    """No communication: experts(x, topk_ids, topk_weights)."""

    def __call__(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                 experts: GroupedExperts) -> torch.Tensor:
        return experts(x, topk_ids, topk_weights)

    def __repr__(self) -> str:
        return "LocalDispatcher()"


class _AllToAllSingle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:  # noqa: D102
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: D102
        out_splits, in_splits = ctx.splits
        gx = g.new_empty((sum(in_splits), *g.shape[1:]))
        # the gradient retraces the forward route: what I received from rank r goes back to rank r
        dist.all_to_all_single(gx, g.contiguous(), in_splits, out_splits, group=ctx.group)
        return gx, None, None, None


def all_to_all_single_autograd(x: torch.Tensor, out_splits: list[int], in_splits: list[int],
                               group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Differentiable ``all_to_all_single`` along dim 0: rows [sum(in_splits), ...] -> [sum(out_splits), ...]."""
    return _AllToAllSingle.apply(x, list(out_splits), list(in_splits), group)


class AllToAllDispatcher:
    """Expert-parallel dispatch over ``group`` (default: the world). ``experts`` holds only this rank's E/world."""

    def __init__(self, num_experts: int, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("AllToAllDispatcher needs torch.distributed to be initialized (group)")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if num_experts % self.world:
            raise ValueError(
                f"num_experts ({num_experts}) must be divisible by the expert-parallel world size ({self.world})"
            )
        self.num_experts = num_experts
        self.num_local = num_experts // self.world

    def __call__(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                 experts: GroupedExperts) -> torch.Tensor:
        if experts.num_experts != self.num_local:
            raise ValueError(f"experts must hold this rank's {self.num_local} experts, got {experts.num_experts}")
        T, D = x.shape
        K = topk_ids.shape[1]
        E, El, W = self.num_experts, self.num_local, self.world
        flat = topk_ids.reshape(-1).long()
        order = torch.argsort(flat, stable=True)  # grouped by expert, hence by owner rank
        send_per_expert = torch.bincount(flat, minlength=E)  # [E] = [W, El] row-major
        recv_per_expert = torch.empty_like(send_per_expert)  # [W, El]: from rank r, for my local expert j
        dist.all_to_all_single(recv_per_expert, send_per_expert, group=self.group)
        in_splits = send_per_expert.view(W, El).sum(1).tolist()
        out_splits = recv_per_expert.view(W, El).sum(1).tolist()

        recv = all_to_all_single_autograd(x.index_select(0, order // K), out_splits, in_splits, self.group)
        # rows arrive per source rank, and inside each source block sorted by local expert
        local_ids = torch.repeat_interleave(torch.arange(El, device=x.device).repeat(W), recv_per_expert)
        ones = torch.ones(local_ids.shape[0], 1, dtype=x.dtype, device=x.device)
        y_recv = experts(recv, local_ids.unsqueeze(1), ones)
        if recv.shape[0] == 0:
            # nothing arrived, yet this rank must still join the backward all-to-all: keep recv in the graph
            y_recv = y_recv + 0 * recv.sum()
        y = all_to_all_single_autograd(y_recv, in_splits, out_splits, self.group)  # [T*K, D] in `order`

        inv = torch.empty_like(order)
        inv[order] = torch.arange(order.numel(), device=order.device)
        y = y.index_select(0, inv).view(T, K, D)
        return (topk_weights.to(y.dtype).unsqueeze(-1) * y).sum(1)

    def __repr__(self) -> str:
        return f"AllToAllDispatcher(world={self.world}, rank={self.rank}, local_experts={self.num_local})"
