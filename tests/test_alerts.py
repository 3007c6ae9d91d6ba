"""Alert rules, engine and sinks: known answers on seeded streams, real HTTP server and MQTT broker."""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from scipy.spatial.distance import pdist

from aoiflow.service.alerts import (
    Alert,
    AlertEngine,
    CallbackSink,
    DefectRateChart,
    InputHealth,
    JsonLinesSink,
    KnownKinds,
    MqttSink,
    NewAnomalyKind,
    NormalDrift,
    Observation,
    PageHinkley,
    WebhookSink,
    p_chart_ucl,
)
from aoiflow.service.alerts.novelty import MIN_RADIUS, NORMAL_KIND

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
WAIT = 5.0  # seconds: bound on every wait for a thread, a server or a broker


def obs(i: int, *, a: float = 0.0, flagged: bool = False, verdict: str | None = None,
        descriptor: np.ndarray | None = None, input_ok: bool = True) -> Observation:
    """Inspection ``i`` one second after the previous."""
    return Observation(inspection_id=i, time=T0 + timedelta(seconds=i), a=a,
                       decision="anomalous" if flagged else "normal",
                       verdict=verdict or ("anomaly" if flagged else "ok"), descriptor=descriptor, input_ok=input_ok)


def feed(rule, observations) -> list[tuple[int, Alert]]:
    """(inspection id, alert) for every alert the rule raised."""
    return [(o.inspection_id, a) for o in observations for a in rule.observe(o)]


def window(start: int, n: int, defect_at: set[int], verdict: str = "defect:scratch") -> list[Observation]:
    """``n`` inspections from id ``start``; offsets in ``defect_at`` are flagged with ``verdict``."""
    return [obs(start + j, flagged=j in defect_at, verdict=verdict if j in defect_at else None) for j in range(n)]


# ----------------------------------------------------------------------------- events

