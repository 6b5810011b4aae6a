"""AutoLoss-AR's genetic-programming search over loss trees: the engine, its fitness (PGD-k risk) and
the settings (dataset, network, training, norm, eps) it searches in. Imports only the core and the
base modules (config, store)."""
