"""The subject task: teach a text-to-image model a subject from a few photos."""
