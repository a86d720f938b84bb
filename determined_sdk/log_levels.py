"""The level of a line of a trial's output, read from the line itself.

A line carries a level when it starts with one the way logging libraries write it: Python
logging's default (``WARNING:root:...``), ``core_api.LOG_FORMAT`` (``INFO: [123] name: ...``),
a timestamp then the level (``2026-01-02 03:04:05,678 ERROR  ...``), a bracketed level
(``[ERROR] ...``), optionally after a ``[rank=N]`` prefix; ``warnings`` lines
(``file.py:12: UserWarning: ...``) are WARNING; a Python traceback, from ``Traceback (most
recent call last):`` to its exception line, is ERROR. Any other line has no level of its own:
the stream it came from (stdout or stderr) is kept apart and says nothing about a level, and
such lines are INFO.

Used by the supervisor when it ships lines, and by the SDK and CLI to print a line without its
level twice.
"""

from __future__ import annotations

import re

LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL", "EXCEPTION": "ERROR"}
_NAMES = "TRACE|DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL|EXCEPTION"

_PREFIX = re.compile(
    r"""
    ^(?:\[rank=\d+\]\s*)?                                    # a rank prefix
    (?:\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?      # a timestamp...
       (?:Z|[+-]\d\d:?\d\d)?\]?\s*(?:-\s*)?)?                # ...its zone, "]" or " - "
    (?:\[(?P<bracketed>NAMES)\]:?                             # [LEVEL]
      |(?P<bare>NAMES)(?::|\s))                               # LEVEL: or LEVEL<space>
    \s*
    """.replace("NAMES", _NAMES),
    re.VERBOSE,
)
_WARNING_LINE = re.compile(r"^\S.*?:\d+: \w*Warning: ")
_TRACEBACK = "Traceback (most recent call last):"
_CHAINED = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)


def parse_prefix(line: str) -> tuple[str | None, int]:
    """The level a line starts with and where its text begins after it, or ``(None, 0)``.

    ``parse_prefix("INFO: [12] core_api: hi") == ("INFO", 6)``
    """
    m = _PREFIX.match(line)
    if m is None:
        return None, 0
    name = m.group("bracketed") or m.group("bare")
    return _ALIASES.get(name, name), m.end()


class LevelParser:
    """Levels of the lines of one stream, in order (a traceback spans several lines).

    Args:
        default: The level of a line that carries none.
    """

    def __init__(self, default: str = "INFO") -> None:
        self.default = default
        self._in_traceback = False

    def level(self, line: str) -> str:
        """This line's level."""
        if line.startswith(_TRACEBACK):
            self._in_traceback = True
            return "ERROR"
        if self._in_traceback:
            if not line or line[0].isspace() or line.startswith(_CHAINED):
                return "ERROR"
            # The exception line ends the traceback (a chained one starts again above).
            self._in_traceback = False
            return "ERROR"
        name, _ = parse_prefix(line)
        if name is not None:
            return name
        if _WARNING_LINE.match(line):
            return "WARNING"
        return self.default
