"""The Prometheus alerting rules and the Grafana dashboard under deploy/, checked without promtool.

Every metric an alert or a panel queries must be one Rotor really exports, with
the labels it really has: both are read from a live `rotor.metrics.Metrics()`
registry, as Prometheus scrapes it. PromQL is checked lightly (a tokenizer, not
a parser): balanced brackets, known metric names, label matchers and grouping
labels that exist, label values that Rotor can produce.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rotor.core.errors import RotorError
from rotor.core.fleet import OUTCOMES, FleetWatcher
from rotor.core.model import KeyState, SigningKey
from rotor.metrics import Metrics
from rotor.v1 import key_admin_pb2, token_service_pb2

from .support import POLICY, ROTATION, T0, VERIFY_WINDOW

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "rotor-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "rotor-dashboard.json"
DEPLOY_README = ROOT / "deploy" / "README.md"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_URL = "https://github.com/rotor/rotor/blob/main/docs/runbooks.md#"

EXPECTED_ALERTS = {
    "RotorNoActiveKey",
    "RotorRotationOverdue",
    "RotorActiveKeyRetiringWithoutSuccessor",
    "RotorRefreshTokenReuse",
    "RotorAuthFailureSpike",
    "RotorWatchersLagging",
    "RotorStoreUnavailable",
    "RotorAuditWriteFailures",
    "RotorNoRotator",
    "RotorErrorRateHigh",
    "RotorDown",
    "RotorVerifiersUnknownKey",
    "RotorVerificationFailuresHigh",
    "RotorWatcherSilent",
}
SEVERITIES = {"page", "warning"}
# docs/runbooks.md, as agreed with its author
RUNBOOK_SECTIONS = (
    "A signing key leaked",
    "A refresh token was stolen",
    "A verifier missed a rollover",
    "A suspect token is in circulation",
)
# asked of its author for the alerts none of the four sections fits (outages, not incidents)
REQUESTED_RUNBOOK_SECTIONS = (
    "Rotor cannot sign tokens",
    "Key rotation is stuck",
    "The store is unavailable",
    "Rotor is down or failing",
    "Clients fail to authenticate",
    "Verifiers report unknown keys",
)

# labels Prometheus attaches to every scraped series, and its one builtin series
TARGET_LABELS = frozenset({"job", "instance"})
BUILTIN_SERIES = {"up": TARGET_LABELS}
# Prometheus durations: units from largest to smallest, each at most once
DURATION = re.compile(r"(?!$)(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")
AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk"}
    | {"quantile", "count_values", "limitk", "limit_ratio"}
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"})
TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w:]))
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][\w:]*)
    | (?P<variable>\$\{?\w+\}?)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){}\[\],@])
    """,
    re.VERBOSE,
)
PAIRS = {")": "(", "]": "[", "}": "{"}


# --- what Rotor exports ------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    metrics: Metrics
    labels: dict[str, frozenset[str]]  # every series name in the exposition -> its label names
    families: dict[str, set[str]]  # family name -> its series names (a counter's _total, ...)


def _active_key(tenant: str) -> SigningKey:
    return SigningKey(
        kid="k1",
        tenant=tenant,
        alg="EdDSA",
        state=KeyState.ACTIVE,
        public_jwk="{}",
        sealed_private=b"sealed",
        created_at=T0,
        activates_at=T0,
        retires_at=T0 + ROTATION,
        expires_at=T0 + ROTATION + VERIFY_WINDOW,
    )


def _exercise(metrics: Metrics) -> None:
    """One of everything: a labelled series exists only once it has been touched."""
    for method in ("Issue", "Refresh", "Revoke"):
        metrics.observe(method, "OK", 0.01, "")
    metrics.observe("Issue", "UNAUTHENTICATED", 0.01, "INVALID_CLIENT")
    metrics.observe("Refresh", "UNAUTHENTICATED", 0.01, "REFRESH_TOKEN_REUSED")
    metrics.observe("WatchKeyRotations", "RESOURCE_EXHAUSTED", None, "WATCHER_TOO_SLOW")
    metrics.key_events.labels("t", "KEY_PUBLISHED").inc()
    metrics.delivery_lag.observe(0.01)
    metrics.watchers.inc()


