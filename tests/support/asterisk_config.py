"""A small parser of Asterisk's config syntax, for asserting on rendered files.

It follows ``main/config.c`` where it matters to the tests: ``;`` starts a comment unless
escaped as ``\\;`` (Asterisk then keeps the ``;`` and drops the backslash), ``;-- … --;``
is a block comment, ``[name](!,tpl)`` declares a template / inherits templates, ``key = value``
and ``key => value`` are both assignments, keys may repeat (order kept), and ``#include`` /
``#exec`` lines are directives (reported, never followed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Entry:
    key: str
    value: str
    """As Asterisk reads it: ``\\;`` unescaped to ``;``."""
    raw: str
    """As written in the file, escapes kept."""
    operator: str
    line: int


@dataclass(frozen=True)
class Directive:
    kind: str
    """``include``, ``tryinclude`` or ``exec``."""
    argument: str
    line: int


@dataclass
class Section:
    name: str
    line: int
    is_template: bool = False
    templates: tuple[str, ...] = ()
    entries: list[Entry] = field(default_factory=list)

    def pairs(self) -> list[tuple[str, str]]:
        return [(e.key, e.value) for e in self.entries]

    def key_names(self) -> list[str]:
        return [e.key for e in self.entries]

    def get_all(self, key: str) -> list[str]:
        return [e.value for e in self.entries if e.key == key]

    def get(self, key: str, default: str | None = None) -> str | None:
        """The single value of a key; raises if the key repeats."""
        values = self.get_all(key)
        if len(values) > 1:
            raise KeyError(f"[{self.name}] has {len(values)} values for {key!r}")
        return values[0] if values else default

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(f"[{self.name}] has no {key!r}")
        return value

    def entry(self, key: str) -> Entry:
        found = [e for e in self.entries if e.key == key]
        if len(found) != 1:
            raise KeyError(f"[{self.name}] has {len(found)} entries for {key!r}")
        return found[0]


@dataclass
class AsteriskConfig:
    sections: list[Section] = field(default_factory=list)
    directives: list[Directive] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Lines Asterisk would reject or misread: text outside a section, lines without '='."""

    def names(self) -> list[str]:
        return [s.name for s in self.sections]

    def sections_named(self, name: str) -> list[Section]:
        return [s for s in self.sections if s.name == name]

    def section(self, name: str) -> Section:
        found = self.sections_named(name)
        if len(found) != 1:
            raise KeyError(f"{len(found)} sections named [{name}]")
        return found[0]

    def __contains__(self, name: object) -> bool:
        return any(s.name == name for s in self.sections)

    def resolved(self, section: Section) -> list[Entry]:
        """The section's entries with those of its templates first (Asterisk's inheritance)."""
        entries: list[Entry] = []
        for template in section.templates:
            bases = [s for s in self.sections if s.name == template and s.is_template]
            if not bases:
                raise KeyError(f"[{section.name}] inherits unknown template ({template})")
            entries += self.resolved(bases[-1])
        return entries + section.entries


_SECTION = re.compile(r"^\[([^\]]*)\]\s*(?:\(([^)]*)\))?\s*$")
_DIRECTIVE = re.compile(r"^#\s*(include|tryinclude|exec)\b\s*(.*)$", re.IGNORECASE)


def _strip_comment(line: str, in_block: bool) -> tuple[str, bool]:
    """Remove comments; returns the remaining text (escapes kept) and the block-comment state."""
    out: list[str] = []
    i = 0
    while i < len(line):
        if in_block:
            end = line.find("--;", i)
            if end < 0:
                return "".join(out), True
            i = end + 3
            in_block = False
            continue
        ch = line[i]
        if ch == "\\" and line.startswith(";", i + 1):
            out.append("\\;")
            i += 2
            continue
        if ch == ";":
            if line.startswith(";--", i):
                in_block = True
                i += 3
                continue
            break
        out.append(ch)
        i += 1
    return "".join(out), in_block


def parse(text: str) -> AsteriskConfig:
    config = AsteriskConfig()
    current: Section | None = None
    in_block = False
    for number, raw_line in enumerate(text.splitlines(), start=1):
        stripped, in_block = _strip_comment(raw_line, in_block)
        line = stripped.strip()
        if not line:
            continue
        directive = _DIRECTIVE.match(line)
        if directive:
            config.directives.append(Directive(directive.group(1).lower(), directive.group(2).strip(), number))
            continue
        header = _SECTION.match(line)
        if header:
            options = [o.strip() for o in (header.group(2) or "").split(",") if o.strip()]
            current = Section(
                name=header.group(1),
                line=number,
                is_template="!" in options,
                templates=tuple(o for o in options if o != "!"),
            )
            config.sections.append(current)
            continue
        if line.startswith("["):
            config.problems.append(f"line {number}: malformed section header {line!r}")
            continue
        match = re.match(r"^([^=]*?)\s*(=>|=)\s*(.*)$", line)
        if not match or not match.group(1):
            config.problems.append(f"line {number}: not an assignment {line!r}")
            continue
        if current is None:
            config.problems.append(f"line {number}: assignment outside any section {line!r}")
            continue
        raw_value = match.group(3).strip()
        current.entries.append(
            Entry(
                key=match.group(1).strip(),
                value=raw_value.replace("\\;", ";"),
                raw=raw_value,
                operator=match.group(2),
                line=number,
            )
        )
    return config


