"""Reading the Lua scripts of rush_dask from ``rush_dask/core/lua/*.lua``.

Each script file starts with a header comment: what the script does, then
four machine-readable lines (a line may continue on the next comment lines
that are indented)::

    -- KEYS: worker_states queue            the fixed keys of the network it touches
    -- Families: task held                  the key families it builds (task:<key>, held:<wid>)
    -- ARGV: prefix, worker_id, ...         ARGV[1] is always the network's prefix
    -- Reply: ...

Then ``--@include "name"`` lines pull in ``lua/include/name.lua`` (each file
once per script, its own includes first), as BullMQ does. The loader puts a
prologue in front that binds ``p`` (the prefix, for the key families, which
only the script can know: it walks graphs) and ``K``, a table of the declared
keys (``K.queue`` is ``KEYS[i]``); reading an undeclared name of ``K`` is an
error at run time, and using one anywhere in the script (or its includes) is
an error already when the script is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from .constants import Keys

_INCLUDE = re.compile(r'^--@include "([a-z_]+)"\s*$', re.M)
_FIELD = re.compile(r"^-- (KEYS|Families|ARGV|Reply):(.*)$")
_KEY_USE = re.compile(r"\bK\.([A-Za-z_]\w*)")
_FAMILY_USE = re.compile(r"\bp \.\. '([a-z_]+):'")
_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


@dataclass(frozen=True)
class LuaScript:
    """One script, ready to register: its header fields and the full source EVAL runs."""

    name: str
    keys: tuple[str, ...]  # fixed keys of the network, in KEYS order
    families: tuple[str, ...]  # key families built from the prefix
    argv: str
    reply: str
    source: str


def _read(*parts: str) -> str:
    return resources.files("rush_dask.core").joinpath("lua", *parts).read_text(encoding="utf-8")


def script_names() -> list[str]:
    """The names of the scripts shipped with rush_dask.

    >>> "settle_and_pop" in script_names()
    True
    """
    folder = resources.files("rush_dask.core").joinpath("lua")
    return sorted(item.name[:-4] for item in folder.iterdir() if item.name.endswith(".lua"))


def parse_header(name: str, text: str) -> dict[str, str]:
    """The KEYS, Families, ARGV and Reply fields of a script's header comment.

    >>> parse_header("x", "-- x: does y.\\n-- KEYS: queue\\n-- Families:\\n-- ARGV: prefix\\n-- Reply: 1\\nreturn 1")
    {'KEYS': 'queue', 'Families': '', 'ARGV': 'prefix', 'Reply': '1'}
    """
    fields: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if not line.startswith("--") or line.startswith("--@"):
            break
        match = _FIELD.match(line)
        if match:
            current = match.group(1)
            fields[current] = match.group(2).strip()
        elif current and line.startswith("--   "):  # a continued field
            fields[current] += " " + line[2:].strip()
        else:
            current = None
    missing = [f for f in ("KEYS", "Families", "ARGV", "Reply") if f not in fields]
    if missing:
        raise ValueError(f"lua/{name}.lua: its header comment lacks the line(s) {', '.join(missing)}")
    return fields


def _expand(text: str, seen: set[str]) -> str:
    """``text`` with its include lines replaced by the files they name (each once)."""

    def include(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return _expand(_read("include", f"{name}.lua"), seen)

    return _INCLUDE.sub(include, text)


def _prologue(name: str, keys: tuple[str, ...]) -> str:
    bound = ", ".join(f"{key} = KEYS[{i}]" for i, key in enumerate(keys, 1))
    return (
        "local p = ARGV[1]\n"
        f"local K = setmetatable({{{bound}}}, {{__index = function(_, name)\n"
        f"  error('script {name}: key ' .. tostring(name) .. ' is not declared in its KEYS line')\n"
        "end})\n"
    )


def load_script(name: str, constants: Mapping[str, object] | None = None) -> LuaScript:
    """Read, check and assemble ``lua/<name>.lua``; ``@NAME@`` placeholders take ``constants``.

    >>> script = load_script("register")
    >>> script.keys, script.families
    (('worker_states',), ('worker', 'hb'))
    """
    return build(name, _read(f"{name}.lua"), constants)


def build(name: str, text: str, constants: Mapping[str, object] | None = None) -> LuaScript:
    """Check and assemble the script ``name`` whose file holds ``text`` (see :func:`load_script`).

    >>> build("bad", "-- bad: x\\n-- KEYS: queue\\n-- Families:\\n-- ARGV: prefix\\n-- Reply: 1\\nreturn K.seq")
    Traceback (most recent call last):
    ...
    ValueError: lua/bad.lua: uses K.seq without declaring it
    """
    header = parse_header(name, text)
    keys = tuple(header["KEYS"].split())
    families = tuple(header["Families"].split())
    body = _expand(text, set())
    for placeholder, value in (constants or {}).items():
        body = body.replace(f"@{placeholder}@", str(value))
    problems = []
    if not keys:
        problems.append("declares no key (a Redis Cluster could not route it)")
    problems += [f"declares {k!r}, not a fixed key of a network" for k in keys if k not in Keys.FIXED]
    problems += [f"declares the family {f!r}, unknown" for f in families if f not in Keys.FAMILIES]
    problems += [f"uses K.{k} without declaring it" for k in sorted(set(_KEY_USE.findall(body)) - set(keys))]
    problems += [
        f"builds {f}:<...> keys without declaring that family"
        for f in sorted(set(_FAMILY_USE.findall(body)) - set(families))
    ]
    problems += [f"has no value for @{c}@" for c in sorted(set(_PLACEHOLDER.findall(body)))]
    if "KEYS[" in body:
        problems.append("reads KEYS[...] directly (use the names in K)")
    if problems:
        raise ValueError(f"lua/{name}.lua: " + "; ".join(problems))
    return LuaScript(name, keys, families, header["ARGV"], header["Reply"], _prologue(name, keys) + body)


def load_all(constants: Mapping[str, object] | None = None) -> dict[str, LuaScript]:
    """Every script, by name (see :func:`load_script`)."""
    return {name: load_script(name, constants) for name in script_names()}
