import os
import shutil
import tempfile

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# Ray Train's controller polls its workers every 2 s, so every Train run ends up to 4 s after its last report; the
# suite starts about 25 of them. Half a second changes nothing but the wait (the same variable works for users).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

# One BINSWEEP_HOME for the whole session, outside the checkout: caches (KEMAR, BRIR banks) are filled once per run
# and nothing is ever written into the repository's runs/ or data/.
_HOME = tempfile.mkdtemp(prefix="binsweep-test-home-")
os.environ["BINSWEEP_HOME"] = _HOME


@pytest.fixture(scope="session", autouse=True)
def _cleanup_home():
    yield
    shutil.rmtree(_HOME, ignore_errors=True)
