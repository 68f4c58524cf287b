"""Which of a version's two networks runs (model/choice.py): the decision, and the timing it rests on."""

from __future__ import annotations

import pytest

from inspectd.model.choice import AGREEMENT_TOLERANCE, choose, time_per_input


def test_a_version_with_one_network_runs_it_whatever_is_asked() -> None:
    for mode in ("fastest", "shipped", "float"):
        picked = choose(mode, "int8", None, None)
        assert picked.network == "int8" and picked.reason == "the only network of this version"


def test_a_float_network_that_disagrees_never_runs() -> None:
    picked = choose("float", "int8", AGREEMENT_TOLERANCE + 0.01, {"int8": 2.0, "none": 1.0})
    assert picked.network == "int8" and f"disagrees by {AGREEMENT_TOLERANCE + 0.01:.3f}" in picked.reason


def test_the_faster_network_runs_and_the_reason_gives_both_timings() -> None:
    avx2_only = choose("fastest", "int8", 0.004, {"int8": 1.046, "none": 0.636})
    assert avx2_only.network == "none"
    assert avx2_only.reason == "fastest here: float 0.636, int8 1.046 ms per input"
    vnni = choose("fastest", "int8", 0.004, {"int8": 0.31, "none": 0.52})
    assert vnni.network == "int8" and vnni.ms_per_input == {"int8": 0.31, "none": 0.52}


def test_the_choice_can_be_fixed_in_the_config() -> None:
    assert choose("shipped", "int8", 0.004, None).network == "int8"
    assert choose("float", "dynamic", 0.004, None).network == "none"
    with pytest.raises(ValueError):
        choose("fastest", "int8", 0.004, None)


def test_timing_alternates_the_networks_and_keeps_each_ones_fastest_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A clock that each call advances by a set amount; the machine slows down half-way."""
    now = [0.0]
    order: list[str] = []
    cost = {"int8": [0.050, 0.032, 0.040, 0.090], "none": [0.030, 0.020, 0.025, 0.060]}

    def call(name: str) -> None:
        order.append(name)
        now[0] += cost[name][sum(1 for n in order if n == name) - 1]

    monkeypatch.setattr("inspectd.model.choice.time.perf_counter", lambda: now[0])
    got = time_per_input({"int8": lambda: call("int8"), "none": lambda: call("none")}, inputs=16)
    assert order == ["int8", "none"] * 4  # one warm-up each, then alternating
    assert got == pytest.approx({"int8": 32.0 / 16, "none": 20.0 / 16})
