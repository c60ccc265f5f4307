"""`clip embed SRC -o OUT`: L2-normalised CLIP features of a whole collection, in .npy shards.

    clip embed photos/ -o photos.clip                      # a folder, recursively
    clip embed pairs.csv -o pairs.clip --caption-column text
    clip embed "shards/{00000..00099}.tar" -o laion.clip     # webdataset shards, one shard per tar
    torchrun --nproc_per_node=4 -m clip embed photos/ -o photos.clip   # one process per GPU / CPU share

See clip/_collection/layout.py for what OUT holds. Rerunning the same command resumes: only shards without
their ``shard-NNNNN.json`` are computed. Under torchrun every rank lists SRC the same way and takes
every WORLD_SIZE-th shard; rank 0 writes run.json first and the manifest last (OUT must be one folder
that all ranks see, e.g. a shared filesystem across machines). With webdataset ``.tar`` shards, each
tar is one shard: resuming and the split over ranks go by tar.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .common import EXIT_OK, CommandFailure

DEFAULT_MODEL = "ViT-B/32"
DEFAULT_BATCH_SIZE = 256
DEFAULT_SHARD_SIZE = 8192
MAX_DEFAULT_WORKERS = 8
DTYPES = ("float16", "float32")

EPILOG = """\
OUT:
  images-NNNNN.npy   L2-normalised image features, one row per embedded item
  texts-NNNNN.npy    the captions' features, the same rows (with a caption column)
  manifest.json      the model, its SHA256, clip version, shards and their rows
  metadata.sqlite    path, caption, shard and row of every item (and tar, key, .json for tars)
  errors.tsv         images that could not be read, and why (they are skipped)
  run.json, shard-NNNNN.json   what the run is and which shards are done (for resuming)

Rerun the same command after a crash or Ctrl-C to finish: completed shards are kept.

examples:
  clip embed photos/ -o photos.clip                        every image under photos/, recursively
  clip embed pairs.csv -o pairs.clip --caption-column text --device cuda
  clip embed "shards/{00000..00099}.tar" -o laion.clip    img2dataset's webdataset shards (KEY.jpg,
                                                          KEY.txt caption, KEY.json), read in place

several processes or machines (torch.distributed; gloo on CPUs, nccl on GPUs):
  torchrun --nproc_per_node=8 -m clip embed SRC -o OUT
  torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
      -m clip embed SRC -o OUT          # on every machine; SRC and OUT on a shared filesystem
