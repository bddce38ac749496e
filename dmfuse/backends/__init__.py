"""What a table line points at: files, block devices, and other devices of the same mount."""

from dmfuse.backends.base import Backend

__all__ = ["Backend"]
