"""Generator: renders configuration files once assignments arrive."""

SETTINGS: list = []


def start(ctx):
    return None
