"""The one place that knows which TransformerLens major is installed.

tlassoc imports only the surface both majors keep (``HookedRootModule``, ``HookPoint``,
``ActivationCache``, ``FactoredMatrix``, ``patching``, ``head_detector``); where they differ it is
switched here. :func:`model_classes` names TransformerLens's own model classes of the installed
major (``HookedTransformer`` on 3.x, ``TransformerBridge`` on 4.x).

Example:
    >>> from tlassoc._tl import TL_MAJOR
    >>> TL_MAJOR in (3, 4)
    True
"""

from __future__ import annotations

import functools
from importlib.metadata import version

from transformer_lens import ActivationCache, FactoredMatrix
from transformer_lens.hook_points import HookPoint

TL_VERSION: str = version("transformer-lens")
TL_MAJOR: int = int(TL_VERSION.split(".")[0])

if TL_MAJOR >= 4:
    from transformer_lens import HookedRootModule
else:  # 3.x keeps it in hook_points
    from transformer_lens.hook_points import HookedRootModule  # type: ignore[no-redef]


@functools.cache
def model_classes() -> dict[str, type]:
    """TransformerLens's model classes of the installed major, by kind.

    ``{"hooked_transformer": HookedTransformer}`` on 3.x, ``{"bridge": TransformerBridge}`` on
    4.x (which removed ``HookedTransformer``); a class the release does not ship is left out.

    Example:
        >>> sorted(model_classes()) in (["hooked_transformer"], ["bridge"],
        ...                             ["bridge", "hooked_transformer"])
        True
    """
    classes: dict[str, type] = {}
    if TL_MAJOR < 4:
        from transformer_lens import HookedTransformer

        classes["hooked_transformer"] = HookedTransformer
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # 3.x releases without the bridge
        pass
    else:
        classes["bridge"] = TransformerBridge
    return classes


__all__ = [
    "TL_MAJOR",
    "TL_VERSION",
    "ActivationCache",
    "FactoredMatrix",
    "HookPoint",
    "HookedRootModule",
    "model_classes",
]
