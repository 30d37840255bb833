"""MAML++'s six fixes (Antoniou et al. 2019) by the names of their switches, in the paper's order.

Each name is a keyword argument of :class:`metaplus.algorithms.MAML` (``algo.<name>`` in the config, one
``conf/ablation`` variant each). The one list the loggers (a W&B tag per switch that is on), the report
(a column per switch) and the tests read. A leaf module with no import, so that ``metaplus.report``
reads it without loading torch and the learners.
"""

from __future__ import annotations

SWITCHES: tuple[str, ...] = ("msl", "da", "bnrs", "bnwb", "lslr", "ca")
