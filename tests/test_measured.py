"""Measured profiles: the CSV format, its errors, and monotone interpolation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.measured import COLUMNS, MeasuredPoint, MeasuredProfile, load_measured_profiles
from fleet.types import Precision

HEADER = ",".join(COLUMNS) + "\n"


def write(tmp_path: Path, body: str, name: str = "profile.csv") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def test_grid_values_are_reproduced_and_interpolated(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# vLLM bench on one H100, 2026-10-02\n"
        + HEADER
        + "llama-3.1-8b,p5.48xlarge,1,fp8,1,1000,1000,30.0,7.0,run 1\n"
        + "llama-3.1-8b,p5.48xlarge,1,fp8,1,1000,3000,30.0,8.0,run 2\n"
        + "\n"
        + "llama-3.1-8b,p5.48xlarge,1,fp8,16,1000,1000,300.0,9.0,run 3\n"
        + "llama-3.1-8b,p5.48xlarge,1,fp8,16,1000,3000,300.0,12.0,run 4\n",
    )
    [p] = load_measured_profiles(path)
    assert (p.model, p.instance_type, p.tp_degree, p.precision) == (
        "llama-3.1-8b",
        "p5.48xlarge",
        1,
        Precision.FP8,
    )
    assert p.source == f"measured:{path}"
    assert p.tpot_ms(1, 1000) == 7.0 and p.tpot_ms(16, 3000) == 12.0
    assert p.tpot_ms(1, 2000) == pytest.approx(7.5)
    assert p.tpot_ms(16, 2000) == pytest.approx(10.5)
    assert p.tpot_ms(8.5, 1000) == pytest.approx(8.0)  # type: ignore[arg-type]
    # Below the grid the first value holds; beyond it TPOT keeps growing.
    assert p.tpot_ms(1, 10) == 7.0
    assert p.tpot_ms(1, 5000) == pytest.approx(9.0)  # slope 0.5 ms per 1000 tokens continues
    assert p.tpot_ms(32, 1000) == pytest.approx(18.0)  # beyond the largest batch: proportional
    # TTFT: 1000 tokens -> 30 ms, 16000 tokens -> 300 ms.
    assert p.ttft_ms(1000) == 30.0
    assert p.ttft_ms(1000, 15000) == 300.0
    assert p.ttft_ms(500) == 30.0
    assert p.ttft_ms(1000, 31000) == pytest.approx(600.0)
    # Capacity is not extrapolated beyond the measured batches.
    assert p.max_batch_for_tpot(100.0, 1000) == 16
    assert p.max_batch_for_tpot(8.0, 1000) == 8
    assert p.max_batch_for_tpot(6.0, 1000) == 0
    # Unbound: no power, capacity = largest measured batch x context.
    assert p.kv_capacity_tokens == 16 * 3000 and p.fits and p.max_power_w == 0.0


def test_rows_are_grouped_per_class(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER
        + "llama-3.1-8b,p5.48xlarge,1,fp8,1,1000,1000,30.0,7.0,a\n"
        + "llama-3.1-70b,p5.48xlarge,2,fp8,1,1000,1000,90.0,20.0,b\n"
        + "llama-3.1-8b,p5.48xlarge,1,fp8,8,1000,1000,200.0,8.0,c\n",
    )
    profiles = sorted(load_measured_profiles(path), key=lambda p: p.model)
    assert [(p.model, len(p.points)) for p in profiles] == [("llama-3.1-70b", 1), ("llama-3.1-8b", 2)]
    assert [pt.line for pt in profiles[1].points] == [2, 4]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (HEADER + "llama-3.1-8b,p5.48xlarge,1,fp8,1,1000,1000,30.0,abc,x\n", ":2: column 'tpot_ms'"),
        (HEADER + "llama-3.1-8b,p5.48xlarge,1,fp8,1,1000,1000,30.0,-1,x\n", ":2: column 'tpot_ms'"),
        (HEADER + "llama-3.1-8b,p5.48xlarge,1,fp8,1,1000,1000,nan,7,x\n", ":2: column 'ttft_ms'"),
        (HEADER + "llama-3.1-8b,p5.48xlarge,1,fp8,1,1000,1000,inf,7,x\n", ":2: column 'ttft_ms'"),
        (HEADER + "llama-3.1-8b,p5.48xlarge,0,fp8,1,1000,1000,30,7,x\n", ":2: column 'tp_degree'"),
        (HEADER + "llama-3.1-8b,p5.48xlarge,1,fp9,1,1000,1000,30,7,x\n", ":2: column 'precision'"),
        (HEADER + "llama-3.1-8b,p5.48xlarge,1,fp8,1.5,1000,1000,30,7,x\n", ":2: column 'batch'"),
        (HEADER + "llama-3.1-8b,p5.48xlarge,1,fp8,1,0,1000,30,7,x\n", ":2: column 'input_tokens'"),
        (HEADER + "llama-3.1-8b,p5.48xlarge,1,fp8,1,1000,-5,30,7,x\n", ":2: column 'context_tokens'"),
        (HEADER + ",p5.48xlarge,1,fp8,1,1000,1000,30,7,x\n", ":2: column 'model'"),
        (HEADER + "llama-3.1-8b,p5.48xlarge,1,fp8,1,1000,1000,30,7,\n", ":2: column 'source'"),
        (HEADER + "llama-3.1-8b,p5.48xlarge,1,fp8,1,1000,1000,30,7\n", ":2: expected 10 fields, got 9"),
        (HEADER.replace(",source", "") + "x\n", ":1: header: missing column(s) source"),
        (HEADER.replace("source", "source,colour") + "x\n", ":1: header: unknown column(s) colour"),
        ("# only a comment\n\n", "empty file"),
        (HEADER, "no data rows"),
        (
            "\n# c\n" + HEADER + "\nllama-3.1-8b,p5.48xlarge,1,fp8,1,1000,1000,30,oops,x\n",
            ":5: column 'tpot_ms'",
        ),
    ],
)
def test_errors_name_file_line_and_column(tmp_path: Path, body: str, needle: str) -> None:
    path = write(tmp_path, body, "bad.csv")
    with pytest.raises(ValueError) as e:
        load_measured_profiles(path)
    assert str(path) in str(e.value)
    assert needle in str(e.value)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_measured_profiles(tmp_path / "absent.csv")


POINTS = st.lists(
    st.tuples(
        st.sampled_from([1, 2, 4, 8, 16, 64]),
        st.integers(1, 8192),
        st.integers(1, 32768),
        st.floats(0.1, 5000.0),
        st.floats(0.1, 500.0),
    ),
    min_size=1,
    max_size=25,
)


def profile_from(points: list[tuple[int, int, int, float, float]]) -> MeasuredProfile:
    return MeasuredProfile(
        model="m",
        instance_type="i",
        tp_degree=1,
        precision=Precision.BF16,
        points=[
            MeasuredPoint(b, n, c, ttft, tpot, "hypothesis", i)
            for i, (b, n, c, ttft, tpot) in enumerate(points)
        ],
        origin="generated",
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    points=POINTS,
    b=st.tuples(st.integers(1, 200), st.integers(1, 200)),
    c=st.tuples(st.integers(0, 60000), st.integers(0, 60000)),
)
def test_tpot_is_monotonic_whatever_the_noise(
    points: list[tuple[int, int, int, float, float]], b: tuple[int, int], c: tuple[int, int]
) -> None:
    p = profile_from(points)
    b1, b2 = sorted(b)
    c1, c2 = sorted(c)
    assert p.tpot_ms(b1, c1) <= p.tpot_ms(b2, c1) + 1e-9
    assert p.tpot_ms(b1, c1) <= p.tpot_ms(b1, c2) + 1e-9
    assert p.tpot_ms(b1, c1) > 0


@settings(max_examples=300, deadline=None)
@given(points=POINTS, n=st.tuples(st.integers(0, 10**5), st.integers(0, 10**5)), q=st.integers(0, 10**6))
def test_ttft_is_monotonic_whatever_the_noise(
    points: list[tuple[int, int, int, float, float]], n: tuple[int, int], q: int
) -> None:
    p = profile_from(points)
    n1, n2 = sorted(n)
    assert p.ttft_ms(n1) <= p.ttft_ms(n2) + 1e-9
    assert p.ttft_ms(n1) <= p.ttft_ms(n1, q) + 1e-9


@settings(max_examples=200, deadline=None)
@given(points=POINTS, target=st.floats(0.0, 600.0), c=st.integers(0, 40000))
def test_max_batch_for_tpot_stays_within_measurements(
    points: list[tuple[int, int, int, float, float]], target: float, c: int
) -> None:
    p = profile_from(points)
    b = p.max_batch_for_tpot(target, c)
    assert 0 <= b <= max(pt[0] for pt in points)
    if b:
        assert p.tpot_ms(b, max(c, 1)) <= target
        assert b * max(c, 1) <= p.kv_capacity_tokens


def test_measured_values_at_grid_points_are_never_lowered(tmp_path: Path) -> None:
    # A noisy table (TPOT dips at the longer context) is raised to its running maximum, never lowered.
    path = write(
        tmp_path,
        HEADER
        + "llama-3.1-8b,p5.48xlarge,1,fp8,4,100,1000,10,9.0,a\n"
        + "llama-3.1-8b,p5.48xlarge,1,fp8,4,100,2000,10,8.0,b\n",
    )
    [p] = load_measured_profiles(path)
    assert p.tpot_ms(4, 1000) == 9.0 and p.tpot_ms(4, 2000) == 9.0
