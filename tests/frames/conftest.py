"""Fixtures of the frame tests (helpers live in ``structures.py``)."""

import pytest

from .structures import load


@pytest.fixture(scope="session")
def ethanol(shared_data):
    return load(shared_data, "rmd17_ethanol")[0]
