"""The engine: live tables, devices with dm's lifecycle, and the manager of a mount's devices."""
