"""The docs under docs/: every error reason is listed under its status, and every link resolves."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from rotor.api.errors import STATUS_OF
from rotor.config import _SCHEMA, _TENANT_SCHEMA
from rotor.core import errors
from rotor_client import errors as client_errors
from rotor_client.interceptor import rejection

# every (table, key) a config may hold; a [tenants.NAME] table is documented as one table
CONFIG_SCHEMA = {**_SCHEMA, "tenants.NAME": _TENANT_SCHEMA}

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"
ERRORS_MD = DOCS / "errors.md"
SERVER_PART = "## Part 1: what Rotor sends"
CLIENT_PART = "## Part 2: what rotor_client raises"

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`]*`")
REASON_ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|")


def prose_lines(markdown: str) -> Iterator[str]:
    """The lines of a markdown document outside fenced code blocks."""
    fenced = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


# -- error reasons -------------------------------------------------------------------


def documented_reasons(part: str) -> dict[str, list[str]]:
    """reason -> the `###` headings of errors.md, within `part`, under which it has a table row."""
    rows: dict[str, list[str]] = {}
    current_part, heading = "", ""
    for line in prose_lines(ERRORS_MD.read_text()):
        if line.startswith("## "):
            current_part, heading = line.strip(), ""
        elif line.startswith("### "):
            heading = line[4:].strip()
        elif current_part == part and (row := REASON_ROW.match(line)):
            rows.setdefault(row.group(1), []).append(heading)
    return rows


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _called(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def reasons_in_source() -> set[tuple[str, str]]:
    """(reason, status) pairs the server code spells out where it raises or aborts.

    InvalidRequest and TooManyRequests carry their reason per case, and a few
    aborts (store failures, unexpected exceptions) name theirs directly; none
    of these shows in STATUS_OF's classes.
    """
    found: set[tuple[str, str]] = set()
    invalid_request = STATUS_OF[errors.InvalidRequest].name
    for path in sorted((ROOT / "service" / "rotor").rglob("*.py")):
        if "v1" in path.relative_to(ROOT / "service" / "rotor").parts:
            continue  # generated stubs
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            if _called(node) == "InvalidRequest":
                keyword = next((k.value for k in node.keywords if k.arg == "reason"), None)
                reason = _literal(node.args[1] if len(node.args) > 1 else keyword)
                found.add((reason or errors.InvalidRequest.reason, invalid_request))
            elif _called(node) == "TooManyRequests":
                reason = _literal(next((k.value for k in node.keywords if k.arg == "reason"), None))
                found.add((reason or errors.TooManyRequests.reason, STATUS_OF[errors.TooManyRequests].name))
            elif _called(node) == "abort" and len(node.args) == 4:
                code, reason = node.args[1], _literal(node.args[3])
                if isinstance(code, ast.Attribute) and reason is not None:
                    found.add((reason, code.attr))
    return found


def server_reasons() -> set[tuple[str, str]]:
    """Every (reason, status name) the server can send."""
    by_class = {(error.reason, status.name) for error, status in STATUS_OF.items()}
    by_class.discard((errors.InvalidRequest.reason, STATUS_OF[errors.InvalidRequest].name))
    return by_class | reasons_in_source()


def test_the_source_scan_finds_the_per_case_reasons() -> None:
    found = reasons_in_source()
    assert {("FIELD_REQUIRED", "INVALID_ARGUMENT"), ("TTL_TOO_LONG", "INVALID_ARGUMENT")} <= found
    assert ("STORE_UNAVAILABLE", "UNAVAILABLE") in found
    assert ("INTERNAL", "INTERNAL") in found


@pytest.mark.parametrize(("reason", "status"), sorted(server_reasons()), ids=lambda v: v)
def test_errors_md_lists_every_server_reason_under_its_status(reason: str, status: str) -> None:
    headings = documented_reasons(SERVER_PART).get(reason, [])
    assert headings, f"{reason} is not in docs/errors.md, part 1"
    assert [h.split()[0] for h in headings] == [status], (
        f"{reason} should appear once, under ### {status}; it is under {headings}"
    )


def test_errors_md_lists_no_reason_the_server_does_not_send() -> None:
    known = {reason for reason, _ in server_reasons()}
    assert set(documented_reasons(SERVER_PART)) - known == set()


CLIENT_ERRORS = sorted(
    (
        cls
        for cls in vars(client_errors).values()
        if isinstance(cls, type) and issubclass(cls, client_errors.RotorClientError)
    ),
    key=lambda cls: cls.__name__,
)
# what VerifyingInterceptor turns into a status for the caller
INTERCEPTED = [
    cls
    for cls in CLIENT_ERRORS
    if issubclass(cls, client_errors.InvalidTokenError | client_errors.KeySetStale)
]


def test_the_client_library_defines_errors() -> None:
    assert len(CLIENT_ERRORS) >= 15
    assert client_errors.CertificateMismatch in INTERCEPTED


@pytest.mark.parametrize("error", CLIENT_ERRORS, ids=lambda cls: cls.__name__)
def test_errors_md_lists_every_client_reason_once(error: type[client_errors.RotorClientError]) -> None:
    headings = documented_reasons(CLIENT_PART).get(error.reason, [])
    assert len(headings) == 1, f"{error.reason} ({error.__name__}) should be in docs/errors.md, part 2, once"


@pytest.mark.parametrize("error", INTERCEPTED, ids=lambda cls: cls.__name__)
def test_errors_md_lists_client_reasons_under_the_interceptors_status(
    error: type[client_errors.RotorClientError],
) -> None:
    code, _, _ = rejection(error("a message"))
    [heading] = documented_reasons(CLIENT_PART)[error.reason]
    assert heading.split()[0] == code.name, (
        f"{error.reason} should be under ### {code.name} ..., not {heading}"
    )


def test_the_interceptor_answers_as_errors_md_says() -> None:
    assert rejection(client_errors.InsufficientScope("x"))[0] == grpc.StatusCode.PERMISSION_DENIED
    assert rejection(client_errors.KeySetStale("x"))[0] == grpc.StatusCode.UNAVAILABLE
    assert rejection(client_errors.TokenExpired("x"))[0] == grpc.StatusCode.UNAUTHENTICATED


def test_server_and_client_reasons_do_not_overlap() -> None:
    assert {reason for reason, _ in server_reasons()} & {cls.reason for cls in CLIENT_ERRORS} == set()


# -- the config reference -------------------------------------------------------------


def documented_config_keys() -> set[tuple[str, str]]:
    """(table, key) for every row of the operator guide's config tables ("" is the top level)."""
    rows: set[tuple[str, str]] = set()
    table = None
    for line in prose_lines((DOCS / "operator-guide.md").read_text()):
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            table = "" if heading == "Top level" else heading[1:-1] if heading.startswith("[") else None
        elif table is not None and (row := re.match(r"^\|\s*`([a-z_]+)`\s*\|", line)):
            rows.add((table, row.group(1)))
    return rows


