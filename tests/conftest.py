import os
import random

import numpy as np
import pytest
import torch

# Triton reads TRITON_INTERPRET once, when it is first imported — and open_clip imports it
# (through timm) — so without CUDA the interpreter is switched on here, before any test
# module is collected. The Triton kernel tests (tests/test_triton.py) then run on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Keep the suite predictable on the 2-core CI machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_clip():
    """(clip_model, tokenizer, preprocess) of the package's tiny random open_clip ViT (frozen).

    Shared by the whole session: nothing in RAM changes a frozen CLIP's weights.
    """
    from ram_ot.backbones.open_clip import TINY_MODEL_NAME, load_clip

    torch.manual_seed(1234)
    return load_clip(TINY_MODEL_NAME, pretrained=None)
