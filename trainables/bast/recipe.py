"""BAST's part of the shared training loop: the shared localization recipe, building a BAST."""

from __future__ import annotations

from trainables.bast.config import BASTConfig
from trainables.bast.model import BAST
from trainables.localization.recipe import LocalizationRecipe, dataset_root

__all__ = ["BASTRecipe", "dataset_root"]


def _build(config: BASTConfig) -> BAST:
    return BAST(config.model)


class BASTRecipe(LocalizationRecipe):
    def __init__(self, config: BASTConfig):
        super().__init__(config, _build)
