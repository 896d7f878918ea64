"""What a handler's code can reach, found from the live objects rather than from files.

Each handler (`functions/<name>/app.py`) is imported and the code it can run followed the way Python resolves
it: the functions and classes its bytecode names (through their globals, wherever they are defined) and, for
every `deps.<port>` it reads, the methods of the adapter `build_deps` wires into that port. It over-approximates
on purpose (every exception class named counts as raisable, `except` is not modelled): a test built on it is
stricter, never blind.
"""

from __future__ import annotations

import dis
import importlib
import inspect
import types
from collections.abc import Iterator
from functools import cache
from typing import Any

OURS = ("sip_trunk", "sip_trunk_local")


def _ours(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module.split(".")[0] in OURS or module.startswith("function_")


def codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from codes(const)


def _ports_read(code: types.CodeType) -> set[str]:
    """`deps.<port>` attribute reads in this code."""
    found: set[str] = set()
    previous: dis.Instruction | None = None
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and previous is not None and previous.argval == "deps":
            found.add(str(ins.argval))
        previous = ins
    return found


def _imported_here(code: types.CodeType) -> dict[str, Any]:
    """What the function's own `import` / `from … import` statements bind (of our packages)."""
    found: dict[str, Any] = {}
    module: types.ModuleType | None = None
    for ins in dis.get_instructions(code):
        if ins.opname == "IMPORT_NAME":
            name = str(ins.argval)
            module = importlib.import_module(name) if name.split(".")[0] in OURS else None
            if module is not None:
                found[name.split(".")[0]] = importlib.import_module(name.split(".")[0])
        elif ins.opname == "IMPORT_FROM" and module is not None:
            attr = str(ins.argval)
            value = getattr(module, attr, None)
            if value is None:
                value = importlib.import_module(f"{module.__name__}.{attr}")
            found[attr] = value
    return found


class Reach:
    """The exception classes, functions and `deps` ports named by code reachable from some roots."""

    def __init__(self) -> None:
        self.errors: set[type[BaseException]] = set()
        self.functions: set[types.FunctionType] = set()
        self.ports: set[str] = set()
        """Ports the step's own code reads (not counting the adapters behind them)."""
        self._seen: set[int] = set()

    def follow(self, obj: Any, *, adapter: bool = False) -> Reach:
        obj = inspect.unwrap(obj) if callable(obj) else obj
        if id(obj) in self._seen or (not adapter and getattr(obj, "__module__", None) == _composition_root()):
            return self
        self._seen.add(id(obj))
        if isinstance(obj, type) and issubclass(obj, BaseException):
            self.errors.add(obj)
        elif isinstance(obj, type) and _ours(obj):
            for value in vars(obj).values():
                if isinstance(value, staticmethod | classmethod):
                    self.follow(value.__func__)
                elif isinstance(value, property):
                    self.follow(value.fget)
                elif isinstance(value, types.FunctionType):
                    self.follow(value)
        elif isinstance(obj, types.FunctionType) and _ours(obj):
            self.functions.add(obj)
            for cell in obj.__closure__ or ():
                try:
                    self.follow(cell.cell_contents)
                except ValueError:  # an empty cell
                    continue
            for code in codes(obj.__code__):
                self.ports |= _ports_read(code)
                scopes = [obj.__globals__, _imported_here(code)]
                for name in code.co_names:
                    value = obj.__globals__.get(name)
                    if isinstance(value, types.ModuleType) and value.__name__.split(".")[0] in OURS:
                        scopes.append(vars(value))
                scopes += [vars(v) for v in scopes[1].values() if isinstance(v, types.ModuleType)]
                for name in code.co_names:
                    for scope in scopes:
                        if name in scope:
                            self.follow(scope[name])
        return self


@cache
def _composition_root() -> str:
    """Not followed: it builds every adapter; a step reaches only the ports it reads from `deps`."""
    from sip_trunk.aws.wiring import build_deps

    return build_deps.__module__


@cache
def handlers() -> dict[str, Any]:
    from support.moto_sfn import load_handlers

    return load_handlers()


@cache
def adapters() -> dict[str, Any]:
    """What `build_deps` wires into each port (the adapters the deployed functions use)."""
    from sip_trunk.aws.wiring import build_deps
    from sip_trunk.workflows.config import parse_config

    config = parse_config(
        {"STACK_NAME": "trunk", "CONFIG_PREFIX": "/p", "SETTINGS_PARAMETER": "/x", "STATE_TABLE": "t"}
    )
    deps = build_deps(config)
    return {port: getattr(deps, port) for port in vars(deps) if not port.startswith("_")}


@cache
def reach(function: str) -> Reach:
    """Everything the code of `functions/<function>/app.py` can reach, the adapters behind its ports included."""
    scope = inspect.unwrap(handlers()[function]).__globals__
    found = Reach()
    for value in list(scope.values()):
        if isinstance(value, types.FunctionType) and value.__module__ == scope["__name__"]:
            found.follow(value)
    for port in sorted(found.ports):
        adapter = adapters()[port]
        found.follow(adapter if isinstance(adapter, types.FunctionType) else type(adapter), adapter=True)
    return found


def raisable(function: str) -> frozenset[type[BaseException]]:
    """Every exception class the code of `functions/<function>/app.py` can raise."""
    return frozenset(reach(function).errors)
