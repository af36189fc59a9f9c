"""Transfer learning from labelled images: the public names of :mod:`wildid.training`.

    data = load_labelled("tracks/")                       # ImageFolder, or a CSV path,label[,group,crop]
    result = train(data, TrainConfig(), out="models/my-tracks")
    result.card.metrics["accuracy"], result.card.metrics["ece"]

The work is split by job in ``wildid/training/`` (data checks, features, head + calibration,
fine-tuning, the recipe, the background job); the CLI, the Train page and the tests import from here.
"""

from __future__ import annotations

from wildid.datasets import LabelledData, Sample, load_labelled  # noqa: F401 - re-exported
from wildid.training.data import check_data, inner_folds, make_folds, near_duplicate_groups  # noqa: F401
from wildid.training.features import (  # noqa: F401
    FEATURE_CACHE_VERSION,
    WEIGHT_SOURCES,
    FeatureCache,
    average_views,
    extract_features,
    load_sample,
    pooled_features,
)
from wildid.training.finetune import (  # noqa: F401
    backbone_units,
    finetune_model,
    predict_logits,
    preload_images,
    set_trainable,
    train_transform,
)
from wildid.training.head import (  # noqa: F401
    LinearHead,
    classifier_layer,
    fit_adamw_head,
    fit_logistic_head,
    fit_temperature,
)
from wildid.training.job import TrainingJob, curve_rows, resolve_data_path  # noqa: F401
from wildid.training.progress import Progress, ProgressFn, StopFlag, TrainingStopped  # noqa: F401
from wildid.training.recipe import (  # noqa: F401
    DEFAULT_ARCH,
    DEFAULT_EPOCHS,
    HEADS,
    MODES,
    VIEW_CHOICES,
    TrainConfig,
    TrainResult,
    base_card,
    calibration_metrics,
    check_out,
    command_line,
    resolve_out,
    resolve_weights,
    train,
    validation_metrics,
)

_load_sample = load_sample  # older name, used by bench/train.py and tests
