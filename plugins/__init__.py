"""visionkit's built-in task plugins, installed as ``visionkit_plugins`` and registered through
the ``visionkit.tasks`` entry points in pyproject.toml, exactly as a third-party plugin is."""
