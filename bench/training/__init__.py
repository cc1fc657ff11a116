"""Training: the fit/evaluate loop for one strategy on cached features, and robustness scoring."""
