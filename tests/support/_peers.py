"""The peer libraries that some tests use as oracles (test extras), or a skip that says why not."""

import pytest
import torch


def import_transformers():
    """`transformers` with its torch models available; otherwise the calling test is skipped.

    transformers releases need a recent torch (transformers 5 needs torch 2.6): on an older torch
    that this package still supports, it imports but offers no torch models.
    """
    transformers = pytest.importorskip(
        "transformers", reason="transformers is a test extra (the oracle here)"
    )
    if not transformers.utils.is_torch_available():
        pytest.skip(
            f"transformers {transformers.__version__} cannot use torch {torch.__version__} "
            "(it needs a newer torch); the transformers oracle tests need both"
        )
    return transformers
