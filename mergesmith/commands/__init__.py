"""The ``mergesmith`` subcommands other than merge, plan and methods, grouped by what they work on; ``mergesmith.cli`` adds them to the command."""
