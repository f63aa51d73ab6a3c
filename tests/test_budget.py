"""Budget search: the target is met, no worse than uniform recipes, limits respected, reruns."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import rnnshrink
from rnnshrink.budget import search
from rnnshrink.cli import cli
from rnnshrink.errors import OptionError
from rnnshrink.fidelity import compare, probe_inputs
from rnnshrink.pipeline import Pipeline, parse_step
from rnnshrink.report import summarize
from rnnshrink.transforms import Context, Transform

from _models import stack_model

CHARLM = Path(__file__).resolve().parent.parent / "fixtures" / "charlm.pt"
KERAS2_CHARLM = CHARLM.with_name("keras2_charlm.h5")
UNIFORM = ["quant:bits=6", "quant:bits=5", "quant:bits=4,group=64", "quant:bits=4,group=32",
           "quant:bits=3,group=32"]


@pytest.fixture(scope="module")
def model():
    return rnnshrink.read(CHARLM)


@pytest.fixture(scope="module")
def x(model):
    return probe_inputs(model, batch=4, steps=30)[0]


def ratio_and_error(model, compressed, x):
    return (summarize(model)["lstm_bytes"] / summarize(compressed)["lstm_bytes"],
            compare(model, compressed, x)["output_rel_error"])


@pytest.mark.parametrize("target", [4, 6])
def test_target_met_no_worse_than_uniform_recipes_as_small(model, x, target):
    steps, compressed, trace = search(model, target_ratio=target, using=("quant",), x=x)
    ratio, error = ratio_and_error(model, compressed, x)
    assert ratio >= target
    assert trace["path"][-1]["output_rel_error"] == pytest.approx(error)
    assert all(isinstance(step, Transform) and step.layers for step in steps)
    as_small = 0
    for recipe in UNIFORM:
        uniform_ratio, uniform_error = ratio_and_error(model, parse_step(recipe).apply(model), x)
        if uniform_ratio >= ratio:
            as_small += 1
            assert error <= uniform_error, recipe
    assert as_small  # some uniform recipe was at least as small to compare with
    # the recipe alone reproduces the model, GPTQ calibrated on the same inputs
    assert all(step.method == "gptq" for step in steps if step.bits != 16)
    again = Pipeline(steps).run(model, Context(inputs=x))
    assert ratio_and_error(model, again, x) == (ratio, error)


@pytest.mark.parametrize("target", [4, 6])
def test_gptq_candidates_no_worse_than_rounding(target):
    keras = rnnshrink.read(KERAS2_CHARLM)
    x = probe_inputs(keras, batch=4, steps=30)[0]
    found = {}
    for plain in (True, False):
        steps, compressed, _ = search(keras, target_ratio=target, using=("quant",), x=x,
                                      plain=plain)
        assert {step.method for step in steps if step.bits != 16} == {"rtn" if plain else "gptq"}
        found[plain] = ratio_and_error(keras, compressed, x)
        assert found[plain][0] >= target
        again = Pipeline(steps).run(keras, Context(inputs=x))
        assert ratio_and_error(keras, again, x) == found[plain]
    assert found[False][1] <= found[True][1]


def test_svd_candidates_are_data_aware_and_rerun(model, x):
    steps, compressed, _ = search(model, target_ratio=1.3, using=("svd",), x=x)
    assert steps and all(step.data for step in steps)
    again = Pipeline(steps).run(model, Context(inputs=x))
    assert ratio_and_error(model, again, x) == ratio_and_error(model, compressed, x)


def test_default_is_the_entropy_coded_allocation():
    model = stack_model(sizes=(6, 20, 16))
    x = probe_inputs(model, batch=4, steps=30)[0]
    steps, compressed, trace = search(model, target_ratio=4, x=x)
    assert 4 <= ratio_and_error(model, compressed, x)[0] <= 4.04
    assert [step.spec() for step in steps] == ["ecsq:ratio=4.0"] and trace["evaluations"] == 1


def test_svd_and_quant_reach_the_target(model, x):
    steps, compressed, _ = search(model, target_ratio=4, using=("svd", "quant"), x=x)
    assert ratio_and_error(model, compressed, x)[0] >= 4
    assert {step.name for step in steps} <= {"svd", "quant"}


def test_max_error_is_respected_on_all_inputs(model):
    x8 = probe_inputs(model, batch=8, steps=30)[0]
    steps, compressed, trace = search(model, max_error=0.05, using=("quant",), x=x8)
    ratio, error = ratio_and_error(model, compressed, x8)
    assert error <= 0.05
    assert trace["sequences"] == 4 and trace["path"][-1]["output_rel_error"] == pytest.approx(error)
    uniform8 = ratio_and_error(model, parse_step("quant:bits=8").apply(model), x8)[0]
    assert ratio > uniform8  # it spent the error allowance


def test_unreachable_target_says_the_best_ratio(model, x):
    with pytest.raises(OptionError, match=r"^target ratio 50x is out of reach with quant: the best "
                                          r"reachable is 8\.\d\dx$"):
        search(model, target_ratio=50, using=("quant",), x=x)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give a target ratio or a max error (exactly one)"),
    ({"target_ratio": 4, "max_error": 0.1}, "give a target ratio or a max error (exactly one)"),
    ({"target_ratio": 1}, "target ratio must be > 1, got 1"),
    ({"max_error": -1}, "max error must be > 0, got -1"),
    ({"target_ratio": 4, "using": ("iss",)}, "using: choose from ecsq or svd, prune, quant, got iss"),
])
def test_bad_arguments(model, x, kwargs, message):
    with pytest.raises(OptionError) as error:
        search(model, x=x, **kwargs)
    assert str(error.value) == message


def test_pipeline_takes_one_quant_step_per_layer():
    Pipeline([parse_step("quant:bits=8,layers=a"), parse_step("quant:bits=4,layers=b")])
    for second in ("quant:bits=4,layers=a", "quant:bits=4"):
        with pytest.raises(OptionError, match="quant can be applied once per layer"):
            Pipeline([parse_step("quant:bits=8,layers=a"), parse_step(second)])


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_search_prints_a_recipe_that_reruns_the_same(tmp_path):
    recipe = tmp_path / "r.toml"
    result = run("compress", CHARLM, "--target-ratio", 5, "--using", "quant", "--save-recipe",
                 recipe, "-o", tmp_path / "a.h5")
    assert result.exit_code == 0, result.output
    assert "[[transform]]" in result.output and recipe.read_text() in result.output
    assert "budget search: " in result.output and (
        "recipes measured on the first 4 of 60 sequences of 200 tokens sampled from the model "
        "itself (temperature 1, seed 0) (target ratio 5x)" in result.output)
    assert "method = \"gptq\"" in recipe.read_text()
    searched = json.loads(run("report", tmp_path / "a.h5", "--compare", CHARLM, "--json").output)
    rerun = run("compress", CHARLM, "--recipe", recipe, "-o", tmp_path / "b.h5", "--json")
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.output)
    assert summary["lstm_ratio"] >= 5
    assert summary["lstm_bytes_after"] == searched["lstm_bytes"]
    assert summary["output_rel_error"] == searched["compare"]["output_rel_error"]


@pytest.mark.parametrize("args, line", [
    (["--target-ratio", 4, "-t", "quant:bits=8"],
     "Error: --target-ratio cannot be combined with -t: the search chooses the transforms"),
    (["--max-error", 0.1, "--tau", 0.5, "--recipe", "r.toml"],
     "Error: --max-error cannot be combined with --tau/--recipe: the search chooses the transforms"),
    (["--target-ratio", 4, "--max-error", 0.1],
     "Error: --target-ratio and --max-error cannot be combined: give one"),
    (["--using", "quant", "-t", "quant:bits=8"], "Error: --using needs --target-ratio or --max-error"),
    (["--plain", "-t", "quant:bits=8"], "Error: --plain needs --target-ratio or --max-error"),
    (["--target-ratio", 4, "--using", "svd,lowrank"],
     "Error: using: choose from ecsq or svd, prune, quant, got lowrank"),
    (["--target-ratio", 0.5], "Error: target ratio must be > 1, got 0.5"),
])
def test_cli_conflicting_options(tmp_path, args, line):
    output = tmp_path / "out.h5"
    result = run("compress", CHARLM, "-o", output, *args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [line]
    assert not output.exists()


def test_cli_plain_search_rounds(tmp_path):
    recipe = tmp_path / "r.toml"
    result = run("compress", CHARLM, "--target-ratio", 4, "--using", "quant", "--plain",
                 "--save-recipe", recipe, "-o", tmp_path / "a.h5")
    assert result.exit_code == 0, result.output
    assert "quant" in recipe.read_text() and "gptq" not in recipe.read_text()


def test_cli_unreachable_target(tmp_path):
    output = tmp_path / "out.h5"
    result = run("compress", CHARLM, "--target-ratio", 50, "--using", "quant", "-o", output)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "Error: target ratio 50x is out of reach with quant: the best reachable is 8.")
    assert not output.exists()
