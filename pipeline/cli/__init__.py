"""The ``irscan`` command line: one module per subcommand; commands parse and call."""
