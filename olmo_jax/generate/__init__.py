"""Text generation: `decoding` (the key/value-cache decoder and sampling) and the `olmo-jax generate` CLI."""
