"""Run Kestrel's Argo CD health checks the way Argo CD does, in a real Lua 5.1 (lupa.lua51).

Argo CD (util/lua/lua.go) runs a health.lua in gopher-lua, a Lua 5.1: a new state per call, the resource as the
global `obj` (maps -> tables, lists -> 1-based arrays, numbers -> Lua numbers, null -> nil), the script's returned
table read as {status, message} (a nil message is ""), and a status outside its six codes turned into
Unknown "Lua returned an invalid health status". A check from argocd-cm runs without `useOpenLibs`: only the base,
package and table libraries and a safe `os` (time, date, clock) exist, so this runner removes the others too and
a script that calls string.* or math.* fails here as it would in Argo CD.

`argocd_health(kind, obj)` is used by tests/operator/test_argocd_health.py on the fixtures and by the e2e suite on
live objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lupa import lua51

REPO = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = REPO / "deploy" / "argocd" / "resource_customizations"
GROUP = "kestrel.dev"
HEALTH_STATUSES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
INVALID_HEALTH_STATUS = "Lua returned an invalid health status"

# Argo CD opens package, base (without coroutine: gopher-lua keeps it in a library Argo CD does not open), table and
# a safe os; everything else Lua 5.1's openlibs gives is removed. lupa's own `python` module goes too.
_RESTRICT = """
debug.setmetatable("", nil)
local safe_os = {time = os.time, date = os.date, clock = os.clock}
string, math, io, debug, coroutine, python = nil, nil, nil, nil, nil, nil
os = safe_os
package.loaded.string, package.loaded.math, package.loaded.io = nil, nil, nil
package.loaded.debug, package.loaded.coroutine, package.loaded.python = nil, nil, nil
package.loaded.os = safe_os
"""


def health_script(kind: str) -> str:
    """The health.lua Argo CD would run for a kestrel.dev `kind` (the same text as in argocd-cm-patch.yaml)."""
    return (CUSTOMIZATIONS / GROUP / kind / "health.lua").read_text()


def _to_lua(lua: lua51.LuaRuntime, value: Any) -> Any:
    """A JSON-like value as Argo CD's decodeValue gives it to Lua."""
    if isinstance(value, Mapping):
        table = lua.table()
        for key, item in value.items():
            if item is not None:
                table[str(key)] = _to_lua(lua, item)
        return table
    if isinstance(value, (list, tuple)):
        table = lua.table()
        for i, item in enumerate(value, start=1):
            table[i] = _to_lua(lua, item)
        return table
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"not a JSON value: {type(value).__name__} {value!r}")


def run_health_lua(script: str, obj: Mapping[str, Any], open_libs: bool = False) -> tuple[str, str]:
    """(status, message) of `script` on `obj`. A Lua error raises lupa.LuaError, a non-table result TypeError.
    `open_libs=True` is Argo CD's mode for its built-in checks (all of Lua's standard libraries)."""
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    if lua.lua_version != (5, 1):
        raise RuntimeError(f"expected Lua 5.1 (gopher-lua's language), got {lua.lua_version}")
    if not open_libs:
        lua.execute(_RESTRICT)
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(script)
    if lua51.lua_type(result) != "table":
        raise TypeError(f"expect table output from Lua script, not {lua51.lua_type(result) or type(result).__name__}")
    status, message = result["status"], result["message"]
    if message is None:
        message = ""
    if not isinstance(message, str):
        raise TypeError(f"hs.message must be a string, got {type(message).__name__} {message!r}")
    if status not in HEALTH_STATUSES:
        return "Unknown", INVALID_HEALTH_STATUS
    return status, message


def argocd_health(kind: str, obj: Mapping[str, Any]) -> tuple[str, str]:
    """(status, message) Argo CD shows for a kestrel.dev `kind` object (a dict as the API server returns it)."""
    return run_health_lua(health_script(kind), obj)
