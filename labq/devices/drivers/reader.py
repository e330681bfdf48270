"""Reading a command's output up to the device's real prompt.

A slow device sends its output a few characters at a time, so a read can end
anywhere, even inside the prompt. netmiko finds the prompt by sending a
return and taking what arrived within a fixed sleep, which on such a device
is part of a prompt (``t5``, ``50#``); searching the output for that part ends
the command early, and the output comes back cut short as a success.

Here the prompt is learned once, as the same complete line twice in a row,
and a command is done only when its echo has arrived and the text that
follows ends with a prompt line: at a line start, the device's name, an
optional mode such as ``(config)``, and the mode's sign. Nothing is inferred
from timing, so the whole output comes back at any speed.
"""

from __future__ import annotations

import re

#: The last character of a prompt line: enable, user, shell, csh.
PROMPT_SIGNS = "#>$%"
#: Line ends as devices send them (a pty may add a ``\r`` to a ``\r\n``).
_LINE_END = re.compile(r"\r\r\r\n|\r\r\n|\r\n|\n\r|\r")


def prompt_line(text: str) -> str | None:
    """The last line of ``text`` when it is a complete prompt, else None."""
    stripped = text.rstrip(" ")
    if not stripped or stripped[-1] not in PROMPT_SIGNS:
        return None
    line = re.split(r"[\r\n]", stripped)[-1].strip()
    return line or None


def prompt_pattern(prompt: str) -> re.Pattern[str]:
    """A pattern for ``prompt`` (``r5#``) and its other modes (``r5>``,
    ``r5(config-if)#``), matching only as the last line of what arrived."""
    if not prompt or prompt[-1] not in PROMPT_SIGNS:
        raise ValueError(f"{prompt!r} is not a prompt: it must end in one of {PROMPT_SIGNS!r}")
    base = re.escape(prompt[:-1].rstrip())
    return re.compile(rf"(?:^|[\r\n]){base}(?:\([^)\r\n]*\))?[{re.escape(PROMPT_SIGNS)}][ \t]*\Z")


class CommandRead:
    """What arrived for one command, fed chunk by chunk.

    ``done`` turns true once the command's echo has arrived and the text after
    it ends in a prompt line; ``output`` is then that text without the echo's
    line end and the prompt line, with ``\\r\\n`` as ``\\n``.
    """

    def __init__(self, command: str, prompt: re.Pattern[str]) -> None:
        self.command = command
        self._prompt = prompt
        self._text = ""
        self._body_at = -1  # where the text after the echo starts
        self.done = False

    def feed(self, chunk: str) -> bool:
        """Add ``chunk``; whether the command is done."""
        if self.done or not chunk:
            return self.done
        self._text += chunk
        if self._body_at < 0:
            at = self._text.find(self.command) if self.command else 0
            if at < 0:
                return False
            self._body_at = at + len(self.command)
        # Only the tail can hold a new prompt: search a window, not the whole text.
        start = max(self._body_at, len(self._text) - len(chunk) - 256)
        self.done = self._prompt.search(self._text, start) is not None
        return self.done

    @property
    def arrived(self) -> str:
        """Everything after the echo so far, prompt included, with ``\\n`` line ends."""
        if self._body_at < 0:
            return ""
        body = _LINE_END.sub("\n", self._text[self._body_at:])
        return body[1:] if body.startswith("\n") else body

    @property
    def output(self) -> str:
        """The command's output: what arrived, without the prompt line once done."""
        body = self.arrived
        if not self.done:
            return body
        return body.rpartition("\n")[0]
