"""Code patterns of projects built on `import clip`, run unchanged against whichever `clip` is importable.

tests/data/make_downstream_golden.py runs every pattern against the original (the oracle) and stores
what each returns; tests/test_downstream.py runs the same functions against this package and compares.
Each pattern is written here from what such projects do (the project named in its docstring), not
copied from them. Torch (and, for one pattern, transformers) only: this module imports neither
package by name at import time; `run` is given the `clip` module to use.

Models are the tiny test configurations of tests/support/_model_factory.py, saved with `torch.save` and
loaded through `clip.load(path)`; every other input is drawn with `torch.randint` from a seeded
generator, so both sides see bit-identical inputs.
"""

import copy
import gzip
import hashlib
import importlib.util
import math
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
VIT_SEED, RN_SEED = 21, 22
IMAGE_SEED_OFFSET = 1000
CAPTIONS = ["a diagram", "a dog", "a cat"]
LONG_CAPTION = "a person walks forward, turns around slowly and then sits down on a small wooden chair"

Outputs = Dict[str, Any]


def load_factory() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "_clip_downstream_model_factory", HERE / "_model_factory.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ints(shape: tuple, seed: int, low: int = -16, high: int = 17, scale: float = 16.0) -> torch.Tensor:
    """Small exact floats (k / scale) from an integer draw: the same bits on every CPU."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=gen).float() / scale


class Env:
    """What every pattern gets: the `clip` module under test, checkpoint files, inputs."""

    def __init__(self, clip: ModuleType, tmp: Path, hub_load: Callable[..., Any]) -> None:
        self.clip = clip
        self.tmp = tmp
        self.hub_load = hub_load  # torch.hub.load on this repository, or the release's hubconf rules
        self.factory = load_factory()
        self.files: Dict[str, Path] = {}
        for config, seed in (("tiny-vit", VIT_SEED), ("tiny-rn", RN_SEED)):
            path = tmp / f"{config}.pt"
            torch.save(self.factory.make_state_dict(config, seed), path)
            self.files[config] = path
        self.images = self.factory.make_images(32, VIT_SEED + IMAGE_SEED_OFFSET, 2)
        self.rn_images = self.factory.make_images(64, RN_SEED + IMAGE_SEED_OFFSET, 2)

    def load(self, config: str = "tiny-vit") -> Any:
        return self.clip.load(str(self.files[config]), device="cpu", jit=False)


# ------------------------------------------------------------------------------------------------
# the patterns


def zero_shot(env: Env) -> Outputs:
    """The README's zero-shot classification, both tower kinds (most projects)."""
    out = {}
    for config, images in (("tiny-vit", env.images), ("tiny-rn", env.rn_images)):
        model, _ = env.load(config)
        text = env.clip.tokenize([f"a photo of {c}" for c in CAPTIONS])
        with torch.no_grad():
            image_features = model.encode_image(images)
            text_features = model.encode_text(text)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
            logits = model.logit_scale.exp() * image_features @ text_features.T
            out[f"{config}/probs"] = logits.softmax(dim=-1)
            out[f"{config}/forward"] = model(images, text)[0]
    return out


def manual_vit_forward(env: Env) -> Outputs:
    """shap-e / point-e: every patch token's features, through the visual tower's parts by hand."""
    model, _ = env.load()
    visual = model.visual
    with torch.no_grad():
        x = visual.conv1(env.images.type(model.dtype))  # (N, width, grid, grid)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (N, grid**2, width)
        cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)
        x = visual.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = visual.ln_post(x) @ visual.proj  # (N, grid**2 + 1, embed)
    return {"tokens": x}


