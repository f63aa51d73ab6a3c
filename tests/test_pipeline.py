"""Parsing and validating transform chains before any work is done."""

import pytest

from rnnshrink.errors import OptionError
from rnnshrink.pipeline import Pipeline, parse_step, read_recipe, recipe_toml
from rnnshrink.transforms import REGISTRY


def test_registry_has_the_seven_methods():
    assert set(REGISTRY) == {"svd", "lowrank", "iss", "prune", "quant", "slim", "ecsq"}


@pytest.mark.parametrize("specs, message", [
    (["ecsq:ratio=8", "quant:bits=8"], "ecsq must be the last step"),
    (["quant:bits=8,layers=a", "ecsq:ratio=8"], "quant and ecsq code weights: give each its own"),
])
def test_ecsq_comes_last_and_codes_a_layer_once(specs, message):
    with pytest.raises(OptionError, match=message):
        Pipeline([parse_step(spec) for spec in specs])
    Pipeline([parse_step("quant:bits=8,layers=a"), parse_step("ecsq:ratio=8,layers=b")])


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_parameter_has_help_and_a_valid_default(name):
    transform = REGISTRY[name]
    for key, spec in transform.PARAMS.items():
        assert spec.help, f"{name}.{key} has no help"


def test_parse_step_converts_values():
    step = parse_step("quant:bits=4,group=64")
    assert step.name == "quant" and step.bits == 4 and step.group == 64
    assert step.spec() == "quant:bits=4,group=64"


@pytest.mark.parametrize("text,message", [
    ("shrink:x=1", "unknown transform 'shrink'; valid: svd, lowrank, iss, prune, quant, slim"),
    ("svd:tau=1.3", "svd: tau must be in [0.0, 1.0], got 1.3"),
    ("svd:tau=abc", "svd: tau must be float, got 'abc'"),
    ("quant:bits=9", "quant: bits"),
    ("quant:colour=red", "quant: unknown parameter colour; valid:"),
    ("prune:sparsity", "prune: expected key=value, got 'sparsity'"),
])
def test_bad_steps_name_the_problem(text, message):
    with pytest.raises(OptionError) as error:
        parse_step(text)
    assert message in str(error.value)


def test_structural_steps_must_come_first():
    with pytest.raises(OptionError, match="svd must come before quant"):
        Pipeline([parse_step("quant:bits=8"), parse_step("svd:tau=0.5")])
    with pytest.raises(OptionError, match="no transform given"):
        Pipeline([])


def test_recipe_round_trip(tmp_path):
    steps = [parse_step("svd:tau=0.6"), parse_step("quant:bits=4,group=64")]
    path = tmp_path / "recipe.toml"
    path.write_text(recipe_toml(steps))
    again = read_recipe(path)
    assert [s.spec() for s in again] == [s.spec() for s in steps]


def test_bad_recipes(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[[transform]]\ntau = 0.5\n")
    with pytest.raises(OptionError, match="needs a name"):
        read_recipe(path)
    path.write_text("not = [toml")
    with pytest.raises(OptionError, match="cannot read recipe"):
        read_recipe(path)
