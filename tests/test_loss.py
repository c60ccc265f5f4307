"""clip.loss: the contrastive loss by hand, and ClipLoss on 2 gloo ranks vs 1 process."""

import math

import pytest
import torch
from _distributed import run_ranks
from _loss_problem import GLOBAL_BATCH, loss_problem

from clip.loss import ClipLoss, contrastive_loss

# Two gloo ranks sum gradients in another order than one process: fp32 rounding of ~10 terms of
# magnitude <= 10 leaves differences of a few 1e-7; 1e-5 (relative and absolute) is far above that
# and far below any wrong weighting (a missing rank or a factor of 2 changes gradients by > 10%).
DIST_TOL = 1e-5
WORLD = 2


def _hand_loss(logits):
    """The paper's loss on a list-of-lists matrix, with math.log/exp only."""
    n = len(logits)

    def ce(rows):
        return sum(math.log(sum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(rows)) / n

    columns = [[logits[r][c] for r in range(n)] for c in range(n)]
    return (ce(logits) + ce(columns)) / 2


def test_contrastive_loss_matches_a_hand_computation():
    logits = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.25], [1.5, -0.5, 3.0]]
    tensor = torch.tensor(logits, dtype=torch.float64)
    got = contrastive_loss(tensor, tensor.t())
    assert got.item() == pytest.approx(_hand_loss(logits), rel=1e-12)
    # 2x2 in closed form: each CE row is log(1 + e^(off - diag))
    two = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert contrastive_loss(two, two.t()).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-12)


def test_contrastive_loss_is_symmetric_and_checks_shapes():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(-4, 5, (5, 5), generator=gen).double()
    assert contrastive_loss(logits, logits.t()) == contrastive_loss(logits.t(), logits)
    with pytest.raises(ValueError, match="square"):
        contrastive_loss(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="shape of logits_per_image"):
        contrastive_loss(torch.zeros(2, 2), torch.zeros(3, 3))


def test_clip_loss_equals_contrastive_loss_of_the_model_logits():
    _, features = loss_problem()
    image, text, scale = features(slice(None))
    logits = scale * image @ text.t()
    assert torch.equal(ClipLoss()(image, text, scale), contrastive_loss(logits, logits.t()))
    with pytest.raises(ValueError, match="same shape"):
        ClipLoss()(image, text[:3], scale)


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    """The worker's results for every configuration, from one launch of 2 gloo ranks."""
    out = tmp_path_factory.mktemp("ddp-loss")
    run_ranks(["tests/support/_ddp_loss_worker.py", str(out)], WORLD)
    return out


def _single_process():
    params, features = loss_problem()
    loss = ClipLoss()(*features(slice(None)))
    loss.backward()
    return loss.detach(), [p.grad for p in params]


@pytest.mark.slow  # two fresh interpreters importing torch: seconds alone, a minute on a loaded machine
@pytest.mark.parametrize(
    "local_loss, with_grad",
    [(False, True), (True, True), (False, False)],
    ids=["global-gather_with_grad", "local_loss-gather_with_grad", "global-no_grad_gather"],
)
def test_two_gloo_ranks_match_one_process_on_the_global_batch(two_rank_results, local_loss, with_grad):
    assert GLOBAL_BATCH % WORLD == 0
    result = torch.load(two_rank_results / f"result-{int(local_loss)}-{int(with_grad)}.pt")
    loss, grads = _single_process()
    torch.testing.assert_close(result["loss"], loss, rtol=DIST_TOL, atol=DIST_TOL)
    w_image, w_text, log_scale = result["grads"]
    # gather_with_grad: gradients averaged over ranks are the single-process ones. Without it only a
    # rank's own features get gradients: the towers' averaged gradients are 1/world of them, the
    # logit scale's (computed whole on every rank) are equal.
    tower_factor = 1.0 if with_grad else 1.0 / WORLD
    torch.testing.assert_close(w_image, grads[0] * tower_factor, rtol=DIST_TOL, atol=DIST_TOL)
    torch.testing.assert_close(w_text, grads[1] * tower_factor, rtol=DIST_TOL, atol=DIST_TOL)
    torch.testing.assert_close(log_scale, grads[2], rtol=DIST_TOL, atol=DIST_TOL)
    assert grads[0].abs().max() > 1e-3  # the comparison is not between zeros
