"""A sans-I/O SIP core: messages (``message``) and transactions (``transaction``).

Nothing here opens a socket or touches a reactor; callers feed bytes and time in and get bytes
and decisions out, the way h11 does HTTP.
"""
