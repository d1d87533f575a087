"""Pure pieces of client administration: CIDR parsing, peer-address matching, and the refusal
budget that keeps refused calls from flooding the audit log."""

from __future__ import annotations

import pytest
from rotor.core.audit import RefusalBudget
from rotor.core.clients import address_allowed, cidrs
from rotor.core.errors import InvalidRequest
from rotor.core.model import Client


def bound(*networks: str) -> Client:
    return Client("svc", "", "hash", (), (), allowed_cidrs=cidrs(networks))


def test_cidrs_are_normalized_and_deduplicated() -> None:
    assert cidrs(["10.0.0.0/8", "10.0.0.0/8", "::1", "FD00::/8", "192.168.1.7"]) == (
        "10.0.0.0/8",
        "::1/128",
        "fd00::/8",
        "192.168.1.7/32",
    )


@pytest.mark.parametrize("value", ["10.0.0.1/8", "10.0.0.0/33", "nonsense", "", "1.2.3.4/8/8", "x" * 200])
def test_a_bad_cidr_is_refused_with_a_hint(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        cidrs([value])
    assert caught.value.field == "allowed_cidrs"
    if value == "10.0.0.1/8":
        assert "10.0.0.0/8" in caught.value.message


def test_too_many_cidrs_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        cidrs([f"10.0.{i}.0/24" for i in range(65)])


@pytest.mark.parametrize(
    ("networks", "peer", "allowed"),
    [
        ((), "ipv4:203.0.113.9:5000", True),
        (("10.0.0.0/8",), "ipv4:127.0.0.1:5000", False),
        (("127.0.0.0/8",), "ipv4:127.0.0.1:5000", True),
        (("10.0.0.0/8",), "ipv4:10.20.30.40:1", True),
        (("::1/128",), "ipv6:[::1]:5000", True),
        (("::1/128",), "ipv6:%5B::1%5D:5000", True),
        (("fd00::/8",), "ipv6:[::1]:5000", False),
        (("10.0.0.0/8",), "ipv6:[::ffff:10.1.2.3]:5000", True),  # IPv4 through a dual-stack socket
        (("0.0.0.0/0",), "ipv6:[::1]:5000", False),  # an IPv4 network never holds an IPv6 peer
        (("10.0.0.0/8",), "unix:/run/rotor.sock", False),
        (("10.0.0.0/8",), "", False),
    ],
)
def test_only_the_transport_peer_address_counts(networks: tuple[str, ...], peer: str, allowed: bool) -> None:
    assert address_allowed(bound(*networks), peer) is allowed


def test_the_budget_writes_the_first_refusals_then_counts_the_rest() -> None:
    suppressed: list[int] = []
    budget = RefusalBudget(3, lambda: suppressed.append(1))
    assert [budget.admit("a", 100.0 + i) for i in range(5)] == [True, True, True, False, False]
    assert budget.admit("b", 104.0) is True  # another address has its own minute
    assert len(suppressed) == 2
    assert budget.summaries(130.0) == []  # the minute is not over
    (summary,) = budget.summaries(160.0)
    assert (summary.address, summary.count, summary.since) == ("a", 2, 100.0)
    assert budget.summaries(300.0) == []  # each summary once; quiet windows forgotten


def test_a_later_refusal_closes_the_window_and_its_summary_waits_to_be_written() -> None:
    budget = RefusalBudget(1)
    assert budget.admit("a", 0.0) and not budget.admit("a", 1.0)
    assert budget.admit("a", 61.0) is True  # a new minute
    (summary,) = budget.summaries()
    assert summary.count == 1


def test_a_spray_of_addresses_shares_one_window() -> None:
    budget = RefusalBudget(1)
    budget.MAX_ADDRESSES = 2
    assert budget.admit("a", 0.0) and budget.admit("b", 0.0)
    assert [budget.admit(f"x{i}", 0.0) for i in range(4)] == [True, False, False, False]


def test_zero_turns_the_cap_off() -> None:
    budget = RefusalBudget(0)
    assert all(budget.admit("a", 0.0) for _ in range(1000))
