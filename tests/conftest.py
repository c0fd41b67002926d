import os
import shutil
import tempfile

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# One BINSWEEP_HOME for the whole session, outside the checkout: caches (KEMAR, BRIR banks) are filled once per run
# and nothing is ever written into the repository's runs/ or data/.
_HOME = tempfile.mkdtemp(prefix="binsweep-test-home-")
os.environ["BINSWEEP_HOME"] = _HOME


@pytest.fixture(scope="session", autouse=True)
def _cleanup_home():
    yield
    shutil.rmtree(_HOME, ignore_errors=True)
