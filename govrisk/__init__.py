"""govrisk: credit risk for small businesses, sole proprietors and farmers from government records.

The notebook API (`from govrisk import generate, train, load_model, score, report`) lives in
`govrisk.api` and is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Every govrisk.* module, the scoring server's included, imports this file first. The API reaches
# every layer (training, research, serving): importing it here would add seconds to every start-up
# and could drag torch and Lightning into the server, which must never load them. So the API's names
# are resolved lazily (PEP 562): `govrisk.api` is imported on the first access to one of them.
API = (  # the names govrisk.api exports (its __all__ is this tuple)
    "GovernanceReport",
    "describe",
    "generate",
    "list_models",
    "load_dataset",
    "load_model",
    "report",
    "score",
    "train",
    "validate",
)

__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        value = getattr(importlib.import_module("govrisk.api"), name)
        globals()[name] = value  # later accesses skip this hook
        return value
    # Anything else (a submodule not imported yet included) is the AttributeError the import system
    # expects: `from govrisk import serving` then imports the submodule.
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
