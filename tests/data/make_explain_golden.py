"""Make tests/data/explain_golden.pt with the ORIGINAL implementation (the oracle): the reference
recipes of tests/test_explain.py and tests/test_score.py run on the original's own modules.

Run with our virtual environment; the script runs itself again with only the oracle folder on
PYTHONPATH and a scratch working directory, so that our own `clip/` package cannot shadow it:

    .venv/bin/python tests/data/make_explain_golden.py [--oracle DIR]

(DIR defaults to $CLIP_ORACLE_PATH, else .oracle in the repository.)

For two tiny fp32 models built by the original's `build_model` from the seeded state dicts of
tests/support/_model_factory.py (a ViT with 3 image and 3 text blocks; the "tiny-rn" ResNet with 2
text blocks), the images of `make_images` and the original tokenizer's ids of CAPTIONS:

* relevance, as the CLIP notebook of Chefer, Gur and Wolf computes it: the original's blocks are
  patched (in this process only) to call their `nn.MultiheadAttention` with need_weights=True,
  average_attn_weights=False and keep the probabilities; the objective is the sum of the diagonal
  of `logits_per_image` of `model(images, texts)`; per block from the start layer on, the gradient
  of the objective with respect to the probabilities (torch.autograd.grad, retain_graph) weights
  them, and R += mean_heads(clamp(grad * probs, min=0)) @ R from the identity. Image maps:
  R[:, 0, 1:] on the patch grid; text maps: R_text[n, eot_n, :]. For the ResNet, Grad-CAM over
  `visual.layer4`'s output, caught with a forward hook: relu(sum_c mean_hw(dObjective/dA)_c A_c).
  Several (start_layer, start_layer_text) cases per model;
* CLIPScore, as the reference implementation of Hessel et al. (2021) computes it: captions and
  references prefixed with "A photo depicts " and tokenized with truncate=True, features
  L2-normalised, CLIP-S = 2.5 * max(cos(image, caption), 0), RefCLIP-S = the harmonic mean of
  CLIP-S and max(max over references of cos(caption, reference), 0) (the paper's clamp), 0 when
  both are 0.
"""

import importlib.util
import sys
import types
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent
FACTORY_PATH = DATA.parent / "support" / "_model_factory.py"
OUTPUT = DATA / "explain_golden.pt"
sys.path.insert(0, str(DATA.parent / "support"))  # _golden (imports no clip)
from _golden import digest, oracle_argument, under_oracle  # noqa: E402

CAPTIONS = ["a diagram", "a dog", "a photo of a cat sitting on a red sofa at night"]
REFERENCES = [
    ["a drawing", "a chart of boxes and arrows"],
    ["a puppy on the grass"],
    ["a cat on a sofa", "a sleeping cat", "a red couch"],
]
# ViT: 3 blocks per tower, so that several start layers differ; 2 heads of 64 in both towers.
VIT_DIMS = {
    "embed_dim": 64,
    "image_resolution": 32,
    "vision_layers": 3,
    "vision_width": 128,
    "vision_patch_size": 8,
    "context_length": 77,
    "vocab_size": 49408,
    "transformer_width": 128,
    "transformer_heads": 2,
    "transformer_layers": 3,
}
MODELS = {"vit": (VIT_DIMS, 31), "rn": ("tiny-rn", 32)}  # name -> (config, seed)
# (start_layer, start_layer_text); None: the last block only
CASES = {
    "vit": [(None, None), (0, 0), (1, 2), (2, 1)],
    "rn": [(None, None), (None, 0)],
}
IMAGE_SEED_OFFSET = 1000
CLIPSCORE_PREFIX = "A photo depicts "
CLIPSCORE_WEIGHT = 2.5


