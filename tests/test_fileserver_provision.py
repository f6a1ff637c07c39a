"""fileserver/provision.py: when a phone counts as provisioned."""

from __future__ import annotations

from fileserver.provision import ProvisionTracker

MAC = "000b82f55284"


def test_provisioned_after_a_200_and_the_same_sha_again():
    t = ProvisionTracker()
    assert not t.record(MAC, "f", 304, "a").provisioned  # no 200 yet
    assert not t.record(MAC, "f", 200, "a").provisioned
    assert t.record(MAC, "f", 304, "a").provisioned
    assert t.record(MAC, "f", 200, "a").provisioned
    assert not t.record(MAC, "f", 200, "b").provisioned  # new file
    out = t.record(MAC, "f", 200, "b")
    assert out.provisioned and out.changed
    assert not t.record(MAC, "f", 200, "b").changed  # nothing to save
    states = dict(t._states)
    assert ProvisionTracker(states).is_provisioned(MAC, "f", "b")  # survives a restart
