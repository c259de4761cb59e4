"""A tiny random Marian model in memory for the engine-core tests (no files, no Transformers import).

Two kinds: ``endless`` never says ``</s>`` by itself, so every text decodes to exactly its max_length
(forced ``</s>`` last) and a test controls when each text ends; ``varied`` ends texts at different lengths.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from _tiny_model import tiny_model

from mtserve.model.transformer import Transformer


@pytest.fixture(scope="session")
def endless() -> Transformer:
    return tiny_model(endless=True)


@pytest.fixture(scope="session")
def varied() -> Transformer:
    return tiny_model(endless=False, seed=3)


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
