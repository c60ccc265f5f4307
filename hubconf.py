"""torch.hub entry points: one per released model, plus `tokenize`.

    model, preprocess = torch.hub.load("<owner>/<repo>", "ViT_B_32", device="cpu")
    tokenize = torch.hub.load("<owner>/<repo>", "tokenize")   # the clip.tokenize function
    tokens = tokenize("a photo of a cat")

The model entry points are made from `clip.available_models()`: each name with "/", "-" and "@"
turned into "_" (ViT-L/14@336px -> ViT_L_14_336px). Each takes the keyword arguments of `clip.load`
(device, jit, download_root, dtype) and returns (model, preprocess). torch.hub finds them with
getattr on this module, so they are module-level names.
"""

import typing as _typing

import clip as _clip

dependencies = ["torch", "torchvision", "ftfy", "regex", "tqdm", "PIL"]


def _entry_point_name(model_name: str) -> str:
    for char in "/-@":
        model_name = model_name.replace(char, "_")
    return model_name


def _make_entry_point(model_name: str) -> _typing.Callable[..., _typing.Tuple[_typing.Any, _typing.Any]]:
    def entry_point(**kwargs: _typing.Any) -> _typing.Tuple[_typing.Any, _typing.Any]:
        return _clip.load(model_name, **kwargs)

    entry_point.__name__ = entry_point.__qualname__ = _entry_point_name(model_name)
    entry_point.__doc__ = (
        f"CLIP {model_name}: `clip.load({model_name!r}, **kwargs)`; returns (model, preprocess).\n\n"
        "Keyword arguments: device, jit, download_root, dtype (see `clip.load`)."
    )
    return entry_point


for _model_name in _clip.available_models():
    globals()[_entry_point_name(_model_name)] = _make_entry_point(_model_name)
del _model_name


def tokenize() -> _typing.Callable[..., _typing.Any]:
    """Return `clip.tokenize` (text(s) -> (N, context_length) token ids), as the release's hubconf."""
    return _clip.tokenize
