"""OpenSSL in C without the GIL, shared by the crypt and verity targets.

``loops`` is the C extension built from ``src/`` (the cipher units of a crypt request, the
hash blocks of a verity read, jobs for the worker thread; see ``src/module.c``); ``offload``
decides when a big request goes to that worker thread.  It lives beside the targets, not in
one of them, because two targets use it (a target imports only the contract, the backend
interface and its own package) and because the FUSE edge and the O_DIRECT backend consult
``offload``'s probe of waiting requests.  It knows nothing of dm: no target, engine or edge
is imported here.
"""
