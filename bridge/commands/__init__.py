"""The `warren` commands, one module each: its arguments (`add_arguments`) and what it does with them
(`from_args`, which returns the exit code). bridge/cli.py only builds the parser and dispatches."""
