"""CI-native outputs of a gate: a JUnit XML file and a Markdown job summary.

Every CI system shows JUnit test cases (GitHub via an action, GitLab natively); each check
is one ``<testcase>``: a failing one carries ``<failure>``, an unmeasured one ``<skipped>``.
The Markdown fits ``$GITHUB_STEP_SUMMARY`` or a merge-request comment. Pure: text out.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from analysis.gate import Check
from analysis.tables import table

_ICONS = {"PASS": "✅", "FAIL": "❌", "SKIP": "⏭", "UNCHANGED": "✅", "IMPROVED": "🟢",
          "REGRESSED": "❌"}


def junit_xml(checks: Sequence[Check], suite: str) -> str:
    """A JUnit XML document with one test suite ``suite`` and one test case per check."""
    root = ET.Element("testsuites", name="gpt-load-lab gates")
    cases = ET.SubElement(root, "testsuite", name=suite, tests=str(len(checks)),
                          failures=str(sum(c.failed for c in checks)),
                          skipped=str(sum(c.outcome == "SKIP" for c in checks)), errors="0")
    for c in checks:
        case = ET.SubElement(cases, "testcase", classname=f"{suite}.{c.suite}", name=c.name)
        if c.failed:
            ET.SubElement(case, "failure", message=c.message, type=c.outcome).text = c.line
        elif c.outcome == "SKIP":
            ET.SubElement(case, "skipped", message=c.message)
        ET.SubElement(case, "system-out").text = c.line
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def summary_markdown(title: str, headline: tuple[list[str], list[tuple]],
                     checks: Sequence[Check]) -> str:
    """A job summary: the title and overall result, the headline table, then every check."""
    bad = [c for c in checks if c.failed]
    result = f"**FAILED**: {len(bad)} of {len(checks)} checks" if bad else \
        f"**PASSED**: {len(checks)} checks"
    rows = [(f"{_ICONS.get(c.outcome, '')} {c.outcome}", c.name, c.message) for c in checks]
    return "\n\n".join([
        f"## {title}", result, table(*headline),
        table(["Verdict", "Check", "Detail"], rows), ""])