def test_alerts_import_no_torch_web_framework_or_database():
    code = ("import sys, aoiflow.service.alerts; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'fastapi', 'sqlalchemy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_observation_checks_its_inputs():
    with pytest.raises(ValueError, match="timezone-aware"):
        Observation(inspection_id=1, time=datetime(2024, 1, 1), a=0.0, decision="normal", verdict="ok")
    with pytest.raises(ValueError, match="verdict"):
        Observation(inspection_id=1, time=T0, a=0.0, decision="anomalous", verdict="defect:")
    o = obs(1, flagged=True, verdict="defect:scratch")
    assert o.kind_label == "scratch" and obs(2, flagged=True).kind_label is None


# ----------------------------------------------------------------------------- p-chart

def test_p_chart_known_answer_and_episodes():
    # By hand: UCL = 0.01 + 3 * sqrt(0.01 * 0.99 / 200) = 0.01 + 3 * 0.0070356 = 0.031107,
    # so a 200-part window in control holds at most 6 defects (6.22); 10 is out, 4 is in.
    ucl = 0.01 + 3 * math.sqrt(0.01 * 0.99 / 200)
    assert ucl == pytest.approx(0.031107, abs=1e-6)
    assert p_chart_ucl(0.01, 200, 3.0) == pytest.approx(ucl)
    rule = DefectRateChart(n=200, z=3.0, baseline=0.01)
    spread = lambda k: set(range(5, 200, 200 // k)[:k])

    assert feed(rule, window(0, 200, spread(4))) == []
    hits = feed(rule, window(200, 200, spread(10)))
    assert {a.kind for _, a in hits} == {"any", "scratch"}  # all anomalies together and the kind
    seventh = 200 + sorted(spread(10))[6]
    assert all(i == seventh for i, _ in hits)  # alerts as soon as the count passes 6.22
    alert = next(a for _, a in hits if a.kind == "scratch")
    assert alert.key == "rate:scratch:200" and alert.evidence == [200 + j for j in sorted(spread(10))[:7]]
    assert alert.details["ucl"] == pytest.approx(ucl) and "7 in the" in alert.message

    assert feed(rule, window(400, 200, spread(10))) == []  # same episode: raised once
    assert feed(rule, window(600, 200, spread(4))) == []  # back in control: re-armed
    again = feed(rule, window(800, 200, spread(10)))
    assert sorted(a.key for _, a in again) == ["rate:any:800", "rate:scratch:800"]


def test_p_chart_learns_its_baseline():
    rule = DefectRateChart(n=200, baseline_n=1000)
    assert feed(rule, window(0, 1000, set(range(0, 1000, 100)))) == []  # 10 in 1000: p0 = 1 %
    assert rule.ucl("scratch") == pytest.approx(p_chart_ucl(0.01, 200))
    hits = feed(rule, window(1000, 200, set(range(7))))
    assert sorted(a.key for _, a in hits) == ["rate:any:1000", "rate:scratch:1000"]
    # A kind absent from the baseline gets half a part (0.05 %); its UCL is 0.52 %, 2 of 200 alert.
    hits = feed(rule, window(1200, 200, {3, 50}, verdict="defect:dent"))
    assert [a.key for _, a in hits] == ["rate:dent:1200"]


def test_ewma_chart_known_answer():
    # By hand, lambda 0.2, width 3, p0 1 %, n 200, first window:
    # limit = 0.01 + 3 * sqrt(0.0099 / 200) * sqrt(0.2 / 1.8 * (1 - 0.8 ** 2)) = 0.014221;
    # 10 defects: e = 0.2 * 0.05 + 0.8 * 0.01 = 0.018 > limit; 4 defects: e = 0.012 < limit.
    limit = 0.01 + 3 * math.sqrt(0.0099 / 200) * math.sqrt(0.2 / 1.8 * 0.36)
    quiet = DefectRateChart(n=200, baseline={"any": 0.01}, chart="ewma")
    assert feed(quiet, window(0, 200, set(range(4)))) == []
    loud = DefectRateChart(n=200, baseline={"any": 0.01}, chart="ewma")
    (i, alert), = feed(loud, window(0, 200, set(range(10))))
    assert i == 199 and alert.key == "rate-ewma:any:0"
    assert alert.details["ewma"] == pytest.approx(0.018) and alert.details["limit"] == pytest.approx(limit)


# ----------------------------------------------------------------------------- drift

def test_page_hinkley_quiet_on_normals_then_catches_a_one_sd_shift():
    # Seed 0: learn mean/sd from 500 passing parts, 2000 more N(0, 1) parts, then N(1, 1).
    # Measured over 400 seeds (detector alone, same reference learning): 4.3 % of 2000-part
    # normal streams had a false alarm (Siegmund: about 3 % with the exact reference); the delay
    # to a +1 sd shift had mean 20.3 (Siegmund's 20), median 19, 99th percentile 49, max 68.
    # Seed 0 takes 31; the bound 60 sits past the 99th percentile.
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=2500), rng.normal(size=400) + 1.0])
    rule = NormalDrift(delta=0.5, lam=10.0, reference_n=500)
    stream = [obs(i, a=0.3 + 0.02 * v) for i, v in enumerate(values)]  # any scale: A is standardised
    hits = feed(rule, stream)
    assert rule.reference == pytest.approx((0.3, 0.02), rel=0.1)
    (i, alert), = hits
    delay = i - 2500 + 1
    assert 0 < delay < 60, delay
    assert alert.details["direction"] == "up" and 0.6 < alert.details["shift_sd"] < 2.5
    since = alert.details["since"]["id"]
    assert 2500 - 30 <= since <= i and alert.key == f"drift:up:{since}"
    assert "drifted up" in alert.message


def test_page_hinkley_bounded_false_alarms_and_delays_over_seeds():
    false_alarms, delays = 0, []
    for seed in range(30):
        rng = np.random.default_rng(1000 + seed)
        det = PageHinkley(delta=0.5, lam=10.0)
        fired = [j for j, v in enumerate(np.concatenate([rng.normal(size=2000), rng.normal(size=200) + 1]))
                 if det.update(v)]
        false_alarms += bool(fired) and fired[0] < 2000
        delays += [fired[0] - 1999] if fired and fired[0] >= 2000 else []
    assert false_alarms <= 3  # expected about 1 of 30 (3 % each)
    assert len(delays) >= 27 and 10 < np.median(delays) < 35


