"""The toy world: a small, fully known universe of rendered scenes for offline, CPU-sized
personalisation (renderer and held-out subjects so far; the pre-trained model and the
evaluator are to come)."""
