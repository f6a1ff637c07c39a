"""A static split of the phones between N instances of one service, by MAC.

Shard ``k/n`` owns the MACs whose CRC-32 modulo ``n`` is ``k - 1``. Every instance of a service
computes the same split with no coordination, so ``1/n`` ... ``n/n`` on one broker each take
their own phones and together take every phone exactly once.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

MAX_SHARDS = 1024


@dataclass(frozen=True)
class Shard:
    """The MACs whose CRC-32 modulo ``count`` is ``index - 1``. CRC-32, not ``hash()``: Python
    salts string hashes per process, and every instance, before and after a restart, must draw
    the same lines. Case does not matter, so a MAC spelled in capitals lands in the same shard."""

    index: int = 1
    count: int = 1

    def owns(self, mac: str) -> bool:
        return self.count == 1 or zlib.crc32(mac.lower().encode("ascii", "replace")) % self.count == self.index - 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``k/n`` with ``1 <= k <= n <= MAX_SHARDS``; raises ``ValueError`` otherwise."""
    match = re.fullmatch(r"\s*([0-9]{1,4})\s*/\s*([0-9]{1,4})\s*", text)
    if not match:
        raise ValueError
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= index <= count <= MAX_SHARDS:
        raise ValueError
    return Shard(index, count)
