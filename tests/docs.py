"""The documentation's generated parts, and what the doc tests read out of the Markdown.

docs/configuration.md holds tables generated from the scripts' own option declarations and
from .env.example and docker-compose.yml, docs/development.md the fake Binance's fault
kinds, so that neither reference can drift from the code:

    .venv/bin/python -m tests.docs --write    # rewrite the generated parts
    .venv/bin/python -m tests.docs            # exit 1 and say which part is out of date

tests/unit/test_docs_generated.py fails while a generated part differs from what this module
renders. `options_of` is the one place that knows where each script declares its
options.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from btcpipe.settings import Option

ROOT = Path(__file__).resolve().parents[1]
for _folder in ("producer", "consumer"):  # the scripts' packages, as tests/conftest.py does
    if str(ROOT / _folder) not in sys.path:
        sys.path.insert(0, str(ROOT / _folder))

DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCRIPTS = ("producer", "consumer")


def doc_files() -> list[Path]:
    """Every Markdown file of the documentation: README, CHANGELOG and docs/."""
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]


# --- where the scripts declare their options --------------------------------------------------


class Declared(NamedTuple):
    """A script's option declarations, as its command line is built from them."""

    options: Sequence[Option]  # each with an environment variable, in --help order
    shown: Mapping[str, str]  # field -> the default's text where the value would mislead
    defaults: object  # the script's Settings(): each option's default is its field there
    parser: argparse.ArgumentParser  # also has the flags without a variable
    # The producer's --source names, and per field (of an option or a flag) the names that use
    # it; both empty while the declarations do not say (the table then has no such column).
    sources: Sequence[str] = ()
    used_by: Mapping[str, Sequence[str]] = {}


def options_of(script: str) -> Declared:
    """Where `script` declares its options. The one function to change when they move."""
    if script == "producer":
        from pricefeed import settings as producer
        from pricefeed.sources.registry import SOURCES

        fields = {field for entry in SOURCES.values() for field in entry.options}
        used_by = {f: tuple(n for n, e in SOURCES.items() if f in e.options) for f in fields}
        used_by["files"] = used_by.get("replay_files", ())  # the positional argument's name
        return Declared(
            producer.options_for(SOURCES),
            producer.SHOWN_DEFAULTS,
            producer.Settings(),
            producer.build_parser(SOURCES),
            tuple(SOURCES),
            used_by,
        )
    if script == "consumer":
        from aggregator import settings as consumer

        return Declared(
            consumer.OPTIONS,
            consumer.SHOWN_DEFAULTS,
            consumer.Settings(),
            consumer.build_parser(),
        )
    raise ValueError(f"no script {script!r}; the scripts are {', '.join(SCRIPTS)}")


# --- the settings of a script, as rows ----------------------------------------------------------


class Setting(NamedTuple):
    variable: str  # "" for a flag without a variable
    flag: str
    default: str
    meaning: str
    used_by: Sequence[str] = ()


def default_text(declared: Declared, option: Option) -> str:
    """The default as --help shows it (btcpipe.settings.command_line)."""
    default = getattr(declared.defaults, option.field)
    if isinstance(default, tuple):
        default = ",".join(default)
    return str(declared.shown.get(option.field, default))


def settings_of(script: str) -> list[Setting]:
    """Every setting of `script`: its options, then the flags and arguments without a
    variable (--check-hosts, --resume, --take-over, the replay's files)."""
    return rows_of(options_of(script))


def rows_of(declared: Declared) -> list[Setting]:
    rows = [
        Setting(
            option.env,
            option.flag,
            default_text(declared, option),
            option.help,
            declared.used_by.get(option.field, ()),
        )
        for option in declared.options
    ]
    fields = {option.field for option in declared.options}
    # argparse lists its actions only through this attribute (as sphinx-argparse reads it).
    for action in declared.parser._actions:
        if action.dest in fields or isinstance(action, argparse._HelpAction):
            continue
        rows.append(flag_only(action)._replace(used_by=declared.used_by.get(action.dest, ())))
    return rows


