"""Shared fixtures: tiny diffusers UNets with seeded weights (no downloads)."""
import pytest
import torch

from tiny_models import make_tiny_unet

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_unet():
    return make_tiny_unet()


@pytest.fixture(scope="session")
def text_pair():
    g = torch.Generator().manual_seed(7)
    return torch.randn(1, 6, 32, generator=g), torch.randn(1, 6, 32, generator=g) * 0.5


@pytest.fixture
def latent():
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 4, 16, 16, generator=g)
