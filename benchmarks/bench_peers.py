"""Benchmark: ours beside the peers users choose between, open_clip and transformers' CLIPModel.

All three load the same ViT-B/32-size release archive (seeded random weights in the release's
layout, benchmarks/bench_load.py builds it): ours with `clip.load(path, device="cpu")`, open_clip
with `open_clip.load_openai_model(path, device="cpu")`, transformers with
`CLIPModel.from_pretrained(folder, attn_implementation="sdpa")` from a safetensors folder converted
once, untimed, from the archive's state dict (`hf_state_dict` below; the features of the three are
checked to agree). Each side runs in processes of its own (`--worker SIDE`); rounds alternate
between the sides and the best figure of each row counts.

Rows: load time; ours also with `clip.load(file, device="cpu", dtype=torch.float32, mmap=True)` from
an fp32 release-layout .safetensors file made once, untimed, by `clip convert --dtype float32`
(weights stay memory-mapped, as transformers keeps its safetensors weights); `encode_image` /
`encode_text` (transformers: `get_image_features` /
`get_text_features`) at batch 1 and 32 in fp32 and bf16 (`model.to(torch.bfloat16)`, bf16 inputs);
ours in int8 (`clip.quantize`); tokenizer throughput on the captions of bench_tokenizer (ours
`clip.tokenize`, open_clip `open_clip.tokenize`, transformers `CLIPTokenizerFast` built from our
vocabulary file), first pass (cold) and second pass (warm); batch preprocessing of the JPEG/PNG
files of bench_preprocess, decoding included (ours `clip.preprocess_batch`, open_clip its
`image_transform` image by image, transformers `CLIPImageProcessor` on the list).

Run (from the repository root): python -m benchmarks.bench_peers [--quick] [--sides ours open_clip
transformers] [--batches 1 32] [--rounds 2]
"""

import argparse
import copy
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

try:
    from benchmarks import _common
except ImportError:  # run by path as a worker process
    import _common  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
SIDES = ("ours", "open_clip", "transformers")
PEERS = ("open_clip", "transformers")
PEER_MODULES = {"open_clip": "open_clip", "transformers": "transformers"}
TOWERS = ("image", "text")
MODES = ("fp32", "bf16", "int8")  # int8: ours only
DEFAULT_BATCHES = (1, 32)
DEFAULT_ROUNDS = 2
DEFAULT_LOAD_REPEATS = 3
DEFAULT_CAPTIONS = 5_000
QUICK_CAPTIONS = 2_000
TOKENIZER_BATCH = 256
PREPROCESS_IMAGES = 64
N_PX = 224
CONTEXT_LENGTH = 77
FEATURE_CHECK_ITEMS = 4
HF_FOLDER = "ViT-B-32-random-hf"
FP32_FILE = "ViT-B-32-random-float32.safetensors"  # for ours with mmap=True
MIN_FEATURE_COSINE = 0.999  # the peers must compute the same model (fp32 vs fp32: ~1 - 1e-7)
# Goals (issue 16)
GOAL_VS_PEER = 1.0  # every row at least equal to every peer
GOAL_VS_PEER_FP32 = 0.97  # fp32 encode rows: equal within noise
GOAL_LOAD_VS_TRANSFORMERS = 1.5  # load at least 1.5x faster than transformers' safetensors load
GOAL_BF16_VS_FP32 = 0.95  # bf16 at least 0.95x our fp32 on every CPU
GOAL_INT8_VS_FP32 = 2.0  # int8 encode_image, batch 32, on CPUs with VNNI
GOAL_INT8_BATCH = 32
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
NAMED_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "avx512_vnni",
    "avx_vnni",
)


