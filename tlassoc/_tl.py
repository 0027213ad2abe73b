"""The one place that knows which TransformerLens major is installed.

tlassoc imports only the surface both majors keep (``HookedRootModule``, ``HookPoint``,
``ActivationCache``, ``FactoredMatrix``, ``patching``, ``head_detector``); where they differ it is
switched here.

Example:
    >>> from tlassoc._tl import TL_MAJOR
    >>> TL_MAJOR in (3, 4)
    True
"""

from __future__ import annotations

from importlib.metadata import version

from transformer_lens import ActivationCache, FactoredMatrix
from transformer_lens.hook_points import HookPoint

TL_VERSION: str = version("transformer-lens")
TL_MAJOR: int = int(TL_VERSION.split(".")[0])

if TL_MAJOR >= 4:
    from transformer_lens import HookedRootModule
else:  # 3.x keeps it in hook_points
    from transformer_lens.hook_points import HookedRootModule  # type: ignore[no-redef]

__all__ = [
    "TL_MAJOR",
    "TL_VERSION",
    "ActivationCache",
    "FactoredMatrix",
    "HookPoint",
    "HookedRootModule",
]
