"""olmo_jax: OLMo (AllenAI's open language model) in JAX/Flax.

`olmo_jax.from_pretrained(path)` loads a model; it is imported on first use so that `import olmo_jax`
stays cheap (no JAX start-up) for CLIs and config tools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from olmo_jax.pretrained import from_pretrained

__all__ = ["from_pretrained"]


def __getattr__(name: str) -> Any:
    if name == "from_pretrained":
        from olmo_jax.pretrained import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'olmo_jax' has no attribute {name!r}")
