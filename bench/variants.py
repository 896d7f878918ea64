"""The configurations the capacity benchmark measures: the product's config exactly as rendered, and a
candidate (post-edits of the rendered files) whose before/after numbers justify a template change."""

from __future__ import annotations

from bench.capacity import ConfigVariant

RENDERED = ConfigVariant("rendered", "the product's templates as rendered (asterisk.conf [options] included)")

CANDIDATE = ConfigVariant(
    "candidate",
    "rendered, without asterisk.conf maxload (a load-average gate that refuses calls on a 2-core host "
    "while Asterisk itself has CPU to spare)",
    asterisk_options={"maxload": None},
)
