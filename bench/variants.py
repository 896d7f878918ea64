"""The configurations the capacity benchmark measures: the product's config exactly as rendered, and any
candidates (post-edits of the rendered files) whose before/after numbers would justify a template change.

History: the first full run measured ``rendered`` (the templates then, with ``maxload = 1.8`` in asterisk.conf)
against ``candidate`` (rendered minus ``maxload``). The load-average gate refused every call on a 2-core host, so
the template dropped it: the old candidate is the product's config now, and ``RENDERED`` measures it as the
renderer writes it. No candidate is pending; add one to ``CANDIDATES`` to measure a change side by side."""

from __future__ import annotations

from bench.capacity import ConfigVariant

RENDERED = ConfigVariant(
    "rendered",
    "the product's templates as rendered (asterisk.conf [options] included; no maxload since the template dropped it)",
)

CANDIDATES: tuple[ConfigVariant, ...] = ()

REFERENCE = ConfigVariant(
    "reference",
    "the fixed reference: a minimal hand-written relay (bench/reference/), the same topology, never changed",
    hand_written=True,
)

PRIORITY = ConfigVariant(
    "highpriority",
    "candidate: the rendered config plus asterisk.conf `highpriority = yes` (Asterisk runs real-time, SCHED_RR, "
    "ahead of the host's other work)",
    asterisk_options={"highpriority": "yes"},
)