# --- pjsip.conf ----------------------------------------------------------------------------


def pjsip_objects(config: AsteriskConfig, type_: str | None = None) -> Iterator[Section]:
    for section in config.sections:
        if section.is_template:
            continue
        if type_ is None or section.get("type") == type_:
            yield section


def pjsip_object(config: AsteriskConfig, name: str, type_: str) -> Section:
    """The one object of a pjsip.conf named ``name`` with ``type = type_``."""
    found = [s for s in config.sections_named(name) if s.get("type") == type_]
    if len(found) != 1:
        raise KeyError(f"{len(found)} pjsip objects [{name}] of type {type_}")
    return found[0]


# --- extensions.conf -----------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One priority of a dialplan extension."""

    context: str
    pattern: str
    priority: str
    label: str | None
    app: str
    args: str
    line: int


@dataclass
class Dialplan:
    contexts: dict[str, list[Step]]
    includes: dict[str, list[str]]

    def extensions(self, context: str) -> dict[str, list[Step]]:
        out: dict[str, list[Step]] = {}
        for step in self.contexts.get(context, []):
            out.setdefault(step.pattern, []).append(step)
        return out


_PRIORITY = re.compile(r"^(n|hint|\d+|n\+\d+|\w+\+\d+)(?:\((\w+)\))?$")


def _split_app(text: str) -> tuple[str, str]:
    text = text.strip()
    paren = text.find("(")
    if paren < 0:
        return text, ""
    if not text.endswith(")"):
        raise ValueError(f"unbalanced application call {text!r}")
    return text[:paren].strip(), text[paren + 1 : -1]


