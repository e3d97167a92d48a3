"""The machinery behind the scripts: data, monitoring, checkpoints, visualisation, command-line helpers."""
