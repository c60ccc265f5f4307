"""The errors raised for files that cannot be read as CLIP checkpoints."""

__all__ = ["CheckpointError", "UnsafeCheckpointError"]


class CheckpointError(RuntimeError, ValueError):
    """A file cannot be read as a CLIP checkpoint. The message says what the file is and what to do.

    Subclasses both RuntimeError (what the original raised for unreadable files) and ValueError.
    """


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint's pickle asks for a callable outside the allow-list; nothing from it was run."""
