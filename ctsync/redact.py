"""Masking the passcode in text that came from outside ctsync.

A passcode is registered when a `Secret` is made from it. From then on `redact` replaces
it with `***` wherever it shows, in every spelling a server, a proxy or a library can
echo it in: raw; percent-encoded (either hex case, `+` for a space, encoded twice);
backslash-escaped as JSON or a Python repr writes it (`\\"`, `\\/`, `\\u00xx`, `\\x27`,
escaped again); HTML-escaped (`&amp;`, `&lt;`, `&#39;`, `&#x27;`, escaped twice). Each
character may take any of these spellings, so a mix of them is masked too.

Only text from outside passes through here: server answers (before they are cut to a
readable length, so that a passcode straddling the cut is masked whole), library
exceptions, and values a person gave that are echoed back. ctsync's own sentences never
do: with the passcode `wrong`, the advice "a wrong region also answers 401" must stay.
"""

from __future__ import annotations

import re
import threading
from typing import AnyStr

MASK = "***"

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()
_pattern: re.Pattern[str] | None = None
_byte_pattern: re.Pattern[bytes] | None = None

# HTML's named references for the characters that have one (`html.escape` and friends).
_NAMED = {"&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos", "/": "sol"}
# How a character may be prefixed when it is escaped more than once.
_BACKSLASHES = r"\\+"
_AMPERSAND = r"&(?:amp;)*"


def _spellings(char: str) -> str:
    """A regular expression matching `char` in each of the spellings it may be echoed in."""
    code = ord(char)
    forms = [
        rf"%(?:25)*(?i:{code:02x})",  # percent-encoded, %41 or %2541, either case
        rf"{_BACKSLASHES}(?i:u00{code:02x}|x{code:02x})",  # \u0041 (JSON), \x41 (repr)
        rf"{_AMPERSAND}#(?:0*{code}|[xX]0*(?i:{code:x}));",  # &#65; &#x41;
    ]
    if not char.isalnum():
        forms.append(_BACKSLASHES + re.escape(char))  # \" \/ \\ (JSON), \' (repr)
    if char in _NAMED:
        forms.append(rf"{_AMPERSAND}{_NAMED[char]};")
    if char == " ":
        forms.append(r"\+")  # form-encoded
    # The character as it is, last: an alternation takes the first form that leads to a
    # match, and `&` or `#` as they are would match the start of an escape of theirs,
    # `&#38;`, leaving the rest of it unmasked (the passcode `000000&#`, HTML-escaped).
    forms.append(re.escape(char))
    return "(?:" + "|".join(forms) + ")"


def _compile(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    if not secrets:
        return None
    # Longest first: where one secret starts another, the longer one is masked whole.
    ordered = sorted(secrets, key=len, reverse=True)
    secrets_ = "|".join("".join(_spellings(c) for c in s) for s in ordered)
    return re.compile(f"(?=({secrets_}))")  # at every position: see `_mask`


def register(secret: str) -> None:
    """Mask `secret`, in all its spellings, in every text redacted from now on."""
    global _secrets, _pattern, _byte_pattern
    if not secret or secret in _secrets:
        return
    with _lock:
        _secrets = (*_secrets, secret)
        _pattern = _compile(_secrets)
        assert _pattern is not None
        _byte_pattern = re.compile(_pattern.pattern.encode("ascii", "backslashreplace"))


def forget_all() -> None:
    """Drop every registered secret (between runs in one process: tests, a new job)."""
    global _secrets, _pattern, _byte_pattern
    with _lock:
        _secrets = ()
        _pattern = None
        _byte_pattern = None


def redact(text: str) -> str:
    """`text` (from outside ctsync) with every registered secret replaced by `***`."""
    pattern = _pattern
    if pattern is None:
        return text
    # Again until nothing changes: text on both sides of a mask may spell a secret anew.
    for _ in range(8):
        masked = _mask(pattern, text, MASK)
        if masked == text:
            break
        text = masked
    return text


def redact_bytes(data: bytes) -> bytes:
    """`data` (from outside ctsync) with every registered secret replaced by `***`."""
    pattern = _byte_pattern
    if pattern is None:
        return data
    for _ in range(8):
        masked = _mask(pattern, data, MASK.encode())
        if masked == data:
            break
        data = masked
    return data


def _mask(pattern: re.Pattern[AnyStr], text: AnyStr, mask: AnyStr) -> AnyStr:
    """`text` with the union of every match of `pattern` (a lookahead that captures a
    secret at every position, see `_compile`: overlapping matches included) replaced by
    `mask`. A leftmost match alone can leave a piece: with the secret
    00000000, '0' then eight escaped zeros matched from the plain '0' and left the last
    escape."""
    spans: list[list[int]] = []
    for found in pattern.finditer(text):
        start, end = found.start(1), found.end(1)
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    if not spans:
        return text
    pieces = []
    at = 0
    for start, end in spans:
        pieces += [text[at:start], mask]
        at = end
    pieces.append(text[at:])
    return text[:0].join(pieces)
