"""One rank of the ClipLoss test: python tests/support/_ddp_loss_worker.py OUT_DIR.

For each (local_loss, gather_with_grad) in CONFIGS: ClipLoss on this rank's share of the global
batch of `loss_problem`, parameter gradients averaged over ranks (as DistributedDataParallel does);
rank 0 saves the mean loss and the gradients to OUT_DIR/result-L-G.pt.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from _loss_problem import GLOBAL_BATCH, loss_problem

from clip.loss import ClipLoss

CONFIGS = ((False, True), (True, True), (False, False))


def main() -> None:
    out_dir = Path(sys.argv[1])
    dist.init_process_group("gloo")
    for local_loss, with_grad in CONFIGS:
        run(out_dir, local_loss, with_grad)
    dist.destroy_process_group()


def run(out_dir: Path, local_loss: bool, with_grad: bool) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    share = GLOBAL_BATCH // world
    params, features = loss_problem()
    image_features, text_features, scale = features(slice(rank * share, (rank + 1) * share))
    loss = ClipLoss(local_loss=local_loss, gather_with_grad=with_grad)(image_features, text_features, scale)
    loss.backward()
    for param in params:
        dist.all_reduce(param.grad)
        param.grad /= world
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    if rank == 0:
        name = f"result-{int(local_loss)}-{int(with_grad)}.pt"
        torch.save({"loss": mean_loss, "grads": [p.grad for p in params]}, out_dir / name)


if __name__ == "__main__":
    main()
