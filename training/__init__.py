"""Training: a regularised LSTM forecaster that cannot ship collapsed, and its artifacts."""