def test_drift_episode_rearms_and_catches_a_downward_shift():
    rng = np.random.default_rng(3)
    rule = NormalDrift(reference=(0.0, 1.0), rearm_window=100)
    values = np.concatenate([rng.normal(size=300) + 1.5, rng.normal(size=300), rng.normal(size=300) - 1.5])
    hits = feed(rule, [obs(i, a=v) for i, v in enumerate(values)])
    assert [a.details["direction"] for _, a in hits] == ["up", "down"]
    assert hits[0][0] < 60 and 600 <= hits[1][0] < 660


# ----------------------------------------------------------------------------- new kinds

def _kinds_data(rng, per_kind: int = 300):
    """Two known kinds in 8-d, unit spread, centres at +-6 on feature 0; a third kind at +12 on feature 1."""
    centres = {"dent": np.r_[6.0, np.zeros(7)], "scratch": np.r_[-6.0, np.zeros(7)]}
    x = np.concatenate([c + rng.normal(size=(per_kind, 8)) for c in centres.values()])
    labels = [k for k in centres for _ in range(per_kind)]
    return centres, KnownKinds.fit(x, labels), np.r_[0.0, 12.0, np.zeros(6)]


def _novelty_stream(rng, centres, third, n: int = 3000, third_rate: float = 0.02, known_rate: float = 0.08):
    """Normal parts without descriptors, flagged known kinds, the third kind at ``third_rate``, rare scatter."""
    stream, third_ids, odd_ids = [], [], []
    for i in range(n):
        u = rng.random()
        if u < third_rate:
            stream.append(obs(i, flagged=True, verdict="unknown_anomaly", descriptor=third + rng.normal(size=8)))
            third_ids.append(i)
        elif u < third_rate + known_rate:
            centre = centres["dent" if rng.random() < 0.5 else "scratch"]
            stream.append(obs(i, flagged=True, descriptor=centre + rng.normal(size=8)))
        elif u < third_rate + known_rate + 0.003:  # lone oddities, far apart: never a group
            stream.append(obs(i, flagged=True, descriptor=rng.uniform(-40, 40, size=8)))
            odd_ids.append(i)
        else:
            stream.append(obs(i))
    return stream, third_ids, odd_ids


def test_new_kind_alerts_once_with_its_first_k_members():
    rng = np.random.default_rng(7)
    centres, known, third = _kinds_data(rng)
    stream, third_ids, _ = _novelty_stream(rng, centres, third)
    rule = NewAnomalyKind(known, k=5, window=1000)
    hits = feed(rule, stream)
    assert len(third_ids) > 40
    (i, alert), = hits
    assert i == third_ids[4] and alert.evidence == third_ids[:5]
    assert alert.key == f"new_kind:{third_ids[0]}" and alert.details["size"] == 5
    assert "new kind" in alert.message and "dent, scratch" in alert.message
    by_id = {o.inspection_id: o for o in stream}
    assert [(m["id"], m["a"]) for m in alert.details["members"]] == [(i, by_id[i].a) for i in third_ids[:5]]


def test_known_kinds_never_alert():
    rng = np.random.default_rng(8)
    centres, known, third = _kinds_data(rng)
    stream, _, odd_ids = _novelty_stream(rng, centres, third, n=4000, third_rate=0.0, known_rate=0.3)
    rule = NewAnomalyKind(known, k=5, window=1000)
    assert feed(rule, stream) == []
    candidates = {c["id"] for c in rule.state_dict()["candidates"]}
    assert candidates and candidates <= set(odd_ids)  # of about 1200 known-kind parts, none was a candidate


def test_known_kinds_from_centroids_round_trip():
    known = KnownKinds.from_centroids({"a": [0.0, 0.0], "b": [10.0, 0.0]}, {"a": 2.0, "b": 2.0})
    assert known.eps == pytest.approx(2 * math.sqrt(2))
    again = KnownKinds.from_dict(json.loads(json.dumps(known.to_dict())))
    assert again.names == ["a", "b"] and np.allclose(again.centroids, known.centroids)
    with pytest.raises(ValueError, match="3 features"):
        known.standardise(np.zeros(3))
    fitted = KnownKinds.fit(np.random.default_rng(0).normal(size=(40, 3)), ["a", "b"] * 20)
    again = KnownKinds.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert np.allclose(again.spreads, fitted.spreads) and not np.allclose(fitted.spreads, 1.0)
    older = {k: v for k, v in known.to_dict().items() if k != "spreads"}  # saved before per-kind spreads
    assert np.array_equal(KnownKinds.from_dict(older).spreads, np.ones((2, 2)))


