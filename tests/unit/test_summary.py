"""`waldo summary`: per-layer output shapes (HxWxC, the source's convention) and counts."""

from __future__ import annotations

import json
import re

import pytest

from waldo.cli import main

# The source material's CNN on 1x28x28: conv 5x5 -> pool -> conv 3x3 -> pool -> dense.
CNN_SHAPES = ["24x24x8", "12x12x8", "10x10x16", "5x5x16", "10"]


def summary(capsys, *args: str) -> str:
    assert main(["summary", *args]) == 0
    return capsys.readouterr().out


def distinct_in_order(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


def is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(h == n for h in it) for n in needle)


def table_rows(text: str) -> list[list[str]]:
    """The layer rows of the text table: between the two dashed rules."""
    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"-"}]
    assert len(rules) == 2, text
    return [line.split() for line in lines[rules[0] + 1:rules[1]]]


def test_cnn_text_summary_shapes_and_count(capsys):
    text = summary(capsys, "--model", "cnn", "--input-shape", "1,28,28")
    rows = table_rows(text)
    outputs = [row[2] for row in rows]
    assert is_subsequence(CNN_SHAPES, distinct_in_order(outputs)), outputs
    assert outputs[-1] == "10"
    assert "5,386" in text
    assert sum(int(row[3].replace(",", "")) for row in rows) == 5_386


def test_cnn_json_summary_matches_text(capsys):
    text = summary(capsys, "--model", "cnn", "--input-shape", "1,28,28")
    report = json.loads(summary(capsys, "--model", "cnn", "--input-shape", "1,28,28", "--json"))
    assert report["total_params"] == 5_386
    assert report["input_shape"] == [1, 28, 28]
    outputs = [layer["output"] for layer in report["layers"]]
    assert is_subsequence(CNN_SHAPES, distinct_in_order(outputs)), outputs
    assert sum(layer["params"] for layer in report["layers"]) == report["total_params"]
    rows = table_rows(text)
    assert [(r[0], r[2]) for r in rows] == [(la["name"], la["output"]) for la in report["layers"]]


@pytest.mark.parametrize("model,shape,total", [
    ("mlp", "1,28,28", 178_110),
    ("lenet5", "1,32,32", 61_706),
    ("lenet5", "1,28,28", 61_706),
])
def test_source_networks_summaries(capsys, model, shape, total):
    report = json.loads(summary(capsys, "--model", model, "--input-shape", shape, "--json"))
    assert report["total_params"] == total
    # Leaf layers only, and all of them: their counts add up to the total.
    assert sum(layer["params"] for layer in report["layers"]) == total
    assert report["layers"][-1]["output"] == "10"


def test_default_input_shape_is_the_models_own(capsys):
    report = json.loads(summary(capsys, "--model", "cnn", "--json"))
    assert report["input_shape"] == [1, 28, 28]
    assert report["total_params"] == 5_386


def test_num_classes_changes_the_last_layer(capsys):
    report = json.loads(summary(capsys, "--model", "cnn", "--num-classes", "3", "--json"))
    assert report["layers"][-1]["output"] == "3"
    assert report["total_params"] == 5_386 - 7 * 401  # dense 400->10 became 400->3


def test_lenet5_first_conv_keeps_28x28_with_padding(capsys):
    report = json.loads(summary(capsys, "--model", "lenet5", "--input-shape", "1,28,28", "--json"))
    assert report["layers"][0]["output"] == "28x28x6"


def test_text_summary_names_the_order_of_each_shape(capsys):
    """--input-shape is C,H,W and feature maps print HxWxC: the table says which is which."""
    text = summary(capsys, "--model", "cnn", "--input-shape", "1,28,28")
    lines = text.splitlines()
    header = lines[0].split("  ")
    output = next(h.strip() for h in header if h.strip().startswith("output"))
    order = re.fullmatch(r"output \((\w)x(\w)x(\w)\)", output)
    assert order, lines[0]
    # The first conv's output read in the order the header names: 8 channels of 24x24.
    first = dict(zip(order.groups(), table_rows(text)[0][2].split("x")))
    assert first == {"H": "24", "W": "24", "C": "8"}, (lines[0], table_rows(text)[0])
    # The last line gives the input in the order --input-shape takes it.
    assert "C,H,W = 1,28,28" in lines[-1], lines[-1]