def coop_prompt_learning(env: Env) -> Outputs:
    """CoOp: `_MODELS`, `_download`, `build_model`, learned context vectors through the text path."""
    clip = env.clip
    names = list(clip.clip._MODELS)
    data = env.files["tiny-vit"].read_bytes()
    root = env.tmp / "coop-cache"
    root.mkdir(exist_ok=True)
    (root / "tiny.pt").write_bytes(data)
    url = f"https://example.invalid/clip/models/{hashlib.sha256(data).hexdigest()}/tiny.pt"
    model_path = clip.clip._download(url, str(root))  # present and verified: no network
    try:
        jit_model = torch.jit.load(model_path, map_location="cpu").eval()
        state_dict = None
    except RuntimeError:
        state_dict = torch.load(model_path, map_location="cpu")
    model = clip.clip.build_model(state_dict or jit_model.state_dict()).float()
    for p in model.parameters():
        p.requires_grad_(False)

    n_ctx = 4
    width = model.ln_final.weight.shape[0]
    ctx = nn.Parameter(_ints((n_ctx, width), seed=31, scale=64.0))
    prompts = [" ".join(["X"] * n_ctx) + f" {c}." for c in CAPTIONS]
    tokens = torch.cat([clip.tokenize(p) for p in prompts])
    with torch.no_grad():
        embedding = model.token_embedding(tokens).type(model.dtype)
    prefix, suffix = embedding[:, :1, :], embedding[:, 1 + n_ctx :, :]
    x = torch.cat([prefix, ctx.unsqueeze(0).expand(len(prompts), -1, -1), suffix], dim=1)
    x = x + model.positional_embedding.type(model.dtype)
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = model.ln_final(x).type(model.dtype)
    features = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection
    features.square().sum().backward()
    return {"names": names, "features": features.detach(), "ctx_grad": ctx.grad}


def dalle2_hook_and_normalize(env: Env) -> Outputs:
    """DALLE2-pytorch: per-token text encodings from a forward hook on `ln_final`, Normalize's stats."""
    model, preprocess = env.load()
    captured: List[torch.Tensor] = []
    handle = model.ln_final.register_forward_hook(lambda module, inputs, output: captured.append(output))
    text = env.clip.tokenize(CAPTIONS)
    with torch.no_grad():
        text_embed = model.encode_text(text)
    handle.remove()
    encodings = captured[0].permute(1, 0, 2) if captured[0].shape[0] != text.shape[0] else captured[0]
    normalize = preprocess.transforms[-1]
    return {
        "text_embed": text_embed,
        "encodings_head": encodings[:, :8],  # the first tokens of each caption, (N, 8, width)
        "encodings_mean": encodings.mean(dim=1),
        "mask": text != 0,
        "mean": torch.tensor(normalize.mean),
        "std": torch.tensor(normalize.std),
    }


def stylegan_nada_slicing(env: Env) -> Outputs:
    """StyleGAN-nada: the PIL-free part of `preprocess` (`transforms[:2] + transforms[4:]`) on tensors."""
    from torchvision import transforms

    model, preprocess = env.load()
    to_clip = transforms.Compose(
        [transforms.Normalize(mean=[-1.0, -1.0, -1.0], std=[2.0, 2.0, 2.0])]
        + preprocess.transforms[:2]
        + preprocess.transforms[4:]
    )
    generated = _ints((2, 3, 48, 40), seed=32, low=-64, high=65, scale=64.0)  # a generator's [-1, 1]
    pixels = to_clip(generated)
    with torch.no_grad():
        features = model.encode_image(pixels)
    return {"pixels": pixels[:, :, ::4, ::4], "features": features}  # every 4th pixel: a small golden


def clipseg_activations(env: Env) -> Outputs:
    """clipseg: the visual tower by hand at another resolution, attention from the block's weights."""
    model, _ = env.load()
    visual = model.visual
    images = env.factory.make_images(48, VIT_SEED + 7, 2)
    patch = visual.conv1.kernel_size[0]
    activations = []
    with torch.no_grad():
        x = visual.conv1(images)
        grid = x.shape[-1]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1)
        pos = visual.positional_embedding
        side = round(math.sqrt(pos.shape[0] - 1))
        spatial = pos[1:].T.reshape(1, pos.shape[1], side, side)
        spatial = F.interpolate(spatial, (grid, grid), mode="bilinear", align_corners=False)
        pos = torch.cat([pos[:1], spatial.reshape(pos.shape[1], grid * grid).T])
        x = visual.ln_pre(x + pos).permute(1, 0, 2)  # (L, N, D)
        for block in visual.transformer.resblocks:
            attn = block.attn
            y = block.ln_1(x)
            q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            seq, batch, width = q.shape
            heads = attn.num_heads
            q = q.reshape(seq, batch * heads, attn.head_dim).transpose(0, 1) * attn.head_dim**-0.5
            k = k.reshape(seq, batch * heads, attn.head_dim).transpose(0, 1)
            v = v.reshape(seq, batch * heads, attn.head_dim).transpose(0, 1)
            weights = torch.bmm(q, k.transpose(1, 2)).softmax(dim=-1)
            y = torch.bmm(weights, v).transpose(0, 1).reshape(seq, batch, width)
            x = x + F.linear(y, attn.out_proj.weight, attn.out_proj.bias)
            x = x + block.mlp(block.ln_2(x))
            activations.append(x[0])  # the class token, (N, D)
    return {"patch": torch.tensor(patch), "activations": torch.stack(activations)}


