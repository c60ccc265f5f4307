"""The documentation: a short README front page, links that resolve, and the README's test command
equal to the one `.ci/run` runs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
CI_RUN = REPO / ".ci" / "run"

README_MAX_BYTES = 12 * 1024
CI_MARKER = "README test command"
README_TEST_HEADING = "Running the tests"

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.MULTILINE)
ABSOLUTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, mailto:, ...


def doc_pages() -> list:
    """The documentation pages: docs/*.md, without notes that are not pages (names starting with _)."""
    return sorted(p for p in DOCS.glob("*.md") if not p.name.startswith("_"))


def relative_links(markdown: str) -> list:
    """The targets of the inline and reference links of `markdown` that point into the repository
    (code blocks and code spans are not markdown links)."""
    prose = CODE_SPAN.sub("", FENCE.sub("", markdown))
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    return [t for t in targets if not ABSOLUTE.match(t)]


def broken_links(page: Path) -> list:
    """Each relative link of `page` that does not name an existing file or folder, with the reason.
    Links to anchors are reported too: they are not checked, so the pages link whole files."""
    problems = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        if "#" in target:
            problems.append(f"{target}: links an anchor (link the page instead)")
        elif not (page.parent / target).exists():
            problems.append(f"{target}: no such file")
    return problems


def ci_test_commands(script: str) -> list:
    """The commands of `.ci/run`'s block marked "README test command", in order."""
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if CI_MARKER in line)
    commands = []
    for line in lines[start + 1 :]:
        line = line.strip()
        if not line or line.startswith("#") or line in ("deactivate", "}"):
            break
        commands.append(line)
    return commands


def readme_test_commands(readme: str) -> list:
    """The commands of the README's test command: the first code block after the heading
    "Running the tests", one line of commands joined by `&&`."""
    section = readme.split(README_TEST_HEADING, 1)[1]
    block = re.search(r"^```[a-z]*\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert block, f"no code block under {README_TEST_HEADING!r} in README.md"
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(lines) == 1, f"README's test command is not one line: {lines}"
    return [command.strip() for command in lines[0].split("&&")]


def test_readme_is_a_short_front_page() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, over {README_MAX_BYTES}: move details into docs/ and link them"
    )


@pytest.mark.parametrize("page", [README, *doc_pages()], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_every_docs_page_is_listed_in_the_index_and_linked_from_the_readme() -> None:
    index_links = set(relative_links((DOCS / "index.md").read_text(encoding="utf-8")))
    readme_links = set(relative_links(README.read_text(encoding="utf-8")))
    for page in doc_pages():
        if page.name == "index.md":
            assert "docs/index.md" in readme_links
            continue
        assert page.name in index_links, f"docs/index.md does not list {page.name}"
        assert f"docs/{page.name}" in readme_links, f"README.md does not link docs/{page.name}"


def test_readme_test_command_is_the_one_ci_runs() -> None:
    ci = ci_test_commands(CI_RUN.read_text(encoding="utf-8"))
    assert ci, f".ci/run has no commands after its {CI_MARKER!r} marker"
    assert readme_test_commands(README.read_text(encoding="utf-8")) == ci


def test_pypi_description_has_no_links_into_the_repository() -> None:
    description = subprocess.run(
        [sys.executable, "setup.py", "--long-description"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "# clip" in description
    assert relative_links(description) == []
    assert "docs/cli.md" in description  # the link's text still names the page


# ---- The checks themselves can fail -------------------------------------------------------------


def test_link_check_reports_missing_files_and_anchors_but_not_code(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# there\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md), [web](https://example.com/x.md), [gone](missing.md), [anchor](there.md#x)\n"
        "`[not a link](code.md)`\n```\n[nor this](block.md)\n```\n[ref]: also-missing.md\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "there.md#x: links an anchor (link the page instead)",
        "also-missing.md: no such file",
    ]


def test_command_comparison_sees_a_difference() -> None:
    script = "x\n    # --- README test command ---\n    pip install a==1\n    pytest -x\n    deactivate\n"
    assert ci_test_commands(script) == ["pip install a==1", "pytest -x"]
    readme = "## Running the tests\n\n```bash\npip install a==2 && pytest -x\n```\n"
    assert readme_test_commands(readme) == ["pip install a==2", "pytest -x"]
    assert readme_test_commands(readme) != ci_test_commands(script)
