"""benchmarks/sidebyside.py: the order sides run in, and results kept by side."""

from __future__ import annotations

import pytest

from benchmarks.sidebyside import Figures, alternate, in_round_order, print_medians


def test_the_sides_swap_places_every_round() -> None:
    sides = {"A": "a", "B": "b"}

    orders = [[side for side, _ in in_round_order(sides, round_)] for round_ in (1, 2, 3, 4)]

    assert orders == [["A", "B"], ["B", "A"], ["A", "B"], ["B", "A"]]


def test_it_keeps_each_run_with_its_side_whatever_the_order(capsys: pytest.CaptureFixture[str]) -> None:
    trees = {"A": "/tree/a", "B": "/tree/b"}
    ran: list[str] = []

    def measure(tree: str) -> Figures:
        ran.append(tree)
        return {"run": float(len(ran))}

    results = alternate(trees, rounds=3, measure=measure, tag="t")

    assert ran == ["/tree/a", "/tree/b", "/tree/b", "/tree/a", "/tree/a", "/tree/b"]
    assert results == {
        "A": [{"run": 1.0}, {"run": 4.0}, {"run": 5.0}],
        "B": [{"run": 2.0}, {"run": 3.0}, {"run": 6.0}],
    }
    assert "[t] round 2/3 B:" in capsys.readouterr().err


def test_it_prints_each_sides_median_and_their_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    results = {"A": [{"x": 1.0}, {"x": 2.0}, {"x": 9.0}], "B": [{"x": 3.0}, {"x": 4.0}, {"x": 0.0}]}

    print_medians({"A": "/a", "B": "/b"}, results, ["x"], caption="toy", heading="figure")

    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["A: /a", "B: /b", "toy"]
    assert lines[-1].split() == ["x", "2.00", "3.00", "1.50"]
