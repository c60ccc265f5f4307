"""`clip train`: fine-tune a CLIP, or train one from scratch, on a CSV/TSV of image-caption pairs.

    clip train --train-data pairs.csv --model ViT-B/32 --epochs 2 --lr 1e-5 --warmup 50
    torchrun --nproc_per_node=2 -m clip train -- --train-data pairs.csv --model ViT-B/32 ...

Flags are named as in open_clip's training script. The work is `clip.train.train`.
"""

import argparse
import logging
import sys
from typing import List

from .common import EXIT_OK, CommandFailure, UsageError, run_command, weights_file

__all__ = ["main"]

END_OF_LAUNCHER_OPTIONS = "--"
INTERRUPTED = "the checkpoints saved so far are kept; continue with --resume latest and the same --logs"

EPILOG = """\
data:
  A CSV/TSV file whose first line names the columns; --csv-img-key names the image-path column
  (relative paths: the file's folder, then the working directory) and --csv-caption-key the
  caption column. Rows with an empty caption, a missing file or an unreadable image (including
  one too large to decode safely) are counted and skipped; a file none of whose images can be
  read is refused. A validation file may have a "label" column: the epoch line then shows zero-shot
  top-1 accuracy over its distinct labels (each label's text is its prompt); otherwise
  image-to-text and text-to-image recall@1.

precision:
  fp32      everything in float32
  amp       autocast (float16 on CUDA with a gradient scaler; bfloat16 on the CPU), fp32 weights
  amp_bf16  autocast to bfloat16, fp32 weights, no scaler

output (rank 0 only under torchrun):
  LOGS/out.log, and LOGS/checkpoints/epoch_N.pt every --save-frequency epochs and at the end;
  clip.load reads them. Each checkpoint is written whole or not at all, and nothing is created
  before the first one or the first log line. Ctrl-C keeps the checkpoints saved so far.

one folder per run:
  A LOGS folder that already holds a run (out.log or a checkpoint) is refused. For a new run,
  pass another --logs; to continue that run where it stopped, --resume latest (or --resume
  LOGS/checkpoints/epoch_N.pt). A checkpoint from another folder resumes into a new --logs.

weights (--model):
  A released model is read from the cache (--download-root, else $CLIP_CACHE_DIR, else
  ~/.cache/clip) and downloaded only with --download (or CLIP_ALLOW_DOWNLOAD=1).

examples:
  clip train --train-data train.csv --val-data val.csv --model ViT-B/32 --epochs 5 \\
      --batch-size 128 --lr 1e-5 --warmup 100 --precision amp
  torchrun --nproc_per_node=4 -m clip train -- --train-data train.csv --model RN50 --logs runs/a
      (the -- keeps torchrun from reading --logs as its own --logs-specs)
  clip train --train-data shapes.csv --model-config tiny.json --epochs 20 --lr 1e-3
"""


def _parser() -> argparse.ArgumentParser:
    from ..train import PRECISIONS, TrainConfig

    d = TrainConfig(train_data="")
    p = argparse.ArgumentParser(
        prog="clip train",
        description="Fine-tune a CLIP (or train one from scratch) on image-caption pairs in a CSV/TSV file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--train-data", required=True, metavar="FILE", help="CSV/TSV of training pairs")
    p.add_argument("--val-data", metavar="FILE", help="CSV/TSV of validation pairs (optional)")
    p.add_argument(
        "--csv-img-key", default=d.csv_img_key, help=f"image path column (default: {d.csv_img_key})"
    )
    p.add_argument(
        "--csv-caption-key", default=d.csv_caption_key, help=f"caption column (default: {d.csv_caption_key})"
    )
    p.add_argument(
        "--csv-separator", default=None, help="column separator (default: ',' for .csv, else a tab)"
    )
    p.add_argument("--model", help="a released model name or a checkpoint file clip.load reads")
    p.add_argument(
        "--download-root",
        default=None,
        metavar="DIR",
        help="cache directory of released weights (default: $CLIP_CACHE_DIR, else ~/.cache/clip)",
    )
    p.add_argument(
        "--download", action="store_true", help="download a released --model missing from the cache"
    )
    p.add_argument(
        "--model-config",
        metavar="FILE.json",
        help="train from scratch: JSON of clip.model.CLIPDimensions fields",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"(default: {d.epochs})")
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"per process (default: {d.batch_size})"
    )
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default: {d.lr})")
    p.add_argument("--wd", type=float, default=d.wd, help=f"AdamW weight decay (default: {d.wd})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"linear warmup steps (default: {d.warmup})")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision, help=f"(default: {d.precision})")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--lock-image", action="store_true", help="freeze the image tower")
    p.add_argument("--lock-text", action="store_true", help="freeze the text tower")
    p.add_argument(
        "--workers", type=int, default=d.workers, help=f"data loader processes (default: {d.workers})"
    )
    p.add_argument(
        "--save-frequency",
        type=int,
        default=d.save_frequency,
        help="save every N epochs (and after the last)",
    )
    p.add_argument(
        "--resume", metavar="FILE", help='checkpoint to continue from, or "latest" (the last one in --logs)'
    )
    p.add_argument(
        "--logs",
        default=d.logs,
        metavar="DIR",
        help=f"the run's log and checkpoint folder; one holding a run needs --resume (default: {d.logs})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"(default: {d.seed})")
    return p


def main(argv: List[str]) -> int:
    """Parse `argv`, train, return the exit status."""
    # `torchrun ... -m clip train -- FLAGS`: the -- keeps torchrun's parser off our flags (it
    # rejects --logs as an abbreviation of its --logs-specs); this command takes no positionals
    argv = [arg for arg in argv if arg != END_OF_LAUNCHER_OPTIONS]
    return run_command("clip train", _parser(), _run, argv, interrupted=INTERRUPTED)


def _run(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, check_logs, read_model_config, train

    fields = vars(args)
    download, download_root = fields.pop("download"), fields.pop("download_root")
    config = TrainConfig(**fields)
    try:  # the inputs a user can fix, checked before anything is loaded or written
        config.validate()
        check_logs(config.logs, config.resume)
        if config.model_config is not None:
            read_model_config(config.model_config)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if config.model is not None:
        config.model = weights_file(config.model, download_root, download)
    log = logging.getLogger("clip.train")
    handler = logging.StreamHandler(sys.stdout)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        train(config)
    except (ValueError, RuntimeError, OSError) as exc:
        raise CommandFailure(str(exc)) from exc
    finally:
        log.removeHandler(handler)
    return EXIT_OK