def cpu_flags() -> List[str]:
    """The flags of `NAMED_FLAGS` this CPU has (/proc/cpuinfo; empty where the OS does not say)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in NAMED_FLAGS if flag in present]
    except OSError:
        pass
    return []


# ------------------------------------------------------------------------------------------------
# transformers: the release layout converted to CLIPModel's (written here, from both layouts)


def hf_state_dict(state: Dict[str, Any], layers: Dict[str, int]) -> Dict[str, Any]:
    """A release-layout ViT CLIP state dict in transformers' CLIPModel names (new tensors; input kept)."""
    out: Dict[str, Any] = {"logit_scale": state["logit_scale"]}

    def tower(release: str, hf: str, count: int) -> None:
        for i in range(count):
            src, dst = f"{release}transformer.resblocks.{i}.", f"{hf}encoder.layers.{i}."
            q, k, v = state[src + "attn.in_proj_weight"].chunk(3, dim=0)
            qb, kb, vb = state[src + "attn.in_proj_bias"].chunk(3, dim=0)
            for name, weight, bias in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
                out[f"{dst}self_attn.{name}.weight"] = weight.clone()
                out[f"{dst}self_attn.{name}.bias"] = bias.clone()
            pairs = {
                "attn.out_proj": "self_attn.out_proj",
                "ln_1": "layer_norm1",
                "ln_2": "layer_norm2",
                "mlp.c_fc": "mlp.fc1",
                "mlp.c_proj": "mlp.fc2",
            }
            for ours, theirs in pairs.items():
                for leaf in ("weight", "bias"):
                    out[f"{dst}{theirs}.{leaf}"] = state[f"{src}{ours}.{leaf}"].clone()

    tower("", "text_model.", layers["text"])
    tower("visual.", "vision_model.", layers["vision"])
    out["text_model.embeddings.token_embedding.weight"] = state["token_embedding.weight"].clone()
    out["text_model.embeddings.position_embedding.weight"] = state["positional_embedding"].clone()
    out["vision_model.embeddings.class_embedding"] = state["visual.class_embedding"].clone()
    out["vision_model.embeddings.patch_embedding.weight"] = state["visual.conv1.weight"].clone()
    out["vision_model.embeddings.position_embedding.weight"] = state["visual.positional_embedding"].clone()
    for ours, theirs in (
        ("ln_final", "text_model.final_layer_norm"),
        ("visual.ln_pre", "vision_model.pre_layrnorm"),  # transformers' spelling
        ("visual.ln_post", "vision_model.post_layernorm"),
    ):
        for leaf in ("weight", "bias"):
            out[f"{theirs}.{leaf}"] = state[f"{ours}.{leaf}"].clone()
    out["text_projection.weight"] = state["text_projection"].t().contiguous()  # (D, E) -> (E, D)
    out["visual_projection.weight"] = state["visual.proj"].t().contiguous()
    return out


