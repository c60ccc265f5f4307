"""A small, exactly reproducible contrastive problem: two linear towers over integer-drawn inputs."""

from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F

GLOBAL_BATCH = 8
IN_DIM, EMBED_DIM = 6, 4
SCALE_NUMERATOR = 8  # inputs and weights are integers / 8: exact in every float format


def loss_problem(
    seed: int = 0,
) -> Tuple[List[torch.Tensor], Callable[[slice], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """(parameters, features(rows) -> (image features, text features, logit scale multiplier))."""
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        return (
            torch.randint(-SCALE_NUMERATOR, SCALE_NUMERATOR + 1, shape, generator=gen).float()
            / SCALE_NUMERATOR
        )

    images, texts = draw(GLOBAL_BATCH, IN_DIM), draw(GLOBAL_BATCH, IN_DIM)
    w_image = draw(IN_DIM, EMBED_DIM).requires_grad_()
    w_text = draw(IN_DIM, EMBED_DIM).requires_grad_()
    log_scale = torch.tensor(1.5, requires_grad=True)

    def features(rows: slice) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            F.normalize(images[rows] @ w_image, dim=-1),
            F.normalize(texts[rows] @ w_text, dim=-1),
            log_scale.exp(),
        )

    return [w_image, w_text, log_scale], features