def _two_shapes(rng, n: int = 200) -> tuple[np.ndarray, list[str]]:
    """Kind "thin": tight on feature 0 (sd 0.1), loose on feature 1 (sd 5); kind "wide" the other
    way round, centred at (20, 0)."""
    thin = np.column_stack([rng.normal(0, 0.1, n), rng.normal(0, 5, n)])
    wide = np.column_stack([rng.normal(20, 5, n), rng.normal(0, 0.1, n)])
    return np.concatenate([thin, wide]), ["thin"] * n + ["wide"] * n


def test_each_kind_is_judged_in_its_own_spread():
    x, labels = _two_shapes(np.random.default_rng(3))
    per_kind, pooled = KnownKinds.fit(x, labels), KnownKinds.fit(x, labels, per_kind=False)
    # 5 off on the feature thin is tight on: about 9 of its spreads (0.1 floored at 0.05 pooled sd),
    # 0.5 pooled sd; thin's pooled radius is set by its loose feature
    off_thin = per_kind.standardise(np.array([5.0, 0.0]))
    assert per_kind.ratios(off_thin)[0] > 2.5 and pooled.ratios(off_thin)[0] < 0.25
    along_thin = per_kind.standardise(np.array([0.0, 8.0]))  # 1.6 sd along its loose feature: thin
    assert per_kind.ratios(along_thin)[0] < 1
    # The radius is the 0.99 quantile of the kind's own distances in its spread: 2 of its 200 lie beyond.
    own = np.array([per_kind.ratios(z)[0] for z in per_kind.standardise(x[:200])])
    assert (own > 1).sum() == 2


def test_a_kind_of_identical_samples_gets_the_smallest_radius():
    x = np.concatenate([np.zeros((5, 2)), np.random.default_rng(0).normal(5, 1, (20, 2))])
    known = KnownKinds.fit(x, ["same"] * 5 + ["spread"] * 20)
    assert known.radii[known.names.index("same")] == MIN_RADIUS and known.eps > 0


def test_the_reference_kind_is_known_but_sets_no_grouping_distance():
    rng = np.random.default_rng(4)
    normal, dent = rng.normal(0, 3, (300, 2)), rng.normal([30, 0], 0.5, (100, 2))
    x, labels = np.concatenate([normal, dent]), [NORMAL_KIND] * 300 + ["dent"] * 100
    known = KnownKinds.fit(x, labels, reference=[NORMAL_KIND])
    z_dent = known.standardise(dent)
    assert known.eps == pytest.approx(np.quantile(pdist(z_dent), 0.99))
    assert known.eps < KnownKinds.fit(x, labels).eps / 3  # the diffuse normals would loosen the groups
    rule = NewAnomalyKind(known, k=3, window=100)
    borderline = [obs(i, flagged=True, descriptor=np.array([7.0, 0.0])) for i in range(10)]  # normal's tail
    assert feed(rule, borderline) == [] and rule.state_dict()["candidates"] == []


def test_new_kind_waits_for_known_kinds_and_keeps_its_candidates_across_refits():
    rng = np.random.default_rng(5)
    _, known, third = _kinds_data(rng)
    rule = NewAnomalyKind(None, k=3, window=100)
    novel = lambda i: obs(i, flagged=True, descriptor=third + 0.1 * rng.normal(size=8))
    assert feed(rule, [novel(i) for i in range(3)]) == [] and rule.skipped_no_known == 3
    rule.set_known(known)
    assert feed(rule, [novel(i) for i in (3, 4)]) == []
    _, refitted, _ = _kinds_data(np.random.default_rng(6))  # more labels came: the same kinds, refitted
    rule.set_known(refitted)
    (i, alert), = feed(rule, [novel(5)])
    assert i == 5 and alert.evidence == [3, 4, 5]
    rule.set_known(KnownKinds.from_centroids({"a": [0.0, 0.0]}, {"a": 1.0}))  # another descriptor length
    assert rule.state_dict()["new_kinds"] == [] and rule.state_dict()["candidates"] == []


