"""fileserver/abuse.py: MACs in User-Agents and the 404 limiter."""

from __future__ import annotations

import pytest

from fileserver.abuse import NotFoundLimiter, user_agent_mac

MAC = "000b82f55284"


@pytest.mark.parametrize("ua,mac", [
    ("Grandstream Model HW GRP2614 SW 1.0.0.31 DevId 000b82f55284", MAC),
    ("Grandstream Model HW GRP2614 SW 1.0.0.31 DevId 000B82F55284", MAC),
    ("Yealink SIP-T46S 66.86.0.15 00:15:65:aa:bb:cc", "001565aabbcc"),
    ("snom-D785 10.1.54.13 000413AABBCC", "000413aabbcc"),
    ("Grandstream GRP2614 1.0.0.31", None), ("curl/8.0", None), ("", None),
    ("Firmware 1.2.3.456789012345", None),
])
def test_user_agent_mac(ua, mac):
    assert user_agent_mac(ua) == mac


def test_limiter_bans_after_limit_in_window_then_forgives():
    lim = NotFoundLimiter(limit=3, window=10, ban=60)
    assert not lim.not_found("a", 0) and not lim.not_found("a", 1)
    assert lim.refused("a", 1) == 0
    assert lim.not_found("a", 2)
    assert lim.refused("a", 3) == pytest.approx(59)
    assert lim.refused("b", 3) == 0
    assert lim.refused("a", 62.1) == 0
    # misses spread wider than the window never add up to a ban
    lim2 = NotFoundLimiter(limit=3, window=10, ban=60)
    assert not any(lim2.not_found("c", t) for t in range(0, 100, 6))


def test_limiter_memory_is_bounded():
    lim = NotFoundLimiter(limit=5, window=10, ban=60, max_clients=100)
    for i in range(1000):
        lim.not_found(f"10.0.{i // 256}.{i % 256}", 0)
    assert len(lim._clients) == 100
