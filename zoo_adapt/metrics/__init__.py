"""Scoring a classifier: accuracy, top-5, balanced accuracy, per-class precision,
recall and F1, the confusion matrix, test-time augmentation; mAP and F1 at per-class
thresholds for multi-label models."""
