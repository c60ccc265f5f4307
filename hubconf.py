"""torch.hub entry points: one per released model, plus `tokenize`.

    model, preprocess = torch.hub.load("<owner>/<repo>", "ViT_B_32", device="cpu")
    tokens = torch.hub.load("<owner>/<repo>", "tokenize", "a photo of a cat")

Entry-point names are the model names with "/", "-" and "@" turned into "_". Each takes the keyword
arguments of `clip.load` (device, jit, download_root, dtype) and returns (model, preprocess).
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


RN50 = _make_entry_point("RN50")
RN101 = _make_entry_point("RN101")
RN50x4 = _make_entry_point("RN50x4")
RN50x16 = _make_entry_point("RN50x16")
RN50x64 = _make_entry_point("RN50x64")
ViT_B_32 = _make_entry_point("ViT-B/32")
ViT_B_16 = _make_entry_point("ViT-B/16")
ViT_L_14 = _make_entry_point("ViT-L/14")
ViT_L_14_336px = _make_entry_point("ViT-L/14@336px")


def tokenize(*args: _typing.Any, **kwargs: _typing.Any) -> _typing.Any:
    """`clip.tokenize`: text(s) -> (N, context_length) token ids."""
    return _clip.tokenize(*args, **kwargs)
