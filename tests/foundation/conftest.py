import pytest


@pytest.fixture(scope="session")
def two_tower():
    from prompts.backbones import load_backbone

    return load_backbone("two-tower", device="cpu")