def load_factory():
    spec = importlib.util.spec_from_file_location("_model_factory", FACTORY_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def keep_probabilities(block) -> None:
    """Patch one original ResidualAttentionBlock to keep its attention probabilities (N*H, L, L)."""

    def attention(self, x):
        mask = self.attn_mask.to(dtype=x.dtype, device=x.device) if self.attn_mask is not None else None
        out, probs = self.attn(x, x, x, need_weights=True, average_attn_weights=False, attn_mask=mask)
        # torch returns a (N, H, L, L) view of the softmax output; the output was computed from the
        # softmax output itself, (N*H, L, L), so that is the tensor the gradient reaches
        self.attn_probs = probs._base if probs._base is not None else probs
        return out

    block.attention = types.MethodType(attention, block)


def rollout(objective, blocks, start, batch):
    """The notebook's loop: gradient-weighted attention, rolled out from block `start` on."""
    tokens = blocks[0].attn_probs.shape[-1]
    R = torch.eye(tokens, tokens, dtype=blocks[0].attn_probs.dtype).unsqueeze(0).expand(batch, tokens, tokens)
    for i, blk in enumerate(blocks):
        if i < start:
            continue
        grad = torch.autograd.grad(objective, [blk.attn_probs], retain_graph=True)[0].detach()
        cam = blk.attn_probs.detach()
        cam = cam.reshape(-1, cam.shape[-1], cam.shape[-1])
        grad = grad.reshape(-1, grad.shape[-1], grad.shape[-1])
        cam = grad * cam
        cam = cam.reshape(batch, -1, cam.shape[-1], cam.shape[-1])
        cam = cam.clamp(min=0).mean(dim=1)
        R = R + torch.bmm(cam, R)
    return R


def explain(model, images, texts, start_layer, start_layer_text):
    batch = texts.shape[0]
    vit = hasattr(model.visual, "transformer")
    caught = {}
    handle = None
    if not vit:
        handle = model.visual.layer4.register_forward_hook(lambda m, i, o: caught.update(A=o))
    logits_per_image, _ = model(images, texts)
    if handle is not None:
        handle.remove()
    objective = logits_per_image.diagonal().sum()
    if vit:
        blocks = list(model.visual.transformer.resblocks)
        start = len(blocks) - 1 if start_layer is None else start_layer
        R = rollout(objective, blocks, start, batch)
        grid = int((R.shape[-1] - 1) ** 0.5)
        image_map = R[:, 0, 1:].reshape(batch, grid, grid)
    else:
        A = caught["A"]
        grad = torch.autograd.grad(objective, [A], retain_graph=True)[0]
        image_map = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * A).sum(dim=1))
    text_blocks = list(model.transformer.resblocks)
    start_text = len(text_blocks) - 1 if start_layer_text is None else start_layer_text
    R_text = rollout(objective, text_blocks, start_text, batch)
    text_map = R_text[torch.arange(batch), texts.argmax(dim=-1)]
    return image_map.detach().clone(), text_map.detach().clone()


def clip_scores(clip, model, images):
    def text_features(texts):
        tokens = clip.tokenize([CLIPSCORE_PREFIX + t for t in texts], truncate=True)
        features = model.encode_text(tokens)
        return features / features.norm(dim=-1, keepdim=True)

    with torch.no_grad():
        image_features = model.encode_image(images)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        candidates = text_features(CAPTIONS)
        cosine = (image_features * candidates).sum(dim=-1)
        clip_s = CLIPSCORE_WEIGHT * cosine.clamp(min=0)
        best_reference = []
        for candidate, refs in zip(candidates, REFERENCES):
            best_reference.append((text_features(refs) @ candidate).max())
        best_reference = torch.stack(best_reference)
        ref_term = best_reference.clamp(min=0)
        total = clip_s + ref_term
        harmonic = torch.where(
            total > 0, 2 * clip_s * ref_term / total.clamp(min=1e-30), torch.zeros_like(total)
        )
    return {
        "cosine": cosine.clone(),
        "best_reference_cosine": best_reference.clone(),
        "clip_score": clip_s.clone(),
        "ref_clip_score": harmonic.clone(),
    }


def main() -> None:
    under_oracle(__file__, oracle_argument(__doc__))
    import clip  # the oracle (checked by under_oracle)
    from clip.model import build_model

    factory = load_factory()
    texts = clip.tokenize(CAPTIONS).to(torch.int64)
    golden = {"captions": CAPTIONS, "references": REFERENCES, "tokens": texts.clone(), "models": {}}
    for name, (config, seed) in MODELS.items():
        dims = factory.dims_of(config)
        state_dict = factory.make_state_dict(dims, seed)
        model = build_model(dict(state_dict)).float().eval()
        towers = [model.transformer] + ([model.visual.transformer] if name == "vit" else [])
        for tower in towers:
            for block in tower.resblocks:
                keep_probabilities(block)
        image_seed = seed + IMAGE_SEED_OFFSET
        images = factory.make_images(dims["image_resolution"], image_seed, len(CAPTIONS))
        cases = []
        for start_layer, start_layer_text in CASES[name]:
            image_map, text_map = explain(model, images, texts, start_layer, start_layer_text)
            cases.append(
                {
                    "start_layer": start_layer,
                    "start_layer_text": start_layer_text,
                    "image": image_map,
                    "text": text_map,
                }
            )
            print(
                f"{name} start {start_layer}/{start_layer_text}: image {tuple(image_map.shape)} "
                f"max {image_map.max():.4g}, text max {text_map.max():.4g}"
            )
        entry = {
            "dims": dims,
            "seed": seed,
            "state_dict_sha256": digest({k: v for k, v in state_dict.items()}),
            "image_seed": image_seed,
            "images_sha256": digest({"images": images}),
            "cases": cases,
        }
        if name == "vit":
            entry["clipscore"] = clip_scores(clip, model, images)
            print("clipscore:", {k: v.tolist() for k, v in entry["clipscore"].items()})
        golden["models"][name] = entry
    golden["oracle"] = "clip-anytorch 2.6.0"
    golden["torch"] = str(torch.__version__)
    torch.save(golden, OUTPUT)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
