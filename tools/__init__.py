"""Operator and test tools of the pnp command: simulate, devices, monitor."""
