"""The control channel: a Unix socket per mount, only usable by the daemon's owner."""
