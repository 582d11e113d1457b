"""olmo_jax: OLMo (AllenAI's open language model) in JAX/Flax.

`olmo_jax.from_pretrained(path)` loads a model (see `olmo_jax.pretrained`).

A package `__init__` in olmo_jax only names its modules; names are imported from the module that defines them.
The one exception is `from_pretrained` above, the documented entry point, which this file provides lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from olmo_jax.pretrained import from_pretrained

__all__ = ["from_pretrained"]


def __getattr__(name: str) -> Any:
    # Lazily, on first use: importing any olmo_jax module runs this file first, and the command lines import
    # olmo_jax.config before JAX starts; olmo_jax.pretrained imports JAX, Flax and Orbax (seconds).
    if name == "from_pretrained":
        from olmo_jax.pretrained import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'olmo_jax' has no attribute {name!r}")
