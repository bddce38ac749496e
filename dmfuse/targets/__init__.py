"""The targets: ``NAME.py`` for a small one, ``NAME/`` (a package holding everything of that
target: its formats, state, C code users and tools) for a big one.  Importing this package
imports (and so registers) every module and package in it: a new target is a new file or
folder here with a ``@register``-ed class, nothing else to edit (a package's ``__init__``
imports the module that registers)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
