"""Reading a results or baseline document's JSON strictly: what `json.loads` lets through
silently (a key twice in one object, NaN) or only with a traceback (deep nesting, a huge
integer) is a `JSONProblem` naming the file and, where it can be found, the line.

Pure Python and free of other gate imports; `store.load_results` turns the problem into its
error with the fix.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import math
import sys
from typing import Any

from harness.checks import shown


class JSONProblem(ValueError):
    """Text that is not a JSON document a results file can be; the message says where."""


class _BadToken(Exception):
    """A JSON token no results file can hold; `token` is its text, to find its line."""

    def __init__(self, problem: str, token: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.token = token
        self.fix = fix


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


# The most digits of an integer a results file holds: every number becomes a float, and the
# largest float (1.8e308) has 309 digits.
MAX_INTEGER_DIGITS = 309


def parse_json(text: str, where: str) -> Any:
    """The JSON document in `text`, read strictly; a JSONProblem naming `where` and, where it can
    be found, the line otherwise.

    Refused, beyond invalid JSON: a key twice in one object (a reader would keep one of them
    silently), NaN and Infinity (not JSON), numbers too large for a float, and nesting deeper
    than the parser's recursion limit.
    """
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_int=_parse_int,
                          parse_float=_parse_float, parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        # The parser stops at the end of the text, or inside a string never closed: a cut-off
        # file (a full disk, an interrupted copy); anything else is damage in the middle.
        cut_off = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        problem = "truncated JSON" if cut_off else "invalid JSON"
        raise JSONProblem(f"{where}: {problem} at line {exc.lineno} column {exc.colno} "
                          f"({exc.msg})") from None
    except _BadToken as exc:
        position = text.find(exc.token)
        at = "" if position < 0 else f" at {_line_and_column(text, position)}"
        raise JSONProblem(f"{where}: {exc.problem}{at}; {exc.fix}") from None
    except _DuplicateKey as exc:
        found = _duplicate_key_position(text)
        at = "" if found is None else f" (at {_line_and_column(text, found)})"
        raise JSONProblem(f"{where}: key {exc.key!r} appears twice in one object{at}; a reader "
                          f"would silently keep only one of the two, so remove or rename "
                          f"one") from None
    except RecursionError:
        raise JSONProblem(f"{where}: nested too deeply to read (deepest at "
                          f"{_line_and_column(text, _deepest_position(text))}); a results "
                          f"file nests a few levels only") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _DuplicateKey(key)
        document[key] = value
    return document


def _parse_int(digits: str) -> int:
    # The length first: int() of over 4300 digits raises, and of millions takes seconds.
    if len(digits.lstrip("-")) > MAX_INTEGER_DIGITS or abs(int(digits)) > sys.float_info.max:
        raise _BadToken(f"an integer of {len(digits.lstrip('-'))} digits", digits,
                        "no number of a results file is that large (every number becomes a "
                        f"float, at most {sys.float_info.max:.3g})")
    return int(digits)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadToken(f"the number {shown(text)}", text, "it is too large for a float")
    return value


def _parse_constant(name: str) -> float:
    raise _BadToken(name, name, "it is not a JSON number (a measurement went wrong before it "
                    "was written): write a finite number or null")


def _line_and_column(text: str, position: int) -> str:
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return f"line {line} column {column}"


def _deepest_position(text: str) -> int:
    """Where the nesting of `text` is deepest (brackets inside strings do not count)."""
    depth = deepest = at = 0
    in_string = escaped = False
    for position, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, at = depth, position
        elif char in "]}":
            depth -= 1
    return at


# The json package's pure-Python parser pieces (JSONObject, py_make_scanner): public in the
# modules, absent from their type stubs.
_PURE_PYTHON: Any = json


class _FindDuplicate(json.JSONDecoder):
    """A slower, position-aware parse (the pure-Python scanner), run only to say where a
    duplicate key is: the first object with a repeated key raises _FoundAt with the position
    of the repeated key."""

    def __init__(self) -> None:
        super().__init__()

        def parse_object(s_and_end: tuple[str, int], strict: bool, scan_once: Any,
                         object_hook: Any, object_pairs_hook: Any,
                         memo: Any = None) -> tuple[dict[str, Any], int]:
            text, start = s_and_end
            pairs, end = _PURE_PYTHON.decoder.JSONObject(s_and_end, strict, scan_once, None,
                                                         list, memo)
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    quoted = json.dumps(key)
                    first = text.find(quoted, start, end)
                    second = text.find(quoted, first + 1, end) if first >= 0 else -1
                    raise _FoundAt(second if second >= 0 else start)
                seen.add(key)
            return dict(pairs), end

        self.parse_object = parse_object
        self.scan_once = _PURE_PYTHON.scanner.py_make_scanner(self)


class _FoundAt(Exception):
    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position


def _duplicate_key_position(text: str) -> int | None:
    try:
        _FindDuplicate().decode(text)
    except _FoundAt as found:
        return found.position
    except (ValueError, RecursionError):
        return None
    return None