def test_new_kind_state_of_an_older_form_is_dropped_not_fatal():
    known = KnownKinds.from_centroids({"a": [0.0, 0.0]}, {"a": 1.0}, eps=1.0)
    older = {"seq": 7, "candidates": [{"seq": 6, "z": [20.0, 0.0], "id": 6, "time": T0.isoformat()}],
             "new_kinds": [{"cluster_id": "2", "centroid": [9.0, 9.0], "radius": 1.0, "size": 3}],
             "skipped_no_descriptor": 2}
    rule = NewAnomalyKind(known, k=2, window=100)
    rule.load_state_dict(older)
    state = rule.state_dict()
    assert (state["seq"], state["candidates"], state["new_kinds"], state["skipped_no_descriptor"]) == (7, [], [], 2)
    far = [obs(i, flagged=True, descriptor=np.array([20.0, 0.0])) for i in (8, 9)]
    (i, alert), = feed(rule, far)
    assert i == 9 and alert.evidence == [8, 9]


def test_new_kind_group_must_gather_within_window_s():
    known = KnownKinds.from_centroids({"a": [0.0, 0.0]}, {"a": 1.0}, eps=1.0)
    rule = NewAnomalyKind(known, k=3, window=1000, window_s=10)
    far = lambda i, dx: obs(i, flagged=True, descriptor=np.array([20.0 + dx, 0.0]))
    assert feed(rule, [far(i, 0.1 * i) for i in (0, 11, 22)]) == []  # alike, but 11 s apart
    (i, alert), = feed(rule, [far(i, 0.0) for i in (40, 45, 49)])
    assert i == 49 and alert.evidence == [40, 45, 49] and alert.key == "new_kind:40"


# ----------------------------------------------------------------------------- input health

def test_input_health_alerts_over_the_limit_once_and_rearms():
    rule = InputHealth(window=100, limit=0.05)
    bad_at = {10, 20, 30, 40, 50}
    quiet = [obs(i, input_ok=i not in bad_at, a=math.nan if i in bad_at else 0.0) for i in range(100)]
    assert feed(rule, quiet) == []  # 5 of 100 is at the limit
    (i, alert), = feed(rule, [obs(100, input_ok=False), obs(101, input_ok=False), obs(102)])
    assert i == 100 and alert.key == "input:10" and alert.evidence == [10, 20, 30, 40, 50, 100]
    assert alert.severity == "warning" and "6 of the last 100 frames" in alert.message
    assert feed(rule, [obs(i) for i in range(103, 140)]) == []  # the bad frames at 10..30 leave the window
    (_, again), = feed(rule, [obs(i, input_ok=False) for i in range(140, 150)])
    assert again.key == "input:50"


# ----------------------------------------------------------------------------- engine

def test_engine_dedupes_keys_and_honours_already_raised():
    store: list[Alert] = []
    rules = [InputHealth(window=2, limit=0.0, name="health_a"), InputHealth(window=2, limit=0.0, name="health_b")]
    engine = AlertEngine(rules, [CallbackSink(store.append)])
    stream = [obs(1, input_ok=False), obs(2)]
    assert [a.key for o in stream for a in engine.observe(o)] == ["input:1"]  # two rules, one key, once
    assert [a.key for a in store] == ["input:1"] and engine.raised("input:1")

    # A restart without saved state: the fresh rule raises the same key; the store says it was raised.
    stored_keys = {a.key for a in store}
    restarted = AlertEngine([InputHealth(window=2, limit=0.0, name="health_a")], [CallbackSink(store.append)],
                            already_raised=stored_keys.__contains__)
    assert [a for o in stream for a in restarted.observe(o)] == [] and len(store) == 1
    later = [obs(3, input_ok=False), obs(4), obs(5), obs(6, input_ok=False)]  # episode, re-armed, new one
    assert [a.key for o in later for a in restarted.observe(o)] == ["input:6"] and len(store) == 2


def test_failing_sink_never_breaks_the_engine_or_other_sinks():
    def broken(alert: Alert) -> None:
        raise OSError("disk full")

    store: list[Alert] = []
    engine = AlertEngine([InputHealth(window=1, limit=0.0)], [CallbackSink(broken), CallbackSink(store.append)])
    alerts = [a for i in range(6) for a in engine.observe(obs(i, input_ok=i % 2 == 1))]
    assert len(alerts) == 3 and store == alerts and engine.sink_failures["callback"] == 3


