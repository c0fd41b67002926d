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


@pytest.fixture(scope="session")
def s3_server():
    """One moto S3 server for the session (tests/s3_server.py); tests pick their own prefixes in its bucket."""
    from s3_server import S3Server

    server = S3Server()
    server.create_bucket()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server):
    """This process's AWS variables point at the session's S3 server for the test; yields the server."""
    from s3_server import s3_environment

    with s3_environment(s3_server):
        yield s3_server