@pytest.fixture(scope="module")
def exported() -> Exported:
    metrics = Metrics()
    key = _active_key("t")
    metrics.watch_keys(lambda: ["t"], lambda tenant: (key,), lambda tenant: True, POLICY, lambda: T0 + 60)
    metrics.watch_audit()
    metrics.watch_rotator(lambda: True, lambda: 0)
    watcher = FleetWatcher("t", "orders", "r1", "", T0, 3, ("k1",), 3, ("k1",), T0 + 60, T0 + 60)
    metrics.watch_fleet(
        lambda: [(watcher, True)],
        lambda: [("t", "orders", "OK", 5), ("t", "orders", "UNKNOWN_KEY", 1)],
        lambda tenant: (key,),
        lambda tenant: 4,
    )
    _exercise(metrics)
    labels: dict[str, frozenset[str]] = dict(BUILTIN_SERIES)
    families: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            labels[sample.name] = labels.get(sample.name, frozenset()) | frozenset(sample.labels)
            families.setdefault(family.name, set()).add(sample.name)
    return Exported(metrics, labels, families)


def test_every_family_is_exercised(exported: Exported) -> None:
    """A metric added to Metrics must be touched in _exercise, or its names would look unknown here."""
    for family in exported.metrics.registry.collect():
        assert family.samples, f"{family.name} has no series: touch it in _exercise"


def test_the_key_gauges_are_exported(exported: Exported) -> None:
    for name in (
        "rotor_active_keys",
        "rotor_pending_keys",
        "rotor_active_key_age_seconds",
        "rotor_active_key_retires_in_seconds",
        "rotor_next_rotation_seconds",
    ):
        assert exported.labels[name] == {"tenant"}


# label values Rotor can produce, for the labels whose values the queries spell out
STATUS_CODES = frozenset(code.name for code in grpc.StatusCode)


def _reasons() -> frozenset[str]:
    found: set[str] = {"INTERNAL"}  # abort_internal's reason
    pending: list[type[RotorError]] = [RotorError]
    while pending:
        cls = pending.pop()
        found.add(cls.reason)
        pending += cls.__subclasses__()
    # InvalidRequest names its reason per case: take them from the README's table
    readme = (ROOT / "README.md").read_text()
    errors = readme.partition("## Errors")[2].partition("\n## ")[0] or readme
    found |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", errors))
    return frozenset(found)


