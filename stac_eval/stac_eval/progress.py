"""Progress bars that suit both a terminal and a log file.

On a terminal a bar redraws in place about once a second. Written to a file or a pipe (CI,
`> run.log`, the demo's logs), every redraw becomes a line, so a bar there refreshes only every
`LOG_INTERVAL_S`: a long step leaves a few dozen lines, not thousands.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

TERMINAL_INTERVAL_S = 1.0
LOG_INTERVAL_S = 30.0


def progress_bar(**kwargs) -> tqdm:
    """A tqdm bar on stderr whose refresh interval fits where stderr goes."""
    stream = kwargs.setdefault("file", sys.stderr)
    interactive = hasattr(stream, "isatty") and stream.isatty()
    kwargs.setdefault("mininterval", TERMINAL_INTERVAL_S if interactive else LOG_INTERVAL_S)
    return tqdm(**kwargs)
