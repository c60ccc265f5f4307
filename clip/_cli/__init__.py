"""The command line (`clip`, `python -m clip`): main.py picks the job; common.py is what every job
shares; one module per subcommand; collection.py is the on-disk format of embed and search."""
