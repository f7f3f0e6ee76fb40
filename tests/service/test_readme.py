"""README.md's configuration reference is generated from service/settings.py, and every file
README.md links to exists. `python tests/service/test_readme.py` regenerates the table."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from service.settings import SPECS, markdown_reference

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"
TABLE = re.compile(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), re.DOTALL)
REGENERATE = "python tests/service/test_readme.py"


def test_settings_table_is_the_generated_one() -> None:
    found = TABLE.search(README.read_text())
    assert found, f"README.md lacks the {BEGIN} ... {END} block: add it, then run {REGENERATE}"
    assert found.group(1) == markdown_reference(), (
        f"README.md's settings table is stale: run {REGENERATE} (it rewrites the block "
        "from service.settings.markdown_reference())"
    )


def test_every_setting_has_a_row_with_its_flag_and_variable() -> None:
    table = markdown_reference()
    for spec in SPECS:
        assert f"| `{spec.name}` | `{spec.flag}` | `{spec.env}` |" in table


@pytest.mark.parametrize(
    "path", ["helm/coldstart/README.md", "protos/API.md", "benchmarks/RESULTS.md"]
)
def test_readme_links_the_operator_references(path: str) -> None:
    assert f"]({path})" in README.read_text(), f"README.md should link {path}"


def test_every_relative_link_in_the_readme_exists() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert local, "README.md links no files"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == [], f"README.md links files that do not exist: {missing}"


def test_every_section_link_in_the_readme_has_its_heading() -> None:
    text = README.read_text()
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links <= anchors, f"README.md links sections it lacks: {sorted(links - anchors)}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def regenerate() -> None:
    """Rewrite the table between the markers in README.md."""
    text = README.read_text()
    if not TABLE.search(text):
        sys.exit(f"README.md lacks the {BEGIN} ... {END} block")
    README.write_text(TABLE.sub(lambda _: f"{BEGIN}\n{markdown_reference()}{END}", text))


if __name__ == "__main__":
    regenerate()
