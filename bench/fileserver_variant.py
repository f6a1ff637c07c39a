"""`pnp fileserver` with a part switched off, to measure what that part costs a download.

Not a way to run the service: the bench runs it in place of the real one,

    FSV=nofetch FSBENCH_SERVER=bench/fileserver_variant.py .venv/bin/python bench/fileserver_bench.py --callgrind

FSV=nofetch: downloads are not reported at all (no ``fetched``, no provisioning state);
FSV=nopublish: reported to the core as usual, but the ``fetched`` message is not published.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.getcwd())

from fileserver import service  # noqa: E402
from fileserver.core import Report  # noqa: E402

what = os.environ.get("FSV", "")
if what == "nofetch":
    service.FileService.fetched = lambda self, *args: None  # type: ignore[method-assign]
elif what == "nopublish":
    apply = service.FileService.apply

    def without_reports(self: Any, effects: list) -> None:
        apply(self, [e for e in effects if not isinstance(e, Report)])

    service.FileService.apply = without_reports  # type: ignore[method-assign]
else:
    sys.exit(f"FSV must be nofetch or nopublish, not {what!r}")

from tools.cli import main  # noqa: E402

sys.argv = ["pnp", "fileserver"]
sys.exit(main())
