"""`clip.tokenize` (scaffold: being written)."""


def tokenize(texts, context_length: int = 77, truncate: bool = False):
    raise NotImplementedError


def get_tokenizer():
    raise NotImplementedError
