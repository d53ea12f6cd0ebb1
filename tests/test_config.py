"""ScoreConfig: validation of every field, serialisation, hashing."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refundguard.config import DIMENSIONS, HIGHER_IS_BETTER, INDICATOR_DIMENSION, INDICATORS, PolicyConfig, ScoreConfig
from refundguard.errors import ConfigError


def test_defaults_are_valid_and_documented_weights():
    c = ScoreConfig()
    assert c.window_days == 30 and c.timezone == "UTC"
    assert dict(c.dimension_weights) == {"product": 0.25, "logistics": 0.25, "service": 0.5}
    assert c.indicator_weights["quality_refund_rate"] == 0.7
    assert c.indicator_weights["pickup_48h_rate"] == 0.7
    assert c.indicator_weights["response_3min_rate"] == 0.3
    for dim in DIMENSIONS:
        assert sum(c.indicator_weights[i] for i in INDICATORS if INDICATOR_DIMENSION[i] == dim) == pytest.approx(1.0)
    assert not hasattr(c, "gate")  # the 4.80 gate lives in the policy only


def test_default_bands_reproduce_public_taobao_samples():
    """Spot values from background/store-experience-score.md 1.2 map to the shown points."""
    import numpy as np

    c = ScoreConfig()

    def pts(ind, v):
        a = np.asarray(c.bands[ind]["*"])
        return float(np.interp(v, a, np.arange(6)) if HIGHER_IS_BETTER[ind] else np.interp(-v, -a, np.arange(6)))

    assert pts("response_3min_rate", 0.85) == pytest.approx(4.0)
    assert pts("pickup_48h_rate", 1.0) == 5.0
    assert pts("refund_handling_hours", 1.34) == 5.0
    assert pts("delivery_hours", 40.42) == 5.0
    assert pts("dispute_rate", 0.0004) == 5.0
    assert pts("quality_refund_rate", 0.0021) == 5.0
    assert pts("good_review_rate", 1.0) == 5.0
    assert round(pts("good_review_rate", 0.9724), 1) == 4.8


def test_frozen():
    c = ScoreConfig()
    with pytest.raises(AttributeError):
        c.window_days = 7  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.dimension_weights["product"] = 1.0  # type: ignore[index]


def test_roundtrip_json_and_hash_stable():
    c = ScoreConfig(window_days=90, timezone="Asia/Shanghai")
    d = json.loads(json.dumps(c.to_dict()))
    c2 = ScoreConfig.from_dict(d)
    assert c2 == c and hash(c2) == hash(c)
    assert c2.config_hash() == c.config_hash()
    assert len(c.config_hash()) == 64
    assert ScoreConfig().config_hash() != c.config_hash()
    # a known value: the hash must not drift between runs, machines or versions unless the config changes
    assert ScoreConfig().config_hash() == "a9e8b555e78757a7c191e10ae290752472178f2c03e3ab1f6e743155183ba16b"


def test_replace_validates():
    c = ScoreConfig().replace(window_days=7)
    assert c.window_days == 7
    with pytest.raises(ConfigError) as e:
        ScoreConfig().replace(window_days=0)
    assert e.value.field == "window_days"


def _bands(**over):
    b = ScoreConfig().to_dict()["bands"]
    b.update(over)
    return b


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"window_days": 0}, "window_days"),
        ({"window_days": 2.5}, "window_days"),
        ({"window_days": True}, "window_days"),
        ({"min_orders": -1}, "min_orders"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": ""}, "timezone"),
        ({"dimension_weights": {"product": 0.5, "logistics": 0.25, "service": 0.5}}, "dimension_weights"),
        ({"dimension_weights": {"product": 0.5, "logistics": 0.5}}, "dimension_weights"),
        ({"dimension_weights": {"product": -0.25, "logistics": 0.75, "service": 0.5}}, "dimension_weights"),
        ({"indicator_weights": {**ScoreConfig().indicator_weights, "dispute_rate": 0.5}}, "indicator_weights"),
        ({"bands": _bands(delivery_hours={"*": [1, 2, 3, 4, 5, 6]})}, "bands"),  # wrong direction
        ({"bands": _bands(good_review_rate={"*": [0.1, 0.2, 0.3, 0.4, 0.5]})}, "bands"),  # five anchors
        ({"bands": _bands(good_review_rate={"books": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})}, "bands"),  # no "*"
        ({"bands": _bands(good_review_rate={"*": [0.1, 0.2, 0.3, 0.4, 0.5, 1.5]})}, "bands"),  # rate > 1
        ({"bands": _bands(good_review_rate={"*": [0.1, 0.2, 0.2, 0.4, 0.5, 0.6]})}, "bands"),  # not strict
        ({"bands": _bands(good_review_rate={"*": [0.1, 0.2, float("nan"), 0.4, 0.5, 0.6]})}, "bands"),
        ({"pseudo_counts": {**ScoreConfig().pseudo_counts, "dispute_rate": 0}}, "pseudo_counts"),
        ({"pseudo_counts": {**ScoreConfig().pseudo_counts, "dispute_rate": float("inf")}}, "pseudo_counts"),
        ({"min_counts": {**ScoreConfig().min_counts, "good_review_rate": 0}}, "min_counts"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as e:
        ScoreConfig(**kwargs)
    assert e.value.field == field
    assert e.value.owner == "ScoreConfig"
    msg = str(e.value)
    assert msg.startswith(f"The {field!r} parameter of ScoreConfig must be") and "Got" in msg


def test_from_dict_rejects_unknown_field():
    d = ScoreConfig().to_dict()
    d["gate"] = 4.8
    with pytest.raises(ConfigError) as e:
        ScoreConfig.from_dict(d)
    assert e.value.field == "gate"


def test_category_bands_and_fallback():
    b = _bands(good_review_rate={"*": [0.6, 0.7, 0.8, 0.86, 0.9, 0.99], "books": [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]})
    c = ScoreConfig(bands=b)
    assert c.anchors("good_review_rate", "books")[0] == 0.5
    assert c.anchors("good_review_rate", "toys")[0] == 0.6
    assert c.anchors("good_review_rate", None)[0] == 0.6


@given(w=st.floats(0.0, 1.0))
def test_dimension_weights_sum_property(w):
    rest = 1.0 - w
    ScoreConfig(dimension_weights={"product": w, "logistics": rest / 2, "service": rest / 2})
    with pytest.raises(ConfigError):
        ScoreConfig(dimension_weights={"product": w, "logistics": rest, "service": 0.1})


# ---------------------------------------------------------------------- which numbers a config accepts
# Configs take Python numbers only (they go to JSON as they are); NaN and infinities never
# pass a range. These pin refundguard._params.is_python_real at every call site.


@pytest.mark.parametrize("value", [0, 1, 0.25, np.float64(0.25)])
def test_config_numbers_accepted(value):
    cfg = ScoreConfig(dimension_weights={"product": value, "logistics": 0.0, "service": 1 - value})
    assert cfg.dimension_weights["product"] == float(value)
    for field in ("gate", "intercept_threshold", "audit_rate"):
        assert getattr(PolicyConfig(**{field: value}), field) == float(value)


@pytest.mark.parametrize("value", [np.int64(1), np.float32(0.5), True, float("nan"), float("inf"), "0.5"])
def test_config_numbers_rejected(value):
    with pytest.raises(ConfigError) as e:
        ScoreConfig(dimension_weights={"product": value, "logistics": 0.0, "service": 0.0})
    assert e.value.field == "dimension_weights"
    with pytest.raises(ConfigError) as e:
        ScoreConfig(pseudo_counts={**ScoreConfig().pseudo_counts, "dispute_rate": value})
    assert e.value.field == "pseudo_counts"
    for field in ("gate", "intercept_threshold", "audit_rate"):
        with pytest.raises(ConfigError) as e:
            PolicyConfig(**{field: value})
        assert e.value.field == field and e.value.owner == "PolicyConfig"


def test_band_anchors_must_be_finite_python_numbers():
    good = [0.6, 0.7, 0.8, 0.86, 0.9, 0.99]
    ScoreConfig(bands=_bands(good_review_rate={"*": [np.float64(v) for v in good]}))
    for bad in (np.float32(0.99), float("inf"), np.int64(1)):
        with pytest.raises(ConfigError, match=re.escape("finite numbers for 'good_review_rate'/'*'")):
            ScoreConfig(bands=_bands(good_review_rate={"*": [*good[:5], bad]}))


def test_module_all_is_one_list():
    import refundguard.config as config

    assert config.__all__ == [
        "DIMENSIONS", "INDICATORS", "INDICATOR_DIMENSION", "HIGHER_IS_BETTER", "ScoreConfig", "REFUND_KINDS", "DEFAULT_GATE",
        "PolicyConfig",
    ]
    assert all(hasattr(config, name) for name in config.__all__)


def test_json_file_round_trip(tmp_path):
    c = ScoreConfig(window_days=14, timezone="Asia/Shanghai")
    c.to_json(tmp_path / "score_config.json")
    assert ScoreConfig.from_json(tmp_path / "score_config.json") == c
    assert [p.name for p in tmp_path.iterdir()] == ["score_config.json"]
    (tmp_path / "bad.json").write_text("{not json")
    for path in (tmp_path / "bad.json", tmp_path / "missing.json"):
        with pytest.raises(ConfigError) as e:
            ScoreConfig.from_json(path)
        assert (e.value.owner, e.value.field, e.value.value) == ("ScoreConfig", "path", str(path))
    with pytest.raises(ConfigError, match="'d' parameter of ScoreConfig must be a mapping"):
        ScoreConfig.from_dict([1, 2])  # type: ignore[arg-type]