@pytest.mark.parametrize(
    ("table", "key"),
    sorted((table, key) for table, keys in CONFIG_SCHEMA.items() for key in keys),
    ids=lambda v: v or "top",
)
def test_the_operator_guide_documents_every_config_key(table: str, key: str) -> None:
    assert (table, key) in documented_config_keys(), f"[{table}] {key} has no row in docs/operator-guide.md"


def test_the_operator_guide_documents_no_unknown_config_key() -> None:
    known = {(table, key) for table, keys in CONFIG_SCHEMA.items() for key in keys}
    assert documented_config_keys() - known == set()


# -- links -----------------------------------------------------------------------------


def github_slugs(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped,
    spaces to hyphens, and -1, -2, ... on repeats."""
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(markdown):
        match = HEADING.match(line)
        if match is None:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


def test_github_slugs_follow_githubs_rules() -> None:
    doc = "# Key rotation\n## A signing key leaked\n### [keys]\n## cnf / x5t#S256\n## `rotor_client`\n## Part 2: x\n## Part 2: x\n"
    assert github_slugs(doc) == {
        "key-rotation",
        "a-signing-key-leaked",
        "keys",
        "cnf--x5ts256",
        "rotor_client",
        "part-2-x",
        "part-2-x-1",
    }
    assert github_slugs("```\n# not a heading\n```\n") == set()


def relative_links() -> list[tuple[str, str]]:
    """(doc, target) for every link in docs/*.md that is not to another site."""
    found = []
    for doc in sorted(DOCS.glob("*.md")):
        prose = CODE_SPAN.sub("", "\n".join(prose_lines(doc.read_text())))  # a link may wrap
        for target in LINK.findall(prose):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                found.append((doc.name, target))
    return found


def test_the_docs_link_to_each_other() -> None:
    targets = {target for _, target in relative_links()}
    assert any("#" in target for target in targets)
    assert any(target.startswith("../") for target in targets)


@pytest.mark.parametrize(("doc", "target"), relative_links(), ids=lambda v: v)
def test_every_relative_link_resolves(doc: str, target: str) -> None:
    path, _, anchor = target.partition("#")
    file = (DOCS / path).resolve() if path else DOCS / doc
    assert file.is_relative_to(ROOT), f"{doc}: {target} leaves the repository"
    assert file.exists(), f"{doc}: {target}: no such file"
    if anchor:
        assert file.suffix == ".md", f"{doc}: {target}: an anchor into a file that is not markdown"
        assert anchor in github_slugs(file.read_text()), f"{doc}: {target}: no heading has this anchor"


RUNBOOKS = (
    "A signing key leaked",
    "A refresh token was stolen",
    "A verifier missed a rollover",
    "A suspect token is in circulation",
)


def test_the_runbooks_that_alerts_link_to_exist() -> None:
    text = (DOCS / "runbooks.md").read_text()
    headings = {line[3:].strip() for line in prose_lines(text) if line.startswith("## ")}
    assert set(RUNBOOKS) <= headings


def links_from_deploy() -> list[tuple[str, str, str]]:
    """(file, doc, anchor) for every link from deploy/ (alerts' runbook_url, dashboards) into docs/."""
    deploy = ROOT / "deploy"
    files = sorted(p for p in deploy.rglob("*") if p.is_file()) if deploy.is_dir() else []
    return [
        (str(path.relative_to(ROOT)), doc, anchor)
        for path in files
        for doc, anchor in re.findall(r"docs/([\w.-]+\.md)#([\w-]+)", path.read_text(errors="replace"))
    ]


@pytest.mark.parametrize(("file", "doc", "anchor"), links_from_deploy(), ids=lambda v: v)
def test_links_from_deploy_into_the_docs_resolve(file: str, doc: str, anchor: str) -> None:
    target = DOCS / doc
    assert target.exists(), f"{file}: docs/{doc}: no such file"
    assert anchor in github_slugs(target.read_text()), (
        f"{file}: docs/{doc}#{anchor}: no heading has this anchor"
    )


# -- the README's error table ---------------------------------------------------------

README = ROOT / "README.md"
README_ROW = re.compile(
    r"^\|\s*([A-Z_]+)(?:\s*\([^)]*\))?\s*\|\s*(`[A-Z0-9_]+`(?:,\s*`[A-Z0-9_]+`)*)\s*\|\s*$"
)


def readme_reasons() -> set[tuple[str, str]]:
    """(reason, status) of every row of the README's error table, under "## Errors"."""
    section = README.read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    found: set[tuple[str, str]] = set()
    for line in prose_lines(section):
        if row := README_ROW.match(line):
            found |= {(reason, row.group(1)) for reason in re.findall(r"`([A-Z0-9_]+)`", row.group(2))}
    return found


def test_the_readme_error_table_lists_exactly_the_reasons_the_server_sends() -> None:
    # INTERNAL is a bug's answer, never a well-formed request's: the README says so in prose
    expected = {(reason, status) for reason, status in server_reasons() if status != "INTERNAL"}
    found = readme_reasons()
    assert found, "no error table under ## Errors in README.md"
    assert sorted(expected - found) == [], "reasons the server sends that the README's table lacks"
    assert sorted(found - expected) == [], "reasons in the README's table the server does not send"
