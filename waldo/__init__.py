"""The `waldo` command, composed from the subcommands each package owns (`waldo.cli`)."""