def _prepare_transformers(archive: Path, folder: Path) -> None:
    """Convert the archive once into a safetensors CLIPModel folder (not timed)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from clip._weights import read_state_dict
    from clip.model import CLIPDimensions

    state = {k: v.float() if v.is_floating_point() else v for k, v in read_state_dict(str(archive)).items()}
    dims = CLIPDimensions.from_state_dict(state)
    head_width = 64
    config = CLIPConfig(
        text_config={
            "vocab_size": dims.vocab_size,
            "hidden_size": dims.transformer_width,
            "intermediate_size": 4 * dims.transformer_width,
            "num_hidden_layers": dims.transformer_layers,
            "num_attention_heads": dims.transformer_heads,
            "max_position_embeddings": dims.context_length,
            "hidden_act": "quick_gelu",
            "projection_dim": dims.embed_dim,
            "eos_token_id": dims.vocab_size - 1,  # end-of-text: pooled at its first occurrence
        },
        vision_config={
            "hidden_size": dims.vision_width,
            "intermediate_size": 4 * dims.vision_width,
            "num_hidden_layers": dims.vision_layers,
            "num_attention_heads": dims.vision_width // head_width,
            "image_size": dims.image_resolution,
            "patch_size": dims.vision_patch_size,
            "hidden_act": "quick_gelu",
            "projection_dim": dims.embed_dim,
        },
        projection_dim=dims.embed_dim,
    )
    with torch.device("meta"):
        model = CLIPModel(config)
    layers = {"text": dims.transformer_layers, "vision": dims.vision_layers}
    missing, unexpected = model.load_state_dict(hf_state_dict(state, layers), strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"conversion to CLIPModel: missing {missing}, unexpected {unexpected}")
    for name, buffer in model.named_buffers():  # position_ids: not in the checkpoint
        if buffer.is_meta:
            parent, _, leaf = name.rpartition(".")
            length = buffer.shape[-1]
            model.get_submodule(parent).register_buffer(
                leaf, torch.arange(length).expand(1, -1), persistent=False
            )
    partial = Path(tempfile.mkdtemp(dir=folder.parent))
    model.save_pretrained(partial)
    os.replace(partial, folder)


# ------------------------------------------------------------------------------------------------
# the worker: one side, every row


class _Side:
    """One side's entry points: load, encoders, tokenizer, preprocessing."""

    def __init__(self, side: str, archive: Path, hf_folder: Path) -> None:
        self.side, self.archive, self.hf_folder = side, archive, hf_folder
        if side == "ours":
            import clip

            self.lib = clip
        elif side == "open_clip":
            import open_clip

            self.lib = open_clip
        else:
            import transformers

            self.lib = transformers

    def load(self) -> Any:
        if self.side == "ours":
            return self.lib.load(str(self.archive), device="cpu")[0]
        if self.side == "open_clip":
            return self.lib.load_openai_model(str(self.archive), device="cpu")
        return self.lib.CLIPModel.from_pretrained(str(self.hf_folder), attn_implementation="sdpa").eval()

    def encoder(self, model: Any, tower: str) -> Callable[[Any], Any]:
        if self.side != "transformers":
            return model.encode_image if tower == "image" else model.encode_text
        method = model.get_image_features if tower == "image" else model.get_text_features
        keyword = "pixel_values" if tower == "image" else "input_ids"

        def call(x: Any) -> Any:
            out = method(**{keyword: x})
            return out if hasattr(out, "dim") else out.pooler_output  # transformers 5: an output object

        return call

    def tokenizer(self) -> Callable[[List[str]], Any]:
        if self.side == "ours":
            # built here, untimed, as the peers' tokenizers are (open_clip's at import, transformers'
            # just below): the cold rows then time empty caches, not the build
            self.lib.clip.get_tokenizer()
            return lambda texts: self.lib.tokenize(texts, truncate=True)
        if self.side == "open_clip":
            return self.lib.tokenize
        # pad with id 0 ("!"), as the release does (transformers' default pads with end-of-text)
        fast = self.lib.CLIPTokenizerFast(vocab=_vocab(), merges=_merges(), pad_token="!")
        return lambda texts: fast(
            texts, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True, return_tensors="pt"
        )["input_ids"]

    def preprocessor(self) -> Callable[[List[Path]], Any]:
        import torch
        from PIL import Image

        if self.side == "ours":
            return lambda paths: self.lib.preprocess_batch(paths, N_PX)
        if self.side == "open_clip":
            transform = self.lib.image_transform(N_PX, is_train=False)
            return lambda paths: torch.stack([transform(Image.open(p)) for p in paths])
        from clip._preprocess import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        processor = self.lib.CLIPImageProcessor(
            size={"shortest_edge": N_PX},
            crop_size={"height": N_PX, "width": N_PX},
            image_mean=list(OPENAI_DATASET_MEAN),
            image_std=list(OPENAI_DATASET_STD),
        )

        def run(paths: List[Path]) -> Any:
            images = [Image.open(p).convert("RGB") for p in paths]
            return processor(images=images, return_tensors="pt")["pixel_values"]

        return run


def _vocab_lines() -> List[str]:
    with gzip.open(REPO / "clip" / "bpe_simple_vocab_16e6.txt.gz", "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges_count = 49152 - 256 - 2  # the release's merge count (as simple_tokenizer reads it)
    return lines[1 : merges_count + 1]


def _merges() -> List[Tuple[str, str]]:
    return [tuple(line.split()) for line in _vocab_lines()]


def _vocab() -> Dict[str, int]:
    from clip.simple_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols]
    symbols += ["".join(merge.split()) for merge in _vocab_lines()]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    return {symbol: index for index, symbol in enumerate(symbols)}


def _best_of(run: Callable[[], Any], passes: int) -> float:
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _median_load(load: Callable[[], Any], repeats: int) -> Tuple[float, Any]:
    """The median seconds of `repeats` calls of `load`, and the last model (each one is dropped
    before the next load, so that one model at a time is in memory)."""
    times, model = [], None
    for _ in range(repeats):
        model = None
        start = time.perf_counter()
        model = load()
        times.append(time.perf_counter() - start)
    return statistics.median(times), model


