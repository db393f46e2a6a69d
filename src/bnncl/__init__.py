"""bnncl: on-device continual learning with binary neural networks.

The public API (docs/python-api.md), loaded on first use so that ``import bnncl`` stays fast and
never imports torch or NumPy:

* ``load_model(name_or_path)`` -> :class:`DeviceModel`; :class:`FrozenEngine` (the frozen forward);
* :class:`Learner` -- in-memory continual learning (``deploy``/``learn``/``predict``,
  ``train(experience)``/``eval(stream)``);
* ``open_session(model, state_dir)`` -> :class:`LearnerSession` -- the crash-safe learner of ``bnncl learn``;
* ``scenario_from_arrays`` / ``scenario_from_folder`` -> :class:`Scenario`; ``load_dataset``;
* ``run_protocol(name, **settings)`` -> :class:`RunResult`; ``summary(model)``;
* :class:`BnnclError` -- the base class of every error caused by the user's input.
"""

import importlib

__version__ = "0.1.0"

_WHERE = {
    "BnnclError": "bnncl.errors",
    "DeviceModel": "bnncl.device.modelfile",
    "FrozenEngine": "bnncl.device.frozen",
    "Learner": "bnncl.api",
    "LearnerSession": "bnncl.service.session",
    "RunResult": "bnncl.api",
    "Scenario": "bnncl.api",
    "load_dataset": "bnncl.data.registry",
    "load_model": "bnncl.api",
    "open_session": "bnncl.api",
    "run_protocol": "bnncl.api",
    "scenario_from_arrays": "bnncl.api",
    "scenario_from_folder": "bnncl.api",
    "summary": "bnncl.api",
}

__all__ = [
    "BnnclError", "DeviceModel", "FrozenEngine", "Learner", "LearnerSession", "RunResult", "Scenario",
    "load_dataset", "load_model", "open_session", "run_protocol", "scenario_from_arrays", "scenario_from_folder",
    "summary",
]


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bnncl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
