"""Training on several processes or machines: PyTorch DistributedDataParallel, launched by torchrun.

    torchrun --standalone --nproc-per-node 2 -m aoiflow.cli train DATA --out RUN   # one machine
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m aoiflow.cli train DATA --out RUN    # on every machine

Without torchrun nothing here does anything and training is the one-process loop. Under it every
process joins one process group (gloo on CPUs, NCCL when there are GPUs) and ``aoiflow.train``
calls the hooks below. What stays the same as one process:

- the effective batch: every process builds the same global batch as one process would (same
  order, crops and augmentations from the seeded generator) and trains on its own rows of it
  (``shard``); DDP averages the gradients, each process's losses weighted by its share of the
  rows, so uneven splits give the gradient of the global batch mean;
- BatchNorm statistics over the whole global batch (``GlobalBatchNorm2d``; nn.SyncBatchNorm has no
  CPU kernels), so the forward pass is the one-process one, running statistics included;
- the losses in the history, the discriminator-restart decision and the validation loss are over
  all processes' rows;
- one run folder: rank 0 reads the checkpoint to resume from and hands it to the others, and only
  rank 0 writes checkpoints, history, config and the finished, calibrated model.

What differs: sums are added in another order, so weights agree with one process to float
rounding (about 1e-6 after a few epochs), not bit for bit. A global batch smaller than the number
of processes (the end of an epoch) is trained by every process whole; its gradient is the same,
its BatchNorm running variance uses n/(n-1) of the replicated count. Every process holds the
whole training set in memory, as one process does: each epoch's batches draw from all of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from aoiflow.train import TrainState

T = TypeVar("T")
# Rank 0 calibrates and writes the model while the others have left; collectives otherwise only
# wait for a slow step, so the default 30 minutes is ample.
TIMEOUT = timedelta(minutes=30)


def launched() -> bool:
    """True in a process started by torchrun (it sets RANK, WORLD_SIZE and the rendezvous)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or {"RANK", "WORLD_SIZE", "MASTER_ADDR"} <= set(os.environ)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """Where this process trains: its own GPU under NCCL, else the CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def threads_per_process() -> int:
    """CPU threads for each process: torchrun's OMP_NUM_THREADS (1 unless set), so N processes on
    N cores do not slow each other down."""
    return max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1))


@contextmanager
def processes(backend: str | None = None) -> Iterator[bool]:
    """Join torchrun's process group for the block (no-op outside torchrun); yields is_main()."""
    if not launched() or active():
        yield is_main()
        return
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield is_main()
    finally:
        dist.destroy_process_group()


def from_main(read: Callable[..., T], *args: Any) -> T:
    """``read(*args)`` on rank 0, its value (or its exception) handed to every process: the run
    folder needs to exist only where rank 0 runs."""
    if not active():
        return read(*args)
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", read(*args))
        except Exception as exc:  # re-raised everywhere, so no process waits for the others
            box[0] = ("error", exc)
    dist.broadcast_object_list(box, src=0, device=device() if device().type == "cuda" else None)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


# --- the networks ----------------------------------------------------------------------------

class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover every process's rows, through torch's
    differentiable all-reduce (the gradient flows back through the shared statistics as with one
    process). Same parameters and buffers as BatchNorm2d; eval mode is plain BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active() and world_size() > 1):
            return super().forward(x)
        xf, c = x.float(), x.shape[1]
        # one all-reduce of (sum, sum of squares, count), in float64 so E[x^2] - E[x]^2 keeps its
        # digits: every collective waits for the slowest process, so fewer is faster
        count = torch.full((1,), xf.numel() / c, dtype=torch.float64, device=xf.device)
        sums = _summed(torch.cat([xf.sum((0, 2, 3), dtype=torch.float64),
                                  (xf * xf).sum((0, 2, 3), dtype=torch.float64), count]))
        n = sums[-1]
        mean = sums[:c] / n
        var = sums[c : 2 * c] / n - mean * mean
        self._update_running(mean.detach().float(), var.detach().float(), n.item())
        y = (xf - mean.float().view(1, -1, 1, 1)) * torch.rsqrt(var.float() + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        if not self.track_running_stats:
            return
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var * (n / max(n - 1.0, 1.0)), factor)  # unbiased, as BatchNorm2d keeps


