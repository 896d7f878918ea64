"""The configurations the capacity benchmark measures: the product's config exactly as rendered, and any
candidates (post-edits of the rendered files) whose before/after numbers would justify a template change.

History: the first full run measured ``rendered`` (the templates then, with ``maxload = 1.8`` in asterisk.conf)
against ``candidate`` (rendered minus ``maxload``). The load-average gate refused every call on a 2-core host, so
the template dropped it: the old candidate is the product's config now, and ``RENDERED`` measures it as the
renderer writes it. Add a candidate to ``CANDIDATES`` to measure a change side by side. ``records_off`` is not a
change to adopt: measured beside the rendered config (records on, written to the instance's spool), it gives what
the call records cost per call.

The gateway-core and media-delay sections measured ``highpriority`` (rendered plus ``highpriority = yes``) as their
candidate; the template adopted it, so those sections now measure ``CANDIDATE`` = the rendered config without it
(the template before) beside the product's config, and their committed run's ``rendered`` rows are the template
before, its ``highpriority`` rows the template now."""

from __future__ import annotations

from bench.capacity import ConfigVariant

RENDERED = ConfigVariant(
    "rendered",
    "the product's templates as rendered (asterisk.conf [options] included: no maxload since the template dropped "
    "it, highpriority since it adopted real-time scheduling)",
)

RECORDS_OFF = ConfigVariant(
    "records_off",
    "the rendered config with dialplan.call_records false (no JSON line per call at hangup): beside the rendered "
    "config, the call records' cost per call",
    settings={"dialplan": {"call_records": False}},
)

CANDIDATES: tuple[ConfigVariant, ...] = (RECORDS_OFF,)

REFERENCE = ConfigVariant(
    "reference",
    "the fixed reference: a minimal hand-written relay (bench/reference/), the same topology, never changed",
    hand_written=True,
)

NORMAL_PRIORITY = ConfigVariant(
    "normal_priority",
    "the rendered config without asterisk.conf `highpriority = yes` (Asterisk at normal priority, SCHED_OTHER: the "
    "template before it adopted real-time scheduling)",
    asterisk_options={"highpriority": None},
)

# measured beside the product's config in the gateway_core and media_delay sections
CANDIDATE = NORMAL_PRIORITY