def _worker(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    side = _Side(args.worker, Path(args.archive), Path(args.hf_folder))
    out: Dict[str, Any] = {"side": args.worker, "rows": {}}
    rows = out["rows"]
    rows["load_s"], model = _median_load(side.load, args.load_repeats)
    if args.worker == "ours":  # weights left memory-mapped from an fp32 file
        del model

        def mapped() -> Any:
            return side.lib.load(args.fp32_file, device="cpu", dtype=torch.float32, mmap=True)[0]

        rows["load_mmap_s"], model = _median_load(mapped, args.load_repeats)
    model = model.float().eval()

    inputs = torch.load(args.inputs)
    features = {}
    with torch.no_grad():
        for mode in args.modes:
            if mode == "int8" and args.worker != "ours":
                continue
            if mode == "bf16":
                variant = copy.deepcopy(model).to(torch.bfloat16)
            elif mode == "int8":
                variant = side.lib.quantize(model)
            else:
                variant = model
            for tower in TOWERS:
                encode = side.encoder(variant, tower)
                x_all = inputs["images" if tower == "image" else "tokens"]
                if mode == "bf16" and tower == "image":
                    x_all = x_all.bfloat16()
                if mode == "fp32":
                    features[tower] = encode(x_all[:FEATURE_CHECK_ITEMS]).float()
                for batch in args.batches:
                    x = x_all[:batch]
                    encode(x)  # warm-up at the timed batch (ours in bf16: the one-off kernel choice)
                    seconds = _best_of(lambda f=encode, x=x: f(x), args.passes)
                    rows[f"{tower}/{mode}/{batch}"] = batch / seconds
            del variant
    torch.save(features, Path(args.outdir) / f"features-{args.worker}.pt")

    captions = json.loads(Path(args.captions).read_text(encoding="utf-8"))
    tokenize = side.tokenizer()
    for phase in ("cold", "warm"):
        start = time.perf_counter()
        for i in range(0, len(captions), TOKENIZER_BATCH):
            tokenize(captions[i : i + TOKENIZER_BATCH])
        rows[f"tokenizer/{phase}"] = len(captions) / (time.perf_counter() - start)

    paths = sorted(Path(args.images).iterdir())
    preprocess = side.preprocessor()
    preprocess(paths[:2])
    rows["preprocess"] = len(paths) / _best_of(lambda: preprocess(paths), args.passes)
    print(json.dumps(out))


# ------------------------------------------------------------------------------------------------
# the parent


def available_sides(sides: Sequence[str]) -> Dict[str, Optional[str]]:
    """side -> None if it can run here, else why not (a peer package not installed)."""
    import importlib.util

    return {
        side: None
        if side == "ours" or importlib.util.find_spec(PEER_MODULES[side]) is not None
        else f"{PEER_MODULES[side]} is not installed"
        for side in sides
    }


def _run_worker(side: str, options: Dict[str, Any]) -> Dict[str, Any]:
    env, _ = _common.ours_env()  # peers import our clip only for the conversion and the vocabulary
    env = _common.steady_malloc(env)  # the same allocator settings for every side
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side]
    for key in ("archive", "hf_folder", "fp32_file", "inputs", "captions", "images", "outdir"):
        command += [f"--{key.replace('_', '-')}", str(options[key])]
    command += ["--passes", str(options["passes"]), "--load-repeats", str(options["load_repeats"])]
    command += ["--modes", *options["modes"], "--batches", *map(str, options["batches"])]
    if options["threads"]:
        command += ["--threads", str(options["threads"])]
    done = subprocess.run(command, cwd=str(REPO), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} benchmark process failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(
    sides: Sequence[str] = SIDES,
    batches: Sequence[int] = DEFAULT_BATCHES,
    modes: Sequence[str] = MODES,
    rounds: int = DEFAULT_ROUNDS,
    passes: int = 2,
    load_repeats: int = DEFAULT_LOAD_REPEATS,
    captions: int = DEFAULT_CAPTIONS,
    threads: Optional[int] = None,
    workdir: Optional[str] = None,
) -> Dict[str, Any]:
    """Every row for every side that can run; the best of `rounds` alternating runs per row."""
    import torch

    from benchmarks import bench_encode, bench_load, bench_preprocess, bench_tokenizer

    work = Path(os.path.expanduser(workdir or bench_load.DEFAULT_WORKDIR))
    work.mkdir(parents=True, exist_ok=True)
    archive = bench_load.build_archive(work)
    skipped = {side: why for side, why in available_sides(sides).items() if why}
    running = [side for side in sides if side not in skipped]
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        scratch_dir = Path(scratch)
        options: Dict[str, Any] = {
            "archive": archive,
            "hf_folder": work / HF_FOLDER,
            "fp32_file": work / FP32_FILE,
            "inputs": scratch_dir / "inputs.pt",
            "captions": scratch_dir / "captions.json",
            "images": scratch_dir / "images",
            "outdir": scratch_dir,
            "passes": passes,
            "load_repeats": load_repeats,
            "modes": list(modes),
            "batches": list(batches),
            "threads": threads,
        }
        bench_encode.make_inputs(options["inputs"], max(batches))
        options["captions"].write_text(json.dumps(bench_tokenizer.make_captions(captions)), encoding="utf-8")
        options["images"].mkdir()
        bench_preprocess.make_images(options["images"], PREPROCESS_IMAGES)
        if "ours" in running and not options["fp32_file"].is_file():
            env, _ = _common.ours_env()
            convert = ["-m", "clip", "convert", str(archive), str(options["fp32_file"]), "--dtype", "float32"]
            subprocess.run([sys.executable, *convert], cwd=str(REPO), env=env, check=True)
        if "transformers" in running and not options["hf_folder"].is_dir():
            code = (
                "import sys; from pathlib import Path; from benchmarks.bench_peers import "
                "_prepare_transformers as prepare; prepare(Path(sys.argv[1]), Path(sys.argv[2]))"
            )
            env, _ = _common.ours_env()
            subprocess.run(
                [sys.executable, "-c", code, str(archive), str(options["hf_folder"])],
                cwd=str(REPO),
                env=env,
                check=True,
            )
        best: Dict[str, Dict[str, float]] = {side: {} for side in running}
        for _ in range(rounds):
            for side in [side for side in running if side not in skipped]:
                try:
                    figures = _run_worker(side, options)["rows"]
                except RuntimeError as error:  # one side failing leaves the others' figures
                    skipped[side] = f"failed: {str(error).strip().splitlines()[-1][:300]}"
                    print(error, file=sys.stderr)
                    continue
                for key, value in figures.items():
                    better = min if key.startswith("load") else max
                    best[side][key] = better(best[side].get(key, value), value)
        running = [side for side in running if side not in skipped]
        features = {side: torch.load(scratch_dir / f"features-{side}.pt") for side in running}
    agreement = {}
    for side in running:
        if side != "ours" and "ours" in features:
            agreement[side] = {
                tower: float(
                    torch.nn.functional.cosine_similarity(
                        features[side][tower], features["ours"][tower]
                    ).min()
                )
                for tower in features["ours"]
            }
    return {
        "sides": running,
        "skipped": skipped,
        "rows": best,
        "feature_min_cosine_to_ours": agreement,
        "cpu_flags": cpu_flags(),
        "vnni": any(flag in cpu_flags() for flag in VNNI_FLAGS),
        "batches": list(batches),
        "modes": list(modes),
        "rounds": rounds,
        "passes": passes,
        "captions": captions,
        "images": PREPROCESS_IMAGES,
        "malloc": _common.workers_malloc_note(),
    }