REASONS = _reasons() | STATUS_CODES  # an error without a reason is counted under its code
METHODS = frozenset(
    m.name
    for module in (token_service_pb2, key_admin_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for m in service.methods
)
LABEL_VALUES = {
    "code": STATUS_CODES,
    "reason": REASONS,
    "method": METHODS,
    "outcome": REASONS | {"ok"} | OUTCOMES,  # the RPC counters', and verifiers' (rotor_fleet_*)
}


# --- a light PromQL reader ----------------------------------------------------------------


@dataclass
class Query:
    """What a PromQL expression refers to."""

    selectors: list[tuple[str, list[tuple[str, str, str]]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    durations: list[str] = field(default_factory=list)


def _tokens(expr: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(expr):
        match = TOKEN.match(expr, pos)
        assert match, f"cannot read {expr[pos : pos + 20]!r} in {expr!r}"
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            yield kind, match.group()


def balanced(expr: str) -> bool:
    """Brackets outside string literals pair up and nest."""
    stack: list[str] = []
    for kind, text in _tokens(expr):
        if kind != "op":
            continue
        if text in "([{":
            stack.append(text)
        elif text in PAIRS and (not stack or stack.pop() != PAIRS[text]):
            return False
    return not stack


def read_query(expr: str) -> Query:
    tokens = list(_tokens(expr))
    query = Query()
    i = 0

    def label_list(start: int) -> int:
        """Read `( label, ... )` at tokens[start]; return the index after it."""
        assert tokens[start] == ("op", "("), expr
        j = start + 1
        while tokens[j] != ("op", ")"):
            if tokens[j][0] == "ident":
                query.grouping.add(tokens[j][1])
            j += 1
        return j + 1

    def matchers(start: int) -> tuple[list[tuple[str, str, str]], int]:
        """Read `{ label op "value", ... }` at tokens[start]."""
        found = []
        j = start + 1
        while tokens[j] != ("op", "}"):
            if tokens[j] == ("op", ","):
                j += 1
                continue
            (kind, label), (_, op), (value_kind, value) = tokens[j : j + 3]
            assert kind == "ident" and op in {"=", "!=", "=~", "!~"} and value_kind == "string", expr
            found.append((label, op, value[1:-1]))
            j += 3
        return found, j + 1

    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "op" and text == "[":
            # a range or subquery: durations (or a Grafana variable) up to the bracket
            j = i + 1
            while tokens[j] != ("op", "]"):
                if tokens[j][0] == "duration":
                    query.durations.append(tokens[j][1])
                j += 1
            i = j + 1
        elif kind == "op" and text == "{":
            raise AssertionError(f"a selector without a metric name in {expr!r}")
        elif kind == "ident" and text in GROUPING:
            i = label_list(i + 1) if after == ("op", "(") else i + 1
        elif kind == "ident" and (text in AGGREGATIONS or text in KEYWORDS or after == ("op", "(")):
            i += 1  # an aggregation, a keyword or a function
        elif kind == "ident":
            found: list[tuple[str, str, str]] = []
            i += 1
            if after == ("op", "{"):
                found, i = matchers(i)
            query.selectors.append((text, found))
        else:
            if kind == "duration":
                query.durations.append(text)  # offset
            i += 1
    return query


def test_the_reader_sees_through_a_query() -> None:
    query = read_query(
        'sum by (tenant) (rate(x_total{a="1", b=~"2|3"}[5m] offset 1h)) / ignoring (c) group_left y > 0.5'
    )
    assert query.selectors == [("x_total", [("a", "=", "1"), ("b", "=~", "2|3")]), ("y", [])]
    assert query.grouping == {"tenant", "c"}
    assert query.durations == ["5m", "1h"]
    assert balanced("f(a[5m)]") is False
    assert balanced("sum(a") is False
    assert balanced('a{b=")"}') is True


# --- the rule file ---------------------------------------------------------------------------


def _rule_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    return loaded


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _rule_file()["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def _queries() -> list[Any]:
    """Every PromQL expression in deploy/, with an id saying where it is."""
    found = [pytest.param(rule["expr"], id=f"alert-{rule['alert']}") for rule in _rules()]
    for panel in _panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            found.append(pytest.param(target["expr"], id=f"panel-{panel['id']}-{target['refId']}"))
    return found


def test_the_rule_file_has_only_groups() -> None:
    rule_file = _rule_file()
    assert set(rule_file) == {"groups"}
    assert isinstance(rule_file["groups"], list) and rule_file["groups"]
    names = [group["name"] for group in rule_file["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    for group in rule_file["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
        assert isinstance(group["rules"], list) and group["rules"], group["name"]


def test_the_expected_alerts_are_there_once_each() -> None:
    names = [rule["alert"] for rule in _rules()]
    assert len(names) == len(set(names))
    assert set(names) == EXPECTED_ALERTS


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_every_rule_has_what_prometheus_and_the_pager_need(rule: dict[str, Any]) -> None:
    assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
    assert isinstance(rule["expr"], str) and rule["expr"].strip()
    assert isinstance(rule["for"], str) and DURATION.fullmatch(rule["for"]), rule["for"]
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert isinstance(annotations.get(key), str) and annotations[key].strip(), key
    for text in annotations.values():
        assert text.count("{{") == text.count("}}"), text


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_annotations_name_only_labels_the_alert_carries(rule: dict[str, Any], exported: Exported) -> None:
    """`$labels.x` must survive the expression: a `by` label, or any label when nothing aggregates."""
    query = read_query(rule["expr"])
    if query.grouping:
        carried = query.grouping - {"le"}
    else:
        carried = set(TARGET_LABELS).union(*(exported.labels.get(name, set()) for name, _ in query.selectors))
    for text in rule["annotations"].values():
        for label in re.findall(r"\$labels\.(\w+)", text):
            assert label in carried, f"{rule['alert']} names $labels.{label}, which its expr drops"


# --- every query, alert or panel ---------------------------------------------------------------


@pytest.mark.parametrize("expr", _queries())
def test_brackets_balance(expr: str) -> None:
    assert balanced(expr), expr


@pytest.mark.parametrize("expr", _queries())
def test_every_metric_is_one_rotor_exports(expr: str, exported: Exported) -> None:
    query = read_query(expr)
    assert query.selectors, f"no metric in {expr!r}"
    for name, _ in query.selectors:
        assert name in exported.labels, f"{name} is not exported (in {expr!r})"


@pytest.mark.parametrize("expr", _queries())
def test_labels_are_ones_the_metrics_have(expr: str, exported: Exported) -> None:
    query = read_query(expr)
    known = set(TARGET_LABELS)
    for name, matchers in query.selectors:
        has = exported.labels.get(name, frozenset()) | TARGET_LABELS
        known |= has
        for label, _, _ in matchers:
            assert label in has, f"{name} has no label {label!r} (in {expr!r})"
    unknown = query.grouping - known
    assert not unknown, f"grouping by {sorted(unknown)}, which no metric in {expr!r} has"


@pytest.mark.parametrize("expr", _queries())
def test_label_values_are_ones_rotor_produces(expr: str) -> None:
    for _, matchers in read_query(expr).selectors:
        for label, op, value in matchers:
            if label not in LABEL_VALUES or "$" in value:
                continue
            if op in {"=~", "!~"}:
                assert re.fullmatch(r"[\w|]+", value), f"only plain alternatives are checked: {value!r}"
            for alternative in value.split("|"):
                assert alternative in LABEL_VALUES[label], f'{label}="{alternative}" never occurs ({expr!r})'


@pytest.mark.parametrize("expr", _queries())
def test_durations_are_valid(expr: str) -> None:
    for duration in read_query(expr).durations:
        assert DURATION.fullmatch(duration), duration


# --- runbooks ------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """A Markdown heading's anchor: lowercase, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_slug_follows_the_anchor_rules() -> None:
    assert slug("A signing key leaked") == "a-signing-key-leaked"
    assert slug("What's next? (v2)") == "whats-next-v2"


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_every_runbook_url_names_a_runbook_section(rule: dict[str, Any]) -> None:
    url = rule["annotations"]["runbook_url"]
    assert url.startswith(RUNBOOK_URL), url
    anchors = {slug(s) for s in RUNBOOK_SECTIONS + REQUESTED_RUNBOOK_SECTIONS}
    assert url.removeprefix(RUNBOOK_URL) in anchors, url


@pytest.mark.skipif(not RUNBOOKS.exists(), reason="docs/runbooks.md is not written yet")
def test_every_runbook_anchor_is_a_heading_of_docs_runbooks_md() -> None:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    anchors = {slug(h) for h in headings}
    for rule in _rules():
        anchor = rule["annotations"]["runbook_url"].removeprefix(RUNBOOK_URL)
        assert anchor in anchors, f"{rule['alert']}: docs/runbooks.md has no section #{anchor}"


# --- the dashboard ---------------------------------------------------------------------------------


def test_the_dashboard_is_schema_39_with_a_datasource_and_a_tenant_variable() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    tenant = variables["tenant"]
    assert tenant["type"] == "query"
    assert tenant["datasource"]["uid"] == "${datasource}"
    query = tenant["query"] if isinstance(tenant["query"], str) else tenant["query"]["query"]
    assert re.fullmatch(r"label_values\(\s*rotor_active_keys\s*,\s*tenant\s*\)", query)
    # the default tenant is "", which Prometheus stores as no label: only ".*" matches it
    assert tenant["includeAll"] and tenant["allValue"] == ".*"


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in _panels(_dashboard()["panels"])]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    "panel",
    [p for p in _panels(_dashboard()["panels"]) if p["type"] != "row"],  # a row only groups panels
    ids=lambda p: f"{p['id']}-{p['title']}",
)
def test_every_panel_queries_the_chosen_datasource(panel: dict[str, Any]) -> None:
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
    assert panel["targets"]
    ref_ids = [target["refId"] for target in panel["targets"]]
    assert len(ref_ids) == len(set(ref_ids))
    for target in panel["targets"]:
        assert isinstance(target.get("expr"), str) and target["expr"].strip()
        assert target.get("datasource", panel["datasource"]) == panel["datasource"]


def test_the_dashboard_shows_every_metric_rotor_exports(exported: Exported) -> None:
    shown = {
        name
        for panel in _panels(_dashboard()["panels"])
        for target in panel.get("targets", [])
        for name, _ in read_query(target["expr"]).selectors
    }
    for family, series in exported.families.items():
        if family.endswith("_created"):
            continue  # prometheus_client's creation timestamps, not a measurement
        assert series & shown, f"no panel shows {family}"


def test_the_deploy_readme_lists_every_alert() -> None:
    readme = DEPLOY_README.read_text()
    for alert in EXPECTED_ALERTS:
        assert alert in readme, alert
