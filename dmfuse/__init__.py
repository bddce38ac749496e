"""dmfuse: the Linux device-mapper rebuilt in userspace as a FUSE filesystem."""

__version__ = "0.1.0"