COLUMNS = (
    "Row",
    "Ours",
    "open_clip",
    "transformers",
    "Ours / open_clip",
    "Ours / transformers",
    "Ours / our fp32",
    "Goal",
    "Met",
)
UNITS = {"image": "img/s", "text": "texts/s"}
DASH = "–"


def _ratio_cells(
    rows: Dict[str, Dict[str, float]], key: str, peers: Sequence[str], invert: bool = False
) -> Dict:
    cells, ratios = {}, []
    for peer in PEERS:
        ours, theirs = rows.get("ours", {}).get(key), rows.get(peer, {}).get(key)
        if peer in peers and ours and theirs:
            ratio = theirs / ours if invert else ours / theirs
            ratios.append(ratio)
            cells[f"Ours / {peer}"] = f"{ratio:.2f}x" + (" faster" if invert else "")
    return {"cells": cells, "ratios": ratios}


def _met(ok: Optional[bool]) -> str:
    return "" if ok is None else ("yes" if ok else "**no**")


def table_rows(result: Dict[str, Any]) -> List[Dict[str, str]]:
    """The peers table: one row per figure, goals of issue 16 beside it."""
    rows, sides = result["rows"], result["sides"]
    peers = [side for side in sides if side in PEERS]
    out: List[Dict[str, str]] = []

    def values(key: str, fmt: Callable[[float], str]) -> Dict[str, str]:
        return {
            ("Ours" if side == "ours" else side): fmt(rows[side][key]) if key in rows.get(side, {}) else DASH
            for side in SIDES
        }

    load = _ratio_cells(rows, "load_s", peers, invert=True)
    transformers_ratio = None
    if "transformers" in peers and rows["ours"].get("load_s"):
        transformers_ratio = rows["transformers"]["load_s"] / rows["ours"]["load_s"]
    out.append(
        {
            "Row": "load ViT-B/32-size weights from disk (transformers: safetensors folder)",
            **values("load_s", lambda v: f"{v:.2f} s"),
            **load["cells"],
            "Goal": f"≥ {GOAL_VS_PEER:.0f}x every peer, ≥ {GOAL_LOAD_VS_TRANSFORMERS}x transformers",
            "Met": _met(
                None
                if not load["ratios"]
                else min(load["ratios"]) >= GOAL_VS_PEER
                and (transformers_ratio is None or transformers_ratio >= GOAL_LOAD_VS_TRANSFORMERS)
            ),
        }
    )
    mapped, theirs = rows.get("ours", {}).get("load_mmap_s"), rows.get("transformers", {}).get("load_s")
    if mapped:
        ratio = theirs / mapped if theirs and "transformers" in peers else None
        out.append(
            {
                "Row": "load, `mmap=True` from an fp32 .safetensors file (`clip convert --dtype float32`); "
                "transformers as above (its weights stay mapped too)",
                "Ours": f"{mapped:.2f} s",
                **({"transformers": f"{theirs:.2f} s"} if ratio else {}),
                **({"Ours / transformers": f"{ratio:.2f}x faster"} if ratio else {}),
                "Goal": f"≥ {GOAL_LOAD_VS_TRANSFORMERS}x transformers",
                "Met": _met(None if ratio is None else ratio >= GOAL_LOAD_VS_TRANSFORMERS),
            }
        )
    for tower in TOWERS:
        for mode in result["modes"]:
            for batch in result["batches"]:
                key = f"{tower}/{mode}/{batch}"
                if key not in rows.get("ours", {}):
                    continue
                unit = UNITS[tower]
                row = {
                    "Row": f"encode_{tower} ViT-B/32, {mode}, batch {batch}",
                    **values(key, lambda v, unit=unit: f"{v:.2f} {unit}"),
                }
                ratio = _ratio_cells(rows, key, peers)
                row.update(ratio["cells"])
                fp32 = rows["ours"].get(f"{tower}/fp32/{batch}")
                vs_fp32 = rows["ours"][key] / fp32 if fp32 and mode != "fp32" else None
                if vs_fp32 is not None:
                    row["Ours / our fp32"] = f"{vs_fp32:.2f}x"
                if mode == "fp32":
                    row["Goal"] = f"≥ {GOAL_VS_PEER_FP32}x every peer"
                    row["Met"] = _met(min(ratio["ratios"]) >= GOAL_VS_PEER_FP32 if ratio["ratios"] else None)
                elif mode == "bf16":
                    row["Goal"] = f"≥ {GOAL_VS_PEER:.0f}x every peer, ≥ {GOAL_BF16_VS_FP32}x our fp32"
                    row["Met"] = _met(
                        (not ratio["ratios"] or min(ratio["ratios"]) >= GOAL_VS_PEER)
                        and vs_fp32 is not None
                        and vs_fp32 >= GOAL_BF16_VS_FP32
                    )
                elif tower == "image" and batch == GOAL_INT8_BATCH:
                    row["Goal"] = f"≥ {GOAL_INT8_VS_FP32:.0f}x our fp32 on CPUs with VNNI"
                    ok = vs_fp32 is not None and vs_fp32 >= GOAL_INT8_VS_FP32
                    row["Met"] = _met(ok) if result["vnni"] or ok else "n/a (no VNNI here)"
                out.append(row)
    for phase in ("cold", "warm"):
        key = f"tokenizer/{phase}"
        ratio = _ratio_cells(rows, key, peers)
        out.append(
            {
                "Row": f"tokenizer, {phase} ({result['captions']:,} captions, batches of {TOKENIZER_BATCH}; "
                "1 thread)",
                **values(key, lambda v: f"{v:,.0f} captions/s"),
                **ratio["cells"],
                "Goal": f"≥ {GOAL_VS_PEER:.0f}x every peer",
                "Met": _met(min(ratio["ratios"]) >= GOAL_VS_PEER if ratio["ratios"] else None),
            }
        )
    ratio = _ratio_cells(rows, "preprocess", peers)
    out.append(
        {
            "Row": f"batch preprocessing, {result['images']} JPEG/PNG files → {N_PX} px, decoding included",
            **values("preprocess", lambda v: f"{v:.1f} img/s"),
            **ratio["cells"],
            "Goal": f"≥ {GOAL_VS_PEER:.0f}x every peer",
            "Met": _met(min(ratio["ratios"]) >= GOAL_VS_PEER if ratio["ratios"] else None),
        }
    )
    agreement = result["feature_min_cosine_to_ours"]
    if agreement:
        out.append(
            {
                "Row": f"same weights, same features: min cosine to ours (fp32, {FEATURE_CHECK_ITEMS} items "
                "per tower)",
                "Ours": "1",
                **{
                    peer: ", ".join(f"{tower} {value:.6f}" for tower, value in agreement[peer].items())
                    for peer in agreement
                },
                "Goal": f"≥ {MIN_FEATURE_COSINE}",
                "Met": _met(all(v >= MIN_FEATURE_COSINE for a in agreement.values() for v in a.values())),
            }
        )
    return out


