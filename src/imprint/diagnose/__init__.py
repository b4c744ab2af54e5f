"""What a fine-tuning run changed, measured on the run itself (`imprint diagnose RUN`): intruder
dimensions, the tuning contribution (TuCo), contrastive generation and conjugate prompting for
language-model runs; intruder dimensions and the class prompt's images before and after for image
runs. Each writes RUN/diagnostics.json, shown in the run's report."""
