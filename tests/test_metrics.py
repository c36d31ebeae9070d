"""Tests for qdbg.metrics against hand-computed values, NaN/Inf, identical and zero inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from qdbg.errors import ModelMismatchError, QdbgError
from qdbg.metrics import diff_profile, logits_compare, pair_metrics, tensor_stats

NAN, INF = float("nan"), float("inf")


def plain(x: object) -> None:
    """Assert x is built only from JSON-able plain Python types (no numpy scalars)."""
    if isinstance(x, dict):
        for k, v in x.items():
            assert type(k) is str
            plain(v)
    elif isinstance(x, list):
        for v in x:
            plain(v)
    else:
        assert x is None or type(x) in (bool, int, float, str), (x, type(x))


# ---- tensor_stats ----------------------------------------------------------------------------

def test_stats_hand_values() -> None:
    s = tensor_stats([1.0, -1.0, 1.0, -1.0])
    assert (s["rms"], s["mean"], s["std"], s["min"], s["max"], s["absmax"]) == (1.0, 0.0, 1.0, -1.0, 1.0, 1.0)
    assert s["shape"] == [4] and s["nan_count"] == 0 and s["inf_count"] == 0
    plain(s)


def test_stats_nan_inf_counted_and_skipped() -> None:
    s = tensor_stats(np.array([[3.0, -4.0, NAN], [INF, 0.0, -INF]], dtype=np.float32))
    # finite values 3, -4, 0: rms = sqrt(25/3), mean = -1/3, std = sqrt(((10/3)^2+(11/3)^2+(1/3)^2)/3)
    assert s["rms"] == pytest.approx(2.886751345948129, rel=1e-15)
    assert s["mean"] == pytest.approx(-0.3333333333333333, rel=1e-15)
    assert s["std"] == pytest.approx(2.8674417556808756, rel=1e-15)
    assert (s["min"], s["max"], s["absmax"]) == (-4.0, 3.0, 4.0)
    assert (s["nan_count"], s["inf_count"], s["finite_count"], s["size"]) == (1, 2, 3, 6)
    assert s["shape"] == [2, 3]
    assert s["first"][:2] == [3.0, -4.0] and math.isnan(s["first"][2]) and s["first"][3:] == [INF, 0.0, -INF]
    plain(s)
    json.dumps(s)


def test_stats_first_eight_and_all_nonfinite() -> None:
    assert tensor_stats(np.arange(20.0))["first"] == [0.0, 1, 2, 3, 4, 5, 6, 7]
    s = tensor_stats([NAN, INF])
    assert s["rms"] is None and s["mean"] is None and s["absmax"] is None and s["finite_count"] == 0
    assert tensor_stats(np.zeros(3))["rms"] == 0.0
    assert tensor_stats(np.array([1e300, -1e300]))["rms"] == pytest.approx(1e300)  # no overflow


def test_stats_bad_input() -> None:
    with pytest.raises(QdbgError):
        tensor_stats(["x", "y"])


# ---- pair_metrics ----------------------------------------------------------------------------

def test_pair_hand_values() -> None:
    # d = [0.5, 0, 0, 0]; ||d|| = 0.5; ||b|| = 5; ||a|| = sqrt(25.25); eps = rms(b) = 2.5
    m = pair_metrics([0.5, 3.0, 4.0, 0.0], [0.0, 3.0, 4.0, 0.0], input_rel_rms=0.05)
    assert m["max_abs"] == 0.5
    assert m["mean_abs"] == 0.125
    assert m["rel_rms"] == pytest.approx(0.1, rel=1e-15)
    assert m["sqnr"] == pytest.approx(20.0, rel=1e-14)  # 10*log10(25 / 0.25)
    assert m["cos"] == pytest.approx(0.9950371902099892, rel=1e-15)  # 25 / (5 * sqrt(25.25))
    assert m["rel_eps"] == pytest.approx(2.5, rel=1e-15)
    assert m["max_rel"] == pytest.approx(0.2, rel=1e-15)  # 0.5 / (0 + 2.5)
    assert m["max_rel_at"] == {"index": [0], "at": {"dim0": 0}, "a": 0.5, "b": 0.0}
    assert m["sign_flips"] == 0  # a=0.5 vs b=0: zeros never flip
    assert m["amp"] == pytest.approx(2.0, rel=1e-15)  # 0.1 / 0.05
    assert (m["n"], m["n_compared"], m["n_nonfinite"], m["first_nonfinite"]) == (4, 4, 0, None)
    plain(m)
    json.dumps(m)


def test_pair_second_hand_case() -> None:
    # d = [0, 0, -1], ||b|| = sqrt(21): rel = 1/sqrt(21), sqnr = 10*log10(21), cos = 17/sqrt(14*21)
    m = pair_metrics([1, 2, 3], [1, 2, 4])
    assert m["rel_rms"] == pytest.approx(0.2182178902359924, rel=1e-15)
    assert m["sqnr"] == pytest.approx(13.222192947339193, rel=1e-14)
    assert m["cos"] == pytest.approx(0.9914601339836675, rel=1e-15)
    assert m["max_rel"] == pytest.approx(0.15047207654837882, rel=1e-15)  # 1 / (4 + sqrt(21/3))
    assert m["max_rel_at"]["index"] == [2]


def test_max_rel_outlier_and_flip() -> None:
    # eps = rms(b) = 3; d = [0, 0, 0, 6] -> 6 / (3 + 3)
    m = pair_metrics([3.0, -3.0, 3.0, 3.0], [3.0, -3.0, 3.0, -3.0])
    assert m["max_rel"] == 1.0 and m["max_rel_at"]["index"] == [3] and m["sign_flips"] == 1


def test_huge_values_do_not_overflow() -> None:
    m = pair_metrics([1e200, 1e200], [1e200, 0.5e200])
    assert m["rel_rms"] == pytest.approx(0.4472135954999579, rel=1e-14)  # 0.5 / sqrt(1.25)
    assert m["cos"] == pytest.approx(0.9486832980505138, rel=1e-14)  # 1.5 / sqrt(2 * 1.25)
    assert m["sqnr"] == pytest.approx(10 * math.log10(5.0), rel=1e-14)


def test_sign_flips_ignore_zeros() -> None:
    m = pair_metrics([1.0, -1.0, 0.0, 2.0, -3.0], [-1.0, -1.0, 5.0, 0.0, 3.0])
    assert m["sign_flips"] == 2


def test_top_named_axes_and_order() -> None:
    a = [[1, 2], [3, 4], [5, 6]]
    b = [[1, 2.5], [3, 4], [2, 6]]
    m = pair_metrics(a, b, axes_names=("token", "channel"), top_n=5)
    assert m["top"] == [
        {"index": [2, 0], "at": {"token": 2, "channel": 0}, "a": 5.0, "b": 2.0, "abs_diff": 3.0,
         "rel_diff": m["top"][0]["rel_diff"]},
        {"index": [0, 1], "at": {"token": 0, "channel": 1}, "a": 2.0, "b": 2.5, "abs_diff": 0.5,
         "rel_diff": m["top"][1]["rel_diff"]},
    ]  # only nonzero differences are listed
    assert m["max_rel_at"]["at"] == {"token": 2, "channel": 0}
    # ties go to the lower flat index
    t = pair_metrics([1, 1, 1, 1], [0, 2, 0, 2], top_n=2)["top"]
    assert [e["index"] for e in t] == [[0], [1]]
    assert pair_metrics([1, 2], [0, 0], top_n=0)["top"] == []


def test_top_large_random_matches_sort() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((7, 4, 9)), rng.standard_normal((7, 4, 9))
    m = pair_metrics(a, b, axes_names=("head", "token", "kv"), top_n=10)
    want = np.argsort(-np.abs(a - b).reshape(-1), kind="stable")[:10]
    assert [e["index"] for e in m["top"]] == [list(np.unravel_index(i, a.shape)) for i in want]
    e = m["top"][0]
    assert a[tuple(e["index"])] == e["a"] and e["at"] == dict(zip(("head", "token", "kv"), e["index"]))


def test_pair_identical_and_zero_reference() -> None:
    m = pair_metrics(np.ones((2, 3)), np.ones((2, 3)))
    assert (m["rel_rms"], m["sqnr"], m["cos"], m["max_abs"], m["max_rel"], m["top"]) == (0.0, INF, 1.0, 0.0, 0.0, [])
    z = pair_metrics([1.0, 0.0], [0.0, 0.0])
    assert (z["rel_rms"], z["sqnr"], z["cos"], z["max_rel"]) == (INF, -INF, 0.0, INF)
    assert z["max_rel_at"]["index"] == [0]
    zz = pair_metrics([0.0, 0.0], [0.0, 0.0])
    assert (zz["rel_rms"], zz["sqnr"], zz["cos"], zz["max_rel"]) == (0.0, INF, 1.0, 0.0)
    json.dumps(z)  # inf is written as Infinity


def test_pair_nan_inf() -> None:
    m = pair_metrics([1.0, NAN, 3.0, INF], [1.0, 2.0, 2.0, 4.0], top_n=3)
    assert (m["n_compared"], m["n_nonfinite"], m["nan_a"], m["inf_a"], m["nan_b"], m["inf_b"]) == (2, 2, 1, 1, 0, 0)
    assert m["first_nonfinite"]["index"] == [1] and math.isnan(m["first_nonfinite"]["a"])
    assert m["max_abs"] == 1.0 and m["rel_rms"] == pytest.approx(1 / math.sqrt(5), rel=1e-15)
    assert [e["index"] for e in m["top"]] == [[2]]
    allbad = pair_metrics([NAN, 1.0], [1.0, INF])
    assert allbad["rel_rms"] is None and allbad["sqnr"] is None and allbad["top"] == []
    assert allbad["n_compared"] == 0
    plain(allbad)


def test_amplification() -> None:
    a, b = [1.1, 1.0], [1.0, 1.0]
    assert pair_metrics(a, b)["amp"] is None
    assert pair_metrics(a, b, input_rel_rms=0.0)["amp"] is None
    assert pair_metrics(a, b, input_rel_rms=INF)["amp"] is None
    with pytest.raises(QdbgError):
        pair_metrics(a, b, input_rel_rms="x")  # type: ignore[arg-type]
    rel = 0.1 / math.sqrt(2)
    assert pair_metrics(a, b, input_rel_rms=rel / 4)["amp"] == pytest.approx(4.0, rel=1e-12)


def test_pair_errors_and_dtypes() -> None:
    with pytest.raises(ModelMismatchError):
        pair_metrics(np.zeros(3), np.zeros(4))
    with pytest.raises(QdbgError):
        pair_metrics(np.zeros((2, 3)), np.zeros((2, 3)), axes_names=("token",))
    with pytest.raises(QdbgError):
        pair_metrics([1], [1], top_n=-1)
    m = pair_metrics(np.array([1, 2], np.float16), np.array([1, 3], np.float32))
    plain(m)
    s = pair_metrics(np.float32(2.0), np.float32(1.0))
    assert s["top"][0]["index"] == [] and s["rel_rms"] == 1.0


# ---- diff_profile ----------------------------------------------------------------------------

def test_diff_profile() -> None:
    a = np.array([[1.0, 2, 3], [4, 5, 6]])
    b = np.zeros((2, 3))
    np.testing.assert_array_equal(diff_profile(a, b, 0), [2.0, 5.0])
    np.testing.assert_array_equal(diff_profile(a, b, 1), [2.5, 3.5, 4.5])
    np.testing.assert_array_equal(diff_profile(a, b, -1), [2.5, 3.5, 4.5])
    np.testing.assert_array_equal(diff_profile(a, b, 0, "max"), [3.0, 6.0])
    np.testing.assert_allclose(diff_profile(a, b, 0, "rms"), [math.sqrt(14 / 3), math.sqrt(77 / 3)], rtol=1e-15)
    a[0, 0], a[1, :] = NAN, INF
    p = diff_profile(a, b, 0)
    assert p[0] == 2.5 and math.isnan(p[1]) and p.dtype == np.float64
    for bad in (2, -3, 1.5):
        with pytest.raises(QdbgError):
            diff_profile(a, b, bad)  # type: ignore[arg-type]
    with pytest.raises(QdbgError):
        diff_profile(a, b, 0, "median")
    with pytest.raises(QdbgError):
        diff_profile(1.0, 2.0, 0)


# ---- logits_compare --------------------------------------------------------------------------

def test_logits_hand_values() -> None:
    # P = [1/2, 1/2]; Q = [3/4, 1/4]; M = [5/8, 3/8]
    r = logits_compare([0.0, 0.0], [math.log(3.0), 0.0], k=2, pieces=["x", "y"])
    assert (r["n_pos"], r["n_vocab"], r["k"], r["flip_positions"]) == (1, 2, 2, [])
    p = r["positions"][0]
    assert p["kl_ab"] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-14)  # 0.14384...
    assert p["kl_ba"] == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-14)
    js = 0.5 * (0.5 * math.log(0.8) + 0.5 * math.log(4 / 3) + 0.75 * math.log(1.2) + 0.25 * math.log(2 / 3))
    assert p["js"] == pytest.approx(js, rel=1e-13)
    assert p["a"]["top"] == [{"id": 0, "piece": "x", "logit": 0.0, "prob": 0.5},
                             {"id": 1, "piece": "y", "logit": 0.0, "prob": 0.5}]  # tie -> lower id
    assert p["b"]["top"][0]["prob"] == pytest.approx(0.75, rel=1e-15)
    assert p["a"]["margin"] == 0.0 and p["b"]["margin"] == pytest.approx(math.log(3.0))
    assert p["a"]["entropy"] == pytest.approx(math.log(2.0), rel=1e-15)
    assert p["top1_agree"] is True and p["flip"] is False and p["topk_overlap"] == 1.0
    assert p["rank_b_of_a_top1"] == 1 and p["rank_a_of_b_top1"] == 1
    plain(r)


def test_logits_flip_rank_overlap_per_position() -> None:
    la = [[5.0, 4, 3, 2, 1], [1.0, 2, 3, 4, 5]]
    lb = [[1.0, 2, 3, 4, 5], [1.0, 2, 3, 4, 5]]
    r = logits_compare(la, lb, k=3)
    assert r["flip_positions"] == [0]
    p0, p1 = r["positions"]
    assert [t["id"] for t in p0["a"]["top"]] == [0, 1, 2] and [t["id"] for t in p0["b"]["top"]] == [4, 3, 2]
    assert p0["topk_overlap"] == pytest.approx(1 / 3) and p0["rank_b_of_a_top1"] == 5
    assert p0["rank_a_of_b_top1"] == 5 and p0["a"]["margin"] == 1.0
    # KL between a distribution and its reverse: sum p_i (x_i - y_i), both log-sum-exps equal
    e = np.exp(np.arange(5.0, 0, -1))
    assert p0["kl_ab"] == pytest.approx(float(np.sum(e / e.sum() * np.array([4.0, 2, 0, -2, -4]))), rel=1e-13)
    assert p1["kl_ab"] == 0.0 and p1["js"] == 0.0 and p1["flip"] is False and p1["topk_overlap"] == 1.0


def test_logits_masked_and_nan() -> None:
    r = logits_compare([-INF, 0.0, 0.0], [0.0, 0.0, 0.0])["positions"][0]
    assert r["kl_ab"] == pytest.approx(math.log(1.5), rel=1e-14)  # P=[0,1/2,1/2], Q=1/3 each
    assert r["kl_ba"] == INF
    js = 0.5 * (math.log(1.2) + math.log(2) / 3 + 2 / 3 * math.log(0.8))
    assert r["js"] == pytest.approx(js, rel=1e-13)
    assert r["a"]["top"][2] == {"id": 0, "piece": None, "logit": -INF, "prob": 0.0}
    n = logits_compare([NAN, 1.0, 2.0], [0.0, 1.0, 2.0], k=5)
    q = n["positions"][0]
    assert n["k"] == 3 and [t["id"] for t in q["a"]["top"]] == [2, 1, 0]
    assert q["a"]["top"][0]["prob"] is None and q["a"]["entropy"] is None
    assert q["kl_ab"] is None and q["js"] is None and q["top1_agree"] is True
    assert q["b"]["top"][0]["prob"] is not None
    json.dumps(n)
    assert logits_compare([INF, 0.0], [0.0, 0.0])["positions"][0]["kl_ab"] is None
    assert logits_compare([7.0], [7.0])["positions"][0]["a"]["margin"] is None


def test_logits_pieces_and_errors() -> None:
    assert logits_compare([0.0, 1.0], [0.0, 1.0], k=1, pieces={1: b"\xe2\x96\x81hi"})["positions"][0]["a"]["top"][0]["piece"] == "\u2581hi"
    assert logits_compare([0.0, 1.0], [0.0, 1.0], k=1, pieces=lambda i: f"<{i}>")["positions"][0]["a"]["top"][0]["piece"] == "<1>"
    assert logits_compare([0.0, 1.0], [0.0, 1.0], k=1, pieces=["a"])["positions"][0]["a"]["top"][0]["piece"] is None
    with pytest.raises(ModelMismatchError):
        logits_compare([0.0, 1.0], [0.0, 1.0, 2.0])
    for bad in (np.zeros((1, 2, 3)), np.zeros((2, 0)), 3.0):
        with pytest.raises(QdbgError):
            logits_compare(bad, bad)
    with pytest.raises(QdbgError):
        logits_compare([0.0], [0.0], k=0)


def test_logits_big_vocab_fast() -> None:
    rng = np.random.default_rng(1)
    la = rng.standard_normal((8, 49152)).astype(np.float32)
    lb = la + 0.01 * rng.standard_normal((8, 49152)).astype(np.float32)
    r = logits_compare(la, lb, k=10)
    for p, row in zip(r["positions"], la):
        assert [t["id"] for t in p["a"]["top"]] == list(np.argsort(-row.astype(np.float64), kind="stable")[:10])
        assert 0 <= p["js"] <= math.log(2) and p["kl_ab"] >= 0
