"""Canonical expression class orders of the supported datasets.

Source: ../shared/spec/datasets.md section 4. DFEW and FERV39k use the AU-DFER
order (DFEW's official labels 1..7 minus 1); the AU prior matrices are indexed by
it, so any other order silently corrupts the AU loss. MAFW uses the DFER-CLIP
order.
"""

from __future__ import annotations

DFEW_CLASSES = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
FERV39K_CLASSES = DFEW_CLASSES
MAFW_CLASSES = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust",
                                "fear", "contempt", "anxiety", "helplessness", "disappointment")

_CLASSES = {"dfew": DFEW_CLASSES, "ferv39k": FERV39K_CLASSES, "mafw": MAFW_CLASSES,
                        "demo": DFEW_CLASSES}

# Aliases accepted when reading label names (trimmed, case-insensitive).
_ALIASES = {"happiness": "happy", "happy": "happy", "sadness": "sad", "sad": "sad",
                        "anger": "angry", "angry": "angry"}


def class_names(dataset: str) -> tuple[str, ...]:
    """Returns the canonical class names of `dataset` in label order.

    Raises:
        ValueError: for an unknown dataset name.
    """
    try:
        return _CLASSES[dataset.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of "
                                          f"{sorted(_CLASSES)}") from None


def num_classes(dataset: str) -> int:
    """Number of expression classes of `dataset` (7 or 11)."""
    return len(class_names(dataset))


def label_from_name(name: str, dataset: str) -> int:
    """Maps a class name (any case, aliases happy/happiness etc.) to its index.

    Raises:
        ValueError: naming the value and the allowed set when it is unknown.
    """
    names = class_names(dataset)
    key = name.strip().lower()
    if key in names:
        return names.index(key)
    alias = _ALIASES.get(key)
    if alias is not None:
        for i, n in enumerate(names):
            if _ALIASES.get(n, n) == alias:
                return i
    raise ValueError(f"unknown class name {name!r} for {dataset}; expected one "
                                      f"of {list(names)} (aliases: {sorted(_ALIASES)})")
