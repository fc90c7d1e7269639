"""Each model's class names: a feedback label (a class name or a class id) becomes a class id."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class UnknownLabel(ValueError):
    """The label is not exactly one class of the model; the message says what to send instead."""


class ClassLabels:
    """Class names by model; a model without names accepts class ids only."""

    def __init__(self, labels: Mapping[str, Sequence[str]] | None = None):
        self.names = {str(model): list(names) for model, names in (labels or {}).items()}
        self._ids_by_name: dict[str, dict[str, list[int]]] = {}
        for model, names in self.names.items():
            ids_by_name = self._ids_by_name[model] = {}
            for class_id, name in enumerate(names):
                ids_by_name.setdefault(name, []).append(class_id)

    def class_id(self, model_name: str, label: str | int) -> int:
        """The class id a label names for one model; UnknownLabel says why there is none."""
        names = self.names.get(model_name)
        if not isinstance(label, str):
            if label < 0:
                raise UnknownLabel(f"label {label} is negative; class ids start at 0")
            if names is not None and label >= len(names):
                raise UnknownLabel(
                    f"label {label} is not a class of {model_name} (ids 0..{len(names) - 1})"
                )
            return label
        if names is None:
            raise UnknownLabel(
                f"no label names configured for {model_name}; send the class id instead"
            )
        ids = self._ids_by_name[model_name].get(label)
        if not ids:
            raise UnknownLabel(f"label {label!r} is not a class of {model_name}")
        if len(ids) > 1:
            raise UnknownLabel(
                f"label {label!r} names classes {ids} of {model_name}; send the class id"
            )
        return ids[0]
