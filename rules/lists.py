"""Named lists of values for rules: inline in the rule file, or files of one value per line.

In a rule file::

    lists:
      vip_customers: [cust_001, cust_002]              # inline
      disposable_domains: {file: lists/disposable_domains.txt}   # relative to the rule file

A list file holds one value per line; blank lines and lines starting with ``#`` are skipped and
surrounding spaces are stripped. Values are strings (quote numbers in inline lists: ``"411111"``).
Conditions test membership with ``order.email_domain in lists.disposable_domains``; the engine
answers that with a hash lookup, so a list of a million entries costs the same as a list of ten
(loading one takes well under a second).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rules.exceptions import ListError

MAX_FILE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class NamedList:
    name: str
    values: frozenset[str]
    source: str  # "inline" or the file path
    digest: str  # sha256 of the content (part of the ruleset version)

    def __len__(self) -> int:
        return len(self.values)


_CACHE: dict[tuple[str, int, int], tuple[frozenset[str], str]] = {}


def load_list_file(path: Path) -> tuple[frozenset[str], str]:
    """Values of a list file and the sha256 of its bytes.

    Unchanged files (same path, size and modification time) are not read again: a rules edit does
    not reload a million-entry list.
    """
    try:
        st = path.stat()
        if st.st_size > MAX_FILE_BYTES:
            raise ListError(f"{path}: list file is {st.st_size} bytes; the limit is {MAX_FILE_BYTES}")
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        raw = path.read_bytes()
    except OSError as exc:
        raise ListError(f"{path}: cannot read list file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ListError(f"{path}: list file is not UTF-8 (byte {exc.start})") from None
    if any(c in raw for c in (b"#", b"\r", b" ", b"\t", b"\v", b"\f")):
        values = frozenset(s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#"))
    else:  # the common case: one clean value per line
        values = frozenset(text.split("\n")) - {""}
    out = (values, hashlib.sha256(raw).hexdigest())
    if len(_CACHE) > 64:
        _CACHE.clear()
    _CACHE[key] = out
    return out


def build_list(name: str, spec: Any, base: Path) -> NamedList:
    """One list from its rule-file spec (a YAML sequence, or ``{file: path}``)."""
    if isinstance(spec, list):
        bad = [v for v in spec if not isinstance(v, str)]
        if bad:
            raise ListError(f"list {name}: values are strings; quote {bad[0]!r} as \"{bad[0]}\"")
        values = frozenset(v.strip() for v in spec)
        digest = hashlib.sha256("\n".join(sorted(values)).encode()).hexdigest()
        return NamedList(name, values, "inline", digest)
    if isinstance(spec, dict) and set(spec) - {"__line__"} == {"file"} and isinstance(spec["file"], str):
        path = Path(spec["file"])
        if not path.is_absolute():
            path = base / path
        values, digest = load_list_file(path)
        return NamedList(name, values, str(path), digest)
    raise ListError(f"list {name}: expected a sequence of values or {{file: path}}")
