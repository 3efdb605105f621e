import os
import shutil

import pytest
import torch
from hypothesis import settings

# In CI the property tests draw the same examples on every run (a landing is judged on what it tested,
# not on a new draw); locally each run draws afresh and a failure is kept in .hypothesis/ to replay.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_addoption(parser):
    parser.addoption("--regen-golden", action="store_true", help="rewrite the golden DOT files in tests/golden/ from fresh renders")


def pytest_collection_modifyitems(config, items):
    # Tests marked `dot` need Graphviz's binary. Locally they skip without it; in CI
    # (CI=true) a missing binary is a failure, never a quiet skip.
    if shutil.which("dot") is None and not os.environ.get("CI"):
        skip = pytest.mark.skip(reason="Graphviz `dot` not installed (the README's test command installs it)")
        for item in items:
            if "dot" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def regen_golden(request):
    return request.config.getoption("--regen-golden")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_runtest_setup(item):
    if "cuda" in item.keywords and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run on the GPU machine)")
