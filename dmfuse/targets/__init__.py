"""One module per target; importing this package registers them all."""

from dmfuse.targets import error, linear, striped, zero

__all__ = ["error", "linear", "striped", "zero"]
