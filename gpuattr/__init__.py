"""The ``gpuattr`` command line: one tool, a subcommand per part of the project."""