def parse_dialplan(config: AsteriskConfig) -> Dialplan:
    """Contexts of an extensions.conf as steps; ``same =>`` continues the previous extension."""
    contexts: dict[str, list[Step]] = {}
    includes: dict[str, list[str]] = {}
    for section in config.sections:
        if section.name in ("general", "globals"):
            continue
        steps = contexts.setdefault(section.name, [])
        pattern: str | None = None
        for entry in section.entries:
            if entry.key == "include":
                includes.setdefault(section.name, []).append(entry.value)
                continue
            if entry.key not in ("exten", "same"):
                raise ValueError(f"line {entry.line}: unexpected key {entry.key!r} in [{section.name}]")
            if entry.key == "exten":
                pattern, priority, app = (part.strip() for part in entry.value.split(",", 2))
                pattern = pattern.split("/", 1)[0]
            else:
                if pattern is None:
                    raise ValueError(f"line {entry.line}: 'same' without a preceding 'exten'")
                priority, app = (part.strip() for part in entry.value.split(",", 1))
            prio = _PRIORITY.match(priority)
            if not prio:
                raise ValueError(f"line {entry.line}: bad priority {priority!r}")
            name, args = _split_app(app)
            steps.append(Step(section.name, pattern, prio.group(1), prio.group(2), name, args, entry.line))
    return Dialplan(contexts=contexts, includes=includes)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The language of an extension pattern (``_`` patterns) or the literal extension."""
    if not pattern.startswith("_"):
        return re.compile(re.escape(pattern))
    out: list[str] = []
    body = pattern[1:]
    i = 0
    while i < len(body):
        ch = body[i]
        if ch in "Xx":
            out.append("[0-9]")
        elif ch in "Zz":
            out.append("[1-9]")
        elif ch in "Nn":
            out.append("[2-9]")
        elif ch == ".":
            out.append(".+")
        elif ch == "!":
            out.append(".*")
        elif ch == "[":
            end = body.index("]", i)
            out.append("[" + body[i + 1 : end].replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out))


def pattern_matches(pattern: str, extension: str) -> bool:
    return pattern_regex(pattern).fullmatch(extension) is not None


def is_digit_only(pattern: str) -> bool:
    """True when every extension the pattern matches is '+' and digits (no '.'/'!' wildcard)."""
    if not pattern.startswith("_"):
        return re.fullmatch(r"\+?[0-9]+", pattern) is not None
    body = pattern[1:]
    without_classes = re.sub(r"\[[0-9+-]*\]", "", body)
    return re.fullmatch(r"[0-9+XxZzNn]*", without_classes) is not None


# --- dialplan reachability -----------------------------------------------------------------


@dataclass(frozen=True)
class Exten:
    """What ``${EXTEN}`` holds: a literal set by the dialplan, or caller-controlled text
    constrained by the patterns it was matched against (``chain`` of (context, pattern))."""

    literal: str | None
    chain: tuple[tuple[str, str], ...] = ()

    @property
    def untrusted(self) -> bool:
        return self.literal is None


@dataclass(frozen=True)
class Reached:
    step: Step
    exten: Exten
    path: tuple[str, ...]


@dataclass
class Walk:
    contexts: set[str] = field(default_factory=set)
    steps: list[Reached] = field(default_factory=list)

    def dials(self, uses: str | None = None) -> list[Reached]:
        return [r for r in self.steps if r.step.app == "Dial" and (uses is None or uses in r.step.args)]


_INPUT_APPS = frozenset({"WaitExten", "Background", "Read", "BackGround"})


def _targets(step: Step) -> list[tuple[str | None, str | None]]:
    """(context, extension) pairs a step may jump to; None means 'the current one'."""
    raw: list[str] = []
    if step.app in ("Goto", "Gosub"):
        raw.append(step.args)
    elif step.app in ("GotoIf", "GosubIf"):
        if "?" in step.args:
            raw += [t for t in step.args.split("?", 1)[1].split(":") if t.strip()]
    elif step.app == "Set" and "hangup_handler_push" in step.args:
        raw.append(step.args.split("=", 1)[1])
    out: list[tuple[str | None, str | None]] = []
    for target in raw:
        if step.app in ("Gosub", "GosubIf"):
            target = target.split("(", 1)[0]  # context,exten,priority(arguments): the arguments go nowhere
        parts = [p.strip() for p in target.split(",")]
        if len(parts) == 3:
            out.append((parts[0], parts[1]))
        elif len(parts) == 2:
            out.append((None, parts[0]))
        elif len(parts) == 1:
            out.append((None, None))
        else:
            raise ValueError(f"line {step.line}: cannot read jump target {target!r}")
    return out


def walk_dialplan(dialplan: Dialplan, start: str, *, max_depth: int = 64) -> Walk:
    """Every step reachable from a context entered with a caller-chosen extension."""
    result = Walk()
    seen: set[tuple[str, str, Exten]] = set()

    def extensions(context: str, stack: tuple[str, ...] = ()) -> dict[str, list[Step]]:
        own = dict(dialplan.extensions(context))
        for inc in dialplan.includes.get(context, []):
            if inc not in stack:
                for pattern, steps in extensions(inc, (*stack, context)).items():
                    own.setdefault(pattern, steps)
        return own

    def enter(context: str, extension: str | None, exten: Exten, path: tuple[str, ...]) -> None:
        result.contexts.add(context)
        if len(path) > max_depth:
            raise RecursionError(f"dialplan walk deeper than {max_depth}: {' -> '.join(path)}")
        for pattern, steps in extensions(context).items():
            if extension is None:  # caller-controlled: any extension may be chosen
                state = Exten(None, (*exten.chain, (context, pattern)))
            elif pattern_matches(pattern, extension):
                state = Exten(extension)
            else:
                continue
            run(context, pattern, steps, state, (*path, f"{context}/{pattern}"))

    def run(context: str, pattern: str, steps: list[Step], exten: Exten, path: tuple[str, ...]) -> None:
        key = (context, pattern, exten)
        if key in seen:
            return
        seen.add(key)
        for step in steps:
            result.steps.append(Reached(step, exten, path))
            if step.app in _INPUT_APPS:
                enter(context, None, Exten(None), path)
            if step.app == "Set" and step.args.startswith("TRANSFER_CONTEXT="):
                # a REFER on this channel enters that context with the Refer-To user: caller-chosen
                enter(step.args.split("=", 1)[1], None, Exten(None), path)
            if step.app == "Dial":
                for handler in re.findall(r"\bb\(([^)^]+)\^([^)^]+)\^[^)]*\)", step.args):
                    enter(handler[0], handler[1], Exten(handler[1]), path)  # a pre-dial handler
            for target_context, target in _targets(step):
                ctx = target_context or context
                if target is None:
                    continue  # a label or priority of the same extension
                if target in ("${EXTEN}", "+${EXTEN}"):  # '+' before digit-only text keeps it digit-only
                    if exten.untrusted:
                        enter(ctx, None, exten, path)
                    else:
                        enter(ctx, exten.literal, exten, path)
                elif "$" in target:
                    enter(ctx, None, Exten(None), path)
                else:
                    enter(ctx, target, Exten(target), path)

    enter(start, None, Exten(None), (start,))
    return result
