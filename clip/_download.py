"""Verified, resumable, lock-protected downloads (scaffold: being written)."""


def _download(url: str, root: str) -> str:
    raise NotImplementedError
