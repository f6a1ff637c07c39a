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


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    # trial's mktemp() and the default ./var are relative paths: keep them out of the tree.
    monkeypatch.chdir(tmp_path)
