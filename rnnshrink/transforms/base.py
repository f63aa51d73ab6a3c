"""What every transform shares: validated parameters and the ``apply(model) -> model`` contract.

A transform's constructor only validates and stores its parameters (scikit-learn style); the
math lives in plain functions of the transform's module; :meth:`Transform.apply` returns a new
:class:`~rnnshrink.model.Model` and never mutates its input.
"""

from dataclasses import dataclass

from ..errors import OptionError


@dataclass(frozen=True)
class Param:
    """One parameter of a transform: its type, default, allowed range or choices, and help."""

    type: type
    default: object = None
    low: float = None
    high: float = None
    choices: tuple = None
    help: str = ""

    def parse(self, owner, name, raw):
        """``raw`` (a string from the command line, or a value from a recipe) as a checked value."""
        value = raw
        if isinstance(raw, str) and self.type is not str:
            try:
                value = _BOOLS[raw.lower()] if self.type is bool else self.type(raw)
            except (ValueError, KeyError):
                raise OptionError(
                    f"{owner}: {name} must be {self.type.__name__}, got {raw!r}"
                ) from None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, self.type):
            raise OptionError(f"{owner}: {name} must be {self.type.__name__}, got {raw!r}")
        if self.choices is not None and value not in self.choices:
            raise OptionError(
                f"{owner}: {name} must be one of {', '.join(map(str, self.choices))}, got {value!r}"
            )
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            low = "-inf" if self.low is None else self.low
            high = "inf" if self.high is None else self.high
            raise OptionError(f"{owner}: {name} must be in [{low}, {high}], got {value}")
        return value

    def describe(self):
        allowed = (
            "|".join(map(str, self.choices)) if self.choices is not None
            else f"[{'-inf' if self.low is None else self.low}, {'inf' if self.high is None else self.high}]"
            if self.type in (int, float) else self.type.__name__
        )
        return f"{allowed}, default {self.default}" + (f": {self.help}" if self.help else "")


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class Transform:
    """Base class: subclasses set ``name``, ``PARAMS`` and implement :meth:`apply`.

    Parameters
    ----------
    **params
        Values for the entries of ``PARAMS``; unknown names and out-of-range values raise
        :class:`~rnnshrink.errors.OptionError` naming the valid ones.
    """

    name = "abstract"
    PARAMS = {}

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            raise OptionError(
                f"{self.name}: unknown parameter {', '.join(unknown)}; "
                f"valid: {', '.join(self.PARAMS) or 'none'}"
            )
        self.params = {
            key: (spec.parse(self.name, key, params[key]) if key in params else spec.default)
            for key, spec in self.PARAMS.items()
        }
        self.given = {key: self.params[key] for key in params}
        self.check()

    def __getattr__(self, key):
        params = self.__dict__.get("params", {})
        if key in params:
            return params[key]
        raise AttributeError(key)

    def check(self):
        """Cross-parameter validation; subclasses raise OptionError here."""

    def selected_layers(self, model):
        """The LSTM layers the ``layers`` parameter names (all when not given), in model order.

        Raises
        ------
        OptionError
            A name that is not an LSTM layer of ``model``; the message lists the model's ones.
        """
        lstm = model.lstm_layers
        names = self.params.get("layers")
        if names is None:
            return lstm
        wanted = [name.strip() for name in names.split(",") if name.strip()]
        known = [layer.name for layer in lstm]
        unknown = [name for name in wanted if name not in known]
        if unknown or not wanted:
            raise OptionError(
                f"{self.name}: layers: no LSTM layer named {', '.join(map(repr, unknown)) or '(empty)'}; "
                f"the model's LSTM layers are {', '.join(known)}"
            )
        return [layer for layer in lstm if layer.name in wanted]

    def apply(self, model, context=None):
        """Return the compressed copy of ``model``; ``model`` is left unchanged.

        Parameters
        ----------
        model : rnnshrink.model.Model
        context : rnnshrink.transforms.Context, optional
            Progress reporting and (later) calibration data.
        """
        raise NotImplementedError

    def spec(self):
        """The step as the user would write it: ``svd:tau=0.6``."""
        given = ",".join(f"{k}={v}" for k, v in self.given.items())
        return f"{self.name}:{given}" if given else self.name

    def __repr__(self):
        return f"<{self.spec()}>"


@dataclass
class Context:
    """What a transform may use besides the model.

    Parameters
    ----------
    progress : callable, optional
        ``progress(description, total)`` returning a counter with ``update()`` / ``close()``.
    seed : int
    inputs : ndarray of shape (batch, time, input), optional
        Calibration inputs of the first LSTM layer (the user's ``--calib``, or the probes
        rnnshrink makes); data-aware transforms trace them through the model with
        :func:`rnnshrink.model.network.trace_model`.
    probe : str
        What ``inputs`` are, for summaries.
    """

    progress: object = None
    seed: int = 0
    inputs: object = None
    probe: str = ""

    def step(self, description, total):
        """A progress counter with ``update(n)`` and ``close()`` over ``total`` items."""
        if self.progress is None:
            return _NoProgress()
        return self.progress(description, total)


class _NoProgress:
    def update(self, n=1):
        pass

    def close(self):
        pass
