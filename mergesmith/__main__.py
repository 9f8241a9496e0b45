"""``python -m mergesmith``: the ``mergesmith`` command, for a process started with a given interpreter."""

from mergesmith.cli import main

main(prog_name="mergesmith")