def _all_rules(known: KnownKinds) -> list:
    return [NewAnomalyKind(known, k=5, window=1000), DefectRateChart(n=200, baseline_n=600),
            NormalDrift(reference_n=300), InputHealth(window=100, limit=0.05)]


def _mixed_stream(seed: int = 11) -> tuple[KnownKinds, list[Observation]]:
    """Every rule has something to do, before and after the middle."""
    rng = np.random.default_rng(seed)
    centres, known, third = _kinds_data(rng)
    stream, _, _ = _novelty_stream(rng, centres, third, n=3000, third_rate=0.01, known_rate=0.02)
    for i in range(3000):
        o = stream[i]
        shift = 1.5 if 1400 <= i < 2200 else 0.0
        o.a = rng.normal() + shift if not o.flagged else 5.0
        if 1600 <= i < 1700 and rng.random() < 0.15:
            o.input_ok, o.a, o.decision, o.verdict, o.descriptor = False, math.nan, "normal", "ok", None
        if 2300 <= i < 2500 and rng.random() < 0.08:
            o.decision, o.verdict, o.a = "anomalous", "defect:crack", 5.0
    return known, stream


def test_state_dict_round_trip_continues_identically():
    known, stream = _mixed_stream()
    full = AlertEngine(_all_rules(known))
    expected = [a.to_dict() for o in stream for a in full.observe(o)]
    assert {a["rule"] for a in expected} == {"new_kind", "defect_rate", "normal_drift", "input_health"}

    first = AlertEngine(_all_rules(known))
    before = [a.to_dict() for o in stream[:1650] for a in first.observe(o)]
    saved = json.loads(json.dumps(first.state_dict()))  # what the service would persist
    restored = AlertEngine(_all_rules(known))
    restored.load_state_dict(saved)
    after = [a.to_dict() for o in stream[1650:] for a in restored.observe(o)]
    assert before + after == expected
    assert before and after and not full.rule_errors and not restored.rule_errors


# ----------------------------------------------------------------------------- sinks

def _alert(key: str = "input:1") -> Alert:
    return Alert(key=key, rule="input_health", kind=None, severity="warning", message="6 of 100 frames unreadable",
                 time=T0, evidence=[1, 2], details={"share": np.float64(0.06), "bad": np.int64(6)})