def flag_only(action: argparse.Action) -> Setting:
    meaning = re.sub(r" \[[^\]]*\]$", "", action.help or "")  # the default is its own column
    if not action.option_strings:
        return Setting("", f"{action.dest} ...", "none", meaning)
    if action.default is True:
        return Setting("", " / ".join(action.option_strings), "on", meaning)
    return Setting("", " / ".join(action.option_strings), "off", meaning)


# --- .env and docker-compose.yml ----------------------------------------------------------------


class EnvEntry(NamedTuple):
    value: str
    comment: str


def env_example() -> dict[str, EnvEntry]:
    """NAME=value lines of .env.example, each with the comment lines right above it."""
    entries: dict[str, EnvEntry] = {}
    comment: list[str] = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# ---") or not stripped:
            comment = []  # a section heading or a blank line: not about the next variable
        elif stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
        else:
            name, _, value = stripped.partition("=")
            entries[name] = EnvEntry(value, " ".join(comment))
            comment = []
    return entries


INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):-(?P<default>[^}]*)\}")


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return services


def readers_of(name: str, services: Mapping[str, Any]) -> list[str]:
    """The services whose definition reads `name` from .env; for a script, `consumer (as
    VAR)` where it gets the value under another variable's name."""
    readers = []
    for service, definition in services.items():
        renamed: set[str] = set()
        reads = False
        for key, text in environment_and_rest(definition):
            if any(match["name"] == name for match in INTERPOLATION.finditer(text)):
                reads = True
                if service in SCRIPTS and key and key != name:
                    renamed.add(key)
        if reads:
            readers.append(f"{service} (as {', '.join(sorted(renamed))})" if renamed else service)
    return readers


