"""Text from clients, shown to a person at a terminal: whatever it holds is shown, never obeyed.

Used by ``sidecar tail`` and by the daemon's console log renderer, so it lives below both.
"""

from __future__ import annotations

import re

# Characters that steer a terminal or hide text: C0 and C1 controls (ESC, CSI, OSC 52's
# clipboard writes...), DEL, and the invisible and bidirectional format characters.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def printable(text: str) -> str:
    """``text`` with every character that could steer the operator's terminal escaped."""
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
