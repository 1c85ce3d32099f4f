"""The ``ram-ot`` command line: ``train``, ``tag``, ``eval`` and ``info`` subcommands."""
