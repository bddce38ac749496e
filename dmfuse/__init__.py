"""dmfuse: the Linux device-mapper rebuilt in userspace as a FUSE filesystem."""

import os

__version__ = "0.1.0"

# dmfuse._openssl shares big crypt/verity requests with OpenMP helper threads.  By default
# they spin for a while after each job; on a machine with other work that spinning takes the
# CPU the helpers' partners need, and a request waiting for a descheduled helper took 10x
# longer (bench/crypt.sh under load).  Sleeping helpers cost a wakeup instead.  libgomp reads
# this when it is loaded, so it is set before any submodule can import the extension; a value
# already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