def mdm_fp16_short_context(env: Env) -> Outputs:
    """motion-diffusion-model: `convert_weights`, then 20-token texts padded back to 77."""
    clip = env.clip
    model, _ = env.load()
    clip.model.convert_weights(model)
    context_length = 20 + 2
    texts = [LONG_CAPTION, "a man jumps"]
    tokens = clip.tokenize(texts, context_length=context_length, truncate=True)
    padding = torch.zeros(tokens.shape[0], 77 - context_length, dtype=tokens.dtype)
    tokens = torch.cat([tokens, padding], dim=1)
    with torch.no_grad():
        features = model.encode_text(tokens).float()
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    return {"tokens": tokens.long(), "features": features, "dtypes": dtypes}


def attention_maps(env: Env) -> Outputs:
    """Attention maps per head: the blocks' `attn` called with need_weights=True (interpretability)."""
    model, _ = env.load()
    visual = model.visual
    out: Dict[str, Any] = {}
    with torch.no_grad():
        x = visual.conv1(env.images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding).permute(1, 0, 2)
        maps, averaged = [], []
        for block in visual.transformer.resblocks:
            y = block.ln_1(x)
            _, per_head = block.attn(y, y, y, need_weights=True, average_attn_weights=False)
            _, mean = block.attn(y, y, y, need_weights=True)
            maps.append(per_head)
            averaged.append(mean)
            x = block(x)
        out["visual_per_head"] = torch.stack(maps)  # (layers, N, H, L, L)
        out["visual_mean"] = torch.stack(averaged)

        text = env.clip.tokenize(CAPTIONS[:2])
        eot = text.argmax(dim=-1)
        x = (model.token_embedding(text) + model.positional_embedding).permute(1, 0, 2)
        bool_mask = torch.ones(77, 77, dtype=torch.bool).triu(1)  # True: may not attend (torch's)
        rows, bool_rows = [], []
        for block in model.transformer.resblocks:
            y = block.ln_1(x)
            _, w = block.attn(
                y, y, y, need_weights=True, average_attn_weights=False, attn_mask=block.attn_mask
            )
            _, wb = block.attn(y, y, y, need_weights=True, average_attn_weights=False, attn_mask=bool_mask)
            rows.append(w[torch.arange(2), :, eot])  # the end-of-text token's row, (N, H, L)
            bool_rows.append(wb[torch.arange(2), :, eot])
            x = block(x)
        out["text_eot_rows"] = torch.stack(rows)
        out["text_eot_rows_bool_mask"] = torch.stack(bool_rows)
    return out


class LoRAMultiheadAttention(nn.Module):
    """A rank-r adapter on the query and value projections of a frozen nn.MultiheadAttention."""

    def __init__(self, base: nn.MultiheadAttention, rank: int, seed: int) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        width = base.embed_dim
        self.scale = 2.0 / rank
        self.q_down = nn.Parameter(_ints((rank, width), seed=seed, scale=64.0))
        self.q_up = nn.Parameter(_ints((width, rank), seed=seed + 1, scale=64.0))
        self.v_down = nn.Parameter(_ints((rank, width), seed=seed + 2, scale=64.0))
        self.v_up = nn.Parameter(_ints((width, rank), seed=seed + 3, scale=64.0))

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = True,
        attn_mask: Any = None,
        **kwargs: Any,
    ) -> Any:
        base = self.base
        width = base.embed_dim
        zeros = torch.zeros(width, width, dtype=query.dtype)
        delta = torch.cat([self.q_up @ self.q_down, zeros, self.v_up @ self.v_down]) * self.scale
        return F.multi_head_attention_forward(
            query,
            key,
            value,
            width,
            base.num_heads,
            base.in_proj_weight + delta.to(base.in_proj_weight.dtype),
            base.in_proj_bias,
            base.bias_k,
            base.bias_v,
            base.add_zero_attn,
            base.dropout,
            base.out_proj.weight,
            base.out_proj.bias,
            training=self.training,
            need_weights=need_weights,
            attn_mask=attn_mask,
            **kwargs,
        )


