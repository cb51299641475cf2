"""The normalizing-flow runtime: sampling with temperature and exact log-likelihood."""