"""


def _parser() -> argparse.ArgumentParser:
    from .common import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="clip embed",
        description="Embed every image of a folder (or of a CSV/TSV's path column, with its captions, or "
        "of webdataset .tar shards) into L2-normalised CLIP features, written as .npy shards plus a "
        "manifest and an item table in OUT.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "src",
        metavar="SRC",
        nargs="+",
        help="a folder of images, a .csv / .tsv file with a path column, or webdataset .tar shards "
        '(several, or a brace pattern: "shards/{00000..00099}.tar")',
    )
    parser.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder (created; resumed)")
    add_model_arguments(parser, DEFAULT_MODEL)
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per encode_image call"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that decode and preprocess images while the model runs "
        f"(default: the CPUs available, at most {MAX_DEFAULT_WORKERS}; 0: in the main process)",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float16", help="dtype of the stored features")
    parser.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="items per shard (tars: one shard per tar)"
    )
    parser.add_argument("--path-column", default="path", help="CSV/TSV column of image paths (default: path)")
    parser.add_argument(
        "--caption-column", default=None, help="CSV/TSV column of captions (default: 'caption' if present)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: List[str]) -> int:
    """Run `clip embed` with `argv`; return the exit status."""
    from .common import run_command

    return run_command(
        "clip embed",
        _parser(),
        _run,
        argv,
        interrupted="finished shards are kept: rerun the same command to resume",
    )


def _positive(name: str, value: int) -> None:
    from .collection import CollectionError

    if value < 1:
        raise CollectionError(f"{name} must be at least 1, got {value}")


def _run(args: argparse.Namespace) -> int:
    from .collection import library_errors

    with library_errors():
        return _embed_run(args)


def _sources(args: argparse.Namespace) -> Tuple[List[Any], bool, List[Tuple[int, int]], int]:
    """The items to embed, whether they have captions, each shard's item range, and the shard size
    recorded in run.json (0: one shard per tar)."""
    from .._collection.tars import is_tar, list_tars
    from .collection import CollectionError, discover

    tars = [is_tar(src) for src in args.src]
    if any(tars):
        if not all(tars):
            raise CollectionError("SRC mixes .tar shards and other sources; embed them into separate OUTs")
        items, captions, bounds = list_tars(args.src)
        if not items:
            raise CollectionError(f"{args.src[0]}: the tars hold no samples")
        return items, captions, bounds, 0
    if len(args.src) > 1:
        raise CollectionError(
            f"{len(args.src)} SRC given; pass one folder or CSV/TSV file (several SRC are for .tar shards)"
        )
    items, captions = discover(args.src[0], args.path_column, args.caption_column)
    size = args.shard_size
    bounds = [(start, min(start + size, len(items))) for start in range(0, len(items), size)]
    return items, captions, bounds, size


def _embed_run(args: argparse.Namespace) -> int:
    from .. import __version__
    from .collection import RunInfo, check_out, items_digest, model_name, model_sha256, prepare_out
    from .common import load_model

    _positive("--batch-size", args.batch_size)
    _positive("--shard-size", args.shard_size)
    if args.workers is not None and args.workers < 0:
        from .collection import CollectionError

        raise CollectionError(f"--workers must be 0 or more, got {args.workers}")
    items, captions, bounds, shard_size = _sources(args)
    run = RunInfo(
        model=model_name(args.model),
        clip_version=__version__,
        dtype=args.dtype,
        shard_size=shard_size,
        n_items=len(items),
        items_sha256=items_digest(items),
        captions=captions,
        model_sha256=model_sha256(args.model),  # by content: a replaced checkpoint is another model
    )
    out = Path(args.out)
    group = _Group.start()
    try:
        resume = check_out(out, run, lambda: items_digest(_as_spelled(args)))
        device = args.device or group.default_device()
        model, preprocess = load_model(args.model, device, args.download_root, args.download)
        group.barrier()  # every rank has checked OUT before rank 0 writes into it
        if group.rank == 0:
            prepare_out(out, run)
        group.barrier()
        n_shards = len(bounds)
        if resume and group.rank == 0:
            print(f"clip embed: resuming in {out}", file=sys.stderr)
        _embed(args, model, preprocess, items, captions, out, bounds, group)
        group.barrier()
        if group.rank == 0:
            from .collection import write_manifest

            embedded, failed = write_manifest(out, run, items, bounds)
            if not embedded:
                raise CommandFailure(
                    f"no image could be read ({failed} tried), so nothing was embedded; "
                    f"{out / 'errors.tsv'} says why for each"
                )
            note = f"; {failed} could not be read (see {out / 'errors.tsv'})" if failed else ""
            print(f"clip embed: {embedded} images in {n_shards} shards in {out}{note}")
    finally:
        group.stop()
    return EXIT_OK


def _as_spelled(args: argparse.Namespace) -> List[Any]:
    """The items with their paths as a format-1 run listed them: below SRC as spelled (not resolved)."""
    from .collection import discover

    return discover(args.src[0], args.path_column, args.caption_column, absolute=False)[0]


class _Group:
    """This process's place under torchrun (RANK / WORLD_SIZE set), or a group of one."""

    def __init__(self, rank: int, world: int, local_rank: int) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @classmethod
    def start(cls) -> "_Group":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if world > 1:
            import torch
            import torch.distributed as dist

            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend=backend)
        return cls(rank, world, local_rank)

    def default_device(self) -> str:
        import torch

        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{self.local_rank}" if self.world > 1 else "cuda"

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def stop(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class _Images:
    """Items -> (index, preprocessed image or None, reason it failed or None); runs in the workers.
    A sample of a .tar is read by its offset in the tar; one found broken when listed fails as such."""

    def __init__(self, items: Sequence[Any], preprocess: Callable[[Any], Any]) -> None:
        self.items, self.preprocess = list(items), preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tuple[int, Any, Optional[str]]:
        from PIL import Image

        from .._collection.tars import read_member

        item = self.items[index]
        if item.problem is not None:
            return index, None, item.problem
        try:
            source = read_member(item) if item.tar is not None else item.path
            with Image.open(source) as image:
                image.load()
                return index, self.preprocess(image), None
        except Exception as exc:  # any broken file is reported, never fatal
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line for errors.tsv
            return index, None, reason


def _collate(batch: List[Tuple[int, Any, Optional[str]]]) -> Tuple[List[int], Any, List[Tuple[int, str]]]:
    import torch

    good = [(index, pixels) for index, pixels, _ in batch if pixels is not None]
    errors = [(index, reason) for index, pixels, reason in batch if pixels is None]
    pixels = torch.stack([p for _, p in good]) if good else None
    return [index for index, _ in good], pixels, errors


def _default_workers() -> int:
    """The CPUs available, shared among the processes torchrun started on this machine."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(cpus // max(local_processes, 1), MAX_DEFAULT_WORKERS))


def _embed(
    args: argparse.Namespace,
    model: Any,
    preprocess: Callable[[Any], Any],
    items: Sequence[Any],
    captions: bool,
    out: Path,
    bounds: Sequence[Tuple[int, int]],
    group: _Group,
) -> None:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ..clip import tokenize
    from .collection import shard_done, write_shard

    mine = [s for s in range(group.rank, len(bounds), group.world) if not shard_done(out, s)]
    batches: List[List[int]] = []
    last_batch_of: Dict[int, int] = {}  # batch number -> the shard it completes
    embed_dim = model.text_projection.shape[1]
    dtype = np.dtype(args.dtype)
    for shard in mine:
        indices = list(range(*bounds[shard]))
        if not indices:  # a tar without samples: an empty shard, done at once
            empty = np.zeros((0, embed_dim), dtype=dtype)
            write_shard(out, shard, [], empty, empty if captions else None, [], rank=group.rank)
            continue
        for start in range(0, len(indices), args.batch_size):
            batches.append(indices[start : start + args.batch_size])
        last_batch_of[len(batches) - 1] = shard
    if not batches:
        return
    device = next(model.parameters()).device
    workers = _default_workers() if args.workers is None else args.workers
    loader = DataLoader(
        _Images(items, preprocess),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    pending = sum(len(b) for b in batches)
    desc = "embedding" if group.world == 1 else f"embedding (rank {group.rank})"
    rows: List[int] = []
    image_parts: List[np.ndarray] = []
    text_parts: List[np.ndarray] = []
    errors: List[Tuple[int, str]] = []
    with (
        torch.no_grad(),
        tqdm(total=pending, unit="img", desc=desc, disable=args.no_progress, position=group.rank) as bar,
    ):
        for number, (indices, pixels, failed) in enumerate(loader):
            if pixels is not None:
                image_parts.append(
                    _unit(model.encode_image(pixels.to(device, non_blocking=True))).astype(dtype)
                )
                if captions:
                    tokens = tokenize([items[i].caption for i in indices], truncate=True).to(device)
                    text_parts.append(_unit(model.encode_text(tokens)).astype(dtype))
            rows.extend(indices)
            errors.extend(failed)
            bar.update(len(indices) + len(failed))
            if number in last_batch_of:
                empty = np.zeros((0, embed_dim), dtype=dtype)
                images = np.concatenate(image_parts) if image_parts else empty
                texts = (np.concatenate(text_parts) if text_parts else empty) if captions else None
                write_shard(out, last_batch_of[number], rows, images, texts, errors, rank=group.rank)
                rows, image_parts, text_parts, errors = [], [], [], []


def _unit(features: Any) -> Any:
    """Float32 rows scaled to unit length, as a numpy array on the CPU."""
    features = features.float()
    return (features / features.norm(dim=-1, keepdim=True)).cpu().numpy()
