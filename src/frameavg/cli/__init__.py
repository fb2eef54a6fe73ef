"""Command-line entry points: `frameavg <command>`."""
