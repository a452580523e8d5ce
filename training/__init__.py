"""Training: datasets from history, training, evaluation, model registry — and the traffic simulator.

``training.simulator`` generates reproducible synthetic payment traffic (orders, late labels and
a ground-truth side file) for the demo, training sets, backtests, load tests and end-to-end tests.
"""
