"""Utilities every room may use; they import nothing from the rest of imprint."""

import importlib
import pkgutil


def import_all(package: str, path, skip: tuple[str, ...] = ("base",)) -> None:
    """Import every module of a package, so that each registers itself (methods, loss terms,
    families): a new one is a new file, with no import list to keep by hand."""
    for module in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if module.name not in skip and not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")
