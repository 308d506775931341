"""The documentation points at what exists: every relative link reaches its file and heading,
every repository path named in backticks exists, and the README's layout tree names only what
exists and every top-level folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import docs
from tests.docs import ROOT, doc_files

README = ROOT / "README.md"


def test_the_docs_are_there() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in doc_files()}
    assert {"README.md", "CHANGELOG.md", "docs/configuration.md"} <= names
    assert all(path.exists() for path in doc_files())


@pytest.mark.parametrize("document", doc_files(), ids=lambda path: path.name)
def test_every_relative_link_reaches_its_file_and_heading(document: Path) -> None:
    assert docs.links(document.read_text()), f"{document.name} links nowhere"
    assert docs.broken_links(document) == []


def test_every_page_of_docs_is_linked_from_the_readme() -> None:
    linked = {target.partition("#")[0] for target in docs.links(README.read_text())}
    pages = {f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set()


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Quick start", "quick-start"),
        ("Without Docker (the test harness)", "without-docker-the-test-harness"),
        ("docker compose (`.env`)", "docker-compose-env"),
        ("`password authentication failed`", "password-authentication-failed"),
        ("Exactly once: one transaction", "exactly-once-one-transaction"),
        ("2026-11-30: before the fetch fix", "2026-11-30-before-the-fetch-fix"),
        ("The benchmark's method", "the-benchmarks-method"),
        ("producer.py", "producerpy"),
        ("What each setting allows", "what-each-setting-allows"),
        ("snake_case and Ünïcode", "snake_case-and-ünïcode"),
        ("[Linked](docs/x.md) heading", "linked-heading"),
    ],
)
def test_anchors_follow_githubs_rule(heading: str, anchor: str) -> None:
    assert docs.github_anchor(heading) == anchor


def test_repeated_headings_get_numbered_anchors() -> None:
    text = "# Notes\n\n## Notes\n\n```\n# not a heading\n```\n\n### Notes\n"
    assert docs.anchors(text) == {"notes", "notes-1", "notes-2"}


def test_a_link_to_a_missing_file_or_heading_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Here\n\n## Also here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[fine](other.md#also-here) [fine](#page) [web](https://example.com/x)\n"
        "[gone](missing.md) [wrong](other.md#not-here) [self](#nowhere)\n"
        "`[not a link](nothing.md)`\n\n```\n[in a block](nothing.md)\n```\n"
    )
    assert docs.broken_links(page) == [
        "page.md: missing.md: no file missing.md",
        "page.md: other.md#not-here: no heading #not-here in other.md",
        "page.md: #nowhere: no heading #nowhere in page.md",
    ]


@pytest.mark.parametrize("document", doc_files(), ids=lambda path: path.name)
def test_every_repository_path_in_backticks_exists(document: Path) -> None:
    assert docs.missing_paths(document) == []


def test_the_path_check_finds_what_does_not_exist(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "`tests/run.sh` `infra/nothing.sql` `nothing.py` `README.md` `^[a-z/]+$`\n"
        "`psql -f infra/init_db.sql` `bash tests/missing.sh` `https://a.b/c.md`\n"
    )
    assert docs.named_paths(page.read_text()) == [
        "tests/run.sh",
        "infra/nothing.sql",
        "nothing.py",
        "README.md",
        "infra/init_db.sql",
        "tests/missing.sh",
    ]
    assert docs.missing_paths(page) == [
        "page.md: `infra/nothing.sql` does not exist",
        "page.md: `nothing.py` does not exist",
        "page.md: `tests/missing.sh` does not exist",
    ]


def test_paths_in_flight_have_not_landed_yet() -> None:
    """Once the restructuring lands a path, it leaves IN_FLIGHT, so that the docs are checked
    against the real tree again."""
    landed = sorted(path for path in docs.IN_FLIGHT if docs.exists(path))
    assert landed == [], f"remove from tests/docs.py IN_FLIGHT: {landed}"


def test_every_exception_is_named_by_some_doc() -> None:
    named = {path for document in doc_files() for path in docs.named_paths(document.read_text())}
    assert docs.NOT_IN_REPOSITORY - named == set()


def test_the_layout_names_only_what_exists_and_every_top_level_folder() -> None:
    assert docs.layout_problems(README.read_text()) == []


def test_the_layout_check_finds_a_missing_name_and_a_missing_folder() -> None:
    readme = README.read_text()
    block = docs.layout_block(readme)
    broken = block.replace("bench/", "bench/        nothing.py,", 1)
    broken = re.sub(r"^infra/.*\n", "", broken, flags=re.MULTILINE)
    problems = docs.layout_problems(readme.replace(block, broken))
    assert problems == [
        "layout: bench/nothing.py does not exist",
        "layout: the folder infra/ is not in it",
    ]


def test_the_layout_names_every_folder_and_helper_of_tests() -> None:
    """The tests/ entry names each folder and helper module there (what tests share lives in
    the helpers)."""
    named = set(docs.layout_entries(docs.layout_block(README.read_text()))["tests/"])
    tests = ROOT / "tests"
    present = {
        f"{path.name}/" if path.is_dir() else path.name
        for path in tests.iterdir()
        if not path.name.startswith(("test_", "__", "."))
        and (path.is_dir() or path.suffix in (".py", ".sh"))
        and path.name != "conftest.py"
    }
    assert present - named == set()


def test_no_test_file_imports_another() -> None:
    importing = [
        path.name
        for path in (ROOT / "tests").glob("*/test_*.py")
        if re.search(r"^\s*(from|import) tests\.\w+\.test_", path.read_text(), re.MULTILINE)
        or re.search(r"^\s*from (tests\.\w+|\.) import test_", path.read_text(), re.MULTILINE)
        or re.search(r"^\s*from \.test_", path.read_text(), re.MULTILINE)
    ]
    assert importing == []
