"""Re-identification of individual animals (e.g. lynx by coat pattern) in an open set.

Three parts:

* **Embedding predictors.**  A model card with ``kind = "embedding"`` (``task = "reid"``)
  names any timm backbone built with ``num_classes=0``; its pooled features, L2-normalised,
  are the embedding.  ``registry.load_predictor`` returns an :class:`EmbeddingPredictor`
  for such cards (same preprocessing, batching and back ends as the classifiers), whose
  ``embed(images) -> np.ndarray [N, D]`` replaces ``predict``.
* **Galleries.**  ``<galleries root>/<name>/`` holds ``gallery.json`` (model, dimension,
  threshold), ``embeddings.npy`` (one row per gallery image), ``index.csv`` (individual,
  image, added_at, sha1, row) and a copy of every gallery image under ``images/``.
  Galleries only grow: rows are appended, nothing is overwritten or removed.
* **Identification** ranks individuals by cosine similarity (per individual: the max, or the
  mean of the top few image similarities) and answers ``unknown`` below a threshold chosen on
  validation data as the one maximising Youden's J (balanced accuracy) between known-match
  and unknown similarities.

Training (:func:`train_embedding`) learns the embedding with a batch-hard triplet loss on
P x K batches (P individuals, K images each).  Triplet rather than ArcFace because re-ID
data sets have many individuals with few photos each and are open-set by nature: the
triplet loss needs no per-individual weight matrix (whose rows ArcFace must learn from
those few photos, and which is thrown away at test time anyway), and batch-hard mining
(Hermans et al., 2017, "In Defense of the Triplet Loss") is the standard strong re-ID
baseline.  Individuals, not images, are split between training and validation, so the
validation figures (and the threshold chosen on them) are open-set.

The package is split by job; everything is importable from ``wildid.reid`` as before:

* :mod:`wildid.reid.embedding`   embedding predictors and cards, the generic packaged embedding,
* :mod:`wildid.reid.similarity`  per-individual scores, thresholds (Youden's J), pair AUROC,
* :mod:`wildid.reid.gallery`     gallery storage and identification,
* :mod:`wildid.reid.training`    triplet training,
* :mod:`wildid.reid.evaluation`  open-set evaluation.
"""

from wildid.reid.embedding import (  # noqa: F401
    EmbeddingMixin, EmbeddingPredictor, OnnxEmbeddingPredictor, embedding_card, embedding_cards, l2_normalise,
    load_embedder,
)
from wildid.reid.evaluation import evaluate_reid, open_set_split, score_queries  # noqa: F401
from wildid.reid.gallery import (  # noqa: F401
    DEFAULT_THRESHOLD, EMBEDDINGS_FILE, GALLERY_FILE, INDEX_COLUMNS, INDEX_FILE, MIN_CALIBRATION_INDIVIDUALS,
    UNKNOWN, AddReport, Gallery, GalleryEntry, Identification, Match, add_folder, check_name, galleries_root,
    identify, individual_folders, list_galleries,
)
from wildid.reid.similarity import (  # noqa: F401
    AGGREGATES, calibrate_threshold, choose_threshold, individual_scores, open_set_scores, pair_auroc,
)
from wildid.reid.training import (  # noqa: F401
    TrainResult, batch_hard_triplet_loss, split_individuals, train_embedding, train_transform,
)
