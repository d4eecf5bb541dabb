import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_world():
    """A small world config that renders fast."""
    from scenes.world import WorldConfig

    return WorldConfig(image_size=16, gaussians=128)
