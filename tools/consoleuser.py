"""Print a console user entry for PNP_CONSOLE_USERS: NAME:ROLE:HASH (scrypt).

The password is read from the terminal (twice), or from one line of standard input when it is
not a terminal. Example:

  pnp console-user alice --role admin          # prints alice:admin:scrypt.16384.8.1.…
  echo 's3cret-passphrase' | pnp console-user bob
"""

from __future__ import annotations

import argparse
import getpass
import sys

from console.users import ROLES, hash_password, parse_users

MIN_LENGTH = 10


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the user name (A-Z a-z 0-9 _ . @ -)")
    parser.add_argument("--role", choices=ROLES, default="viewer", help="viewer reads, admin assigns [default: viewer]")


def run(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("pnp console-user: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < MIN_LENGTH:
        print(f"pnp console-user: a password needs at least {MIN_LENGTH} characters", file=sys.stderr)
        return 1
    entry = f"{args.name}:{args.role}:{hash_password(password)}"
    try:
        parse_users(entry)
    except ValueError as exc:
        print(f"pnp console-user: {exc}", file=sys.stderr)
        return 2
    print(entry)
    return 0