def markdown(result: Dict[str, Any]) -> str:
    """The peers table in markdown, with the CPU flags that decide bf16 and int8 speed named."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    flags = result["cpu_flags"]
    named = ("avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni")
    lines = [
        "CPU flags: "
        + ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in named)
        + f" (all found: {' '.join(flags) or 'none'}). Best of {result['rounds']} alternating run(s) "
        f"per side, {result['passes']} timed pass(es) each. "
        f"Allocator: {result.get('malloc', 'not recorded')}."
        + "".join(f" {side}: skipped, {why}." for side, why in result["skipped"].items()),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in COLUMNS) + " |" for row in table_rows(result)]
    return "\n".join(lines)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    for hidden in (
        "--archive",
        "--hf-folder",
        "--fp32-file",
        "--inputs",
        "--captions",
        "--images",
        "--outdir",
    ):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--batches", nargs="+", type=int, default=list(DEFAULT_BATCHES))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="alternating runs per side")
    parser.add_argument("--passes", type=int, default=2, help="timed passes per row and run")
    parser.add_argument("--load-repeats", type=int, default=DEFAULT_LOAD_REPEATS)
    parser.add_argument("--captions-count", type=int, default=DEFAULT_CAPTIONS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="1 round, 1 pass, 2,000 captions")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parse_args(argv)
    if args.worker:
        _worker(args)
        return
    result = run(
        sides=args.sides,
        batches=args.batches,
        modes=args.modes,
        rounds=1 if args.quick else args.rounds,
        passes=1 if args.quick else args.passes,
        load_repeats=1 if args.quick else args.load_repeats,
        captions=QUICK_CAPTIONS if args.quick else args.captions_count,
        threads=args.threads,
    )
    print(markdown(result))


if __name__ == "__main__":
    main()
