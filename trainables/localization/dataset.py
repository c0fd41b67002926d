"""The localization datasets' builder as the trainables' `DatasetBuilder` (a sweep file's `dataset_build`)."""

from __future__ import annotations

from trainables.registry import DatasetBuilder

BUILDER = DatasetBuilder(config="trainables.localization.builder:LocalizationBuildConfig",
                         builder="trainables.localization.builder:build", command="binsweep data localization")