def _summed(t: torch.Tensor) -> torch.Tensor:
    """Sum over all processes, differentiable (its backward sums the gradients likewise)."""
    from torch.distributed import _functional_collectives as funcol  # where torch.distributed.nn points now

    return funcol.all_reduce(t, "sum", dist.group.WORLD)


def _swap_batchnorm(module: nn.Module, to: type[nn.BatchNorm2d]) -> None:
    """Replace every BatchNorm2d by one of class ``to`` holding the same Parameter and buffer
    objects, so optimisers and checkpoints keep referring to them."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and type(child) is not to:
            new = to(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            for key in ("weight", "bias"):
                setattr(new, key, getattr(child, key))
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                new.register_buffer(key, getattr(child, key))
            new.train(child.training)
            setattr(module, name, new)
        else:
            _swap_batchnorm(child, to)


class _Logits(nn.Module):
    """The discriminator's ``logits`` as ``forward``, which is what DDP wraps."""

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.discriminator = discriminator

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.discriminator.logits(x)


def _optimiser_to(opt: torch.optim.Optimizer, where: torch.device) -> None:
    for state in opt.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":  # Adam keeps its step count on the CPU
                state[key] = value.to(where)


def replicate(state: TrainState) -> None:
    """Before the epochs: global BatchNorm, the networks on this process's device and wrapped in
    DDP (which starts every process from rank 0's weights). No-op in one process."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not active():
        return
    where = device()
    ids = [where.index] if where.type == "cuda" else None
    for net in (state.generator, state.discriminator):
        _swap_batchnorm(net, GlobalBatchNorm2d)
        net.to(where)
    for opt in (state.opt_g, state.opt_d):
        _optimiser_to(opt, where)
    if state.generator_ema is not None:  # averaged on the device each step, validated there
        state.generator_ema.to(where)
    # Buffers are the same everywhere already (global statistics): no broadcast before each forward.
    state.g_step = DDP(state.generator, device_ids=ids, forward_sync_buffers=False)
    state.d_step = DDP(_Logits(state.discriminator), device_ids=ids, forward_sync_buffers=False)


def release(state: TrainState) -> None:
    """After the epochs: plain networks on the CPU again, for calibration and the saved model."""
    if state.g_step is None:
        return
    state.g_step = state.d_step = None
    for net in (state.generator, state.discriminator):
        _swap_batchnorm(net, nn.BatchNorm2d)
        net.to("cpu")
    for opt in (state.opt_g, state.opt_d):
        _optimiser_to(opt, torch.device("cpu"))
    if state.generator_ema is not None:
        state.generator_ema.to("cpu")


def same_everywhere(module: nn.Module) -> None:
    """Rank 0's parameters and buffers in every process (after the discriminator restarts)."""
    if active():
        for tensor in (*module.parameters(), *module.buffers()):
            dist.broadcast(tensor.data, src=0)


# --- the data --------------------------------------------------------------------------------

def shard(batch: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This process's rows of a global batch, on its device, and its loss weight (its share of
    the rows times the number of processes; 1 in one process)."""
    if not active():
        return batch, 1.0
    n, world = len(batch), world_size()
    if n < world:  # fewer rows than processes: each trains on all of them, the average is the same
        return batch.to(device()), 1.0
    local = batch.tensor_split(world)[rank()]
    return local.to(device()), len(local) * world / n


def batch_mean(losses: dict[str, torch.Tensor], share: float) -> dict[str, float]:
    """The losses of the whole global batch, from each process's loss on its rows and its share."""
    if not active():
        return {k: v.item() for k, v in losses.items()}
    values = torch.stack([v.detach().float() for v in losses.values()]) * share
    dist.all_reduce(values)
    return dict(zip(losses, (values / world_size()).tolist()))


def mean_over_rows(mean_of: Callable[[torch.Tensor], float], rows: torch.Tensor) -> float:
    """``mean_of(rows)`` (a per-row mean) with the rows split over the processes."""
    if not active():
        return mean_of(rows)
    part = rows[rank() :: world_size()]
    total = torch.tensor([mean_of(part.to(device())) * len(part) if len(part) else 0.0, float(len(part))],
                         dtype=torch.float64, device=device())
    dist.all_reduce(total)
    return float(total[0] / max(total[1].item(), 1.0))
