"""Transfer learning from labelled images, split by job.

  data.py       data checks, (grouped) folds, near-duplicate groups (perceptual hash)
  features.py   decoding samples, backbone features (averaged over test-time views), the feature cache
  head.py       the linear head: scikit-learn logistic regression with C from grouped inner CV,
                temperature scaling on out-of-fold logits; the old numpy AdamW head as a baseline
  finetune.py   fine-tuning on augmented images, and partial fine-tuning of the last blocks
                on cached intermediate activations
  recipe.py     TrainConfig, the whole run (validate, fit the final model, write the card)
  job.py        a run in a background thread for the app; curves for its plots

``wildid.train`` re-exports the public names, so ``from wildid.train import train`` keeps working.
"""
