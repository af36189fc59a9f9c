"""The `wildid` commands, one module per job; wildid/cli.py builds the parser and runs them."""
