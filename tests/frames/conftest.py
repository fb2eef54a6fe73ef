"""Fixtures of the frame tests (helpers live in ``structures.py``)."""

import pytest

from .structures import load


@pytest.fixture(scope="session")
def ethanol(real_data):
    return load(real_data, "rmd17_ethanol")[0]
