"""The robustness test suite: every check of the checklist we build on, Szegedy et al.'s
analyses, Yin et al.'s Fourier view and the accuracy-robustness trade-off, run as one job that
writes a report a person can read (``index.html``), a JSON file a program can read
(``report.json``, schema in ``robustkern.suite.report``) and a terminal table.

    from robustkern import suite
    report = suite.run_suite({"mine": model}, (x_test, y_test), train_data=(x_train, y_train),
                             factory=make_model, out="report")
    print(suite.terminal_table(report))

Each check (``CHECKS``) returns a verdict (pass / warn / fail / info), a one-line summary, the
rationale, the numbers behind it, tables and images; a check that needs something not given
says so (verdict "skipped"), and one that crashes is reported as that check's error while the
rest still run.
"""

from robustkern.suite.core import VERDICTS, Check, Outcome, Skip, Suite, Threat, literature_threats
from robustkern.suite.report import SCHEMA, terminal_table, validate
from robustkern.suite.runner import CHECK_NAMES, CHECKS, default_models, print_summary, run_suite

__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "SCHEMA",
    "VERDICTS",
    "Check",
    "Outcome",
    "Skip",
    "Suite",
    "Threat",
    "default_models",
    "literature_threats",
    "print_summary",
    "run_suite",
    "terminal_table",
    "validate",
]
