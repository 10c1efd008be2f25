"""Build hook: ship the trained models inside the wheel.

The metadata lives in pyproject.toml. ``Resources/Models`` sits outside the package, so ``build_py`` copies
it to ``CovidCTLib/_models`` in the build tree; an installed wheel finds it there
(:mod:`CovidCTLib.resources`). Only the files a model folder holds are copied (manifest, weights, card).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MODEL_FILES = ("manifest.json", "*.pt", "MODEL_CARD.md")


class BuildPyWithModels(build_py):
    """``build_py`` that also copies ``Resources/Models/<name>/`` into ``CovidCTLib/_models/<name>/``."""

    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "Resources" / "Models"
        if getattr(self, "editable_mode", False) or not source.is_dir():
            return  # an editable install reads Resources/Models from the checkout
        target = Path(self.build_lib) / "CovidCTLib" / "_models"
        shutil.rmtree(target, ignore_errors=True)  # no stale model from an earlier build
        for folder in sorted(p for p in source.iterdir() if (p / "manifest.json").is_file()):
            (target / folder.name).mkdir(parents=True, exist_ok=True)
            for pattern in MODEL_FILES:
                for path in sorted(folder.glob(pattern)):
                    shutil.copyfile(path, target / folder.name / path.name)


setup(cmdclass={"build_py": BuildPyWithModels})
