from pathlib import Path

import pandas as pd
import pytest

from harness import sensitivity
from harness.data import load_data
from harness.models import build_model
from harness.specs import DataSpec
from harness.train import fit, torch_top1


@pytest.fixture(scope="module")
def trained():
    splits = load_data(DataSpec(eval_samples=64), 32)
    model = build_model("test_mobilenet_v1", width=0.5, num_classes=10)
    fit(model, splits.train, epochs=1, lr=0.05, batch_size=32, progress=False)
    return model.eval(), splits


def test_table_plot_and_suggestions(trained, tmp_path: Path) -> None:
    model, splits = trained
    table = sensitivity.analyze(model, lambda m: torch_top1(m, splits.val), 32, ratios=(0.25, 0.75), progress=False)
    layers = sensitivity.prunable_layers(model)
    assert layers == ["features.0.0"] + [f"features.{i}.pointwise.0" for i in range(1, 5)]  # stem + pointwise
    assert len(table) == 1 + 2 * len(layers)
    assert set(table.columns) == {"layer", "ratio", "top1", "drop", "macs"}
    base_macs = table.loc[0, "macs"]
    assert (table.loc[1:, "macs"] < base_macs).all()
    heavier = table[table["ratio"] == 0.75]["macs"].to_numpy()
    lighter = table[table["ratio"] == 0.25]["macs"].to_numpy()
    assert (heavier < lighter).all()
    png = sensitivity.plot(table, tmp_path / "s.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_suggest_layer_ratios() -> None:
    table = pd.DataFrame({"layer": ["(none)", "a", "a", "b", "b"], "ratio": [0, 0.3, 0.6, 0.3, 0.6],
                          "top1": [0.9, 0.9, 0.85, 0.7, 0.6], "drop": [0, 0.0, 0.05, 0.2, 0.3], "macs": [1] * 5})
    assert sensitivity.suggest_layer_ratios(table, 0.01) == {"a": 0.3, "b": 0.0}  # b tolerates no pruning
    assert sensitivity.suggest_layer_ratios(table, 0.06) == {"a": 0.6, "b": 0.0}
    assert sensitivity.suggest_layer_ratios(table, 0.25) == {"a": 0.6, "b": 0.3}
