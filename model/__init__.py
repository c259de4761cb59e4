"""mtserve.model: the network (Marian and its relatives), its KV cache, search, tokenizer and checkpoints.

Nothing here knows about requests or serving: the engine core (mtserve.engine) drives these pieces, and
the offline ``Translator`` lives there too (``from mtserve.engine import Translator``).
"""
