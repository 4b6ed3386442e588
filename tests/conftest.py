import numpy as np
import pytest

from gipp_jax.cli import sample_image_path
from gipp_jax.io import load_image


@pytest.fixture(scope="session")
def sample_crop() -> np.ndarray:
    """A 128x128 crop of the bundled Kodak image (a parrot's head: edges and flat areas)."""
    return load_image(sample_image_path())[200:328, 300:428]
