"""dm-verity helpers: the hash tree's geometry (:mod:`.tree`) and the hash functions
(:mod:`.hashing`).  PURE: the stdlib and attrs only, no I/O."""