def _contrastive_loss(model: nn.Module, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    logits_per_image, logits_per_text = model(images, text)
    labels = torch.arange(images.shape[0])
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def lora_every_attention(env: Env) -> Outputs:
    """CLIP-LoRA / PEFT: find every nn.MultiheadAttention, wrap it, train the adapters one step."""
    model, _ = env.load()
    for p in model.parameters():
        p.requires_grad_(False)
    targets = [
        (parent, child_name)
        for parent in model.modules()
        for child_name, child in parent.named_children()
        if isinstance(child, nn.MultiheadAttention)
    ]
    for index, (parent, child_name) in enumerate(targets):
        setattr(
            parent, child_name, LoRAMultiheadAttention(getattr(parent, child_name), 4, seed=40 + 4 * index)
        )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    text = env.clip.tokenize(CAPTIONS[:2])
    loss = _contrastive_loss(model, env.images, text)
    optimizer.zero_grad()
    loss.backward()
    first = model.visual.transformer.resblocks[0].attn
    grads = {"q_down": first.q_down.grad.clone(), "v_up": first.v_up.grad.clone()}
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = _contrastive_loss(model, env.images, text)
    return {
        "count": len(targets),
        "loss": loss.detach(),
        "loss_after": after,
        "trainable": len(params),
        **grads,
    }


def hub_entry_points(env: Env) -> Outputs:
    """torch.hub: `tokenize` returns the function; a model entry point loads like `clip.load`."""
    clip = env.clip
    tokenize = env.hub_load("tokenize")
    tokens = tokenize(CAPTIONS)
    data = env.files["tiny-vit"].read_bytes()
    root = env.tmp / "hub-cache"
    root.mkdir(exist_ok=True)
    (root / "ViT-B-32.pt").write_bytes(data)
    url = f"https://example.invalid/clip/models/{hashlib.sha256(data).hexdigest()}/ViT-B-32.pt"
    saved = clip.clip._MODELS["ViT-B/32"]
    clip.clip._MODELS["ViT-B/32"] = url  # the tiny model stands in for the released file
    try:
        model, preprocess = env.hub_load("ViT_B_32", device="cpu", download_root=str(root))
    finally:
        clip.clip._MODELS["ViT-B/32"] = saved
    with torch.no_grad():
        features = model.encode_text(tokens)
    return {"tokens": tokens.long(), "features": features, "resolution": model.visual.input_resolution}


def ultralytics_text_features(env: Env) -> Outputs:
    """ultralytics (YOLO-World): `clip.clip.tokenize` in batches, normalised text features."""
    model, _ = env.load()
    texts = CAPTIONS + ["a person", "a bus"]
    batches = [env.clip.clip.tokenize(texts[i : i + 2]) for i in range(0, len(texts), 2)]
    with torch.no_grad():
        feats = torch.cat([model.encode_text(b).detach() for b in batches])
    feats = feats / feats.norm(p=2, dim=-1, keepdim=True)
    return {"tokens": torch.cat(batches).long(), "features": feats}


def transformers_conversion(env: Env) -> Outputs:
    """transformers' CLIP conversion: read the model attribute by attribute into a CLIPModel."""
    from transformers import CLIPConfig, CLIPModel

    model, _ = env.load()
    visual, text_blocks = model.visual, model.transformer.resblocks
    width, vision_width = model.ln_final.weight.shape[0], visual.conv1.weight.shape[0]
    config = CLIPConfig(
        text_config=dict(
            hidden_size=width,
            intermediate_size=4 * width,
            num_attention_heads=text_blocks[0].attn.num_heads,
            num_hidden_layers=len(text_blocks),
            max_position_embeddings=model.positional_embedding.shape[0],
            vocab_size=model.token_embedding.weight.shape[0],
            hidden_act="quick_gelu",
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=4 * vision_width,
            num_attention_heads=visual.transformer.resblocks[0].attn.num_heads,
            num_hidden_layers=len(visual.transformer.resblocks),
            image_size=visual.input_resolution,
            patch_size=visual.conv1.kernel_size[0],
            hidden_act="quick_gelu",
        ),
        projection_dim=model.text_projection.shape[1],
    )
    hf = CLIPModel(config).eval()

    def copy_linear(target: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
        target.weight.copy_(weight)
        target.bias.copy_(bias)

    def copy_encoder(hf_layers: nn.ModuleList, blocks: nn.Sequential) -> None:
        for hf_layer, block in zip(hf_layers, blocks):
            attn = block.attn
            q_w, k_w, v_w = attn.in_proj_weight.chunk(3, dim=0)
            q_b, k_b, v_b = attn.in_proj_bias.chunk(3, dim=0)
            copy_linear(hf_layer.self_attn.q_proj, q_w, q_b)
            copy_linear(hf_layer.self_attn.k_proj, k_w, k_b)
            copy_linear(hf_layer.self_attn.v_proj, v_w, v_b)
            copy_linear(hf_layer.self_attn.out_proj, attn.out_proj.weight, attn.out_proj.bias)
            copy_linear(hf_layer.layer_norm1, block.ln_1.weight, block.ln_1.bias)
            copy_linear(hf_layer.layer_norm2, block.ln_2.weight, block.ln_2.bias)
            copy_linear(hf_layer.mlp.fc1, block.mlp.c_fc.weight, block.mlp.c_fc.bias)
            copy_linear(hf_layer.mlp.fc2, block.mlp.c_proj.weight, block.mlp.c_proj.bias)

    with torch.no_grad():
        text_model, vision_model = hf.text_model, hf.vision_model
        text_model.embeddings.token_embedding.weight.copy_(model.token_embedding.weight)
        text_model.embeddings.position_embedding.weight.copy_(model.positional_embedding)
        copy_linear(text_model.final_layer_norm, model.ln_final.weight, model.ln_final.bias)
        copy_encoder(text_model.encoder.layers, text_blocks)
        hf.text_projection.weight.copy_(model.text_projection.T)

        vision_model.embeddings.class_embedding.copy_(visual.class_embedding)
        vision_model.embeddings.patch_embedding.weight.copy_(visual.conv1.weight)
        vision_model.embeddings.position_embedding.weight.copy_(visual.positional_embedding)
        copy_linear(vision_model.pre_layrnorm, visual.ln_pre.weight, visual.ln_pre.bias)
        copy_linear(vision_model.post_layernorm, visual.ln_post.weight, visual.ln_post.bias)
        copy_encoder(vision_model.encoder.layers, visual.transformer.resblocks)
        hf.visual_projection.weight.copy_(visual.proj.T)
        hf.logit_scale.copy_(model.logit_scale)

        text = env.clip.tokenize(CAPTIONS)
        hf_text = hf.get_text_features(input_ids=text.long())
        hf_image = hf.get_image_features(pixel_values=env.images)
        hf_text = getattr(hf_text, "pooler_output", hf_text)  # a tensor, or an output object (v5)
        hf_image = getattr(hf_image, "pooler_output", hf_image)
    return {"text": hf_text, "image": hf_image}


def finetune_step(env: Env) -> Outputs:
    """Fine-tuning: the contrastive loss, one backward pass, the gradient of every parameter."""
    model, _ = env.load()
    model.train()
    loss = _contrastive_loss(model, env.images, env.clip.tokenize(CAPTIONS[:2]))
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    small = ("logit_scale", "visual.class_embedding", "ln_final.weight")
    return {
        "loss": loss.detach(),
        "names": list(grads),
        "norms": torch.stack([g.norm() for g in grads.values()]),
        **{f"grad/{name}": grads[name] for name in small},
        "grad/attn0.in_proj_bias": grads["transformer.resblocks.0.attn.in_proj_bias"],
        "grad/text_projection[:8]": grads["text_projection"][:8],  # first rows: a small golden
        "grad/visual.proj[:8]": grads["visual.proj"][:8],
    }


def isinstance_count(env: Env) -> Outputs:
    """Adapter libraries count attention layers with isinstance(m, nn.MultiheadAttention)."""
    counts = {}
    dims = env.factory.dims_of("ViT-B/32")  # the released architecture (FACTS.md): 24 attention layers
    with torch.device("meta"):
        model = env.clip.model.CLIP(**dims)
    counts["ViT-B/32"] = sum(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    for config in ("tiny-vit", "tiny-rn"):
        model, _ = env.load(config)
        counts[config] = sum(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    return {"counts": counts}


def convert_weights_dtypes(env: Env) -> Outputs:
    """`convert_weights` on a float model with an extra attention layer that has bias_k / bias_v."""
    model, _ = env.load()
    model.extra = nn.MultiheadAttention(16, 2, add_bias_kv=True)  # an adapter a project might add
    env.clip.model.convert_weights(model)
    dtypes = {name: str(t.dtype) for name, t in model.state_dict().items()}
    return {
        "dtypes": dtypes,
        "bias_k": str(model.extra.bias_k.dtype),
        "bias_v": str(model.extra.bias_v.dtype),
    }


def tokenizer_from_file_object(env: Env) -> Outputs:
    """`SimpleTokenizer(bpe_path=...)` given an open binary file, as gzip.open accepts."""
    st = env.clip.simple_tokenizer
    with open(st.default_bpe(), "rb") as raw:
        tokenizer = st.SimpleTokenizer(bpe_path=raw)
    with gzip.open(st.default_bpe()) as unzipped:  # a gzip file object reads the compressed bytes too
        merges = len(unzipped.read().decode("utf-8").split("\n"))
    ids = tokenizer.encode("Hello, World! a photo of 2 cats")
    return {"ids": torch.tensor(ids), "decoded": tokenizer.decode(ids), "merges_lines": merges}


def assigned_tokenizer(env: Env) -> Outputs:
    """Assigning `clip.clip._tokenizer` changes what `clip.tokenize` uses (custom vocabularies)."""
    module = env.clip.clip
    saved = module._tokenizer

    class Reversed(type(saved)):
        def encode(self, text: str) -> List[int]:
            return super().encode(text)[::-1]

    module._tokenizer = Reversed()
    try:
        tokens = env.clip.tokenize(CAPTIONS + [LONG_CAPTION], context_length=12, truncate=True)
    finally:
        module._tokenizer = saved
    again = env.clip.tokenize(CAPTIONS)
    return {"tokens": tokens.long(), "restored": again.long()}


def cross_attention_with_padding(env: Env) -> Outputs:
    """A block's attention reused for cross-attention: image tokens query padded text tokens."""
    model, _ = env.load()
    attn = model.transformer.resblocks[0].attn
    text = env.clip.tokenize(CAPTIONS[:2])
    with torch.no_grad():
        keys = (model.token_embedding(text) + model.positional_embedding).permute(1, 0, 2)  # (77, N, D)
        x = model.visual.conv1(env.images)
        queries = x.reshape(x.shape[0], x.shape[1], -1).permute(2, 0, 1)  # (16, N, D)
        padding = text == 0  # True: a padding key, ignored
        out, weights = attn(queries, keys, keys, key_padding_mask=padding)
        out_no_weights, none = attn(queries, keys, keys, key_padding_mask=padding, need_weights=False)
    # the first 4 image tokens: a small golden
    return {"out": out[:4], "weights": weights, "out_no_weights": out_no_weights[:4], "none": none is None}


PATTERNS: Dict[str, Callable[[Env], Outputs]] = {
    fn.__name__: fn
    for fn in (
        zero_shot,
        manual_vit_forward,
        coop_prompt_learning,
        dalle2_hook_and_normalize,
        stylegan_nada_slicing,
        clipseg_activations,
        mdm_fp16_short_context,
        attention_maps,
        lora_every_attention,
        hub_entry_points,
        ultralytics_text_features,
        transformers_conversion,
        finetune_step,
        isinstance_count,
        convert_weights_dtypes,
        tokenizer_from_file_object,
        assigned_tokenizer,
        cross_attention_with_padding,
    )
}


def release_hub_load(clip: ModuleType) -> Callable[..., Any]:
    """The release's hubconf rules, for the original (its pip package ships no hubconf.py):
    `tokenize()` returns `clip.tokenize`; "ViT_B_32" and the like call `clip.load(name, **kwargs)`."""

    def hub_load(entry: str, **kwargs: Any) -> Any:
        if entry == "tokenize":
            return clip.tokenize
        names = {
            name.replace("/", "_").replace("-", "_").replace("@", "_"): name
            for name in clip.available_models()
        }
        return clip.load(names[entry], **kwargs)

    return hub_load


def run(clip: ModuleType, tmp: Path, hub_load: Callable[..., Any], only: Any = None) -> Dict[str, Outputs]:
    """Every pattern's outputs, detached and copied (patterns may share nothing)."""
    env = Env(clip, tmp, hub_load)
    results = {}
    for name, pattern in PATTERNS.items():
        if only is not None and name not in only:
            continue
        torch.manual_seed(0)  # nothing should draw, but a pattern that does sees the same numbers
        results[name] = _detached(pattern(env))
    return results


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return copy.deepcopy(value)


__all__ = ["PATTERNS", "Env", "run", "release_hub_load"]
