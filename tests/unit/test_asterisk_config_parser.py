"""The test-side parser of Asterisk's config syntax: it must read files the way Asterisk does."""

from __future__ import annotations

import pytest
from support.asterisk_config import (
    is_digit_only,
    parse,
    parse_dialplan,
    pattern_matches,
    pjsip_object,
    walk_dialplan,
)

pytestmark = pytest.mark.unit

SAMPLE = """\
; a header comment
[general]
static = yes ; trailing comment

[base](!)
type = endpoint
allow = ulaw

[phone](base)
allow = alaw
allow = g722
contact = sip:host:5060\\;transport=tcp ; comment after an escaped one
#include extra.conf
#exec /bin/echo hi
;-- a block
comment = spanning lines --;
[phone]
type = aor

[ctx]
exten => _X.,1,NoOp(x)
 same => n(label),Goto(other,${EXTEN},1)
"""


def test_sections_templates_and_repeated_keys() -> None:
    config = parse(SAMPLE)
    assert config.names() == ["general", "base", "phone", "phone", "ctx"]
    assert config.problems == []
    base = config.section("base")
    assert base.is_template
    phone = config.sections_named("phone")[0]
    assert phone.templates == ("base",)
    assert phone.get_all("allow") == ["alaw", "g722"]
    assert [(e.key, e.value) for e in config.resolved(phone)][:3] == [
        ("type", "endpoint"),
        ("allow", "ulaw"),
        ("allow", "alaw"),
    ]
    assert config.section("general").pairs() == [("static", "yes")]


def test_escaped_semicolon_is_part_of_the_value() -> None:
    phone = parse(SAMPLE).sections_named("phone")[0]
    entry = phone.entry("contact")
    assert entry.raw == "sip:host:5060\\;transport=tcp"
    assert entry.value == "sip:host:5060;transport=tcp"


def test_bare_semicolon_starts_a_comment() -> None:
    config = parse("[aor]\ncontact = sip:host:5060;transport=tcp\n")
    assert config.section("aor")["contact"] == "sip:host:5060"


def test_directives_are_reported_and_block_comments_skipped() -> None:
    config = parse(SAMPLE)
    assert [(d.kind, d.argument) for d in config.directives] == [("include", "extra.conf"), ("exec", "/bin/echo hi")]
    assert "comment" not in config.sections_named("phone")[0].key_names()


def test_pjsip_object_by_name_and_type() -> None:
    config = parse(SAMPLE)
    assert pjsip_object(config, "phone", "aor").line == 17
    with pytest.raises(KeyError):
        pjsip_object(config, "phone", "auth")


def test_problems_outside_sections_and_bad_lines() -> None:
    config = parse("orphan = 1\n[s]\nnot an assignment\n")
    assert len(config.problems) == 2


def test_dialplan_steps_and_same_lines() -> None:
    dialplan = parse_dialplan(parse(SAMPLE.split("[general]")[0] + "[ctx]" + SAMPLE.split("[ctx]")[1]))
    steps = dialplan.contexts["ctx"]
    assert [(s.pattern, s.priority, s.label, s.app, s.args) for s in steps] == [
        ("_X.", "1", None, "NoOp", "x"),
        ("_X.", "n", "label", "Goto", "other,${EXTEN},1"),
    ]


@pytest.mark.parametrize(
    ("pattern", "extension", "matches"),
    [
        ("_+1415XXX", "+1415123", True),
        ("_+1415XXX", "+14151234", False),
        ("_+1415XXX", "+1415&12", False),
        ("_X.", "1&PJSIP/x", True),
        ("_+X.", "+1&PJSIP/x", True),
        ("_[+0-9*#].", "#12", True),
        ("s", "s", True),
        ("_N", "1", False),
    ],
)
def test_pattern_matching(pattern: str, extension: str, matches: bool) -> None:
    assert pattern_matches(pattern, extension) is matches


@pytest.mark.parametrize(
    ("pattern", "digits"),
    [("_+1415XXX", True), ("_+X.", False), ("_X!", False), ("_[0-9]XX", True), ("_[a-z]X", False), ("1001", True)],
)
def test_digit_only_patterns(pattern: str, digits: bool) -> None:
    assert is_digit_only(pattern) is digits


def test_walk_tracks_what_constrains_exten() -> None:
    text = """\
[in]
exten => _+44XX,1,Goto(mid,${EXTEN},1)
exten => s,1,Goto(lit,s,1)
[mid]
exten => _+X.,1,Dial(PJSIP/${EXTEN}@carrier)
[lit]
exten => s,1,Dial(PJSIP/${EXTEN}@carrier)
[unreached]
exten => _X.,1,Dial(PJSIP/${EXTEN}@carrier)
"""
    walk = walk_dialplan(parse_dialplan(parse(text)), "in")
    assert walk.contexts == {"in", "mid", "lit"}
    chains = {r.exten.chain for r in walk.dials("${EXTEN}") if r.exten.untrusted}
    assert chains == {(("in", "_+44XX"), ("mid", "_+X."))}
    assert any(r.exten.literal == "s" for r in walk.dials("${EXTEN}"))