def test_json_lines_sink_appends_one_line_per_alert(tmp_path: Path):
    sink = JsonLinesSink(tmp_path / "logs" / "alerts.jsonl")
    sink.deliver(_alert("input:1"))
    sink.deliver(_alert("input:2"))
    lines = (tmp_path / "logs" / "alerts.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["key"] for r in rows] == ["input:1", "input:2"]
    assert rows[0] == {"key": "input:1", "rule": "input_health", "kind": None, "severity": "warning",
                       "message": "6 of 100 frames unreadable", "time": "2024-05-01T08:00:00+00:00",
                       "evidence": [1, 2], "details": {"share": 0.06, "bad": 6}}
    assert Alert.from_dict(rows[1]).to_dict() == _alert("input:2").to_dict()


class _FlakyHandler(BaseHTTPRequestHandler):
    """500 for the first ``fail_first`` POSTs, then 204; records every body."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        with server.lock:
            server.bodies.append(json.loads(body))
            status = 500 if len(server.bodies) <= server.fail_first else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHandler)
    server.lock, server.bodies, server.fail_first = threading.Lock(), [], 2
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(WAIT)


def test_webhook_retries_with_backoff_then_delivers_once(flaky_server):
    url = f"http://127.0.0.1:{flaky_server.server_address[1]}/hook"
    sink = WebhookSink(url, retries=3, backoff_s=0.05, timeout_s=2, headers={"X-Line": "L1"})
    start = time.monotonic()
    sink.deliver(_alert())
    assert sink.flush(WAIT)
    took = time.monotonic() - start
    sink.close()
    assert (sink.delivered, sink.failed, sink.attempts) == (1, 0, 3)
    assert [b["key"] for b in flaky_server.bodies] == ["input:1"] * 3
    assert took >= 0.05 + 0.1  # back-off 0.05 then 0.1 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_webhook_never_blocks_and_counts_failures():
    sink = WebhookSink(f"http://127.0.0.1:{_free_port()}/hook", retries=2, backoff_s=0.01, timeout_s=1)
    engine = AlertEngine([InputHealth(window=1, limit=0.0)], [sink])
    start = time.monotonic()
    alerts = [a for i in range(40) for a in engine.observe(obs(i, input_ok=i % 2 == 1))]
    assert time.monotonic() - start < 0.5 and len(alerts) == 20
    assert sink.flush(WAIT)
    engine.close()
    assert (sink.delivered, sink.failed, sink.attempts) == (0, 20, 60) and not engine.sink_failures


def test_slow_webhook_drops_oldest_when_the_queue_is_full():
    with socket.socket() as hole:  # accepts connections into the backlog and never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        sink = WebhookSink(f"http://127.0.0.1:{hole.getsockname()[1]}/", retries=0, timeout_s=0.3, max_queue=3)
        start = time.monotonic()
        for i in range(10):
            sink.deliver(_alert(f"input:{i}"))
        assert time.monotonic() - start < 0.1
        assert sink.dropped >= 6
        sink.close(timeout=0.5)
        assert sink.dropped + sink.failed + sink.delivered == 10 and sink.delivered == 0


def _mosquitto() -> str:
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if path is None:
        if os.environ.get("AOIFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail("mosquitto is required (AOIFLOW_REQUIRE_SERVICES=1) but was not found")
        pytest.skip("mosquitto broker not installed (apt-get install mosquitto)")
    return path


class Broker:
    """A real mosquitto on a free 127.0.0.1 port that can be stopped and started again."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder, self.proc, self.runs = _free_port(), folder, None, 0
        self.exe = _mosquitto()

    def start(self) -> None:
        self.runs += 1
        conf = self.folder / f"mosquitto{self.runs}.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        f"log_dest file {self.log(self.runs)}\nlog_type all\n"
                        + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc = subprocess.Popen([self.exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"mosquitto did not start: {self.proc.stderr.read().decode(errors='replace')}")
                time.sleep(0.05)

    def log(self, run: int) -> Path:
        return self.folder / f"mosquitto{run}.log"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(WAIT)


@pytest.fixture
def broker(tmp_path: Path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


def test_mqtt_sink_publishes_alerts_and_verdicts(broker):
    received: queue.Queue = queue.Queue()
    subscribed = threading.Event()
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="plc")
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("line1/#", qos=1)
    sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    sub.on_message = lambda c, u, msg: received.put((msg.topic, json.loads(msg.payload)))
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    sink = None
    try:
        assert subscribed.wait(WAIT), "subscriber not subscribed"
        sink = MqttSink("127.0.0.1", broker.port, topic_prefix="line1", qos=1)
        sink.deliver(_alert())  # before the asynchronous connect finished: queued, sent on connect
        sink.publish_verdict({"inspection_id": 7, "decision": "anomalous", "verdict": "defect:scratch"})
        assert sink.flush(WAIT) and sink.connected
        got = dict(received.get(timeout=WAIT) for _ in range(2))
        assert got["line1/alerts"] == _alert().to_dict()
        assert got["line1/verdicts"] == {"inspection_id": 7, "decision": "anomalous", "verdict": "defect:scratch"}
        assert (sink.delivered, sink.failed) == (2, 0)
    finally:
        if sink is not None:
            sink.close()
        sub.disconnect()
        sub.loop_stop()


def _wait_until(predicate, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_mqtt_sink_queues_while_the_broker_is_away_and_reconnects(broker):
    sink = MqttSink("127.0.0.1", broker.port, topic_prefix="line1", client_id="aoiflow-line1", max_reconnect_s=1)
    try:
        assert sink.wait_connected(WAIT)
        broker.stop()
        assert _wait_until(lambda: not sink.connected)
        start = time.monotonic()
        sink.deliver(_alert("input:9"))  # queued by paho, not blocking
        assert time.monotonic() - start < 0.1 and not sink.flush(0.2)
        broker.start()
        assert sink.flush(WAIT)  # the broker acknowledged it after the reconnection
        log = broker.log(2).read_text(errors="replace")
        assert "Received PUBLISH from aoiflow-line1" in log and "'line1/alerts'" in log
    finally:
        sink.close()
