"""One rank of the ClipLoss test: python tests/_ddp_loss_worker.py OUT_DIR LOCAL_LOSS GATHER_WITH_GRAD.

Computes ClipLoss on this rank's share of the global batch of `loss_problem`, averages the
parameter gradients over ranks (as DistributedDataParallel does) and saves loss and gradients.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loss_problem import GLOBAL_BATCH, loss_problem  # noqa: E402

from clip.loss import ClipLoss  # noqa: E402


def main() -> None:
    out_dir, local_loss, with_grad = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1"
    dist.init_process_group("gloo")
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
        torch.save({"loss": mean_loss, "grads": [p.grad for p in params]}, out_dir / "result.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
