"""A sans-I/O SIP core: messages (``message``), transactions (``transaction``: the client's,
and the server's answer cache and reply address) and Digest authentication (``digest``).

Nothing here opens a socket or touches a reactor; callers feed bytes and time in and get bytes
and decisions out, the way h11 does HTTP.
"""

from services.sip.digest import (
    Challenge, DigestError, authorization, challenges, choose, digest_response, parse_challenge,
    retry_request,
)
from services.sip.transaction import TIMER_J, ServerTransactions, reply_address

__all__ = [
    "Challenge", "DigestError", "authorization", "challenges", "choose", "digest_response",
    "parse_challenge", "retry_request",
    "TIMER_J", "ServerTransactions", "reply_address",
]
