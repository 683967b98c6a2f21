"""What README.md names exists: commands and their flags, DISTQ_* variables, files and
folders, make targets, metric names, probe paths and the modules of its code maps.

The settings table is held to the settings in test_config.py, the metrics table to the
exported families in test_metrics.py; these tests cover every other mention, in code
spans and code blocks, so a rename fails here rather than in a reader's shell.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO
from distq import cli
from distq.config import SETTINGS
from distq.metrics import MasterMetrics, WorkerMetrics

README = (REPO / "README.md").read_text()

#: DISTQ_* names the README gives that no distq process reads, and what reads them.
NOT_SETTINGS = {
    "DISTQ_TEST_REDIS_URL": "tests/brokers.py",
    "DISTQ_TEST_AMQP_URL": "tests/brokers.py",
    "DISTQ_TEST_BROKERS": "tests/brokers.py",
    "DISTQ_FUZZ_EXAMPLES": "tests/unit/test_fuzz.py",
    "DISTQ_IMAGE_TAG": "scripts/compose-images.sh",
    "DISTQ_TOOLS_CACHE": "scripts/check-k8s.sh",
}
#: Names the README shows being warned about: a misspelling, and a flag's own name.
WARNED_ABOUT = {"DISTQ_TRANSPRT", "DISTQ_CONCURRENCY"}

#: Paths the README names that are not files of this repository, and why.
NOT_IN_THE_REPO = {
    ".venv/": "make install writes it",
    ".env.secrets/": "make up writes it",
    "docker-entrypoint.sh": "the official rabbitmq image's",
    "script.py": "a user's script, in an example",
    "mypkg/jobs.py": "a user's module, in an example",
    "my-distq/kustomization.yaml": "a user's kustomization, in an example",
    "deploy/master": "kubectl's name of the master Deployment",
}


def code_texts() -> Iterator[str]:
    """Each code span, and each line of each shell block (its comment cut)."""
    blocks = README.split("```")
    for index, part in enumerate(blocks):
        if index % 2:
            if part.startswith("sh\n"):  # the others are output, Python or YAML
                for line in part.splitlines()[1:]:
                    if not line.lstrip().startswith("#"):
                        yield line.split(" # ")[0]
        else:
            yield from re.findall(r"`([^`\n]+)`", part)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    (roles,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(roles.choices)


def options(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)


def invocations() -> Iterator[tuple[str, list[str]]]:
    """``distq COMMAND ARGS`` in code (not kubectl's ``-n distq``): the command and the
    words after it."""
    for text in code_texts():
        for found in re.finditer(r"(?<![\w.:-])(?<!-n )distq ([a-z][a-z-]*)([^|;&)]*)", text):
            yield found[1], found[2].split()


def test_every_distq_command_and_flag_the_readme_shows_exists() -> None:
    commands = subcommands()
    seen: set[str] = set()
    for command, words in invocations():
        assert command in commands, f"README: no command distq {command}"
        seen.add(command)
        flags = {w.split("=")[0] for w in words if re.fullmatch(r"--?[a-z][a-z-]*(=.*)?", w)}
        unknown = flags - options(commands[command])
        assert not unknown, f"README: distq {command} has no {sorted(unknown)}"
    assert seen == set(commands), f"README shows no distq {sorted(set(commands) - seen)}"


def flag_table(heading: str) -> set[str]:
    """The flags in the first column of the table under ``heading``."""
    table = README.split(f"\n{heading}\n", 1)[1].split("| flag | meaning |", 1)[1]
    rows = table.split("\n\n", 1)[0].splitlines()[2:]
    return {flag for row in rows for flag in re.findall(r"`(--?[a-z][a-z-]*)", row.split(" | ")[0])}


@pytest.mark.parametrize("command", ["master", "worker"])
def test_the_flag_tables_list_each_flag_of_the_command_that_is_no_setting(command: str) -> None:
    """Both ways: a flag the table names exists, and every flag of the command that is not
    one of the settings (their own table) is in it."""
    parser = subcommands()[command]
    settings = {entry.flag for entry in SETTINGS}
    own = options(parser) - settings - {"-h", "--help"}
    assert flag_table(f"### `distq {command}`") == own


@pytest.mark.parametrize("command", ["master", "worker"])
def test_the_flag_tables_name_each_value_as_help_does(command: str) -> None:
    """`--tasks N` in the table, `--tasks TASKS` in `distq master --help` (and `--seed X`
    / `SEED`, `--concurrency C` / `CONCURRENCY`, `--worker-id NAME` / `WORKER_ID`): a
    reader of both met two names for one value."""
    actions = subcommands()[command]._option_string_actions
    table = README.split(f"\n### `distq {command}`\n", 1)[1].split("| flag | meaning |", 1)[1]
    rows = table.split("\n\n", 1)[0].splitlines()[2:]
    shown = {
        flag: value
        for row in rows
        for flag, value in re.findall(r"`(--?[a-z][a-z-]*) ([A-Z][A-Z:_]*)`", row.split(" | ")[0])
    }
    assert shown, f"no `--flag VALUE` in the table of distq {command}"
    helped = {
        flag: actions[flag].metavar or actions[flag].dest.upper()
        for flag in shown
        if flag in actions
    }
    assert helped == shown


def test_the_shell_commands_table_names_the_flags_of_each_command() -> None:
    commands = subcommands()
    table = README.split("| command | does |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    for row in table:
        usage = row.split(" | ")[0].strip("| `")
        command, *words = usage.split()
        flags = set(re.findall(r"--[a-z][a-z-]*", " ".join(words)))
        settings = {entry.flag for entry in SETTINGS}
        assert flags == options(commands[command]) - settings - {"-h", "--help", "-q", "--quiet"}


def readme_variables() -> set[str]:
    return set(re.findall(r"DISTQ_[A-Z0-9_]*[A-Z0-9]\b", README))


def test_every_distq_variable_the_readme_names_is_read() -> None:
    settings = {entry.variable for entry in SETTINGS}
    for name in readme_variables() - settings - WARNED_ABOUT:
        assert name in NOT_SETTINGS, f"README names {name}, which nothing reads"
        assert name in (REPO / NOT_SETTINGS[name]).read_text(), (name, NOT_SETTINGS[name])
    for prefix in re.findall(r"(DISTQ_[A-Z0-9_]*_)\*", README):
        assert any(name.startswith(prefix) for name in settings | set(NOT_SETTINGS)), prefix


def test_every_distq_variable_the_code_reads_is_in_the_readme() -> None:
    """src/ reads the environment through the settings alone (``Settings.load``)."""
    assert {entry.variable for entry in SETTINGS} <= readme_variables()
    in_src = {
        name
        for path in (REPO / "src/distq").rglob("*.py")
        for name in re.findall(r"DISTQ_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    assert in_src <= readme_variables() | {"DISTQ_TEST"}


def tracked() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    return listed.stdout.splitlines()


def named_paths() -> set[str]:
    """Relative paths and file names in code spans and shell blocks, and link targets."""
    found = set(re.findall(r"\]\(([^)#:]+)\)", README))
    for text in code_texts():
        for word in text.split():
            word = word.strip("(),;:'\"").removeprefix("../")
            first = word.split("/")[0]
            if word.startswith(("/", "-", "~")) or re.search(r"://|[=$A-Z]", word):
                continue
            if "." in first.lstrip(".") and "/" in word:  # a host or API group: x.io/name
                continue
            folder = re.fullmatch(r"\.?[\w.<>*-]+(/[\w.<>*-]+)*/|\.?[\w.<>-]+(/[\w.<>*-]+)+", word)
            if folder or re.fullmatch(r"[\w.-]+\.(py|sh|yml|yaml|md|json|lua|txt|toml)", word):
                found.add(word)
    return found


def written_by_the_user(path: str) -> bool:
    """A path under a folder the repository holds for it: a Secret's files."""
    return any(path.startswith(prefix) for prefix in NOT_IN_THE_REPO) or (
        "/secrets/" in path and (REPO / path).parent.is_dir()
    )


def test_every_path_the_readme_names_exists() -> None:
    files = tracked()
    folders = {"/".join(f.split("/")[:depth]) + "/" for f in files for depth in range(1, 5)}
    names = {Path(f).name for f in files} | {f.split("/")[-2] + "/" for f in folders if "/" in f}
    everything = set(files) | folders
    missing = []
    for path in sorted(named_paths()):
        if written_by_the_user(path) or path in names:
            continue
        pattern = re.sub(r"<[^/>]+>", "[^/]+", re.escape(path).replace(r"\*", "[^/]*"))
        here = re.compile(rf"(?:k8s/|src/distq/|examples/wordcount/)?{pattern}/?")
        if not any(here.fullmatch(f) for f in everything):
            missing.append(path)
    assert not missing, f"README names what is not in the repository: {missing}"


def test_every_make_target_the_readme_runs_exists() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    used = {m for text in code_texts() for m in re.findall(r"(?:^|\s)make ([a-z][\w-]*)\b", text)}
    assert used, "no make target found: the pattern is wrong"
    assert used <= targets, f"README runs make {sorted(used - targets)}"


def exported_metrics() -> set[str]:
    worker = WorkerMetrics("redis", "q", ["square"])
    master = MasterMetrics("redis", "q")
    names: set[str] = set()
    for registry in (worker.registry, master.registry):
        for family in registry.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
            if family.type == "counter":
                names.add(family.name + "_total")
            if family.type == "histogram":
                names.update(family.name + end for end in ("_bucket", "_count", "_sum"))
    return names


def test_every_metric_the_readme_names_is_exported() -> None:
    named = set(re.findall(r"\bdistq_[a-z_]+[a-z]\b", README))
    assert "distq_ready" in named
    assert named <= exported_metrics(), sorted(named - exported_metrics())


def test_every_probe_path_the_readme_names_is_served() -> None:
    routes = set(re.findall(r'"(/[a-z]+)": self\._', (REPO / "src/distq/http.py").read_text()))
    assert routes == {"/metrics", "/healthz", "/readyz"}
    named = set(re.findall(r"`(/[a-z]+z|/metrics)`", README))
    assert named == routes
    probe = subcommands()["probe"]
    (check,) = [a for a in probe._actions if a.dest == "check"]
    assert {f"/{c}" for c in check.choices or ()} == routes - {"/metrics"}
    assert "distq probe healthz|readyz" in README


def layout_modules() -> set[str]:
    """The core package's modules the Layout block names, relative to src/distq/."""
    block = README.split("\n## Layout\n", 1)[1].split("```", 2)[1]
    package = re.split(r"\n\S", block.split("\nsrc/distq/", 1)[1], maxsplit=1)[0]
    names: set[str] = set()
    for line in package.splitlines():
        if re.match(r"  \S", line):  # a module's line; its description's go on deeper
            head = line.strip().split("  ")[0]
            folder = "transport/" if head.startswith("transport/") else ""
            names.update(
                folder + name.removeprefix(folder) for name in re.findall(r"[\w/]+\.py", head)
            )
    return names


def test_the_layout_names_every_module_of_the_package_and_no_other() -> None:
    package = REPO / "src/distq"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py")}
    assert layout_modules() == modules


def test_the_code_map_names_modules_that_exist() -> None:
    section = README.split("\n## Where the code is\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:transport/)?[a-z_]+\.py)`", section))
    assert len(named) >= 10
    missing = {name for name in named if not (REPO / "src/distq" / name).exists()}
    assert not missing, missing
    for folder in re.findall(r"`([a-z0-9]+/(?:[a-z0-9_]+/)*)`", section):
        assert (REPO / folder).is_dir(), folder


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, blanks as ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_a_section_finds_its_heading() -> None:
    prose = "".join(README.split("```")[::2])  # a shell comment is no heading
    headings = {anchor(h) for h in re.findall(r"^#+ (.+)$", prose, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", README))
    assert {"layout", "run-it-in-containers"} <= links
    assert links <= headings, sorted(links - headings)


def headings_of(path: Path) -> set[str]:
    prose = "".join(path.read_text().split("```")[::2])
    return {anchor(h) for h in re.findall(r"^#+ (.+)$", prose, re.M)}


@pytest.mark.parametrize("document", ["README.md", "bench/results/HISTORY.md"])
def test_every_link_between_the_documents_finds_its_file_and_heading(document: str) -> None:
    """A relative link, from where its document is, to a file and (given) a heading of it:
    the README's Performance section links into the history it moved out."""
    source = REPO / document
    broken = []
    for target, _, heading in re.findall(r"\]\(([^)#:\s]*)(#([^)\s]+))?\)", source.read_text()):
        path = (source.parent / target) if target else source
        if not path.exists():
            broken.append(target)
        elif heading and (path.suffix != ".md" or heading not in headings_of(path)):
            broken.append(f"{target}#{heading}")
    assert not broken, f"{document}: {broken}"
