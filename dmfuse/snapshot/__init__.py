"""Snapshots: the kernel's COW exception stores and the per-origin registry (dm-snap)."""
