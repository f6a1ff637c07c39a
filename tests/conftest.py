import pytest

from tests.support import Probe, start_broker


@pytest.fixture
def broker(tmp_path):
    b = start_broker(tmp_path / "broker")
    yield b
    b.stop()


@pytest.fixture
def probe(broker):
    p = Probe(broker.url)
    yield p
    p.close()
