"""mtserve.model: the Marian encoder-decoder network, its KV cache, tokenizer, checkpoints and search."""
