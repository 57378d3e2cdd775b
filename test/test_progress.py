"""Progress bars do not flood a log: redraws are rare when the output is not a terminal."""

from __future__ import annotations

import io

from stac_eval.progress import LOG_INTERVAL_S, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_a_handful_of_lines_for_thousands_of_updates():
    log = io.StringIO()
    with progress_bar(total=5000, desc="frames", file=log) as bar:
        for index in range(5000):
            bar.update(1)
            bar.set_postfix(segmented=index, refresh=False)
    redraws = log.getvalue().count("\r")
    assert redraws <= 3, f"{redraws} redraws written to a log"


def test_a_terminal_redraws_about_every_second_and_a_log_every_half_minute():
    assert progress_bar(total=1, file=_Terminal()).mininterval == 1.0
    assert progress_bar(total=1, file=io.StringIO()).mininterval == LOG_INTERVAL_S
