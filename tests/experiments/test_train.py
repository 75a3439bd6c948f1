"""One training run: configurations, schedules, determinism, divergence."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from weightdecay.experiments.data import make_split
from weightdecay.experiments.models import make_model
from weightdecay.experiments.train import (
    config_key,
    cosine_multiplier,
    evaluate,
    make_config,
    train,
)


@pytest.fixture(scope="module")
def tiny_split():
    """Separable synthetic images: the class sets the mean of one pixel band."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400).astype(np.uint8)
    images = rng.integers(0, 60, (400, 28, 28))
    for c in range(10):
        images[labels == c, c * 2 : c * 2 + 2, :] += 180
    images = images.clip(0, 255).astype(np.uint8)
    return make_split(images[:300], labels[:300], images[300:], labels[300:], 200, 100)


def tiny_config(**overrides):
    options = dict(
        optimizer="AdamW",
        lr=2**-8,
        weight_decay=2**-10,
        epochs=2,
        train_size=200,
        val_size=100,
        batch_size=50,
    )
    return make_config(**(options | overrides))


def test_key_is_sha256_of_sorted_compact_json():
    config = tiny_config()
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    assert config_key(config) == hashlib.sha256(text.encode()).hexdigest()
    assert config_key(tiny_config(seed=1)) != config_key(config)
    assert config_key(dict(reversed(list(config.items())))) == config_key(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optimizer": "Lion"}, "optimizer must be one of .* got 'Lion'"),
        ({"lr": 0.0}, "lr must be finite and > 0, got 0.0"),
        ({"weight_decay": -1.0}, "weight_decay must be finite and >= 0, got -1.0"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"model": "resnet"}, "model must be one of .* got 'resnet'"),
        ({"optimizer": "AdamWR"}, "T_0 must be > 0 for warm restarts, got None"),
        ({"weight_decay_norm": 0.05}, "weight_decay_norm needs schedule"),
    ],
)
def test_bad_configuration_names_field_and_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_cosine_multiplier_closed_form():
    assert cosine_multiplier(0, 10) == 1.0
    assert cosine_multiplier(5, 10) == pytest.approx(0.5)
    assert cosine_multiplier(2.5, 10) == pytest.approx((1 + math.sqrt(0.5)) / 2)
    assert cosine_multiplier(10, 10) == pytest.approx(0.0)


def test_record_fields_and_learning_on_separable_data(tiny_split):
    record = train(tiny_config(epochs=3), tiny_split)
    assert record["status"] == "ok" and record["diverged_step"] is None
    assert record["key"] == config_key(record["config"])
    assert record["curves"]["epoch"] == [1, 2, 3]
    assert set(record["final"]) == {
        "train_loss",
        "val_loss",
        "val_error",
        "test_loss",
        "test_error",
    }
    for name, values in record["curves"].items():
        assert len(values) == 3, name
    assert record["final"]["val_error"] == record["curves"]["val_error"][-1]
    assert 0.0 <= record["final"]["test_error"] < 0.2  # chance is 0.9
    assert record["curves"]["train_loss"][-1] < record["curves"]["train_loss"][0]


def test_final_numbers_match_an_independent_evaluation(tiny_split):
    model = make_model("mlp")
    loss, error = evaluate(model, tiny_split.val_x, tiny_split.val_y)
    with torch.no_grad():
        logits = model.eval()(tiny_split.val_x)
    want_loss = torch.nn.functional.cross_entropy(logits, tiny_split.val_y)
    want_error = (logits.argmax(1) != tiny_split.val_y).double().mean()
    assert loss == pytest.approx(float(want_loss), rel=1e-5)
    assert error == pytest.approx(float(want_error))


def test_runs_are_deterministic_and_seed_dependent(tiny_split):
    first = train(tiny_config(), tiny_split)
    second = train(tiny_config(), tiny_split)
    other = train(tiny_config(seed=1), tiny_split)
    assert first["curves"] == second["curves"]
    assert first["curves"]["train_loss"] != other["curves"]["train_loss"]


def test_every_optimizer_and_model_trains(tiny_split):
    for optimizer, lr in [("SGD", 0.05), ("SGDW", 0.05), ("Adam", 2**-8)]:
        record = train(tiny_config(optimizer=optimizer, lr=lr, epochs=1), tiny_split)
        assert record["status"] == "ok", optimizer
    record = train(
        tiny_config(optimizer="AdamWR", T_0=1.0, T_mult=2.0, epochs=3), tiny_split
    )
    assert record["config"]["schedule"] == "warm_restarts"
    assert len(record["curves"]["epoch"]) == 3
    for model in ("mlp", "cnn"):
        record = train(tiny_config(model=model, epochs=1), tiny_split)
        assert record["status"] == "ok", model


def test_decoupled_decay_shrinks_the_weights(tiny_split):
    """Same run with and without decay: only the decayed run's loss is higher."""
    plain = train(tiny_config(weight_decay=0.0, epochs=2), tiny_split)
    strong = train(tiny_config(weight_decay=0.2, epochs=2), tiny_split)
    assert strong["final"]["train_loss"] > plain["final"]["train_loss"] + 0.05


def test_divergence_is_recorded_with_its_step_and_the_run_stops(tiny_split):
    config = tiny_config(optimizer="SGD", lr=1e12, model="mlp", epochs=3)
    record = train(config, tiny_split)
    assert record["status"] == "diverged"
    step = record["diverged_step"]
    steps_per_epoch = 200 // 50
    # Step 1 sees the initial weights, whose loss is finite.
    assert 2 <= step <= 3 * steps_per_epoch
    assert len(record["curves"]["epoch"]) == (step - 1) // steps_per_epoch
    assert all(math.isnan(v) for v in record["final"].values())


def test_final_only_test_evaluation_leaves_earlier_epochs_nan(tiny_split):
    every = train(tiny_config(epochs=3), tiny_split)
    final = train(tiny_config(epochs=3, test_eval="final"), tiny_split)
    assert "test_eval" not in every["config"]
    assert final["config"]["test_eval"] == "final"
    assert all(math.isnan(v) for v in final["curves"]["test_error"][:2])
    assert final["final"]["test_error"] == every["final"]["test_error"]
    assert final["curves"]["val_error"] == every["curves"]["val_error"]


def test_split_sizes_must_match_the_configuration(tiny_split):
    with pytest.raises(ValueError, match="config asks 300 / 100"):
        train(tiny_config(train_size=300), tiny_split)
