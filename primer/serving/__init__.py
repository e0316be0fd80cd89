"""Trained models put to use through MLflow: the pyfunc models each training run logs and the registry
whose `champion` alias evaluate moves."""
