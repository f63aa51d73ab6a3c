"""A user-chosen chain of transforms: parsed and validated whole before any weight is touched.

Steps are written ``name:key=value,key=value`` on the command line (``svd:tau=0.6``,
``quant:bits=4,group=64``) or as ``[[transform]]`` tables in a TOML recipe::

    [[transform]]
    name = "svd"
    tau = 0.6

    [[transform]]
    name = "quant"
    bits = 4
    group = 64
"""

import tomllib

from .errors import OptionError
from .transforms import REGISTRY, Context

# Transforms that change a matrix's structure need dense input; they must come first.
STRUCTURAL = ("svd", "lowrank", "iss", "slim")


def parse_step(text):
    """One step from its command-line spelling, e.g. ``"quant:bits=4,group=64"``.

    Raises
    ------
    OptionError
        Unknown transform or parameter, malformed ``key=value``, value out of range.
    """
    name, _, arguments = text.strip().partition(":")
    params = {}
    for item in filter(None, (a.strip() for a in arguments.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise OptionError(f"{name}: expected key=value, got {item!r}")
        params[key.strip()] = value.strip()
    return make_step(name, params)


def make_step(name, params):
    """A transform by registry name with its parameters, validated."""
    if name not in REGISTRY:
        raise OptionError(f"unknown transform {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name](**params)


def read_recipe(path):
    """Steps from a TOML recipe file (``[[transform]]`` tables, each with ``name``)."""
    try:
        with open(path, "rb") as f:
            recipe = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise OptionError(f"{path}: cannot read recipe ({error})") from None
    tables = recipe.get("transform")
    if not isinstance(tables, list) or not tables:
        raise OptionError(f"{path}: a recipe needs at least one [[transform]] table with a name")
    steps = []
    for table in tables:
        table = dict(table)
        if "name" not in table:
            raise OptionError(f"{path}: every [[transform]] table needs a name")
        steps.append(make_step(table.pop("name"), table))
    return steps


def recipe_toml(steps):
    """The TOML recipe that reproduces ``steps`` (for ``--recipe``)."""
    blocks = []
    for step in steps:
        lines = ["[[transform]]", f'name = "{step.name}"']
        lines += [f"{key} = {_toml_value(value)}" for key, value in step.given.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _disjoint_layers(steps):
    """Whether every step names its ``layers`` and no layer is named twice."""
    named = [step.params.get("layers") for step in steps]
    if None in named:
        return False
    layers = [name.strip() for names in named for name in names.split(",") if name.strip()]
    return len(layers) == len(set(layers))


class Pipeline:
    """Transforms applied in order.

    Parameters
    ----------
    steps : list of Transform
        Validated on construction: at least one step, structural steps (svd, lowrank, iss, slim)
        before any prune or quant step, ecsq last, each layer quantized at most once (several
        quant or ecsq steps must name disjoint ``layers``).
    """

    def __init__(self, steps):
        if not steps:
            raise OptionError(f"no transform given; valid: {', '.join(REGISTRY)}")
        names = [step.name for step in steps]
        for position, name in enumerate(names):
            later_structural = [n for n in names[position + 1:] if n in STRUCTURAL]
            if name in ("prune", "quant") and later_structural:
                raise OptionError(
                    f"{later_structural[0]} must come before {name}: it factors or slices dense "
                    "matrices"
                )
        if "ecsq" in names[:-1]:
            raise OptionError("ecsq must be the last step: it codes the weights the steps "
                              "before it leave")
        quants = [step for step in steps if step.name in ("quant", "ecsq")]
        if len(quants) > 1 and not _disjoint_layers(quants):
            raise OptionError("quant can be applied once per layer: give each quant step its "
                              "own layers=" if "ecsq" not in names else
                              "quant and ecsq code weights: give each its own layers=")
        self.steps = list(steps)

    def run(self, model, context=None):
        """Apply every step in order; returns the new model (``model`` is unchanged)."""
        context = context or Context()
        for step in self.steps:
            model = step.apply(model, context)
        return model

    def specs(self):
        return [step.spec() for step in self.steps]
