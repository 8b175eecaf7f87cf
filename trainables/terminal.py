"""One status line, redrawn in place on a terminal: the sweep's progress and the report's scoring."""

import shutil

CLEAR_LINE = "\r\x1b[K"


def fitted(line: str) -> str:
    """A line to redraw in place, cut to the terminal's width: "\r" returns to the start of a
    wrapped line's last row only, so each redraw of a wider line would leave a row behind."""
    return line[: shutil.get_terminal_size().columns - 1]