def environment_and_rest(definition: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(variable, value) of a service's environment, then ('', text) of every other string."""
    environment = definition.get("environment") or {}
    for variable, value in environment.items():
        yield variable, "" if value is None else str(value)
    for key, value in definition.items():
        if key != "environment":
            yield from (("", text) for text in all_strings(value))


def all_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from all_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_strings(item)


def script_option(variable: str) -> tuple[str, Declared, Option] | None:
    """The script option whose variable is `variable`, producer's first."""
    for script in SCRIPTS:
        declared = options_of(script)
        for option in declared.options:
            if option.env == variable:
                return script, declared, option
    return None


def differs_from_script_default(variable: str, value: str) -> bool:
    """Whether .env.example's value gives the script another setting than its own default,
    judged by the option's own parser (an empty value means the default)."""
    found = script_option(variable)
    if found is None or not value:
        return False
    _, declared, option = found
    return bool(option.parse(value) != getattr(declared.defaults, option.field))


def passed_as_is(variable: str, services: Mapping[str, Any]) -> list[str]:
    """The scripts compose gives `variable` to under its own name, from .env."""
    return [
        script
        for script in SCRIPTS
        if re.fullmatch(
            rf"\$\{{{variable}:-[^}}]*\}}",
            str((services[script].get("environment") or {}).get(variable, "")),
        )
    ]


def fixed_by_compose(services: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(script, variable, value) that docker-compose.yml sets for a script itself rather than
    passing the .env variable of the same name."""
    fixed = []
    for script in SCRIPTS:
        for variable, value in (services[script].get("environment") or {}).items():
            text = "" if value is None else str(value)
            if not re.fullmatch(rf"\$\{{{variable}:-[^}}]*\}}", text):
                fixed.append((script, variable, text))
    return fixed


# --- rendering ----------------------------------------------------------------------------------


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def code(text: str) -> str:
    return f"`{text}`" if text else ""


def settings_table(script: str) -> str:
    return table_of(options_of(script))


def table_of(declared: Declared) -> str:
    """The settings as a Markdown table; with a `used by --source` column once the
    declarations say which source uses what: `all` for what every source uses, `-` for what
    they name for no source (the app's own flags, such as --check-hosts)."""
    rows = rows_of(declared)
    with_sources = bool(declared.sources)
    head = [
        "variable",
        "flag",
        "default",
        *(["used by --source"] if with_sources else []),
        "meaning",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [code(row.variable), code(row.flag), code(row.default)]
        if with_sources:
            users = [name for name in declared.sources if name in row.used_by]
            cells.append("all" if len(users) == len(declared.sources) else ", ".join(users) or "-")
        cells.append(cell(row.meaning))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def env_table() -> str:
    services = compose_services()
    lines = ["| variable | default | read by | meaning |", "| --- | --- | --- | --- |"]
    for name, entry in env_example().items():
        meaning = cell(entry.comment)
        scripts = passed_as_is(name, services)
        if scripts:
            meaning += " Setting of " + " and ".join(f"[{s}.py](#{s}py)" for s in scripts)
            if differs_from_script_default(name, entry.value):
                meaning += "; compose's default is not the script's own"
            meaning += "."
        readers = ", ".join(readers_of(name, services))
        lines.append(f"| `{name}` | {code(entry.value)} | {readers} | {meaning} |")
    return "\n".join(lines)


def compose_fixed_table() -> str:
    lines = ["| script | variable | value in docker-compose.yml |", "| --- | --- | --- |"]
    for script, variable, value in fixed_by_compose(compose_services()):
        lines.append(f"| {script}.py | `{variable}` | `{value}` |")
    return "\n".join(lines)


def fault_control() -> dict[str, Any]:
    """What the fake Binance's control endpoint says it takes (GET /_harness)."""
    from tests.harness.fault_control import describe

    return describe()


def fault_control_tables() -> str:
    control = fault_control()
    lines = ["| request | what it does |", "| --- | --- |"]
    for request, what in control["endpoints"].items():
        lines.append(f"| `{request}` | {cell(what)} |")
    lines += ["", "| fault `kind` | answer | parameters [default] |", "| --- | --- | --- |"]
    for name, kind in control["kinds"].items():
        parameters = "; ".join(f"`{p}`: {cell(m)}" for p, m in kind["parameters"].items())
        lines.append(f"| `{name}` | {cell(kind['what'])} | {parameters or '-'} |")
    return "\n".join(lines)


GENERATED: dict[str, Callable[[], str]] = {
    "producer": lambda: settings_table("producer"),
    "consumer": lambda: settings_table("consumer"),
    "env": env_table,
    "compose-fixed": compose_fixed_table,
    "fault-control": fault_control_tables,
}
REGION = re.compile(
    r"(?P<open><!-- generated: (?P<name>[\w-]+) \(.*?\) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- end: (?P=name) -->)",
    re.DOTALL,
)


def generated_regions(text: str) -> dict[str, str]:
    """{name: body} of the generated regions of a document."""
    return {m["name"]: m["body"] for m in REGION.finditer(text)}


def regenerate(text: str) -> str:
    """The document with every generated region rendered anew."""

    def render(match: re.Match[str]) -> str:
        return f"{match['open']}{GENERATED[match['name']]()}\n{match['close']}"

    return REGION.sub(render, text)


def outside_generated(text: str) -> str:
    """The hand-written part of a document."""
    return REGION.sub("", text)


# --- reading Markdown ---------------------------------------------------------------------------

FENCE = re.compile(r"^```[^\n]*\n.*?^```[ \t]*$", re.DOTALL | re.MULTILINE)


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def prose(text: str) -> str:
    """The text without its fenced code blocks."""
    return FENCE.sub("", text)


def inline_code(text: str) -> list[str]:
    """The `code spans` of the prose (single backticks)."""
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", prose(text))


def links(text: str) -> list[str]:
    """The targets of the prose's [text](target) links, inline code left out."""
    without_code = re.sub(r"`[^`\n]*`", "", prose(text))
    return re.findall(r"\]\(([^)\s]+)\)", without_code)


def headings(text: str) -> list[str]:
    return [m[1] for m in re.finditer(r"^#{1,6} +(.+?) *#* *$", prose(text), re.MULTILINE)]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, punctuation dropped (all but
    letters, marks, numbers, connector punctuation such as _, spaces and -), spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = "".join(
        ch
        for ch in text
        if ch in " -" or unicodedata.category(ch)[0] in "LMN" or unicodedata.category(ch) == "Pc"
    )
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor of a document's headings; GitHub numbers repeats -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    for heading in headings(text):
        anchor = github_anchor(heading)
        if anchor in seen:
            seen[anchor] += 1
            found.add(f"{anchor}-{seen[anchor]}")
        else:
            seen[anchor] = 0
            found.add(anchor)
    return found


def sql_queries(text: str) -> dict[str, str]:
    """{comment: statement} of a document's ```sql blocks, each statement under its
    `-- comment` line."""
    queries = {}
    for block in fenced_blocks(text, "sql"):
        for comment, statement in re.findall(r"-- ([^\n]*)\n(.*?;)", block, re.DOTALL):
            queries[comment] = statement
    return queries


def stale_regions(path: Path) -> list[str]:
    """The generated regions of a document that differ from what would be rendered now."""
    text = path.read_text()
    fresh = generated_regions(regenerate(text))
    return [name for name, body in generated_regions(text).items() if fresh[name] != body]


# --- what the docs may name that does not exist here -------------------------------------------

# Paths of the restructuring in flight (issue 17: producer/ and consumer/ by layer), which the
# layout tree and the recipes of docs/development.md already name. Each leaves this list when
# it lands: tests/unit/test_docs_links.py fails for an entry that exists.
IN_FLIGHT: set[str] = set()
# Paths the docs name that are not files of this repository: inside the containers, beside
# the checkout, made when run, or a pattern.
NOT_IN_REPOSITORY = {
    "../shared/binance-data/",
    "/app/infra/migrations",
    "/tmp/btc-pipeline/replay",
    "~/.cache/btc-pipeline/replay",
    "../infra/migrations",
    "/proc",
    "infra/migrations/NNN_name.sql",
    "infra/migrations/NNN_what.sql",
    "ticker/price",
    # of earlier releases, named by CHANGELOG.md
    "producer/pricefeed/shared/",
    "consumer/aggregator/shared/",
}
FILE_SUFFIXES = (".py", ".sh", ".sql", ".yml", ".json", ".md")


PATTERN_CHARACTERS = set("^[]{}<>$*")  # a regular expression, a placeholder or a glob


def exists(path: str) -> bool:
    return (ROOT / path).exists()


@functools.cache
def repository_names() -> frozenset[str]:
    """The name of every file and folder of the repository (what .gitignore leaves out and
    .git excepted)."""
    ignored = ignored_patterns()
    names = set()
    for _dir, subfolders, files in os.walk(ROOT):
        subfolders[:] = [
            name
            for name in subfolders
            if name != ".git" and not any(fnmatch.fnmatch(name, p) for p in ignored)
        ]
        names.update(subfolders)
        names.update(files)
    return frozenset(names)


def ignored_patterns() -> list[str]:
    return [
        line.strip().rstrip("/")
        for line in (ROOT / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def path_exists(path: str) -> bool:
    """A path from the repository root, or a bare file name that some file has; paths in
    flight count (the restructuring names its modules before they land)."""
    if exists(path) or path in IN_FLIGHT:
        return True
    if "/" not in path:
        return path in repository_names() or any(p.endswith(f"/{path}") for p in IN_FLIGHT)
    return False


# --- links and anchors --------------------------------------------------------------------------


def broken_links(document: Path) -> list[str]:
    """Each relative link of `document` whose file does not exist, or whose #anchor is no
    heading of that file."""
    text = document.read_text()
    problems = []
    for target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            problems.append(f"{document.name}: {target}: no file {file_part}")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked.read_text())):
            problems.append(f"{document.name}: {target}: no heading #{anchor} in {linked.name}")
    return problems


# --- repository paths in backticks ---------------------------------------------------------------


def top_level_entries() -> set[str]:
    return {p.name for p in ROOT.iterdir()}


def looks_like_path(token: str) -> bool:
    return "/" in token or token.endswith(FILE_SUFFIXES)


def named_paths(text: str) -> list[str]:
    """The repository paths a document names in backticks: a code span that is one token
    looking like a path (it has a / or ends in .py .sh .sql .yml .json .md), and in a
    longer span (a command) each token that starts with a top-level entry of the repository."""
    tops = top_level_entries()
    paths: list[str] = []
    for span in inline_code(text):
        tokens = [token.strip("'\"(),;") for token in span.split()]
        if len(tokens) == 1:
            candidates = [t for t in tokens if looks_like_path(t) and "://" not in t]
        else:
            candidates = [t for t in tokens if t.split("/")[0] in tops and looks_like_path(t)]
        paths.extend(t for t in candidates if not PATTERN_CHARACTERS & set(t))
    return paths


def missing_paths(document: Path) -> list[str]:
    return [
        f"{document.name}: `{path}` does not exist"
        for path in named_paths(document.read_text())
        if not path_exists(path) and path not in NOT_IN_REPOSITORY
    ]


# --- the README's layout tree --------------------------------------------------------------------

LAYOUT_NAME = re.compile(
    r"(?<![\w./-])((?:[\w.-]+/)*(?:[\w.-]+\.(?:py|sh|sql|yml|json|md|txt|toml|example)|Dockerfile"
    r"|[\w.-]+/))(?![\w/-])"
)


def layout_block(readme: str) -> str:
    (block,) = re.findall(r"^## Layout\n\n```\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)
    return block


def layout_entries(block: str) -> dict[str, list[str]]:
    """{top-level entry: the file and folder names of its lines}; an entry starts at the first
    column with a folder name (`tests/`), or with files of the repository root ('')."""
    entries: dict[str, list[str]] = {}
    current = ""
    for line in block.splitlines():
        names = LAYOUT_NAME.findall(line)
        if line[:1].strip():
            first = line.split()[0]
            current = first if first.endswith("/") else ""
            if current:
                names = names[1:]
        entries.setdefault(current, []).extend(names)
    return entries


def layout_problems(readme: str) -> list[str]:
    """Names the layout gives that exist nowhere in their top-level folder (nor as a path from
    the repository root), and top-level folders it does not name."""
    problems = []
    entries = layout_entries(layout_block(readme))
    for top, names in entries.items():
        for name in names:
            if not names_existing(top, name):
                problems.append(f"layout: {top}{name} does not exist")
    for folder in repository_folders():
        if f"{folder}/" not in entries:
            problems.append(f"layout: the folder {folder}/ is not in it")
    return problems


def names_existing(top: str, name: str) -> bool:
    """Whether `name` is a path from the repository root, or ends a path in folder `top`
    (in flight counts: the restructuring names its modules before they land)."""
    if exists(name) or name in IN_FLIGHT:
        return True
    folder = ROOT / top if top else ROOT
    wanted = name.rstrip("/")
    candidates = folder.rglob(wanted.split("/")[-1]) if top else [folder / wanted]
    for path in candidates:
        relative = path.relative_to(ROOT).as_posix()
        if relative.endswith(wanted) and (path.is_dir() or not name.endswith("/")):
            return True
    return any(path.startswith(top) and path.rstrip("/").endswith(wanted) for path in IN_FLIGHT)


def repository_folders() -> list[str]:
    """The repository's top-level folders: every one but .git and what .gitignore leaves out."""
    ignored = ignored_patterns()
    return sorted(
        path.name
        for path in ROOT.iterdir()
        if path.is_dir()
        and path.name not in (".git", ".idea", ".vscode")
        and not any(fnmatch.fnmatch(path.name, pattern) for pattern in ignored)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.docs", description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the generated parts")
    args = parser.parse_args(argv)
    out_of_date = 0
    for path in doc_files():
        if not path.exists() or not generated_regions(path.read_text()):
            continue
        stale = stale_regions(path)
        name = path.relative_to(ROOT)
        if stale and args.write:
            path.write_text(regenerate(path.read_text()))
            print(f"{name}: rewrote {', '.join(stale)}")
        elif stale:
            print(f"{name}: out of date: {', '.join(stale)} (python -m tests.docs --write)")
            out_of_date += 1
    return 1 if out_of_date else 0


if __name__ == "__main__":
    sys.exit(main())
