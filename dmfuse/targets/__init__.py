"""One module per target.  Importing this package imports (and so registers) every module in it:
a new target is a new module here with a ``@register``-ed class, nothing else to edit."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
